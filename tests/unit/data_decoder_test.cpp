#include <doctest/doctest.h>

#include <string>

#include "proto/data_decoder.hpp"

using inboxd::proto::data_decoder;

TEST_CASE("data_decoder unstuffs and ends at CRLF.CRLF") {
  std::string in = "a\r\n..b\r\n.\r\nMAIL";
  data_decoder d;
  d.reset();
  auto r = d.decode(in);
  CHECK(r.done);
  CHECK(r.out == "a\n.b\n");
  CHECK(r.consumed == in.size() - 4);
}
