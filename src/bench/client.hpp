// bench/client.hpp: one connection slot of inboxd-bench and its SMTP state
// machine.
//
// Pinned: a client embeds its uv_tcp_t (handle.data == this) and is neither
// copied nor moved. The run owns every client for the whole run; a slot's
// socket ends in close_cb, after which the same uv_tcp_t is initialised again
// for the next session (libuv allows reusing handle memory once its close
// callback has run). The run frees clients only after uv_run() has returned.
//
// Hot path: replies are parsed in place in the client's fixed read buffer;
// commands are appended to out_, whose capacity is kept, and leave in one
// write per batch; message text is written straight from message_text's
// slices. No allocation per message. With TLS, the slot's tls_client_stream
// (made once, kept for every session of the slot) sits between these
// buffers and the socket: the socket reads into its fixed ciphertext buffer
// and plaintext is decrypted into in_; what write_bufs() would write is
// encrypted into its output buffer instead (one copy of the message text),
// which is written and then swapped with cipher_sending_ if the socket
// takes only part of it. Capacities are kept, so this allocates nothing per
// message either; a handshake allocates inside mbedTLS, once per session.
//
// The session, in order: connect → [implicit TLS: handshake] → greeting →
// EHLO (HELO when EHLO is refused) → [STARTTLS → handshake → EHLO again] →
// [AUTH PLAIN] → transactions → QUIT. A transaction is MAIL, RCPT × K,
// DATA, message text, or with PIPELINING (RFC 2920) MAIL + RCPT × K + DATA
// in one write, then the message text after the 354 together with the next
// transaction's MAIL + RCPT × K + DATA (RFC 2920 3.1 lets message content
// open a group): one write and one read per message at full speed.
#pragma once

#include <uv.h>

#include <array>
#include <cstdint>
#include <memory>
#include <string>

#include "bench/reply.hpp"
#include "bench/stats.hpp"
#include "bench/tls_client.hpp"

namespace inboxd::bench {

class run;

class client {
 public:
  client(run& r, unsigned index);
  client(const client&) = delete;
  client& operator=(const client&) = delete;

  // Opens a session. Only when the slot has no socket (is_closed()).
  void connect();
  // The scheduler has a message for this ready client (see run::next_message).
  void start_message();
  // No more messages: QUIT now if idle, else after the current transaction.
  void finish();
  // Ends the session now; a transaction in flight is counted as failed.
  void abort(conn_error why);
  // Called by the run's tick: fails the client if its reply is overdue.
  void check_timeout(std::uint64_t now_ms);

  [[nodiscard]] bool is_closed() const noexcept { return state_ == state::closed; }
  [[nodiscard]] bool is_ready() const noexcept { return state_ == state::ready; }
  [[nodiscard]] unsigned index() const noexcept { return index_; }

  // For the run's idle list and reconnect back-off.
  client* next_idle = nullptr;
  bool in_idle_list = false;
  std::uint64_t reconnect_at_ns = 0;  // 0: no reconnect pending

 private:
  enum class state {
    closed,      // no socket: before the first session or between sessions
    connecting,  // uv_tcp_connect pending
    greeting,    // waiting for the 220 (inside TLS with implicit TLS)
    ehlo,        // EHLO sent (again, after STARTTLS, when tls_on_)
    helo,        // EHLO refused; HELO sent
    starttls,    // STARTTLS sent, waiting for its 220
    handshake,   // TLS handshake under way
    auth,        // AUTH PLAIN sent
    ready,       // a session with no transaction; waiting for the scheduler
    mail,        // one command per round trip: MAIL sent
    rcpt,        // RCPT number tx_.replies sent
    data,        // DATA sent
    pipelined,   // MAIL + RCPT × K + DATA sent together: counting replies
    text,        // message text sent, waiting for the final reply
    rset,        // RSET after a refused transaction
    quit,        // QUIT sent, waiting for 221 or the server's close
    closing,     // uv_close called, close_cb pending
  };

  // The transaction in flight; reset by start_message().
  struct transaction {
    std::uint64_t number = 0;    // {n}
    std::uint64_t start_ns = 0;  // latency origin: now, or the scheduled time
    std::size_t size_index = 0;  // into message_text
    bool measured = false;       // started after the warm-up
    unsigned replies = 0;        // replies received in this transaction
    unsigned rcpt_accepted = 0;
    unsigned rcpt_refused = 0;
    bool mail_accepted = false;
    int refusal = 0;  // the first 4xx/5xx, 0 if none
    bool active = false;
  };

  void on_connected(int status);
  void on_read(ssize_t nread);
  // Handles every whole reply line in in_; false when the client is closing.
  bool process_lines();
  void send_ehlo();
  void after_ehlo();
  void begin_tls();
  bool advance_handshake();
  void send_cipher();
  void fail_tls(int mbedtls_code);
  // Handles one whole reply line; returns false when the client is closing.
  bool on_reply_line(const reply_line& line);
  bool on_reply(int code);
  void on_session_up();
  void transaction_finished();
  void next_step();
  void chain_next();
  void end_refused(int code);
  void fail(conn_error why, int uv_code = 0);
  void close();

  void append_group(std::uint64_t number);
  void append_mail(std::uint64_t number);
  void append_rcpt(std::uint64_t number, unsigned recipient);
  void send_mail();
  void send_rcpt(unsigned number);
  void send_data();
  void send_bdat();
  void send_text();
  void send_rset();
  void send_quit();
  void write_text();
  void flush();
  void write_bufs(uv_buf_t* bufs, unsigned count, bool last_is_out);
  void expect_reply() noexcept;

  static void connect_cb(uv_connect_t* req, int status) noexcept;
  static void alloc_cb(uv_handle_t* handle, size_t suggested, uv_buf_t* buf) noexcept;
  static void read_cb(uv_stream_t* stream, ssize_t nread, const uv_buf_t* buf) noexcept;
  static void write_cb(uv_write_t* req, int status) noexcept;
  static void close_cb(uv_handle_t* handle) noexcept;

  uv_stream_t* stream() noexcept { return reinterpret_cast<uv_stream_t*>(&tcp_); }

  run& run_;
  unsigned index_;  // {c}
  state state_ = state::closed;
  uv_tcp_t tcp_{};
  uv_connect_t connect_req_{};
  uv_write_t write_req_{};

  transaction tx_;
  // With PIPELINING, the next transaction's commands (or the QUIT) leave with
  // this message's text; next_tx_ becomes tx_ at this message's final reply.
  transaction next_tx_;
  bool chained_ = false;
  bool quit_chained_ = false;
  std::uint64_t connect_ns_ = 0;
  std::uint64_t deadline_ms_ = 0;  // loop time; 0: no reply due
  std::uint64_t session_messages_ = 0;
  bool pipelining_ = false;       // offered by the server and wanted
  bool ehlo_pipelining_ = false;  // seen in the EHLO reply being read
  bool bdat_ = false;             // --bdat, and CHUNKING offered
  bool ehlo_chunking_ = false;    // seen in the EHLO reply being read
  bool finishing_ = false;        // QUIT after the current transaction
  bool session_failed_ = false;   // ended before any transaction finished
  bool session_ok_ = false;       // a transaction finished in this session

  // TLS (--tls only): the stream is made once per slot and kept for the run.
  std::unique_ptr<tls_client_stream> tls_;
  bool tls_on_ = false;  // this session's bytes go through tls_
  std::uint64_t handshake_ns_ = 0;
  // Ciphertext handed to uv_write, until write_cb; swapped with tls_'s output.
  std::string cipher_sending_;

  // Writes: at most one uv_write in flight. Commands gather in out_ while it
  // is; the message text waits in text_queued_ (its memory is static).
  std::string out_;
  std::string sending_;  // the unwritten rest of a command batch, until write_cb
  // With BDAT the commands go before the text: held here until the next
  // write_text(), which comes only once this write is done.
  std::string bdat_head_;
  bool writing_ = false;
  bool text_queued_ = false;

  // MAIL, every RCPT and DATA of this slot, made once when the --from and
  // --to templates do not use {n} (then every transaction's group is the
  // same bytes); empty otherwise.
  std::string group_;

  // Replies: complete lines are handled straight from here.
  static constexpr std::size_t in_capacity = 8192;
  std::size_t in_len_ = 0;
  std::array<char, in_capacity> in_;
};

}  // namespace inboxd::bench
