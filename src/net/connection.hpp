// net/connection.hpp: one SMTP client, bound to one proto::session.
//
// Pinned: the connection embeds its uv_tcp_t (a uv_pipe_t on a unix socket) and uv_timer_t
// (handle.data == this), is never copied or moved, and is freed only when both handles have closed.
// It owns its read buffer while it has unconsumed input and gives it back to the pool when idle.
// Reading stops while the session waits (backpressure); replies go out with one write per feed.
//
// With TLS (STARTTLS, or an implicit-TLS listener) ciphertext goes through a
// tls_stream: read bytes are fed to it, plaintext comes out into the same
// input buffer the session reads, and replies are encrypted on their way out.
//
// A connection the server ends (QUIT, a 421, a 554, a refusal over a limit)
// closes in two steps, as nginx's lingering close does: once the last reply
// is written, the write side is shut and what the client still sends is
// read and dropped, for a bounded time and size; then the socket closes.
// Closing at once over unread input would make the kernel send a reset.
//
// No exception leaves a libuv callback: each one runs its work through
// guard(), which closes this connection (and no other) on an exception.
#pragma once

#include <uv.h>

#include <memory>
#include <string>

#include "net/server_state.hpp"
#include "net/tls.hpp"
#include "proto/proxy_header.hpp"
#include "proto/session.hpp"

namespace inboxd::net {

class connection final : proto::session_events {
 public:
  // Accepts one pending connection from a listening stream.
  // unix_socket: the listener is a uv_pipe_t; lmtp: the session speaks LMTP;
  // proxy: a PROXY protocol header comes first (read_proxy_header).
  static void accept(server::state& srv, uv_stream_t* listening, bool implicit_tls, bool lmtp,
                     bool proxy, bool unix_socket) noexcept;

  // Server shutdown: 421 at the next command boundary (now, when idle).
  void shutdown() noexcept;
  // Closes the socket now; the connection is freed once its handles close.
  void close() noexcept;

  connection* next = nullptr;  // the server's list
  connection* prev = nullptr;

 private:
  connection(server::state& srv, std::string peer);
  ~connection() = default;

  void start(bool implicit_tls, bool lmtp, bool proxy);
  void begin(bool implicit_tls);
  void read_proxy_header();
  void use_proxy_header();
  void on_timer();
  void on_read(ssize_t nread, const uv_buf_t* buf);
  template <typename F>
  void guard(F&& work) noexcept;
  void run();
  void finish();
  void linger();
  void unadmit() noexcept;
  void admit_total();
  void give_back(char* buffer) noexcept;
  bool advance_tls();
  std::size_t pull_plaintext();
  void begin_starttls();
  void flush();
  void send();
  void update_reading();
  void release_buffer();
  void stash_partial();
  void take_buffer();
  // The connection's one timer serves one purpose at a time.
  enum class timer_use : std::uint8_t {
    none,
    proxy_header,  // waiting for the PROXY protocol header
    greeting,
    handshake,
    sleep,
    idle,
    last_write,  // the last replies are on their way (finish)
    linger,      // reading and dropping before the close (linger)
  };
  void start_timer(timer_use use, std::uint64_t ms);
  void arm_idle();
  void note_data_rate(std::size_t bytes);
  [[nodiscard]] std::size_t unsent() const noexcept {
    return out_.size() + (write_ ? write_->bytes.size() : 0);
  }
  // The client's address, without the port, as format_address() wrote it
  // into peer_ ("unknown" when the peer was not known).
  [[nodiscard]] std::string_view ip() const noexcept;
  void admit();
  [[nodiscard]] bool over_limits();

  void session_ready() noexcept override;
  void session_log(log_level level, std::string_view line) noexcept override;
  void session_sleep(std::uint32_t milliseconds) noexcept override;

  static void alloc_cb(uv_handle_t* handle, size_t suggested, uv_buf_t* buf) noexcept;
  static void read_cb(uv_stream_t* stream, ssize_t nread, const uv_buf_t* buf) noexcept;
  static void write_cb(uv_write_t* req, int status) noexcept;
  static void shutdown_cb(uv_shutdown_t* req, int status) noexcept;
  static void timer_cb(uv_timer_t* timer) noexcept;
  static void close_cb(uv_handle_t* handle) noexcept;

  // Either handle starts with the stream's fields, at one address.
  uv_stream_t* stream() noexcept { return reinterpret_cast<uv_stream_t*>(&tcp_); }

  // Ordered by size, so that an idle connection carries no padding: an
  // idle connection is this object and nothing else but its kernel socket
  // (and the session's reply buffer), and thousands of them may be open.
  server::state& srv_;
  union {
    uv_tcp_t tcp_{};
    uv_pipe_t pipe_;  // a client on a unix socket (unix_)
  };
  uv_timer_t timer_{};
  proto::session session_;
  std::string key_;   // the address as the per-address limits count it (limit_key)
  std::string peer_;  // "127.0.0.1:5555" for the log; ip() is its address part
  // A partial command line kept between reads without the buffer.
  std::string partial_;
  std::string out_;  // bytes for the socket (plaintext, or ciphertext under TLS)
  // A write libuv has taken and not completed: allocated only while one is
  // pending (the socket was full), so that an idle connection does not carry
  // a uv_write_t. Freed in write_cb, which libuv calls even on close.
  struct pending_write {
    uv_write_t req{};
    std::string bytes;  // alive until write_cb
  };
  std::unique_ptr<pending_write> write_;  // null: no write pending
  std::unique_ptr<tls_stream> tls_;       // null: plaintext
  // The PROXY header being read: made at accept on a PROXY listener, freed
  // once the header is complete, so that a connection past it carries none.
  std::unique_ptr<proto::proxy_header_parser> proxy_;
  std::uint64_t id_;
  std::uint64_t data_start_ = 0;  // uv_now() when DATA began, 0 outside DATA
  std::uint64_t data_bytes_ = 0;
  std::uint64_t commands_seen_ = 0;  // session_.commands() when the timer was armed
  // Borrowed from srv_.buffers while in_len_ > 0: plaintext for the session.
  char* in_ = nullptr;
  std::size_t in_len_ = 0;
  // With TLS, libuv reads ciphertext into this pooled buffer instead.
  char* raw_ = nullptr;
  std::size_t lingered_ = 0;  // bytes dropped while lingering
  int open_handles_ = 0;
  timer_use timer_use_ = timer_use::none;
  bool admitted_ = false;   // counted against the total connection limit
  bool keyed_ = false;      // counted in srv_.per_ip under key_
  bool got_bytes_ = false;  // bytes read since the last run()
  bool implicit_tls_ = false;
  bool unix_ = false;     // a unix-socket client: no IP, one limit key, no per-IP limits
  bool carried_ = false;  // the client's address came in a PROXY header
  bool reading_ = false;
  bool eof_ = false;
  bool alloc_failed_ = false;  // alloc_cb could not get a buffer
  bool finishing_ = false;     // no more input for the session; linger once written
  bool lingering_ = false;     // write side shut; reading and dropping
  bool closing_ = false;
};

}  // namespace inboxd::net
