// proto/mailbox_index.hpp: finds a repeated mailbox among a transaction's.
//
// A message names each mailbox once, but RCPTs may repeat one (an alias and
// its user, the same address twice). The session finds repeats by a scan
// while there are few mailboxes, and past that through this index: an open
// addressing table of positions in the transaction's recipient_list, keyed
// by (user, domain). It holds no strings (it compares against the list), so
// a transaction that keeps its index allocates nothing for it per RCPT, and
// each lookup is O(1) on average: the work of a transaction stays linear in
// its recipients (DESIGN.md rule 4).
#pragma once

#include <algorithm>
#include <cstdint>
#include <functional>
#include <string_view>
#include <vector>

#include "inboxd/policy.hpp"

namespace inboxd::proto {

class mailbox_index {
 public:
  // Where r's mailbox is among kept, or kept.size() when it is new: then
  // the caller appends r to kept, at that position. Indexes every mailbox
  // of kept first, if that was not done yet.
  std::uint32_t find_or_add(const recipient_list& kept, const recipient& r) {
    if (slots_.empty()) grow();
    for (; indexed_ < kept.size(); ++indexed_)
      insert(hash_of(kept[indexed_]), static_cast<std::uint32_t>(indexed_));
    std::uint32_t h = hash_of(r);
    for (std::size_t at = h & mask(); slots_[at].position != 0; at = (at + 1) & mask()) {
      const slot& s = slots_[at];
      if (s.hash != h) continue;
      const recipient& k = kept[s.position - 1];
      if (k.user == r.user && k.domain == r.domain) return s.position - 1;
    }
    auto position = static_cast<std::uint32_t>(kept.size());
    insert(h, position);
    ++indexed_;  // r is appended by the caller
    return position;
  }

  // Forgets every mailbox; the table keeps its room (emptied only if used).
  void clear() noexcept {
    if (used_ != 0) std::fill(slots_.begin(), slots_.end(), slot{});
    used_ = indexed_ = 0;
  }
  // Forgets every mailbox and frees the table.
  void release() noexcept {
    std::vector<slot>().swap(slots_);
    used_ = indexed_ = 0;
  }

 private:
  struct slot {
    std::uint32_t position = 0;  // in the list, plus one; 0: empty
    std::uint32_t hash = 0;
  };

  static std::uint32_t hash_of(const recipient& r) noexcept {
    std::size_t h = std::hash<std::string_view>{}(r.user);
    h ^= std::hash<std::string_view>{}(r.domain) + 0x9e3779b97f4a7c15ULL + (h << 6) + (h >> 2);
    return static_cast<std::uint32_t>(h ^ (h >> 32));
  }

  [[nodiscard]] std::size_t mask() const noexcept { return slots_.size() - 1; }

  // Keeps the table at most half full, so that probes stay short; growing
  // doubles it, so that rehashing costs O(1) per mailbox overall.
  void insert(std::uint32_t h, std::uint32_t position) {
    if (2 * (used_ + 1) > slots_.size()) grow();
    std::size_t at = h & mask();
    while (slots_[at].position != 0) at = (at + 1) & mask();
    slots_[at] = {position + 1, h};
    ++used_;
  }

  void grow() {
    std::vector<slot> old;
    old.swap(slots_);
    slots_.assign(old.empty() ? 64 : 2 * old.size(), slot{});
    used_ = 0;
    for (const slot& s : old)
      if (s.position != 0) insert(s.hash, s.position - 1);
  }

  std::vector<slot> slots_;
  std::size_t used_ = 0;     // filled slots
  std::size_t indexed_ = 0;  // mailboxes of the list indexed so far
};

}  // namespace inboxd::proto
