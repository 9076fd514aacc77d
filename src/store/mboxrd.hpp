// store/mboxrd.hpp: mboxrd quoting, streamed.
//
// In an mbox a line starting with "From " would start a new message. mboxrd
// quotes every line matching ^>*From  with one more '>' (so quoting can be
// undone exactly). The quoter sees the message in arbitrary pieces: a line
// start that cannot be decided yet (">>Fro") is held until the next piece.
#pragma once

#include <string>
#include <string_view>

namespace inboxd::store {

class mboxrd_quoter {
 public:
  // Appends the quoted form of in to out.
  void append(std::string& out, std::string_view in);
  // Appends what is still held (the message ended inside a line start).
  void flush(std::string& out);

 private:
  std::string held_;  // an undecided line start: '>'* and a prefix of "From "
  bool at_line_start_ = true;
};

}  // namespace inboxd::store
