// The recipient policy of the config file: served domains, users, aliases.
//
// Sans I/O like src/proto: a table lookup per RCPT, built once per config
// load. Names are normalised (case, sub-address) the same way when the table
// is built and when it is consulted. Domains are compared in one form, the
// A-label one in lower case (RFC 5890: münchen.example is
// xn--mnchen-3ya.example), converted by libidn2 (IDNA2008 with the UTS 46
// non-transitional mapping, as libidn2 recommends for lookups).
//
// An RCPT allocates nothing in steady state: the address's domain and local
// part are normalised into scratch strings of the thread, the tables are
// searched with string views (heterogeneous lookup), and the mailboxes go
// into the session's recycled recipient_list. Only a domain that needs
// libidn2 (a U-label, or an A-label to check) and is not among the last
// eight it converted on this thread allocates, inside libidn2.
#include <idn2.h>

#include <algorithm>
#include <array>
#include <cstdlib>
#include <functional>
#include <optional>
#include <unordered_map>

#include "inboxd/policy.hpp"
#include "proto/command.hpp"

namespace inboxd {
namespace {

// ASCII only: the octets of UTF-8 are never touched.
void lower_in_place(std::string& s) {
  for (char& c : s)
    if (c >= 'A' && c <= 'Z') c = static_cast<char>(c + 32);
}

std::string lower(std::string_view s) {
  std::string out(s);
  lower_in_place(out);
  return out;
}

// The last few domains libidn2 converted on this thread, with the result
// (or the refusal): the RCPTs of a message mostly share a domain, and a
// conversion costs several microseconds and allocations inside libidn2.
// It is a pure function of its input, so a hit is exact. Eight entries of
// at most a command line each; a client that sends ever new domains only
// pays libidn2's cost, as without the cache.
class idna_cache {
 public:
  // The entry for this (lower-cased) domain, or nullptr.
  const std::string* find(std::string_view domain, bool& ok) const noexcept {
    for (const entry& e : entries_) {
      if (e.used && e.input == domain) {
        ok = e.ok;
        return &e.output;
      }
    }
    return nullptr;
  }
  // Keeps a result in place of the oldest; returns its output to finish.
  std::string& put(std::string_view domain, bool ok, std::string_view output) {
    entry& e = entries_[next_];
    next_ = (next_ + 1) % entries_.size();
    e.used = true;
    e.ok = ok;
    e.input.assign(domain);
    e.output.assign(output);
    return e.output;
  }

 private:
  struct entry {
    std::string input, output;
    bool used = false, ok = false;
  };
  std::array<entry, 8> entries_;
  std::size_t next_ = 0;
};

// canonical_domain() into out (replaced, its capacity kept); false when the
// domain is no valid IDNA name.
bool canonical_domain_into(std::string_view domain, std::string& out) {
  out.assign(domain);
  // One pass lowers the ASCII letters and sees whether libidn2 is needed:
  // a non-ASCII octet, or an A-label ("xn--" in any case at a label's
  // start), which is checked, and so compared, as libidn2 reads it.
  bool idna = false;
  const std::size_t n = out.size();
  for (std::size_t i = 0; i < n; ++i) {
    char& c = out[i];
    if ((i == 0 || out[i - 1] == '.') && (c == 'x' || c == 'X') && n - i >= 4 &&
        proto::iequals(std::string_view(out).substr(i, 4), "xn--"))
      idna = true;
    if (c >= 'A' && c <= 'Z')
      c = static_cast<char>(c + 32);
    else if (static_cast<unsigned char>(c) >= 0x80)
      idna = true;
  }
  if (!idna || out.front() == '[') return true;
  thread_local idna_cache cache;
  bool ok = false;
  if (const std::string* hit = cache.find(out, ok)) {
    if (ok) out.assign(*hit);
    return ok;
  }
  char* ascii = nullptr;
  int rc = idn2_to_ascii_8z(out.c_str(), &ascii, IDN2_NONTRANSITIONAL | IDN2_NFC_INPUT);
  if (rc != IDN2_OK) {
    std::free(ascii);
    cache.put(out, false, {});
    return false;
  }
  std::string& converted = cache.put(out, true, ascii);
  std::free(ascii);
  lower_in_place(converted);
  out.assign(converted);
  return true;
}

// Lets the tables be searched with a string_view (C++20 heterogeneous
// lookup), so that no key string is made per RCPT.
struct view_hash {
  using is_transparent = void;
  std::size_t operator()(std::string_view s) const noexcept {
    return std::hash<std::string_view>{}(s);
  }
};
template <class T>
using view_map = std::unordered_map<std::string, T, view_hash, std::equal_to<>>;

}  // namespace

// A domain in the form the policy compares: lower-case ASCII with A-labels;
// nullopt when it is no valid IDNA name. An address literal stays as given.
std::optional<std::string> canonical_domain(std::string_view domain) {
  std::string out;
  if (!canonical_domain_into(domain, out)) return std::nullopt;
  return out;
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
      for (const auto& [alias, targets] : d.aliases) {
        std::vector<alias_target> parsed;
        for (const std::string& target : targets) parsed.push_back(parse_target(target));
        t.aliases.emplace(normal(alias), std::move(parsed));
      }
      tables_.push_back(std::move(t));
    }
    postmaster_domain_ = postmaster_domain();
  }

  rcpt_verdict resolve(std::string_view address, std::vector<recipient>& out) const override {
    // The simple form, for callers that want a vector: through a list of
    // the thread, then copied.
    thread_local recipient_list list;
    list.clear();
    rcpt_verdict verdict = resolve_into(address, list);
    if (verdict == rcpt_verdict::accept)
      for (const recipient& r : list) out.push_back(r);
    return verdict;
  }

  rcpt_verdict resolve_into(std::string_view address, recipient_list& out) const override {
    // Scratch of the thread, not of the policy: resolve_into() is const,
    // and a policy may be shared by servers on several threads. Nothing in
    // here calls back into a policy, so one set per thread suffices.
    thread_local std::string domain_buf, name_buf;
    std::string_view local, domain_part, domain;
    if (!proto::split_mailbox(address, local, domain_part)) {
      // RFC 5321 4.1.1.3: <postmaster> without a domain is always accepted.
      local = "postmaster";
      domain = postmaster_domain_;
    } else if (canonical_domain_into(domain_part, domain_buf)) {
      domain = domain_buf;
    } else {
      return rcpt_verdict::bad_domain;
    }
    proto::unquote_local_part(local, name_buf);
    if (rules_.case_insensitive) lower_in_place(name_buf);
    std::string_view name = name_buf;
    // RFC 5321 4.5.1: "postmaster" is case-insensitive, whatever the config says.
    if (proto::iequals(name, "postmaster")) name = "postmaster";
    std::string_view base = base_of(name);
    if (tables_.empty()) {
      out.add(address, base, domain);
      return rcpt_verdict::accept;
    }
    const domain_table* t = find_domain(domain);
    if (!t) return rcpt_verdict::relay_denied;
    if (t->any_user) {
      out.add(address, base, domain);
      return rcpt_verdict::accept;
    }
    for (std::string_view candidate : {name, base}) {
      if (auto a = t->aliases.find(candidate); a != t->aliases.end()) {
        expand(address, domain, a->second, out);
        return rcpt_verdict::accept;
      }
      if (auto u = t->users.find(candidate); u != t->users.end()) {
        out.add(address, u->second, domain);
        return rcpt_verdict::accept;
      }
    }
    if (auto a = t->aliases.find(std::string_view("*")); a != t->aliases.end()) {
      expand(address, domain, a->second, out);
      return rcpt_verdict::accept;
    }
    // RFC 5321 4.5.1: every served domain has a postmaster.
    if (name == "postmaster") {
      out.add(address, "postmaster", domain);
      return rcpt_verdict::accept;
    }
    return rcpt_verdict::unknown_user;
  }

 private:
  // An alias target, split once when the table is built: "user" (of the
  // alias's domain) or "user@domain" (its domain in canonical form).
  struct alias_target {
    std::string user;
    std::string domain;
    bool own_domain = false;  // "user@domain": domain, not the RCPT's
  };

  struct domain_table {
    std::string name;
    bool any_user = false;
    view_map<std::string> users;  // normalised -> as configured
    view_map<std::vector<alias_target>> aliases;
  };

  std::string normal(std::string_view name) const {
    return rules_.case_insensitive ? lower(name) : std::string(name);
  }

  // "user+detail" -> "user" (RFC 5233 sub-addressing), when enabled.
  std::string_view base_of(std::string_view name) const {
    const std::string& delim = rules_.sub_address_delimiter;
    if (delim.empty()) return name;
    std::size_t at = name.find(delim);
    return at == std::string_view::npos || at == 0 ? name : name.substr(0, at);
  }

  // A configured name, "*." kept; one that is no IDNA name stays in lower
  // case and so matches nothing (a name on the wire that fails is refused).
  static std::string config_domain(std::string_view name) {
    bool wild = name.starts_with("*.");
    if (wild) name.remove_prefix(2);
    std::string d = canonical_domain(name).value_or(lower(name));
    return wild ? "*." + d : d;
  }

  static alias_target parse_target(std::string_view target) {
    auto at = target.rfind('@');
    if (at == std::string_view::npos) return {std::string(target), {}, false};
    return {std::string(target.substr(0, at)), config_domain(target.substr(at + 1)), true};
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

  static void expand(std::string_view address, std::string_view domain,
                     const std::vector<alias_target>& targets, recipient_list& out) {
    for (const alias_target& target : targets)
      out.add(address, target.user, target.own_domain ? target.domain : domain);
  }

  recipient_rules rules_;
  std::vector<domain_table> tables_;
  std::string postmaster_domain_;  // where <postmaster> without a domain goes
};

}  // namespace

std::unique_ptr<recipient_policy> make_rules_policy(recipient_rules rules) {
  return std::make_unique<rules_policy>(std::move(rules));
}

}  // namespace inboxd
