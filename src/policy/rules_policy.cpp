// The recipient policy of the config file: served domains, users, aliases.
//
// Sans I/O like src/proto: a table lookup per RCPT, built once per config
// load. Names are normalised (case, sub-address) the same way when the table
// is built and when it is consulted. Domains are compared in one form, the
// A-label one in lower case (RFC 5890: münchen.example is
// xn--mnchen-3ya.example), converted by libidn2 (IDNA2008 with the UTS 46
// non-transitional mapping, as libidn2 recommends for lookups).
#include <idn2.h>

#include <algorithm>
#include <cstdlib>
#include <optional>
#include <unordered_map>

#include "inboxd/policy.hpp"
#include "proto/command.hpp"

namespace inboxd {
namespace {

// ASCII only: the octets of UTF-8 are never touched.
std::string lower(std::string_view s) {
  std::string out(s);
  for (char& c : out)
    if (c >= 'A' && c <= 'Z') c = static_cast<char>(c + 32);
  return out;
}

bool needs_idna(std::string_view domain) {
  for (char c : domain)
    if (static_cast<unsigned char>(c) >= 0x80) return true;
  // An A-label ("xn--" in any case) is checked, and so compared, as libidn2 reads it.
  for (std::size_t at = 0; at < domain.size(); ++at) {
    if ((at == 0 || domain[at - 1] == '.') && domain.size() - at >= 4 &&
        proto::iequals(domain.substr(at, 4), "xn--"))
      return true;
  }
  return false;
}

}  // namespace

// A domain in the form the policy compares: lower-case ASCII with A-labels;
// nullopt when it is no valid IDNA name. An address literal stays as given.
std::optional<std::string> canonical_domain(std::string_view domain) {
  std::string low = lower(domain);
  if (low.empty() || low.front() == '[' || !needs_idna(low)) return low;
  char* out = nullptr;
  int rc = idn2_to_ascii_8z(low.c_str(), &out, IDN2_NONTRANSITIONAL | IDN2_NFC_INPUT);
  if (rc != IDN2_OK) {
    std::free(out);
    return std::nullopt;
  }
  std::string ascii = lower(out);
  std::free(out);
  return ascii;
}

namespace {

class rules_policy final : public recipient_policy {
 public:
  explicit rules_policy(recipient_rules rules) : rules_(std::move(rules)) {
    for (auto& d : rules_.domains) {
      domain_table t;
      t.name = config_domain(d.name);
      t.any_user = d.users.empty() && d.aliases.empty();
      for (const auto& u : d.users) t.users.emplace(normal(u), u);
      for (const auto& [alias, targets] : d.aliases) t.aliases.emplace(normal(alias), targets);
      tables_.push_back(std::move(t));
    }
  }

  rcpt_verdict resolve(std::string_view address, std::vector<recipient>& out) const override {
    std::string_view local, domain_part;
    std::string domain;
    if (!proto::split_mailbox(address, local, domain_part)) {
      // RFC 5321 4.1.1.3: <postmaster> without a domain is always accepted.
      local = "postmaster";
      domain = postmaster_domain();
    } else if (auto canonical = canonical_domain(domain_part)) {
      domain = std::move(*canonical);
    } else {
      return rcpt_verdict::bad_domain;
    }
    std::string name = unquote_and_fold(local);
    // RFC 5321 4.5.1: "postmaster" is case-insensitive, whatever the config says.
    if (lower(name) == "postmaster") name = "postmaster";
    if (tables_.empty()) {
      out.push_back({std::string(address), base_of(name), domain});
      return rcpt_verdict::accept;
    }
    const domain_table* t = find_domain(domain);
    if (!t) return rcpt_verdict::relay_denied;
    for (const std::string& candidate : {name, base_of(name)}) {
      if (t->any_user) {
        out.push_back({std::string(address), base_of(name), domain});
        return rcpt_verdict::accept;
      }
      if (auto a = t->aliases.find(candidate); a != t->aliases.end()) {
        expand(address, domain, a->second, out);
        return rcpt_verdict::accept;
      }
      if (auto u = t->users.find(candidate); u != t->users.end()) {
        out.push_back({std::string(address), u->second, domain});
        return rcpt_verdict::accept;
      }
    }
    if (auto a = t->aliases.find("*"); a != t->aliases.end()) {
      expand(address, domain, a->second, out);
      return rcpt_verdict::accept;
    }
    // RFC 5321 4.5.1: every served domain has a postmaster.
    if (name == "postmaster") {
      out.push_back({std::string(address), "postmaster", domain});
      return rcpt_verdict::accept;
    }
    return rcpt_verdict::unknown_user;
  }

 private:
  struct domain_table {
    std::string name;
    bool any_user = false;
    std::unordered_map<std::string, std::string> users;  // normalised -> as configured
    std::unordered_map<std::string, std::vector<std::string>> aliases;
  };

  std::string normal(std::string_view name) const {
    return rules_.case_insensitive ? lower(name) : std::string(name);
  }

  std::string unquote_and_fold(std::string_view local) const {
    return normal(proto::unquote_local_part(local));
  }

  // "user+detail" -> "user" (RFC 5233 sub-addressing), when enabled.
  std::string base_of(const std::string& name) const {
    const std::string& delim = rules_.sub_address_delimiter;
    if (delim.empty()) return name;
    std::size_t at = name.find(delim);
    return at == std::string::npos || at == 0 ? name : name.substr(0, at);
  }

  // A configured name, "*." kept; one that is no IDNA name stays in lower
  // case and so matches nothing (a name on the wire that fails is refused).
  static std::string config_domain(std::string_view name) {
    bool wild = name.starts_with("*.");
    if (wild) name.remove_prefix(2);
    std::string d = canonical_domain(name).value_or(lower(name));
    return wild ? "*." + d : d;
  }

  const domain_table* find_domain(std::string_view domain) const {
    for (const auto& t : tables_)
      if (t.name == domain) return &t;
    // "*.example.com" serves every name below example.com, not example.com.
    for (const auto& t : tables_) {
      if (!t.name.starts_with("*.")) continue;
      std::string_view suffix = std::string_view(t.name).substr(1);
      if (domain.size() > suffix.size() && domain.ends_with(suffix)) return &t;
    }
    return nullptr;
  }

  std::string postmaster_domain() const {
    if (!rules_.postmaster_domain.empty()) return config_domain(rules_.postmaster_domain);
    for (const auto& t : tables_)
      if (!t.name.starts_with("*.")) return t.name;
    return {};
  }

  // An alias target is "user" (of the alias's domain) or "user@domain".
  static void expand(std::string_view address, const std::string& domain,
                     const std::vector<std::string>& targets, std::vector<recipient>& out) {
    for (const auto& target : targets) {
      auto at = target.rfind('@');
      if (at == std::string::npos)
        out.push_back({std::string(address), target, domain});
      else
        out.push_back({std::string(address), target.substr(0, at),
                       config_domain(std::string_view(target).substr(at + 1))});
    }
  }

  recipient_rules rules_;
  std::vector<domain_table> tables_;
};

}  // namespace

std::unique_ptr<recipient_policy> make_rules_policy(recipient_rules rules) {
  return std::make_unique<rules_policy>(std::move(rules));
}

}  // namespace inboxd
