// The policy filter (inboxd/filters.hpp) on a libuv loop, against a policy
// server on the same loop: connections reused across sessions and closed
// when the loop ends; a session closed mid-request; END-OF-MESSAGE passing
// the bytes through and refusing before the next delivery commits. Each test
// ends with uv_loop_close() == 0.
#include <doctest/doctest.h>
#include <uv.h>

#include <memory>
#include <string>
#include <vector>

#include "inboxd/filters.hpp"

using namespace inboxd;

namespace {

// A policy server: answers each request (an empty line ends it) with
// "action=<answer>\n\n"; counts connections and requests.
struct policy_server {
  uv_loop_t* loop;
  uv_tcp_t listener{};
  std::string answer = "DUNNO";
  bool silent = false;
  int connections = 0, requests = 0;
  std::vector<std::string> seen;
  struct peer {
    uv_tcp_t tcp{};
    policy_server* server = nullptr;
    std::string in;
    char buf[4096];
  };
  std::vector<peer*> peers;

  explicit policy_server(uv_loop_t* l) : loop(l) {
    uv_tcp_init(loop, &listener);
    listener.data = this;
    sockaddr_in a{};
    uv_ip4_addr("127.0.0.1", 0, &a);
    REQUIRE(uv_tcp_bind(&listener, reinterpret_cast<const sockaddr*>(&a), 0) == 0);
    REQUIRE(uv_listen(reinterpret_cast<uv_stream_t*>(&listener), 8, accept_cb) == 0);
  }
  std::string address() {
    sockaddr_in a{};
    int n = sizeof a;
    uv_tcp_getsockname(&listener, reinterpret_cast<sockaddr*>(&a), &n);
    return "127.0.0.1:" + std::to_string(ntohs(a.sin_port));
  }
  void close() {
    uv_close(reinterpret_cast<uv_handle_t*>(&listener), nullptr);
    for (peer* p : peers) drop(p);
  }
  static void drop(peer* p) {
    if (uv_is_closing(reinterpret_cast<uv_handle_t*>(&p->tcp))) return;
    uv_close(reinterpret_cast<uv_handle_t*>(&p->tcp), [](uv_handle_t* h) {
      auto* q = static_cast<peer*>(h->data);
      std::erase(q->server->peers, q);
      delete q;
    });
  }
  static void accept_cb(uv_stream_t* s, int) {
    auto* self = static_cast<policy_server*>(s->data);
    auto* p = new peer;
    p->server = self;
    uv_tcp_init(self->loop, &p->tcp);
    p->tcp.data = p;
    uv_accept(s, reinterpret_cast<uv_stream_t*>(&p->tcp));
    self->peers.push_back(p);
    ++self->connections;
    uv_read_start(
        reinterpret_cast<uv_stream_t*>(&p->tcp),
        [](uv_handle_t* h, std::size_t, uv_buf_t* b) {
          auto* q = static_cast<peer*>(h->data);
          *b = uv_buf_init(q->buf, sizeof q->buf);
        },
        read_cb);
  }
  static void read_cb(uv_stream_t* s, ssize_t n, const uv_buf_t* b) {
    auto* p = static_cast<peer*>(s->data);
    if (n < 0) return drop(p);
    p->in.append(b->base, static_cast<std::size_t>(n));
    std::size_t end;
    while ((end = p->in.find("\n\n")) != std::string::npos) {
      policy_server& srv = *p->server;
      srv.seen.push_back(p->in.substr(0, end + 2));
      p->in.erase(0, end + 2);
      ++srv.requests;
      if (srv.silent) continue;
      auto* req = new uv_write_t;
      auto* text = new std::string("action=" + srv.answer + "\n\n");
      req->data = text;
      uv_buf_t out = uv_buf_init(text->data(), static_cast<unsigned>(text->size()));
      uv_write(req, s, &out, 1, [](uv_write_t* r, int) {
        delete static_cast<std::string*>(r->data);
        delete r;
      });
    }
  }
};

struct verdict_catcher final : filter_listener {
  int answers = 0;
  filter_action action = filter_action::proceed;
  std::string reply, note;
  void filtered(const filter_verdict& v) noexcept override {
    ++answers;
    action = v.action;
    reply = v.reply;
    note = v.note;
  }
};

// Runs the loop until done() or 5 s.
template <class Done>
void run_until(uv_loop_t* loop, Done done) {
  std::uint64_t until = uv_now(loop) + 5000;
  while (!done() && uv_now(loop) < until) uv_run(loop, UV_RUN_ONCE);
}

void ask_rcpt(filter_session& s, verdict_catcher& v, std::string_view rcpt) {
  s.ask(filter_stage::mail, {.helo = "client.example", .queue_id = "Q1", .reverse_path = "a@b"}, v);
  REQUIRE(v.answers == 1);
  v.answers = 0;
  s.ask(filter_stage::rcpt,
        {.helo = "client.example", .queue_id = "Q1", .reverse_path = "a@b", .recipient = rcpt}, v);
}

logger quiet() {
  return {[](void*, log_level, std::string_view) {}, nullptr};
}

}  // namespace

TEST_CASE("policy filter: sessions share one connection; the loop ends when it is closed") {
  uv_loop_t loop;
  uv_loop_init(&loop);
  {
    policy_server srv(&loop);
    srv.answer = "REJECT go away";
    auto f = make_policy_filter(&loop, {.address = srv.address(), .log = quiet()});
    for (int i = 0; i < 3; ++i) {
      filter_session* s = f->open({.address = "192.0.2.1", .port = 4711, .name = "unknown"});
      verdict_catcher v;
      ask_rcpt(*s, v, "b@example.com");
      run_until(&loop, [&] { return v.answers == 1; });
      CHECK(v.action == filter_action::reject);
      CHECK(v.reply == "554 5.7.1 <b@example.com>: Recipient address rejected: go away");
      CHECK(v.note.find("RCPT <b@example.com>: REJECT go away") != std::string::npos);
      s->reset();
      s->close();
    }
    CHECK(srv.connections == 1);
    CHECK(srv.requests == 3);
    CHECK(srv.seen[0].find("\nclient_address=192.0.2.1\n") != std::string::npos);
    CHECK(srv.seen[0].find("\nclient_port=4711\n") != std::string::npos);
    close_policy_connections(&loop);
    f.reset();
    srv.close();
    uv_run(&loop, UV_RUN_DEFAULT);
  }
  CHECK(uv_loop_close(&loop) == 0);
}

TEST_CASE("policy filter: a session closed while it waits, and a filter dropped before it") {
  uv_loop_t loop;
  uv_loop_init(&loop);
  {
    policy_server srv(&loop);
    srv.silent = true;
    auto f = make_policy_filter(&loop, {.address = srv.address(), .log = quiet()});
    filter_session* s = f->open({.address = "192.0.2.1"});
    verdict_catcher v;
    ask_rcpt(*s, v, "b@example.com");
    run_until(&loop, [&] { return srv.requests == 1; });
    f.reset();   // A reload dropped the filter; the session still waits.
    s->close();  // The client went away: no answer comes.
    srv.close();
    uv_run(&loop, UV_RUN_DEFAULT);
    CHECK(v.answers == 0);
  }
  CHECK(uv_loop_close(&loop) == 0);
}

namespace {

// The next delivery: records what it was given.
struct recording_sink final : sink, delivery {
  std::string bytes;
  bool began = false, committed = false, aborted = false;
  delivery_listener* l = nullptr;
  delivery* begin(const envelope&, delivery_listener& listener) override {
    began = true;
    l = &listener;
    return this;
  }
  bool write(std::string_view b) override {
    bytes += b;
    return true;
  }
  void commit() override {
    committed = true;
    store_outcome ok[2];
    l->committed(ok);
  }
  void abort() noexcept override { aborted = true; }
};

struct outcome_catcher final : delivery_listener {
  int calls = 0;
  std::vector<store_outcome> got;
  std::vector<std::string> replies;
  void writable() noexcept override {}
  void committed(std::span<const store_outcome> o) noexcept override {
    ++calls;
    got.assign(o.begin(), o.end());
    for (const auto& x : o) replies.emplace_back(x.reply);
  }
};

}  // namespace

TEST_CASE("policy filter: END-OF-MESSAGE sees the size; a refusal aborts the next delivery") {
  uv_loop_t loop;
  uv_loop_init(&loop);
  {
    policy_server srv(&loop);
    auto f = make_policy_filter(&loop, {.address = srv.address(), .at_data = true, .log = quiet()});
    filter_session* s = f->open({.address = "192.0.2.1"});
    std::vector<recipient> rcpts(2);
    rcpts[0].address = "b@x";
    rcpts[1].address = "c@x";
    envelope env{};
    env.queue_id = "Q1";
    env.reverse_path = "a@b";
    env.recipients = rcpts;
    for (std::string answer : {"OK", "REJECT 5.7.1 spam"}) {
      srv.answer = answer;
      recording_sink next;
      outcome_catcher out;
      verdict_catcher v;
      s->ask(filter_stage::data, {.queue_id = "Q1", .reverse_path = "a@b", .recipients = 2}, v);
      delivery* d = s->message(env, next, out);
      REQUIRE(d != nullptr);
      CHECK(next.began);
      CHECK(d->write("Subject: x\n\nhello\n"));
      d->commit();
      run_until(&loop, [&] { return out.calls == 1; });
      REQUIRE(out.calls == 1);
      CHECK(next.bytes == "Subject: x\n\nhello\n");
      const std::string& req = srv.seen.back();
      CHECK(req.find("\nprotocol_state=END-OF-MESSAGE\n") != std::string::npos);
      CHECK(req.find("\nrecipient_count=2\n") != std::string::npos);
      CHECK(req.find("\nsize=18\n") != std::string::npos);
      REQUIRE(out.got.size() == 2);
      if (answer == "OK") {
        CHECK(next.committed);
        CHECK(out.got[0].result == store_result::stored);
      } else {
        CHECK(next.aborted);
        CHECK(!next.committed);
        CHECK(out.got[1].result == store_result::permanent_fail);
        CHECK(out.replies[1] == "554 5.7.1 <END-OF-MESSAGE>: End-of-data rejected: spam");
      }
      s->reset();
    }
    s->close();
    close_policy_connections(&loop);
    f.reset();
    srv.close();
    uv_run(&loop, UV_RUN_DEFAULT);
  }
  CHECK(uv_loop_close(&loop) == 0);
}
