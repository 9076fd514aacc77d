#include "net/listener.hpp"

#include <algorithm>
#include <charconv>
#include <cstdint>
#include <cstring>

#include "net/connection.hpp"

namespace inboxd::net {

bool parse_address(std::string_view text, sockaddr_storage& out) {
  auto colon = text.rfind(':');
  if (colon == text.npos) return false;
  std::string host(text.substr(0, colon));
  std::string_view port_text = text.substr(colon + 1);
  int port = -1;
  auto [end, ec] = std::from_chars(port_text.data(), port_text.data() + port_text.size(), port);
  if (ec != std::errc{} || end != port_text.data() + port_text.size() || port < 0 || port > 65535)
    return false;
  if (host.empty()) host = "0.0.0.0";
  if (host.size() > 2 && host.front() == '[' && host.back() == ']')
    return uv_ip6_addr(host.substr(1, host.size() - 2).c_str(), port,
                       reinterpret_cast<sockaddr_in6*>(&out)) == 0;
  return uv_ip4_addr(host.c_str(), port, reinterpret_cast<sockaddr_in*>(&out)) == 0;
}

std::string format_address(const sockaddr* sa, bool with_port) {
  char ip[INET6_ADDRSTRLEN] = "?";
  int port = 0;
  bool v6 = sa->sa_family == AF_INET6;
  if (v6) {
    const auto* in6 = reinterpret_cast<const sockaddr_in6*>(sa);
    uv_ip6_name(in6, ip, sizeof ip);
    port = ntohs(in6->sin6_port);
  } else if (sa->sa_family == AF_INET) {
    const auto* in4 = reinterpret_cast<const sockaddr_in*>(sa);
    uv_ip4_name(in4, ip, sizeof ip);
    port = ntohs(in4->sin_port);
  }
  if (!with_port) return ip;
  return v6 ? fmt::format(FMT_STRING("[{}]:{}"), ip, port)
            : fmt::format(FMT_STRING("{}:{}"), ip, port);
}

std::string limit_key(const sockaddr* sa, unsigned ipv6_prefix_length) {
  if (sa->sa_family != AF_INET6) return format_address(sa, false);
  sockaddr_in6 in6 = *reinterpret_cast<const sockaddr_in6*>(sa);
  std::uint8_t* bytes = in6.sin6_addr.s6_addr;
  static constexpr std::uint8_t v4_mapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
  if (std::memcmp(bytes, v4_mapped, sizeof v4_mapped) == 0) {
    sockaddr_in in4{};
    in4.sin_family = AF_INET;
    std::memcpy(&in4.sin_addr, bytes + 12, 4);
    return format_address(reinterpret_cast<const sockaddr*>(&in4), false);
  }
  unsigned bits = std::min(ipv6_prefix_length, 128u);
  for (unsigned i = 0; i < 16; ++i) {
    unsigned kept = bits > i * 8 ? std::min(bits - i * 8, 8u) : 0;
    bytes[i] &= static_cast<std::uint8_t>(0xff00u >> kept);
  }
  in6.sin6_port = 0;
  in6.sin6_scope_id = 0;
  return fmt::format(FMT_STRING("{}/{}"),
                     format_address(reinterpret_cast<const sockaddr*>(&in6), false), bits);
}

listener* listener::open(server::state& srv, std::string_view address, bool implicit_tls,
                         std::string& error) {
  sockaddr_storage addr{};
  if (!parse_address(address, addr)) {
    error = fmt::format(FMT_STRING("bad listen address '{}': want ADDR:PORT"), address);
    return nullptr;
  }
  auto* l = new listener(srv, implicit_tls);
  uv_tcp_init(srv.loop, &l->tcp_);
  l->tcp_.data = l;
  int rc = uv_tcp_bind(&l->tcp_, reinterpret_cast<const sockaddr*>(&addr), 0);
  // Pending connections wait in the kernel; a large backlog rides out bursts.
  if (rc == 0) rc = uv_listen(reinterpret_cast<uv_stream_t*>(&l->tcp_), 4096, connection_cb);
  if (rc != 0) {
    error = fmt::format(FMT_STRING("cannot listen on {}: {} ({})"), address, uv_strerror(rc),
                        uv_err_name(rc));
    uv_close(reinterpret_cast<uv_handle_t*>(&l->tcp_), close_cb);
    return nullptr;
  }
  srv.listeners.push_back(l);
  return l;
}

std::string listener::bound_address() const {
  sockaddr_storage addr{};
  int len = sizeof addr;
  if (uv_tcp_getsockname(&tcp_, reinterpret_cast<sockaddr*>(&addr), &len) != 0) return "?";
  return format_address(reinterpret_cast<const sockaddr*>(&addr));
}

void listener::close() {
  auto& ls = srv_.listeners;
  ls.erase(std::remove(ls.begin(), ls.end(), this), ls.end());
  uv_close(reinterpret_cast<uv_handle_t*>(&tcp_), close_cb);
}

void listener::connection_cb(uv_stream_t* server, int status) noexcept {
  auto* self = static_cast<listener*>(server->data);
  if (status < 0) {
    // Out of file descriptors (EMFILE): libuv sheds the pending connection
    // itself and accepting resumes when descriptors free up. Say so once a
    // second at most, not once per client.
    std::uint64_t now = uv_now(self->srv_.loop);
    if (now - self->last_accept_error_ >= 1000 || self->last_accept_error_ == 0) {
      self->last_accept_error_ = now;
      self->srv_.logf(log_level::warning, "accept failed: {} ({}); {} connection(s) open",
                      uv_strerror(status), uv_err_name(status), self->srv_.connection_count);
    }
    return;
  }
  connection::accept(self->srv_, server, self->implicit_tls_);
}

void listener::close_cb(uv_handle_t* handle) noexcept {
  auto* self = static_cast<listener*>(handle->data);
  server::state& srv = self->srv_;
  delete self;
  srv.maybe_done();
}

}  // namespace inboxd::net
