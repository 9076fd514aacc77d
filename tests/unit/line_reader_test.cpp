#include <doctest/doctest.h>

#include "proto/line_reader.hpp"

using inboxd::proto::line_reader;

TEST_CASE("line_reader returns a CRLF line without its terminator") {
  line_reader r;
  auto res = r.next("NOOP\r\nQUIT\r\n");
  CHECK(res.st == line_reader::status::line);
  CHECK(res.line == "NOOP");
  CHECK(res.consumed == 6);
  CHECK_FALSE(res.bare_lf);
}
