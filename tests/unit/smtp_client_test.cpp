#include <doctest/doctest.h>

#include <string>
#include <vector>

#include "harness.hpp"
#include "proto/smtp_client.hpp"

using namespace inboxd::proto;
using inboxd::envelope;
using inboxd::recipient;
using inboxd::store_result;

namespace {

using state = smtp_client::state;

// Feeds bytes that must all be read (no stop for the driver).
bool feed(smtp_client& c, std::string_view bytes) {
  bool ok = c.feed(bytes);
  CHECK((bytes.empty() || !ok));
  return ok;
}

// Takes what the client wrote.
std::string sent(smtp_client& c) {
  std::string s;
  s.swap(c.output());
  return s;
}

// A client that has read the greeting and this EHLO reply.
smtp_client ready_client(std::string_view ehlo, smtp_client_options o = {}) {
  smtp_client c(std::move(o));
  REQUIRE(feed(c, "220 hop ESMTP\r\n"));
  sent(c);
  REQUIRE(feed(c, ehlo));
  return c;
}

struct rcpts {
  std::vector<recipient> list;
  explicit rcpts(std::initializer_list<const char*> addresses) {
    for (const char* a : addresses) list.push_back({.address = a, .user = "u", .domain = "x"});
  }
};

envelope env_of(const rcpts& r, bool independent = false) {
  envelope e;
  e.reverse_path = "s@example.org";
  e.recipients = r.list;
  e.independent_outcomes = independent;
  return e;
}

}  // namespace

TEST_CASE("reply_parser reads single and multi-line replies, CRLF or LF") {
  std::string bytes = "250-hop\r\n250-PIPELINING\n250 SIZE 100\r\n554 5.7.1 no\r\n";
  auto run = [&](const std::vector<std::string_view>& pieces) {
    reply_parser p;
    std::vector<std::string> got;
    for (std::string_view piece : pieces) {
      smtp_reply r;
      while (p.parse(piece, r) == reply_parser::status::reply) {
        got.push_back(r.line + "|" + std::to_string(r.lines.size()));
        r = {};
      }
    }
    return got;
  };
  auto got = inboxd::test::same_when_dribbled(bytes, run);
  CHECK(got == std::vector<std::string>{"250 hop PIPELINING SIZE 100|3", "554 5.7.1 no|1"});
}

TEST_CASE("reply_parser calls garbage, mixed codes and overlong lines errors") {
  for (std::string bad :
       std::initializer_list<std::string>{"hello\r\n", "25 x\r\n", "250-a\r\n251 b\r\n",
                                          "199 x\r\n", "250x\r\n", std::string(3000, '2')}) {
    INFO(bad);
    reply_parser p;
    smtp_reply r;
    std::string_view in = bad;
    reply_parser::status s = reply_parser::status::need_more;
    while (!in.empty() && s == reply_parser::status::need_more) s = p.parse(in, r);
    CHECK(s == reply_parser::status::error);
  }
  reply_parser p;
  smtp_reply r;
  std::string many;
  for (int i = 0; i < 200; ++i) many += "250-x\r\n";
  std::string_view in = many;
  CHECK(p.parse(in, r) == reply_parser::status::error);
}

TEST_CASE("the client greets with EHLO, or LHLO for LMTP, and reads the extensions") {
  smtp_client c({.lmtp = true, .helo = "mx.example"});
  REQUIRE(feed(c, "220 hop LMTP\r\n"));
  CHECK(sent(c) == "LHLO mx.example\r\n");
  REQUIRE(feed(c,
               "250-hop\r\n250-PIPELINING\r\n250-size 1000\r\n250-8BITMIME\r\n250-CHUNKING\r\n"
               "250-DSN\r\n250-AUTH LOGIN PLAIN\r\n250-SMTPUTF8\r\n250 ENHANCEDSTATUSCODES\r\n"));
  CHECK(c.current() == state::ready);
  const hop_extensions& e = c.extensions();
  CHECK(e.pipelining);
  CHECK(e.size);
  CHECK(e.max_size == 1000);
  CHECK(e.eightbitmime);
  CHECK(e.chunking);
  CHECK(e.dsn);
  CHECK(e.auth_plain);
  CHECK(e.smtputf8);
  CHECK_FALSE(e.starttls);
  CHECK_FALSE(e.requiretls);
}

TEST_CASE("a refused greeting or garbage fails the session with the hop's words") {
  smtp_client c({});
  CHECK_FALSE(feed(c, "554 5.3.2 go away\r\n"));
  CHECK(c.current() == state::failed);
  CHECK(c.error() == "554 5.3.2 go away");
  smtp_client g({});
  CHECK_FALSE(feed(g, "SSH-2.0-OpenSSH\r\n"));
  CHECK(g.error().starts_with("451 4.4.2 next hop sent garbage"));
}

TEST_CASE("one message over SMTP with PIPELINING: MAIL and RCPTs together, then DATA") {
  smtp_client c = ready_client("250-hop\r\n250-PIPELINING\r\n250 8BITMIME\r\n");
  sent(c);
  rcpts r{"a@x", "b@x"};
  envelope e = env_of(r);
  e.body_8bit = true;
  REQUIRE(c.start(e, false));
  CHECK(sent(c) == "MAIL FROM:<s@example.org> BODY=8BITMIME\r\nRCPT TO:<a@x>\r\nRCPT TO:<b@x>\r\n");
  c.body("Subject: x\n\n.line\n");
  CHECK(c.held() > 0);  // Not before the 354.
  REQUIRE(feed(c, "250 ok\r\n250 ok\r\n250 ok\r\n"));
  CHECK(sent(c) == "DATA\r\n");
  REQUIRE(feed(c, "354 go\r\n"));
  c.body("end");
  c.finish();
  CHECK(sent(c) == "Subject: x\r\n\r\n..line\r\nend\r\n.\r\n");
  REQUIRE(feed(c, "250 2.0.0 queued as X\r\n"));
  CHECK(c.current() == state::done);
  REQUIRE(c.outcomes().size() == 2);
  for (const auto& o : c.outcomes()) {
    CHECK(o.result == store_result::stored);
    CHECK(o.reply == "250 2.0.0 queued as X");
  }
  c.take();
  CHECK(c.current() == state::ready);
  CHECK(sent(c).empty());
}

TEST_CASE("without PIPELINING each RCPT waits for the reply before it") {
  smtp_client c = ready_client("250 hop\r\n");
  sent(c);
  rcpts r{"a@x", "b@x"};
  REQUIRE(c.start(env_of(r), false));
  CHECK(sent(c) == "MAIL FROM:<s@example.org>\r\n");
  REQUIRE(feed(c, "250 ok\r\n"));
  CHECK(sent(c) == "RCPT TO:<a@x>\r\n");
  REQUIRE(feed(c, "250 ok\r\n"));
  CHECK(sent(c) == "RCPT TO:<b@x>\r\n");
  REQUIRE(feed(c, "250 ok\r\n"));
  CHECK(sent(c) == "DATA\r\n");
}

TEST_CASE("SMTP on our side: a refused RCPT fails the message, which is never sent") {
  smtp_client c = ready_client("250-hop\r\n250 PIPELINING\r\n");
  sent(c);
  rcpts r{"a@x", "b@x"};
  REQUIRE(c.start(env_of(r), false));
  sent(c);
  REQUIRE(feed(c, "250 ok\r\n250 ok\r\n550 5.1.1 <b@x>: unknown\r\n"));
  c.body("hello\n");
  c.finish();
  CHECK(c.current() == state::done);
  CHECK(sent(c).empty());  // No DATA.
  for (const auto& o : c.outcomes()) {
    CHECK(o.result == store_result::permanent_fail);
    CHECK(o.reply == "550 5.1.1 <b@x>: unknown");
  }
  c.take();
  CHECK(sent(c) == "RSET\r\n");
  REQUIRE(feed(c, "250 ok\r\n"));
  CHECK(c.current() == state::ready);
}

TEST_CASE("LMTP on both sides: per-recipient RCPT and data replies") {
  smtp_client c = ready_client("250-hop\r\n250 PIPELINING\r\n", {.lmtp = true});
  sent(c);
  rcpts r{"a@x", "b@x", "c@x"};
  REQUIRE(c.start(env_of(r, true), false));
  sent(c);
  REQUIRE(feed(c, "250 ok\r\n250 ok\r\n550 5.1.1 no b\r\n250 ok\r\n"));
  CHECK(sent(c) == "DATA\r\n");
  REQUIRE(feed(c, "354 go\r\n"));
  c.body("x\n");
  c.finish();
  CHECK(sent(c) == "x\r\n.\r\n");
  REQUIRE(feed(c, "250 2.0.0 a saved\r\n"));
  CHECK(c.current() == state::result);
  REQUIRE(feed(c, "452 4.2.2 c over quota\r\n"));
  CHECK(c.current() == state::done);
  auto o = c.outcomes();
  CHECK(o[0].result == store_result::stored);
  CHECK(o[1].result == store_result::permanent_fail);
  CHECK(o[1].reply == "550 5.1.1 no b");
  CHECK(o[2].result == store_result::temporary_fail);
  CHECK(o[2].reply == "452 4.2.2 c over quota");
}

TEST_CASE("a refused MAIL fails every recipient with its reply") {
  smtp_client c = ready_client("250-hop\r\n250 PIPELINING\r\n");
  sent(c);
  rcpts r{"a@x"};
  REQUIRE(c.start(env_of(r), false));
  REQUIRE(feed(c, "451 4.3.0 try later\r\n503 5.5.1 no MAIL\r\n"));
  c.finish();
  CHECK(c.current() == state::done);
  CHECK(c.outcomes()[0].result == store_result::temporary_fail);
  CHECK(c.outcomes()[0].reply == "451 4.3.0 try later");
}

TEST_CASE("BDAT towards a CHUNKING hop, with CRLF line ends and no dot-stuffing") {
  smtp_client c = ready_client("250-hop\r\n250-PIPELINING\r\n250 CHUNKING\r\n");
  sent(c);
  rcpts r{"a@x"};
  REQUIRE(c.start(env_of(r), false));
  sent(c);
  REQUIRE(feed(c, "250 ok\r\n250 ok\r\n"));
  c.body(".a\nb\n");
  c.finish();
  CHECK(sent(c) == "BDAT 7 LAST\r\n.a\r\nb\r\n");
  REQUIRE(feed(c, "250 2.0.0 ok\r\n"));
  CHECK(c.current() == state::done);
  CHECK(c.outcomes()[0].result == store_result::stored);
}

TEST_CASE("BINARYMIME: the header gets CRLF, the body goes as sent") {
  smtp_client c = ready_client("250-hop\r\n250-PIPELINING\r\n250-BINARYMIME\r\n250 CHUNKING\r\n");
  sent(c);
  rcpts r{"a@x"};
  envelope e = env_of(r);
  e.body_binary = true;
  REQUIRE(c.start(e, false));
  CHECK(sent(c).starts_with("MAIL FROM:<s@example.org> BODY=BINARYMIME\r\n"));
  REQUIRE(feed(c, "250 ok\r\n250 ok\r\n"));
  c.body("A: b\n\n\x01\n\r.");
  c.finish();
  CHECK(sent(c) == std::string("BDAT 12 LAST\r\nA: b\r\n\r\n\x01\n\r."));
}

TEST_CASE("what the hop does not offer fails the message before MAIL") {
  smtp_client c = ready_client("250 hop\r\n");
  sent(c);
  rcpts r{"a@x"};
  envelope e = env_of(r);
  e.smtputf8 = true;
  CHECK_FALSE(c.start(e, false));
  CHECK(c.outcomes()[0].result == store_result::permanent_fail);
  CHECK(c.outcomes()[0].reply.starts_with("554 5.6.7"));
  e.smtputf8 = false;
  e.requiretls = true;
  CHECK_FALSE(c.start(e, true));
  CHECK(c.outcomes()[0].reply.starts_with("554 5.7.30"));
  CHECK(sent(c).empty());
  CHECK(c.current() == state::ready);
}

TEST_CASE("DSN parameters go to a hop that offers DSN") {
  smtp_client c = ready_client("250-hop\r\n250-PIPELINING\r\n250 DSN\r\n");
  sent(c);
  rcpts r{"a@x"};
  r.list[0].notify = inboxd::dsn_notify::success | inboxd::dsn_notify::failure;
  r.list[0].orcpt_type = "rfc822";
  r.list[0].orcpt = "o+1=@x";
  envelope e = env_of(r);
  e.ret = inboxd::dsn_ret::hdrs;
  e.envid = "id 1";
  REQUIRE(c.start(e, false));
  CHECK(sent(c) ==
        "MAIL FROM:<s@example.org> RET=HDRS ENVID=id+201\r\n"
        "RCPT TO:<a@x> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;o+2B1+3D@x\r\n");
}

TEST_CASE("STARTTLS: the handshake is the I/O side's, then EHLO again") {
  smtp_client c({.starttls = smtp_client_options::tls::require});
  REQUIRE(feed(c, "220 hop\r\n"));
  sent(c);
  REQUIRE(feed(c, "250-hop\r\n250 STARTTLS\r\n"));
  CHECK(sent(c) == "STARTTLS\r\n");
  REQUIRE(feed(c, "220 go ahead\r\n"));
  CHECK(c.current() == state::handshake);
  c.tls_started();
  CHECK(sent(c) == "EHLO localhost\r\n");
  REQUIRE(feed(c, "250 hop\r\n"));
  CHECK(c.current() == state::ready);
}

TEST_CASE("STARTTLS required but not offered, or bytes after its 220, fail") {
  smtp_client c({.starttls = smtp_client_options::tls::require});
  REQUIRE(feed(c, "220 hop\r\n"));
  CHECK_FALSE(feed(c, "250 hop\r\n"));
  CHECK(c.error().starts_with("451 4.7.4"));
  smtp_client may({.starttls = smtp_client_options::tls::may});
  REQUIRE(feed(may, "220 hop\r\n"));
  REQUIRE(feed(may, "250 hop\r\n"));
  CHECK(may.current() == state::ready);
  smtp_client inj({.starttls = smtp_client_options::tls::may});
  REQUIRE(feed(inj, "220 hop\r\n250-hop\r\n250 STARTTLS\r\n"));
  CHECK_FALSE(feed(inj, "220 go\r\n250 injected\r\n"));
}

// A client that has done STARTTLS and is asked for the EHLO reply after it.
smtp_client after_tls(smtp_client_options o) {
  o.starttls = smtp_client_options::tls::may;
  smtp_client c(std::move(o));
  REQUIRE(feed(c, "220 hop\r\n250-hop\r\n250 STARTTLS\r\n"));
  REQUIRE(feed(c, "220 go ahead\r\n"));
  c.tls_started();
  sent(c);
  return c;
}

TEST_CASE("AUTH PLAIN after EHLO where offered, inside TLS") {
  smtp_client c = after_tls({.auth_user = "u", .auth_password = "p"});
  REQUIRE(feed(c, "250-hop\r\n250 AUTH PLAIN\r\n"));
  CHECK(sent(c) == "AUTH PLAIN AHUAcA==\r\n");
  REQUIRE(feed(c, "235 2.7.0 ok\r\n"));
  CHECK(c.current() == state::ready);
  smtp_client bad = after_tls({.auth_user = "u", .auth_password = "p"});
  REQUIRE(feed(bad, "250-hop\r\n250 AUTH PLAIN\r\n"));
  CHECK_FALSE(feed(bad, "535 5.7.8 bad\r\n"));
  CHECK(bad.error() == "535 5.7.8 bad");
}

TEST_CASE("a dropped connection after the data is a temporary failure for those unanswered") {
  smtp_client c = ready_client("250-hop\r\n250 PIPELINING\r\n", {.lmtp = true});
  sent(c);
  rcpts r{"a@x", "b@x"};
  REQUIRE(c.start(env_of(r, true), false));
  REQUIRE(feed(c, "250 ok\r\n250 ok\r\n250 ok\r\n354 go\r\n"));
  c.finish();
  REQUIRE(feed(c, "250 a ok\r\n"));
  c.fail("451 4.4.2 next hop dropped the connection");
  CHECK(c.current() == state::failed);
  CHECK(c.outcomes()[0].result == store_result::stored);
  CHECK(c.outcomes()[1].result == store_result::temporary_fail);
}

TEST_CASE("mailboxes of one address share one RCPT") {
  smtp_client c = ready_client("250-hop\r\n250 PIPELINING\r\n");
  sent(c);
  rcpts r{"a@x", "a@x", "b@x"};
  REQUIRE(c.start(env_of(r), false));
  CHECK(sent(c) == "MAIL FROM:<s@example.org>\r\nRCPT TO:<a@x>\r\nRCPT TO:<b@x>\r\n");
  CHECK(c.outcomes().size() == 2);
  CHECK(&c.outcome_of(1) == &c.outcome_of(0));
}

TEST_CASE("a refused BDAT chunk fails the message; the rest is not sent, RSET follows") {
  smtp_client c = ready_client("250-hop\r\n250-PIPELINING\r\n250 CHUNKING\r\n");
  sent(c);
  rcpts r{"a@x"};
  REQUIRE(c.start(env_of(r), false));
  sent(c);
  REQUIRE(feed(c, "250 ok\r\n250 ok\r\n"));
  c.body(std::string(20000, 'a'));
  CHECK(sent(c).starts_with("BDAT 20000\r\n"));
  c.body(std::string(20000, 'b'));
  sent(c);
  REQUIRE(feed(c, "552 5.3.4 too big\r\n"));
  CHECK(c.current() == state::body);
  c.body("more");
  c.finish();
  CHECK(sent(c).empty());             // No LAST: the message is refused.
  CHECK(c.current() == state::body);  // The second chunk's reply is still to come.
  REQUIRE(feed(c, "250 ok\r\n"));
  CHECK(c.current() == state::done);
  CHECK(c.outcomes()[0].result == store_result::permanent_fail);
  CHECK(c.outcomes()[0].reply == "552 5.3.4 too big");
  c.take();
  CHECK(sent(c) == "RSET\r\n");
}

TEST_CASE("a chunk refused after LAST was sent: done at LAST's reply") {
  smtp_client c = ready_client("250-hop\r\n250-PIPELINING\r\n250 CHUNKING\r\n");
  sent(c);
  rcpts r{"a@x"};
  REQUIRE(c.start(env_of(r), false));
  REQUIRE(feed(c, "250 ok\r\n250 ok\r\n"));
  c.body(std::string(20000, 'a'));
  c.finish();
  CHECK(c.current() == state::result);
  REQUIRE(feed(c, "451 4.3.0 chunk lost\r\n"));
  CHECK(c.current() == state::result);
  REQUIRE(feed(c, "503 5.5.1 no transaction\r\n"));
  CHECK(c.current() == state::done);
  CHECK(c.outcomes()[0].result == store_result::temporary_fail);
  CHECK(c.outcomes()[0].reply == "451 4.3.0 chunk lost");
}

TEST_CASE(
    "a BDAT chunk's reply outstanding is a wait the driver times; a refusal drops what is held") {
  smtp_client c = ready_client("250-hop\r\n250-PIPELINING\r\n250 CHUNKING\r\n");
  sent(c);
  rcpts r{"a@x"};
  REQUIRE(c.start(env_of(r), false));
  c.body(std::string(300000, 'a'));  // held until the envelope's replies
  CHECK(c.held() > 0);
  CHECK_FALSE(c.awaiting_reply());
  REQUIRE(feed(c, "250 ok\r\n250 ok\r\n"));
  CHECK(c.held() == 0);
  CHECK(c.awaiting_reply());  // a chunk went: its reply is due
  REQUIRE(feed(c, "250 ok\r\n"));
  CHECK_FALSE(c.awaiting_reply());
  smtp_client d = ready_client("250-hop\r\n250 PIPELINING\r\n");
  REQUIRE(d.start(env_of(r), false));
  d.body(std::string(300000, 'a'));
  CHECK(d.held() == 300000);
  REQUIRE(feed(d, "250 ok\r\n550 5.1.1 no\r\n"));
  CHECK(d.held() == 0);  // dropped: the driver tells a paused session
  CHECK(d.current() == state::body);
  CHECK_FALSE(d.awaiting_reply());
}

TEST_CASE("no AUTH PLAIN in cleartext: the session fails, the password is not sent") {
  for (auto mode : {smtp_client_options::tls::none, smtp_client_options::tls::may}) {
    smtp_client c({.starttls = mode, .auth_user = "u", .auth_password = "p"});
    REQUIRE(feed(c, "220 hop\r\n"));
    CHECK(sent(c) == "EHLO localhost\r\n");
    CHECK_FALSE(feed(c, "250-hop\r\n250 AUTH PLAIN\r\n"));
    CHECK(c.error().starts_with("451 4.7.0 AUTH needs TLS"));
    CHECK(sent(c).empty());
  }
  // STARTTLS refused under "may": still no AUTH in cleartext.
  smtp_client r(
      {.starttls = smtp_client_options::tls::may, .auth_user = "u", .auth_password = "p"});
  REQUIRE(feed(r, "220 hop\r\n250-hop\r\n250-STARTTLS\r\n250 AUTH PLAIN\r\n"));
  CHECK(sent(r) == "EHLO localhost\r\nSTARTTLS\r\n");
  CHECK_FALSE(feed(r, "454 4.7.0 not now\r\n"));
  CHECK(sent(r).empty());
  // A hop that offers no AUTH gets the mail without it, as before.
  smtp_client n({.auth_user = "u", .auth_password = "p"});
  REQUIRE(feed(n, "220 hop\r\n250 hop\r\n"));
  CHECK(n.current() == state::ready);
}
