// proto/pop3_session.hpp: the POP3 server state machine (RFC 1939, 2449,
// 2595, 5034), sans I/O.
//
// The same contract as proto::session, so that one net::connection drives
// either: the connection feeds the bytes it read, the session runs every
// complete command (RFC 2449 PIPELINING), appends the replies to output(),
// and the connection writes them. feed() stops where the session must wait:
// for a password check, a delay after a failed login, the maildrop (open,
// a read, the update after QUIT), STLS, or room for more of a long reply.
// When the wait ends, events.session_ready() asks the connection to go on.
//
// Multi-line replies (LIST, UIDL, RETR, TOP) are made a piece at a time:
// once output() holds stream_chunk octets the session waits, and the
// connection calls output_room() when what it has not yet sent is small
// again. A maildrop of 100,000 messages or a 50 MB message never sits in
// memory as one reply.
//
// States (RFC 1939 3): AUTHORIZATION (USER/PASS, AUTH PLAIN, STLS, CAPA),
// TRANSACTION (the maildrop is locked and listed), UPDATE (after QUIT: the
// messages marked with DELE are removed). A session that ends any other way
// (the client gone, a timeout, a shutdown) removes nothing.
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "inboxd/auth.hpp"
#include "inboxd/maildrop.hpp"
#include "proto/line_reader.hpp"
#include "proto/reply.hpp"
#include "proto/session.hpp"  // session_events
#include "proto/settings.hpp"

namespace inboxd::proto {

class pop3_session final : auth_listener, drop_listener {
 public:
  // RFC 2449 4: a command line is at most 255 octets with its CRLF; an AUTH
  // line with an initial response, or a SASL response, up to this many.
  static constexpr std::size_t max_command = 255;
  static constexpr std::size_t max_sasl_line = 12'288;
  // The session waits for output_room() once output() holds this much.
  static constexpr std::size_t stream_chunk = 64 * 1024;

  // current and events must outlive the session.
  pop3_session(const settings_ptr& current, session_events& events, std::string client_address);
  ~pop3_session();
  pop3_session(const pop3_session&) = delete;
  pop3_session& operator=(const pop3_session&) = delete;

  // The client's IP address for the log (empty: a unix-socket client).
  void set_client_address(std::string address) { client_address_ = std::move(address); }

  // Appends the +OK greeting.
  void start();
  // Runs every complete command in input and returns how many bytes were
  // used; the rest (a partial line) must be passed again with more after it.
  std::size_t feed(std::span<char> input);
  // Replies not yet sent; the connection takes them (clear or swap).
  std::string& output() noexcept { return out_; }
  // Do not feed until session_ready() (or tls_started()).
  [[nodiscard]] bool waiting() const noexcept;
  // The connection has sent all but a little of what it took: a long reply
  // that waits for room goes on.
  void output_room();
  // STLS was answered +OK: send output in plaintext, drop any input after
  // the command (as after SMTP's STARTTLS), start the handshake.
  [[nodiscard]] bool starttls_requested() const noexcept { return starttls_; }
  // The handshake is done (for implicit TLS: call before start()); the
  // session is back in AUTHORIZATION inside TLS, and CAPA says so.
  void tls_started(std::string description);
  // A delay asked with session_sleep() is over.
  void wake();
  // The autologout timer ran out (RFC 1939 3): -ERR, close, remove nothing.
  void time_out(reply_id why);
  // Command lines handled so far: the connection's idle timer restarts when
  // this moves (and while a long reply is being sent).
  [[nodiscard]] std::uint64_t commands() const noexcept { return commands_; }
  // POP3 has no DATA phase: the connection applies the command timeout only.
  [[nodiscard]] bool in_data() const noexcept { return false; }
  // Send the output, then close.
  [[nodiscard]] bool closing() const noexcept { return closing_; }
  // Not waiting and no maildrop held: safe to close on shutdown.
  [[nodiscard]] bool idle() const noexcept;
  // Server shutdown: "-ERR [SYS/TEMP] shutting down" at the next command
  // boundary (now when idle); the maildrop is let go, nothing removed.
  void shutdown();
  // The client is gone: let the maildrop go (nothing is removed), cancel a
  // password check.
  void disconnect() noexcept;

 private:
  void auth_checked(auth_result result) noexcept override;
  void drop_opened(drop_status status, std::string_view detail) noexcept override;
  void drop_read(std::string_view bytes, bool eof, int error) noexcept override;
  void drop_updated(std::size_t removed, int error) noexcept override;

  // The private part is the implementer's (src/proto/pop3_session.cpp).
  settings_ptr cfg_;
  const settings_ptr& current_;
  session_events& events_;
  std::string client_address_;
  std::string out_;
  std::uint64_t commands_ = 0;
  bool starttls_ = false;
  bool closing_ = false;
};

}  // namespace inboxd::proto
