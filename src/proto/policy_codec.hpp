// proto/policy_codec.hpp: Postfix's policy delegation protocol
// (SMTPD_POLICY_README), sans-I/O: the request a policy client sends, a
// bounded incremental decoder of the server's answer, and what an answer
// (an access(5) action) means for the SMTP client.
//
// A request is "name=value" lines and an empty line; the answer is
// "action=..." and an empty line. Nothing here owns a socket: src/filter
// sends the bytes and feeds what comes back.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

#include "inboxd/filter.hpp"

namespace inboxd::proto {

// What inboxd knows of a client and a transaction, in the README's
// attributes. Every view is borrowed for encode_policy_request() only.
struct policy_request {
  std::string_view protocol_state = {};  // "RCPT", "END-OF-MESSAGE"
  std::string_view protocol_name = {};   // "SMTP", "ESMTP", "LMTP"
  std::string_view helo_name = {};
  std::string_view queue_id = {};
  std::string_view sender = {};     // without brackets; empty for <>
  std::string_view recipient = {};  // at RCPT; at END-OF-MESSAGE when there is one only
  std::size_t recipient_count = 0;  // 0 at RCPT, as Postfix sends it
  std::string_view client_address = {};
  std::uint16_t client_port = 0;
  std::string_view client_name = {};          // "unknown" when unknown
  std::string_view reverse_client_name = {};  // likewise
  std::string_view instance = {};             // the same for every request of one message
  std::string_view sasl_method = {};
  std::string_view sasl_username = {};
  std::size_t size = 0;  // MAIL's SIZE= at RCPT; the bytes received at END-OF-MESSAGE
  // From the session's TLS line ("TLSv1.3 with cipher TLS-AES-256-GCM-SHA384").
  std::string_view tls = {};
};

// Appends the request: every attribute Postfix 3.x sends that inboxd can
// fill (the rest empty, as Postfix sends what it does not know), then the
// empty line. Values lose their CR, LF and NUL octets, which would end an
// attribute early and let a client inject one.
void encode_policy_request(const policy_request& r, std::string& out);

// The server's answer: "action=TEXT\n\n". As Postfix's attr_scan_plain with
// ATTR_FLAG_MISSING, any other attribute, a repeated action, an empty line
// before the action, or an answer past max_answer octets is an error (the
// caller drops the connection and tries again). A CR before a LF is taken
// off, for servers that end lines with CRLF.
class policy_answer_decoder {
 public:
  static constexpr std::size_t max_answer = 4096;
  enum class status : std::uint8_t { need_more, done, error };
  struct result {
    status st = status::need_more;
    std::size_t consumed = 0;  // octets of this feed() taken
  };
  // Takes bytes up to the end of the answer; once done or failed, nothing.
  result feed(std::string_view bytes);
  // After done: the action text, without "action=".
  [[nodiscard]] std::string_view action() const noexcept { return action_; }
  // After error: what was wrong, for the log.
  [[nodiscard]] std::string_view error() const noexcept { return error_; }
  void reset() noexcept;

 private:
  status line(std::string_view l);
  status st_ = status::need_more;
  std::size_t seen_ = 0;
  bool have_action_ = false;
  std::string partial_;  // the line so far
  std::string action_;
  std::string_view error_;
};

// Where an answer applies; names the reply as Postfix's does
// ("<b@example.com>: Recipient address rejected: ...",
// "<END-OF-MESSAGE>: End-of-data rejected: ...").
enum class policy_state : std::uint8_t { rcpt, end_of_message };

// An answer as the session uses it (filter.hpp's filter_verdict, owned).
struct policy_decision {
  filter_action action = filter_action::proceed;
  std::string reply;    // for reject and tempfail: one SMTP reply line
  std::string prepend;  // a PREPEND header on proceed
  bool warn = false;    // WARN, or an action inboxd ignores: worth a log line
};

// Maps an action as Postfix's check_table_result() does (access(5)):
// OK, RELAY, DUNNO and an all-digit result proceed; REJECT [text] is 554
// (access_map_reject_code) with 5.7.1; DEFER and DEFER_IF_PERMIT [text]
// are 450 (access_map_defer_code) with 4.7.1; "4NN text" and "5NN text"
// refuse with that code. Each text may start with an enhanced code (RFC
// 3463), which replaces the default, its class made the reply's. HOLD is
// DEFER (inboxd has no queue to hold mail in); DISCARD discards; PREPEND
// adds a header (not at END-OF-MESSAGE, as Postfix); WARN and
// DEFER_IF_REJECT go on. Anything else, FILTER, REDIRECT and BCC among it,
// which inboxd cannot do, is Postfix's "451 4.3.5 Server configuration
// error". name is the recipient at RCPT.
[[nodiscard]] policy_decision decide_policy(std::string_view action, policy_state state,
                                            std::string_view name);

}  // namespace inboxd::proto
