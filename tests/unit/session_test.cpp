// The session's sink, pause and shutdown behaviour; the replies themselves are
// covered by the transcripts (transcript_test.cpp).
#include <doctest/doctest.h>

#include <stdexcept>
#include <string>

#include "harness.hpp"
#include "proto/session.hpp"

using namespace inboxd;
using inboxd::test::memory_sink;
using inboxd::test::test_connection;

namespace {

constexpr std::string_view ehlo_reply =
    "250-localhost\r\n250-PIPELINING\r\n250-SIZE 10240000\r\n250-8BITMIME\r\n250-SMTPUTF8\r\n"
    "250-BINARYMIME\r\n250-CHUNKING\r\n"
    "250-LIMITS RCPTMAX=1000\r\n250 ENHANCEDSTATUSCODES\r\n";

// The client's bytes from MAIL to DATA, for one recipient.
constexpr std::string_view mail_to_data =
    "MAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.com>\r\nDATA\r\n";

// The same after an EHLO, for a session not greeted yet.
const std::string envelope_to_data = "EHLO client.example\r\n" + std::string(mail_to_data);

constexpr std::string_view envelope_replies =
    "250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n354 End data with <CR><LF>.<CR><LF>\r\n";

constexpr std::string_view shutting_down =
    "421 4.3.2 Service shutting down, closing transmission channel\r\n";

// A connection past its greeting and EHLO.
void greet(test_connection& c) {
  c.send("EHLO client.example\r\n");
  // LIMITS says the connection's own max_recipients (RFC 9422).
  std::string want(ehlo_reply);
  want.replace(want.find("RCPTMAX=1000"), 12,
               "RCPTMAX=" + std::to_string(c.settings->limits.max_recipients));
  REQUIRE(c.take() == "220 localhost ESMTP inboxd\r\n" + want);
}

std::string queued(const memory_sink::message& m) {
  return "250 2.0.0 Ok: queued as " + m.queue_id + "\r\n";
}

}  // namespace

// What the sink receives.

TEST_CASE("the sink gets the envelope, and the reply names its queue id") {
  test_connection c;
  greet(c);
  c.send(
      "MAIL FROM:<a@example.com> BODY=8BITMIME\r\nRCPT TO:<b@example.com>\r\n"
      "RCPT TO:<PostMaster>\r\nDATA\r\nhi\r\n.\r\n");
  REQUIRE(c.sink.messages.size() == 1);
  const auto& m = c.sink.messages[0];
  CHECK(m.queue_id == "12345678004242000001");
  CHECK(m.client_address == "192.0.2.1");
  CHECK(m.helo == "client.example");
  CHECK(m.reverse_path == "a@example.com");
  CHECK(m.recipients == std::vector<std::string>{"b@example.com", "PostMaster"});
  CHECK(m.esmtp);
  CHECK(m.body_8bit);
  CHECK(m.committed);
  CHECK(c.take() ==
        "250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n250 2.1.5 Ok\r\n354 End data with "
        "<CR><LF>.<CR><LF>\r\n" +
            queued(m));
}

TEST_CASE("the Received header comes first, with a for clause for one recipient") {
  test_connection c;
  c.send(envelope_to_data + "Subject: x\r\n\r\nbody\r\n.\r\n");
  REQUIRE(c.sink.messages.size() == 1);
  const auto& m = c.sink.messages[0];
  CHECK(
      m.bytes.starts_with("Received: from client.example ([192.0.2.1])\n"
                          "\tby localhost (inboxd) with ESMTP id 12345678004242000001\n"
                          "\tfor <b@example.com>; "));
  CHECK(m.trace().ends_with(" +0000\n"));
  CHECK(m.body() == "Subject: x\n\nbody\n");
}

TEST_CASE("the Received header says SMTP after HELO and has no for clause for two recipients") {
  test_connection c;
  c.send(
      "HELO old.example\r\nMAIL FROM:<>\r\nRCPT TO:<b@example.com>\r\nRCPT TO:<c@example.com>\r\n"
      "DATA\r\nx\r\n.\r\n");
  REQUIRE(c.sink.messages.size() == 1);
  const auto& m = c.sink.messages[0];
  CHECK(
      m.bytes.starts_with("Received: from old.example ([192.0.2.1])\n"
                          "\tby localhost (inboxd) with SMTP id 12345678004242000001;\n\t"));
  CHECK(m.body() == "x\n");
  CHECK_FALSE(m.esmtp);
}

TEST_CASE("the Received header marks an IPv6 client and makes the HELO name printable") {
  test_connection c;
  c.session.set_client_address("2001:db8::25");
  c.send(
      "EHLO bad\x01name\xff\r\nMAIL FROM:<a@example.com>\r\nRCPT "
      "TO:<b@example.com>\r\nDATA\r\n.\r\n");
  REQUIRE(c.sink.messages.size() == 1);
  CHECK(c.sink.messages[0].bytes.starts_with("Received: from bad?name? ([IPv6:2001:db8::25])\n"));
}

TEST_CASE("the stored body is unstuffed, with LF line ends") {
  test_connection c;
  c.send(envelope_to_data + "..one\r\ntwo.\r\n...\r\n\r\n.\r\n");
  REQUIRE(c.sink.messages.size() == 1);
  CHECK(c.sink.messages[0].body() == ".one\ntwo.\n..\n\n");
}

TEST_CASE("8-bit body bytes pass through unchanged") {
  test_connection c;
  c.send(envelope_to_data + "caf\xc3\xa9 \x80\xff\r\n.\r\n");
  REQUIRE(c.sink.messages.size() == 1);
  CHECK(c.sink.messages[0].body() == "caf\xc3\xa9 \x80\xff\n");
}

TEST_CASE("a smuggled <LF>.<LF> leaves the MAIL behind it in the stored body") {
  test_connection c;
  c.send(
      envelope_to_data +
      "Subject: a\r\n\r\nhello\n.\nMAIL FROM:<evil@example.com>\r\nRCPT TO:<victim@example.com>\r\n"
      "DATA\r\nforged\r\n.\r\nQUIT\r\n");
  REQUIRE(c.sink.messages.size() == 1);
  CHECK(c.sink.messages[0].body() ==
        "Subject: a\n\nhello\n\nMAIL FROM:<evil@example.com>\nRCPT TO:<victim@example.com>\nDATA\n"
        "forged\n");
  CHECK(c.take() == "220 localhost ESMTP inboxd\r\n" + std::string(ehlo_reply) +
                        std::string(envelope_replies) + queued(c.sink.messages[0]) +
                        "221 2.0.0 Bye\r\n");
}

TEST_CASE("a body over the limit is aborted in the sink") {
  test_connection c({.max_message_size = 10});
  c.send(envelope_to_data + "0123456789\r\n.\r\n");
  REQUIRE(c.sink.messages.size() == 1);
  CHECK(c.sink.messages[0].aborted);
  CHECK_FALSE(c.sink.messages[0].committed);
  CHECK(c.take().ends_with("552 5.3.4 Message size exceeds fixed limit\r\n"));
  CHECK_FALSE(c.sink.misuse);
}

TEST_CASE("a body with a bare LF is aborted in the sink in reject mode") {
  test_connection c({.bare_newline = bare_newline_policy::reject});
  c.send(envelope_to_data + "a\nb\r\n.\r\n");
  REQUIRE(c.sink.messages.size() == 1);
  CHECK(c.sink.messages[0].aborted);
  CHECK(c.take().ends_with("550 5.5.2 Error: bare <LF> received\r\n"));
}

TEST_CASE("each transaction gets a new queue id") {
  test_connection c;
  c.send(envelope_to_data +
         ".\r\nMAIL FROM:<a@example.com>\r\n"
         "RCPT TO:<b@example.com>\r\nDATA\r\n.\r\n");
  REQUIRE(c.sink.messages.size() == 2);
  CHECK(c.sink.messages[0].queue_id == "12345678004242000001");
  CHECK(c.sink.messages[1].queue_id == "12345678004242000002");
}

TEST_CASE("refusals and finished transactions are logged") {
  test_connection c;
  c.send("XYZZY\r\n" + envelope_to_data + "hi\r\n.\r\n");
  REQUIRE(c.events.log.size() == 2);
  CHECK(c.events.log[0] == "refused: 500 5.5.2 Error: command not recognized");
  CHECK(c.events.log[1] ==
        "id=12345678004242000001 from=<a@example.com> to=<b@example.com> size=4 status=sent "
        "(250 2.0.0 Ok: queued as 12345678004242000001)");
}

// Commit and store results.

TEST_CASE("a commit completed inside commit() does not call session_ready") {
  test_connection c;
  c.send(envelope_to_data + ".\r\nNOOP\r\n");
  CHECK(c.events.ready == 0);
  CHECK(c.take().ends_with("250 2.0.0 Ok\r\n"));
  CHECK_FALSE(c.session.waiting());
  CHECK(c.session.idle());
}

TEST_CASE("an asynchronous commit holds the pipelined commands until the sink completes") {
  test_connection c;
  c.sink.mode = memory_sink::commit_mode::later;
  greet(c);
  c.send(std::string(mail_to_data) + "body\r\n.\r\nNOOP\r\nQU");
  CHECK(c.take() == envelope_replies);
  CHECK(c.session.waiting());
  CHECK_FALSE(c.session.idle());
  CHECK(c.sink.commit_pending());
  CHECK(c.input == "NOOP\r\nQU");  // Not fed while the session waits.
  c.send("IT\r\n");
  CHECK(c.take().empty());
  CHECK(c.input == "NOOP\r\nQUIT\r\n");

  c.sink.complete();
  CHECK(c.events.ready == 1);
  CHECK_FALSE(c.session.waiting());
  CHECK(c.take() == queued(c.sink.messages[0]) + "250 2.0.0 Ok\r\n221 2.0.0 Bye\r\n");
  CHECK(c.input.empty());
  CHECK(c.session.closing());
}

TEST_CASE("an asynchronous commit reports the sink's failure") {
  test_connection c;
  c.sink.mode = memory_sink::commit_mode::later;
  c.sink.results = {store_result::no_space};
  c.send(envelope_to_data + ".\r\n");
  CHECK(c.session.waiting());
  c.sink.complete();
  CHECK(c.take().ends_with(
      "354 End data with <CR><LF>.<CR><LF>\r\n452 4.3.1 Insufficient system storage\r\n"));
  CHECK(c.session.idle());
}

TEST_CASE("a mailbox the sink reports no outcome for is not stored: 451, never 250") {
  test_connection c;
  c.sink.outcomes = 0;
  c.send(envelope_to_data + ".\r\n");
  CHECK(
      c.take().ends_with("354 End data with <CR><LF>.<CR><LF>\r\n451 4.3.0 Error: could not "
                         "store the message, try again later\r\n"));
  bool logged = false;
  for (const auto& l : c.events.log)
    logged = logged || l.find("1 of 1 mailboxes have no outcome: not stored") != std::string::npos;
  CHECK(logged);
  CHECK(c.session.idle());
}

TEST_CASE("a client that goes away during a commit aborts the delivery after commit()") {
  test_connection c;
  c.sink.mode = memory_sink::commit_mode::later;
  c.send(envelope_to_data + ".\r\n");
  REQUIRE(c.sink.commit_pending());
  c.session.disconnect();
  CHECK(c.sink.messages[0].aborted);
  CHECK_FALSE(c.sink.commit_pending());
  CHECK(c.session.closing());
}

TEST_CASE("a client that goes away during DATA aborts the delivery") {
  test_connection c;
  c.send(envelope_to_data + "half a mess");
  c.session.disconnect();
  REQUIRE(c.sink.messages.size() == 1);
  CHECK(c.sink.messages[0].aborted);
  CHECK_FALSE(c.sink.messages[0].committed);
}

// Backpressure: write() returning false.

TEST_CASE("write() returning false stops the feed until writable()") {
  test_connection c;
  c.sink.pause_from_write = 1;  // The trace header already.
  greet(c);
  c.send(std::string(mail_to_data) + "body\r\n.\r\nNOOP\r\n");
  CHECK(c.take() == envelope_replies);
  CHECK(c.session.waiting());
  CHECK(c.input == "body\r\n.\r\nNOOP\r\n");

  c.sink.pause_from_write = 100;
  c.sink.resume();
  CHECK(c.events.ready == 1);
  CHECK(c.sink.messages[0].body() == "body\n");
  CHECK(c.take() == queued(c.sink.messages[0]) + "250 2.0.0 Ok\r\n");
  CHECK_FALSE(c.session.waiting());
  CHECK(c.input.empty());
}

TEST_CASE("a paused session takes the body in as many reads as it needs") {
  test_connection c;
  c.sink.pause_from_write = 2;  // The first body write.
  c.send(envelope_to_data + "part one\r\n");
  CHECK(c.session.waiting());
  c.send("part two\r\n.\r\n");
  CHECK(c.input == "part two\r\n.\r\n");
  c.sink.pause_from_write = 100;
  c.sink.resume();
  CHECK(c.sink.messages[0].body() == "part one\npart two\n");
  CHECK(c.sink.messages[0].committed);
  CHECK_FALSE(c.session.waiting());
}

// The sink refused more bytes on the write that carried the last of the body,
// then the message ended in the same feed. The delivery is over (committed or
// aborted), so no writable() can come for it (sink.hpp: after abort() the sink
// calls no listener method; the Maildir sink starts its finish job instead of
// calling writable()). The session must not wait for it.
TEST_CASE("a write refused at the end of data does not outlive the commit") {
  test_connection c;
  c.sink.pause_from_write = 2;  // The body write.
  greet(c);
  c.send(std::string(mail_to_data) + "body\r\n.\r\nNOOP\r\n");
  REQUIRE(c.sink.messages.size() == 1);
  CHECK(c.sink.messages[0].committed);
  CHECK(c.take() ==
        std::string(envelope_replies) + queued(c.sink.messages[0]) + "250 2.0.0 Ok\r\n");
  CHECK_FALSE(c.session.waiting());
  CHECK(c.session.idle());
}

TEST_CASE("a write refused before a bare-LF abort does not leave the session waiting") {
  test_connection c({.bare_newline = bare_newline_policy::reject});
  c.sink.pause_from_write = 2;  // The body write.
  greet(c);
  c.send(std::string(mail_to_data) + "a\nb\r\n.\r\nNOOP\r\n");
  REQUIRE(c.sink.messages.size() == 1);
  CHECK(c.sink.messages[0].aborted);
  CHECK(c.take() ==
        std::string(envelope_replies) + "550 5.5.2 Error: bare <LF> received\r\n250 2.0.0 Ok\r\n");
  CHECK_FALSE(c.session.waiting());
}

// The same with the size limit: the bytes after a pause cross the limit, so
// the delivery is aborted in the middle of DATA; the session must not wait,
// in data mode, for a writable() that the sink will no longer send.
TEST_CASE("a write refused before the size limit's abort does not stall DATA") {
  test_connection c({.max_message_size = 3});
  c.send(envelope_to_data + "ab\r");  // Writes 1 (trace) and 2 ("ab"); the CR waits.
  c.sink.pause_from_write = 3;
  c.send("c\r\n");  // "\rc\n" would be write 3, but it crosses the limit: abort.
  REQUIRE(c.sink.messages.size() == 1);
  CHECK(c.sink.messages[0].aborted);
  CHECK(c.take().ends_with("354 End data with <CR><LF>.<CR><LF>\r\n"));
  c.send(".\r\nNOOP\r\n");
  CHECK(c.take() == "552 5.3.4 Message size exceeds fixed limit\r\n250 2.0.0 Ok\r\n");
  CHECK_FALSE(c.session.waiting());
}

// sink.hpp: write() returning false means "pause until writable()". A CR
// left unconsumed at the end of one feed goes out with the bytes after it,
// in one write.
TEST_CASE("no write() follows a refused one before writable()") {
  test_connection c;
  c.send(envelope_to_data + "a\r");  // Writes 1 (trace) and 2 ("a"); the CR waits.
  c.sink.pause_from_write = 3;
  c.send("b\r\n");  // "\rb\n" is write 3, refused.
  CHECK(c.session.waiting());
  CHECK(c.sink.messages[0].writes == 3);
  CHECK_FALSE(c.sink.wrote_while_paused);
}

// Shutdown.

TEST_CASE("shutdown() when idle replies 421 4.3.2 and closes") {
  test_connection c;
  greet(c);
  CHECK(c.session.idle());
  c.session.shutdown();
  CHECK(c.take() == shutting_down);
  CHECK(c.session.closing());
  c.send("NOOP\r\n");
  CHECK(c.take().empty());
}

TEST_CASE("shutdown() during DATA lets the message finish, then 421") {
  test_connection c;
  c.send(envelope_to_data + "first half\r\n");
  CHECK_FALSE(c.session.idle());
  c.session.shutdown();
  CHECK_FALSE(c.session.closing());
  CHECK(c.take().ends_with("354 End data with <CR><LF>.<CR><LF>\r\n"));
  c.send("second half\r\n.\r\nNOOP\r\n");
  REQUIRE(c.sink.messages.size() == 1);
  CHECK(c.sink.messages[0].body() == "first half\nsecond half\n");
  CHECK(c.take() == queued(c.sink.messages[0]) + std::string(shutting_down));
  CHECK(c.session.closing());
}

TEST_CASE("shutdown() during an asynchronous commit replies 421 after the result") {
  test_connection c;
  c.sink.mode = memory_sink::commit_mode::later;
  c.send(envelope_to_data + ".\r\n");
  CHECK(c.take().ends_with("354 End data with <CR><LF>.<CR><LF>\r\n"));
  c.session.shutdown();
  CHECK(c.take().empty());
  c.sink.complete();
  CHECK(c.take() == queued(c.sink.messages[0]) + std::string(shutting_down));
  CHECK(c.session.closing());
}

TEST_CASE("shutdown() with a transaction open lets it finish, then 421") {
  test_connection c;
  greet(c);
  c.send("MAIL FROM:<a@example.com>\r\n");
  c.session.shutdown();
  CHECK_FALSE(c.session.closing());
  CHECK(c.take() == "250 2.1.0 Ok\r\n");
  c.send("RCPT TO:<b@example.com>\r\nDATA\r\n.\r\n");
  CHECK(c.take() == "250 2.1.5 Ok\r\n354 End data with <CR><LF>.<CR><LF>\r\n" +
                        queued(c.sink.messages[0]) + std::string(shutting_down));
}

TEST_CASE("after shutdown() with no transaction, a command gets 421 and QUIT gets 221") {
  test_connection c;
  greet(c);
  c.send("MAIL FROM:<a@example.com>\r\n");
  c.session.shutdown();
  c.send("RSET\r\n");
  CHECK(c.take() == "250 2.1.0 Ok\r\n250 2.0.0 Ok\r\n");
  CHECK_FALSE(c.session.closing());
  c.send("NOOP\r\n");
  CHECK(c.take() == shutting_down);
  CHECK(c.session.closing());

  test_connection q;
  greet(q);
  q.send("MAIL FROM:<a@example.com>\r\n");
  q.session.shutdown();
  q.send("RSET\r\nQUIT\r\n");
  CHECK(q.take() == "250 2.1.0 Ok\r\n250 2.0.0 Ok\r\n221 2.0.0 Bye\r\n");
}

// Helpers of the session.

TEST_CASE("queue ids are the start time, the pid, and a counter, in hex") {
  proto::queue_id_source ids(0x1'6789abcd, 0x10002);
  CHECK(ids.next() == "6789ABCD010002000001");
  CHECK(ids.next() == "6789ABCD010002000002");
}

TEST_CASE("rfc5322_date writes UTC in RFC 5322 form") {
  CHECK(proto::rfc5322_date(0) == "Thu, 1 Jan 1970 00:00:00 +0000");
  CHECK(proto::rfc5322_date(1700000000) == "Tue, 14 Nov 2023 22:13:20 +0000");
}

TEST_CASE("queue ids keep the whole pid and never wrap their counter") {
  proto::queue_id_source ids(0x6789abcd, 0x3fffff, 0xfffffe);
  CHECK(ids.next() == "6789ABCD3FFFFFFFFFFF");
  CHECK(ids.next() == "6789ABCD3FFFFF1000000");
  CHECK(ids.next() == "6789ABCD3FFFFF1000001");
}

// Issue 9: the recipient limit asks for a second transaction; it is no error.

namespace {

std::string many_rcpts(int n) {
  std::string s = "MAIL FROM:<a@example.com>\r\n";
  for (int i = 0; i < n; ++i) s += "RCPT TO:<u" + std::to_string(i) + "@example.com>\r\n";
  return s;
}

int count_of(const std::string& out, std::string_view line) {
  int n = 0;
  for (const auto& l : test::reply_lines(out)) n += l == line;
  return n;
}

}  // namespace

TEST_CASE("RCPTs past the limit get 452 and count as errors only past the overshoot allowance") {
  session_config cfg;
  cfg.max_recipients = 5;
  cfg.recipient_overshoot_limit = 3;
  cfg.max_errors = 3;
  SUBCASE("within the allowance: 452s, then DATA for the accepted ones") {
    test_connection c(cfg);
    greet(c);
    c.send(many_rcpts(8) + "DATA\r\nhi\r\n.\r\n");
    std::string out = c.take();
    CHECK(count_of(out, "250 2.1.5 Ok") == 5);
    CHECK(count_of(out, "452 4.5.3 Error: too many recipients") == 3);
    CHECK(out.ends_with(queued(c.sink.messages.at(0))));
    CHECK(c.sink.messages[0].recipients.size() == 5);
    CHECK_FALSE(c.session.closing());
  }
  SUBCASE("past the allowance each one is an error, and the error limit closes") {
    test_connection c(cfg);
    greet(c);
    c.send(many_rcpts(5 + 3 + 3));
    std::string out = c.take();
    CHECK(count_of(out, "452 4.5.3 Error: too many recipients") == 6);
    CHECK(out.ends_with("421 4.7.0 Too many errors, closing connection\r\n"));
    CHECK(c.session.closing());
  }
}

TEST_CASE("1,100 pipelined RCPTs with Postfix's defaults: 1,000 accepted, 100 told to retry") {
  test_connection c;
  greet(c);
  c.send(many_rcpts(1100) + "DATA\r\nhi\r\n.\r\nQUIT\r\n");
  std::string out = c.take();
  CHECK(count_of(out, "250 2.1.5 Ok") == 1000);
  CHECK(count_of(out, "452 4.5.3 Error: too many recipients") == 100);
  REQUIRE(c.sink.messages.size() == 1);
  CHECK(out.ends_with(queued(c.sink.messages[0]) + "221 2.0.0 Bye\r\n"));
}

// Issue 9: an embedder's sink or policy that throws costs a 451, not the process.

TEST_CASE("a sink that throws gets 451 and the session goes on") {
  using throw_at = memory_sink::throw_at;
  for (throw_at where : {throw_at::begin, throw_at::write, throw_at::commit}) {
    CAPTURE(static_cast<int>(where));
    test_connection c;
    greet(c);
    c.sink.throws = where;
    c.send(std::string(mail_to_data));
    if (where == throw_at::begin) {
      CHECK(c.take() ==
            "250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n"
            "451 4.3.0 Error: could not store the message, try again later\r\n");
    } else {
      c.send("hi\r\n.\r\n");
      CHECK(c.take() == std::string(envelope_replies) +
                            "451 4.3.0 Error: could not store the message, try again later\r\n");
    }
    c.send(std::string(mail_to_data) + "again\r\n.\r\n");
    CHECK(c.take() == std::string(envelope_replies) + queued(c.sink.messages.back()));
    CHECK_FALSE(c.sink.misuse);
  }
}

namespace {

class throwing_policy final : public recipient_policy {
 public:
  rcpt_verdict resolve(std::string_view, std::vector<recipient>&) const override {
    throw std::runtime_error("directory is down");
  }
};

}  // namespace

TEST_CASE("a recipient policy that throws gets 451 4.3.0 at RCPT") {
  test_connection c;
  auto s = std::make_shared<proto::settings>(*c.settings);
  s->policy = std::make_shared<throwing_policy>();
  c.settings = s;
  greet(c);
  c.send("MAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.com>\r\nNOOP\r\n");
  CHECK(c.take() ==
        "250 2.1.0 Ok\r\n451 4.3.0 Error: temporary recipient lookup failure\r\n250 2.0.0 Ok\r\n");
}

TEST_CASE("aliases count against the recipient limit: ten mailboxes per allowed RCPT at most") {
  session_config cfg;
  cfg.max_recipients = 5;  // so at most 50 mailboxes resolved per transaction
  recipient_rules rules;
  domain_rules d{.name = "example.com", .users = {}, .aliases = {}};
  for (int i = 0; i < 20; ++i) d.users.push_back("u" + std::to_string(i));
  d.aliases["all"] = d.users;
  rules.domains.push_back(d);
  test_connection c(cfg, rules);
  greet(c);
  c.send(
      "MAIL FROM:<a@example.com>\r\nRCPT TO:<all@example.com>\r\nRCPT TO:<all@example.com>\r\n"
      "RCPT TO:<all@example.com>\r\nRCPT TO:<u1@example.com>\r\nDATA\r\nhi\r\n.\r\n");
  auto lines = test::reply_lines(c.take());
  REQUIRE(lines.size() == 7);
  CHECK(lines[1] == "250 2.1.5 Ok");
  CHECK(lines[2] == "250 2.1.5 Ok");                          // 40 resolved, 20 distinct mailboxes
  CHECK(lines[3] == "452 4.5.3 Error: too many recipients");  // 60 > 50
  CHECK(lines[4] == "452 4.5.3 Error: too many recipients");  // the budget is spent
  REQUIRE(c.sink.messages.size() == 1);
  CHECK(c.sink.messages[0].mailboxes.size() == 20);
}

TEST_CASE("a mailbox named twice gets one copy, below and past the scan's threshold") {
  session_config cfg;
  recipient_rules rules;
  domain_rules d{.name = "example.com", .users = {}, .aliases = {}};
  for (int i = 0; i < 30; ++i) d.users.push_back("u" + std::to_string(i));
  d.aliases["few"] = {"u1", "u2", "u1"};
  d.aliases["all"] = d.users;
  rules.domains.push_back(d);
  test_connection c(cfg, rules);
  greet(c);
  // u2 and few: 2 distinct (scanned); all: 30 (the set takes over at 16);
  // u29 and few again: nothing new.
  c.send(
      "MAIL FROM:<a@example.com>\r\nRCPT TO:<u2@example.com>\r\nRCPT TO:<few@example.com>\r\n"
      "RCPT TO:<all@example.com>\r\nRCPT TO:<u29@example.com>\r\nRCPT TO:<few@example.com>\r\n"
      "DATA\r\nhi\r\n.\r\n");
  CHECK_FALSE(c.take().empty());
  REQUIRE(c.sink.messages.size() == 1);
  CHECK(c.sink.messages[0].mailboxes.size() == 30);
  // The next transaction starts from nothing.
  c.send("MAIL FROM:<a@example.com>\r\nRCPT TO:<few@example.com>\r\nDATA\r\nhi\r\n.\r\n");
  CHECK_FALSE(c.take().empty());
  REQUIRE(c.sink.messages.size() == 2);
  CHECK(c.sink.messages[1].mailboxes.size() == 2);
}
