#include "proto/line_reader.hpp"

#include <cstring>

namespace inboxd::proto {

line_reader::result line_reader::next(std::string_view input) noexcept {
  const char* base = input.data();
  const void* lf = std::memchr(base + scanned_, '\n', input.size() - scanned_);
  if (skipping_) {
    // The over-long line was already answered; drop it up to its end.
    if (!lf) return {status::need_more, input.size(), {}};
    skipping_ = false;
    return {
        status::need_more, static_cast<std::size_t>(static_cast<const char*>(lf) - base) + 1, {}};
  }
  if (!lf) {
    if (input.size() <= max_line_) {
      scanned_ = input.size();
      return {status::need_more, 0, {}};
    }
    scanned_ = 0;
    skipping_ = true;
    return {status::too_long, input.size(), {}};
  }
  scanned_ = 0;
  std::size_t end = static_cast<std::size_t>(static_cast<const char*>(lf) - base);
  std::size_t consumed = end + 1;
  bool bare_lf = end == 0 || base[end - 1] != '\r';
  std::size_t len = bare_lf ? end : end - 1;
  // The limit counts the line with a two-octet CRLF, however it really ended.
  if (len + 2 > max_line_) return {status::too_long, consumed, {}};
  return {status::line, consumed, input.substr(0, len), bare_lf};
}

}  // namespace inboxd::proto
