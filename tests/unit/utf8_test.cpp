#include <doctest/doctest.h>

#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "harness.hpp"
#include "inboxd/auth.hpp"
#include "proto/base64.hpp"
#include "proto/utf8.hpp"

using namespace inboxd::proto;
using inboxd::test::test_connection;

TEST_CASE("is_utf8_text takes well-formed UTF-8 of every length") {
  CHECK(is_utf8_text(""));
  CHECK(is_utf8_text("plain ascii"));
  CHECK(is_utf8_text("m\xC3\xBCnchen"));    // ü, 2 octets
  CHECK(is_utf8_text("\xE2\x98\x83"));      // U+2603, 3 octets
  CHECK(is_utf8_text("\xF0\x9F\x98\x80"));  // U+1F600, 4 octets
  CHECK(is_utf8_text("\xC2\xA0"));          // U+00A0, first past C1
  CHECK(is_utf8_text("\xED\x9F\xBF"));      // U+D7FF, below the surrogates
  CHECK(is_utf8_text("\xEE\x80\x80"));      // U+E000, above them
  CHECK(is_utf8_text("\xF4\x8F\xBF\xBF"));  // U+10FFFF, the last
  CHECK(is_utf8_text("\xE0\xA0\x80"));      // U+0800, shortest 3-octet
  CHECK(is_utf8_text("\xF0\x90\x80\x80"));  // U+10000, shortest 4-octet
}

TEST_CASE("is_utf8_text refuses overlong forms, surrogates, and past U+10FFFF") {
  CHECK_FALSE(is_utf8_text("\xC0\xAF"));          // overlong '/'
  CHECK_FALSE(is_utf8_text("\xC1\xBF"));          // overlong
  CHECK_FALSE(is_utf8_text("\xE0\x80\xAF"));      // overlong '/' in 3 octets
  CHECK_FALSE(is_utf8_text("\xE0\x9F\xBF"));      // overlong U+07FF
  CHECK_FALSE(is_utf8_text("\xF0\x80\x80\xAF"));  // overlong '/' in 4 octets
  CHECK_FALSE(is_utf8_text("\xF0\x8F\xBF\xBF"));  // overlong U+FFFF
  CHECK_FALSE(is_utf8_text("\xED\xA0\x80"));      // U+D800, a surrogate
  CHECK_FALSE(is_utf8_text("\xED\xBF\xBF"));      // U+DFFF
  CHECK_FALSE(is_utf8_text("\xF4\x90\x80\x80"));  // U+110000
  CHECK_FALSE(is_utf8_text("\xF5\x80\x80\x80"));
  CHECK_FALSE(is_utf8_text("\xFF"));
  CHECK_FALSE(is_utf8_text("\xFE"));
}

TEST_CASE("is_utf8_text refuses truncated and stray sequences") {
  CHECK_FALSE(is_utf8_text("\x80"));  // a lone continuation octet
  CHECK_FALSE(is_utf8_text("a\xBF"));
  CHECK_FALSE(is_utf8_text("\xC3"));  // cut short at the end
  CHECK_FALSE(is_utf8_text("\xE2\x98"));
  CHECK_FALSE(is_utf8_text("\xF0\x9F\x98"));
  CHECK_FALSE(is_utf8_text("\xC3z"));  // a lead without its tail
  CHECK_FALSE(is_utf8_text("\xE2\x98z"));
  CHECK_FALSE(is_utf8_text("\xF0\x9F\x98\xC3\xBC"));
}

TEST_CASE("is_utf8_text refuses C0, DEL and C1 controls") {
  CHECK_FALSE(is_utf8_text(std::string("a\0b", 3)));
  CHECK_FALSE(is_utf8_text("a\tb"));
  CHECK_FALSE(is_utf8_text("a\r\nb"));
  CHECK_FALSE(is_utf8_text("\x1F"));
  CHECK_FALSE(is_utf8_text("\x7F"));
  CHECK_FALSE(is_utf8_text("\xC2\x80"));  // U+0080
  CHECK_FALSE(is_utf8_text("\xC2\x85"));  // U+0085, NEL
  CHECK_FALSE(is_utf8_text("\xC2\x9F"));  // U+009F
}

TEST_CASE("utf8_sequence gives the length of the sequence at the start") {
  CHECK(utf8_sequence("") == 0);
  CHECK(utf8_sequence("a") == 1);
  CHECK(utf8_sequence("\xC3\xBC rest") == 2);
  CHECK(utf8_sequence("\xE2\x98\x83") == 3);
  CHECK(utf8_sequence("\xF0\x9F\x98\x80") == 4);
  CHECK(utf8_sequence("\xC3") == 0);
}

TEST_CASE("is_ascii") {
  CHECK(is_ascii(""));
  CHECK(is_ascii("abc\x7F"));
  CHECK_FALSE(is_ascii("ab\x80"));
}

TEST_CASE("every one- and two-octet input is judged as a decoder would") {
  // A reference: decode by hand, then apply the rules.
  auto reference = [](const std::string& s) {
    std::size_t i = 0;
    while (i < s.size()) {
      auto c = static_cast<unsigned char>(s[i]);
      std::size_t n = c < 0x80                ? 1
                      : c >= 0xC0 && c < 0xE0 ? 2
                      : c >= 0xE0 && c < 0xF0 ? 3
                      : c >= 0xF0 && c < 0xF8 ? 4
                                              : 0;
      if (n == 0 || i + n > s.size()) return false;
      unsigned cp = n == 1 ? c : c & (0x7F >> n);
      for (std::size_t k = 1; k < n; ++k) {
        auto t = static_cast<unsigned char>(s[i + k]);
        if ((t & 0xC0) != 0x80) return false;
        cp = cp << 6 | (t & 0x3F);
      }
      static constexpr unsigned min[] = {0, 0, 0x80, 0x800, 0x10000};
      if (cp < min[n] || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) return false;
      if (cp < 0x20 || (cp >= 0x7F && cp <= 0x9F)) return false;
      i += n;
    }
    return true;
  };
  for (int a = 0; a < 256; ++a) {
    std::string one(1, static_cast<char>(a));
    REQUIRE(is_utf8_text(one) == reference(one));
    for (int b = 0; b < 256; ++b) {
      std::string two{static_cast<char>(a), static_cast<char>(b)};
      REQUIRE(is_utf8_text(two) == reference(two));
    }
  }
  // Three octets, over the lead octets that start one and every second octet.
  for (int a = 0xE0; a < 0x100; ++a)
    for (int b = 0x70; b < 0xC8; ++b) {
      std::string three{static_cast<char>(a), static_cast<char>(b), '\x80'};
      REQUIRE(is_utf8_text(three) == reference(three));
      std::string four{static_cast<char>(a), static_cast<char>(b), '\x80', '\xBF'};
      REQUIRE(is_utf8_text(four) == reference(four));
    }
}

// ---- SMTPUTF8 through the session: the policy, the trace header, the log ----

namespace {

// Knows alice with password "secret", and answers at once.
class instant_auth final : public inboxd::authenticator {
 public:
  inboxd::auth_check* check(std::string_view user, std::string_view password,
                            inboxd::auth_listener& listener) const override {
    listener.auth_checked(user == "alice" && password == "secret" ? inboxd::auth_result::ok
                                                                  : inboxd::auth_result::failed);
    return nullptr;
  }
};

inboxd::recipient_rules munich() {
  inboxd::recipient_rules rules;
  rules.domains.push_back({"m\xC3\xBCnchen.example", {"j\xC3\xB6rg", "alice"}, {}});
  return rules;
}

// A connection whose settings have TLS credentials and an authenticator.
struct secure_connection : test_connection {
  explicit secure_connection(inboxd::session_config cfg = {}) : test_connection(cfg, munich()) {
    auto s = std::make_shared<inboxd::proto::settings>(*settings);
    s->auth = std::make_shared<instant_auth>();
    static char token;  // Only their presence is asked for.
    s->tls = {std::shared_ptr<void>{}, reinterpret_cast<const inboxd::tls_credentials*>(&token)};
    settings = s;
    (void)take();
  }
};

const std::string utf8_message =
    "MAIL FROM:<j\xC3\xB6rg@m\xC3\xBCnchen.example> SMTPUTF8\r\n"
    "RCPT TO:<j\xC3\xB6rg@xn--mnchen-3ya.example>\r\nDATA\r\n"
    "Subject: Gr\xC3\xBC\xC3\x9F\x65\r\n\r\n\xE4\xBD\xA0\xE5\xA5\xBD\r\n.\r\n";

std::string trace_of(const test_connection& c) {
  REQUIRE(c.sink.messages.size() == 1);
  return std::string(c.sink.messages[0].trace());
}

}  // namespace

TEST_CASE("SMTPUTF8 mail is traced with UTF8SMTP, and stored with its UTF-8 bytes") {
  test_connection c({}, munich());
  c.send("EHLO client.example\r\n" + utf8_message);
  REQUIRE(c.sink.messages.size() == 1);
  const auto& m = c.sink.messages[0];
  CHECK(m.reverse_path == "j\xC3\xB6rg@m\xC3\xBCnchen.example");
  CHECK(m.mailboxes == std::vector<std::string>{"j\xC3\xB6rg@xn--mnchen-3ya.example"});
  CHECK(trace_of(c).find("\tby localhost (inboxd) with UTF8SMTP id ") != std::string::npos);
  CHECK(trace_of(c).find("\tfor <j\xC3\xB6rg@xn--mnchen-3ya.example>; ") != std::string::npos);
  CHECK(m.body() == "Subject: Gr\xC3\xBC\xC3\x9F\x65\n\n\xE4\xBD\xA0\xE5\xA5\xBD\n");
  // The log line escapes what is not printable ASCII.
  bool logged = false;
  for (const auto& line : c.events.log)
    if (line.find("from=<j\\xc3\\xb6rg@m\\xc3\\xbcnchen.example> "
                  "to=<j\\xc3\\xb6rg@xn--mnchen-3ya.example>") != std::string::npos)
      logged = true;
  CHECK(logged);
}

TEST_CASE("without SMTPUTF8 the trace says ESMTP, even with 8-bit header bytes") {
  test_connection c({}, munich());
  c.send(
      "EHLO client.example\r\nMAIL FROM:<a@example.com> BODY=8BITMIME\r\n"
      "RCPT TO:<alice@xn--mnchen-3ya.example>\r\nDATA\r\nSubject: \xC3\xBC\r\n\r\nx\r\n.\r\n");
  CHECK(trace_of(c).find(" with ESMTP id ") != std::string::npos);
  CHECK(c.sink.messages[0].body() == "Subject: \xC3\xBC\n\nx\n");
}

TEST_CASE("the UTF8SMTP trace gains S with TLS and A with AUTH (RFC 6531 4.3)") {
  const std::string plain_auth = "AUTH PLAIN " + base64_encode(std::string("\0alice\0secret", 13));
  {
    secure_connection c;
    c.send("EHLO c\r\nSTARTTLS\r\n");
    c.session.tls_started("TLSv1.3 with cipher TEST");
    c.send("EHLO c\r\n" + utf8_message);
    CHECK(trace_of(c).find(" with UTF8SMTPS id ") != std::string::npos);
  }
  {
    secure_connection c({.allow_plaintext_auth = true});
    c.send("EHLO c\r\n" + plain_auth + "\r\n" + utf8_message);
    CHECK(trace_of(c).find(" with UTF8SMTPA id ") != std::string::npos);
  }
  {
    secure_connection c;
    c.send("EHLO c\r\nSTARTTLS\r\n");
    c.session.tls_started("TLSv1.3 with cipher TEST");
    c.send("EHLO c\r\n" + plain_auth + "\r\n" + utf8_message);
    CHECK(trace_of(c).find(" with UTF8SMTPSA id ") != std::string::npos);
  }
}

TEST_CASE("a recipient domain that is no IDNA name gets 550 5.1.2") {
  test_connection c({}, munich());
  c.send(
      "EHLO c\r\nMAIL FROM:<a@example.com> SMTPUTF8\r\n"
      "RCPT TO:<alice@\xE2\x98\x83.example>\r\nRCPT TO:<alice@xn--a.example>\r\n"
      "RCPT TO:<alice@muenchen.example>\r\nRCPT TO:<alice@M\xC3\x9CNCHEN.example>\r\n");
  std::string replies = c.take();
  // Replies stay ASCII: a UTF-8 address in one is escaped.
  CHECK(replies.find("550 5.1.2 Bad destination domain: <alice@\\xe2\\x98\\x83.example>\r\n"
                     "550 5.1.2 Bad destination domain: <alice@xn--a.example>\r\n"
                     "550 5.7.1 Relaying denied: <alice@muenchen.example>\r\n"
                     "250 2.1.5 Ok\r\n") != std::string::npos);
}
