#include <doctest/doctest.h>

#include <memory>
#include <string>
#include <vector>

#include "harness.hpp"
#include "inboxd/sinks.hpp"
#include "proto/settings.hpp"

using namespace inboxd;
using inboxd::test::memory_sink;
using mode = memory_sink::commit_mode;

namespace {

// What the session would see: writable() calls and the committed outcomes.
struct recorder final : delivery_listener {
  int writables = 0;
  int commits = 0;
  std::vector<store_result> results;
  std::vector<std::string> replies;
  void writable() noexcept override { ++writables; }
  void committed(std::span<const store_outcome> per_recipient) noexcept override {
    ++commits;
    for (const store_outcome& o : per_recipient) {
      results.push_back(o.result);
      replies.emplace_back(o.reply);
    }
  }
};

// A hop (first) and a local store (second) behind one tee, and a message
// for two recipients.
struct tee_fixture {
  std::shared_ptr<memory_sink> hop = std::make_shared<memory_sink>();
  std::shared_ptr<memory_sink> local = std::make_shared<memory_sink>();
  std::unique_ptr<sink> tee = make_tee_sink(hop, local);
  std::vector<recipient> rcpts = std::vector<recipient>(2);
  recorder listener;

  delivery* begin(bool independent = false) {
    rcpts[0].address = "a@ex.org";
    rcpts[1].address = "b@ex.org";
    envelope env;
    env.queue_id = "Q1";
    env.recipients = rcpts;
    env.independent_outcomes = independent;
    return tee->begin(env, listener);
  }
};

}  // namespace

TEST_CASE("tee: both sides get every byte; the hop commits first, then the local store") {
  tee_fixture t;
  t.hop->mode = mode::later;
  t.local->mode = mode::later;
  t.hop->reply = "250 2.0.0 Ok: queued as 4AbC";
  delivery* d = t.begin();
  CHECK(d->write("Received: x\n"));
  CHECK(d->write("Subject: t\n\nhi\n"));
  d->commit();
  REQUIRE(t.hop->commit_pending());
  CHECK_FALSE(t.local->commit_pending());  // Nothing is stored before the hop took it.
  t.hop->complete();
  REQUIRE(t.local->commit_pending());
  CHECK(t.listener.commits == 0);
  t.local->complete();
  CHECK(t.listener.commits == 1);
  CHECK(t.listener.results == std::vector{store_result::stored, store_result::stored});
  CHECK(t.listener.replies[0] == "250 2.0.0 Ok: queued as 4AbC");  // The hop's reply, copied.
  CHECK(t.hop->messages[0].bytes == "Received: x\nSubject: t\n\nhi\n");
  CHECK(t.local->messages[0].bytes == t.hop->messages[0].bytes);
  CHECK(t.local->messages[0].committed);
}

TEST_CASE("tee: a hop that refuses leaves no local copy and its reply is the answer") {
  tee_fixture t;
  t.hop->results = {store_result::permanent_fail};
  t.hop->reply = "550 5.1.1 <a@ex.org>: unknown user";
  delivery* d = t.begin();
  d->write("Subject: t\n\nhi\n");
  d->commit();
  CHECK(t.listener.commits == 1);
  CHECK(t.listener.results ==
        std::vector{store_result::permanent_fail, store_result::permanent_fail});
  CHECK(t.listener.replies[0] == "550 5.1.1 <a@ex.org>: unknown user");
  CHECK(t.local->messages[0].aborted);
  CHECK_FALSE(t.local->messages[0].committed);
}

TEST_CASE("tee: over LMTP a hop that took only some recipients drops the local copy whole") {
  tee_fixture t;
  t.hop->results = {store_result::stored, store_result::temporary_fail};
  delivery* d = t.begin(true);
  d->write("x\n");
  d->commit();
  CHECK(t.listener.results == std::vector{store_result::stored, store_result::temporary_fail});
  CHECK(t.local->messages[0].aborted);
}

TEST_CASE("tee: a local store that fails after the hop took it: the worse outcome wins") {
  tee_fixture t;
  t.hop->reply = "250 2.0.0 Ok";
  t.local->results = {store_result::stored, store_result::no_space};
  delivery* d = t.begin();
  d->write("x\n");
  d->commit();
  CHECK(t.listener.commits == 1);
  CHECK(t.listener.results == std::vector{store_result::stored, store_result::no_space});
  CHECK(t.listener.replies == std::vector<std::string>{"250 2.0.0 Ok", ""});
}

TEST_CASE("tee: write() pauses while either side does; writable() once both drained") {
  tee_fixture t;
  t.hop->pause_from_write = 1;
  t.local->pause_from_write = 2;
  delivery* d = t.begin();
  CHECK_FALSE(d->write("one\n"));  // The hop is full.
  t.hop->resume();
  CHECK(t.listener.writables == 1);
  t.hop->pause_from_write = 2;
  CHECK_FALSE(d->write("two\n"));  // Now both are full.
  CHECK_FALSE(t.hop->wrote_while_paused);
  CHECK(t.listener.writables == 1);
  t.local->resume();
  CHECK(t.listener.writables == 1);  // The hop has not drained yet.
  t.hop->resume();
  CHECK(t.listener.writables == 2);
  d->abort();
}

TEST_CASE("tee: abort() before or during the commit reaches both sides, and nothing calls back") {
  tee_fixture t;
  delivery* d = t.begin();
  d->write("x\n");
  d->abort();
  CHECK(t.hop->messages[0].aborted);
  CHECK(t.local->messages[0].aborted);

  tee_fixture u;
  u.hop->mode = mode::later;
  d = u.begin();
  d->write("x\n");
  d->commit();
  d->abort();  // The client went away while the hop was busy.
  CHECK(u.hop->messages[0].aborted);
  CHECK(u.local->messages[0].aborted);
  CHECK(u.listener.commits == 0);
}

TEST_CASE("tee: a side that throws at begin() leaves the other aborted") {
  tee_fixture t;
  t.local->throws = memory_sink::throw_at::begin;
  CHECK_THROWS(t.begin());
  REQUIRE(t.hop->messages.size() == 1);
  CHECK(t.hop->messages[0].aborted);
}

TEST_CASE("tee: through a session, the hop's refusal reaches the client") {
  test::test_connection c;
  auto local = std::make_shared<memory_sink>();
  auto hop = std::make_shared<memory_sink>();
  hop->results = {store_result::permanent_fail};
  hop->reply = "554 5.7.1 the program said no";
  auto next = std::make_shared<proto::settings>(*c.settings);
  next->store = make_tee_sink(hop, local);
  c.settings = next;  // The session takes it at its next transaction.
  c.send("EHLO x\r\nMAIL FROM:<s@ex.net>\r\nRCPT TO:<a@ex.org>\r\nDATA\r\n");
  c.send("Subject: t\r\n\r\nhi\r\n.\r\n");
  auto lines = test::reply_lines(c.take());
  REQUIRE_FALSE(lines.empty());
  CHECK(lines.back() == "554 5.7.1 the program said no");
  REQUIRE(local->messages.size() == 1);
  CHECK(local->messages[0].aborted);
  CHECK_FALSE(local->messages[0].committed);
}
