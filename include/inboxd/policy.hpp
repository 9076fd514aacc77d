// inboxd/policy.hpp: which recipients inboxd accepts, and whose mailbox they are.
//
// The session asks the policy at each RCPT. inboxd never relays: a domain it
// does not serve is refused. An embedder may implement recipient_policy
// itself; make_rules_policy() builds the one the config file describes.
// This header includes no libuv or mbedTLS type.
#pragma once

#include <map>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "inboxd/sink.hpp"

namespace inboxd {

enum class rcpt_verdict {
  accept,        // 250 2.1.5; mailboxes were appended
  unknown_user,  // 550 5.1.1
  relay_denied,  // 550 5.7.1: not a domain we serve
  bad_domain,    // 550 5.1.2: the domain is no valid IDNA name (RFC 5891)
};

class recipient_policy {
 public:
  virtual ~recipient_policy() = default;
  // Resolves one forward-path (without brackets; "postmaster" without a
  // domain allowed) into local mailboxes, appended to out on accept.
  virtual rcpt_verdict resolve(std::string_view address, std::vector<recipient>& out) const = 0;
};

// One served domain. With neither users nor aliases, any local part is a
// user of its own name.
struct domain_rules {
  std::string name;  // "example.com", or "*.example.com" for its subdomains
  std::vector<std::string> users;
  // alias -> users of this domain; the alias "*" catches every unknown local part.
  std::map<std::string, std::vector<std::string>> aliases;
};

// Domain names match in U-label and A-label form alike: the rules policy
// compares, and gives sinks (recipient::domain, {domain}), the A-label form
// in lower case. Local parts compare as UTF-8 octets; case_insensitive
// folds ASCII letters only.
struct recipient_rules {
  std::vector<domain_rules> domains;        // empty: every domain, any local part
  bool case_insensitive = true;             // compare local parts ignoring ASCII case
  std::string sub_address_delimiter = "+";  // "user+detail" is user; empty: off
  // Where <postmaster> without a domain goes (RFC 5321 4.1.1.3): this
  // domain's postmaster; empty means the first domain, or any.
  std::string postmaster_domain;
};

[[nodiscard]] std::unique_ptr<recipient_policy> make_rules_policy(recipient_rules rules);

// A domain as the rules policy compares it: lower-case ASCII, U-labels
// turned into A-labels (IDNA2008, libidn2); nullopt when it is no valid
// IDNA name. An address literal ("[...]") is returned lower-cased.
[[nodiscard]] std::optional<std::string> canonical_domain(std::string_view domain);

}  // namespace inboxd
