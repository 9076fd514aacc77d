#include "proto/reply.hpp"

#include <fmt/format.h>
#include <array>

namespace inboxd::proto {
namespace {

using enum reply_id;

struct row {
  reply_id id;
  reply_entry entry;
};

// Order follows enum reply_id; a static_assert below checks it.
constexpr std::array rows{
    row{ok, {250, "2.0.0", "Ok"}},
    row{mail_ok, {250, "2.1.0", "Ok"}},
    row{rcpt_ok, {250, "2.1.5", "Ok"}},
    row{queued, {250, "2.0.0", "Ok: queued as "}},
    row{start_data, {354, "", "End data with <CR><LF>.<CR><LF>"}},
    row{bye, {221, "2.0.0", "Bye"}},
    row{help,
        {214, "2.0.0",
         "See RFC 5321; commands: HELO EHLO MAIL RCPT DATA RSET NOOP QUIT VRFY HELP"}},
    row{cannot_vrfy,
        {252, "2.5.2", "Cannot VRFY user, but will accept message and attempt delivery"}},
    row{shutting_down, {421, "4.3.2", "Service shutting down, closing transmission channel"}},
    row{store_failed, {451, "4.3.0", "Error: could not store the message, try again later"}},
    row{no_space, {452, "4.3.1", "Insufficient system storage"}},
    row{too_many_rcpts, {452, "4.5.3", "Error: too many recipients"}},
    row{store_rejected, {554, "5.3.0", "Error: the message cannot be stored"}},
    row{unknown_command, {500, "5.5.2", "Error: command not recognized"}},
    row{line_too_long, {500, "5.5.2", "Error: line too long"}},
    row{bad_syntax, {501, "5.5.4", "Syntax: "}},
    row{bad_sender, {501, "5.1.7", "Bad sender address syntax"}},
    row{bad_recipient, {501, "5.1.3", "Bad recipient address syntax"}},
    row{bad_sequence, {503, "5.5.1", "Error: bad sequence of commands"}},
    row{need_helo, {503, "5.5.1", "Error: send HELO/EHLO first"}},
    row{nested_mail, {503, "5.5.1", "Error: nested MAIL command"}},
    row{need_mail, {503, "5.5.1", "Error: need MAIL command"}},
    row{need_rcpt, {503, "5.5.1", "Error: need RCPT command"}},
    row{no_valid_rcpts, {554, "5.5.1", "Error: no valid recipients"}},
    row{bad_param, {555, "5.5.4", "Unsupported option: "}},
    row{size_declared, {552, "5.3.4", "Message size exceeds fixed limit"}},
    row{size_exceeded, {552, "5.3.4", "Message size exceeds fixed limit"}},
    row{bare_lf, {550, "5.5.2", "Error: bare <LF> received"}},
    row{bare_cr, {550, "5.5.2", "Error: bare <CR> received"}},
    row{bad_body_type, {501, "5.5.4", "Bad BODY= parameter, use 7BIT, 8BITMIME or BINARYMIME"}},
    row{unknown_user, {550, "5.1.1", "User unknown: "}},
    row{relay_denied, {550, "5.7.1", "Relaying denied: "}},
    row{ready_for_tls, {220, "2.0.0", "Ready to start TLS"}},
    row{tls_unavailable, {502, "5.5.1", "Error: STARTTLS is not available"}},
    row{tls_active, {503, "5.5.1", "Error: TLS is already active"}},
    row{need_tls, {530, "5.7.0", "Must issue a STARTTLS command first"}},
    row{need_auth, {530, "5.7.0", "Authentication required"}},
    row{auth_ok, {235, "2.7.0", "Authentication successful"}},
    row{auth_unavailable, {503, "5.5.1", "Error: authentication not enabled"}},
    row{auth_needs_tls,
        {538, "5.7.11", "Encryption required for requested authentication mechanism"}},
    row{auth_done, {503, "5.5.1", "Error: already authenticated"}},
    row{auth_in_tx, {503, "5.5.1", "Error: AUTH not allowed during a mail transaction"}},
    row{auth_mechanism, {504, "5.5.4", "Unrecognized authentication type"}},
    row{auth_cancelled, {501, "5.7.0", "Authentication cancelled"}},
    row{auth_bad_base64, {501, "5.5.2", "Cannot decode the response"}},
    row{auth_failed, {535, "5.7.8", "Authentication credentials invalid"}},
    row{auth_too_many, {421, "4.7.0", "Too many authentication failures, closing connection"}},
    row{too_many_errors, {421, "4.7.0", "Too many errors, closing connection"}},
    row{timeout, {421, "4.4.2", "Timeout exceeded, closing connection"}},
    row{too_slow, {421, "4.4.2", "Data arrives too slowly, closing connection"}},
    row{pregreet, {554, "5.5.1", "Protocol error: you talked before the greeting"}},
    row{auth_busy, {454, "4.7.0", "Temporary authentication failure, try again later"}},
    row{lookup_failed, {451, "4.3.0", "Error: temporary recipient lookup failure"}},
    row{non_ascii_addr,
        {553, "5.6.7", "Non-ASCII addresses not permitted for that sender/recipient"}},
    row{bad_utf8_from, {501, "5.1.7", "Bad sender address syntax: malformed UTF-8"}},
    row{bad_utf8_rcpt, {501, "5.1.3", "Bad recipient address syntax: malformed UTF-8"}},
    row{bad_domain, {550, "5.1.2", "Bad destination domain: "}},
    row{chunk_ok, {250, "2.0.0", "Ok: "}},
    row{binary_not_data, {503, "5.5.1", "Error: BODY=BINARYMIME needs BDAT, not DATA"}},
    row{data_after_bdat, {503, "5.5.1", "Error: DATA after BDAT, send RSET"}},
    row{chunk_refused, {503, "5.5.1", "Error: an earlier BDAT of this message failed, send RSET"}},
    row{requiretls_plain, {530, "5.7.10", "REQUIRETLS needs a TLS session"}},
    row{param_repeated, {501, "5.5.4", "Repeated parameter: "}},
    row{bad_param_value, {501, "5.5.4", "Bad parameter value: "}},
    // RFC 2033 4.1: an LMTP server does not take HELO or EHLO.
    row{lhlo_needed, {500, "5.5.1", "Error: this is an LMTP server, say LHLO"}},
    row{lmtp_delivered, {250, "2.0.0", "Ok: delivered to "}},
    // Postfix's own XCLIENT replies (smtpd.c), so that a proxy written for
    // Postfix reads them as it does there.
    row{xclient_denied, {550, "5.7.0", "Error: insufficient authorization"}},
    row{xclient_in_tx, {503, "5.5.1", "Error: MAIL transaction in progress"}},
    row{xclient_attr, {501, "5.5.4", "Bad XCLIENT attribute name: "}},
    row{xclient_value, {501, "5.5.4", "Bad XCLIENT attribute value: "}},
    // Postfix's words for a milter's reject and tempfail without a text.
    row{filter_rejected, {550, "5.7.1", "Command rejected"}},
    row{filter_tempfail, {451, "4.7.1", "Service unavailable - try again later"}},
    row{filter_shutdown, {421, "4.7.0", "Service closing transmission channel"}},
    row{refused_at_connect, {503, "5.5.1", "Error: this session was refused; send QUIT"}},
};

constexpr bool in_enum_order() {
  for (std::size_t i = 0; i < rows.size(); ++i)
    if (static_cast<std::size_t>(rows[i].id) != i) return false;
  return true;
}
static_assert(in_enum_order(), "reply rows must follow the order of enum reply_id");

}  // namespace

const reply_entry& reply_of(reply_id id) noexcept {
  return rows[static_cast<std::size_t>(id)].entry;
}

namespace {

// Every reply's "<code> <enhanced> <text>" is made once, so that sending one
// is a copy, not a format (issue 10: no formatting per command).
struct reply_lines {
  std::array<std::string, rows.size()> line;
  reply_lines() {
    for (const auto& r : rows) {
      const reply_entry& e = r.entry;
      line[static_cast<std::size_t>(r.id)] =
          e.enhanced.empty() ? fmt::format(FMT_STRING("{} {}"), e.code, e.text)
                             : fmt::format(FMT_STRING("{} {} {}"), e.code, e.enhanced, e.text);
    }
  }
};

const reply_lines& lines() {
  static const reply_lines made;
  return made;
}

}  // namespace

std::string_view reply_line(reply_id id) noexcept {
  return lines().line[static_cast<std::size_t>(id)];
}

void append_reply(std::string& out, reply_id id, std::string_view detail) {
  out += lines().line[static_cast<std::size_t>(id)];
  out += detail;
  out += "\r\n";
}

}  // namespace inboxd::proto
