// The recipient list the session reuses, and the two forms of
// recipient_policy::resolve given in terms of each other.
#include <stdexcept>
#include <utility>

#include "inboxd/policy.hpp"

namespace inboxd {

recipient& recipient_list::next() {
  if (size_ == entries_.size()) entries_.emplace_back();
  recipient& r = entries_[size_++];
  r.notify = 0;
  r.orcpt_type.clear();
  r.orcpt.clear();
  return r;
}

recipient& recipient_list::add(std::string_view address, std::string_view user,
                               std::string_view domain) {
  recipient& r = next();
  r.address.assign(address);
  r.user.assign(user);
  r.domain.assign(domain);
  return r;
}

recipient& recipient_list::adopt(recipient& from) {
  recipient& r = next();
  // Member by member: std::swap of the whole struct would move through a
  // temporary, which is as cheap but less plain about what it does.
  r.address.swap(from.address);
  r.user.swap(from.user);
  r.domain.swap(from.domain);
  std::swap(r.notify, from.notify);
  r.orcpt_type.swap(from.orcpt_type);
  r.orcpt.swap(from.orcpt);
  return r;
}

recipient& recipient_list::add(const recipient& from) {
  recipient& r = next();
  r.address.assign(from.address);
  r.user.assign(from.user);
  r.domain.assign(from.domain);
  r.notify = from.notify;
  r.orcpt_type.assign(from.orcpt_type);
  r.orcpt.assign(from.orcpt);
  return r;
}

void recipient_list::release() noexcept {
  std::vector<recipient>().swap(entries_);
  size_ = 0;
}

namespace {

// The policy whose default form is running on this thread: the other
// default, entered for the same policy, means neither form was written,
// and would recurse without end. Per object, so that one policy's default
// may consult another policy.
thread_local const recipient_policy* in_default = nullptr;

class default_guard {
 public:
  explicit default_guard(const recipient_policy* p) : saved_(in_default) {
    if (in_default == p)
      throw std::logic_error("recipient_policy overrides neither resolve() nor resolve_into()");
    in_default = p;
  }
  ~default_guard() { in_default = saved_; }
  default_guard(const default_guard&) = delete;
  default_guard& operator=(const default_guard&) = delete;

 private:
  const recipient_policy* saved_;
};

}  // namespace

rcpt_verdict recipient_policy::resolve(std::string_view address,
                                       std::vector<recipient>& out) const {
  default_guard guard(this);
  recipient_list list;
  rcpt_verdict verdict = resolve_into(address, list);
  if (verdict == rcpt_verdict::accept)
    for (const recipient& r : list) out.push_back(r);
  return verdict;
}

rcpt_verdict recipient_policy::resolve_into(std::string_view address, recipient_list& out) const {
  default_guard guard(this);
  std::vector<recipient> found;
  rcpt_verdict verdict = resolve(address, found);
  if (verdict == rcpt_verdict::accept)
    for (recipient& r : found) out.adopt(r);
  return verdict;
}

}  // namespace inboxd
