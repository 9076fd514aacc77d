// net/connection.hpp: one SMTP client, bound to one proto::session.
//
// Pinned: the connection embeds its uv_tcp_t (handle.data == this), is never
// copied or moved, and is freed only in its uv_close callback. It owns its
// read buffer while it has unconsumed input and gives it back to the pool
// when idle. Reading stops while the session waits for the sink
// (backpressure); replies go out with one write per feed.
#pragma once

#include <uv.h>

#include <string>

#include "net/server_state.hpp"
#include "proto/session.hpp"

namespace inboxd::net {

class connection final : proto::session_events {
 public:
  // Accepts one pending connection from a listening stream.
  static void accept(server::state& srv, uv_stream_t* listening);

  // Server shutdown: 421 at the next command boundary (now, when idle).
  void shutdown();
  // Closes the socket now; the connection is freed in close_cb.
  void close();

  connection* next = nullptr;  // the server's list
  connection* prev = nullptr;

 private:
  connection(server::state& srv, std::string peer);
  ~connection() = default;

  void run();
  void flush();
  void update_reading();
  void release_buffer();

  void session_ready() noexcept override;
  void session_log(log_level level, std::string_view line) noexcept override;

  static void alloc_cb(uv_handle_t* handle, size_t suggested, uv_buf_t* buf) noexcept;
  static void read_cb(uv_stream_t* stream, ssize_t nread, const uv_buf_t* buf) noexcept;
  static void write_cb(uv_write_t* req, int status) noexcept;
  static void close_cb(uv_handle_t* handle) noexcept;

  uv_stream_t* stream() noexcept { return reinterpret_cast<uv_stream_t*>(&tcp_); }

  server::state& srv_;
  uv_tcp_t tcp_{};
  std::uint64_t id_;
  std::string peer_;  // "[127.0.0.1]:5555" for the log
  proto::session session_;

  // Borrowed from srv_.buffers while in_len_ > 0 (or a read is pending).
  char* in_ = nullptr;
  std::size_t in_len_ = 0;

  // Bytes handed to uv_write; they live here until write_cb.
  std::string sending_;
  uv_write_t write_req_{};
  bool writing_ = false;
  bool reading_ = false;
  bool eof_ = false;
  bool closing_ = false;
};

}  // namespace inboxd::net
