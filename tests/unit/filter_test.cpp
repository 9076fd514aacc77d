// Filters (inboxd/filter.hpp) as the session asks them: at every stage, in
// order, answering at once or later; their refusals reach the client as
// their own replies (escaped, of the right class); PREPEND, discard and a
// refusal at the end of the message; and a next hop's reply in
// store_outcome::reply passed through to the client.
#include <doctest/doctest.h>

#include <initializer_list>
#include <memory>
#include <string>
#include <vector>

#include "harness.hpp"

using namespace inboxd;
using inboxd::test::memory_sink;
using inboxd::test::test_connection;

namespace {

// A filter that answers by rules, at once or when the test says.
class fake_filter final : public filter {
 public:
  struct rule {
    filter_stage stage;
    std::string match = {};  // the recipient, the sender or the HELO name; empty: any
    filter_action action = filter_action::proceed;
    std::string reply = {}, prepend = {}, note = {};
  };
  std::vector<rule> rules;
  bool later = false;  // answers wait for answer()
  // message(): at commit, fail every mailbox with this reply (empty: no
  // message() of its own).
  std::string refuse_message;
  store_result refusal = store_result::permanent_fail;

  std::vector<std::string> asked;  // "connect", "helo NAME", "mail FROM", "rcpt TO N", "data"
  int resets = 0, closes = 0;
  std::vector<std::pair<filter_listener*, filter_verdict>> waiting;
  std::string client_seen;

  filter_session* open(const filter_client& client) override;

  // Gives the oldest waiting answer.
  void answer() {
    REQUIRE(!waiting.empty());
    auto [l, v] = waiting.front();
    waiting.erase(waiting.begin());
    l->filtered(v);
  }
};

// Refuses the message at its end: nothing reaches the store.
class refusing_delivery final : public delivery {
 public:
  refusing_delivery(fake_filter& f, const envelope& env, sink& next, delivery_listener& l)
      : f_(f),
        listener_(l),
        inner_(next.begin(env, *this_listener())),
        mailboxes_(env.recipients.size()) {}
  bool write(std::string_view bytes) override { return inner_->write(bytes); }
  void commit() override {
    inner_->abort();
    std::vector<store_outcome> out(mailboxes_,
                                   store_outcome{.result = f_.refusal, .reply = f_.refuse_message});
    delivery_listener& l = listener_;
    delete this;
    l.committed(out);
  }
  void abort() noexcept override {
    inner_->abort();
    delete this;
  }

 private:
  struct ignore final : delivery_listener {
    void writable() noexcept override {}
    void committed(std::span<const store_outcome>) noexcept override {}
  };
  delivery_listener* this_listener() {
    static ignore i;
    return &i;
  }
  fake_filter& f_;
  delivery_listener& listener_;
  delivery* inner_;
  std::size_t mailboxes_;
};

class fake_session final : public filter_session {
 public:
  explicit fake_session(fake_filter& f) : f_(f) {}
  void ask(filter_stage stage, const filter_state& st, filter_listener& l) override {
    std::string what;
    std::string_view key;
    switch (stage) {
      case filter_stage::connect: what = "connect"; break;
      case filter_stage::helo:
        what = "helo " + std::string(st.helo);
        key = st.helo;
        break;
      case filter_stage::mail:
        what = "mail " + std::string(st.reverse_path) + " " + std::string(st.mail_params);
        key = st.reverse_path;
        break;
      case filter_stage::rcpt:
        what = "rcpt " + std::string(st.recipient) + " " + std::to_string(st.recipients);
        key = st.recipient;
        break;
      case filter_stage::data: what = "data"; break;
    }
    f_.asked.push_back(what);
    filter_verdict v;
    for (const auto& r : f_.rules) {
      if (r.stage != stage || (!r.match.empty() && r.match != key)) continue;
      // The views point into the rule, which outlives the answer.
      v = filter_verdict{
          .action = r.action, .reply = r.reply, .prepend = r.prepend, .note = r.note};
      break;
    }
    if (f_.later)
      f_.waiting.emplace_back(&l, v);
    else
      l.filtered(v);
  }
  delivery* message(const envelope& env, sink& next, delivery_listener& l) override {
    if (f_.refuse_message.empty()) return nullptr;
    return new refusing_delivery(f_, env, next, l);
  }
  void reset() noexcept override { ++f_.resets; }
  void close() noexcept override {
    ++f_.closes;
    f_.waiting.clear();
    delete this;
  }

 private:
  fake_filter& f_;
};

filter_session* fake_filter::open(const filter_client& client) {
  client_seen = std::string(client.address) + " " + std::string(client.name);
  return new fake_session(*this);
}

// Whether some log line has every one of the texts.
bool logged(const test_connection& c, std::initializer_list<std::string_view> texts) {
  for (const auto& l : c.events.log) {
    bool all = true;
    for (auto t : texts) all = all && l.find(t) != l.npos;
    if (all) return true;
  }
  return false;
}

constexpr std::string_view ehlo_ok_tail = "250 ENHANCEDSTATUSCODES\r\n";

struct filtered_connection {
  std::shared_ptr<fake_filter> f = std::make_shared<fake_filter>();
  std::unique_ptr<test_connection> c;
  explicit filtered_connection(std::vector<fake_filter::rule> rules, bool later = false) {
    f->rules = std::move(rules);
    f->later = later;
    c = std::make_unique<test_connection>(session_config{}, recipient_rules{},
                                          std::vector<std::shared_ptr<filter>>{f});
    if (!later) {
      REQUIRE(c->take() == "220 localhost ESMTP inboxd\r\n");
      c->send("EHLO client.example\r\n");
      std::string r = c->take();
      REQUIRE(r.ends_with(ehlo_ok_tail));
    }
  }
};

}  // namespace

TEST_CASE("filters: asked at every stage, in order, with what the session knows") {
  filtered_connection fc({});
  test_connection& c = *fc.c;
  c.send(
      "MAIL FROM:<a@example.com> SIZE=100\r\nRCPT TO:<b@example.com>\r\n"
      "RCPT TO:<c@example.com>\r\nDATA\r\nSubject: x\r\n\r\nhi\r\n.\r\n");
  std::string r = c.take();
  CHECK(r.find("250 2.0.0 Ok: queued as") != r.npos);
  CHECK(fc.f->client_seen == "192.0.2.1 unknown");
  CHECK(fc.f->asked ==
        std::vector<std::string>{"connect", "helo client.example", "mail a@example.com SIZE=100",
                                 "rcpt b@example.com 0", "rcpt c@example.com 1", "data"});
  REQUIRE(c.sink.messages.size() == 1);
  CHECK(c.sink.messages[0].committed);
  CHECK(fc.f->resets == 1);  // The end of the message ends the transaction.
  c.send("RSET\r\n");
  CHECK(fc.f->resets == 1);  // No transaction was open.
  c.send("MAIL FROM:<a@example.com>\r\nRSET\r\n");
  CHECK(fc.f->resets == 2);
}

TEST_CASE("filters: a refusal at RCPT is the filter's reply; the others go on") {
  filtered_connection fc({{.stage = filter_stage::rcpt,
                           .match = "bad@example.com",
                           .action = filter_action::reject,
                           .reply = "550 5.7.1 <bad@example.com>: go away",
                           .note = "policy: REJECT go away"}});
  test_connection& c = *fc.c;
  c.send(
      "MAIL FROM:<a@example.com>\r\nRCPT TO:<bad@example.com>\r\nRCPT TO:<ok@example.com>\r\n"
      "DATA\r\nhi\r\n.\r\n");
  auto lines = inboxd::test::reply_lines(c.take());
  REQUIRE(lines.size() == 5);
  CHECK(lines[1] == "550 5.7.1 <bad@example.com>: go away");
  CHECK(lines[2] == "250 2.1.5 Ok");
  REQUIRE(c.sink.messages.size() == 1);
  CHECK(c.sink.messages[0].recipients == std::vector<std::string>{"ok@example.com"});
  CHECK(logged(c, {"refused: 550 5.7.1 <bad@example.com>"}));
}

TEST_CASE("filters: a reply that is not of the verdict's class, or not a reply, is ours") {
  auto first_rcpt_reply = [](std::string reply, filter_action action) {
    filtered_connection fc({{.stage = filter_stage::rcpt, .action = action, .reply = reply}});
    fc.c->send("MAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.com>\r\n");
    return inboxd::test::reply_lines(fc.c->take()).at(1);
  };
  CHECK(first_rcpt_reply("250 2.0.0 fine", filter_action::reject) == "550 5.7.1 Command rejected");
  CHECK(first_rcpt_reply("", filter_action::tempfail) ==
        "451 4.7.1 Service unavailable - try again later");
  CHECK(first_rcpt_reply("554 no enhanced code", filter_action::reject) ==
        "554 5.7.1 no enhanced code");
  CHECK(first_rcpt_reply("550 5.7.1 caf\xc3\xa9\r\n550 second line", filter_action::reject) ==
        "550 5.7.1 caf\\xc3\\xa9");
  CHECK(first_rcpt_reply("451 5.7.1 wrong class of enhanced code", filter_action::tempfail) ==
        "451 4.7.1 5.7.1 wrong class of enhanced code");
  // A 421 would close this channel for a reason that was another's.
  CHECK(first_rcpt_reply("421 4.3.2 going down", filter_action::tempfail) ==
        "451 4.3.2 going down");
  CHECK(first_rcpt_reply("5x0 nonsense", filter_action::reject) == "550 5.7.1 Command rejected");
}

TEST_CASE("filters: a temporary refusal at MAIL opens no transaction") {
  filtered_connection fc({{.stage = filter_stage::mail,
                           .action = filter_action::tempfail,
                           .reply = "450 4.2.0 greylisted, try later"}});
  test_connection& c = *fc.c;
  c.send("MAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.com>\r\n");
  auto lines = inboxd::test::reply_lines(c.take());
  REQUIRE(lines.size() == 2);
  CHECK(lines[0] == "450 4.2.0 greylisted, try later");
  CHECK(lines[1].starts_with("503 5.5.1"));
  CHECK(fc.f->resets == 1);  // The filter heard of MAIL: it forgets it.
}

TEST_CASE("filters: refused at connect: 554, then 503 to all but QUIT; deferred: 421") {
  {
    filtered_connection fc({{.stage = filter_stage::connect,
                             .action = filter_action::reject,
                             .reply = "550 5.7.1 you are listed"}},
                           true);
    test_connection& c = *fc.c;
    CHECK(c.session.waiting());
    CHECK(c.take().empty());  // The greeting waits for the filter.
    fc.f->answer();
    CHECK(c.take() == "554 5.7.1 you are listed\r\n");
    c.send("EHLO x\r\nMAIL FROM:<a@b>\r\nQUIT\r\n");
    auto lines = inboxd::test::reply_lines(c.take());
    REQUIRE(lines.size() == 3);
    CHECK(lines[0].starts_with("503 5.5.1"));
    CHECK(lines[1].starts_with("503 5.5.1"));
    CHECK(lines[2].starts_with("221"));
  }
  {
    filtered_connection fc({{.stage = filter_stage::connect, .action = filter_action::tempfail}},
                           true);
    fc.f->answer();
    CHECK(fc.c->take() == "421 4.7.1 Service unavailable - try again later\r\n");
    CHECK(fc.c->session.closing());
  }
}

TEST_CASE("filters: later answers keep pipelined replies in order") {
  filtered_connection fc(
      {{.stage = filter_stage::rcpt, .match = "no@example.com", .action = filter_action::reject}},
      true);
  test_connection& c = *fc.c;
  fc.f->answer();  // connect
  CHECK(c.take() == "220 localhost ESMTP inboxd\r\n");
  c.send(
      "EHLO client.example\r\nMAIL FROM:<a@example.com>\r\nRCPT TO:<no@example.com>\r\n"
      "RCPT TO:<yes@example.com>\r\nDATA\r\nhi\r\n.\r\nQUIT\r\n");
  std::string all;
  for (int i = 0; i < 5; ++i) {
    CHECK(c.session.waiting());
    all += c.take();
    fc.f->answer();  // helo, mail, rcpt, rcpt, data; each feeds what follows
  }
  all += c.take();
  auto lines = inboxd::test::reply_lines(all);
  REQUIRE(lines.size() >= 6);
  CHECK(lines.back() == "221 2.0.0 Bye");
  CHECK(all.find("250 2.1.0 Ok\r\n550 5.7.1 Command rejected\r\n250 2.1.5 Ok\r\n354 ") != all.npos);
  REQUIRE(c.sink.messages.size() == 1);
  CHECK(c.sink.messages[0].recipients == std::vector<std::string>{"yes@example.com"});
}

TEST_CASE("filters: PREPEND goes above the Received header; a malformed one is dropped") {
  filtered_connection fc({{.stage = filter_stage::rcpt,
                           .match = "b@example.com",
                           .prepend = "X-Greylist: delayed 60 seconds"},
                          {.stage = filter_stage::rcpt,
                           .match = "c@example.com",
                           .prepend = "Not a header\r\nInjected: yes"}});
  test_connection& c = *fc.c;
  c.send(
      "MAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.com>\r\nRCPT TO:<c@example.com>\r\n"
      "DATA\r\nSubject: x\r\n\r\nhi\r\n.\r\n");
  REQUIRE(c.sink.messages.size() == 1);
  const std::string& m = c.sink.messages[0].bytes;
  CHECK(m.starts_with("X-Greylist: delayed 60 seconds\nReceived: from client.example"));
  CHECK(m.find("Injected") == m.npos);
}

TEST_CASE("filters: discard claims delivery and stores nothing") {
  filtered_connection fc(
      {{.stage = filter_stage::rcpt, .action = filter_action::discard, .note = "milter: discard"}});
  test_connection& c = *fc.c;
  c.send("MAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.com>\r\nDATA\r\nhi\r\n.\r\n");
  std::string r = c.take();
  CHECK(r.find("250 2.0.0 Ok: queued as") != r.npos);
  CHECK(c.sink.messages.empty());
  CHECK(logged(c, {"status=discarded", "filters=(milter: discard)"}));
}

TEST_CASE("filters: a refusal at the end of the message is its reply; nothing is stored") {
  filtered_connection fc({});
  fc.f->refuse_message = "554 5.7.1 Message looks like spam";
  test_connection& c = *fc.c;
  c.send("MAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.com>\r\nDATA\r\nbuy now\r\n.\r\n");
  auto lines = inboxd::test::reply_lines(c.take());
  REQUIRE(lines.size() == 4);
  CHECK(lines[3] == "554 5.7.1 Message looks like spam");
  REQUIRE(c.sink.messages.size() == 1);
  CHECK(c.sink.messages[0].aborted);
  CHECK(!c.sink.messages[0].committed);
  CHECK(logged(c, {"status=bounced (554 5.7.1 Message looks like spam)"}));
}

TEST_CASE("filters: over LMTP each recipient gets the refusal; BDAT is asked as DATA") {
  auto f = std::make_shared<fake_filter>();
  f->refuse_message = "451 4.7.1 later";
  f->refusal = store_result::temporary_fail;
  test_connection c(session_config{}, recipient_rules{}, {f});
  c.restart_as_lmtp();
  c.send(
      "LHLO x\r\nMAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.com>\r\n"
      "RCPT TO:<c@example.com>\r\nBDAT 4 LAST\r\nhi\r\n");
  auto lines = inboxd::test::reply_lines(c.take());
  REQUIRE(lines.size() >= 2);
  CHECK(lines[lines.size() - 1] == "451 4.7.1 later");
  CHECK(lines[lines.size() - 2] == "451 4.7.1 later");
  CHECK(f->asked.back() == "data");
}

TEST_CASE("filters: a refused first BDAT reads its octets and keeps the stream in step") {
  filtered_connection fc({{.stage = filter_stage::data,
                           .action = filter_action::reject,
                           .reply = "554 5.7.1 no data for you"}});
  test_connection& c = *fc.c;
  c.send(
      "MAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.com>\r\nBDAT 6\r\nRSET\r\n"
      "BDAT 2 LAST\r\nhiNOOP\r\n");
  auto lines = inboxd::test::reply_lines(c.take());
  REQUIRE(lines.size() == 5);
  CHECK(lines[2] == "554 5.7.1 no data for you");
  CHECK(lines[3].starts_with("503 5.5.1"));  // Refused until RSET or LAST, as RFC 3030 2 says.
  CHECK(lines[4] == "250 2.0.0 Ok");
  CHECK(c.sink.messages.empty());
}

TEST_CASE("filters: disconnect ends the session with 421; close() at the end") {
  auto f = std::make_shared<fake_filter>();
  f->rules = {{.stage = filter_stage::helo, .action = filter_action::disconnect}};
  {
    test_connection c(session_config{}, recipient_rules{}, {f});
    (void)c.take();
    c.send("EHLO x\r\nMAIL FROM:<a@b>\r\n");
    CHECK(c.take() == "421 4.7.0 Service closing transmission channel\r\n");
    CHECK(c.session.closing());
  }
  CHECK(f->closes == 1);
}

TEST_CASE("a next hop's reply reaches the client when it is one; its text goes to the log") {
  test_connection c;
  (void)c.take();
  c.sink.results = {store_result::permanent_fail};
  c.sink.reply = "550 5.1.1 <b@example.com>: Recipient address rejected: User unknown";
  c.send("EHLO x\r\nMAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.com>\r\nDATA\r\nhi\r\n.\r\n");
  auto lines = inboxd::test::reply_lines(c.take());
  CHECK(lines.back() == "550 5.1.1 <b@example.com>: Recipient address rejected: User unknown");
  c.sink.results = {store_result::temporary_fail};
  c.sink.reply = "next hop: connection lost";  // No reply: ours, and the text in the log.
  c.send("MAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.com>\r\nDATA\r\nhi\r\n.\r\n");
  lines = inboxd::test::reply_lines(c.take());
  CHECK(lines.back().starts_with("451 4.3.0"));
  CHECK(logged(c, {"hop=(next hop: connection lost)"}));
  c.sink.results = {};
  c.sink.reply = "250 2.0.0 Ok: queued as ABC123";
  c.send("MAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.com>\r\nDATA\r\nhi\r\n.\r\n");
  lines = inboxd::test::reply_lines(c.take());
  CHECK(lines.back().starts_with("250 2.0.0 Ok: queued as"));
  CHECK(logged(c, {"status=sent", "hop=(250 2.0.0 Ok: queued as ABC123)"}));
}
