#include "proto/command.hpp"

#include <arpa/inet.h>

#include "proto/utf8.hpp"

#include <algorithm>
#include <array>
#include <cstdint>
#include <cstring>

#include "inboxd/sink.hpp"

namespace inboxd::proto {
namespace {

constexpr bool is_alpha(char c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z');
}
constexpr bool is_digit(char c) {
  return c >= '0' && c <= '9';
}
constexpr char lower(char c) {
  return c >= 'A' && c <= 'Z' ? static_cast<char>(c + 32) : c;
}

// RFC 5322 3.2.3 atext.
constexpr bool is_atext(char c) {
  if (is_alpha(c) || is_digit(c)) return true;
  switch (c) {
    case '!':
    case '#':
    case '$':
    case '%':
    case '&':
    case '\'':
    case '*':
    case '+':
    case '-':
    case '/':
    case '=':
    case '?':
    case '^':
    case '_':
    case '`':
    case '{':
    case '|':
    case '}':
    case '~': return true;
    default: return false;
  }
}

struct verb_name {
  std::string_view name;
  verb v;
};
constexpr std::array verbs{
    verb_name{"HELO", verb::helo},         verb_name{"EHLO", verb::ehlo},
    verb_name{"MAIL", verb::mail},         verb_name{"RCPT", verb::rcpt},
    verb_name{"DATA", verb::data},         verb_name{"RSET", verb::rset},
    verb_name{"NOOP", verb::noop},         verb_name{"QUIT", verb::quit},
    verb_name{"VRFY", verb::vrfy},         verb_name{"HELP", verb::help},
    verb_name{"STARTTLS", verb::starttls}, verb_name{"AUTH", verb::auth},
    verb_name{"BDAT", verb::bdat},
    verb_name{"LHLO", verb::lhlo},
    verb_name{"XCLIENT", verb::xclient},
};

std::string_view trim(std::string_view s) {
  while (!s.empty() && (s.front() == ' ' || s.front() == '\t')) s.remove_prefix(1);
  while (!s.empty() && (s.back() == ' ' || s.back() == '\t')) s.remove_suffix(1);
  return s;
}

bool is_domain_of(std::string_view s, bool eight) noexcept;
bool is_mailbox_of(std::string_view s, bool eight) noexcept;

// Octets of UTF8-non-ascii (RFC 6531 3.3: atext, qtextSMTP and sub-domain
// take them). The parser lets any of them through where the grammar allows
// one; whether they are well-formed UTF-8 is is_utf8_text()'s question.
constexpr bool is_8bit(char c) {
  return static_cast<unsigned char>(c) >= 0x80;
}

bool is_dot_string(std::string_view s, bool eight) {
  if (s.empty() || s.front() == '.' || s.back() == '.') return false;
  char prev = 0;
  for (char c : s) {
    if (c == '.' ? prev == '.' : !(is_atext(c) || (eight && is_8bit(c)))) return false;
    prev = c;
  }
  return true;
}

// Quoted-string = DQUOTE *QcontentSMTP DQUOTE, with quoted-pairSMTP = "\" %d32-126.
bool is_quoted_string(std::string_view s, bool eight) {
  if (s.size() < 2 || s.front() != '"' || s.back() != '"') return false;
  for (std::size_t i = 1; i + 1 < s.size(); ++i) {
    auto c = static_cast<unsigned char>(s[i]);
    if (c == '\\') {
      if (++i + 1 >= s.size()) return false;
      auto q = static_cast<unsigned char>(s[i]);
      if (q < 32 || q > 126) return false;
    } else if ((c < 32 || c > 126 || c == '"') && !(eight && c >= 0x80)) {
      return false;
    }
  }
  return true;
}

// Where the local part ends: the '@' that is not inside a quoted string.
std::size_t local_part_end(std::string_view s) {
  // atext has no '@': the first one ends an unquoted local part (a general
  // address literal after it may hold more).
  if (s.empty() || s.front() != '"') return s.find('@');
  for (std::size_t i = 1; i < s.size(); ++i) {
    if (s[i] == '\\') {
      ++i;
    } else if (s[i] == '"') {
      return i + 1 < s.size() && s[i + 1] == '@' ? i + 1 : std::string_view::npos;
    }
  }
  return std::string_view::npos;
}

// A-d-l = At-domain *( "," At-domain ), At-domain = "@" Domain. Obsolete
// source routes are accepted and ignored (RFC 5321 4.1.2, C.).
bool is_source_route(std::string_view s, bool eight) {
  while (!s.empty()) {
    if (s.front() != '@') return false;
    auto comma = s.find(',');
    if (!is_domain_of(s.substr(1, comma == s.npos ? s.npos : comma - 1), eight)) return false;
    if (comma == s.npos) return true;
    s.remove_prefix(comma + 1);
  }
  return false;
}

enum class path_kind { reverse, forward };

path_parse parse_path_arg(std::string_view arg, std::string_view keyword, path_kind kind,
                          bool eight) {
  if (arg.size() < keyword.size() || !iequals(arg.substr(0, keyword.size()), keyword))
    return {path_error::no_keyword, {}};
  arg.remove_prefix(keyword.size());
  if (!arg.empty() && arg.front() == ' ') arg.remove_prefix(1);
  if (arg.empty() || arg.front() != '<') return {path_error::bad_path, {}};
  // The path ends at the first '>' outside a quoted string and outside an
  // address literal (a general literal may hold '>' and '"').
  std::size_t close = std::string_view::npos;
  bool quoted = false, literal = false;
  for (std::size_t i = 1; i < arg.size(); ++i) {
    char c = arg[i];
    if (literal) {
      literal = c != ']';
    } else if (quoted && c == '\\') {
      ++i;
    } else if (c == '"') {
      quoted = !quoted;
    } else if (!quoted && c == '[' && arg[i - 1] == '@') {
      literal = true;
    } else if (c == '>' && !quoted) {
      close = i;
      break;
    }
  }
  // RFC 5321 4.5.3.1.3: a path is at most 256 octets with its brackets.
  if (close == std::string_view::npos || close + 1 > 256) return {path_error::bad_path, {}};
  std::string_view inner = arg.substr(1, close - 1);
  std::string_view rest = arg.substr(close + 1);
  if (!rest.empty() && rest.front() != ' ') return {path_error::bad_path, {}};
  rest = trim(rest);
  if (inner.empty()) {
    if (kind == path_kind::reverse) return {path_error::none, {inner, rest}};
    return {path_error::bad_path, {}};
  }
  if (kind == path_kind::forward && iequals(inner, "postmaster"))
    return {path_error::none, {inner, rest}};
  if (inner.front() == '@') {
    auto colon = inner.find(':');
    if (colon == inner.npos || !is_source_route(inner.substr(0, colon), eight))
      return {path_error::bad_path, {}};
    inner.remove_prefix(colon + 1);
  }
  if (!is_mailbox_of(inner, eight)) return {path_error::bad_path, {}};
  return {path_error::none, {inner, rest}};
}

}  // namespace

command parse_command(std::string_view line) noexcept {
  std::size_t sp = line.find(' ');
  std::string_view word = line.substr(0, sp);
  std::string_view arg = sp == line.npos ? std::string_view{} : trim(line.substr(sp + 1));
  for (const auto& [name, v] : verbs)
    if (iequals(word, name)) return {v, arg};
  return {verb::unknown, arg};
}

bool is_domain(std::string_view s) noexcept {
  return is_domain_of(s, false);
}

namespace {

// With eight, a label may be a U-label (RFC 6531 3.3). Its octets are not
// held to 63: the limit is the A-label's, which the recipient policy checks
// when it converts the name (IDNA); the whole name keeps its 255.
bool is_domain_of(std::string_view s, bool eight) noexcept {
  // RFC 5321 4.5.3.1.2: a domain is at most 255 octets.
  if (s.empty() || s.size() > 255) return false;
  std::size_t label = 0;
  bool label_8bit = false;
  char prev = '.';
  for (char c : s) {
    if (c == '.') {
      if (prev == '.' || prev == '-') return false;
      label = 0;
      label_8bit = false;
    } else if (is_alpha(c) || is_digit(c) || (c == '-' && prev != '.') || (eight && is_8bit(c))) {
      label_8bit = label_8bit || is_8bit(c);
      if (++label > 63 && !label_8bit) return false;
    } else {
      return false;
    }
    prev = c;
  }
  return prev != '.' && prev != '-';
}

bool is_mailbox_of(std::string_view s, bool eight) noexcept {
  std::size_t at = local_part_end(s);
  if (at == std::string_view::npos || at == 0) return false;
  std::string_view local = s.substr(0, at);
  std::string_view domain = s.substr(at + 1);
  // RFC 5321 4.5.3.1.1: a local part is at most 64 octets (RFC 6531 keeps
  // the limit in octets).
  if (local.size() > 64) return false;
  if (!(is_dot_string(local, eight) || is_quoted_string(local, eight))) return false;
  return is_domain_of(domain, eight) || is_address_literal(domain);
}

}  // namespace

bool is_address_literal(std::string_view s) noexcept {
  if (s.size() < 3 || s.front() != '[' || s.back() != ']') return false;
  std::string_view body = s.substr(1, s.size() - 2);
  // dcontent is printable ASCII (RFC 5321 4.1.3); checked first, so that no
  // NUL can end the text inet_pton() sees early.
  for (char c : body) {
    auto u = static_cast<unsigned char>(c);
    if (u < 33 || u > 126) return false;
  }
  std::array<char, 64> buf{};
  unsigned char addr[16];
  auto parse = [&](int family, std::string_view text) {
    if (text.size() >= buf.size()) return false;
    text.copy(buf.data(), text.size());
    buf[text.size()] = '\0';
    return inet_pton(family, buf.data(), addr) == 1;
  };
  if (body.size() > 5 && iequals(body.substr(0, 5), "IPv6:"))
    return parse(AF_INET6, body.substr(5));
  if (!body.empty() && is_digit(body.front())) return parse(AF_INET, body);
  // General-address-literal = Standardized-tag ":" 1*dcontent.
  auto colon = body.find(':');
  if (colon == 0 || colon == body.npos || colon + 1 == body.size()) return false;
  // Standardized-tag = Ldh-str: ends in a letter or digit.
  for (char c : body.substr(0, colon))
    if (!is_alpha(c) && !is_digit(c) && c != '-') return false;
  if (body[colon - 1] == '-') return false;
  for (char c : body.substr(colon + 1)) {
    auto u = static_cast<unsigned char>(c);
    if (u < 33 || u > 126 || c == '[' || c == '\\' || c == ']') return false;
  }
  return true;
}

bool is_mailbox(std::string_view s, bool utf8) noexcept {
  return is_mailbox_of(s, utf8) && (!utf8 || is_utf8_text(s));
}

bool split_mailbox(std::string_view mailbox, std::string_view& local,
                   std::string_view& domain) noexcept {
  std::size_t at = local_part_end(mailbox);
  if (at == std::string_view::npos) return false;
  local = mailbox.substr(0, at);
  domain = mailbox.substr(at + 1);
  return true;
}

std::string unquote_local_part(std::string_view local) {
  std::string out;
  unquote_local_part(local, out);
  return out;
}

void unquote_local_part(std::string_view local, std::string& out) {
  if (local.size() < 2 || local.front() != '"' || local.back() != '"') {
    out.assign(local);
    return;
  }
  out.clear();
  for (std::size_t i = 1; i + 1 < local.size(); ++i) {
    if (local[i] == '\\' && i + 2 < local.size()) ++i;
    out += local[i];
  }
}

path_parse parse_mail_from(std::string_view arg, bool utf8) noexcept {
  return parse_path_arg(arg, "FROM:", path_kind::reverse, utf8);
}

path_parse parse_rcpt_to(std::string_view arg, bool utf8) noexcept {
  return parse_path_arg(arg, "TO:", path_kind::forward, utf8);
}

std::optional<bdat_arg> parse_bdat(std::string_view arg) noexcept {
  std::size_t sp = arg.find(' ');
  std::string_view digits = arg.substr(0, sp);
  bdat_arg b;
  if (sp != arg.npos) {
    if (!iequals(arg.substr(sp + 1), "LAST")) return std::nullopt;
    b.last = true;
  }
  // Leading zeros are digits too; a value past 64 bits is refused, as it
  // could not be counted down.
  if (digits.empty()) return std::nullopt;
  for (char c : digits) {
    if (!is_digit(c)) return std::nullopt;
    auto d = static_cast<std::uint64_t>(c - '0');
    if (b.size > (UINT64_MAX - d) / 10) return std::nullopt;
    b.size = b.size * 10 + d;
  }
  return b;
}

namespace {

constexpr int hex_value(char c) {
  if (is_digit(c)) return c - '0';
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;  // RFC 3461 4 writes hexchar with upper-case letters only
}

bool is_printable_ascii(std::string_view s) {
  return std::all_of(s.begin(), s.end(), [](char c) { return c >= 32 && c <= 126; });
}

}  // namespace

bool xtext_decode(std::string_view s, std::string& out) {
  out.clear();
  out.reserve(s.size());
  for (std::size_t i = 0; i < s.size(); ++i) {
    char c = s[i];
    auto u = static_cast<unsigned char>(c);
    if (c == '+') {
      if (i + 2 >= s.size()) return false;  // truncated
      int hi = hex_value(s[i + 1]), lo = hex_value(s[i + 2]);
      if (hi < 0 || lo < 0) return false;
      out += static_cast<char>(hi * 16 + lo);
      i += 2;
    } else if (u < 33 || u > 126 || c == '=') {
      return false;
    } else {
      out += c;
    }
  }
  return true;
}

namespace {

// An address as XCLIENT_README gives it: IPv4 dotted, or "IPV6:" and an
// IPv6 address; into out as inet_ntop writes it.
bool xclient_address(std::string_view v, std::string& out) {
  char text[INET6_ADDRSTRLEN + 8];
  if (v.size() >= sizeof text) return false;
  bool v6 = v.size() > 5 && iequals(v.substr(0, 5), "IPV6:");
  if (v6) v.remove_prefix(5);
  std::memcpy(text, v.data(), v.size());
  text[v.size()] = '\0';
  unsigned char bytes[16];
  int af = v6 ? AF_INET6 : AF_INET;
  if (::inet_pton(af, text, bytes) != 1) return false;
  char back[INET6_ADDRSTRLEN];
  if (!::inet_ntop(af, bytes, back, sizeof back)) return false;
  out = back;
  return true;
}

bool xclient_port(std::string_view v) {
  if (v.empty() || v.size() > 5) return false;
  unsigned n = 0;
  for (char c : v) {
    if (!is_digit(c)) return false;
    n = n * 10 + static_cast<unsigned>(c - '0');
  }
  return n <= 65535;
}

// NAME, HELO and LOGIN: up to 255 printable octets without spaces, as they
// go into the log and the Received header.
bool xclient_text(std::string_view v) {
  if (v.size() > 255) return false;
  return std::all_of(v.begin(), v.end(), [](char c) { return c > 32 && c < 127; });
}

}  // namespace

xclient_parse parse_xclient(std::string_view arg, xclient_attrs& out) {
  out = {};
  if (arg.empty()) return {xclient_error::syntax, {}};
  std::string value;
  while (!arg.empty()) {
    std::string_view item = arg.substr(0, arg.find(' '));
    arg.remove_prefix(item.size());
    while (!arg.empty() && arg.front() == ' ') arg.remove_prefix(1);
    auto eq = item.find('=');
    if (eq == item.npos || eq == 0) return {xclient_error::syntax, item};
    std::string_view name = item.substr(0, eq);
    if (!xtext_decode(item.substr(eq + 1), value)) return {xclient_error::bad_value, name};
    bool unavailable = iequals(value, "[UNAVAILABLE]") || iequals(value, "[TEMPUNAVAIL]");
    if (unavailable) value.clear();
    std::string normal;
    auto take = [&](std::optional<std::string>& slot, bool ok) {
      if (!ok) return false;
      slot = unavailable ? std::string() : normal.empty() ? value : normal;
      return true;
    };
    bool ok;
    if (iequals(name, "ADDR"))
      ok = take(out.addr, unavailable || xclient_address(value, normal));
    else if (iequals(name, "DESTADDR"))
      ok = take(out.destaddr, unavailable || xclient_address(value, normal));
    else if (iequals(name, "PORT"))
      ok = take(out.port, unavailable || xclient_port(value));
    else if (iequals(name, "DESTPORT"))
      ok = take(out.destport, unavailable || xclient_port(value));
    else if (iequals(name, "NAME"))
      ok = take(out.name, unavailable || (xclient_text(value) && !value.empty()));
    else if (iequals(name, "HELO"))
      ok = take(out.helo, unavailable || (xclient_text(value) && !value.empty()));
    else if (iequals(name, "LOGIN"))
      ok = take(out.login, unavailable || (xclient_text(value) && !value.empty()));
    else if (iequals(name, "PROTO")) {
      // SMTP or ESMTP (XCLIENT_README); kept upper case.
      bool known = iequals(value, "SMTP") || iequals(value, "ESMTP");
      if (known) {
        normal = value;
        for (char& c : normal) c = static_cast<char>(c >= 'a' && c <= 'z' ? c - 32 : c);
      }
      ok = take(out.proto, unavailable || known);
    } else
      return {xclient_error::bad_name, name};
    if (!ok) return {xclient_error::bad_value, name};
  }
  return {};
}

void xtext_encode(std::string_view s, std::string& out) {
  static constexpr char hex[] = "0123456789ABCDEF";
  for (char c : s) {
    auto u = static_cast<unsigned char>(c);
    if (u < 33 || u > 126 || c == '+' || c == '=') {
      const char escaped[3] = {'+', hex[u >> 4], hex[u & 15]};
      out.append(escaped, 3);
    } else {
      out += c;
    }
  }
}

std::uint8_t parse_notify(std::string_view value) noexcept {
  if (iequals(value, "NEVER")) return dsn_notify::never;
  std::uint8_t bits = 0;
  for (std::size_t start = 0; start <= value.size();) {
    std::size_t comma = std::min(value.find(',', start), value.size());
    std::string_view item = value.substr(start, comma - start);
    if (iequals(item, "SUCCESS"))
      bits |= dsn_notify::success;
    else if (iequals(item, "FAILURE"))
      bits |= dsn_notify::failure;
    else if (iequals(item, "DELAY"))
      bits |= dsn_notify::delay;
    else
      return 0;  // also NEVER in a list, and an empty item
    start = comma + 1;
  }
  return bits;
}

bool parse_orcpt(std::string_view value, std::string& type, std::string& address) {
  // RFC 3461 4.2: "the ORCPT parameter MUST NOT exceed 500 characters".
  std::size_t semi = value.find(';');
  if (value.size() > 500 || semi == value.npos || semi == 0) return false;
  std::string_view atom = value.substr(0, semi);
  if (!std::all_of(atom.begin(), atom.end(), is_atext)) return false;
  if (!xtext_decode(value.substr(semi + 1), address) || address.empty() ||
      !is_printable_ascii(address))
    return false;
  type.assign(atom);
  for (char& c : type) c = lower(c);
  return true;
}

bool parse_envid(std::string_view value, std::string& out) {
  // RFC 3461 4.4: at most 100 characters, printable ASCII once decoded.
  return value.size() <= 100 && xtext_decode(value, out) && !out.empty() && is_printable_ascii(out);
}

std::optional<esmtp_param> param_reader::next() noexcept {
  while (!rest_.empty() && rest_.front() == ' ') rest_.remove_prefix(1);
  if (rest_.empty()) return std::nullopt;
  std::size_t sp = rest_.find(' ');
  std::string_view item = rest_.substr(0, sp);
  rest_ = sp == rest_.npos ? std::string_view{} : rest_.substr(sp);
  esmtp_param p;
  std::size_t eq = item.find('=');
  p.keyword = item.substr(0, eq);
  if (eq != item.npos) {
    p.has_value = true;
    p.value = item.substr(eq + 1);
  }
  // esmtp-keyword = (ALPHA / DIGIT) *(ALPHA / DIGIT / "-");
  // esmtp-value = 1*(%d33-60 / %d62-126).
  bool ok = !p.keyword.empty() && p.keyword.front() != '-';
  for (char c : p.keyword) ok = ok && (is_alpha(c) || is_digit(c) || c == '-');
  if (p.has_value) {
    ok = ok && !p.value.empty();
    for (char c : p.value) {
      auto u = static_cast<unsigned char>(c);
      ok = ok && u >= 33 && u <= 126 && c != '=';
    }
  }
  if (!ok) {
    error_ = true;
    rest_ = {};
    return std::nullopt;
  }
  return p;
}

}  // namespace inboxd::proto
