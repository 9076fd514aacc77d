#include "proto/data_decoder.hpp"

#include <cstring>

#if defined(__SSE2__)
#include <emmintrin.h>
#endif

namespace inboxd::proto {

namespace {

// The offset of the first CR or LF in [p, p + n), or n: the only two bytes
// that can end or change a line. Sixteen bytes per step where SSE2 is there
// (every x86-64), else a byte at a time.
std::size_t find_cr_or_lf(const char* p, std::size_t n) noexcept {
  std::size_t i = 0;
#if defined(__SSE2__)
  const __m128i cr = _mm_set1_epi8('\r');
  const __m128i lf = _mm_set1_epi8('\n');
  for (; i + 16 <= n; i += 16) {
    __m128i v = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p + i));
    int hits = _mm_movemask_epi8(_mm_or_si128(_mm_cmpeq_epi8(v, cr), _mm_cmpeq_epi8(v, lf)));
    if (hits != 0) return i + static_cast<std::size_t>(__builtin_ctz(static_cast<unsigned>(hits)));
  }
#endif
  for (; i < n; ++i)
    if (p[i] == '\r' || p[i] == '\n') return i;
  return n;
}

}  // namespace

// The decoder works a line at a time: a vector scan finds the next CR or LF,
// the bytes of the line move down in one memmove (unstuffing and CRLF to LF
// make the output lag the input), and only the line start (a dot) and the
// line end (the CR before the LF) are looked at byte by byte. A CR anywhere
// else is text, kept as it is and noted for the bare-CR policy. Each byte is
// thus looked at once, whatever the shape of the input (docs/DESIGN.md,
// rule 4), and nothing is held across calls.

void data_decoder::reset(bool after_crlf) noexcept {
  state_ = after_crlf ? state::bol : state::bol_bare;
  bare_lf_ = bare_cr_ = false;
}

data_decoder::result data_decoder::decode(std::span<char> input) noexcept {
  char* const base = input.data();
  const std::size_t n = input.size();
  char* out = base;
  std::size_t i = 0;
  std::size_t line_ends = 0;
  state s = state_;
  // Moves the line's bytes [from, end) to the output.
  auto put = [&](std::size_t from, std::size_t end) {
    if (end == from) return;
    if (out != base + from) std::memmove(out, base + from, end - from);
    out += end - from;
  };
  while (i < n) {
    if (s == state::bol && base[i] == '.') {
      // RFC 5321 4.1.1.4: "." CR LF after a CRLF ends the data; any other
      // dot at the start of a line is stuffing (4.5.2) and is dropped.
      if (i + 1 == n || (base[i + 1] == '\r' && i + 2 == n)) break;  // Undecided: held.
      if (base[i + 1] == '\r' && base[i + 2] == '\n') {
        state_ = state::bol;
        return {{base, static_cast<std::size_t>(out - base)}, i + 3, line_ends, true};
      }
      ++i;
    } else if (s == state::bol_bare && base[i] == '.') {
      ++i;  // Stuffing; after a bare LF a dot line never ends the data.
    }
    // The rest of the line: find its end, past any bare CRs in it.
    std::size_t k = i;
    for (;;) {
      k += find_cr_or_lf(base + k, n - k);
      if (k == n || base[k] == '\n') break;
      if (k + 1 == n || base[k + 1] == '\n') break;  // CR LF, or a CR not decided yet
      bare_cr_ = true;
      ++k;
    }
    put(i, k);
    if (k == n || (base[k] == '\r' && k + 1 == n)) {
      // The line goes on in the next input; a CR at the very end may be
      // the start of a CRLF, so it stays unconsumed.
      i = k;
      s = state::text;
      break;
    }
    bool crlf = base[k] == '\r';
    *out++ = '\n';
    ++line_ends;
    if (!crlf) bare_lf_ = true;
    s = crlf ? state::bol : state::bol_bare;
    i = k + (crlf ? 2 : 1);
  }
  state_ = s;
  return {{base, static_cast<std::size_t>(out - base)}, i, line_ends, false};
}

void chunk_decoder::reset(bool binary) noexcept {
  binary_ = binary;
  raw_ = held_cr_ = bare_lf_ = bare_cr_ = false;
  at_bol_ = true;
}

bool chunk_decoder::finish() noexcept {
  if (!held_cr_) return false;
  held_cr_ = false;
  bare_cr_ = true;
  return true;
}

// As data_decoder: a vector scan to the next CR or LF, one memmove per line,
// each byte looked at once.
chunk_decoder::result chunk_decoder::decode(std::span<char> input, bool last) noexcept {
  char* const base = input.data();
  const std::size_t n = input.size();
  if (n == 0 || raw_) return {{base, n}, n};
  char* out = base;
  std::size_t i = 0;
  auto put = [&](std::size_t from, std::size_t end) {
    if (end == from) return;
    if (out != base + from) std::memmove(out, base + from, end - from);
    out += end - from;
  };
  // A line end was written: an empty line ends a binary message's header
  // section, and the rest of the input passes unchanged.
  auto line_end = [&] {
    *out++ = '\n';
    bool empty = at_bol_;
    at_bol_ = true;
    if (binary_ && empty) {
      raw_ = true;
      put(i, n);
      i = n;
    }
  };
  if (held_cr_) {
    held_cr_ = false;
    if (base[0] != '\n') {
      bare_cr_ = true;
      at_bol_ = false;
      return {"\r", 0};
    }
    i = 1;
    line_end();
  }
  while (i < n) {
    std::size_t k = i + find_cr_or_lf(base + i, n - i);
    if (k > i) at_bol_ = false;
    put(i, k);
    if (k == n) {
      i = n;
      break;
    }
    if (base[k] == '\r') {
      if (k + 1 == n && !last) {
        held_cr_ = true;  // A CRLF split here, or a bare CR: the next byte says.
        i = n;
        break;
      }
      if (k + 1 == n) {
        bare_cr_ = true;  // The message's last byte.
        *out++ = '\r';
        i = n;
        break;
      }
      if (base[k + 1] != '\n') {
        bare_cr_ = true;
        at_bol_ = false;
        *out++ = '\r';
        i = k + 1;
        continue;
      }
      i = k + 2;
    } else {
      bare_lf_ = true;
      i = k + 1;
    }
    line_end();
  }
  return {{base, static_cast<std::size_t>(out - base)}, n};
}

}  // namespace inboxd::proto
