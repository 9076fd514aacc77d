#include "proto/command.hpp"

#include <arpa/inet.h>

#include <array>

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
    verb_name{"LHLO", verb::lhlo},
};

std::string_view trim(std::string_view s) {
  while (!s.empty() && (s.front() == ' ' || s.front() == '\t')) s.remove_prefix(1);
  while (!s.empty() && (s.back() == ' ' || s.back() == '\t')) s.remove_suffix(1);
  return s;
}

bool is_dot_string(std::string_view s) {
  if (s.empty() || s.front() == '.' || s.back() == '.') return false;
  char prev = 0;
  for (char c : s) {
    if (c == '.' ? prev == '.' : !is_atext(c)) return false;
    prev = c;
  }
  return true;
}

// Quoted-string = DQUOTE *QcontentSMTP DQUOTE, with quoted-pairSMTP = "\" %d32-126.
bool is_quoted_string(std::string_view s) {
  if (s.size() < 2 || s.front() != '"' || s.back() != '"') return false;
  for (std::size_t i = 1; i + 1 < s.size(); ++i) {
    auto c = static_cast<unsigned char>(s[i]);
    if (c == '\\') {
      if (++i + 1 >= s.size()) return false;
      auto q = static_cast<unsigned char>(s[i]);
      if (q < 32 || q > 126) return false;
    } else if (c < 32 || c > 126 || c == '"') {
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
bool is_source_route(std::string_view s) {
  while (!s.empty()) {
    if (s.front() != '@') return false;
    auto comma = s.find(',');
    if (!is_domain(s.substr(1, comma == s.npos ? s.npos : comma - 1))) return false;
    if (comma == s.npos) return true;
    s.remove_prefix(comma + 1);
  }
  return false;
}

enum class path_kind { reverse, forward };

path_parse parse_path_arg(std::string_view arg, std::string_view keyword, path_kind kind) {
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
    if (colon == inner.npos || !is_source_route(inner.substr(0, colon)))
      return {path_error::bad_path, {}};
    inner.remove_prefix(colon + 1);
  }
  if (!is_mailbox(inner)) return {path_error::bad_path, {}};
  return {path_error::none, {inner, rest}};
}

}  // namespace

bool iequals(std::string_view a, std::string_view b) noexcept {
  if (a.size() != b.size()) return false;
  for (std::size_t i = 0; i < a.size(); ++i)
    if (lower(a[i]) != lower(b[i])) return false;
  return true;
}

command parse_command(std::string_view line) noexcept {
  std::size_t sp = line.find(' ');
  std::string_view word = line.substr(0, sp);
  std::string_view arg = sp == line.npos ? std::string_view{} : trim(line.substr(sp + 1));
  for (const auto& [name, v] : verbs)
    if (iequals(word, name)) return {v, arg};
  return {verb::unknown, arg};
}

bool is_domain(std::string_view s) noexcept {
  // RFC 5321 4.5.3.1.2: a domain is at most 255 octets.
  if (s.empty() || s.size() > 255) return false;
  std::size_t label = 0;
  char prev = '.';
  for (char c : s) {
    if (c == '.') {
      if (prev == '.' || prev == '-') return false;
      label = 0;
    } else if (is_alpha(c) || is_digit(c) || (c == '-' && prev != '.')) {
      if (++label > 63) return false;
    } else {
      return false;
    }
    prev = c;
  }
  return prev != '.' && prev != '-';
}

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

bool is_mailbox(std::string_view s) noexcept {
  std::size_t at = local_part_end(s);
  if (at == std::string_view::npos || at == 0) return false;
  std::string_view local = s.substr(0, at);
  std::string_view domain = s.substr(at + 1);
  // RFC 5321 4.5.3.1.1: a local part is at most 64 octets.
  if (local.size() > 64) return false;
  if (!(is_dot_string(local) || is_quoted_string(local))) return false;
  return is_domain(domain) || is_address_literal(domain);
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
  if (local.size() < 2 || local.front() != '"' || local.back() != '"') return std::string(local);
  std::string out;
  for (std::size_t i = 1; i + 1 < local.size(); ++i) {
    if (local[i] == '\\' && i + 2 < local.size()) ++i;
    out += local[i];
  }
  return out;
}

path_parse parse_mail_from(std::string_view arg) noexcept {
  return parse_path_arg(arg, "FROM:", path_kind::reverse);
}

path_parse parse_rcpt_to(std::string_view arg) noexcept {
  return parse_path_arg(arg, "TO:", path_kind::forward);
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
