// inboxd/filter.hpp: filters that vote at each stage of an SMTP session and
// may change the message: Sendmail milters, Postfix policy services, or an
// embedder's own.
//
// The server opens one filter_session per filter for each SMTP session, in
// the order the filters were configured. At each stage (the connection,
// HELO/EHLO, MAIL, each RCPT, DATA) the session asks every filter in turn and
// waits for its answer before it asks the next or replies: the first that
// refuses decides the reply, as Postfix applies smtpd_milters and
// check_policy_service. The message then passes through every filter's
// message() on its way to the sink, so that a filter can hold it, change it,
// or refuse it before anything is stored.
//
// Every call and callback runs on the loop thread. An answer comes exactly
// once per question, later or already inside the call (as a sink's
// committed() may come inside commit()). One question is open at a time.
// This header includes no libuv or mbedTLS type: the sans-I/O session uses it.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <string_view>

#include "inboxd/sink.hpp"

namespace inboxd {

// The connection, as filters see it; borrowed for filter::open() only.
struct filter_client {
  std::string_view address =
      {};                  // the client's IP ("192.0.2.1", "2001:db8::1"); empty on a unix socket
  std::uint16_t port = 0;  // its port; 0 when unknown
  std::string_view name = {};         // its host name as known (XCLIENT NAME), else "unknown"
  std::string_view server_name = {};  // our host name (session_config::hostname)
  bool lmtp = false;                  // the client speaks LMTP
};

enum class filter_stage : std::uint8_t {
  connect,  // before the greeting
  helo,     // HELO, EHLO or LHLO
  mail,     // MAIL FROM
  rcpt,     // each RCPT TO, after inboxd's own checks accepted it
  data,     // the DATA command, or the first BDAT
};

// What the session knows when it asks; each view is borrowed for the ask()
// call only. Later stages carry what earlier ones learnt.
struct filter_state {
  std::string_view helo = {};  // the HELO/EHLO/LHLO name; empty before
  std::string_view tls = {};   // how TLS was negotiated ("TLSv1.3 with cipher ..."); empty: none
  std::string_view sasl_method = {};   // "PLAIN" or "LOGIN" once AUTH succeeded
  std::string_view sasl_user = {};     // the authenticated user; empty: none
  std::string_view queue_id = {};      // from MAIL on
  std::string_view reverse_path = {};  // from MAIL on; without brackets, empty for <>
  std::string_view mail_params = {};   // MAIL's ESMTP parameters as sent ("SIZE=100 BODY=8BITMIME")
  std::string_view recipient = {};     // at RCPT: its forward-path, without brackets
  std::string_view rcpt_params = {};   // at RCPT: its ESMTP parameters as sent
  std::size_t recipients = 0;          // RCPTs accepted so far in this transaction
  std::size_t size = 0;                // MAIL's SIZE=, or 0
};

enum class filter_action : std::uint8_t {
  proceed,   // no objection: ask the next filter, then go on
  reject,    // refuse the command (5xx); at connect, every command after it
  tempfail,  // refuse it for now (4xx); at connect, 421 and close
  // Take the message and throw it away (a milter's SMFIR_DISCARD): the
  // client is told it was delivered; nothing is stored.
  discard,
  // End the session now with 421 (a milter's SMFIR_SHUTDOWN).
  disconnect,
};

// A filter's answer; the views are borrowed for the filtered() call.
struct filter_verdict {
  filter_action action = filter_action::proceed;
  // The reply the filter asks for ("550 5.7.1 Go away"): used for reject and
  // tempfail when it is a well-formed reply of the right class, escaped to
  // printable ASCII; otherwise the session's own reply.
  std::string_view reply = {};
  // A header field to add at the top of the message ("X-Greylist: delayed"),
  // as a policy service's PREPEND does; empty: none. Kept only on proceed.
  std::string_view prepend = {};
  // A line for the log ("milter 127.0.0.1:8891: continue", "policy: WARN
  // text"); empty: nothing is logged but a refusal.
  std::string_view note = {};
};

class filter_listener {
 public:
  virtual void filtered(const filter_verdict& verdict) noexcept = 0;

 protected:
  ~filter_listener() = default;
};

// One filter's view of one SMTP session.
class filter_session {
 public:
  // Asks at one stage; listener.filtered() answers, exactly once.
  virtual void ask(filter_stage stage, const filter_state& state, filter_listener& listener) = 0;
  // The message passes through the filter on its way to the store. Returns
  // the delivery the session (or the filter before it) writes the message
  // to; that delivery starts next.begin() itself, when it is ready, with
  // env or a changed envelope (a milter may change the sender and the
  // recipients), and ends with listener.committed(), one outcome per
  // mailbox of env, as a sink's delivery does (sink.hpp). A refusal at the
  // end of the message is a failed outcome whose reply says why. Returns
  // null when this filter does not look at messages: the session then goes
  // straight to next.
  virtual delivery* message(const envelope& env, sink& next, delivery_listener& listener) = 0;
  // The transaction is over (RSET, the end of the message, a refused MAIL):
  // a milter sends its abort; nothing of it is asked about any more.
  virtual void reset() noexcept = 0;
  // The SMTP session is over: no listener is called any more, and the
  // filter frees this object once its own work (a connection to close) is
  // done. The filter that opened it may be gone by then.
  virtual void close() noexcept = 0;

 protected:
  ~filter_session() = default;
};

class filter {
 public:
  virtual ~filter() = default;
  // A new SMTP session: the session asks at filter_stage::connect next.
  // Never returns null; a filter that cannot work answers that at ask().
  virtual filter_session* open(const filter_client& client) = 0;
};

}  // namespace inboxd
