// proto/reply.hpp: the one catalogue of SMTP replies.
//
// Every reply inboxd sends is an entry here: its RFC 5321 basic code, its RFC
// 3463 enhanced code and its default text. Every 4xx and 5xx carries an
// enhanced code (RFC 2034 3; Postfix's rule). Replies are appended to the
// session's output buffer and flushed by the connection, once per feed.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

namespace inboxd::proto {

enum class reply_id : std::uint8_t {
  ok,                  // 250 2.0.0 Ok
  mail_ok,             // 250 2.1.0 Ok
  rcpt_ok,             // 250 2.1.5 Ok
  queued,              // 250 2.0.0 Ok: queued as <id>
  start_data,          // 354 End data with <CR><LF>.<CR><LF>
  bye,                 // 221 2.0.0 Bye
  help,                // 214 2.0.0
  cannot_vrfy,         // 252 2.5.2
  shutting_down,       // 421 4.3.2
  store_failed,        // 451 4.3.0
  no_space,            // 452 4.3.1
  too_many_rcpts,      // 452 4.5.3
  store_rejected,      // 554 5.3.0
  unknown_command,     // 500 5.5.2
  line_too_long,       // 500 5.5.2
  bad_syntax,          // 501 5.5.4
  bad_sender,          // 501 5.1.7
  bad_recipient,       // 501 5.1.3
  bad_sequence,        // 503 5.5.1
  need_helo,           // 503 5.5.1
  nested_mail,         // 503 5.5.1
  need_mail,           // 503 5.5.1
  need_rcpt,           // 503 5.5.1
  no_valid_rcpts,      // 554 5.5.1
  bad_param,           // 555 5.5.4
  size_declared,       // 552 5.3.4
  size_exceeded,       // 552 5.3.4
  bare_lf,             // 550 5.5.2
  bare_cr,             // 550 5.5.2
  bad_body_type,       // 501 5.5.4
  unknown_user,        // 550 5.1.1
  relay_denied,        // 550 5.7.1
  ready_for_tls,       // 220 2.0.0
  tls_unavailable,     // 502 5.5.1
  tls_active,          // 503 5.5.1
  need_tls,            // 530 5.7.0
  need_auth,           // 530 5.7.0
  auth_ok,             // 235 2.7.0
  auth_unavailable,    // 503 5.5.1
  auth_needs_tls,      // 538 5.7.11
  auth_done,           // 503 5.5.1
  auth_in_tx,          // 503 5.5.1
  auth_mechanism,      // 504 5.5.4
  auth_cancelled,      // 501 5.7.0
  auth_bad_base64,     // 501 5.5.2
  auth_failed,         // 535 5.7.8
  auth_too_many,       // 421 4.7.0
  too_many_errors,     // 421 4.7.0
  timeout,             // 421 4.4.2
  too_slow,            // 421 4.4.2
  pregreet,            // 554 5.5.1
  auth_busy,           // 454 4.7.0
  lookup_failed,       // 451 4.3.0
  non_ascii_addr,      // 553 5.6.7 (RFC 6531 3.6.2: no SMTPUTF8 on MAIL)
  bad_utf8_from,       // 501 5.1.7
  bad_utf8_rcpt,       // 501 5.1.3
  bad_domain,          // 550 5.1.2 (not a valid IDNA domain)
  chunk_ok,            // 250 2.0.0 Ok: <n> octets (a BDAT chunk, not the last)
  binary_not_data,     // 503 5.5.1 (DATA after BODY=BINARYMIME)
  data_after_bdat,     // 503 5.5.1 (DATA in a transaction BDAT began)
  chunk_refused,       // 503 5.5.1 (BDAT after a refused one, until RSET or LAST)
  requiretls_plain,    // 530 5.7.10
  param_repeated,      // 501 5.5.4
  bad_param_value,     // 501 5.5.4
  lhlo_needed,         // 500 5.5.1 (LMTP: HELO and EHLO are refused)
  lmtp_delivered,      // 250 2.0.0 (LMTP: one per recipient after the data)
  xclient_denied,      // 550 5.7.0 (XCLIENT from a client not in xclient_from)
  xclient_in_tx,       // 503 5.5.1 (XCLIENT between MAIL and the end of data)
  xclient_attr,        // 501 5.5.4 (an attribute name XCLIENT does not have)
  xclient_value,       // 501 5.5.4 (an attribute value that does not parse)
  filter_rejected,     // 550 5.7.1 (a filter refused, without a reply of its own)
  filter_tempfail,     // 451 4.7.1 (a filter deferred, or could not be asked)
  filter_shutdown,     // 421 4.7.0 (a filter ended the session)
  refused_at_connect,  // 503 5.5.1 (every command after a 554 greeting, RFC 5321 3.1)
};

struct reply_entry {
  std::uint16_t code;
  std::string_view enhanced;  // empty for 354, which RFC 2034 leaves without one
  std::string_view text;
};

[[nodiscard]] const reply_entry& reply_of(reply_id id) noexcept;

// "<code> <enhanced> <text>" (or "<code> <text>" for 354), made once.
[[nodiscard]] std::string_view reply_line(reply_id id) noexcept;

// Appends "<code> <enhanced> <text><detail>\r\n" to out.
void append_reply(std::string& out, reply_id id, std::string_view detail = {});

}  // namespace inboxd::proto
