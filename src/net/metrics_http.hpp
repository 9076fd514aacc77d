// net/metrics_http.hpp: the --metrics listener, a tiny HTTP/1.1 server of
// one page, GET /metrics, on the server's loop.
//
// It answers GET and HEAD of /metrics (a query string is ignored) with
// render_metrics(), 404 for any other path, 405 for any other method, 400
// for what is not an HTTP/1.x request head, 431 (414 for the request line)
// past max_head octets. A request body is never read: a request that says
// it has one gets its answer and the connection closes. HTTP/1.1 keeps the
// connection open (unless "Connection: close"), HTTP/1.0 only with
// "Connection: keep-alive"; the next request must come within
// request_timeout_ms, as the first must. Every step is O(bytes read) and
// a client holds at most max_head octets of input and one response.
//
// At most max_clients are open at once; one more closes the oldest, so
// that idle connections cannot lock Prometheus out, and the whole costs the
// SMTP side at most max_clients descriptors (none of its limits count them).
//
// Requests are read with net/http_head.hpp, the sans-I/O part.
//
// Pinned: the listener and each client embed their handles, and are freed
// only in their uv_close callbacks.
#pragma once

#include <uv.h>

#include <cstddef>
#include <string>
#include <string_view>

#include "net/http_head.hpp"
#include "net/server_state.hpp"

namespace inboxd::net {

class metrics_http {
 public:
  static constexpr std::size_t max_head = 8 * 1024;
  static constexpr std::uint64_t request_timeout_ms = 5'000;
  static constexpr std::size_t max_clients = 16;

  // Binds and listens ("ADDR:PORT"); on failure null with the reason in error.
  static metrics_http* open(server::state& srv, std::string_view address, std::string& error);
  // Closes the listener and every client; srv.metrics_http becomes null
  // once all have closed, then srv.maybe_done() runs.
  void close() noexcept;
  [[nodiscard]] std::string bound_address() const;

 private:
  struct client;
  explicit metrics_http(server::state& srv) : srv_(srv) {}
  void accept() noexcept;
  void closed_one() noexcept;
  static void connection_cb(uv_stream_t* server, int status) noexcept;
  static void close_cb(uv_handle_t* handle) noexcept;

  server::state& srv_;
  uv_tcp_t tcp_{};
  client* clients_ = nullptr;  // newest first
  client* oldest_ = nullptr;
  std::size_t live_ = 0;  // clients not closing
  int open_ = 0;          // handles not yet closed: the listener's and the clients'
  bool closing_ = false;
  std::uint64_t last_accept_error_ = 0;
  // Every client reads into this and appends what it got to its own head:
  // one buffer serves them all, since each read is taken before the next.
  char read_buf_[max_head];
};

}  // namespace inboxd::net
