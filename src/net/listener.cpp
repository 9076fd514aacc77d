#include "net/listener.hpp"

#include <algorithm>
#include <charconv>
#include <cstddef>
#include <cstdint>
#include <cstring>

#include <arpa/inet.h>
#include <fcntl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

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

bool parse_network(std::string_view text, network& out) {
  out = {};
  auto slash = text.find('/');
  std::string ip(text.substr(0, slash));
  if (::inet_pton(AF_INET, ip.c_str(), out.bytes) == 1) {
    out.family = AF_INET;
    out.bits = 32;
  } else if (::inet_pton(AF_INET6, ip.c_str(), out.bytes) == 1) {
    out.family = AF_INET6;
    out.bits = 128;
  } else {
    return false;
  }
  if (slash != text.npos) {
    std::string_view b = text.substr(slash + 1);
    unsigned bits = 0;
    auto [end, ec] = std::from_chars(b.data(), b.data() + b.size(), bits);
    if (b.empty() || ec != std::errc{} || end != b.data() + b.size() || bits > out.bits)
      return false;
    out.bits = bits;
  }
  for (unsigned i = 0; i < 16; ++i) {
    unsigned kept = out.bits > i * 8 ? std::min(out.bits - i * 8, 8u) : 0;
    if (out.bytes[i] & ~(0xff00u >> kept) & 0xff) return false;
  }
  return true;
}

bool in_networks(const std::vector<network>& nets, const sockaddr* sa) {
  const std::uint8_t* bytes = nullptr;
  int family = sa->sa_family;
  if (family == AF_INET) {
    bytes =
        reinterpret_cast<const std::uint8_t*>(&reinterpret_cast<const sockaddr_in*>(sa)->sin_addr);
  } else if (family == AF_INET6) {
    bytes = reinterpret_cast<const sockaddr_in6*>(sa)->sin6_addr.s6_addr;
    static constexpr std::uint8_t v4_mapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
    if (std::memcmp(bytes, v4_mapped, sizeof v4_mapped) == 0) {
      bytes += 12;
      family = AF_INET;
    }
  } else {
    return false;
  }
  for (const network& n : nets) {
    if (n.family != family) continue;
    unsigned whole = n.bits / 8, rest = n.bits % 8;
    if (std::memcmp(bytes, n.bytes, whole) != 0) continue;
    if (rest && ((bytes[whole] ^ n.bytes[whole]) & (0xff00u >> rest) & 0xff)) continue;
    return true;
  }
  return false;
}

listener* listener::open(server::state& srv, std::string_view address, bool implicit_tls, bool lmtp,
                         bool proxy, std::string& error) {
  if (address.starts_with("unix:") || address.starts_with("fd:")) {
    auto* l = new listener(srv, implicit_tls, lmtp, proxy);
    bool ok =
        address.starts_with("fd:") ? l->open_fd(address, error) : l->open_unix(address, error);
    if (!ok) return nullptr;  // open_unix and open_fd close it
    srv.listeners.push_back(l);
    return l;
  }
  sockaddr_storage addr{};
  if (!parse_address(address, addr)) {
    error = fmt::format(FMT_STRING("bad listen address '{}': want ADDR:PORT"), address);
    return nullptr;
  }
  auto* l = new listener(srv, implicit_tls, lmtp, proxy);
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

namespace {

// Whether a server answers on the unix socket at path (a blocking connect on
// a local socket, at start-up only: it answers or fails at once).
bool socket_answers(const std::string& path) {
  sockaddr_un sun{};
  if (path.size() >= sizeof sun.sun_path) return false;
  sun.sun_family = AF_UNIX;
  std::memcpy(sun.sun_path, path.c_str(), path.size() + 1);
  int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return false;
  bool answers = ::connect(fd, reinterpret_cast<const sockaddr*>(&sun), sizeof sun) == 0;
  ::close(fd);
  return answers;
}

std::string sys_error(int err) {
  int rc = uv_translate_sys_error(err);
  return fmt::format(FMT_STRING("{} ({})"), uv_strerror(rc), uv_err_name(rc));
}

}  // namespace

int make_tcp_socket(std::string_view address, bool reuseport, std::string& error) {
  sockaddr_storage addr{};
  if (!parse_address(address, addr)) {
    error = fmt::format(FMT_STRING("bad listen address '{}': want ADDR:PORT"), address);
    return -1;
  }
  int fd = ::socket(addr.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
  int on = 1;
  bool ok = fd >= 0 && ::setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &on, sizeof on) == 0 &&
            (!reuseport || ::setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &on, sizeof on) == 0) &&
            ::bind(fd, reinterpret_cast<const sockaddr*>(&addr),
                   addr.ss_family == AF_INET6 ? sizeof(sockaddr_in6) : sizeof(sockaddr_in)) == 0 &&
            ::listen(fd, 4096) == 0;
  if (ok) return fd;
  error = fmt::format(FMT_STRING("cannot listen on {}: {}"), address, sys_error(errno));
  if (fd >= 0) ::close(fd);
  return -1;
}

int make_unix_socket(const std::string& path, unsigned mode, file_owner owner, std::string& note,
                     std::string& error) {
  auto fail = [&](std::string why) {
    error = fmt::format(FMT_STRING("cannot listen on unix:{}: {}"), path, why);
    return -1;
  };
  sockaddr_un sun{};
  if (path.empty() || path.front() != '/') return fail("want unix:/absolute/path");
  if (path.size() >= sizeof sun.sun_path) return fail("the path is too long");
  struct stat st {};
  if (::lstat(path.c_str(), &st) == 0) {
    if (!S_ISSOCK(st.st_mode)) return fail("the file exists and is not a socket");
    if (socket_answers(path)) return fail("another server listens on it");
    if (::unlink(path.c_str()) != 0)
      return fail(
          fmt::format(FMT_STRING("cannot remove the stale socket: {}"), std::strerror(errno)));
    note = fmt::format(FMT_STRING("removed a stale socket {}"), path);
  }
  sun.sun_family = AF_UNIX;
  std::memcpy(sun.sun_path, path.c_str(), path.size() + 1);
  int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return fail(sys_error(errno));
  if (::bind(fd, reinterpret_cast<const sockaddr*>(&sun), sizeof sun) != 0) {
    std::string why = sys_error(errno);
    ::close(fd);
    return fail(why);
  }
  std::string why;
  if (::chmod(path.c_str(), static_cast<mode_t>(mode)) != 0 ||
      (owner.set() && ::lchown(path.c_str(), owner.uid, owner.gid) != 0))
    why = fmt::format(FMT_STRING("cannot set its mode or owner: {}"), std::strerror(errno));
  else if (::listen(fd, 4096) != 0)
    why = sys_error(errno);
  if (why.empty()) return fd;
  ::unlink(path.c_str());
  ::close(fd);
  return fail(why);
}

std::string socket_address(int fd) {
  sockaddr_storage addr{};
  socklen_t len = sizeof addr;
  if (::getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len) != 0) return {};
  if (addr.ss_family == AF_INET || addr.ss_family == AF_INET6)
    return format_address(reinterpret_cast<const sockaddr*>(&addr));
  if (addr.ss_family != AF_UNIX) return {};
  const auto* sun = reinterpret_cast<const sockaddr_un*>(&addr);
  std::size_t n = len > offsetof(sockaddr_un, sun_path) ? len - offsetof(sockaddr_un, sun_path) : 0;
  std::string path(sun->sun_path, strnlen(sun->sun_path, n));
  return path.empty() ? std::string() : "unix:" + path;
}

// "unix:/path": made by make_unix_socket, then served by a uv_pipe_t.
bool listener::open_unix(std::string_view address, std::string& error) {
  std::string path(address.substr(5));
  uv_pipe_init(srv_.loop, &pipe_, 0);
  pipe_.data = this;
  is_pipe_ = true;
  const server_config& cfg = srv_.config;
  std::string note;
  int fd = make_unix_socket(path, cfg.unix_socket_mode, cfg.unix_socket_owner, note, error);
  if (!note.empty()) srv_.logf(log_level::info, "{}", note);
  int rc = fd < 0 ? 0 : uv_pipe_open(&pipe_, fd);
  if (fd >= 0 && rc == 0) {
    unix_path_ = path;
    rc = uv_listen(reinterpret_cast<uv_stream_t*>(&pipe_), 4096, connection_cb);
  }
  if (fd >= 0 && rc != 0) {
    error = fmt::format(FMT_STRING("cannot listen on {}: {} ({})"), address, uv_strerror(rc),
                        uv_err_name(rc));
    ::unlink(path.c_str());
    unix_path_.clear();
    if (uv_fileno(reinterpret_cast<uv_handle_t*>(&pipe_), &fd) != 0) ::close(fd);
  }
  if (fd < 0 || rc != 0) {
    uv_close(reinterpret_cast<uv_handle_t*>(&pipe_), close_cb);
    return false;
  }
  return true;
}

// "fd:N": a listening socket made by someone else (systemd, the supervisor),
// TCP or unix. Its file, if any, is theirs: it is never unlinked here.
bool listener::open_fd(std::string_view address, std::string& error) {
  std::string_view digits = address.substr(3);
  int fd = -1;
  auto [end, ec] = std::from_chars(digits.data(), digits.data() + digits.size(), fd);
  int type = 0, listening = 0, domain = 0;
  socklen_t len = sizeof type;
  bool ok = ec == std::errc{} && end == digits.data() + digits.size() && fd >= 0 &&
            ::getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &len) == 0 && type == SOCK_STREAM &&
            (len = sizeof listening,
             ::getsockopt(fd, SOL_SOCKET, SO_ACCEPTCONN, &listening, &len) == 0) &&
            listening &&
            (len = sizeof domain, ::getsockopt(fd, SOL_SOCKET, SO_DOMAIN, &domain, &len) == 0) &&
            (domain == AF_INET || domain == AF_INET6 || domain == AF_UNIX);
  is_pipe_ = ok && domain == AF_UNIX;
  if (is_pipe_) {
    uv_pipe_init(srv_.loop, &pipe_, 0);
  } else {
    uv_tcp_init(srv_.loop, &tcp_);
  }
  tcp_.data = this;
  int rc = 0;
  if (ok) {
    ::fcntl(fd, F_SETFD, FD_CLOEXEC);  // Not for the programs a worker might start.
    rc = is_pipe_ ? uv_pipe_open(&pipe_, fd) : uv_tcp_open(&tcp_, fd);
    if (rc == 0) rc = uv_listen(reinterpret_cast<uv_stream_t*>(&tcp_), 4096, connection_cb);
    if (rc != 0)
      error = fmt::format(FMT_STRING("cannot listen on {}: {} ({})"), address, uv_strerror(rc),
                          uv_err_name(rc));
  } else {
    error = fmt::format(
        FMT_STRING("cannot listen on {}: not a listening TCP or unix stream socket"), address);
  }
  if (!ok || rc != 0) {
    uv_close(reinterpret_cast<uv_handle_t*>(&tcp_), close_cb);
    return false;
  }
  return true;
}

std::string listener::bound_address() const {
  if (!unix_path_.empty()) return "unix:" + unix_path_;
  if (is_pipe_) {
    char path[256];
    std::size_t n = sizeof path;
    if (uv_pipe_getsockname(&pipe_, path, &n) != 0) return "unix:?";
    return "unix:" + std::string(path, n);
  }
  sockaddr_storage addr{};
  int len = sizeof addr;
  if (uv_tcp_getsockname(&tcp_, reinterpret_cast<sockaddr*>(&addr), &len) != 0) return "?";
  return format_address(reinterpret_cast<const sockaddr*>(&addr));
}

void listener::close() {
  auto& ls = srv_.listeners;
  ls.erase(std::remove(ls.begin(), ls.end(), this), ls.end());
  // The socket file goes with the listener (it may be gone already, or,
  // after the privileges were dropped, not ours to remove any more).
  if (!unix_path_.empty() && ::unlink(unix_path_.c_str()) != 0 && errno != ENOENT)
    srv_.logf(log_level::warning, "cannot remove the socket {}: {}", unix_path_,
              std::strerror(errno));
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
  connection::accept(self->srv_, server, self->implicit_tls_, self->lmtp_, self->proxy_,
                     self->is_pipe_);
}

void listener::close_cb(uv_handle_t* handle) noexcept {
  auto* self = static_cast<listener*>(handle->data);
  server::state& srv = self->srv_;
  delete self;
  srv.maybe_done();
}

}  // namespace inboxd::net
