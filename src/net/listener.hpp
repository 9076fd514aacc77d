// net/listener.hpp: one listening TCP socket of a server.
//
// Pinned: it embeds its uv_tcp_t with handle.data == this, and is freed only
// in its uv_close callback.
#pragma once

#include <uv.h>

#include <string>

#include "net/server_state.hpp"

namespace inboxd::net {

// Parses "127.0.0.1:25", "[::1]:25" or ":25" (all IPv4 addresses).
[[nodiscard]] bool parse_address(std::string_view text, sockaddr_storage& out);
// Formats a socket address as "127.0.0.1:25" or "[::1]:25".
[[nodiscard]] std::string format_address(const sockaddr* sa, bool with_port = true);

class listener {
 public:
  // Binds and listens; on failure returns null with the reason in error.
  static listener* open(server::state& srv, std::string_view address, bool implicit_tls,
                        std::string& error);
  void close();
  [[nodiscard]] std::string bound_address() const;

 private:
  listener(server::state& srv, bool implicit_tls) : srv_(srv), implicit_tls_(implicit_tls) {}
  static void connection_cb(uv_stream_t* server, int status) noexcept;
  static void close_cb(uv_handle_t* handle) noexcept;

  server::state& srv_;
  bool implicit_tls_;
  std::uint64_t last_accept_error_ = 0;  // uv_now() of the last one logged
  uv_tcp_t tcp_{};
};

}  // namespace inboxd::net
