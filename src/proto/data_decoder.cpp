#include "proto/data_decoder.hpp"

namespace inboxd::proto {

void data_decoder::reset(bool after_crlf) noexcept {
  state_ = after_crlf ? state::bol : state::bol_bare;
  bare_lf_ = bare_cr_ = false;
}

data_decoder::result data_decoder::decode(std::span<char> input) noexcept {
  char* const out_begin = input.data();
  char* out = out_begin;
  state s = state_;
  std::size_t i = 0;
  // A held-back CR turned out to be a bare CR: it is text. Its slot is free,
  // since nothing was written when it was read.
  auto put_bare_cr = [&] {
    bare_cr_ = true;
    *out++ = '\r';
  };
  for (; i < input.size(); ++i) {
    char c = input[i];
    switch (s) {
      case state::bol:
        if (c == '.') {
          s = state::dot;  // Drop the dot: stuffing, or the end of data.
          continue;
        }
        break;
      case state::bol_bare:
        if (c == '.') {
          s = state::text;  // A stuffing dot; after a bare LF it never ends data.
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
        if (c == '\r') continue;  // Now holding this CR.
        s = state::text;
        break;
      case state::dot:
        if (c == '\r') {
          s = state::dot_cr;
          continue;
        }
        s = state::text;  // The dot was stuffing.
        break;
      case state::dot_cr:
        if (c == '\n') {
          state_ = state::bol;
          return {{out_begin, static_cast<std::size_t>(out - out_begin)}, i + 1, true};
        }
        put_bare_cr();  // The dot before it was stuffing.
        if (c == '\r') {
          s = state::cr;
          continue;
        }
        s = state::text;
        break;
    }
    // Here s is text and c is an ordinary byte of the line.
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
  // A CR, or a "." or "." CR at the start of a line, at the very end cannot be decided
  // yet: leave it unconsumed, to be passed again with the bytes after it.
  // Nothing was written for it, so it is still intact in the input.
  // No state that holds input back survives the call, so both bytes of a
  // held "." CR are always in this input.
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

}  // namespace inboxd::proto
