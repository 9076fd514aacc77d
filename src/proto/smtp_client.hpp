// proto/smtp_client.hpp: the client side of SMTP and LMTP, sans-I/O.
//
// smtp_client is the state machine a hand-off sink (src/relay) drives: it
// is fed the next hop's bytes and leaves the bytes to send in output(). It
// reads the greeting, sends EHLO (LHLO for LMTP) and reads the extensions,
// asks for STARTTLS (the I/O side does the handshake, then calls
// tls_started()) and AUTH PLAIN, then carries messages one after another:
// MAIL with its parameters, RCPT (pipelined where offered), DATA with
// dot-stuffing and CRLF line ends or BDAT where CHUNKING is offered, and the
// replies per recipient. Nothing here blocks, allocates per byte or trusts
// the hop: replies are parsed with bounded lines and counts, and anything
// else is a protocol error that ends the connection.
//
// The reply of every recipient is kept as the hop gave it ("550 5.1.1
// <a@b>: unknown user"): the sink hands it back to the client.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "inboxd/sink.hpp"

namespace inboxd::proto {

// One reply: its code and its text, the lines of a multi-line reply joined
// with spaces ("250 2.0.0 Ok queued").
struct smtp_reply {
  int code = 0;
  std::string line;
  std::vector<std::string> lines;  // each line's text after the code (EHLO's keywords)
};

// Reads replies (RFC 5321 4.2): "ddd-text" lines then one "ddd text" line,
// CRLF (or a bare LF) at the end of each. Bounded: a line is at most
// max_line bytes, a reply at most max_lines lines; a longer one, a code
// outside 200-599, a continuation with another code or any other shape is
// garbage and an error (the parser does not resynchronise: the connection
// is closed).
class reply_parser {
 public:
  static constexpr std::size_t max_line = 2048;  // RFC 5321 4.5.3.1.5 says 512; be lenient
  static constexpr std::size_t max_lines = 100;
  static constexpr std::size_t max_text = 1000;  // of a joined reply line

  enum class status : std::uint8_t { need_more, reply, error };

  // Consumes bytes from in up to the end of one reply (then `reply` and the
  // reply in out) or all of them (need_more: the parser keeps what it read).
  status parse(std::string_view& in, smtp_reply& out);
  [[nodiscard]] const std::string& error() const noexcept { return error_; }

 private:
  status line(std::string_view text, smtp_reply& out);
  std::string partial_;            // an incomplete line, at most max_line bytes
  std::string text_;               // the joined text of the reply so far
  std::vector<std::string> kept_;  // its lines so far
  int code_ = 0;
  std::size_t lines_ = 0;
  std::string error_;
};

// What the next hop offers in its EHLO/LHLO reply.
struct hop_extensions {
  bool pipelining = false, size = false, eightbitmime = false, smtputf8 = false;
  bool chunking = false, binarymime = false, dsn = false, starttls = false;
  bool auth_plain = false, requiretls = false;
  std::uint64_t max_size = 0;  // SIZE's number; 0: none given
};

// Reads the extensions from the lines of an EHLO reply (each line's text
// after the code, the first being the greeting name).
void parse_extension(std::string_view keyword_line, hop_extensions& ext);

struct smtp_client_options {
  bool lmtp = false;  // LHLO and a reply per recipient after the data (RFC 2033)
  std::string helo = "localhost";
  enum class tls : std::uint8_t { none, may, require } starttls = tls::none;
  // With a password: AUTH PLAIN (RFC 4954) after EHLO, only inside TLS (as
  // Postfix's smtp_sasl_security_options = noplaintext).
  std::string auth_user = {};
  std::string auth_password = {};
};

// The outcome of one recipient (one RCPT) of a message.
struct rcpt_outcome {
  store_result result = store_result::temporary_fail;
  std::string reply;  // the hop's reply, or one of ours for a failure it did not answer
};

class smtp_client {
 public:
  enum class state : std::uint8_t {
    greeting,   // waiting for the greeting
    helo,       // EHLO/LHLO sent
    starttls,   // STARTTLS sent
    handshake,  // the I/O side does the TLS handshake, then tls_started()
    auth,       // AUTH sent
    ready,      // idle: start() takes a message
    envelope,   // MAIL and RCPT sent, replies coming
    data,       // DATA sent, waiting for 354
    body,       // body() takes bytes; finish() ends the message
    result,     // the end of data sent, waiting for the reply (or LMTP's replies)
    done,       // outcomes() is complete; take() makes the client ready again
    reset,      // RSET sent after a message; ready when its 250 comes
    quit,       // QUIT sent, or the hop's 421: nothing more
    failed,     // a protocol error, a refusal of the session, or what fail() says
  };

  explicit smtp_client(smtp_client_options options) : options_(std::move(options)) {}

  // The hop's bytes, consumed from the front. Stops early, leaving the rest
  // in bytes, where the driver must act first (states ready, done and
  // handshake); feed the rest after acting. Returns false once the client has
  // failed (see error()).
  bool feed(std::string_view& bytes);
  // The TLS handshake that state::handshake asked for is done: EHLO again.
  void tls_started();
  // Begins a message in state ready. Returns false (and the client stays
  // ready, with outcomes() saying why for every recipient) when the hop cannot
  // take it: SMTPUTF8, REQUIRETLS or BINARYMIME that the hop does not offer.
  // tls says whether the connection is encrypted (REQUIRETLS needs it).
  // One RCPT goes for each distinct address of env.recipients (the mailboxes
  // an alias gives share their RCPT's): the next hop resolves it again.
  bool start(const envelope& env, bool tls);
  // Body bytes as the sink gets them (LF line ends, dot-unstuffed); kept
  // here until the hop may have them, then moved into output().
  void body(std::string_view bytes);
  // The body is complete: the end of data goes out when the hop is ready.
  void finish();
  // After done: back to ready (RSET first when the message did not go
  // through, so that the hop forgets the transaction).
  void take();
  // Ends the session politely (QUIT) where it is idle.
  void quit();
  // The I/O side gave up (timeout, dropped connection): every recipient
  // still open gets a temporary failure with reply as our own text.
  void fail(std::string_view reply);

  [[nodiscard]] state current() const noexcept { return state_; }
  [[nodiscard]] const hop_extensions& extensions() const noexcept { return ext_; }
  // Bytes to send; the I/O side takes them and clears the string.
  std::string& output() noexcept { return out_; }
  // Body bytes held until the hop is ready for them (for backpressure).
  [[nodiscard]] std::size_t held() const noexcept { return held_.size(); }
  // In state body, a reply from the hop is outstanding (a BDAT chunk's, or
  // the body is complete and waits for those): the driver times the wait.
  [[nodiscard]] bool awaiting_reply() const noexcept {
    return state_ == state::body && (chunks_ > 0 || finished_);
  }
  // Per RCPT, in start()'s order; complete in state done (and failed).
  [[nodiscard]] std::span<const rcpt_outcome> outcomes() const noexcept { return outcomes_; }
  // The outcome of mailbox i of the envelope start() was given.
  [[nodiscard]] const rcpt_outcome& outcome_of(std::size_t mailbox) const noexcept {
    return outcomes_[rcpt_of_[mailbox]];
  }
  // Why the session failed, with the hop's reply when there was one.
  [[nodiscard]] const std::string& error() const noexcept { return error_; }
  // A reply on an idle connection (the hop's 421 before closing) ends it.
  [[nodiscard]] bool usable() const noexcept { return state_ == state::ready; }

 private:
  void on_reply(const smtp_reply& r);
  void on_greeting(const smtp_reply& r);
  void on_helo(const smtp_reply& r);
  void after_helo();
  void on_envelope(const smtp_reply& r);
  void on_data(const smtp_reply& r);
  void on_result(const smtp_reply& r);
  void send_data_command();
  void release();
  void drop_message();
  void all_fail(store_result result, std::string_view reply);
  void give_up(std::string why);
  void send(std::string_view command);

  smtp_client_options options_;
  state state_ = state::greeting;
  reply_parser parser_;
  hop_extensions ext_;
  bool helo_again_ = false;  // EHLO after STARTTLS
  bool tls_ = false;         // tls_started(): the connection is encrypted
  std::vector<std::string> ehlo_lines_;
  std::string out_;
  std::string held_;  // encoded body bytes not yet in out_
  std::string error_;
  // The message in progress.
  std::vector<rcpt_outcome> outcomes_;
  std::vector<std::size_t> rcpt_of_;    // mailbox -> RCPT
  std::vector<std::string> rcpt_cmds_;  // the RCPT commands, one per RCPT address
  std::vector<std::uint8_t> final_;     // per RCPT: its outcome is known
  std::size_t sent_ = 0;                // RCPTs sent
  std::size_t answered_ = 0;            // replies to MAIL and RCPT so far
  std::size_t accepted_ = 0;            // RCPTs the hop accepted
  std::size_t chunks_ = 0;              // BDAT replies outstanding
  bool mail_refused_ = false;
  bool bdat_ = false;           // BDAT instead of DATA
  bool binary_ = false;         // BODY=BINARYMIME: the body after the header as sent
  bool all_or_nothing_ = true;  // one refused RCPT fails the message
  bool finished_ = false;       // finish() was called
  bool skip_ = false;           // the message does not go: the body is dropped
  bool go_ = false;             // the hop takes body bytes now (354, or BDAT)
  bool line_start_ = true;      // the encoder is at the start of a line
  bool in_header_ = true;       // BINARYMIME: before the empty line that ends the header
  bool transacted_ = false;     // a MAIL was sent since the last RSET or end of data
};

}  // namespace inboxd::proto
