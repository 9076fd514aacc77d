#include "store/mboxrd.hpp"

#include <cstring>

namespace inboxd::store {
namespace {

constexpr std::string_view from_ = "From ";

// What the start of a line is: not a From line, a From line, or not known yet.
enum class verdict { plain, quote, undecided };

verdict classify(std::string_view start) {
  std::size_t i = 0;
  while (i < start.size() && start[i] == '>') ++i;
  std::string_view rest = start.substr(i);
  std::size_t n = rest.size() < from_.size() ? rest.size() : from_.size();
  if (rest.substr(0, n) != from_.substr(0, n)) return verdict::plain;
  return n == from_.size() ? verdict::quote : verdict::undecided;
}

}  // namespace

void mboxrd_quoter::append(std::string& out, std::string_view in) {
  while (!in.empty()) {
    if (at_line_start_) {
      // Decide on held_ + as much of in as a From line start can take.
      std::size_t take = 0;
      verdict v = verdict::undecided;
      while (v == verdict::undecided && take < in.size()) {
        held_ += in[take++];
        v = classify(held_);
      }
      if (v == verdict::undecided) return;  // in ended inside the line start
      if (v == verdict::quote) out += '>';
      out += held_;
      held_.clear();
      in.remove_prefix(take);
      at_line_start_ = out.back() == '\n';
      if (at_line_start_) continue;
    }
    const void* nl = std::memchr(in.data(), '\n', in.size());
    std::size_t len =
        nl ? static_cast<std::size_t>(static_cast<const char*>(nl) - in.data()) + 1 : in.size();
    out.append(in.substr(0, len));
    in.remove_prefix(len);
    at_line_start_ = nl != nullptr;
  }
}

void mboxrd_quoter::flush(std::string& out) {
  out += held_;
  held_.clear();
}

}  // namespace inboxd::store
