#include "store/mboxrd.hpp"

#include <cstring>

namespace inboxd::store {
namespace {

constexpr std::string_view from_ = "From ";

}  // namespace

void mboxrd_quoter::append(std::string& out, std::string_view in) {
  std::size_t i = 0;
  const std::size_t n = in.size();
  while (i < n) {
    if (!at_line_start_) {
      // Inside a line: copy up to and with its LF in one go.
      const void* nl = std::memchr(in.data() + i, '\n', n - i);
      std::size_t end =
          nl ? static_cast<std::size_t>(static_cast<const char*>(nl) - in.data()) + 1 : n;
      out.append(in.data() + i, end - i);
      i = end;
      at_line_start_ = nl != nullptr;
      continue;
    }
    if (matched_ == 0 && in[i] == '>') {
      // The '>' of a line start are text whatever follows: write the run now.
      std::size_t end = i + 1;
      while (end < n && in[end] == '>') ++end;
      out.append(in.data() + i, end - i);
      i = end;
      continue;
    }
    if (in[i] == from_[matched_]) {
      ++i;
      if (++matched_ < from_.size()) continue;
      // ^>*From : one more '>', written here, after the run, to the same effect.
      out += '>';
      out += from_;
      matched_ = 0;
      at_line_start_ = false;
      continue;
    }
    // Not a From line: what matched is text, and in[i] is looked at as text
    // (it may be the LF that ends this line and starts the next).
    out.append(from_.data(), matched_);
    matched_ = 0;
    at_line_start_ = false;
  }
}

void mboxrd_quoter::flush(std::string& out) {
  out.append(from_.data(), matched_);
  matched_ = 0;
  at_line_start_ = true;
}

}  // namespace inboxd::store
