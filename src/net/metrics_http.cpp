#include "net/metrics_http.hpp"

#include <algorithm>
#include <cstring>
#include <new>

#include "inboxd/metrics.hpp"
#include "net/listener.hpp"

namespace inboxd::net {

namespace {

// After a response that ends the connection, what the client still sends
// (a body we did not read) is dropped for this long before the close: a
// close over unread input would send a reset, and the client might lose
// the response (as connection.cpp's lingering close).
constexpr std::uint64_t linger_ms = 1'000;

}  // namespace

// One client of the metrics listener. Pinned: freed when both handles have
// closed; the write, if one is pending, completes (or is cancelled) first.
struct metrics_http::client {
  explicit client(metrics_http& o) : owner(o) {}
  metrics_http& owner;
  uv_tcp_t tcp{};
  uv_timer_t timer{};
  uv_write_t req{};
  client* next = nullptr;  // owner's list, newest first
  client* prev = nullptr;
  std::string in;           // the request head so far, max_head + one read at most
  std::size_t scanned = 0;  // how much of in find_head_end() has seen
  std::string out;          // the response being written
  int open_handles = 2;
  bool writing = false;
  bool close_after = false;  // the response ends the connection
  bool lingering = false;    // write side shut, dropping what comes, until EOF or the timer
  bool closing = false;

  void close() noexcept {
    if (closing) return;
    closing = true;
    --owner.live_;
    uv_close(reinterpret_cast<uv_handle_t*>(&tcp), close_cb);
    uv_close(reinterpret_cast<uv_handle_t*>(&timer), close_cb);
  }
  void start_reading() noexcept {
    if (uv_read_start(reinterpret_cast<uv_stream_t*>(&tcp), alloc_cb, read_cb) != 0) close();
  }
  void arm(std::uint64_t ms) noexcept { uv_timer_start(&timer, timer_cb, ms, 0); }

  // Answers the request whose head is complete in `in`, or the one that
  // cannot be (too large): one response, then keep-alive or close.
  void process() noexcept {
    if (closing || writing || lingering) return;
    std::size_t end = find_head_end(in, scanned);
    scanned = in.size();
    if (end == std::string_view::npos || end > max_head) {
      if (in.size() <= max_head && end == std::string_view::npos) return;  // Read more.
      // RFC 9110 15.5.15 and RFC 6585 5: a request line too long is 414, a
      // head too long 431.
      bool line_too_long = in.find('\n') == in.npos || in.find('\n') > max_head;
      return respond(line_too_long ? "414 URI Too Long" : "431 Request Header Fields Too Large",
                     "request too large\n", false, true);
    }
    http_head h = parse_http_head(std::string_view(in).substr(0, end));
    if (h.st != http_head::status::ok)
      return respond("400 Bad Request", "bad request\n", false, true);
    // Decided before the head leaves the buffer (h's views borrow it).
    bool head_only = h.method == "HEAD";
    bool allowed = h.method == "GET" || head_only;
    bool found = h.target.substr(0, h.target.find('?')) == "/metrics";
    // A body is never read: its request ends the connection.
    bool close_next = !h.keep_alive || h.has_body;
    in.erase(0, h.length);
    scanned = 0;
    if (!allowed) return respond("405 Method Not Allowed", "only GET and HEAD\n", false, true);
    if (!found) return respond("404 Not Found", "not found: try /metrics\n", head_only, close_next);
    std::string body;
    try {
      render_metrics(owner.srv_.current_metrics(), body);
    } catch (...) {
      return respond("503 Service Unavailable", "out of memory\n", head_only, true);
    }
    respond("200 OK", body, head_only, close_next, metrics_content_type);
  }

  void respond(std::string_view status, std::string_view body, bool head_only, bool last,
               std::string_view type = "text/plain; charset=utf-8") noexcept {
    uv_timer_stop(&timer);
    close_after = last;
    try {
      out.clear();
      fmt::format_to(std::back_inserter(out),
                     FMT_STRING("HTTP/1.1 {}\r\nContent-Type: {}\r\nContent-Length: {}\r\n"
                                "{}Connection: {}\r\n\r\n"),
                     status, type, body.size(),
                     status.starts_with("405") ? "Allow: GET, HEAD\r\n" : "",
                     last ? "close" : "keep-alive");
      if (!head_only) out.append(body);
    } catch (...) {
      return close();
    }
    // Read no more until this response is out: one request at a time.
    uv_read_stop(reinterpret_cast<uv_stream_t*>(&tcp));
    uv_buf_t buf = uv_buf_init(out.data(), static_cast<unsigned>(out.size()));
    req.data = this;
    if (uv_write(&req, reinterpret_cast<uv_stream_t*>(&tcp), &buf, 1, write_cb) != 0)
      return close();
    writing = true;
  }

  void written(int status) noexcept {
    writing = false;
    std::string().swap(out);
    if (closing) return;
    if (status < 0) return close();
    if (close_after) {
      auto* shut = new (std::nothrow) uv_shutdown_t;
      if (!shut || uv_shutdown(shut, reinterpret_cast<uv_stream_t*>(&tcp), shutdown_cb) != 0) {
        delete shut;
        return close();
      }
      shut->data = this;
      lingering = true;
      std::string().swap(in);
      arm(linger_ms);
      return start_reading();
    }
    arm(request_timeout_ms);
    start_reading();
    process();  // A pipelined request may be there already.
  }

  static void alloc_cb(uv_handle_t* handle, size_t, uv_buf_t* buf) noexcept {
    auto* self = static_cast<client*>(handle->data);
    *buf = uv_buf_init(self->owner.read_buf_, sizeof self->owner.read_buf_);
  }
  static void read_cb(uv_stream_t* stream, ssize_t nread, const uv_buf_t* buf) noexcept {
    auto* self = static_cast<client*>(stream->data);
    if (nread < 0) return self->close();  // EOF or an error: nothing to answer.
    if (nread == 0 || self->lingering) return;
    try {
      self->in.append(buf->base, static_cast<std::size_t>(nread));
    } catch (...) {
      return self->close();
    }
    self->process();
  }
  static void write_cb(uv_write_t* req, int status) noexcept {
    static_cast<client*>(req->data)->written(status);
  }
  static void shutdown_cb(uv_shutdown_t* req, int status) noexcept {
    auto* self = static_cast<client*>(req->data);
    delete req;
    if (!self->closing && status < 0) self->close();
  }
  static void timer_cb(uv_timer_t* timer) noexcept {
    // The request did not come in time, or the linger is over.
    static_cast<client*>(timer->data)->close();
  }
  static void close_cb(uv_handle_t* handle) noexcept {
    auto* self = static_cast<client*>(handle->data);
    if (--self->open_handles > 0) return;
    metrics_http& owner = self->owner;
    if (self->prev)
      self->prev->next = self->next;
    else
      owner.clients_ = self->next;
    if (self->next)
      self->next->prev = self->prev;
    else
      owner.oldest_ = self->prev;
    delete self;
    owner.closed_one();
  }
};

metrics_http* metrics_http::open(server::state& srv, std::string_view address, std::string& error) {
  sockaddr_storage addr{};
  // A bare port is on loopback: metrics are for the local Prometheus (or
  // one reached through a tunnel) unless an address says otherwise.
  std::string with_host;
  if (!address.empty() && address.find_first_not_of("0123456789") == address.npos) {
    with_host = fmt::format(FMT_STRING("127.0.0.1:{}"), address);
    address = with_host;
  }
  if (!parse_address(address, addr)) {
    error = fmt::format(FMT_STRING("bad metrics address '{}': want ADDR:PORT or PORT"), address);
    return nullptr;
  }
  auto* m = new metrics_http(srv);
  uv_tcp_init(srv.loop, &m->tcp_);
  m->tcp_.data = m;
  m->open_ = 1;
  int rc = uv_tcp_bind(&m->tcp_, reinterpret_cast<const sockaddr*>(&addr), 0);
  if (rc == 0) rc = uv_listen(reinterpret_cast<uv_stream_t*>(&m->tcp_), 64, connection_cb);
  if (rc != 0) {
    error = fmt::format(FMT_STRING("cannot serve metrics on {}: {} ({})"), address, uv_strerror(rc),
                        uv_err_name(rc));
    // Not the server's yet: close_cb frees it without telling the server.
    m->closing_ = true;
    uv_close(reinterpret_cast<uv_handle_t*>(&m->tcp_),
             [](uv_handle_t* h) { delete static_cast<metrics_http*>(h->data); });
    return nullptr;
  }
  return m;
}

std::string metrics_http::bound_address() const {
  sockaddr_storage addr{};
  int len = sizeof addr;
  if (uv_tcp_getsockname(&tcp_, reinterpret_cast<sockaddr*>(&addr), &len) != 0) return "?";
  return format_address(reinterpret_cast<const sockaddr*>(&addr));
}

void metrics_http::close() noexcept {
  if (closing_) return;
  closing_ = true;
  uv_close(reinterpret_cast<uv_handle_t*>(&tcp_), close_cb);
  for (client* c = clients_; c; c = c->next) c->close();
}

void metrics_http::connection_cb(uv_stream_t* server, int status) noexcept {
  auto* self = static_cast<metrics_http*>(server->data);
  if (status < 0) {
    std::uint64_t now = uv_now(self->srv_.loop);
    if (self->last_accept_error_ == 0 || now - self->last_accept_error_ >= 1000) {
      self->last_accept_error_ = now;
      self->srv_.logf(log_level::warning, "metrics: accept failed: {} ({})", uv_strerror(status),
                      uv_err_name(status));
    }
    return;
  }
  self->accept();
}

void metrics_http::accept() noexcept {
  auto* c = new (std::nothrow) client(*this);
  if (!c) {
    // libuv stops watching a listener whose pending client is not taken:
    // take it and close it.
    auto* spare = new (std::nothrow) uv_tcp_t;
    if (!spare) return;
    uv_tcp_init(srv_.loop, spare);
    (void)uv_accept(reinterpret_cast<uv_stream_t*>(&tcp_), reinterpret_cast<uv_stream_t*>(spare));
    uv_close(reinterpret_cast<uv_handle_t*>(spare),
             [](uv_handle_t* h) { delete reinterpret_cast<uv_tcp_t*>(h); });
    return;
  }
  uv_tcp_init(srv_.loop, &c->tcp);
  uv_timer_init(srv_.loop, &c->timer);
  c->tcp.data = c->timer.data = c;
  ++open_;
  c->next = clients_;
  if (clients_) clients_->prev = c;
  clients_ = c;
  if (!oldest_) oldest_ = c;
  ++live_;
  if (uv_accept(reinterpret_cast<uv_stream_t*>(&tcp_), reinterpret_cast<uv_stream_t*>(&c->tcp)) !=
      0)
    return c->close();
  // Past the cap the oldest goes. Those closed a moment ago stay on the
  // list until their close_cb (the next loop turn), so few are skipped.
  if (live_ > max_clients) {
    client* victim = oldest_;
    while (victim && victim->closing) victim = victim->prev;
    if (victim) victim->close();
  }
  c->arm(request_timeout_ms);
  c->start_reading();
}

void metrics_http::closed_one() noexcept {
  if (--open_ > 0) return;
  server::state& srv = srv_;
  srv.metrics_http = nullptr;
  delete this;
  srv.maybe_done();
}

void metrics_http::close_cb(uv_handle_t* handle) noexcept {
  static_cast<metrics_http*>(handle->data)->closed_one();
}

}  // namespace inboxd::net
