// tests/fuzz/reference_mboxrd.hpp: mboxrd quoting of a whole message at once,
// the model that the streamed store::mboxrd_quoter is checked against (by
// fuzz_mboxrd.cpp and the unit tests). Every line (up to and with its LF, or
// the unterminated last one) that matches ^>*From  gets one more '>' in front.
#pragma once

#include <string>
#include <string_view>

namespace inboxd::fuzz {

inline std::string reference_mboxrd(std::string_view message) {
  std::string out;
  while (!message.empty()) {
    std::size_t nl = message.find('\n');
    std::size_t len = nl == message.npos ? message.size() : nl + 1;
    std::string_view line = message.substr(0, len);
    std::size_t gt = line.find_first_not_of('>');
    if (gt != line.npos && line.substr(gt).starts_with("From ")) out += '>';
    out += line;
    message.remove_prefix(len);
  }
  return out;
}

}  // namespace inboxd::fuzz
