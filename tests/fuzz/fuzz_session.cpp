// tests/fuzz/fuzz_session.cpp: the whole proto::session against a hostile client
// and an unhelpful sink.
//
// Input: twelve control bytes, then what the client sends.
//   byte 0: bit 0 bare_newline reject; bits 1-3 max_message_size; bits 4-6
//           max_recipients; bit 7 the connection calls disconnect() at the end
//           (else only the destructor does).
//   byte 1: bits 0-1 how often write() returns false; bits 2-3 commit
//           synchronous, deferred, or either; bits 4, 5, 7 shutdown(),
//           disconnect() and a reload (new settings, policy and sink) at
//           random points; bit 6 an IPv6 client.
//   byte 2: bits 0-1 the recipient rules (any, domains with users and
//           aliases, case-sensitive with odd aliases, one catch-all domain);
//           bit 2 an LMTP session (LHLO; a reply per recipient after the data);
//           bit 3 XCLIENT allowed (the client is in xclient_from); bits 4-5
//           how many filters (filter.hpp) the session asks, 0 to 3, with
//           verdicts and hostile replies from the seed, answering at once or
//           (dribbled, with deferred commits) at random points.
//   byte 3: bit 0 AUTH offered (alice/secret is right); bit 1 STARTTLS
//           offered; bit 2 allow_plaintext_auth; bit 3 require_tls; bit 4
//           require_auth; bits 5-6 max_auth_failures; bit 7 accept_dsn (DSN
//           offered, its parameters parsed).
//   bytes 4-11: the seed of every other choice: the pieces the input arrives
//           in, when writable() and committed() come, the per-recipient results.
//
// A test connection plays net/connection: it keeps what feed() left and
// passes it again with the next piece, does not feed while the session waits
// or closes, and feeds again on session_ready(). Checked on every step:
// replies are whole, well-formed SMTP lines of printable ASCII, every 4xx/5xx
// with an enhanced code; log lines are printable; the sink sees one delivery
// at a time, an envelope within the limits, no write after write() returned
// false, no write or commit after commit() or abort(), no abort after
// committed(); a body within max_message_size and, under the reject policy,
// no committed CR (but in a BINARYMIME body, whose CRs are data); BDAT
// chunks of any size, pipelined, refused or split, keep the stream in step; the session waits only
// for something that will come, and when it neither waits nor closes, what it left unconsumed is a
// partial line. At the end every delivery has ended in commit (with committed()) or abort. A
// reloaded-away sink is really freed, so a late use of it is an ASan report. Without shutdown(),
// disconnect(), a reload or STARTTLS in the run, the same input fed whole to a sink that never
// pauses and commits at once must give identical replies, log lines, committed bodies and outcomes.
// INBOXD_FUZZ_VERBOSE=1 in the environment prints each run's transcript.
//
// The connection's other duties are played too: a credentials check answers
// later (never inside check()), a session_sleep() ends in wake(), and after
// the 220 to STARTTLS nothing more is answered, the buffered input is dropped
// (CVE-2011-0411) and tls_started() comes at a later point.
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "fuzz_util.hpp"
#include "inboxd/auth.hpp"
#include "inboxd/config.hpp"
#include "inboxd/filter.hpp"
#include "inboxd/policy.hpp"
#include "inboxd/sink.hpp"
#include "inboxd/tls.hpp"
#include "proto/command.hpp"
#include "proto/session.hpp"
#include "proto/settings.hpp"

namespace {

using namespace inboxd;
using inboxd::fuzz::rng;

bool printable(std::string_view s) {
  for (char c : s)
    if (static_cast<unsigned char>(c) < 32 || static_cast<unsigned char>(c) > 126) return false;
  return true;
}

// Prints what broke a check, with control bytes escaped.
void show(const char* what, std::string_view s) {
  std::fprintf(stderr, "%s: ", what);
  for (char c : s) {
    auto u = static_cast<unsigned char>(c);
    if (u < 32 || u > 126)
      std::fprintf(stderr, "\\x%02x", u);
    else
      std::fputc(c, stderr);
  }
  std::fputc('\n', stderr);
}

// The outcome of mailbox r of delivery d: mostly stored, the same in every run.
store_outcome result_for(std::uint64_t seed, std::size_t d, std::size_t r) {
  rng g(seed ^ (0x51ed27f3a1b2c3d5ULL * (d + 1)) ^ (0x2545f4914f6cdd1dULL * (r + 1)));
  switch (g.below(16)) {
    case 13: return {store_result::temporary_fail, 5};
    case 14: return {store_result::no_space, 28};
    case 15: return {store_result::permanent_fail, 0};
    default: return {store_result::stored, 0};
  }
}

constexpr std::size_t sizes[] = {0, 1, 16, 100, 1000, 65536, 10'240'000, 300};
constexpr std::size_t rcpts[] = {0, 1, 2, 3, 5, 100, 1000, 1};

constexpr std::size_t auth_failures[] = {1, 2, 3, 1000};

session_config limits_of(std::uint8_t b, std::uint8_t features) {
  return {
      .hostname = "mx.example",
      .max_message_size = sizes[(b >> 1) & 7],
      .max_recipients = rcpts[(b >> 4) & 7],
      .bare_newline = (b & 1) ? bare_newline_policy::reject : bare_newline_policy::normalize,
      .require_tls = (features & 0x08) != 0,
      .require_auth = (features & 0x10) != 0,
      .allow_plaintext_auth = (features & 0x04) != 0,
      .accept_dsn = (features & 0x80) != 0,
      .max_auth_failures = auth_failures[(features >> 5) & 3],
  };
}

// An alias expands to at most this many mailboxes.
constexpr std::size_t max_fanout = 3;

recipient_rules rules_of(unsigned which) {
  recipient_rules r;
  switch (which & 3) {
    case 0: break;  // every domain, any local part
    case 1:
      r.domains.push_back(
          {.name = "example.com",
           .users = {"alice", "bob", "Carol"},
           .aliases = {{"team", {"alice", "bob", "x@Other.Example"}}, {"*", {"alice"}}}});
      r.domains.push_back({.name = "*.example.net", .users = {}, .aliases = {}});
      break;
    case 2:
      r.domains.push_back(
          {.name = "Example.COM",
           .users = {"alice", "bob"},
           .aliases = {{"empty", {}}, {"dup", {"alice", "alice", "bob@example.com"}}}});
      r.case_insensitive = false;
      r.sub_address_delimiter = "";
      break;
    case 3:
      r.domains.push_back({.name = "example.org", .users = {}, .aliases = {}});
      r.sub_address_delimiter = "-";
      r.postmaster_domain = "Example.org";
      break;
  }
  return r;
}

struct behaviour {
  unsigned pause_in_8 = 0;  // write() returns false this often, in 8
  int commit = 0;           // 0 synchronous, 1 deferred, 2 either
  std::uint64_t seed = 0;
};

enum class state { open, committing, committed, aborted };

// The deliveries of one run, of every sink: they outlive their sink, as
// aborted deliveries may (sink.hpp).
struct world {
  behaviour how;
  // The client used BDAT: a stored LF may then stand for one octet sent (a
  // lone LF, or one of a BINARYMIME body), so the size check counts it once.
  bool bdat = false;
  rng choices{0};
  class record;
  std::vector<std::unique_ptr<record>> records;
  class check;
  std::vector<std::unique_ptr<check>> checks;

  record* paused() const;
  record* committing() const;
  check* asking() const;
  class question;
  std::vector<std::unique_ptr<question>> questions;
  question* filtering() const;
  bool filters_later = false;       // filters may answer after ask() returned
  std::size_t filter_sessions = 0;  // open, not yet closed
};

// One question to a filter: answered at once or when the test says, never
// after the session closed the filter.
class world::question {
 public:
  question(filter_listener& l, filter_verdict v, std::string reply, std::string prepend)
      : listener_(l), reply_(std::move(reply)), prepend_(std::move(prepend)), v_(v) {
    v_.reply = reply_;
    v_.prepend = prepend_;
    v_.note = reply_;  // a note is text from the filter too: the log escapes it
  }
  void answer() {
    INBOXD_FUZZ_CHECK(pending);
    pending = false;
    listener_.filtered(v_);
  }
  bool pending = true;
  const void* owner = nullptr;

 private:
  filter_listener& listener_;
  std::string reply_, prepend_;
  filter_verdict v_;
};

world::question* world::filtering() const {
  for (const auto& q : questions)
    if (q->pending) return q.get();
  return nullptr;
}

// One credentials check: it answers when the test says so, unless cancelled.
class world::check final : public auth_check {
 public:
  check(auth_listener& l, bool ok) : listener_(l), ok_(ok) {}

  void cancel() noexcept override {
    INBOXD_FUZZ_CHECK(pending);  // never after the answer, never twice
    pending = false;
  }
  void answer() {
    INBOXD_FUZZ_CHECK(pending);
    pending = false;
    listener_.auth_checked(ok_ ? auth_result::ok : auth_result::failed);
  }

  bool pending = true;

 private:
  auth_listener& listener_;
  bool ok_;
};

world::check* world::asking() const {
  for (const auto& c : checks)
    if (c->pending) return c.get();
  return nullptr;
}

class fuzz_authenticator final : public authenticator {
 public:
  explicit fuzz_authenticator(world& w) : world_(w) {}
  auth_check* check(std::string_view user, std::string_view password,
                    auth_listener& listener) const override {
    // One check at a time per session.
    INBOXD_FUZZ_CHECK(!world_.asking());
    world_.checks.push_back(
        std::make_unique<world::check>(listener, user == "alice" && password == "secret"));
    return world_.checks.back().get();
  }

 private:
  world& world_;
};

// STARTTLS is offered when the settings hold credentials; the session never
// looks inside them, so any non-null pointer will do.
std::shared_ptr<const tls_credentials> fake_credentials() {
  static int token;
  return {reinterpret_cast<const tls_credentials*>(&token), [](const tls_credentials*) {}};
}

class world::record final : public delivery {
 public:
  record(world& w, std::size_t index, delivery_listener& l, const session_config& limits,
         std::size_t mailboxes, bool binary)
      : world_(w),
        index_(index),
        listener_(l),
        limits_(limits),
        mailboxes_(mailboxes),
        binary_(binary) {}

  bool write(std::string_view bytes) override {
    INBOXD_FUZZ_CHECK(st == state::open);  // never after commit() or abort()
    INBOXD_FUZZ_CHECK(!paused);            // never before writable()
    if (writes++ == 0) {
      // The trace header (RFC 5321 4.4) comes first, as one write of one header field.
      // Header fields filters prepended may come before it (filter.hpp),
      // each "Name: value" on one line.
      std::string_view h = bytes;
      while (!h.starts_with("Received: from ")) {
        std::size_t lf = h.find('\n');
        INBOXD_FUZZ_CHECK(lf != std::string_view::npos);
        std::size_t colon = h.find(':');
        INBOXD_FUZZ_CHECK(colon != 0 && colon < lf && printable(h.substr(0, colon)));
        h.remove_prefix(lf + 1);
      }
      INBOXD_FUZZ_CHECK(bytes.ends_with("\n"));
      INBOXD_FUZZ_CHECK(bytes.find('\r') == std::string_view::npos);
    } else {
      INBOXD_FUZZ_CHECK(!bytes.empty());
      body.append(bytes);
      // RFC 1870: the size as sent, each LF counted as CRLF (with BDAT, the
      // sum of the chunks: at least one octet per stored byte).
      for (char c : bytes) body_size += c == '\n' && !world_.bdat ? 2 : 1;
      INBOXD_FUZZ_CHECK(body_size <= limits_.max_message_size);
    }
    paused = world_.choices.below(8) < world_.how.pause_in_8;
    return !paused;
  }

  void commit() override {
    INBOXD_FUZZ_CHECK(st == state::open);
    INBOXD_FUZZ_CHECK(writes >= 1);
    if (limits_.bare_newline == bare_newline_policy::reject && !binary_)
      INBOXD_FUZZ_CHECK(body.find('\r') == std::string::npos);
    st = state::committing;
    paused = false;  // The sink takes the rest with commit(): no writable() follows.
    int mode = world_.how.commit;
    if (mode == 0 || (mode == 2 && world_.choices.chance(1, 2)))
      finish();  // committed() before commit() returns
  }

  void abort() noexcept override {
    // Once, and never after committed(); after commit() it is allowed (sink.hpp).
    INBOXD_FUZZ_CHECK(st == state::open || st == state::committing);
    st = state::aborted;
    paused = false;
  }

  // The sink's side: runs committed().
  void finish() {
    INBOXD_FUZZ_CHECK(st == state::committing);
    st = state::committed;
    std::vector<store_outcome> outcomes;
    for (std::size_t r = 0; r < mailboxes_; ++r)
      outcomes.push_back(result_for(world_.how.seed, index_, r));
    listener_.committed(outcomes);
  }
  // The sink's side: drained, calls writable().
  void resume() {
    INBOXD_FUZZ_CHECK(st == state::open && paused);
    paused = false;
    listener_.writable();
  }

  state st = state::open;
  bool paused = false;  // write() returned false, writable() not called yet
  int writes = 0;
  std::string body;
  std::size_t body_size = 0;

 private:
  world& world_;
  std::size_t index_;
  delivery_listener& listener_;
  session_config limits_;  // of the settings the delivery began under
  std::size_t mailboxes_;
  bool binary_;  // BODY=BINARYMIME
};

world::record* world::paused() const {
  for (const auto& r : records)
    if (r->st == state::open && r->paused) return r.get();
  return nullptr;
}
world::record* world::committing() const {
  for (const auto& r : records)
    if (r->st == state::committing) return r.get();
  return nullptr;
}

class fuzz_sink final : public sink {
 public:
  fuzz_sink(world& w, const session_config& limits) : world_(w), limits_(limits) {}

  delivery* begin(const envelope& env, delivery_listener& listener) override {
    // One message at a time per session: the previous one has ended.
    for (const auto& r : world_.records)
      INBOXD_FUZZ_CHECK(r->st == state::committed || r->st == state::aborted);
    INBOXD_FUZZ_CHECK(!env.queue_id.empty() && printable(env.queue_id));
    INBOXD_FUZZ_CHECK(!env.helo.empty() && env.helo.size() <= 255 && printable(env.helo));
    INBOXD_FUZZ_CHECK(env.reverse_path.empty() ||
                      proto::is_mailbox(env.reverse_path, env.smtputf8));
    INBOXD_FUZZ_CHECK(!env.recipients.empty());
    INBOXD_FUZZ_CHECK(env.recipients.size() <= limits_.max_recipients * max_fanout);
    for (std::size_t i = 0; i < env.recipients.size(); ++i) {
      const recipient& r = env.recipients[i];
      INBOXD_FUZZ_CHECK(proto::is_mailbox(r.address, env.smtputf8) ||
                        proto::iequals(r.address, "postmaster"));
      for (char c : r.domain) INBOXD_FUZZ_CHECK(c < 'A' || c > 'Z');
      // Distinct mailboxes: one copy each.
      for (std::size_t j = 0; j < i; ++j)
        INBOXD_FUZZ_CHECK(r.user != env.recipients[j].user || r.domain != env.recipients[j].domain);
    }
    world_.records.push_back(std::make_unique<world::record>(
        world_, world_.records.size(), listener, limits_, env.recipients.size(), env.body_binary));
    // BINARYMIME only with BDAT.
    if (env.body_binary) INBOXD_FUZZ_CHECK(world_.bdat);
    return world_.records.back().get();
  }

 private:
  world& world_;
  session_config limits_;
};

// Replies a filter may give: well-formed, of the wrong class, 421, with
// control bytes, CRLF injection, UTF-8, long; and header fields to prepend,
// good and bad.
constexpr std::string_view filter_replies[] = {
    "",
    "550 5.7.1 <x@example.com>: Recipient address rejected: go away",
    "450 4.2.0 Greylisted, see http://example.com/",
    "250 2.0.0 not a refusal",
    "421 4.3.2 going down",
    "554 no enhanced code",
    "551 5.7.1 two\r\n551 5.7.1 lines",
    "550 5.7.1 caf\xc3\xa9 \x1b[31m",
    "5",
    "4xx junk",
    "451 5.1.1 enhanced code of the other class",
};
constexpr std::string_view filter_prepends[] = {"",           "X-Greylist: delayed",
                                                "Bad header", "X-Inject: a\r\nReceived: forged",
                                                ": no name",  "X-Tab:\tvalue"};

// Verdicts come from the seed and the question's number in the session,
// so that a run fed whole and one dribbled get the same ones.
class fuzz_filter final : public filter {
 public:
  fuzz_filter(world& w, std::size_t index) : world_(w), index_(index) {}
  filter_session* open(const filter_client& client) override;

 private:
  friend class fuzz_filter_session;
  world& world_;
  std::size_t index_;
};

class fuzz_filter_session final : public filter_session {
 public:
  fuzz_filter_session(world& w, std::size_t index) : world_(w), index_(index) {
    ++world_.filter_sessions;
  }
  void ask(filter_stage stage, const filter_state& st, filter_listener& l) override {
    INBOXD_FUZZ_CHECK(!closed_);
    // One question at a time (filter.hpp).
    for (const auto& q : world_.questions) INBOXD_FUZZ_CHECK(!(q->pending && q->owner == this));
    // What the session says it knows, it knows.
    if (stage == filter_stage::rcpt) INBOXD_FUZZ_CHECK(!st.recipient.empty());
    if (stage >= filter_stage::mail) INBOXD_FUZZ_CHECK(!st.queue_id.empty());
    if (stage > filter_stage::connect) INBOXD_FUZZ_CHECK(!st.helo.empty());
    rng g(world_.how.seed ^ (0x9e3779b97f4a7c15ULL * (++asked_ + 1)) ^ (index_ << 56));
    filter_verdict v;
    switch (g.below(16)) {
      case 0: v.action = filter_action::reject; break;
      case 1: v.action = filter_action::tempfail; break;
      case 2: v.action = filter_action::discard; break;
      case 3:
        v.action =
            stage == filter_stage::connect ? filter_action::proceed : filter_action::disconnect;
        break;
      default: v.action = filter_action::proceed; break;
    }
    // Fewer refusals at connect, or little else would be reached.
    if (stage == filter_stage::connect && g.chance(3, 4)) v.action = filter_action::proceed;
    std::string reply(filter_replies[g.below(std::size(filter_replies))]);
    if (g.chance(1, 8)) reply.append(2000, 'x');
    std::string prepend(filter_prepends[g.below(std::size(filter_prepends))]);
    world_.questions.push_back(std::make_unique<world::question>(l, v, reply, prepend));
    world::question& q = *world_.questions.back();
    q.owner = this;
    if (!world_.filters_later || world_.choices.chance(1, 2)) q.answer();
  }
  delivery* message(const envelope& env, sink& next, delivery_listener& l) override;
  void reset() noexcept override { INBOXD_FUZZ_CHECK(!closed_); }
  void close() noexcept override {
    INBOXD_FUZZ_CHECK(!closed_);
    closed_ = true;
    // No answer after close(): the question is forgotten.
    for (const auto& q : world_.questions)
      if (q->owner == this) q->pending = false;
    --world_.filter_sessions;
    delete this;
  }

 private:
  world& world_;
  std::size_t index_;
  std::size_t asked_ = 0;
  std::size_t messages_ = 0;
  bool closed_ = false;
};

filter_session* fuzz_filter::open(const filter_client& client) {
  INBOXD_FUZZ_CHECK(!client.server_name.empty());
  return new fuzz_filter_session(world_, index_);
}

// A filter's delivery: the bytes go through to next at once; at the end
// it passes the store's outcomes back, or refuses the message with a
// reply from the list above (then the stored copy is aborted).
class fuzz_filter_delivery final : public delivery, delivery_listener {
 public:
  fuzz_filter_delivery(const envelope& env, sink& next, delivery_listener& l, bool refuse,
                       std::string reply)
      : listener_(l), refuse_(refuse), reply_(std::move(reply)), boxes_(env.recipients.size()) {
    inner_ = next.begin(env, *this);
  }
  bool write(std::string_view bytes) override { return inner_->write(bytes); }
  void commit() override {
    if (!refuse_) return inner_->commit();
    inner_->abort();
    // The outcomes' reply is borrowed: it must outlive this delivery.
    std::string reply = std::move(reply_);
    std::vector<store_outcome> out(
        boxes_, store_outcome{.result = store_result::permanent_fail, .reply = reply});
    delivery_listener& l = listener_;
    delete this;
    l.committed(out);
  }
  void abort() noexcept override {
    inner_->abort();
    delete this;
  }

 private:
  void writable() noexcept override { listener_.writable(); }
  void committed(std::span<const store_outcome> per) noexcept override {
    INBOXD_FUZZ_CHECK(per.size() == boxes_);
    delivery_listener& l = listener_;
    delete this;
    l.committed(per);
  }
  delivery_listener& listener_;
  bool refuse_;
  std::string reply_;
  std::size_t boxes_;
  delivery* inner_ = nullptr;
};

delivery* fuzz_filter_session::message(const envelope& env, sink& next, delivery_listener& l) {
  INBOXD_FUZZ_CHECK(!closed_);
  rng g(world_.how.seed ^ (0xc2b2ae3d27d4eb4fULL * (++messages_ + 1)) ^ (index_ << 48));
  switch (g.below(4)) {
    case 0: return nullptr;
    case 1:
      return new fuzz_filter_delivery(
          env, next, l, true, std::string(filter_replies[g.below(std::size(filter_replies))]));
    default: return new fuzz_filter_delivery(env, next, l, false, {});
  }
}

proto::settings_ptr make_settings(world& w, std::uint8_t limits, unsigned rules,
                                  std::uint8_t features) {
  auto s = std::make_shared<proto::settings>();
  s->limits = limits_of(limits, features);
  s->policy = make_rules_policy(rules_of(rules));
  s->store = std::make_shared<fuzz_sink>(w, s->limits);
  if (features & 0x01) s->auth = std::make_shared<fuzz_authenticator>(w);
  if (features & 0x02) s->tls = fake_credentials();
  for (unsigned k = 0; k < ((rules >> 4) & 3); ++k)
    s->filters.push_back(std::make_shared<fuzz_filter>(w, k));
  return s;
}

// Checks that out is whole replies: "ddd-text" lines then one "ddd text" line.
void check_replies(std::string_view out) {
  while (!out.empty()) {
    std::size_t end = out.find("\r\n");
    INBOXD_FUZZ_CHECK(end != std::string_view::npos);
    std::string_view line = out.substr(0, end);
    out.remove_prefix(end + 2);
    if (line.size() < 4 || !printable(line)) show("reply", line);
    INBOXD_FUZZ_CHECK(line.size() >= 4 && printable(line));
    INBOXD_FUZZ_CHECK(line[0] >= '2' && line[0] <= '5');
    INBOXD_FUZZ_CHECK(line[1] >= '0' && line[1] <= '5');
    INBOXD_FUZZ_CHECK(line[2] >= '0' && line[2] <= '9');
    INBOXD_FUZZ_CHECK(line[3] == ' ' || line[3] == '-');
    if (line[0] == '4' || line[0] == '5') {
      // RFC 2034 3: "c.sss.ddd " after the code, of the same class.
      std::string_view e = line.substr(4);
      INBOXD_FUZZ_CHECK(e.size() >= 6 && e[0] == line[0] && e[1] == '.');
      std::size_t sp = e.find(' ');
      INBOXD_FUZZ_CHECK(sp != std::string_view::npos);
      std::string_view rest = e.substr(2, sp - 2);
      std::size_t dot = rest.find('.');
      INBOXD_FUZZ_CHECK(dot != std::string_view::npos && dot > 0 && dot + 1 < rest.size());
      for (std::size_t i = 0; i < rest.size(); ++i)
        INBOXD_FUZZ_CHECK(i == dot || (rest[i] >= '0' && rest[i] <= '9'));
    }
    // RFC 5321 4.2.1: a multiline reply goes on with the same code.
    if (line[3] == '-') INBOXD_FUZZ_CHECK(out.substr(0, 3) == line.substr(0, 3));
  }
}

class test_connection final : public proto::session_events {
 public:
  test_connection(world& w, const proto::settings_ptr& current, std::string client)
      : world_(w), s(current, *this, ids, std::move(client)) {}
  test_connection(const test_connection&) = delete;
  test_connection& operator=(const test_connection&) = delete;

  void session_ready() noexcept override {
    INBOXD_FUZZ_CHECK(!in_run_);
    INBOXD_FUZZ_CHECK(!disconnected);
    run();
  }
  void session_sleep(std::uint32_t milliseconds) noexcept override {
    INBOXD_FUZZ_CHECK(!sleeping);
    INBOXD_FUZZ_CHECK(milliseconds > 0 && milliseconds <= 60'000);
    sleeping = true;
  }
  void session_log(log_level, std::string_view line) noexcept override {
    // Client bytes never reach the log unescaped: no forged log lines.
    if (!printable(line)) {
      show("log line", line);
      INBOXD_FUZZ_CHECK(printable(line));
    }
    log.emplace_back(line);
  }

  // What net/connection::run() does: feed what it has unless the session
  // waits or closes, take the replies, and feed again while that made
  // progress (feed() stops once its output passes a bound).
  void run() {
    in_run_ = true;
    while (!in.empty() && !s.waiting() && !s.closing()) {
      std::size_t used = s.feed(std::span<char>(in.data(), in.size()));
      INBOXD_FUZZ_CHECK(used <= in.size());
      in.erase(0, used);
      take();
      if (used == 0) break;
    }
    take();
    if (s.starttls_requested() && !tls_pending) {
      // The 220 was the last reply (feed() stopped right after STARTTLS), and
      // what the client sent after the command is dropped (CVE-2011-0411).
      INBOXD_FUZZ_CHECK(last_reply_.starts_with("220 "));
      in.clear();
      tls_pending = true;
      starttls_seen = true;
    }
    if (!s.closing()) {
      if (s.waiting()) {
        // The session waits only for what is still owed to it.
        INBOXD_FUZZ_CHECK(world_.paused() || world_.committing() || world_.asking() ||
                          world_.filtering() || sleeping || tls_pending);
      } else {
        // Everything complete was run: what is left is a partial command line
        // (within the line reader's limit, which SASL lines set to 12288
        // octets) or the CR or "." the decoder cannot decide yet.
        INBOXD_FUZZ_CHECK(in.find('\n') == std::string::npos && in.size() <= 12288);
      }
    }
    in_run_ = false;
  }

  void take() {
    std::string& out = s.output();
    if (disconnected) INBOXD_FUZZ_CHECK(out.empty());
    check_replies(out);
    if (!out.empty()) {
      std::string_view o = out;
      o.remove_suffix(2);
      last_reply_ = o.substr(o.rfind("\r\n") == std::string_view::npos ? 0 : o.rfind("\r\n") + 2);
    }
    replies += out;
    out.clear();
  }

  // The delay is over.
  void wake() {
    sleeping = false;
    s.wake();
    take();
  }
  // The handshake is done; the session starts over inside TLS.
  void handshake() {
    tls_pending = false;
    s.tls_started("TLSv1.3 with cipher TLS_AES_256_GCM_SHA384");
    run();
  }

  void disconnect() {
    s.disconnect();
    disconnected = true;
    sleeping = tls_pending = false;
    INBOXD_FUZZ_CHECK(s.closing());
  }

  proto::queue_id_source ids{0x5eed, 42};
  world& world_;
  proto::session s;
  std::string in;  // read from the client, not yet consumed
  std::string replies;
  std::vector<std::string> log;
  bool disconnected = false;
  bool sleeping = false;     // session_sleep() came, wake() not yet
  bool tls_pending = false;  // STARTTLS answered, handshake not done
  bool starttls_seen = false;

 private:
  bool in_run_ = false;
  std::string last_reply_;
};

struct summary {
  std::string replies;
  std::vector<std::string> log;
  std::vector<std::string> bodies;
  std::vector<state> ends;
  std::string leftover;
  bool closing = false;
  bool injected = false;  // shutdown(), disconnect() or a reload at a random point
};

struct plan {
  std::uint8_t limits = 0;
  unsigned rules = 0;
  std::uint8_t features = 0;
  bool lmtp = false;
  bool xclient = false;
  behaviour how;
  std::string client;
  bool dribble = false;  // pieces and sink callbacks at random points, else all at once
  bool inject_shutdown = false;
  bool inject_disconnect = false;
  bool inject_reload = false;
  bool disconnect_at_end = false;
};

summary drive(const plan& p, std::string_view wire) {
  summary out;
  world w;
  w.how = p.how;
  w.choices = rng(p.how.seed);
  w.filters_later = p.dribble && p.how.commit != 0;
  for (std::size_t i = 0; i + 4 <= wire.size() && !w.bdat; ++i)
    w.bdat = proto::iequals(wire.substr(i, 4), "BDAT");
  {
    rng r(p.how.seed ^ 0x6a09e667f3bcc908ULL);
    // The server's current settings; a reload replaces them.
    proto::settings_ptr current = make_settings(w, p.limits, p.rules, p.features);
    test_connection c(w, current, p.client);
    c.s.set_lmtp(p.lmtp);
    c.s.set_xclient_allowed(p.xclient);
    if (p.inject_shutdown && r.chance(1, 8)) {
      // A connection accepted while the server shuts down gets only the 421.
      c.s.shutdown();
      out.injected = true;
    } else {
      c.s.start();
    }
    c.take();
    std::size_t sent = 0;
    while (sent < wire.size() && !c.s.closing()) {
      std::size_t n = p.dribble ? r.piece(wire.size() - sent) : wire.size();
      c.in.append(wire.substr(sent, n));
      sent += n;
      c.run();
      if (!p.dribble) continue;
      // Between reads, the sink and the server act.
      for (std::size_t k = r.below(3); k > 0; --k) {
        if (auto* d = w.paused(); d && r.chance(1, 2)) d->resume();
        if (auto* d = w.committing(); d && r.chance(1, 2)) d->finish();
        if (auto* a = w.asking(); a && r.chance(1, 2)) a->answer();
        if (auto* q = w.filtering(); q && r.chance(1, 2)) q->answer();
        if (c.sleeping && r.chance(1, 2)) c.wake();
        if (c.tls_pending && r.chance(1, 2)) c.handshake();
        c.take();
      }
      if (p.inject_reload && r.chance(1, 16)) {
        // SIGHUP: the old settings live on while a session still holds them.
        current =
            make_settings(w, static_cast<std::uint8_t>(r.next()), static_cast<unsigned>(r.next()),
                          static_cast<std::uint8_t>(r.next()));
        out.injected = true;
      }
      if (p.inject_shutdown && r.chance(1, 16)) {
        c.s.shutdown();
        out.injected = true;
        c.run();
      }
      if (p.inject_disconnect && r.chance(1, 32)) {
        c.disconnect();
        out.injected = true;
        break;
      }
    }
    // The client has sent everything: the sink catches up.
    for (std::size_t guard = 0; guard < 1'000'000 && !c.disconnected; ++guard) {
      if (auto* d = w.paused())
        d->resume();
      else if (auto* d = w.committing())
        d->finish();
      else if (auto* a = w.asking())
        a->answer();
      else if (auto* q = w.filtering())
        q->answer();
      else if (c.sleeping)
        c.wake();
      else if (c.tls_pending)
        c.handshake();
      else
        break;
      c.take();
    }
    c.run();
    // Nothing is owed any more, so nothing may be waited for.
    if (!c.s.closing()) INBOXD_FUZZ_CHECK(!c.s.waiting());
    if (std::getenv("INBOXD_FUZZ_VERBOSE")) {
      // For a person replaying one input: the transcript of this run.
      std::fprintf(stderr, "--- %s run\n%s", p.dribble ? "dribbled" : "whole", c.replies.c_str());
      for (const auto& l : c.log) std::fprintf(stderr, "log: %s\n", l.c_str());
      for (const auto& r : w.records)
        std::fprintf(stderr, "delivery: state %d, %zu body bytes\n", static_cast<int>(r->st),
                     r->body.size());
    }
    // What the client sent after STARTTLS depends on when the handshake came.
    if (c.starttls_seen) out.injected = true;
    out.replies = c.replies;
    out.log = c.log;
    out.leftover = c.in;
    out.closing = c.s.closing();
    if (p.disconnect_at_end && !c.disconnected) {
      c.disconnect();
      c.take();
    }
    // ~session disconnects: a delivery still open is aborted now. Then the
    // last settings go, and with them every sink.
  }
  // Every credentials check was answered or cancelled; every filter
  // question too, and each filter session closed.
  for (const auto& a : w.checks) INBOXD_FUZZ_CHECK(!a->pending);
  for (const auto& q : w.questions) INBOXD_FUZZ_CHECK(!q->pending);
  INBOXD_FUZZ_CHECK(w.filter_sessions == 0);
  // Every delivery ended in exactly one way (the records checked each step).
  for (const auto& r : w.records) {
    INBOXD_FUZZ_CHECK(r->st == state::committed || r->st == state::aborted);
    INBOXD_FUZZ_CHECK(!r->paused);
    // What an aborted delivery got depends on where the input was split
    // (a message over the limit is dropped in the middle): compare only
    // what was committed.
    out.bodies.push_back(r->st == state::committed ? r->body : std::string());
    out.ends.push_back(r->st);
  }
  return out;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  inboxd::fuzz::input_reader in(data, size);
  std::uint8_t b0 = in.byte(), b1 = in.byte(), b2 = in.byte(), b3 = in.byte();
  std::uint64_t seed = in.u64();
  std::string_view wire = in.rest();

  static constexpr unsigned pauses[] = {0, 1, 3, 4};
  plan dribbled{
      .limits = b0,
      .rules = b2,
      .features = b3,
      .lmtp = (b2 & 0x04) != 0,
      .xclient = (b2 & 0x08) != 0,
      .how = {.pause_in_8 = pauses[b1 & 3], .commit = ((b1 >> 2) & 3) % 3, .seed = seed},
      .client = (b1 & 0x40) ? "2001:db8::25" : "192.0.2.25",
      .dribble = true,
      .inject_shutdown = (b1 & 0x10) != 0,
      .inject_disconnect = (b1 & 0x20) != 0,
      .inject_reload = (b1 & 0x80) != 0,
      .disconnect_at_end = (b0 & 0x80) != 0,
  };
  summary got = drive(dribbled, wire);
  // The timing of shutdown(), disconnect() and reloads shows in the replies.
  if (got.injected) return 0;

  // The same input at once, to a sink that never pauses and commits at once.
  plan whole = dribbled;
  whole.how.pause_in_8 = 0;
  whole.how.commit = 0;
  whole.dribble = false;
  whole.inject_shutdown = whole.inject_disconnect = whole.inject_reload = false;
  summary want = drive(whole, wire);
  INBOXD_FUZZ_CHECK(got.replies == want.replies);
  INBOXD_FUZZ_CHECK(got.log == want.log);
  INBOXD_FUZZ_CHECK(got.bodies == want.bodies);
  INBOXD_FUZZ_CHECK(got.ends == want.ends);
  INBOXD_FUZZ_CHECK(got.closing == want.closing);
  if (!got.closing) INBOXD_FUZZ_CHECK(got.leftover == want.leftover);
  return 0;
}
