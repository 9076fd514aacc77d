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
  };
  explicit envelope_sink(bool dsn) : dsn_(dsn) {}
  delivery* begin(const envelope& env, delivery_listener& listener) override {
    messages.push_back({std::string(env.reverse_path),
                        {env.recipients.begin(), env.recipients.end()},
                        env.requiretls,
                        {}});
    deliveries_.push_back(std::make_unique<one>(*this, messages.size() - 1, listener));
    return deliveries_.back().get();
  }
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
  [[maybe_unused]] bool dsn_;
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
