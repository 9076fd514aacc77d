// bench/message.hpp: what inboxd-bench sends, prepared before the run so that
// a message costs nothing to make.
//
// message_text: every message is three slices of memory built once: a fixed
// header block, a prefix of one long run of body lines, and a short last line
// followed by the end-of-data ".\r\n". Each line is 76 printable characters
// and CRLF and none starts with '.', so no dot-stuffing is ever needed (RFC
// 5321 4.5.2). Only the largest size is held in memory, whatever the number of
// sizes. The views live as long as the message_text.
//
// address_template: a --from/--to template split once into literal parts and
// fields; append() writes one address into a caller's buffer without
// allocating when the buffer has room.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "bench/corpus.hpp"

namespace inboxd::bench {

// The largest message size accepted on the command line: it is held in memory.
inline constexpr std::size_t max_message_size = 256 * 1024 * 1024;

class message_text {
 public:
  // Prepares every size in sizes (in bytes of message text, without the
  // final ".\r\n"). Sizes below min_size() are raised to it.
  explicit message_text(const std::vector<std::size_t>& sizes);
  // --corpus: the messages as loaded (see corpus.hpp), replayed in order.
  explicit message_text(std::vector<corpus_message> corpus);

  // The message for sizes[index] (or corpus message index): the slices to
  // write after DATA's 354, in order, the last one ending with ".\r\n".
  [[nodiscard]] std::array<std::string_view, 3> slices(std::size_t index) const noexcept;
  // The same text as one BDAT chunk (RFC 3030 2): not dot-stuffed, no ".\r\n".
  [[nodiscard]] std::array<std::string_view, 3> chunk_slices(std::size_t index) const noexcept;
  // The size of the message, without dot-stuffing and the ".\r\n": the
  // BDAT chunk's size, and what the server stores (with CRLF).
  [[nodiscard]] std::size_t size(std::size_t index) const noexcept {
    return corpus_.empty() ? entries_[index].size : corpus_[index].text.size();
  }
  [[nodiscard]] std::size_t count() const noexcept {
    return corpus_.empty() ? entries_.size() : corpus_.size();
  }
  // A corpus is replayed in its order, cycling; sizes are drawn at random.
  [[nodiscard]] bool sequential() const noexcept { return !corpus_.empty(); }
  [[nodiscard]] static std::size_t min_size() noexcept;

 private:
  struct entry {
    std::size_t size;
    std::size_t body;  // bytes of lines_ sent
    std::size_t tail;  // index into tails_
  };
  std::vector<entry> entries_;
  std::string lines_;               // whole 78-byte lines
  std::vector<std::string> tails_;  // tails_[k]: a k-byte last line, then ".\r\n"
  std::vector<corpus_message> corpus_;
};

// Small and fast: xorshift64*, for drawing sizes. Not for anything secret.
class random_source {
 public:
  explicit random_source(std::uint64_t seed) noexcept : state_(seed ? seed : 0x9e3779b97f4a7c15) {}
  std::uint64_t next() noexcept {
    state_ ^= state_ >> 12;
    state_ ^= state_ << 25;
    state_ ^= state_ >> 27;
    return state_ * 0x2545f4914f6cdd1dULL;
  }
  // Uniform enough in [0, n) for n far below 2^64.
  std::size_t below(std::size_t n) noexcept { return n <= 1 ? 0 : next() % n; }

 private:
  std::uint64_t state_;
};

class address_template {
 public:
  // Returns false, with a message in error, when text is not a usable
  // template: empty, with white space or angle brackets, or an unknown field.
  static bool parse(std::string_view text, std::string& error);
  // text must have passed parse().
  explicit address_template(std::string text);

  // Appends the address for message n, connection c and recipient r.
  void append(std::string& out, std::uint64_t n, std::uint64_t c, std::uint64_t r) const;
  // True when the address changes with the message ({n}): else a client can
  // make its commands once.
  [[nodiscard]] bool uses_message() const noexcept;

 private:
  enum class field : unsigned char { literal, message, connection, recipient };
  struct part {
    field kind;
    std::size_t offset, length;  // into text_, for literals
  };
  std::string text_;
  std::vector<part> parts_;
};

}  // namespace inboxd::bench
