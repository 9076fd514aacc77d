// The ESMTP parameters of issue 11: LIMITS (RFC 9422), REQUIRETLS (RFC 8689)
// and the DSN parameters (RFC 3461), with their xtext. The replies of each
// parameter are also in tests/transcripts (limits_*, requiretls_*, dsn_*).
#include <doctest/doctest.h>

#include <charconv>
#include <string>
#include <string_view>
#include <vector>

#include "harness.hpp"
#include "proto/command.hpp"
#include "proto/session.hpp"

using namespace inboxd;
using inboxd::test::test_connection;

namespace {

// The value of NAME=value in the EHLO reply's LIMITS line, or 0.
std::size_t advertised_limit(std::string_view ehlo, std::string_view name) {
  for (const auto& line : test::reply_lines(ehlo)) {
    std::string_view l = line;
    if (!l.starts_with("250-LIMITS ") && !l.starts_with("250 LIMITS ")) continue;
    l.remove_prefix(11);
    while (!l.empty()) {
      std::string_view item = l.substr(0, l.find(' '));
      l.remove_prefix(std::min(l.size(), item.size() + 1));
      if (item.size() > name.size() && item.starts_with(name) && item[name.size()] == '=') {
        std::size_t n = 0;
        std::from_chars(item.data() + name.size() + 1, item.data() + item.size(), n);
        return n;
      }
    }
  }
  return 0;
}

}  // namespace

TEST_CASE("LIMITS: RCPTMAX is max_recipients, and the next RCPT gets 452") {
  for (std::size_t max : {1, 7, 1000}) {
    INFO("max_recipients=", max);
    session_config cfg;
    cfg.max_recipients = max;
    test_connection c(cfg);
    c.send("EHLO client.example\r\n");
    std::string ehlo = c.take();
    std::size_t rcptmax = advertised_limit(ehlo, "RCPTMAX");
    REQUIRE(rcptmax == max);
    // No per-session message limit exists, so no MAILMAX.
    CHECK(advertised_limit(ehlo, "MAILMAX") == 0);
    std::string cmds = "MAIL FROM:<a@example.com>\r\n";
    for (std::size_t i = 0; i <= rcptmax; ++i)
      cmds += "RCPT TO:<r" + std::to_string(i) + "@example.com>\r\n";
    c.send(cmds);
    auto lines = test::reply_lines(c.take());
    REQUIRE(lines.size() == rcptmax + 2);
    CHECK(lines[0] == "250 2.1.0 Ok");
    for (std::size_t i = 1; i <= rcptmax; ++i) CHECK(lines[i] == "250 2.1.5 Ok");
    CHECK(lines.back() == "452 4.5.3 Error: too many recipients");
  }
}
