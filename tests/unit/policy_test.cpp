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
