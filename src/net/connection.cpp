#include "net/connection.hpp"

#include <cstring>

#include "net/listener.hpp"

namespace inboxd::net {

connection::connection(server::state& srv, std::string peer)
    : srv_(srv),
      id_(++srv.next_connection_id),
      peer_(std::move(peer)),
      session_(srv.settings, *this, srv.ids, std::string{}) {}

void connection::accept(server::state& srv, uv_stream_t* listening) {
  auto* c = new connection(srv, {});
  uv_tcp_init(srv.loop, &c->tcp_);
  c->tcp_.data = c;
  if (int rc = uv_accept(listening, c->stream()); rc != 0) {
    srv.logf(log_level::warning, "accept failed: {} ({})", uv_strerror(rc), uv_err_name(rc));
    uv_close(reinterpret_cast<uv_handle_t*>(&c->tcp_), close_cb);
    c->closing_ = true;
    return;
  }
  // Link first, so that close_cb always finds it in the list.
  c->next = srv.connections;
  if (srv.connections) srv.connections->prev = c;
  srv.connections = c;
  ++srv.connection_count;

  sockaddr_storage addr{};
  int len = sizeof addr;
  std::string ip = "unknown";
  if (uv_tcp_getpeername(&c->tcp_, reinterpret_cast<sockaddr*>(&addr), &len) == 0) {
    c->peer_ = format_address(reinterpret_cast<const sockaddr*>(&addr));
    ip = format_address(reinterpret_cast<const sockaddr*>(&addr), false);
  }
  c->session_.set_client_address(std::move(ip));
  // Replies are small and pipelined batches go out in one write: no Nagle delay.
  uv_tcp_nodelay(&c->tcp_, 1);
  srv.logf(log_level::info, "conn={} connect from {}", c->id_, c->peer_);
  if (srv.shutting_down)
    c->session_.shutdown();
  else
    c->session_.start();
  c->run();
}

void connection::shutdown() {
  session_.shutdown();
  run();
}

// Feeds what was read, sends what the session answered, and decides whether
// to read on. Called after every read, write and sink completion.
void connection::run() {
  if (closing_) return;
  if (in_len_ > 0 && !session_.waiting() && !session_.closing()) {
    std::size_t used = session_.feed({in_, in_len_});
    // Compact between commands only: what is left is a partial command line.
    if (used < in_len_) std::memmove(in_, in_ + used, in_len_ - used);
    in_len_ -= used;
  }
  if (in_len_ == 0) release_buffer();
  flush();
  if (closing_) return;
  if ((session_.closing() || (eof_ && !session_.waiting())) && !writing_) return close();
  update_reading();
}

void connection::update_reading() {
  bool want = !eof_ && !session_.waiting() && !session_.closing();
  if (want == reading_) return;
  reading_ = want;
  if (want) {
    if (int rc = uv_read_start(stream(), alloc_cb, read_cb); rc != 0) {
      srv_.logf(log_level::warning, "conn={} read failed: {}", id_, uv_err_name(rc));
      close();
    }
  } else {
    uv_read_stop(stream());
  }
}

void connection::flush() {
  std::string& out = session_.output();
  if (out.empty() || writing_) return;
  uv_buf_t buf = uv_buf_init(out.data(), static_cast<unsigned>(out.size()));
  int n = uv_try_write(stream(), &buf, 1);
  if (n == static_cast<int>(out.size())) {
    out.clear();
    return;
  }
  if (n < 0 && n != UV_EAGAIN) {
    srv_.logf(log_level::info, "conn={} write failed: {}", id_, uv_err_name(n));
    return close();
  }
  // The socket is full: hand the rest to libuv and keep it alive until write_cb.
  sending_.assign(out, n > 0 ? static_cast<std::size_t>(n) : 0);
  out.clear();
  buf = uv_buf_init(sending_.data(), static_cast<unsigned>(sending_.size()));
  writing_ = true;
  if (int rc = uv_write(&write_req_, stream(), &buf, 1, write_cb); rc != 0) {
    writing_ = false;
    srv_.logf(log_level::info, "conn={} write failed: {}", id_, uv_err_name(rc));
    close();
  }
}

void connection::release_buffer() {
  if (!in_) return;
  srv_.buffers.give_back(in_);
  in_ = nullptr;
  in_len_ = 0;
}

void connection::close() {
  if (closing_) return;
  closing_ = true;
  session_.disconnect();
  release_buffer();
  uv_close(reinterpret_cast<uv_handle_t*>(&tcp_), close_cb);
}

void connection::session_ready() noexcept {
  run();
}

void connection::session_log(log_level level, std::string_view line) noexcept {
  srv_.logf(level, "conn={} {}", id_, line);
}

void connection::alloc_cb(uv_handle_t* handle, size_t, uv_buf_t* buf) noexcept {
  auto* self = static_cast<connection*>(handle->data);
  if (!self->in_) self->in_ = self->srv_.buffers.take();
  // A full buffer gives libuv no room: the read fails with UV_ENOBUFS.
  *buf = uv_buf_init(self->in_ + self->in_len_,
                     static_cast<unsigned>(buffer_pool::buffer_size - self->in_len_));
}

void connection::read_cb(uv_stream_t* stream, ssize_t nread, const uv_buf_t*) noexcept {
  auto* self = static_cast<connection*>(stream->data);
  if (nread > 0) {
    self->in_len_ += static_cast<std::size_t>(nread);
  } else if (nread == UV_EOF) {
    self->eof_ = true;
  } else if (nread < 0 && nread != UV_ENOBUFS) {
    self->srv_.logf(log_level::info, "conn={} read failed: {}", self->id_,
                    uv_err_name(static_cast<int>(nread)));
    return self->close();
  }
  self->run();
}

void connection::write_cb(uv_write_t* req, int status) noexcept {
  auto* self = static_cast<connection*>(req->handle->data);
  self->writing_ = false;
  self->sending_.clear();
  if (self->closing_) return;
  if (status < 0) {
    self->srv_.logf(log_level::info, "conn={} write failed: {}", self->id_, uv_err_name(status));
    return self->close();
  }
  self->run();
}

void connection::close_cb(uv_handle_t* handle) noexcept {
  auto* self = static_cast<connection*>(handle->data);
  server::state& srv = self->srv_;
  bool linked = self->prev || self->next || srv.connections == self;
  if (linked) {
    if (self->prev)
      self->prev->next = self->next;
    else
      srv.connections = self->next;
    if (self->next) self->next->prev = self->prev;
    --srv.connection_count;
    srv.logf(log_level::info, "conn={} disconnect from {}", self->id_, self->peer_);
  }
  delete self;
  srv.maybe_done();
}

}  // namespace inboxd::net
