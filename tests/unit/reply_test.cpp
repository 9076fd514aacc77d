#include <doctest/doctest.h>

#include <string>

#include "proto/reply.hpp"

using namespace inboxd::proto;

TEST_CASE("every 4xx and 5xx reply has an enhanced code of its class") {
  for (int i = 0; i <= static_cast<int>(reply_id::bad_body_type); ++i) {
    const reply_entry& e = reply_of(static_cast<reply_id>(i));
    INFO("reply ", e.code, " ", e.text);
    if (e.code == 354) {
      CHECK(e.enhanced.empty());  // RFC 2034 gives 354 no enhanced code.
      continue;
    }
    REQUIRE(e.enhanced.size() >= 5);
    CHECK(e.enhanced.front() == static_cast<char>('0' + e.code / 100));
    CHECK_FALSE(e.text.empty());
  }
}

TEST_CASE("append_reply writes code, enhanced code, text and detail with CRLF") {
  std::string out;
  append_reply(out, reply_id::bad_param, "FOO");
  append_reply(out, reply_id::start_data);
  CHECK(out == "555 5.5.4 Unsupported option: FOO\r\n354 End data with <CR><LF>.<CR><LF>\r\n");
}
