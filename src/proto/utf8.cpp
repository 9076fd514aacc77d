#include "proto/utf8.hpp"

namespace inboxd::proto {

bool is_ascii(std::string_view s) noexcept {
  for (char c : s)
    if (static_cast<unsigned char>(c) >= 0x80) return false;
  return true;
}

// RFC 3629 4: UTF8-2 = %xC2-DF UTF8-tail; UTF8-3 = %xE0 %xA0-BF UTF8-tail /
// %xE1-EC 2UTF8-tail / %xED %x80-9F UTF8-tail / %xEE-EF 2UTF8-tail; UTF8-4 =
// %xF0 %x90-BF 2UTF8-tail / %xF1-F3 3UTF8-tail / %xF4 %x80-8F 2UTF8-tail.
// The narrowed second octets exclude overlong forms (E0, F0), surrogates
// (ED) and code points above U+10FFFF (F4); C0, C1 and F5-FF never lead.
std::size_t utf8_sequence(std::string_view s) noexcept {
  if (s.empty()) return 0;
  auto at = [&](std::size_t i) { return static_cast<unsigned char>(s[i]); };
  unsigned char c = at(0);
  if (c < 0x80) return 1;
  std::size_t n;
  unsigned char lo = 0x80, hi = 0xBF;  // the range of the second octet
  if (c >= 0xC2 && c <= 0xDF) {
    n = 2;
  } else if (c >= 0xE0 && c <= 0xEF) {
    n = 3;
    if (c == 0xE0) lo = 0xA0;
    if (c == 0xED) hi = 0x9F;
  } else if (c >= 0xF0 && c <= 0xF4) {
    n = 4;
    if (c == 0xF0) lo = 0x90;
    if (c == 0xF4) hi = 0x8F;
  } else {
    return 0;
  }
  if (s.size() < n || at(1) < lo || at(1) > hi) return 0;
  for (std::size_t i = 2; i < n; ++i)
    if (at(i) < 0x80 || at(i) > 0xBF) return 0;
  return n;
}

bool is_utf8_text(std::string_view s) noexcept {
  while (!s.empty()) {
    auto c = static_cast<unsigned char>(s.front());
    if (c < 0x20 || c == 0x7F) return false;
    std::size_t n = utf8_sequence(s);
    if (n == 0) return false;
    // C1 controls, U+0080-U+009F, are C2 80 to C2 9F.
    if (n == 2 && c == 0xC2 && static_cast<unsigned char>(s[1]) < 0xA0) return false;
    s.remove_prefix(n);
  }
  return true;
}

}  // namespace inboxd::proto
