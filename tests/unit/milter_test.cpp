// The milter client (inboxd/filters.hpp) on a real loop, against a scripted
// milter on 127.0.0.1: the steps it negotiates away are not sent, the
// replies it negotiates away are not awaited, and the changes at the end of
// the message reach the next sink with the changed envelope. The loop ends
// empty (uv_loop_close() == 0): every handle and request is gone.
#include <doctest/doctest.h>
#include <uv.h>

#include <functional>
#include <string>
#include <vector>

#include "harness.hpp"
#include "inboxd/filters.hpp"
#include "proto/milter_codec.hpp"

using namespace inboxd;
namespace m = inboxd::proto::milter;
using namespace std::string_literals;

namespace {

std::string packet(char code, std::string_view data = {}) {
  std::string out;
  auto len = static_cast<std::uint32_t>(data.size() + 1);
  for (int shift = 24; shift >= 0; shift -= 8) out += static_cast<char>(len >> shift);
  out += code;
  out.append(data);
  return out;
}

std::string be32(std::uint32_t v) {
  std::string s;
  for (int shift = 24; shift >= 0; shift -= 8) s += static_cast<char>(v >> shift);
  return s;
}

// A milter on the loop: answers each command with what `respond` gives and
// records the commands it got (MACRO packets left out).
struct scripted_milter {
  uv_loop_t* loop;
  uv_tcp_t server{}, conn{};
  bool connected = false;
  int port = 0;
  std::string in, seen;
  bool eof = false;
  std::function<std::string(char, std::string_view)> respond;

  explicit scripted_milter(uv_loop_t* l) : loop(l) {
    uv_tcp_init(loop, &server);
    server.data = this;
    sockaddr_in a{};
    uv_ip4_addr("127.0.0.1", 0, &a);
    REQUIRE(uv_tcp_bind(&server, reinterpret_cast<const sockaddr*>(&a), 0) == 0);
    REQUIRE(uv_listen(reinterpret_cast<uv_stream_t*>(&server), 4, accept_cb) == 0);
    sockaddr_storage ss{};
    int len = sizeof ss;
    uv_tcp_getsockname(&server, reinterpret_cast<sockaddr*>(&ss), &len);
    port = ntohs(reinterpret_cast<sockaddr_in*>(&ss)->sin_port);
  }
  void close() {
    uv_close(reinterpret_cast<uv_handle_t*>(&server), nullptr);
    if (connected) uv_close(reinterpret_cast<uv_handle_t*>(&conn), nullptr);
  }
  static void accept_cb(uv_stream_t* s, int) {
    auto* self = static_cast<scripted_milter*>(s->data);
    uv_tcp_init(self->loop, &self->conn);
    self->conn.data = self;
    uv_accept(s, reinterpret_cast<uv_stream_t*>(&self->conn));
    self->connected = true;
    uv_read_start(
        reinterpret_cast<uv_stream_t*>(&self->conn),
        [](uv_handle_t*, std::size_t, uv_buf_t* b) {
          static char space[65536];
          *b = uv_buf_init(space, sizeof space);
        },
        read_cb);
  }
  static void read_cb(uv_stream_t* s, ssize_t n, const uv_buf_t* b) {
    auto* self = static_cast<scripted_milter*>(s->data);
    if (n < 0) self->eof = true;  // The client closed (after a failure: no QUIT).
    if (n <= 0) return;
    self->in.append(b->base, static_cast<std::size_t>(n));
    while (self->in.size() >= 4) {
      std::uint32_t len = 0;
      for (int i = 0; i < 4; ++i) len = len << 8 | static_cast<unsigned char>(self->in[i]);
      if (self->in.size() < 4 + len) break;
      char cmd = self->in[4];
      std::string data = self->in.substr(5, len - 1);
      self->in.erase(0, 4 + len);
      if (cmd == 'D') continue;
      self->seen += cmd;
      self->send(self->respond(cmd, data));
    }
  }
  void send(std::string out) {
    if (out.empty() || !connected) return;
    auto* req = new uv_write_t;
    auto* keep = new std::string(std::move(out));
    req->data = keep;
    uv_buf_t wb = uv_buf_init(keep->data(), static_cast<unsigned>(keep->size()));
    uv_write(req, reinterpret_cast<uv_stream_t*>(&conn), &wb, 1, [](uv_write_t* r, int) {
      delete static_cast<std::string*>(r->data);
      delete r;
    });
  }
};

struct verdicts final : filter_listener {
  std::vector<filter_action> got;
  void filtered(const filter_verdict& v) noexcept override { got.push_back(v.action); }
};

struct outcomes final : delivery_listener {
  std::vector<store_outcome> got;
  bool done = false;
  void writable() noexcept override {}
  void committed(std::span<const store_outcome> o) noexcept override {
    got.assign(o.begin(), o.end());
    done = true;
  }
};

// Runs the loop until pred() holds (or 5 s pass).
template <class Pred>
bool run_until(uv_loop_t* loop, Pred pred) {
  std::uint64_t start = uv_now(loop);
  while (!pred() && uv_now(loop) - start < 5000) {
    uv_run(loop, UV_RUN_NOWAIT);
    uv_sleep(1);
    uv_update_time(loop);
  }
  return pred();
}

struct fixture {
  uv_loop_t loop{};
  fixture() { uv_loop_init(&loop); }
  ~fixture() {
    uv_run(&loop, UV_RUN_DEFAULT);
    CHECK(uv_loop_close(&loop) == 0);
  }
};

}  // namespace

TEST_CASE("milter client: skipped steps are not sent, skipped replies not awaited") {
  fixture fx;
  scripted_milter sm(&fx.loop);
  std::uint32_t steps = m::step::nohelo | m::step::nr_mail | m::step::nohdrs | m::step::nr_body;
  sm.respond = [&](char cmd, std::string_view) -> std::string {
    switch (cmd) {
      case 'O': return packet('O', be32(6) + be32(0) + be32(steps));
      case 'M':
      case 'B':
      case 'Q':
      case 'A': return {};  // NR_MAIL, NR_BODY: no reply.
      default: return packet('c');
    }
  };
  auto f = make_milter(&fx.loop, {.address = "127.0.0.1:" + std::to_string(sm.port),
                                  .command_timeout_ms = 2000,
                                  .content_timeout_ms = 2000});
  filter_session* fs = f->open({.address = "192.0.2.1", .name = "client.example"});
  verdicts v;
  filter_state st{.helo = "client.example", .queue_id = "Q1", .reverse_path = "a@example.com"};
  fs->ask(filter_stage::connect, st, v);
  REQUIRE(run_until(&fx.loop, [&] { return v.got.size() == 1; }));
  fs->ask(filter_stage::helo, st, v);
  CHECK(v.got.size() == 2);  // NOHELO: answered at once.
  fs->ask(filter_stage::mail, st, v);
  CHECK(v.got.size() == 3);  // NR_MAIL: sent, answered at once.
  st.recipient = "b@example.com";
  fs->ask(filter_stage::rcpt, st, v);
  REQUIRE(run_until(&fx.loop, [&] { return v.got.size() == 4; }));
  fs->ask(filter_stage::data, st, v);
  REQUIRE(run_until(&fx.loop, [&] { return v.got.size() == 5; }));
  for (auto a : v.got) CHECK(a == filter_action::proceed);

  inboxd::test::memory_sink next;
  outcomes out;
  std::vector<recipient> rcpts{{.address = "b@example.com", .user = "b", .domain = "example.com"}};
  envelope env{};
  env.queue_id = "Q1";
  env.reverse_path = "a@example.com";
  env.recipients = rcpts;
  delivery* d = fs->message(env, next, out);
  REQUIRE(d != nullptr);
  CHECK(d->write("Received: ours\nSubject: s\n\nbody\n"));
  d->commit();
  REQUIRE(run_until(&fx.loop, [&] { return out.done; }));
  REQUIRE(out.got.size() == 1);
  CHECK(out.got[0].result == store_result::stored);
  CHECK(sm.seen == "OCMRTNBE");  // No HELO, no header; MAIL and BODY unanswered.
  REQUIRE(next.messages.size() == 1);
  CHECK(next.messages[0].bytes == "Received: ours\nSubject: s\n\nbody\n");
  fs->reset();
  fs->close();
  run_until(&fx.loop, [&] { return sm.seen.ends_with("Q"); });
  sm.close();
}

TEST_CASE("milter client: end-of-message changes reach the next sink") {
  fixture fx;
  scripted_milter sm(&fx.loop);
  std::string body_seen, headers_seen;
  sm.respond = [&](char cmd, std::string_view data) -> std::string {
    switch (cmd) {
      case 'O': return packet('O', be32(6) + be32(0x1ff) + be32(0));
      case 'B': body_seen += data; return packet('c');
      case 'L': headers_seen += std::string(data) + "|"; return packet('c');
      case 'E':
        return packet('i', be32(0) + "X-Top\0top\0"s) + packet('m', be32(1) + "Subject\0\0"s) +
               packet('e', "<new@example.com>\0"s) + packet('+', "<c@example.com>\0"s) +
               packet('-', "<b@example.com>\0"s) + packet('q', "looks odd\0"s) + packet('c');
      case 'Q':
      case 'A': return {};
      default: return packet('c');
    }
  };
  auto f =
      make_milter(&fx.loop, {.address = "inet:127.0.0.1:" + std::to_string(sm.port), .log = {}});
  filter_session* fs = f->open({.address = "192.0.2.1", .name = "client.example"});
  verdicts v;
  filter_state st{.queue_id = "Q2", .reverse_path = "a@example.com"};
  for (auto stage : {filter_stage::connect, filter_stage::helo, filter_stage::mail,
                     filter_stage::rcpt, filter_stage::data}) {
    std::size_t want = v.got.size() + 1;
    fs->ask(stage, st, v);
    REQUIRE(run_until(&fx.loop, [&] { return v.got.size() == want; }));
  }
  inboxd::test::memory_sink next;
  outcomes out;
  std::vector<recipient> rcpts{{.address = "b@example.com", .user = "b", .domain = "example.com"}};
  envelope env{};
  env.queue_id = "Q2";
  env.reverse_path = "a@example.com";
  env.recipients = rcpts;
  delivery* d = fs->message(env, next, out);
  REQUIRE(d != nullptr);
  d->write("Received: ours\nSubject: s\nFrom: <a@example.com>\n\nline one\nline two\n");
  d->commit();
  REQUIRE(run_until(&fx.loop, [&] { return out.done; }));
  REQUIRE(out.got.size() == 1);  // One outcome per mailbox of the client's envelope.
  CHECK(out.got[0].result == store_result::stored);
  CHECK(headers_seen == "Subject\0s\0|From\0<a@example.com>\0|"s);  // Ours hidden.
  CHECK(body_seen == "line one\r\nline two\r\n");
  REQUIRE(next.messages.size() == 1);
  CHECK(next.messages[0].reverse_path == "new@example.com");
  CHECK(next.messages[0].recipients == std::vector<std::string>{"c@example.com"});
  CHECK(next.messages[0].bytes ==
        "X-Top: top\nReceived: ours\nFrom: <a@example.com>\n\nline one\nline two\n");
  fs->close();
  run_until(&fx.loop, [&] { return sm.seen.ends_with("Q"); });
  sm.close();
}

namespace {

// One message through a milter that negotiates every action and answers the
// end of the message with `eom`; the client's envelope has rcpts.
struct one_message {
  std::vector<store_outcome> got;
  bool done = false;
  std::vector<inboxd::test::memory_sink::message> stored;
};

one_message run_one(std::string eom, std::vector<std::string> rcpt_addresses = {"b@example.com"},
                    bool smtputf8 = false, std::uint32_t content_timeout_ms = 2000,
                    std::function<void(scripted_milter&)> at_eom = {},
                    const std::string& extra_headers = {},
                    std::shared_ptr<memory_budget> memory = {}) {
  one_message result;
  fixture fx;
  scripted_milter sm(&fx.loop);
  sm.respond = [&](char cmd, std::string_view) -> std::string {
    switch (cmd) {
      // NR_HDR: a section of many fields goes without a round trip each.
      case 'O': return packet('O', be32(6) + be32(0x1ff) + be32(m::step::nr_hdr));
      case 'L': return {};
      case 'E':
        if (at_eom) at_eom(sm);
        return eom;
      case 'Q':
      case 'A': return {};
      default: return packet('c');
    }
  };
  auto f = make_milter(&fx.loop, {.address = "127.0.0.1:" + std::to_string(sm.port),
                                  .content_timeout_ms = content_timeout_ms,
                                  .memory = memory,
                                  .log = getenv("MLOG") ? stderr_logger() : logger{}});
  filter_session* fs = f->open({.address = "192.0.2.1", .name = "client.example"});
  verdicts v;
  filter_state st{.queue_id = "Q3", .reverse_path = "a@example.com"};
  for (auto stage : {filter_stage::connect, filter_stage::helo, filter_stage::mail,
                     filter_stage::rcpt, filter_stage::data}) {
    std::size_t want = v.got.size() + 1;
    fs->ask(stage, st, v);
    REQUIRE(run_until(&fx.loop, [&] { return v.got.size() == want; }));
  }
  inboxd::test::memory_sink next;
  outcomes out;
  std::vector<recipient> rcpts;
  for (const std::string& a : rcpt_addresses)
    rcpts.push_back({.address = a, .user = a.substr(0, a.find('@')), .domain = "example.com"});
  envelope env{};
  env.queue_id = "Q3";
  env.reverse_path = "a@example.com";
  env.recipients = rcpts;
  env.smtputf8 = smtputf8;
  delivery* d = fs->message(env, next, out);
  REQUIRE(d != nullptr);
  d->write("Received: ours\nSubject: s\n" + extra_headers + "\nbody\n");
  d->commit();
  run_until(&fx.loop, [&] { return out.done; });
  result.done = out.done;
  result.got = out.got;
  result.stored = next.messages;
  if (!out.done) d->abort();
  fs->close();
  run_until(&fx.loop, [&] { return sm.seen.ends_with("Q") || sm.eof; });
  sm.close();
  return result;
}

}  // namespace

TEST_CASE("milter client: a milter that deletes every recipient: discarded, the client told 250") {
  one_message r =
      run_one(packet('-', "<b@example.com>\0"s) + packet('-', "<c@example.com>\0"s) + packet('c'),
              {"b@example.com", "c@example.com"});
  REQUIRE(r.done);  // It hung: committed() never came.
  REQUIRE(r.got.size() == 2);
  for (const store_outcome& o : r.got) CHECK(o.result == store_result::stored);
  CHECK(r.stored.empty());  // Nothing went to the next sink.
}

TEST_CASE(
    "milter client: an envelope address a milter gives must be sane, else its default action") {
  auto refused = [](std::string eom, bool smtputf8 = false) {
    one_message r = run_one(eom + packet('c'), {"b@example.com"}, smtputf8);
    REQUIRE(r.done);
    REQUIRE(r.got.size() == 1);
    CHECK(r.got[0].result == store_result::temporary_fail);  // tempfail: the default action
    CHECK(r.stored.empty());
  };
  // A line end would smuggle a command into the next hop's envelope.
  refused(packet('e', "<a@example.com>\r\nRCPT TO:<x@example.com>\0"s));
  refused(packet('e', "<a@example.com> SIZE=1\0"s));
  refused(packet('+', "<c d@example.com>\0"s));
  refused(packet('+', "<c<d@example.com>\0"s));
  refused(packet('+', "<>\0"s));
  refused(packet('2', "<c\x01@example.com>\0\0"s));
  refused(packet('+', "<" + std::string(250, 'c') + "@example.com>\0"s));
  refused(packet('+', "<c\xc3\xbc@example.com>\0"s));    // UTF-8 without SMTPUTF8
  refused(packet('+', "<c\xc3@example.com>\0"s), true);  // not UTF-8
  refused(packet('-', "<" + std::string(300, 'b') + "@example.com>\0"s));

  one_message r =
      run_one(packet('e', "<>\0"s) + packet('+', "c\xc3\xbc@example.com\0"s) + packet('c'),
              {"b@example.com"}, true);
  REQUIRE(r.done);
  REQUIRE(r.got.size() == 1);
  CHECK(r.got[0].result == store_result::stored);
  REQUIRE(r.stored.size() == 1);
  CHECK(r.stored[0].reverse_path.empty());  // The null sender.
  CHECK(r.stored[0].recipients ==
        std::vector<std::string>{"b@example.com", "c\xc3\xbc@example.com"});
}

TEST_CASE("milter client: changes past the caps fail the milter (its default action)") {
  auto run = [](char code, const std::string& one, std::size_t n, const std::string& headers = {}) {
    std::string eom;
    for (std::size_t k = 0; k < n; ++k) eom += packet(code, one);
    one_message r = run_one(eom + packet('c'), {"b@example.com"}, false, 2000, {}, headers);
    REQUIRE(r.done);
    REQUIRE(r.got.size() == 1);
    return r.got[0].result;
  };
  CHECK(run('h', "X-A\0a\0"s, 1000) == store_result::stored);
  CHECK(run('h', "X-A\0a\0"s, 1001) == store_result::temporary_fail);
  CHECK(run('i', be32(0) + "X-A\0a\0"s, 1001) == store_result::temporary_fail);
  CHECK(run('+', "<c@example.com>\0"s, 1001) == store_result::temporary_fail);
  CHECK(run('-', "<c@example.com>\0"s, 1000) == store_result::stored);
  CHECK(run('-', "<c@example.com>\0"s, 1001) == store_result::temporary_fail);
  // Deletes of an absent field each scan every field: 900 over 10,000
  // fields is past the work bound.
  std::string many;
  for (int k = 0; k < 10000; ++k) many += "X-F: f\n";
  CHECK(run('m', be32(1) + "X-None\0\0"s, 900, many) == store_result::temporary_fail);
  CHECK(run('m', be32(1) + "X-None\0\0"s, 100, many) == store_result::stored);
}

TEST_CASE("milter client: SMFIR_PROGRESS starts the content timeout again") {
  struct ticker {
    uv_timer_t t{};
    scripted_milter* sm = nullptr;
    int fired = 0;
  } tk;
  auto at_eom = [&](scripted_milter& sm) {
    tk.sm = &sm;
    uv_timer_init(sm.loop, &tk.t);
    tk.t.data = &tk;
    uv_timer_start(
        &tk.t,
        [](uv_timer_t* t) {
          auto* k = static_cast<ticker*>(t->data);
          if (++k->fired < 5) return k->sm->send(packet('p'));
          k->sm->send(packet('c'));
          uv_close(reinterpret_cast<uv_handle_t*>(t), nullptr);
        },
        150, 150);
  };
  // 750 ms of work, a progress every 150 ms, a timeout of 400 ms.
  one_message r = run_one({}, {"b@example.com"}, false, 400, at_eom);
  REQUIRE(r.done);
  REQUIRE(r.got.size() == 1);
  CHECK(r.got[0].result == store_result::stored);
  CHECK(tk.fired == 5);
  CHECK(r.stored.size() == 1);
}

TEST_CASE("milter client: the header section it holds counts in the memory budget") {
  auto budget = std::make_shared<memory_budget>();
  std::string many;
  for (int k = 0; k < 10000; ++k) many += "X-F: f\n";  // 70,000 octets in 10,000 fields
  std::size_t held = 0;
  one_message r = run_one(
      packet('c'), {"b@example.com"}, false, 2000, [&](scripted_milter&) { held = budget->used; },
      many, budget);
  REQUIRE(r.done);
  CHECK(r.got[0].result == store_result::stored);
  CHECK(held >= many.size() + 10000 * sizeof(std::string));
  CHECK(budget->used == 0);  // All given back.
}
