// bench/reply.hpp: SMTP reply lines read in place (RFC 5321 4.2).
//
// parse_reply_line() looks at the start of a read buffer and, when a whole
// line is there, returns its code, whether it is the last line of its reply
// ("250 " rather than "250-") and its text. The text is a view borrowed from
// the buffer: valid until the caller consumes or overwrites those bytes.
// Nothing is copied and nothing is allocated.
#pragma once

#include <cstddef>
#include <string_view>

namespace inboxd::bench {

struct reply_line {
  int code = 0;
  bool last = false;
  // After the code and separator, without the line ending.
  std::string_view text;
};

enum class reply_status {
  complete,    // line and used are set
  incomplete,  // no line ending yet: read more
  malformed,   // not "ddd", "ddd-..." or "ddd ..." with a code from 200 to 599
};

// Accepts CRLF and, leniently, a bare LF as the line ending.
[[nodiscard]] inline reply_status parse_reply_line(std::string_view buffer, reply_line& line,
                                                   std::size_t& used) noexcept {
  std::size_t lf = buffer.find('\n');
  if (lf == std::string_view::npos) return reply_status::incomplete;
  used = lf + 1;
  std::size_t end = lf > 0 && buffer[lf - 1] == '\r' ? lf - 1 : lf;
  std::string_view text = buffer.substr(0, end);
  if (text.size() < 3) return reply_status::malformed;
  for (std::size_t i = 0; i < 3; ++i)
    if (text[i] < '0' || text[i] > '9') return reply_status::malformed;
  line.code = (text[0] - '0') * 100 + (text[1] - '0') * 10 + (text[2] - '0');
  if (line.code < 200 || line.code > 599) return reply_status::malformed;
  if (text.size() == 3) {
    line.last = true;
    line.text = {};
    return reply_status::complete;
  }
  if (text[3] != ' ' && text[3] != '-') return reply_status::malformed;
  line.last = text[3] == ' ';
  line.text = text.substr(4);
  return reply_status::complete;
}

// True when an EHLO reply line's text names the keyword (RFC 5321 4.1.1.1:
// the keyword is the line's first word, case-insensitive).
[[nodiscard]] inline bool ehlo_keyword_is(std::string_view text,
                                          std::string_view keyword) noexcept {
  if (text.size() < keyword.size()) return false;
  for (std::size_t i = 0; i < keyword.size(); ++i) {
    char c = text[i];
    if (c >= 'a' && c <= 'z') c = static_cast<char>(c - 'a' + 'A');
    if (c != keyword[i]) return false;
  }
  return text.size() == keyword.size() || text[keyword.size()] == ' ' ||
         text[keyword.size()] == '=';
}

}  // namespace inboxd::bench
