// store/mboxrd.hpp: mboxrd quoting, streamed.
//
// In an mbox a line starting with "From " would start a new message. mboxrd
// quotes every line matching ^>*From  with one more '>' (so quoting can be
// undone exactly). The quoter sees the message in arbitrary pieces, so a line
// start may not be decided by the end of a piece (">>Fro").
//
// Linear whatever the shape (DESIGN.md principle 5): each input byte is
// looked at once. Nothing is held but a state and a count: the '>' of a line
// start are written as they come (one more '>' in front of a run of them is
// the same text as one more at its end, so the quote can be added when
// "From " completes), and a partial "From " is known by how much of it
// matched. A run of a million '>' therefore costs a million steps and no
// memory (the old quoter held the run and re-scanned it for every byte: one
// 256 KiB line stalled the loop for 29 s).
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

namespace inboxd::store {

class mboxrd_quoter {
 public:
  // Appends the quoted form of in to out.
  void append(std::string& out, std::string_view in);
  // Appends what is still held (the message ended inside a "From " prefix)
  // and starts over, as for a new message.
  void flush(std::string& out);

 private:
  // At a line start (after its '>' run, if any) matched_ octets of "From "
  // have been seen and not written yet; inside a line nothing is held.
  bool at_line_start_ = true;
  std::uint8_t matched_ = 0;
};

}  // namespace inboxd::store
