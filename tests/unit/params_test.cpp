// The ESMTP parameters of issue 11: LIMITS (RFC 9422), REQUIRETLS (RFC 8689)
// and the DSN parameters (RFC 3461), with their xtext. The replies of each
// parameter are also in tests/transcripts (limits_*, requiretls_*, dsn_*).
#include <doctest/doctest.h>

#include <algorithm>
#include <charconv>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
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

// A sink that keeps the envelope of each message and stores at once; with
// dsn set it declares that it carries DSN on (a hand-off sink would).
class envelope_sink final : public sink {
 public:
  struct kept {
    std::string reverse_path;
    std::vector<recipient> recipients;
    bool requiretls = false;
    std::string body;
    dsn_ret ret = dsn_ret::none;
    std::string envid;
  };
  explicit envelope_sink(bool dsn) : dsn_(dsn) {}
  delivery* begin(const envelope& env, delivery_listener& listener) override {
    messages.push_back({std::string(env.reverse_path),
                        {env.recipients.begin(), env.recipients.end()},
                        env.requiretls,
                        {},
                        env.ret,
                        std::string(env.envid)});
    deliveries_.push_back(std::make_unique<one>(*this, messages.size() - 1, listener));
    return deliveries_.back().get();
  }
  bool carries_dsn() const noexcept override { return dsn_; }
  std::vector<kept> messages;

 private:
  class one final : public delivery {
   public:
    one(envelope_sink& s, std::size_t i, delivery_listener& l) : sink_(s), i_(i), listener_(l) {}
    bool write(std::string_view bytes) override {
      sink_.messages[i_].body += bytes;
      return true;
    }
    void commit() override {
      std::vector<store_outcome> all(sink_.messages[i_].recipients.size());
      listener_.committed(all);
    }
    void abort() noexcept override {}

   private:
    envelope_sink& sink_;
    std::size_t i_;
    delivery_listener& listener_;
  };
  bool dsn_;
  std::vector<std::unique_ptr<one>> deliveries_;
};

// One session over an envelope_sink, fed whole lines.
struct envelope_session {
  explicit envelope_session(bool dsn = false, bool tls = false, recipient_rules rules = {},
                            session_config cfg = {})
      : store(std::make_shared<envelope_sink>(dsn)),
        settings(make(std::move(cfg), std::move(rules), store)),
        session(settings, events, ids, "192.0.2.1") {
    session.start();
    // As after a STARTTLS handshake (the session starts over inside TLS).
    if (tls) session.tls_started("TLSv1.3 with cipher TLS-AES-128-GCM-SHA256");
    (void)take();
  }
  static proto::settings_ptr make(session_config cfg, recipient_rules rules,
                                  std::shared_ptr<sink> store) {
    auto s = std::make_shared<proto::settings>();
    s->limits = std::move(cfg);
    s->policy = make_rules_policy(std::move(rules));
    s->store = std::move(store);
    return s;
  }
  // Sends the lines (CRLF added to each) and returns the reply lines.
  std::vector<std::string> send(std::initializer_list<std::string_view> lines) {
    std::string in;
    for (auto l : lines) (in += l) += "\r\n";
    std::size_t used = session.feed(std::span<char>(in.data(), in.size()));
    CHECK(used == in.size());
    return test::reply_lines(take());
  }
  std::string take() { return std::exchange(session.output(), {}); }
  // The log line of the last message.
  std::string message_log() const {
    for (auto it = events.log.rbegin(); it != events.log.rend(); ++it)
      if (it->starts_with("id=")) return *it;
    return {};
  }

  std::shared_ptr<envelope_sink> store;
  proto::settings_ptr settings;
  test::event_recorder events;
  proto::queue_id_source ids{0x12345678, 0x4242};
  proto::session session;
};

bool has_line(const std::vector<std::string>& lines, std::string_view want) {
  return std::find(lines.begin(), lines.end(), want) != lines.end();
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

TEST_CASE("REQUIRETLS: offered only inside TLS, kept in the envelope and logged") {
  SUBCASE("plaintext: not offered, refused with 530 5.7.10") {
    envelope_session c;
    CHECK_FALSE(has_line(c.send({"EHLO client.example"}), "250-REQUIRETLS"));
    CHECK(c.send({"MAIL FROM:<a@example.com> REQUIRETLS"}) ==
          std::vector<std::string>{"530 5.7.10 REQUIRETLS needs a TLS session"});
  }
  SUBCASE("inside TLS: offered, kept, logged") {
    envelope_session c(false, true);
    CHECK(has_line(c.send({"EHLO client.example"}), "250-REQUIRETLS"));
    CHECK(c.send({"MAIL FROM:<a@example.com> REQUIRETLS=1"}) ==
          std::vector<std::string>{"501 5.5.4 Bad parameter value: REQUIRETLS"});
    CHECK(c.send({"MAIL FROM:<a@example.com> REQUIRETLS requiretls"}) ==
          std::vector<std::string>{"501 5.5.4 Repeated parameter: REQUIRETLS"});
    auto r = c.send(
        {"MAIL FROM:<a@example.com> RequireTLS", "RCPT TO:<b@example.com>", "DATA", "hi", "."});
    REQUIRE(r.size() == 4);
    CHECK(r[0] == "250 2.1.0 Ok");
    CHECK(r[3].starts_with("250 2.0.0 Ok: queued as "));
    REQUIRE(c.store->messages.size() == 1);
    CHECK(c.store->messages[0].requiretls);
    CHECK(c.message_log().find(" requiretls=yes ") != std::string::npos);
    // The next message, without it, has it neither in its envelope nor in its log line.
    c.send({"MAIL FROM:<a@example.com>", "RCPT TO:<b@example.com>", "DATA", "hi", "."});
    REQUIRE(c.store->messages.size() == 2);
    CHECK_FALSE(c.store->messages[1].requiretls);
    CHECK(c.message_log().find("requiretls") == std::string::npos);
  }
}

// xtext (RFC 3461 4) and the DSN parameter values.

TEST_CASE("xtext: every octet decodes from its +XX, and encoding gives it back") {
  static constexpr char hex[] = "0123456789ABCDEF";
  for (int b = 0; b < 256; ++b) {
    INFO("octet ", b);
    std::string text = std::string("a+") + hex[b >> 4] + hex[b & 15] + "z", out;
    REQUIRE(proto::xtext_decode(text, out));
    CHECK(out == std::string("a") + static_cast<char>(b) + "z");
    std::string encoded;
    proto::xtext_encode(out, encoded);
    bool literal = b >= 33 && b <= 126 && b != '+' && b != '=';
    CHECK(encoded == (literal ? std::string("a") + static_cast<char>(b) + "z" : text));
    std::string back;
    REQUIRE(proto::xtext_decode(encoded, back));
    CHECK(back == out);
  }
}

TEST_CASE("xtext: what is not xtext is refused") {
  std::string out;
  CHECK(proto::xtext_decode("", out));
  CHECK(out.empty());
  CHECK(proto::xtext_decode("plain!~text", out));
  CHECK(out == "plain!~text");
  const std::string_view bads[] = {
      "+",    "a+",  "a+4", "+4",  "+G0",  "+0G",  "+2b",  "+a0",
      "+-1",  "+ 1", "a=b", "a b", "a\tb", "\x7f", "\x80", std::string_view("a\0b", 3),
      "++2B", "+2B+"};
  for (std::string_view bad : bads) {
    INFO("xtext ", test::printable(bad));
    CHECK_FALSE(proto::xtext_decode(bad, out));
  }
}

TEST_CASE("NOTIFY: NEVER alone, or SUCCESS, FAILURE, DELAY") {
  CHECK(proto::parse_notify("NEVER") == dsn_notify::never);
  CHECK(proto::parse_notify("never") == dsn_notify::never);
  CHECK(proto::parse_notify("SUCCESS") == dsn_notify::success);
  CHECK(proto::parse_notify("Failure,delay") == (dsn_notify::failure | dsn_notify::delay));
  CHECK(proto::parse_notify("DELAY,SUCCESS,FAILURE") ==
        (dsn_notify::success | dsn_notify::failure | dsn_notify::delay));
  for (std::string_view bad : {"", "NEVER,SUCCESS", "SUCCESS,NEVER", "SUCCESS,", ",SUCCESS",
                               "SUCCESS,,DELAY", "ALWAYS", "SUCCESS FAILURE"})
    CHECK_MESSAGE(proto::parse_notify(bad) == 0, bad);
}

TEST_CASE("ORCPT: addr-type ; xtext, printable once decoded, at most 500 characters") {
  std::string type, address;
  REQUIRE(proto::parse_orcpt("RFC822;a+2Bb@example.com", type, address));
  CHECK(type == "rfc822");
  CHECK(address == "a+b@example.com");
  REQUIRE(proto::parse_orcpt("utf-8;x+20y", type, address));
  CHECK(type == "utf-8");
  CHECK(address == "x y");
  std::string longest = "rfc822;" + std::string(493, 'a');
  CHECK(proto::parse_orcpt(longest, type, address));
  CHECK_FALSE(proto::parse_orcpt(longest + "a", type, address));
  for (std::string_view bad : {"rfc822", ";a@b", "rfc822;", "rfc(822;a@b", "rfc822;a+0Ab",
                               "rfc822;a+00b", "rfc822;a+7Fb", "rfc822;a+C3+A9", "rfc822;a+2"})
    CHECK_FALSE_MESSAGE(proto::parse_orcpt(bad, type, address), bad);
}

TEST_CASE("ENVID: xtext, printable once decoded, at most 100 characters") {
  std::string out;
  CHECK(proto::parse_envid("QQ+2B314159", out));
  CHECK(out == "QQ+314159");
  CHECK(proto::parse_envid(std::string(100, 'x'), out));
  CHECK_FALSE(proto::parse_envid(std::string(101, 'x'), out));
  for (std::string_view bad : {"", "+20+0D+0A", "a+00", "a+2", "a+zz"})
    CHECK_FALSE_MESSAGE(proto::parse_envid(bad, out), bad);
  CHECK(proto::parse_envid("+20", out));  // a space is printable
}

// DSN in the session.

namespace {

recipient_rules team_rules() {
  recipient_rules rules;
  rules.domains.push_back({"example.com", {"alice", "bob", "carol"}, {{"team", {"alice", "bob"}}}});
  return rules;
}

}  // namespace

TEST_CASE("DSN is offered only where the sink carries it on (or accept_dsn)") {
  for (bool dsn : {false, true}) {
    INFO("sink carries DSN: ", dsn);
    envelope_session c(dsn);
    CHECK(has_line(c.send({"EHLO client.example"}), "250-DSN") == dsn);
    auto r = c.send({"MAIL FROM:<a@example.com> RET=HDRS ENVID=x",
                     "RCPT TO:<b@example.com> "
                     "NOTIFY=NEVER",
                     "RCPT TO:<c@example.com> ORCPT=rfc822;c@example.com"});
    if (dsn) {
      CHECK(r == std::vector<std::string>{"250 2.1.0 Ok", "250 2.1.5 Ok", "250 2.1.5 Ok"});
    } else {
      CHECK(r == std::vector<std::string>{"555 5.5.4 Unsupported option: RET",
                                          "503 5.5.1 Error: need MAIL command",
                                          "503 5.5.1 Error: need MAIL command"});
      CHECK(c.send({"MAIL FROM:<a@example.com>", "RCPT TO:<b@example.com> NOTIFY=NEVER",
                    "RCPT TO:<c@example.com> ORCPT=rfc822;c@example.com"}) ==
            std::vector<std::string>{"250 2.1.0 Ok", "555 5.5.4 Unsupported option: NOTIFY",
                                     "555 5.5.4 Unsupported option: ORCPT"});
    }
  }
  session_config cfg;
  cfg.accept_dsn = true;
  envelope_session c(false, false, {}, cfg);
  CHECK(has_line(c.send({"EHLO client.example"}), "250-DSN"));
}

TEST_CASE("DSN: the envelope keeps RET and ENVID, and each mailbox its RCPT's NOTIFY and ORCPT") {
  envelope_session c(true, false, team_rules());
  c.send({"EHLO client.example"});
  auto r =
      c.send({"MAIL FROM:<a@example.com> RET=FULL ENVID=env+2Bid",
              "RCPT TO:<team@example.com> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;list+40x",
              "RCPT TO:<bob@example.com> NOTIFY=NEVER",  // bob has his copy from team
              "RCPT TO:<carol@example.com> ORCPT=RFC822;Carol@Example.COM", "DATA", "hi", "."});
  REQUIRE(r.size() == 6);
  CHECK(r[5].starts_with("250 2.0.0 Ok: queued as "));
  REQUIRE(c.store->messages.size() == 1);
  const auto& m = c.store->messages[0];
  CHECK(m.ret == dsn_ret::full);
  CHECK(m.envid == "env+id");
  REQUIRE(m.recipients.size() == 3);
  for (std::size_t i : {0, 1}) {
    INFO("mailbox ", m.recipients[i].user);
    CHECK(m.recipients[i].address == "team@example.com");
    CHECK(m.recipients[i].notify == (dsn_notify::success | dsn_notify::failure));
    CHECK(m.recipients[i].orcpt_type == "rfc822");
    CHECK(m.recipients[i].orcpt == "list@x");
  }
  CHECK(m.recipients[0].user == "alice");
  CHECK(m.recipients[1].user == "bob");  // the first RCPT's parameters stay
  CHECK(m.recipients[2].user == "carol");
  CHECK(m.recipients[2].notify == 0);
  CHECK(m.recipients[2].orcpt_type == "rfc822");
  CHECK(m.recipients[2].orcpt == "Carol@Example.COM");
  std::string line = c.message_log();
  CHECK(line.find(" ret=FULL envid=env+2Bid notify=<team@example.com>:SUCCESS,FAILURE "
                  "orcpt=<team@example.com>:rfc822;list@x orcpt=<carol@example.com>:rfc822;"
                  "Carol@Example.COM size=") != std::string::npos);
  // Nothing of it stays for the next message.
  c.send({"MAIL FROM:<a@example.com>", "RCPT TO:<carol@example.com>", "DATA", "hi", "."});
  REQUIRE(c.store->messages.size() == 2);
  const auto& n = c.store->messages[1];
  CHECK(n.ret == dsn_ret::none);
  CHECK(n.envid.empty());
  CHECK(n.recipients[0].notify == 0);
  CHECK(n.recipients[0].orcpt_type.empty());
  CHECK(c.message_log().find("orcpt") == std::string::npos);
}

TEST_CASE("DSN parameters are the same whole and dribbled") {
  std::string bytes =
      "EHLO c.example\r\nMAIL FROM:<a@example.com> RET=HDRS ENVID=+2B+2B\r\n"
      "RCPT TO:<b@example.com> ORCPT=rfc822;x+2By@example.com NOTIFY=DELAY\r\n"
      "RCPT TO:<c@example.com> NOTIFY=NEVER,DELAY\r\nDATA\r\nhi\r\n.\r\n";
  test::same_when_dribbled(bytes, [&](const std::vector<std::string_view>& pieces) {
    envelope_session c(true);
    std::string in, replies;
    for (auto piece : pieces) {
      in += piece;
      in.erase(0, c.session.feed(std::span<char>(in.data(), in.size())));
      replies += c.take();
    }
    std::string seen = replies;
    for (const auto& m : c.store->messages)
      for (const auto& r : m.recipients)
        seen += r.address + " " + std::to_string(r.notify) + " " + r.orcpt_type + ";" + r.orcpt +
                " " + m.envid + "\n";
    return seen;
  });
}

TEST_CASE("X-Original-To: the rfc822 ORCPT of one RCPT, when it differs from the address") {
  std::vector<recipient> rs(2);
  rs[0] = {"team@example.com", "alice", "example.com", dsn_notify::never, "rfc822", "old@x"};
  rs[1] = {"team@example.com", "bob", "example.com", dsn_notify::never, "rfc822", "old@x"};
  envelope env;
  env.recipients = rs;
  CHECK(original_recipient(env) == "old@x");
  rs[1].address = "bob@example.com";  // two RCPTs: nobody sees another's original address
  CHECK(original_recipient(env).empty());
  rs.resize(1);
  env.recipients = rs;
  CHECK(original_recipient(env) == "old@x");
  rs[0].orcpt = "team@example.com";  // the same as the RCPT address
  CHECK(original_recipient(env).empty());
  rs[0].orcpt = "old@x";
  rs[0].orcpt_type = "utf-8";  // only rfc822 addresses
  CHECK(original_recipient(env).empty());
  rs[0].orcpt_type.clear();
  rs[0].orcpt.clear();
  CHECK(original_recipient(env).empty());
  env.recipients = {};
  CHECK(original_recipient(env).empty());
}
