// proto/line_reader.hpp: finds command lines in a byte buffer without copying.
//
// The caller hands next() the bytes it has not consumed yet, always starting
// where the previous call told it to; a line comes back as a view into those
// bytes, borrowed until the caller consumes them. Bytes already searched are
// not searched again when more arrive. A line longer than the limit is
// reported once and then skipped up to its LF, so the stream stays in sync
// (RFC 5321 4.5.3.1.4: a command line is at most 512 octets with its CRLF).
#pragma once

#include <cstddef>
#include <string_view>

namespace inboxd::proto {

class line_reader {
 public:
  enum class status { line, need_more, too_long };
  struct result {
    status st;
    std::size_t consumed;   // bytes the caller may drop now
    std::string_view line;  // without CR LF; valid with status::line only
    bool bare_lf = false;   // the line ended in LF without CR
  };

  explicit line_reader(std::size_t max_line = 512) noexcept : max_line_(max_line) {}

  [[nodiscard]] result next(std::string_view input) noexcept;

  // Forgets a partial line (after STARTTLS, or when the mode changes).
  void reset() noexcept { scanned_ = 0, skipping_ = false; }

 private:
  std::size_t max_line_;
  std::size_t scanned_ = 0;  // bytes of input searched without finding LF
  bool skipping_ = false;    // inside an over-long line, discarding to its LF
};

}  // namespace inboxd::proto
