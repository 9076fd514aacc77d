// bench/corpus.hpp: real messages to replay (--corpus DIR|FILE).
//
// load_corpus() reads a Maildir (every file of cur/ and new/, in name
// order) or an mbox file (mboxrd: a message starts at each line that begins
// "From "; ">From ", ">>From " … lose one '>'; the blank line that ends each
// message in the file is the separator's, not the message's). Each message
// is kept as it is, but with CRLF line ends (RFC 5321 2.3.8: a bare LF of
// the file becomes CRLF; a CRLF stays) and a final line end added if the
// file had none. Everything is loaded before the run, so replaying costs
// nothing per message; memory is the corpus's size, about twice for the
// messages that have lines starting with '.' (their dot-stuffed copy for
// DATA, RFC 5321 4.5.2). A corpus above max_corpus_bytes is refused.
#pragma once

#include <cstddef>
#include <string>
#include <string_view>
#include <vector>

namespace inboxd::bench {

inline constexpr std::size_t max_corpus_bytes = std::size_t{1} << 30;

struct corpus_message {
  std::string text;     // CRLF line ends, unstuffed: what BDAT sends and what is stored
  std::string stuffed;  // dot-stuffed, when that differs from text; else empty
};

// Returns an error message (naming the file), empty on success; messages
// then holds at least one message.
[[nodiscard]] std::string load_corpus(const std::string& path,
                                      std::vector<corpus_message>& messages);

// The pieces, for the unit test.
// Splits an mbox file's text into messages (still with the file's line ends).
[[nodiscard]] std::vector<std::string> split_mboxrd(std::string_view file);
// CRLF line ends; a final one added when missing.
[[nodiscard]] std::string to_crlf(std::string_view text);
// Doubles the '.' that starts a line of CRLF text; empty when none does.
[[nodiscard]] std::string dot_stuff(std::string_view crlf_text);

}  // namespace inboxd::bench
