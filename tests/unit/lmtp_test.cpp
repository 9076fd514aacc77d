// LMTP sessions (RFC 2033): LHLO, HELO/EHLO refused, and one reply per
// accepted recipient after the data, each the truth for its mailboxes.
#include <doctest/doctest.h>

#include <string>

#include "harness.hpp"

using namespace inboxd;
using inboxd::test::memory_sink;
using inboxd::test::test_connection;

namespace {

constexpr std::string_view lhlo_reply =
    "250-localhost\r\n250-PIPELINING\r\n250-SIZE 10240000\r\n250-8BITMIME\r\n250-SMTPUTF8\r\n"
    "250-BINARYMIME\r\n250-CHUNKING\r\n250-LIMITS RCPTMAX=1000\r\n250 ENHANCEDSTATUSCODES\r\n";

constexpr std::string_view deferred =
    "451 4.3.0 Error: could not store the message, try again later\r\n";

// MAIL, two RCPTs and DATA accepted.
constexpr std::string_view two_rcpts_replies =
    "250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n250 2.1.5 Ok\r\n354 End data with <CR><LF>.<CR><LF>\r\n";

// An LMTP connection past its greeting and LHLO.
void greet(test_connection& c) {
  c.restart_as_lmtp();
  c.send("LHLO client.example\r\n");
  REQUIRE(c.take() == "220 localhost LMTP inboxd\r\n" + std::string(lhlo_reply));
}

std::string delivered(std::string_view rcpt, const memory_sink::message& m) {
  return "250 2.0.0 Ok: delivered to <" + std::string(rcpt) + "> as " + m.queue_id + "\r\n";
}

}  // namespace

TEST_CASE("LMTP: LHLO gets the EHLO reply; HELO and EHLO are refused") {
  test_connection c;
  c.restart_as_lmtp();
  c.send("HELO client.example\r\nEHLO client.example\r\nMAIL FROM:<a@example.com>\r\n");
  CHECK(c.take() ==
        "220 localhost LMTP inboxd\r\n"
        "500 5.5.1 Error: this is an LMTP server, say LHLO\r\n"
        "500 5.5.1 Error: this is an LMTP server, say LHLO\r\n"
        "503 5.5.1 Error: send HELO/EHLO first\r\n");
  c.send("LHLO\r\nLHLO client.example\r\n");
  CHECK(c.take() == "501 5.5.4 Syntax: LHLO hostname\r\n" + std::string(lhlo_reply));
}

TEST_CASE("SMTP: LHLO is an unknown command") {
  test_connection c;
  c.send("LHLO client.example\r\n");
  CHECK(c.take() == "220 localhost ESMTP inboxd\r\n500 5.5.2 Error: command not recognized\r\n");
}

TEST_CASE("LMTP: one reply per accepted recipient, in RCPT order, with the sink's outcome") {
  test_connection c;
  greet(c);
  c.sink.results = {store_result::stored, store_result::temporary_fail, store_result::stored};
  c.send(
      "MAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.com>\r\nRCPT TO:<c@example.com>\r\n"
      "RCPT TO:<d@example.com>\r\nDATA\r\nhi\r\n.\r\n");
  REQUIRE(c.sink.messages.size() == 1);
  const auto& m = c.sink.messages[0];
  CHECK(m.independent_outcomes);
  CHECK(m.trace().find("with LMTP id") != std::string_view::npos);
  CHECK(c.take() == "250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n" + std::string(two_rcpts_replies.substr(14)) +
                        delivered("b@example.com", m) + std::string(deferred) +
                        delivered("d@example.com", m));
}

TEST_CASE("LMTP: a refused RCPT gets no reply after the data") {
  recipient_rules rules;
  rules.domains.push_back({.name = "example.com", .users = {"b", "c"}, .aliases = {}});
  test_connection c({}, rules);
  greet(c);
  c.send(
      "MAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.com>\r\nRCPT TO:<x@example.com>\r\n"
      "RCPT TO:<c@example.com>\r\nDATA\r\nhi\r\n.\r\n");
  REQUIRE(c.sink.messages.size() == 1);
  auto out = c.take();
  CHECK(out.find("550 5.1.1") != std::string::npos);
  CHECK(out.ends_with("354 End data with <CR><LF>.<CR><LF>\r\n" +
                      delivered("b@example.com", c.sink.messages[0]) +
                      delivered("c@example.com", c.sink.messages[0])));
}

TEST_CASE("LMTP: an alias's reply is 250 only when all its mailboxes stored") {
  recipient_rules rules;
  domain_rules d{.name = "example.com", .users = {"u1", "u2", "u3"}, .aliases = {}};
  d.aliases["team"] = {"u2", "u3"};
  rules.domains.push_back(d);
  test_connection c({}, rules);
  greet(c);
  // Mailboxes: u1, u2, u3 (u2 named again by the last RCPT is a repeat).
  c.sink.results = {store_result::stored, store_result::stored, store_result::no_space};
  c.send(
      "MAIL FROM:<a@example.com>\r\nRCPT TO:<u1@example.com>\r\nRCPT TO:<team@example.com>\r\n"
      "RCPT TO:<u2@example.com>\r\nDATA\r\nhi\r\n.\r\n");
  REQUIRE(c.sink.messages.size() == 1);
  const auto& m = c.sink.messages[0];
  CHECK(m.mailboxes.size() == 3);
  CHECK(c.take() == "250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n" + std::string(two_rcpts_replies.substr(14)) +
                        delivered("u1@example.com", m) +
                        "452 4.3.1 Insufficient system storage\r\n" +
                        delivered("u2@example.com", m));
}

TEST_CASE("LMTP: a repeated mailbox is found past the scan's threshold too") {
  test_connection c;
  greet(c);
  std::string cmds = "MAIL FROM:<a@example.com>\r\n";
  for (int i = 0; i < 20; ++i) cmds += "RCPT TO:<u" + std::to_string(i) + "@example.com>\r\n";
  cmds += "RCPT TO:<u3@example.com>\r\nRCPT TO:<u19@example.com>\r\nDATA\r\nhi\r\n.\r\n";
  // Mailbox 3 fails; mailbox 19 stores.
  c.sink.results.assign(20, store_result::stored);
  c.sink.results[3] = store_result::permanent_fail;
  c.send(cmds);
  REQUIRE(c.sink.messages.size() == 1);
  const auto& m = c.sink.messages[0];
  CHECK(m.mailboxes.size() == 20);
  auto lines = test::reply_lines(c.take());
  REQUIRE(lines.size() == 1 + 22 + 1 + 22);
  CHECK(lines[24 + 3] == "554 5.3.0 Error: the message cannot be stored");
  CHECK(lines[24 + 20] == "554 5.3.0 Error: the message cannot be stored");
  CHECK(lines[24 + 21] == "250 2.0.0 Ok: delivered to <u19@example.com> as " + m.queue_id);
  CHECK(lines[24 + 19] == lines[24 + 21]);
}

TEST_CASE("LMTP: a message over the size limit gets its 552 once per recipient") {
  session_config cfg;
  cfg.max_message_size = 10;
  test_connection c(cfg);
  c.restart_as_lmtp();
  c.send(
      "LHLO x\r\nMAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.com>\r\n"
      "RCPT TO:<c@example.com>\r\nDATA\r\n0123456789abcdef\r\n.\r\n");
  auto lines = test::reply_lines(c.take());
  REQUIRE(lines.size() >= 2);
  CHECK(lines[lines.size() - 1] == "552 5.3.4 Message size exceeds fixed limit");
  CHECK(lines[lines.size() - 2] == "552 5.3.4 Message size exceeds fixed limit");
  CHECK(lines[lines.size() - 3] == "354 End data with <CR><LF>.<CR><LF>");
}

TEST_CASE("LMTP: pipelined transactions after an asynchronous commit keep their order") {
  test_connection c;
  greet(c);
  c.sink.mode = memory_sink::commit_mode::later;
  std::string one =
      "MAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.com>\r\nRCPT TO:<c@example.com>\r\n"
      "DATA\r\nhi\r\n.\r\n";
  c.send(one + one + "QUIT\r\n");
  CHECK(c.take() == two_rcpts_replies);
  REQUIRE(c.sink.commit_pending());
  c.sink.complete();
  CHECK(c.take() == delivered("b@example.com", c.sink.messages[0]) +
                        delivered("c@example.com", c.sink.messages[0]) +
                        std::string(two_rcpts_replies));
  c.sink.results = {store_result::temporary_fail, store_result::stored};
  c.sink.complete();
  CHECK(c.take() == std::string(deferred) + delivered("c@example.com", c.sink.messages[1]) +
                        "221 2.0.0 Bye\r\n");
}

TEST_CASE("LMTP: the per-recipient replies are the same when the input is dribbled") {
  std::string input =
      "LHLO x\r\nMAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.com>\r\n"
      "RCPT TO:<c@example.com>\r\nDATA\r\nhi\r\n.\r\nQUIT\r\n";
  test::same_when_dribbled(input, [](const std::vector<std::string_view>& pieces) {
    test_connection c;
    c.restart_as_lmtp();
    c.sink.results = {store_result::no_space, store_result::stored};
    for (auto p : pieces) c.send(p);
    std::string out = c.take();
    // Queue ids differ per run only in their counter, which starts over per connection.
    return out;
  });
}

TEST_CASE("a unix-socket client is named so in the Received header") {
  test_connection c;
  c.session.set_client_address("");
  greet(c);
  c.send("MAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.com>\r\nDATA\r\nhi\r\n.\r\n");
  REQUIRE(c.sink.messages.size() == 1);
  CHECK(c.sink.messages[0].trace().starts_with("Received: from client.example (unix socket)\n"));
  CHECK(c.sink.messages[0].client_address.empty());
}

TEST_CASE("LMTP with BDAT: chunks get one reply each, the LAST one a reply per recipient") {
  test_connection c;
  greet(c);
  c.sink.results = {store_result::stored, store_result::temporary_fail};
  c.send(
      "MAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.com>\r\nRCPT TO:<c@example.com>\r\n"
      "BDAT 4\r\nhi\r\nBDAT 3 LAST\r\nyo\n");
  REQUIRE(c.sink.messages.size() == 1);
  const auto& m = c.sink.messages[0];
  CHECK(m.body() == "hi\nyo\n");
  CHECK(c.take() == "250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n250 2.1.5 Ok\r\n250 2.0.0 Ok: 4 octets\r\n" +
                        delivered("b@example.com", m) + std::string(deferred));
}
