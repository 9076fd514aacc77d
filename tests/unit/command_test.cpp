#include <doctest/doctest.h>

#include <string>
#include <vector>

#include "proto/command.hpp"

using namespace inboxd::proto;

namespace {

// The mailbox parse_mail_from/parse_rcpt_to found, or why they failed.
std::string from(std::string_view arg) {
  auto p = parse_mail_from(arg);
  if (p.error == path_error::no_keyword) return "<no keyword>";
  if (p.error == path_error::bad_path) return "<bad path>";
  return std::string(p.value.mailbox);
}

std::string to(std::string_view arg) {
  auto p = parse_rcpt_to(arg);
  if (p.error == path_error::no_keyword) return "<no keyword>";
  if (p.error == path_error::bad_path) return "<bad path>";
  return std::string(p.value.mailbox);
}

// Every parameter as "KEYWORD" or "KEYWORD=value", then "error" if the reader stopped on one.
std::string params(std::string_view text) {
  param_reader r(text);
  std::string seen;
  while (auto p = r.next())
    seen += std::string(p->keyword) + (p->has_value ? "=" + std::string(p->value) : "") + " ";
  if (r.error()) seen += "error";
  CHECK_FALSE(r.next().has_value());  // The end, or the error, stays.
  return seen;
}

// A domain of exactly n octets made of valid labels.
std::string domain_of(std::size_t n) {
  std::string d;
  while (d.size() + 64 < n) d += std::string(63, 'd') + ".";
  return d + std::string(n - d.size(), 'e');
}

}  // namespace

// Verbs.

TEST_CASE("verbs are case-insensitive") {
  CHECK(parse_command("mAiL FROM:<a@b>").v == verb::mail);
  CHECK(parse_command("mAiL FROM:<a@b>").arg == "FROM:<a@b>");
  CHECK(parse_command("ehlo x").v == verb::ehlo);
  CHECK(parse_command("Quit").v == verb::quit);
}

TEST_CASE("every verb of the table is recognised") {
  const std::vector<std::pair<std::string_view, verb>> all{
      {"HELO", verb::helo}, {"EHLO", verb::ehlo}, {"MAIL", verb::mail}, {"RCPT", verb::rcpt},
      {"DATA", verb::data}, {"RSET", verb::rset}, {"NOOP", verb::noop}, {"QUIT", verb::quit},
      {"VRFY", verb::vrfy}, {"HELP", verb::help}, {"STARTTLS", verb::starttls},
      {"AUTH", verb::auth}};
  for (const auto& entry : all) {
    std::string_view name = entry.first;  // Not a structured binding: INFO captures it.
    INFO(name);
    CHECK(parse_command(name).v == entry.second);
    CHECK(parse_command(name).arg.empty());
  }
}

TEST_CASE("unknown verbs are verb::unknown with their argument") {
  CHECK(parse_command("XYZZY plugh").v == verb::unknown);
  CHECK(parse_command("XYZZY plugh").arg == "plugh");
  CHECK(parse_command("MAILFROM:<a@b>").v == verb::unknown);
  CHECK(parse_command("MAI").v == verb::unknown);
  CHECK(parse_command("NOOPS").v == verb::unknown);
  CHECK(parse_command("").v == verb::unknown);
  CHECK(parse_command(" NOOP").v == verb::unknown);
}

TEST_CASE("the argument is trimmed of spaces and tabs") {
  CHECK(parse_command("MAIL   FROM:<a@b> \t").arg == "FROM:<a@b>");
  CHECK(parse_command("NOOP ").arg.empty());
}

// MAIL FROM / RCPT TO paths, RFC 5321 4.1.2.

TEST_CASE("a path gives its mailbox and its parameters") {
  auto p = parse_mail_from("FROM:<a@example.com> SIZE=100 BODY=8BITMIME");
  CHECK(p.error == path_error::none);
  CHECK(p.value.mailbox == "a@example.com");
  CHECK(p.value.params == "SIZE=100 BODY=8BITMIME");
  CHECK(parse_rcpt_to("TO:<b@example.com>").value.params.empty());
}

TEST_CASE("the FROM: and TO: keywords are case-insensitive and required") {
  CHECK(from("from:<a@b.c>") == "a@b.c");
  CHECK(to("To:<a@b.c>") == "a@b.c");
  CHECK(from("FROM <a@b.c>") == "<no keyword>");
  CHECK(from("<a@b.c>") == "<no keyword>");
  CHECK(from("") == "<no keyword>");
  CHECK(to("FROM:<a@b.c>") == "<no keyword>");
  CHECK(from("TO:<a@b.c>") == "<no keyword>");
}

TEST_CASE("the null reverse path <> is for MAIL only") {
  auto p = parse_mail_from("FROM:<>");
  CHECK(p.error == path_error::none);
  CHECK(p.value.mailbox.empty());
  CHECK(from("FROM:<> BODY=7BIT") == "");
  CHECK(to("TO:<>") == "<bad path>");
}

TEST_CASE("<postmaster> in any case is for RCPT only") {
  CHECK(to("TO:<postmaster>") == "postmaster");
  CHECK(to("TO:<PostMaster>") == "PostMaster");
  CHECK(from("FROM:<postmaster>") == "<bad path>");
  CHECK(to("TO:<postmistress>") == "<bad path>");
  CHECK(to("TO:<postmaster@example.com>") == "postmaster@example.com");
}

TEST_CASE("one space after the colon is tolerated, two are not") {
  CHECK(from("FROM: <a@b.c>") == "a@b.c");
  CHECK(to("TO: <a@b.c>") == "a@b.c");
  CHECK(from("FROM:  <a@b.c>") == "<bad path>");
}

TEST_CASE("a path needs its angle brackets") {
  CHECK(from("FROM:a@b.c") == "<bad path>");
  CHECK(from("FROM:<a@b.c") == "<bad path>");
  CHECK(from("FROM:a@b.c>") == "<bad path>");
  CHECK(to("TO:") == "<bad path>");
}

TEST_CASE("nothing but a space may follow the closing bracket") {
  CHECK(from("FROM:<a@b.c>x") == "<bad path>");
  CHECK(from("FROM:<a@b.c>>") == "<bad path>");
  CHECK(to("TO:<a@b.c><d@e.f>") == "<bad path>");
  CHECK(parse_mail_from("FROM:<a@b.c>   SIZE=1  ").value.params == "SIZE=1");
}

TEST_CASE("quoted local parts, with quoted pairs") {
  CHECK(from(R"(FROM:<"john doe"@b.c>)") == R"("john doe"@b.c)");
  CHECK(from(R"(FROM:<"a\"b"@b.c>)") == R"("a\"b"@b.c)");
  CHECK(from(R"(FROM:<"a\\b"@b.c>)") == R"("a\\b"@b.c)");
  CHECK(from(R"(FROM:<"a>b@x"@b.c>)") == R"("a>b@x"@b.c)");
  CHECK(from(R"(FROM:<""@b.c>)") == R"(""@b.c)");
}

TEST_CASE("malformed quoted local parts are refused") {
  CHECK(from(R"(FROM:<"a"b"@b.c>)") == "<bad path>");
  CHECK(from(R"(FROM:<"ab@b.c>)") == "<bad path>");
  CHECK(from(R"(FROM:<"ab\"@b.c>)") == "<bad path>");
  CHECK(from("FROM:<\"a\tb\"@b.c>") == "<bad path>");
  CHECK(from("FROM:<\"a\\\x01\"@b.c>") == "<bad path>");
  CHECK(from(R"(FROM:<a"b"@b.c>)") == "<bad path>");
}

TEST_CASE("dot-string local parts") {
  CHECK(is_mailbox("first.last+tag@b.c"));
  CHECK(is_mailbox("!#$%&'*+-/=?^_`{|}~@b.c"));
  CHECK_FALSE(is_mailbox(".a@b.c"));
  CHECK_FALSE(is_mailbox("a.@b.c"));
  CHECK_FALSE(is_mailbox("a..b@b.c"));
  CHECK_FALSE(is_mailbox("a,b@b.c"));
  CHECK_FALSE(is_mailbox("a b@b.c"));
  CHECK_FALSE(is_mailbox("@b.c"));
  CHECK_FALSE(is_mailbox("a@"));
  CHECK_FALSE(is_mailbox("ab.c"));
  CHECK_FALSE(is_mailbox("a@b@c.d"));
}

TEST_CASE("a local part may have 64 octets, not 65") {
  CHECK(is_mailbox(std::string(64, 'l') + "@b.c"));
  CHECK_FALSE(is_mailbox(std::string(65, 'l') + "@b.c"));
  CHECK(is_mailbox("\"" + std::string(62, 'l') + "\"@b.c"));
  CHECK_FALSE(is_mailbox("\"" + std::string(63, 'l') + "\"@b.c"));
}

TEST_CASE("a path may have 256 octets with its brackets, not 257") {
  std::string local(64, 'l');
  std::string ok = "<" + local + "@" + domain_of(189) + ">";
  std::string too_long = "<" + local + "@" + domain_of(190) + ">";
  REQUIRE(ok.size() == 256);
  REQUIRE(too_long.size() == 257);
  CHECK(from("FROM:" + ok) == ok.substr(1, 254));
  CHECK(from("FROM:" + too_long) == "<bad path>");
  CHECK(to("TO:" + too_long) == "<bad path>");
}

TEST_CASE("address literals: IPv4, IPv6 and general") {
  CHECK(to("TO:<u@[192.0.2.1]>") == "u@[192.0.2.1]");
  CHECK(to("TO:<u@[IPv6:2001:db8::1]>") == "u@[IPv6:2001:db8::1]");
  CHECK(to("TO:<u@[ipv6:::1]>") == "u@[ipv6:::1]");
  CHECK(to("TO:<u@[IPv6:::ffff:192.0.2.1]>") == "u@[IPv6:::ffff:192.0.2.1]");
  CHECK(to("TO:<u@[x-tag:some-thing]>") == "u@[x-tag:some-thing]");
}

TEST_CASE("malformed address literals are refused") {
  for (std::string_view lit : {"[192.0.2.256]", "[192.0.2]", "[192.0.2.1.5]", "[IPv6:192.0.2.1]",
                               "[IPv6:2001:db8::zz]", "[IPv6:]", "[]", "[tag]", "[:x]", "[tag:]",
                               "[tag:a b]", "[tag:a]b]", "[ta_g:x]", "192.0.2.1]", "[192.0.2.1"}) {
    INFO(lit);
    CHECK_FALSE(is_address_literal(lit));
    CHECK(to("TO:<u@" + std::string(lit) + ">") == "<bad path>");
  }
}

// RFC 5321 4.1.3: dcontent = %d33-90 / %d94-126 includes "@", so the local
// part ends at the first "@", not the last.
TEST_CASE("a general address literal may contain @") {
  CHECK(is_address_literal("[x-tag:a@b]"));
  CHECK(is_mailbox("u@[x-tag:a@b]"));
  CHECK(to("TO:<u@[x-tag:a@b]>") == "u@[x-tag:a@b]");
}

// RFC 5321 4.1.3 Standardized-tag = Ldh-str, which ends in a letter or digit.
TEST_CASE("a general address literal's tag may not end in a hyphen") {
  CHECK_FALSE(is_address_literal("[tag-:x]"));
}

TEST_CASE("source routes are accepted and dropped") {
  CHECK(from("FROM:<@a.b,@c.d:u@e.f>") == "u@e.f");
  CHECK(to("TO:<@a.b:u@e.f>") == "u@e.f");
  CHECK(to("TO:<@a.b:\"x:y\"@e.f> NOTIFY=NEVER") == "\"x:y\"@e.f");
}

TEST_CASE("malformed source routes are refused") {
  for (std::string_view path :
       {"<@a.b,@c.d u@e.f>", "<@a.b:>", "<@:u@e.f>", "<@a.b,:u@e.f>", "<@a.b,c.d:u@e.f>",
        "<@-a.b:u@e.f>", "<a.b:u@e.f>", "<@a.b,@c.d>"}) {
    INFO(path);
    CHECK(from("FROM:" + std::string(path)) == "<bad path>");
  }
}

TEST_CASE("domains follow RFC 5321 sub-domain syntax") {
  CHECK(is_domain("example.com"));
  CHECK(is_domain("a-b.c-d.e"));
  CHECK(is_domain("1.2.3"));
  CHECK(is_domain("localhost"));
  CHECK(is_domain("xn--bcher-kva.example"));
}

TEST_CASE("bad domains are refused") {
  for (std::string_view d : {"-b.c", "b-.c", "b.-c", "b.c-", "b..c", ".b.c", "b.c.", "", ".",
                             "b_c.d", "b c.d", "b.c\xc3\xa9"}) {
    INFO(d);
    CHECK_FALSE(is_domain(d));
    CHECK(from("FROM:<a@" + std::string(d) + ">") == "<bad path>");
  }
}

TEST_CASE("a label may have 63 octets and a domain 255") {
  CHECK(is_domain(std::string(63, 'a') + ".b"));
  CHECK_FALSE(is_domain(std::string(64, 'a') + ".b"));
  CHECK(is_domain(domain_of(255)));
  CHECK_FALSE(is_domain(domain_of(256)));
}

// ESMTP parameters, RFC 5321 4.1.2.

TEST_CASE("param_reader reads keywords with and without values") {
  CHECK(params("SIZE=100 BODY=8BITMIME SMTPUTF8") == "SIZE=100 BODY=8BITMIME SMTPUTF8 ");
  CHECK(params("  X-Ext-1=a+b/c   Y  ") == "X-Ext-1=a+b/c Y ");
  CHECK(params("AUTH=<>") == "AUTH=<> ");
  CHECK(params("") == "");
}

TEST_CASE("param_reader stops at a syntax error") {
  CHECK(params("SIZE=") == "error");
  CHECK(params("=100") == "error");
  CHECK(params("-X") == "error");
  CHECK(params("SIZE==1") == "error");
  CHECK(params("X=a=b") == "error");
  CHECK(params("A_B") == "error");
  CHECK(params("X=\x7f") == "error");
  CHECK(params("X=caf\xc3\xa9") == "error");
  CHECK(params("X\tY") == "error");
  CHECK(params("SIZE=1 BAD_ONE BODY=7BIT") == "SIZE=1 error");
}

TEST_CASE("iequals compares ASCII case-insensitively") {
  CHECK(iequals("PostMaster", "postmaster"));
  CHECK_FALSE(iequals("postmaster", "postmaste"));
  CHECK_FALSE(iequals("a", "b"));
}

// SMTPUTF8 (RFC 6531 3.3): UTF-8 local parts and U-labels.

TEST_CASE("without utf8 a path with non-ASCII octets is a bad path") {
  CHECK(from("FROM:<j\xC3\xB6rg@example.com>") == "<bad path>");
  CHECK(to("TO:<a@m\xC3\xBCnchen.example>") == "<bad path>");
  CHECK_FALSE(is_mailbox("j\xC3\xB6rg@example.com"));
}

TEST_CASE("with utf8 local parts, quoted strings and domain labels may be UTF-8") {
  auto f = [](std::string_view arg) {
    auto p = parse_mail_from(arg, true);
    return p.error == path_error::none ? std::string(p.value.mailbox) : "<bad path>";
  };
  auto t = [](std::string_view arg) {
    auto p = parse_rcpt_to(arg, true);
    return p.error == path_error::none ? std::string(p.value.mailbox) : "<bad path>";
  };
  CHECK(f("FROM:<j\xC3\xB6rg@example.com> SMTPUTF8") == "j\xC3\xB6rg@example.com");
  CHECK(parse_mail_from("FROM:<j\xC3\xB6rg@example.com> SMTPUTF8", true).value.params ==
        "SMTPUTF8");
  CHECK(t("TO:<\xE7\x94\xA8\xE6\x88\xB7@\xE4\xBE\x8B\xE5\xAD\x90.\xE5\xB9\xBF\xE5\x91\x8A>") ==
        "\xE7\x94\xA8\xE6\x88\xB7@\xE4\xBE\x8B\xE5\xAD\x90.\xE5\xB9\xBF\xE5\x91\x8A");
  CHECK(t("TO:<\"j\xC3\xB6 rg\"@example.com>") == "\"j\xC3\xB6 rg\"@example.com");
  CHECK(t("TO:<a@m\xC3\xBCnchen.example>") == "a@m\xC3\xBCnchen.example");
  CHECK(t("TO:<@m\xC3\xBCnchen.example:a@b.c>") == "a@b.c");  // a source route too
  // The structure still holds: dots, '@', brackets, the lengths in octets.
  CHECK(t("TO:<j\xC3\xB6..rg@example.com>") == "<bad path>");
  CHECK(t("TO:<j\xC3\xB6rg@>") == "<bad path>");
  CHECK(t("TO:<j\xC3\xB6rg@[\xC3\xBC]>") == "<bad path>");  // no UTF-8 in a literal
  CHECK(t("TO:<a@-m\xC3\xBC.example>") == "<bad path>");
  std::string local32;  // 32 times U+00FC: 64 octets, the limit
  for (int i = 0; i < 32; ++i) local32 += "\xC3\xBC";
  CHECK(t("TO:<" + local32 + "@b.c>") == local32 + "@b.c");
  CHECK(t("TO:<" + local32 + "a@b.c>") == "<bad path>");  // 65 octets
  // A U-label's octets are not held to 63 (its A-label is, by the policy);
  // the whole domain is held to 255.
  std::string label;
  for (int i = 0; i < 40; ++i) label += "\xC3\xBC";
  CHECK(t("TO:<a@" + label + ".example>") == "a@" + label + ".example");
  CHECK(t("TO:<a@" + std::string(64, 'x') + ".example>") == "<bad path>");
}

TEST_CASE("is_mailbox with utf8 also wants well-formed UTF-8 without controls") {
  CHECK(is_mailbox("j\xC3\xB6rg@example.com", true));
  CHECK(is_mailbox("a@m\xC3\xBCnchen.example", true));
  CHECK(is_mailbox("plain@example.com", true));
  CHECK_FALSE(is_mailbox("j\xC3rg@example.com", true));            // truncated
  CHECK_FALSE(is_mailbox("j\xC0\xAFrg@example.com", true));        // overlong
  CHECK_FALSE(is_mailbox("j\xED\xA0\x80rg@example.com", true));    // a surrogate
  CHECK_FALSE(is_mailbox("j\xF4\x90\x80\x80@example.com", true));  // past U+10FFFF
  CHECK_FALSE(is_mailbox("j\xC2\x85rg@example.com", true));        // C1 NEL
  CHECK_FALSE(is_mailbox("a@m\xFFnchen.example", true));
}
