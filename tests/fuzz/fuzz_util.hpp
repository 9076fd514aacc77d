// tests/fuzz/fuzz_util.hpp: what the fuzz harnesses share.
//
// Each harness reads a few control bytes from the front of its input (limits,
// policies, and the seed of a small generator that decides where the rest is
// split and what the test doubles do) and treats the remaining bytes as wire
// input. Everything is a pure function of the input, so a crash replays.
// A broken invariant prints what broke and traps, which both libFuzzer and
// the standalone main report as a crash.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <string_view>

namespace inboxd::fuzz {

[[noreturn]] inline void fail(const char* file, int line, const char* what) {
  std::fprintf(stderr, "%s:%d: invariant broken: %s\n", file, line, what);
  std::fflush(stderr);
  __builtin_trap();
}

#define INBOXD_FUZZ_CHECK(cond) \
  ((cond) ? static_cast<void>(0) : ::inboxd::fuzz::fail(__FILE__, __LINE__, #cond))

// Reads control bytes from the front of the input; a missing byte reads as 0.
class input_reader {
 public:
  input_reader(const std::uint8_t* data, std::size_t size) noexcept : data_(data), size_(size) {}

  std::uint8_t byte() noexcept {
    if (size_ == 0) return 0;
    --size_;
    return *data_++;
  }
  std::uint64_t u64() noexcept {
    std::uint64_t v = 0;
    for (int i = 0; i < 8; ++i) v = v << 8 | byte();
    return v;
  }
  // The bytes not read as control bytes.
  [[nodiscard]] std::string_view rest() const noexcept {
    return {reinterpret_cast<const char*>(data_), size_};
  }

 private:
  const std::uint8_t* data_;
  std::size_t size_;
};

// splitmix64: small, fast, and good enough to spread one seed over many choices.
class rng {
 public:
  explicit rng(std::uint64_t seed) noexcept : s_(seed) {}
  std::uint64_t next() noexcept {
    std::uint64_t z = (s_ += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
  }
  // A number in [0, n); n > 0.
  std::size_t below(std::size_t n) noexcept { return static_cast<std::size_t>(next() % n); }
  // True num times in den.
  bool chance(unsigned num, unsigned den) noexcept { return below(den) < num; }

  // The length of the next piece a dribbling client sends: mostly short, so
  // that splits land inside CRLF, dot lines and commands, sometimes long.
  std::size_t piece(std::size_t left) noexcept {
    if (left == 0) return 0;
    std::size_t n;
    switch (below(4)) {
      case 0: n = 1; break;
      case 1: n = 1 + below(8); break;
      case 2: n = 1 + below(64); break;
      default: n = 1 + below(1024); break;
    }
    return n < left ? n : left;
  }

 private:
  std::uint64_t s_;
};

}  // namespace inboxd::fuzz
