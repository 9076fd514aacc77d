// net/listener.hpp: one listening socket of a server: TCP, or a unix socket
// ("unix:/path") served by a uv_pipe_t; SMTP, implicit TLS, or LMTP. Or a
// listening socket the process was given ("fd:N", by systemd's socket
// activation or by the program's supervisor), TCP or unix, which the
// listener adopts and closes but never unlinks.
//
// Pinned: it embeds its handle with handle.data == this, and is freed only
// in its uv_close callback.
#pragma once

#include <uv.h>

#include <cstdint>
#include <string>
#include <vector>

#include "net/server_state.hpp"

namespace inboxd::net {

// Parses "127.0.0.1:25", "[::1]:25" or ":25" (all IPv4 addresses).
[[nodiscard]] bool parse_address(std::string_view text, sockaddr_storage& out);
// Formats a socket address as "127.0.0.1:25" or "[::1]:25".
[[nodiscard]] std::string format_address(const sockaddr* sa, bool with_port = true);
// The key under which the per-address limits count a client: an IPv4
// address as "192.0.2.1"; an IPv4-mapped IPv6 address (::ffff:192.0.2.1, an
// IPv4 client on a dual-stack socket) the same way; any other IPv6 address
// as its first ipv6_prefix_length bits (at most 128), "2001:db8:1:2::/64",
// since one site is usually given a whole /64 (RFC 6177) and would
// otherwise have 2^64 addresses to spread its connections over.
[[nodiscard]] std::string limit_key(const sockaddr* sa, unsigned ipv6_prefix_length);

// Parses a network (server_state.hpp), "ADDR/BITS" or "ADDR"; false unless the address is one and
// BITS fits its family. Bits past the prefix must be zero, so that a typo such as 10.0.0.1/8 is
// caught rather than read as 10.0.0.0/8.
[[nodiscard]] bool parse_network(std::string_view text, network& out);
// Whether sa is in one of the networks. An IPv4-mapped IPv6 address
// (::ffff:192.0.2.1) is matched as the IPv4 address it is.
[[nodiscard]] bool in_networks(const std::vector<network>& nets, const sockaddr* sa);

// Makes a listening TCP socket (SOCK_CLOEXEC, SO_REUSEADDR as libuv's bind
// sets it) for "ADDR:PORT"; with reuseport also SO_REUSEPORT, so that
// several sockets, one per worker, share the port and the kernel spreads
// new connections over them. Returns the descriptor, or -1 with the reason
// in error. Blocks only as bind(2) does: at start-up.
[[nodiscard]] int make_tcp_socket(std::string_view address, bool reuseport, std::string& error);

// Makes a listening unix socket at path with mode and owner (unset: ours)
// before it listens, so no client connects to it under other permissions.
// A stale socket file (no server answers on it) is replaced, and note says
// so; anything else there is refused. Returns the descriptor, or -1 with
// the reason in error. Blocks (a connect to test the old socket): start-up.
[[nodiscard]] int make_unix_socket(const std::string& path, unsigned mode, file_owner owner,
                                   std::string& note, std::string& error);

// The address a listening socket is bound to, in listen-list form
// ("127.0.0.1:25", "[::1]:25", "unix:/path"); empty when it is none of these.
[[nodiscard]] std::string socket_address(int fd);

class listener {
 public:
  // Binds and listens; on failure returns null with the reason in error.
  // A unix socket is made with config.unix_socket_mode and _owner; a stale
  // socket file (no server behind it) is replaced, anything else refused.
  // proxy: every connection starts with a PROXY protocol header.
  // "fd:N" adopts descriptor N, which must be a listening stream socket.
  static listener* open(server::state& srv, std::string_view address, bool implicit_tls, bool lmtp,
                        bool proxy, std::string& error);
  void close();
  [[nodiscard]] std::string bound_address() const;
  [[nodiscard]] bool implicit_tls() const noexcept { return implicit_tls_; }
  [[nodiscard]] bool lmtp() const noexcept { return lmtp_; }
  [[nodiscard]] bool proxy() const noexcept { return proxy_; }

 private:
  listener(server::state& srv, bool implicit_tls, bool lmtp, bool proxy)
      : srv_(srv), implicit_tls_(implicit_tls), lmtp_(lmtp), proxy_(proxy) {}
  bool open_unix(std::string_view address, std::string& error);
  bool open_fd(std::string_view address, std::string& error);
  static void connection_cb(uv_stream_t* server, int status) noexcept;
  static void close_cb(uv_handle_t* handle) noexcept;

  server::state& srv_;
  bool implicit_tls_;
  bool lmtp_;
  bool proxy_;
  std::uint64_t last_accept_error_ = 0;  // uv_now() of the last one logged
  std::string unix_path_;  // a unix socket's file, removed at close; empty for TCP and fd:N
  bool is_pipe_ = false;   // the handle is pipe_ (a unix socket), not tcp_
  union {
    uv_tcp_t tcp_{};
    uv_pipe_t pipe_;
  };
};

}  // namespace inboxd::net
