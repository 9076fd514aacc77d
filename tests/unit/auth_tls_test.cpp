// STARTTLS and AUTH in the sans-I/O session: what the session asks of its
// connection (stop for the handshake, a delay before a refusal) and the SASL
// exchanges of RFC 4954 / 4616 with an authenticator that answers on demand.
#include <doctest/doctest.h>

#include <string>
#include <utility>
#include <vector>

#include "harness.hpp"
#include "proto/base64.hpp"

using namespace inboxd;
using inboxd::proto::base64_decode;
using inboxd::proto::base64_encode;
using inboxd::test::test_connection;

namespace {

// Knows alice with password "secret"; answers when the test says so.
class fake_auth final : public authenticator {
 public:
  struct pending final : auth_check {
    auth_listener* listener;
    bool ok;
    void cancel() noexcept override { listener = nullptr; }
  };
  mutable std::vector<std::unique_ptr<pending>> checks;

  auth_check* check(std::string_view user, std::string_view password,
                    auth_listener& listener) const override {
    auto p = std::make_unique<pending>();
    p->listener = &listener;
    p->ok = user == "alice" && password == "secret";
    checks.push_back(std::move(p));
    return checks.back().get();
  }
  // Answers the oldest open check.
  void answer() const {
    for (auto& p : checks)
      if (p->listener)
        return std::exchange(p->listener, nullptr)
            ->auth_checked(p->ok ? auth_result::ok : auth_result::failed);
  }
};

// The session only asks whether credentials exist; the connection uses them.
// A non-null pointer that owns nothing stands in for them here.
std::shared_ptr<const tls_credentials> some_credentials() {
  static char token;
  return {std::shared_ptr<void>{}, reinterpret_cast<const tls_credentials*>(&token)};
}

struct tls_auth_connection : test_connection {
  std::shared_ptr<fake_auth> auth = std::make_shared<fake_auth>();
  explicit tls_auth_connection(session_config limits = {}) : test_connection(limits) {
    auto s = std::make_shared<proto::settings>(*settings);
    s->auth = auth;
    s->tls = some_credentials();
    settings = s;  // Taken up at the next command, as after a reload.
    (void)take();
  }
  // Past STARTTLS and its handshake, and a new EHLO.
  void secure() {
    send("EHLO c\r\nSTARTTLS\r\n");
    REQUIRE(take().ends_with("220 2.0.0 Ready to start TLS\r\n"));
    session.tls_started("TLSv1.3 with cipher TEST");
    send("EHLO c\r\n");
    (void)take();
  }
};

std::string plain(std::string_view user, std::string_view password) {
  return base64_encode(std::string("\0", 1) + std::string(user) + std::string("\0", 1) +
                       std::string(password));
}

}  // namespace

TEST_CASE("base64 decodes what it encodes, and refuses what is not base64") {
  std::string out;
  for (std::string s : {std::string(), std::string("a"), std::string("ab"), std::string("abc"),
                        std::string("abcd"), std::string("\0\xff\x10", 3)}) {
    CHECK(base64_decode(base64_encode(s), out));
    CHECK(out == s);
  }
  CHECK(base64_encode("alice") == "YWxpY2U=");
  CHECK_FALSE(base64_decode("YWxpY2U", out));    // length
  CHECK_FALSE(base64_decode("YW=pY2U=", out));   // padding inside
  CHECK_FALSE(base64_decode("YWxp Y2U=", out));  // a space
  CHECK_FALSE(base64_decode("Y===", out));
}

TEST_CASE("EHLO offers STARTTLS before TLS, and AUTH only inside it") {
  tls_auth_connection c;
  c.send("EHLO c\r\n");
  std::string before = c.take();
  CHECK(before.find("250-STARTTLS\r\n") != std::string::npos);
  CHECK(before.find("AUTH") == std::string::npos);
  c.secure();
  c.send("EHLO c\r\n");
  std::string after = c.take();
  CHECK(after.find("STARTTLS") == std::string::npos);
  CHECK(after.find("250-AUTH PLAIN LOGIN\r\n") != std::string::npos);
}

TEST_CASE("STARTTLS stops the session; pipelined bytes after it are left to the connection") {
  tls_auth_connection c;
  c.send("EHLO c\r\nSTARTTLS\r\nRSET\r\n");
  CHECK(c.take().ends_with("220 2.0.0 Ready to start TLS\r\n"));
  CHECK(c.session.starttls_requested());
  CHECK(c.session.waiting());
  CHECK(c.input == "RSET\r\n");  // The connection drops these (CVE-2011-0411).
}

TEST_CASE("after the handshake the session starts over and needs a new EHLO") {
  tls_auth_connection c;
  c.send("EHLO c\r\nSTARTTLS\r\n");
  (void)c.take();
  c.input.clear();
  c.session.tls_started("TLSv1.3 with cipher TEST");
  c.send("MAIL FROM:<a@example.com>\r\nSTARTTLS\r\n");
  CHECK(c.take() ==
        "503 5.5.1 Error: send HELO/EHLO first\r\n503 5.5.1 Error: TLS is already active\r\n");
}

TEST_CASE("require-tls refuses MAIL before STARTTLS") {
  tls_auth_connection c({.require_tls = true});
  c.send("EHLO c\r\nMAIL FROM:<a@example.com>\r\n");
  CHECK(c.take().ends_with("530 5.7.0 Must issue a STARTTLS command first\r\n"));
  c.secure();
  c.send("MAIL FROM:<a@example.com>\r\n");
  CHECK(c.take() == "250 2.1.0 Ok\r\n");
}

TEST_CASE("AUTH without TLS is refused unless plaintext AUTH is allowed") {
  tls_auth_connection c;
  c.send("EHLO c\r\nAUTH PLAIN " + plain("alice", "secret") + "\r\n");
  CHECK(c.take().ends_with(
      "538 5.7.11 Encryption required for requested authentication mechanism\r\n"));
  tls_auth_connection open({.allow_plaintext_auth = true});
  open.send("EHLO c\r\nAUTH PLAIN " + plain("alice", "secret") + "\r\n");
  open.auth->answer();
  CHECK(open.take().ends_with("235 2.7.0 Authentication successful\r\n"));
}

TEST_CASE("AUTH PLAIN with an initial response waits for the check, then 235") {
  tls_auth_connection c;
  c.secure();
  c.send("AUTH PLAIN " + plain("alice", "secret") + "\r\nMAIL FROM:<a@example.com>\r\n");
  CHECK(c.session.waiting());
  CHECK(c.take().empty());
  c.auth->answer();
  CHECK(c.take() == "235 2.7.0 Authentication successful\r\n250 2.1.0 Ok\r\n");
}

TEST_CASE("AUTH PLAIN and LOGIN with challenges") {
  tls_auth_connection c;
  c.secure();
  c.send("AUTH PLAIN\r\n");
  CHECK(c.take() == "334 \r\n");
  c.send(plain("alice", "secret") + "\r\n");
  c.auth->answer();
  CHECK(c.take() == "235 2.7.0 Authentication successful\r\n");

  tls_auth_connection l;
  l.secure();
  l.send("AUTH LOGIN\r\n");
  CHECK(l.take() == "334 VXNlcm5hbWU6\r\n");
  l.send(base64_encode("alice") + "\r\n");
  CHECK(l.take() == "334 UGFzc3dvcmQ6\r\n");
  l.send(base64_encode("secret") + "\r\n");
  l.auth->answer();
  CHECK(l.take() == "235 2.7.0 Authentication successful\r\n");
}

TEST_CASE("a wrong password gets 535 only after a delay, growing; the limit closes") {
  tls_auth_connection c;
  c.secure();
  for (int i = 0; i < 2; ++i) {
    c.send("AUTH PLAIN " + plain("alice", "wrong") + "\r\n");
    c.auth->answer();
    CHECK(c.take().empty());
    CHECK(c.session.waiting());
    c.session.wake();
    CHECK(c.take() == "535 5.7.8 Authentication credentials invalid\r\n");
  }
  CHECK(c.events.sleeps == std::vector<std::uint32_t>{500, 1000});
  c.send("AUTH PLAIN " + plain("mallory", "secret") + "\r\n");
  c.auth->answer();
  CHECK(c.take() == "421 4.7.0 Too many authentication failures, closing connection\r\n");
  CHECK(c.session.closing());
}

TEST_CASE("SASL cancel, bad base64, unknown mechanism, AUTH twice") {
  tls_auth_connection c;
  c.secure();
  c.send("AUTH PLAIN\r\n*\r\nAUTH PLAIN !!!!\r\nAUTH CRAM-MD5\r\n");
  CHECK(c.take() ==
        "334 \r\n501 5.7.0 Authentication cancelled\r\n"
        "501 5.5.2 Cannot decode the response\r\n504 5.5.4 Unrecognized authentication type\r\n");
  c.send("AUTH PLAIN " + plain("alice", "secret") + "\r\n");
  c.auth->answer();
  c.send("AUTH PLAIN " + plain("alice", "secret") + "\r\n");
  CHECK(c.take() ==
        "235 2.7.0 Authentication successful\r\n503 5.5.1 Error: already authenticated\r\n");
}

TEST_CASE("require-auth refuses MAIL until AUTH succeeded; AUTH= is accepted") {
  tls_auth_connection c({.require_auth = true});
  c.secure();
  c.send("MAIL FROM:<a@example.com>\r\n");
  CHECK(c.take() == "530 5.7.0 Authentication required\r\n");
  c.send("AUTH PLAIN " + plain("alice", "secret") + "\r\n");
  c.auth->answer();
  c.send("MAIL FROM:<a@example.com> AUTH=<>\r\n");
  CHECK(c.take() == "235 2.7.0 Authentication successful\r\n250 2.1.0 Ok\r\n");
}

TEST_CASE("the Received header names TLS and the user, with ESMTPSA") {
  tls_auth_connection c;
  c.secure();
  c.send("AUTH PLAIN " + plain("alice", "secret") + "\r\n");
  c.auth->answer();
  c.send("MAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.com>\r\nDATA\r\nhi\r\n.\r\n");
  REQUIRE(c.sink.messages.size() == 1);
  std::string_view trace = c.sink.messages[0].trace();
  CHECK(trace.find("\t(using TLSv1.3 with cipher TEST)\n") != std::string_view::npos);
  CHECK(trace.find("\t(Authenticated sender: alice)\n") != std::string_view::npos);
  CHECK(trace.find(" with ESMTPSA id ") != std::string_view::npos);
}

TEST_CASE("a check still open when the client leaves is cancelled") {
  tls_auth_connection c;
  c.secure();
  c.send("AUTH PLAIN " + plain("alice", "secret") + "\r\n");
  c.session.disconnect();
  CHECK(c.auth->checks.back()->listener == nullptr);
}

namespace {

// Answers inside check() (auth.hpp allows it), with a fixed result.
class immediate_auth final : public authenticator {
 public:
  explicit immediate_auth(auth_result r) : result_(r) {}
  auth_check* check(std::string_view, std::string_view, auth_listener& l) const override {
    l.auth_checked(result_);
    return nullptr;
  }

 private:
  auth_result result_;
};

struct immediate_auth_connection : test_connection {
  explicit immediate_auth_connection(auth_result r) {
    auto s = std::make_shared<proto::settings>(*settings);
    s->auth = std::make_shared<immediate_auth>(r);
    s->tls = some_credentials();
    settings = s;
    (void)take();
    send("EHLO c\r\nSTARTTLS\r\n");
    (void)take();
    session.tls_started("TLSv1.3 with cipher TEST");
    send("EHLO c\r\n");
    (void)take();
  }
};

}  // namespace

TEST_CASE("an authenticator that answers inside check() does not leave the session waiting") {
  immediate_auth_connection c(auth_result::ok);
  c.send("AUTH PLAIN " + plain("alice", "secret") + "\r\nNOOP\r\n");
  CHECK(c.take() == "235 2.7.0 Authentication successful\r\n250 2.0.0 Ok\r\n");
  CHECK_FALSE(c.session.waiting());
}

TEST_CASE("a busy authenticator gets 454 4.7.0, and it is no strike against the client") {
  immediate_auth_connection c(auth_result::busy);
  for (int i = 0; i < 5; ++i) {
    c.send("AUTH PLAIN " + plain("alice", "secret") + "\r\n");
    CHECK(c.take() == "454 4.7.0 Temporary authentication failure, try again later\r\n");
  }
  CHECK_FALSE(c.session.closing());
  CHECK(c.events.sleeps.empty());  // No growing delay: not a failure.
  c.send("NOOP\r\n");
  CHECK(c.take() == "250 2.0.0 Ok\r\n");
}
