// tests/fuzz/fuzz_pipe_command.cpp: what the pipe sink makes of hostile
// text: the command line an operator wrote, the envelope a client sent, the
// standard error a program wrote.
//
// Input: eight bytes of split seed, then the text. Checked: split_command
// stays within its limits and round-trips (each word quoted again as a
// shell would, the line split once more, gives the same words); a value
// made safe keeps its length and only the allowed bytes; first_line gives
// the same line however its input is split, bounded, with no line end in
// it, and counts every byte.
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "fuzz_util.hpp"
#include "proto/pipe_command.hpp"

namespace {

using namespace inboxd::proto;

// 'word' with each ' written as '\'' : sh(1) reads it back as word.
std::string quoted(std::string_view word) {
  std::string out = "'";
  for (char c : word) {
    if (c == '\'')
      out += "'\\''";
    else
      out += c;
  }
  return out + "'";
}

void check_split(std::string_view text) {
  std::vector<std::string> words;
  std::string error;
  if (!split_command(text, words, error)) {
    INBOXD_FUZZ_CHECK(!error.empty());
    return;
  }
  INBOXD_FUZZ_CHECK(!words.empty() && words.size() <= max_pipe_words);
  std::size_t bytes = 0;
  std::string again;
  for (const std::string& w : words) {
    bytes += w.size();
    again += quoted(w) + ' ';
  }
  INBOXD_FUZZ_CHECK(bytes <= text.size());
  // The quoted form is longer than the limit for long inputs: compare only
  // where it is not.
  if (again.size() > max_pipe_command) return;
  std::vector<std::string> back;
  INBOXD_FUZZ_CHECK(split_command(again, back, error));
  INBOXD_FUZZ_CHECK(back == words);
}

void check_safe(std::string_view text, bool utf8) {
  std::string out;
  append_safe_value(out, text, utf8);
  INBOXD_FUZZ_CHECK(out.size() == text.size());
  for (char c : out) {
    auto u = static_cast<unsigned char>(c);
    bool word = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                std::string_view("!@%-_=+:,./").find(c) != std::string_view::npos;
    INBOXD_FUZZ_CHECK(word || (utf8 && u >= 0x80));
  }
}

void check_first_line(std::string_view text, inboxd::fuzz::rng& rng) {
  first_line whole;
  whole.append(text);
  first_line pieces;
  for (std::size_t at = 0; at < text.size();) {
    std::size_t n = rng.piece(text.size() - at);
    pieces.append(text.substr(at, n));
    at += n;
  }
  INBOXD_FUZZ_CHECK(whole.line() == pieces.line());
  INBOXD_FUZZ_CHECK(whole.total() == text.size() && pieces.total() == text.size());
  INBOXD_FUZZ_CHECK(whole.line().size() <= first_line::max_line);
  INBOXD_FUZZ_CHECK(whole.line().find_first_of("\r\n") == std::string::npos);
  INBOXD_FUZZ_CHECK(text.starts_with(whole.line()));
  std::string reply = failure_text("exit status 1", whole.line());
  INBOXD_FUZZ_CHECK(reply == whole.line() || reply.starts_with("exit status 1"));
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  inboxd::fuzz::input_reader in(data, size);
  inboxd::fuzz::rng rng(in.u64());
  std::string_view text = in.rest();
  check_split(text);
  check_safe(text, rng.chance(1, 2));
  check_first_line(text, rng);
  return 0;
}
