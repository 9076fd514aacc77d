// tests/fuzz/reference_decoder.hpp: the DATA decoder as it was first written,
// one byte at a time through a switch, kept as the reference that the fast
// line-at-a-time proto::data_decoder is compared with, call by call
// (fuzz_data_decoder.cpp). Same contract as data_decoder.hpp.
#pragma once

#include <cstddef>
#include <span>
#include <string_view>

namespace inboxd::fuzz {

class reference_decoder {
 public:
  struct result {
    std::string_view out;
    std::size_t consumed;
    bool done;
  };

  void reset(bool after_crlf = true) noexcept {
    state_ = after_crlf ? state::bol : state::bol_bare;
    bare_lf_ = bare_cr_ = false;
  }
  [[nodiscard]] bool saw_bare_lf() const noexcept { return bare_lf_; }
  [[nodiscard]] bool saw_bare_cr() const noexcept { return bare_cr_; }

  result decode(std::span<char> input) noexcept {
    char* const out_begin = input.data();
    char* out = out_begin;
    state s = state_;
    std::size_t i = 0;
    auto put_bare_cr = [&] {
      bare_cr_ = true;
      *out++ = '\r';
    };
    for (; i < input.size(); ++i) {
      char c = input[i];
      switch (s) {
        case state::bol:
          if (c == '.') {
            s = state::dot;
            continue;
          }
          break;
        case state::bol_bare:
          if (c == '.') {
            s = state::text;
            continue;
          }
          break;
        case state::text: break;
        case state::cr:
          if (c == '\n') {
            *out++ = '\n';
            s = state::bol;
            continue;
          }
          put_bare_cr();
          if (c == '\r') continue;
          s = state::text;
          break;
        case state::dot:
          if (c == '\r') {
            s = state::dot_cr;
            continue;
          }
          s = state::text;
          break;
        case state::dot_cr:
          if (c == '\n') {
            state_ = state::bol;
            return {{out_begin, static_cast<std::size_t>(out - out_begin)}, i + 1, true};
          }
          put_bare_cr();
          if (c == '\r') {
            s = state::cr;
            continue;
          }
          s = state::text;
          break;
      }
      if (c == '\r') {
        s = state::cr;
      } else if (c == '\n') {
        bare_lf_ = true;
        *out++ = '\n';
        s = state::bol_bare;
      } else {
        *out++ = c;
        s = state::text;
      }
    }
    if (s == state::cr) {
      --i;
      s = state::text;
    } else if (s == state::dot) {
      --i;
      s = state::bol;
    } else if (s == state::dot_cr) {
      i -= 2;
      s = state::bol;
    }
    state_ = s;
    return {{out_begin, static_cast<std::size_t>(out - out_begin)}, i, false};
  }

 private:
  enum class state : unsigned char { bol, bol_bare, text, cr, dot, dot_cr };
  state state_ = state::bol;
  bool bare_lf_ = false;
  bool bare_cr_ = false;
};

}  // namespace inboxd::fuzz
