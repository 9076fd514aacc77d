// tests/fuzz/fuzz_command.cpp: the command tokeniser and address parsers.
//
// The input is one command line (or argument). It goes through
// parse_command, parse_mail_from, parse_rcpt_to, param_reader and the
// address predicates, as given and wrapped as a path ("TO:<input>") and as
// parameters ("FROM:<a@b> input"), so that short inputs reach the deeper
// grammar. Checked: every view lies inside what was parsed, what a parser
// accepts its predicate accepts too, the RFC 5321 4.5.3.1 lengths hold, and a
// mailbox that is_mailbox() accepts parses back from its path unchanged.
// The SASL base64 codec goes along: encoding round-trips every input.
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

#include "fuzz_util.hpp"
#include "proto/base64.hpp"
#include "proto/command.hpp"
#include "proto/utf8.hpp"

namespace {

using namespace inboxd::proto;

bool inside(std::string_view part, std::string_view whole) {
  if (part.empty()) return true;
  return part.data() >= whole.data() && part.data() + part.size() <= whole.data() + whole.size();
}

// RFC 5321 4.1.2: a mailbox is printable ASCII (atext, qtextSMTP, dcontent),
// and a domain or address literal has no space either.
bool printable(std::string_view s, bool space) {
  for (char c : s) {
    auto u = static_cast<unsigned char>(c);
    if (u > 126 || u < (space ? 32 : 33)) return false;
  }
  return true;
}

bool trimmed(std::string_view s) {
  auto blank = [](char c) { return c == ' ' || c == '\t'; };
  return s.empty() || (!blank(s.front()) && !blank(s.back()));
}

void check_command(std::string_view line) {
  command c = parse_command(line);
  INBOXD_FUZZ_CHECK(inside(c.arg, line));
  INBOXD_FUZZ_CHECK(trimmed(c.arg));
  std::string_view word = line.substr(0, line.find(' '));
  // A known verb is a word of letters (HELO ... STARTTLS), whatever its case.
  if (c.v != verb::unknown) {
    INBOXD_FUZZ_CHECK(word.size() >= 4 && word.size() <= 8);
    for (char ch : word) INBOXD_FUZZ_CHECK((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z'));
  }
  if (c.v == verb::mail) INBOXD_FUZZ_CHECK(iequals(word, "MAIL"));
  if (c.v == verb::rcpt) INBOXD_FUZZ_CHECK(iequals(word, "RCPT"));
  if (c.v == verb::data) INBOXD_FUZZ_CHECK(iequals(word, "DATA"));
}

void check_params(std::string_view params) {
  param_reader r(params);
  std::size_t n = 0;
  while (auto p = r.next()) {
    // Each parameter uses at least one byte: the walk ends.
    INBOXD_FUZZ_CHECK(++n <= params.size());
    INBOXD_FUZZ_CHECK(!p->keyword.empty() && inside(p->keyword, params));
    INBOXD_FUZZ_CHECK(p->keyword.front() != '-');
    for (char c : p->keyword)
      INBOXD_FUZZ_CHECK((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
                        (c >= '0' && c <= '9') || c == '-');
    if (p->has_value) {
      INBOXD_FUZZ_CHECK(!p->value.empty() && inside(p->value, params));
      for (char c : p->value) {
        auto u = static_cast<unsigned char>(c);
        INBOXD_FUZZ_CHECK(u >= 33 && u <= 126 && c != '=');
      }
    } else {
      INBOXD_FUZZ_CHECK(p->value.empty());
    }
  }
  // After the end or an error, the reader stays there.
  INBOXD_FUZZ_CHECK(!r.next());
}

void check_path(std::string_view arg, bool reverse) {
  path_parse p = reverse ? parse_mail_from(arg) : parse_rcpt_to(arg);
  if (p.error != path_error::none) return;
  const path_arg& v = p.value;
  INBOXD_FUZZ_CHECK(inside(v.mailbox, arg) && inside(v.params, arg));
  INBOXD_FUZZ_CHECK(trimmed(v.params));
  // RFC 5321 4.5.3.1.3: the path with its brackets is at most 256 octets.
  INBOXD_FUZZ_CHECK(v.mailbox.size() + 2 <= 256);
  if (v.mailbox.empty())
    INBOXD_FUZZ_CHECK(reverse);
  else
    INBOXD_FUZZ_CHECK(is_mailbox(v.mailbox) || (!reverse && iequals(v.mailbox, "postmaster")));
  INBOXD_FUZZ_CHECK(printable(v.mailbox, true));
  check_params(v.params);
}

void check_mailbox(std::string_view s) {
  if (is_domain(s)) {
    INBOXD_FUZZ_CHECK(s.size() <= 255);
    std::size_t label = 0;
    for (char c : s) {
      label = c == '.' ? 0 : label + 1;
      INBOXD_FUZZ_CHECK(label <= 63);
    }
  }
  if (is_address_literal(s)) {
    INBOXD_FUZZ_CHECK(s.front() == '[' && s.back() == ']');
    INBOXD_FUZZ_CHECK(printable(s, false));
  }
  if (!is_mailbox(s)) return;
  INBOXD_FUZZ_CHECK(printable(s, true));
  // RFC 5321 4.5.3.1.1: at most 64 octets of local part, before an '@'.
  std::size_t at = s.find('@');
  if (s.front() == '"') {
    // A quoted local part ends at its closing quote; a backslash escapes one octet.
    at = std::string_view::npos;
    for (std::size_t i = 1; i < s.size(); ++i) {
      if (s[i] == '\\') {
        ++i;
      } else if (s[i] == '"') {
        at = i + 1;
        break;
      }
    }
  }
  INBOXD_FUZZ_CHECK(at != 0 && at < s.size() && at <= 64);
  INBOXD_FUZZ_CHECK(s[at] == '@');
  std::string_view domain = s.substr(at + 1);
  INBOXD_FUZZ_CHECK(is_domain(domain) || is_address_literal(domain));
  // The mailbox parses back from its path when the path fits in 256 octets.
  if (s.size() + 2 > 256) return;
  for (bool reverse : {true, false}) {
    std::string arg = std::string(reverse ? "FROM:<" : "TO:<") + std::string(s) + ">";
    path_parse p = reverse ? parse_mail_from(arg) : parse_rcpt_to(arg);
    INBOXD_FUZZ_CHECK(p.error == path_error::none);
    INBOXD_FUZZ_CHECK(p.value.mailbox == s);
    INBOXD_FUZZ_CHECK(p.value.params.empty());
  }
}

// SMTPUTF8 (RFC 6531): the UTF-8 grammar accepts what the ASCII one does,
// the same way; what it accepts beyond that has octets above 0x7F; and
// is_mailbox(s, true) is the lenient grammar plus well-formed UTF-8.
void check_utf8_path(std::string_view arg, bool reverse) {
  path_parse p = reverse ? parse_mail_from(arg, true) : parse_rcpt_to(arg, true);
  path_parse ascii = reverse ? parse_mail_from(arg) : parse_rcpt_to(arg);
  if (ascii.error == path_error::none) {
    INBOXD_FUZZ_CHECK(p.error == path_error::none);
    INBOXD_FUZZ_CHECK(p.value.mailbox == ascii.value.mailbox);
    INBOXD_FUZZ_CHECK(p.value.params == ascii.value.params);
  }
  if (p.error != path_error::none) return;
  const path_arg& v = p.value;
  INBOXD_FUZZ_CHECK(inside(v.mailbox, arg) && inside(v.params, arg));
  INBOXD_FUZZ_CHECK(v.mailbox.size() + 2 <= 256);
  if (ascii.error != path_error::none) INBOXD_FUZZ_CHECK(!is_ascii(arg));
  if (v.mailbox.empty() || (!reverse && iequals(v.mailbox, "postmaster"))) return;
  INBOXD_FUZZ_CHECK(is_mailbox(v.mailbox, true) == is_utf8_text(v.mailbox));
  check_params(v.params);
}

void check_utf8_mailbox(std::string_view s) {
  bool utf8 = is_mailbox(s, true);
  if (utf8) INBOXD_FUZZ_CHECK(is_utf8_text(s));
  if (is_ascii(s) && is_utf8_text(s)) INBOXD_FUZZ_CHECK(utf8 == is_mailbox(s));
  if (is_mailbox(s)) INBOXD_FUZZ_CHECK(utf8);
}

// SASL responses (RFC 4954) are base64: what decodes re-encodes to the same
// text, and every byte string survives encoding and decoding.
void check_base64(std::string_view s) {
  std::string decoded;
  if (base64_decode(s, decoded)) {
    INBOXD_FUZZ_CHECK(decoded.size() <= s.size());
    std::string again;
    INBOXD_FUZZ_CHECK(base64_decode(base64_encode(decoded), again) && again == decoded);
  }
  std::string encoded = base64_encode(s);
  INBOXD_FUZZ_CHECK(encoded.size() % 4 == 0 && encoded.size() == (s.size() + 2) / 3 * 4);
  std::string back;
  INBOXD_FUZZ_CHECK(base64_decode(encoded, back) && back == s);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  std::string_view s(reinterpret_cast<const char*>(data), size);
  check_command(s);
  check_path(s, true);
  check_path(s, false);
  check_params(s);
  check_mailbox(s);
  check_utf8_mailbox(s);
  check_base64(s);

  // The same bytes one layer down, so that short inputs reach the grammar.
  std::string line = "MAIL " + std::string(s);
  check_command(line);
  std::string path = "<" + std::string(s) + ">";
  check_path("FROM:" + path, true);
  check_path("TO:" + path, false);
  check_utf8_path("FROM:" + path, true);
  check_utf8_path("TO:" + path, false);
  check_path("FROM:<a@b> " + std::string(s), true);
  // A source route in front: "<@relay,@relay:input>".
  check_path("TO:<@a.example,@b.example:" + std::string(s) + ">", false);
  return 0;
}
