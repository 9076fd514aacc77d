// proto/command.hpp: tokenises one SMTP command line into views.
//
// Framing is the line reader's job and policy the session's; this file only
// says what a line means. Every view returned points into the line it was
// given and is borrowed for as long as that line is.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

namespace inboxd::proto {

enum class verb : std::uint8_t {
  helo,
  ehlo,
  mail,
  rcpt,
  data,
  rset,
  noop,
  quit,
  vrfy,
  help,
  starttls,
  auth,
  bdat,
  lhlo,     // RFC 2033 4.1: LMTP's EHLO
  xclient,  // Postfix's XCLIENT_README
  unknown
};

struct command {
  verb v;
  std::string_view arg;  // the text after the verb and its space, trimmed
};

// Splits a line into its verb (case-insensitive) and argument.
[[nodiscard]] command parse_command(std::string_view line) noexcept;

// What parse_path found, from "FROM:<path> params" or "TO:<path> params".
struct path_arg {
  std::string_view mailbox;  // without brackets or source route; empty for <>
  std::string_view params;   // the ESMTP parameters after the path, may be empty
};

enum class path_error : std::uint8_t { none, no_keyword, bad_path };

// Parses the argument of MAIL ("FROM:") or RCPT ("TO:") per RFC 5321 4.1.2:
// Path = "<" [ A-d-l ":" ] Mailbox ">", with "<>" allowed for MAIL and
// "<Postmaster>" (any case) for RCPT (RFC 5321 4.1.1.3). One space between
// the colon and the path is tolerated, as real clients send it.
// With utf8, the grammar is RFC 6531 3.3's: local parts and domain labels
// may hold octets above 0x7F. They are let through unjudged, so that the
// session can tell "non-ASCII without SMTPUTF8" (553 5.6.7) from malformed
// UTF-8: check the mailbox with is_utf8_text() (proto/utf8.hpp).
struct path_parse {
  path_error error;
  path_arg value;
};
[[nodiscard]] path_parse parse_mail_from(std::string_view arg, bool utf8 = false) noexcept;
[[nodiscard]] path_parse parse_rcpt_to(std::string_view arg, bool utf8 = false) noexcept;

// RFC 5321 4.1.2 Mailbox = Local-part "@" ( Domain / address-literal ),
// within the lengths of RFC 5321 4.5.3.1 (in octets). With utf8, RFC 6531's
// Mailbox: UTF-8 local parts and U-labels too, well-formed and without
// control characters.
[[nodiscard]] bool is_mailbox(std::string_view s, bool utf8 = false) noexcept;
[[nodiscard]] bool is_domain(std::string_view s) noexcept;
[[nodiscard]] bool is_address_literal(std::string_view s) noexcept;

// Splits a mailbox at the '@' that ends its local part (not one inside a
// quoted string). Returns false when there is none.
[[nodiscard]] bool split_mailbox(std::string_view mailbox, std::string_view& local,
                                 std::string_view& domain) noexcept;

// A local part as a plain name: a quoted string loses its quotes and escapes.
[[nodiscard]] std::string unquote_local_part(std::string_view local);
// The same into out (replaced), which keeps its capacity: no allocation
// once it has held a name as long.
void unquote_local_part(std::string_view local, std::string& out);

// One ESMTP parameter: esmtp-keyword ["=" esmtp-value] (RFC 5321 4.1.2).
struct esmtp_param {
  std::string_view keyword;
  std::string_view value;
  bool has_value = false;
};

// Walks the space-separated parameters after a path.
class param_reader {
 public:
  explicit param_reader(std::string_view params) noexcept : rest_(params) {}
  // Returns the next parameter, or nullopt at the end or on a syntax error
  // (then error() is true).
  [[nodiscard]] std::optional<esmtp_param> next() noexcept;
  [[nodiscard]] bool error() const noexcept { return error_; }

 private:
  std::string_view rest_;
  bool error_ = false;
};

// The argument of BDAT (RFC 3030 2): chunk-size [SP "LAST"], chunk-size
// = 1*DIGIT. The size must fit in 64 bits; LAST is case-insensitive.
struct bdat_arg {
  std::uint64_t size = 0;
  bool last = false;
};
[[nodiscard]] std::optional<bdat_arg> parse_bdat(std::string_view arg) noexcept;
// RFC 3461 4: xtext = *( xchar / hexchar ), where xchar is %d33-126 but "+"
// and "=", and hexchar is "+" and two upper-case hex digits. Decodes s into
// out (replacing what it held); false, with out unspecified, when s is not
// xtext. Every octet may come out of a hexchar: callers check what they allow.
[[nodiscard]] bool xtext_decode(std::string_view s, std::string& out);
// Appends s as xtext: "+", "=" and octets outside %d33-126 become "+XX".
void xtext_encode(std::string_view s, std::string& out);

// The DSN parameters of RFC 3461 4, each value checked and decoded. The
// decoded ENVID and ORCPT address must be printable US-ASCII (%d32-126),
// as the DSN format requires (4.2, 4.4).
// NOTIFY=NEVER, or SUCCESS, FAILURE, DELAY joined by commas (any case):
// the inboxd::dsn_notify bits, or 0 for anything else.
[[nodiscard]] std::uint8_t parse_notify(std::string_view value) noexcept;
// ORCPT=addr-type ";" xtext, at most 500 characters: addr-type (an atom,
// made lower case) into type, the decoded address into address.
[[nodiscard]] bool parse_orcpt(std::string_view value, std::string& type, std::string& address);
// ENVID=xtext, at most 100 characters, decoded into out.
[[nodiscard]] bool parse_envid(std::string_view value, std::string& out);

// XCLIENT (Postfix's XCLIENT_README): 1*( SP attribute-name "=" xtext ),
// names case-insensitive. Each attribute given is decoded and checked; an
// empty value means [UNAVAILABLE] or [TEMPUNAVAIL] (the client does not
// know it). ADDR and DESTADDR come out as inet_ntop(3) writes them, without
// the "IPV6:" prefix; PROTO in upper case.
struct xclient_attrs {
  std::optional<std::string> name, addr, port, proto, helo, login, destaddr, destport;
};
enum class xclient_error : std::uint8_t { none, syntax, bad_name, bad_value };
struct xclient_parse {
  xclient_error error = xclient_error::none;
  std::string_view what;  // the attribute at fault, borrowed from arg
};
[[nodiscard]] xclient_parse parse_xclient(std::string_view arg, xclient_attrs& out);
// The attribute names inboxd takes, as EHLO lists them.
inline constexpr std::string_view xclient_names =
    "ADDR PORT NAME HELO PROTO LOGIN DESTADDR DESTPORT";

// Case-insensitive ASCII comparison.
// ASCII letters compare without case; every other octet exactly. Inline:
// the verb and parameter tables call it for every command.
[[nodiscard]] inline bool iequals(std::string_view a, std::string_view b) noexcept {
  if (a.size() != b.size()) return false;
  for (std::size_t i = 0; i < a.size(); ++i) {
    auto x = static_cast<unsigned char>(a[i]), y = static_cast<unsigned char>(b[i]);
    if (x == y) continue;
    auto fx = static_cast<unsigned char>(x | 0x20);
    if (fx != (y | 0x20) || fx < 'a' || fx > 'z') return false;
  }
  return true;
}

}  // namespace inboxd::proto
