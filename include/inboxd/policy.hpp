// inboxd/policy.hpp: which recipients inboxd accepts, and whose mailbox they are.
//
// The session asks the policy at each RCPT. inboxd never relays: a domain it
// does not serve is refused. An embedder may implement recipient_policy
// itself; make_rules_policy() builds the one the config file describes (it
// allocates nothing per RCPT in steady state, except through libidn2 for a
// domain with a U-label or an A-label).
// This header includes no libuv or mbedTLS type.
#pragma once

#include <cstddef>
#include <map>
#include <memory>
#include <optional>
#include <span>
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

// The mailboxes one RCPT (or one transaction) resolved to, in order. Its
// entries are recycled: clear() keeps them, and add() assigns into the next
// one, so strings keep what they allocated and a list in steady use
// allocates nothing (a std::vector<recipient> frees every string at
// clear()). The session owns one per transaction and reuses it for the
// next; entries past size() hold stale text and are never shown.
class recipient_list {
 public:
  // Appends a mailbox with these fields and no DSN parameters; returns it,
  // so that a policy may set more.
  recipient& add(std::string_view address, std::string_view user, std::string_view domain);
  // Appends r's contents by swapping them with a recycled entry: r is left
  // with that entry's stale strings. Nothing is copied or allocated.
  recipient& adopt(recipient& r);
  // Appends a copy of r.
  recipient& add(const recipient& r);

  // Empties the list, keeping every entry for reuse.
  void clear() noexcept { size_ = 0; }
  // Empties the list and frees what its entries hold (what a big
  // transaction grew is not kept for every later one).
  void release() noexcept;

  [[nodiscard]] std::size_t size() const noexcept { return size_; }
  [[nodiscard]] bool empty() const noexcept { return size_ == 0; }
  // Entries kept, in use or recycled.
  [[nodiscard]] std::size_t capacity() const noexcept { return entries_.size(); }
  recipient& operator[](std::size_t i) noexcept { return entries_[i]; }
  const recipient& operator[](std::size_t i) const noexcept { return entries_[i]; }
  recipient* begin() noexcept { return entries_.data(); }
  recipient* end() noexcept { return entries_.data() + size_; }
  [[nodiscard]] const recipient* begin() const noexcept { return entries_.data(); }
  [[nodiscard]] const recipient* end() const noexcept { return entries_.data() + size_; }
  // The mailboxes in use, as envelope::recipients shows them.
  operator std::span<const recipient>() const noexcept { return {entries_.data(), size_}; }

 private:
  recipient& next();

  std::vector<recipient> entries_;
  std::size_t size_ = 0;
};

// Write either resolve() (the simple form: append fresh recipients to a
// vector) or resolve_into() (no allocation once the list's entries are warm);
// each is given by default in terms of the other. The session calls
// resolve_into(). A policy with neither throws std::logic_error at the first
// RCPT (which gets 451 4.3.0). Both are const and called on the loop thread:
// a policy shared by servers on several threads must be safe for that.
class recipient_policy {
 public:
  virtual ~recipient_policy() = default;
  // Resolves one forward-path (without brackets; "postmaster" without a
  // domain allowed) into local mailboxes, appended to out on accept.
  virtual rcpt_verdict resolve(std::string_view address, std::vector<recipient>& out) const;
  // The same, appended to a list whose entries are recycled (above). The
  // default calls resolve() and moves its recipients in: what that
  // allocates (its vector, its strings) it allocates at every RCPT.
  virtual rcpt_verdict resolve_into(std::string_view address, recipient_list& out) const;
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
