#include <doctest/doctest.h>

#include <string>

#include "harness.hpp"
#include "proto/line_reader.hpp"

using inboxd::proto::line_reader;
using inboxd::test::printable;
using inboxd::test::same_when_dribbled;
using status = line_reader::status;

namespace {

// Reads a stream that arrives in pieces the way the session does: the bytes
// not consumed yet are passed again with the next piece after them. Returns
// one line per result, then how many bytes were left unconsumed.
std::string read_lines(const std::vector<std::string_view>& pieces, std::size_t max = 512) {
  line_reader reader(max);
  std::string input, seen;
  for (auto piece : pieces) {
    input.append(piece);
    for (;;) {
      auto r = reader.next(input);
      if (r.st == status::line) seen += printable(r.line) + (r.bare_lf ? " (bare LF)\n" : "\n");
      if (r.st == status::too_long) seen += "<too long>\n";
      input.erase(0, r.consumed);
      if (r.consumed == 0 || input.empty()) break;
    }
  }
  return seen + "left " + std::to_string(input.size());
}

std::string read_lines_dribbled(std::string_view stream, std::size_t max = 512) {
  return same_when_dribbled(stream, [&](const auto& pieces) { return read_lines(pieces, max); });
}

}  // namespace

TEST_CASE("line_reader returns a CRLF line without its terminator") {
  line_reader r;
  auto res = r.next("NOOP\r\nQUIT\r\n");
  CHECK(res.st == status::line);
  CHECK(res.line == "NOOP");
  CHECK(res.consumed == 6);
  CHECK_FALSE(res.bare_lf);
}

TEST_CASE("line_reader returns a bare-LF line and flags it") {
  line_reader r;
  auto res = r.next("NOOP\nQUIT\r\n");
  CHECK(res.st == status::line);
  CHECK(res.line == "NOOP");
  CHECK(res.consumed == 5);
  CHECK(res.bare_lf);
}

TEST_CASE("line_reader reads pipelined lines one by one, however they arrive") {
  CHECK(read_lines_dribbled("EHLO a\r\nNOOP\nMAIL FROM:<a@b>\r\nRC") ==
        "EHLO a\nNOOP (bare LF)\nMAIL FROM:<a@b>\nleft 2");
}

TEST_CASE("line_reader keeps a partial line until its LF arrives") {
  line_reader r;
  auto a = r.next("NO");
  CHECK(a.st == status::need_more);
  CHECK(a.consumed == 0);
  // The caller passes the unconsumed bytes again with the new ones after them.
  auto b = r.next("NOOP\r");
  CHECK(b.st == status::need_more);
  CHECK(b.consumed == 0);
  auto c = r.next("NOOP\r\nQU");
  CHECK(c.st == status::line);
  CHECK(c.line == "NOOP");
  CHECK(c.consumed == 6);
  CHECK_FALSE(c.bare_lf);
}

// The header's promise: bytes already searched are not searched again. Bytes
// the caller changed behind the reader's back show it.
TEST_CASE("line_reader searches only the bytes it has not searched yet") {
  line_reader r;
  CHECK(r.next("ab").st == status::need_more);
  auto res = r.next("a\nc\r\n");
  CHECK(res.st == status::line);
  CHECK(res.line == "a\nc");
  CHECK(res.consumed == 5);
}

TEST_CASE("line_reader keeps a line that is only a CRLF as an empty line") {
  CHECK(read_lines_dribbled("\r\n\n") == "\n (bare LF)\nleft 0");
}

TEST_CASE("line_reader accepts a 512-octet line: 510 characters and CRLF") {
  std::string line(510, 'x');
  CHECK(read_lines_dribbled(line + "\r\nNOOP\r\n") == line + "\nNOOP\nleft 0");
}

TEST_CASE("line_reader refuses a 513-octet line once and reads the next line") {
  std::string line(511, 'x');
  CHECK(read_lines_dribbled(line + "\r\nNOOP\r\n") == "<too long>\nNOOP\nleft 0");
}

TEST_CASE("line_reader counts a bare-LF line as if it ended in CRLF") {
  // 511 characters and LF are 512 octets, but 513 with the CRLF the limit counts.
  CHECK(read_lines_dribbled(std::string(510, 'x') + "\n") ==
        std::string(510, 'x') + " (bare LF)\nleft 0");
  CHECK(read_lines_dribbled(std::string(511, 'x') + "\n") == "<too long>\nleft 0");
}

TEST_CASE("line_reader reports an over-long line without LF once, then skips to its LF") {
  line_reader r;
  std::string head(600, 'x');
  auto a = r.next(head);
  CHECK(a.st == status::too_long);
  CHECK(a.consumed == 600);
  // Still the same line: dropped, not reported again.
  auto b = r.next(std::string(300, 'y'));
  CHECK(b.st == status::need_more);
  CHECK(b.consumed == 300);
  auto c = r.next("zz\r\nNOOP\r\n");
  CHECK(c.st == status::need_more);
  CHECK(c.consumed == 4);
  auto d = r.next("NOOP\r\n");
  CHECK(d.st == status::line);
  CHECK(d.line == "NOOP");
}

TEST_CASE("line_reader reports an over-long line with its LF in the same buffer") {
  line_reader r;
  std::string in = std::string(600, 'x') + "\r\nNOOP\r\n";
  auto a = r.next(in);
  CHECK(a.st == status::too_long);
  CHECK(a.consumed == 602);
  auto b = r.next(std::string_view(in).substr(602));
  CHECK(b.st == status::line);
  CHECK(b.line == "NOOP");
}

TEST_CASE("line_reader over-long lines give the same results however they arrive") {
  CHECK(read_lines_dribbled(std::string(600, 'x') + "\r\nNOOP\r\n" + std::string(513, 'y') +
                            "\nQUIT\r\n") == "<too long>\nNOOP\n<too long>\nQUIT\nleft 0");
}

TEST_CASE("line_reader honours a smaller limit") {
  CHECK(read_lines_dribbled("abcdef\r\nabcdefg\r\nab\r\n", 8) == "abcdef\n<too long>\nab\nleft 0");
}

TEST_CASE("line_reader reset forgets a partial line") {
  line_reader r;
  CHECK(r.next("HELO partial").st == status::need_more);
  r.reset();
  auto res = r.next("NOOP\r\n");
  CHECK(res.st == status::line);
  CHECK(res.line == "NOOP");
}

TEST_CASE("line_reader reset leaves an over-long line's skipping") {
  line_reader r;
  CHECK(r.next(std::string(600, 'x')).st == status::too_long);
  r.reset();
  auto res = r.next("NOOP\r\n");
  CHECK(res.st == status::line);
  CHECK(res.line == "NOOP");
}
