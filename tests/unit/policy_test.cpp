#include <doctest/doctest.h>

#include <string>
#include <vector>

#include "inboxd/policy.hpp"

using namespace inboxd;

namespace {

// Resolves one address and describes the outcome: the verdict, then each
// mailbox as user@domain.
std::string resolve(const recipient_policy& p, std::string_view address) {
  std::vector<recipient> out;
  switch (p.resolve(address, out)) {
    case rcpt_verdict::unknown_user: return "unknown user";
    case rcpt_verdict::relay_denied: return "relay denied";
    case rcpt_verdict::bad_domain: return "bad domain";
    case rcpt_verdict::accept: break;
  }
  std::string s = "accept";
  for (const auto& r : out) s += " " + r.user + "@" + r.domain;
  return s;
}

recipient_rules example_rules() {
  recipient_rules rules;
  rules.domains.push_back({"example.com",
                           {"alice", "Bob"},
                           {{"info", {"alice", "bob"}}, {"sales", {"carol@example.net"}}}});
  rules.domains.push_back({"*.example.org", {}, {}});
  rules.domains.push_back({"example.net", {"carol"}, {{"*", {"carol"}}}});
  return rules;
}

}  // namespace

TEST_CASE("with no domains every recipient is accepted as its own mailbox") {
  auto p = make_rules_policy({});
  CHECK(resolve(*p, "Alice+x@Example.COM") == "accept alice@example.com");
  CHECK(resolve(*p, "postmaster") == "accept postmaster@");
}

TEST_CASE("known users are accepted, unknown ones refused, other domains not relayed") {
  auto p = make_rules_policy(example_rules());
  CHECK(resolve(*p, "alice@example.com") == "accept alice@example.com");
  CHECK(resolve(*p, "bob@example.com") == "accept Bob@example.com");
  CHECK(resolve(*p, "mallory@example.com") == "unknown user");
  CHECK(resolve(*p, "alice@example.edu") == "relay denied");
}

TEST_CASE("local parts compare without case unless configured otherwise") {
  CHECK(resolve(*make_rules_policy(example_rules()), "ALICE@EXAMPLE.COM") ==
        "accept alice@example.com");
  auto rules = example_rules();
  rules.case_insensitive = false;
  CHECK(resolve(*make_rules_policy(rules), "ALICE@example.com") == "unknown user");
}

TEST_CASE("a +detail sub-address goes to its base user, when enabled") {
  CHECK(resolve(*make_rules_policy(example_rules()), "alice+news@example.com") ==
        "accept alice@example.com");
  auto rules = example_rules();
  rules.sub_address_delimiter = "";
  CHECK(resolve(*make_rules_policy(rules), "alice+news@example.com") == "unknown user");
}

TEST_CASE("aliases expand to users of their domain or another") {
  auto p = make_rules_policy(example_rules());
  CHECK(resolve(*p, "info@example.com") == "accept alice@example.com bob@example.com");
  CHECK(resolve(*p, "sales@example.com") == "accept carol@example.net");
}

TEST_CASE("the catch-all alias takes every unknown local part") {
  auto p = make_rules_policy(example_rules());
  CHECK(resolve(*p, "anything@example.net") == "accept carol@example.net");
}

TEST_CASE("a wildcard domain serves its subdomains, not itself") {
  auto p = make_rules_policy(example_rules());
  CHECK(resolve(*p, "x@a.example.org") == "accept x@a.example.org");
  CHECK(resolve(*p, "x@b.a.example.org") == "accept x@b.a.example.org");
  CHECK(resolve(*p, "x@example.org") == "relay denied");
  CHECK(resolve(*p, "x@badexample.org") == "relay denied");
}

TEST_CASE("postmaster is always accepted, with or without a domain") {
  auto p = make_rules_policy(example_rules());
  CHECK(resolve(*p, "PostMaster") == "accept postmaster@example.com");
  CHECK(resolve(*p, "postmaster@example.com") == "accept postmaster@example.com");
}

TEST_CASE("a quoted local part is compared unquoted") {
  auto p = make_rules_policy(example_rules());
  CHECK(resolve(*p, "\"alice\"@example.com") == "accept alice@example.com");
}

// Internationalised domains (RFC 5890, RFC 6531) and UTF-8 local parts.

namespace {

recipient_rules idn_rules(std::string_view name) {
  recipient_rules rules;
  rules.domains.push_back({std::string(name),
                           {"j\xC3\xB6rg", "alice", "\xC3\x89LOISE"},
                           {{"gr\xC3\xBC\xC3\x9F", {"alice@b\xC3\xBC\x63her.example"}}}});
  rules.domains.push_back({"*.b\xC3\xBC\x63her.example", {}, {}});
  return rules;
}

}  // namespace

TEST_CASE("canonical_domain gives the lower-case A-label form, or nothing") {
  CHECK(canonical_domain("m\xC3\xBCnchen.example") == "xn--mnchen-3ya.example");
  CHECK(canonical_domain("M\xC3\x9CNCHEN.Example") == "xn--mnchen-3ya.example");
  CHECK(canonical_domain("xn--mnchen-3ya.example") == "xn--mnchen-3ya.example");
  CHECK(canonical_domain("XN--MNCHEN-3YA.EXAMPLE") == "xn--mnchen-3ya.example");
  CHECK(canonical_domain("Example.COM") == "example.com");
  CHECK(canonical_domain("[192.0.2.1]") == "[192.0.2.1]");
  // No IDNA name: a disallowed code point (U+2603), its A-label, a broken
  // A-label, bytes that are not UTF-8.
  CHECK_FALSE(canonical_domain("\xE2\x98\x83.example").has_value());
  CHECK_FALSE(canonical_domain("xn--n3h.example").has_value());
  CHECK_FALSE(canonical_domain("xn--a.example").has_value());
  CHECK_FALSE(canonical_domain("x\xFFy.example").has_value());
}

TEST_CASE("a U-label domain and its A-label are one domain, in the config and on the wire") {
  for (std::string_view configured : {"m\xC3\xBCnchen.example", "xn--mnchen-3ya.example",
                                      "XN--MNCHEN-3YA.example", "M\xC3\x9CNCHEN.example"}) {
    INFO(configured);
    auto p = make_rules_policy(idn_rules(configured));
    CHECK(resolve(*p, "alice@m\xC3\xBCnchen.example") == "accept alice@xn--mnchen-3ya.example");
    CHECK(resolve(*p, "alice@xn--mnchen-3ya.example") == "accept alice@xn--mnchen-3ya.example");
    CHECK(resolve(*p, "alice@XN--Mnchen-3ya.EXAMPLE") == "accept alice@xn--mnchen-3ya.example");
    CHECK(resolve(*p, "alice@M\xC3\x9CNCHEN.example") == "accept alice@xn--mnchen-3ya.example");
    CHECK(resolve(*p, "j\xC3\xB6rg@m\xC3\xBCnchen.example") ==
          "accept j\xC3\xB6rg@xn--mnchen-3ya.example");
    CHECK(resolve(*p, "alice@muenchen.example") == "relay denied");
    CHECK(resolve(*p, "postmaster") == "accept postmaster@xn--mnchen-3ya.example");
  }
}

TEST_CASE("wildcards and alias targets match in either form too") {
  auto p = make_rules_policy(idn_rules("m\xC3\xBCnchen.example"));
  CHECK(resolve(*p, "x@a.xn--bcher-kva.example") == "accept x@a.xn--bcher-kva.example");
  CHECK(resolve(*p, "x@a.b\xC3\xBC\x63her.example") == "accept x@a.xn--bcher-kva.example");
  CHECK(resolve(*p, "gr\xC3\xBC\xC3\x9F@xn--mnchen-3ya.example") ==
        "accept alice@xn--bcher-kva.example");
}

TEST_CASE("a domain that is no IDNA name is refused, not matched and not a crash") {
  auto p = make_rules_policy(idn_rules("m\xC3\xBCnchen.example"));
  CHECK(resolve(*p, "alice@\xE2\x98\x83.example") == "bad domain");
  CHECK(resolve(*p, "alice@xn--n3h.example") == "bad domain");
  CHECK(resolve(*p, "alice@xn--a.example") == "bad domain");
  // With no domains configured (accept all) as well.
  CHECK(resolve(*make_rules_policy({}), "alice@xn--a.example") == "bad domain");
  CHECK(resolve(*make_rules_policy({}), "alice@m\xC3\xBCnchen.example") ==
        "accept alice@xn--mnchen-3ya.example");
  // A configured name that is no IDNA name matches nothing.
  auto bad = make_rules_policy(idn_rules("\xE2\x98\x83.example"));
  CHECK(resolve(*bad, "alice@\xE2\x98\x83.example") == "bad domain");
}

TEST_CASE("UTF-8 local parts compare as octets; case folding touches ASCII only") {
  auto p = make_rules_policy(idn_rules("m\xC3\xBCnchen.example"));
  // ASCII letters fold: J\xC3\xB6RG is j\xC3\xB6rg.
  CHECK(resolve(*p, "J\xC3\xB6RG@m\xC3\xBCnchen.example") ==
        "accept j\xC3\xB6rg@xn--mnchen-3ya.example");
  // \xC3\x96 (U+00D6) is not \xC3\xB6 (U+00F6): no Unicode case folding.
  CHECK(resolve(*p, "j\xC3\x96rg@m\xC3\xBCnchen.example") == "unknown user");
  // A configured user with a non-ASCII capital (\xC3\x89, U+00C9) keeps it.
  CHECK(resolve(*p, "\xC3\x89loise@m\xC3\xBCnchen.example") ==
        "accept \xC3\x89LOISE@xn--mnchen-3ya.example");
  CHECK(resolve(*p, "\xC3\xA9loise@m\xC3\xBCnchen.example") == "unknown user");
  auto rules = idn_rules("m\xC3\xBCnchen.example");
  rules.case_insensitive = false;
  auto exact = make_rules_policy(rules);
  CHECK(resolve(*exact, "j\xC3\xB6rg@m\xC3\xBCnchen.example") ==
        "accept j\xC3\xB6rg@xn--mnchen-3ya.example");
  CHECK(resolve(*exact, "J\xC3\xB6rg@m\xC3\xBCnchen.example") == "unknown user");
  // A quoted UTF-8 local part compares unquoted.
  CHECK(resolve(*p, "\"j\xC3\xB6rg\"@m\xC3\xBCnchen.example") ==
        "accept j\xC3\xB6rg@xn--mnchen-3ya.example");
}
