// filter/policy.cpp: the policy delegation client (inboxd/filters.hpp) on
// libuv, over proto/policy_codec.
//
// Three kinds of object. A policy_pool belongs to one filter: the options,
// the idle connections, and a count of who uses it (the filter, its
// sessions, their deliveries, its connections), so it outlives a filter
// that a reload dropped while old sessions still ask. A policy_conn is one
// connection, pinned (handles embedded, freed in the last close callback),
// that runs one request at a time: connect, write, read the answer, each
// within the timeout. A policy_call is one question of a session or a
// delivery; a failed attempt is tried again on a new connection, after
// Postfix's smtpd_policy_service_retry_delay, up to try_limit attempts.
#include <fmt/format.h>
#include <unistd.h>
#include <uv.h>

#include <algorithm>
#include <span>
#include <string>
#include <vector>

#include "inboxd/filters.hpp"
#include "net/listener.hpp"
#include "proto/policy_codec.hpp"
#include "proto/session.hpp"

namespace inboxd {

namespace {

using proto::policy_answer_decoder;
using proto::policy_decision;
using proto::policy_state;

// Postfix's smtpd_policy_service_retry_delay.
constexpr std::uint64_t retry_delay_ms = 1000;
// Idle connections kept per service: more sessions at once open more, and
// those close after their request.
constexpr std::size_t max_idle_connections = 8;

class policy_pool;
class policy_conn;

// One question; the answer comes through done() exactly once unless the
// owner cancels it first.
class policy_call {
 public:
  std::string request;  // the encoded request
  unsigned tries = 0;
  policy_conn* conn = nullptr;  // the connection trying it now
  // ok: text is the action; else why every attempt failed.
  virtual void done(bool ok, std::string_view text) noexcept = 0;

 protected:
  ~policy_call() = default;
};

class policy_pool {
 public:
  policy_pool(uv_loop_t* loop, policy_options o) : loop_(loop), o_(std::move(o)) {
    if (!o_.log.write) o_.log = stderr_logger();
    std::string_view a = o_.address;
    if (a.starts_with("inet:")) a.remove_prefix(5);
    if (a.starts_with("unix:"))
      path_ = a.substr(5);
    else
      (void)net::parse_address(a, addr_);  // check_policy_address() was asked first
  }
  policy_pool(const policy_pool&) = delete;
  policy_pool& operator=(const policy_pool&) = delete;

  void ref() noexcept { ++refs_; }
  void unref() noexcept {
    if (--refs_ == 0) delete this;
  }
  // Asks c's request anew.
  void ask(policy_call& c) {
    c.tries = 0;
    start(c);
  }
  // Sends c on an idle connection or a new one (after the retry delay
  // when it was tried before).
  void start(policy_call& c);
  // The owner of c is gone: its connection, mid-request, is closed.
  void cancel(policy_call& c) noexcept;
  // A connection finished a request: kept for the next, or closed.
  void give_back(policy_conn* conn) noexcept;
  void forget(policy_conn* conn) noexcept { std::erase(idle_, conn); }
  // No more idle connections: the filter is gone, or the loop ends.
  void retire() noexcept;
  // A line about this service: "policy ADDR: what".
  void say(log_level level, std::string_view what) const noexcept {
    try {
      log(level, fmt::format(FMT_STRING("policy {}: {}"), o_.address, what));
    } catch (...) {
      // Out of memory: no line.
    }
  }
  // What the server sent is escaped, as the session's log lines are.
  void log(log_level level, std::string_view line) const noexcept {
    try {
      o_.log.write(o_.log.ctx, level, proto::printable(line));
    } catch (...) {
      // Out of memory: no line.
    }
  }
  [[nodiscard]] const policy_options& options() const noexcept { return o_; }
  [[nodiscard]] uv_loop_t* loop() const noexcept { return loop_; }
  [[nodiscard]] const std::string& path() const noexcept { return path_; }
  [[nodiscard]] const sockaddr* address() const noexcept {
    return reinterpret_cast<const sockaddr*>(&addr_);
  }
  // For close_policy_connections(): every pool of the process.
  static std::vector<policy_pool*>& all() {
    static std::vector<policy_pool*> pools;
    return pools;
  }

 private:
  ~policy_pool() { std::erase(all(), this); }
  uv_loop_t* loop_;
  policy_options o_;
  std::string path_;  // unix:; else addr_
  sockaddr_storage addr_{};
  std::size_t refs_ = 0;
  bool retired_ = false;
  bool registered_ = false;
  std::vector<policy_conn*> idle_;
};

class policy_conn {
 public:
  explicit policy_conn(policy_pool& pool) : pool_(pool), born_(uv_now(pool.loop())) {
    pool_.ref();
    unix_ = !pool.path().empty();
    if (unix_)
      uv_pipe_init(pool.loop(), &h_.pipe, 0);
    else
      uv_tcp_init(pool.loop(), &h_.tcp);
    h_.handle.data = this;
    uv_timer_init(pool.loop(), &timer_);
    timer_.data = this;
  }
  policy_conn(const policy_conn&) = delete;
  policy_conn& operator=(const policy_conn&) = delete;

  // Connects (after delay_ms), then runs c.
  void open(policy_call& c, std::uint64_t delay_ms) {
    attach(c);
    state_ = st::delaying;
    uv_timer_start(&timer_, delay_cb, delay_ms, 0);
  }
  // Runs c on this connection, which is idle.
  void run(policy_call& c) {
    attach(c);
    send();
  }
  // Closes the connection; its call, if any, is not answered.
  void close() noexcept {
    if (state_ == st::closing) return;
    state_ = st::closing;
    if (call_) call_->conn = nullptr;
    call_ = nullptr;
    pool_.forget(this);
    uv_close(reinterpret_cast<uv_handle_t*>(&timer_), close_cb);
    uv_close(&h_.handle, close_cb);
  }
  // Idle until the next request, for at most max_idle.
  void rest() {
    state_ = st::idle;
    auto idle = static_cast<std::uint64_t>(pool_.options().max_idle.count());
    uv_timer_start(&timer_, idle_cb, std::max<std::uint64_t>(idle, 1), 0);
  }
  // Whether it may serve another request.
  [[nodiscard]] bool reusable() const noexcept {
    const policy_options& o = pool_.options();
    auto age = uv_now(pool_.loop()) - born_;
    return state_ == st::busy && age < static_cast<std::uint64_t>(o.max_ttl.count()) &&
           (o.request_limit == 0 || requests_ < o.request_limit);
  }

 private:
  enum class st : std::uint8_t { delaying, connecting, busy, idle, closing };

  void attach(policy_call& c) {
    call_ = &c;
    c.conn = this;
    decoder_.reset();
  }
  void arm() {
    auto ms = static_cast<std::uint64_t>(pool_.options().timeout.count());
    uv_timer_start(&timer_, timeout_cb, std::max<std::uint64_t>(ms, 1), 0);
  }
  void connect() {
    state_ = st::connecting;
    arm();
    connect_req_.data = this;
    if (unix_) {
      uv_pipe_connect(&connect_req_, &h_.pipe, pool_.path().c_str(), connect_cb);
      return;
    }
    if (int rc = uv_tcp_connect(&connect_req_, &h_.tcp, pool_.address(), connect_cb); rc != 0)
      fail(fmt::format(FMT_STRING("cannot connect: {}"), uv_strerror(rc)));
  }
  // A write request and a copy of the bytes of its own each time: the
  // answer may come (and the connection serve the next request, or the call
  // go) before libuv reports this write done, and libuv reads the bytes
  // until then.
  struct write_req {
    uv_write_t req;
    policy_conn* conn;
    std::string bytes;
  };
  void send() {
    state_ = st::busy;
    arm();
    auto* w = new write_req{{}, this, call_->request};
    w->req.data = w;
    uv_buf_t buf = uv_buf_init(w->bytes.data(), static_cast<unsigned>(w->bytes.size()));
    if (int rc = uv_write(&w->req, stream(), &buf, 1, write_cb); rc != 0) {
      delete w;
      fail(fmt::format(FMT_STRING("cannot send: {}"), uv_strerror(rc)));
    }
  }
  uv_stream_t* stream() noexcept { return reinterpret_cast<uv_stream_t*>(&h_.handle); }

  // This attempt failed: the connection goes, and the call is tried again
  // or answered with the reason.
  void fail(std::string why) noexcept {
    policy_call* c = call_;
    pool_.say(log_level::warning, why);
    close();
    if (!c) return;
    if (c->tries < std::max(1u, pool_.options().try_limit)) {
      try {
        return pool_.start(*c);
      } catch (...) {
        why = "out of memory";
      }
    }
    c->done(false, why);
  }
  // The answer is in: the connection goes back to the pool (where the
  // call's owner may take it again from inside done()), so the action is
  // copied first.
  void answered() noexcept {
    std::string action;
    try {
      action.assign(decoder_.action());
    } catch (...) {
      return fail("out of memory");
    }
    uv_timer_stop(&timer_);
    ++requests_;
    policy_call* c = std::exchange(call_, nullptr);
    c->conn = nullptr;
    pool_.give_back(this);
    c->done(true, action);
  }

  static void delay_cb(uv_timer_t* t) noexcept { static_cast<policy_conn*>(t->data)->connect(); }
  static void idle_cb(uv_timer_t* t) noexcept { static_cast<policy_conn*>(t->data)->close(); }
  static void timeout_cb(uv_timer_t* t) noexcept {
    static_cast<policy_conn*>(t->data)->fail("timed out");
  }
  static void connect_cb(uv_connect_t* req, int status) noexcept {
    auto* self = static_cast<policy_conn*>(req->data);
    if (status == UV_ECANCELED || self->state_ == st::closing) return;
    if (status != 0)
      return self->fail(fmt::format(FMT_STRING("cannot connect: {}"), uv_strerror(status)));
    if (int rc = uv_read_start(self->stream(), alloc_cb, read_cb); rc != 0)
      return self->fail(fmt::format(FMT_STRING("cannot read: {}"), uv_strerror(rc)));
    self->send();
  }
  static void write_cb(uv_write_t* req, int status) noexcept {
    auto* w = static_cast<write_req*>(req->data);
    policy_conn* self = w->conn;
    delete w;
    if (status == UV_ECANCELED || self->state_ == st::closing) return;
    if (status != 0) self->fail(fmt::format(FMT_STRING("cannot send: {}"), uv_strerror(status)));
  }
  static void alloc_cb(uv_handle_t* h, std::size_t, uv_buf_t* buf) noexcept {
    auto* self = static_cast<policy_conn*>(h->data);
    *buf = uv_buf_init(self->in_, sizeof self->in_);
  }
  static void read_cb(uv_stream_t* s, ssize_t n, const uv_buf_t*) noexcept {
    auto* self = static_cast<policy_conn*>(s->data);
    if (n == 0 || self->state_ == st::closing) return;
    if (n < 0) {
      if (self->state_ != st::busy) return self->close();  // The server closed an idle one.
      return self->fail(n == UV_EOF ? std::string("connection closed before the answer")
                                    : fmt::format(FMT_STRING("cannot read: {}"),
                                                  uv_strerror(static_cast<int>(n))));
    }
    std::string_view bytes(self->in_, static_cast<std::size_t>(n));
    if (self->state_ != st::busy) return self->fail("answer without a request");
    auto r = self->decoder_.feed(bytes);
    if (r.st == policy_answer_decoder::status::error)
      return self->fail(std::string(self->decoder_.error()));
    if (r.st == policy_answer_decoder::status::need_more) return;
    if (r.consumed != bytes.size()) return self->fail("more than one answer");
    self->answered();
  }
  static void close_cb(uv_handle_t* h) noexcept {
    auto* self = static_cast<policy_conn*>(h->data);
    if (++self->closed_ < 2) return;
    policy_pool& pool = self->pool_;
    delete self;
    pool.unref();
  }

  policy_pool& pool_;
  union {
    uv_handle_t handle;
    uv_tcp_t tcp;
    uv_pipe_t pipe;
  } h_{};
  uv_timer_t timer_{};
  uv_connect_t connect_req_{};
  bool unix_ = false;
  st state_ = st::delaying;
  int closed_ = 0;
  std::uint64_t born_;
  std::size_t requests_ = 0;
  policy_call* call_ = nullptr;
  policy_answer_decoder decoder_;
  char in_[1024];
};

void policy_pool::start(policy_call& c) {
  // Known to close_policy_connections() from its first use, on the loop
  // thread (a reload may make the filter on another).
  if (!registered_) {
    all().push_back(this);
    registered_ = true;
  }
  ++c.tries;
  if (c.tries == 1 && !idle_.empty()) {
    policy_conn* conn = idle_.back();
    idle_.pop_back();
    return conn->run(c);
  }
  auto* conn = new policy_conn(*this);
  conn->open(c, c.tries == 1 ? 0 : retry_delay_ms);
}

void policy_pool::cancel(policy_call& c) noexcept {
  if (c.conn) c.conn->close();
}

void policy_pool::give_back(policy_conn* conn) noexcept {
  if (retired_ || !conn->reusable() || idle_.size() >= max_idle_connections) return conn->close();
  try {
    idle_.push_back(conn);
  } catch (...) {
    return conn->close();
  }
  conn->rest();
}

void policy_pool::retire() noexcept {
  retired_ = true;
  while (!idle_.empty()) idle_.back()->close();  // close() takes it off the list
}

// What the session knew at its last question, copied for the next ones
// and for the end of the message.
struct known_state {
  std::string helo, tls, sasl_method, sasl_user, queue_id, sender;
  std::size_t recipients = 0;
  void take(const filter_state& s) {
    helo.assign(s.helo);
    tls.assign(s.tls);
    sasl_method.assign(s.sasl_method);
    sasl_user.assign(s.sasl_user);
    queue_id.assign(s.queue_id);
    sender.assign(s.reverse_path);
    recipients = s.recipients;
  }
};

struct client_info {
  std::string address, name;
  std::uint16_t port = 0;
  bool lmtp = false;
};

// "PID.SESSION.TRANSACTION": the same for each request about one message,
// as Postfix's instance attribute (postgrey adds its X-Greylist header
// once per instance).
std::string next_instance(std::uint64_t session, std::uint64_t tx) {
  return fmt::format(FMT_STRING("{:x}.{:x}.{:x}"), static_cast<unsigned>(::getpid()), session, tx);
}

std::string encode(const client_info& c, const known_state& k, std::string_view state,
                   std::string_view recipient, std::size_t count, std::size_t size,
                   std::string_view instance) {
  std::string out;
  proto::encode_policy_request({.protocol_state = state,
                                .protocol_name = c.lmtp ? "LMTP" : "ESMTP",
                                .helo_name = k.helo,
                                .queue_id = k.queue_id,
                                .sender = k.sender,
                                .recipient = recipient,
                                .recipient_count = count,
                                .client_address = c.address,
                                .client_port = c.port,
                                .client_name = c.name,
                                .reverse_client_name = c.name,
                                .instance = instance,
                                .sasl_method = k.sasl_method,
                                .sasl_username = k.sasl_user,
                                .size = size,
                                .tls = k.tls},
                               out);
  return out;
}

// The answer (or the default action, when there was none) as a decision,
// and the note for the log: "policy ADDR: STATE <name>: ACTION".
policy_decision decide(const policy_pool& pool, bool ok, std::string_view text, policy_state state,
                       std::string_view name, std::string& note) {
  const policy_options& o = pool.options();
  std::string_view action = ok ? text : std::string_view(o.default_action);
  note =
      fmt::format(FMT_STRING("policy {}: {}{}{}: {}{}"), o.address,
                  state == policy_state::rcpt ? "RCPT <" : "END-OF-MESSAGE",
                  state == policy_state::rcpt ? name : "", state == policy_state::rcpt ? ">" : "",
                  ok ? "" : "no answer, default action ", action.substr(0, 120));
  return proto::decide_policy(action, state, name);
}

// Asks END-OF-MESSAGE before its message is committed to the next delivery.
class policy_delivery final : public delivery, public delivery_listener, public policy_call {
 public:
  policy_delivery(policy_pool& pool, const client_info& client, const known_state& known,
                  std::string instance, const envelope& env, sink& next, delivery_listener& l)
      : pool_(pool),
        listener_(l),
        client_(client),
        known_(known),
        instance_(std::move(instance)),
        mailboxes_(env.recipients.size()) {
    // Postfix gives the recipient at the end of the message when there was one.
    if (known_.recipients == 1 && !env.recipients.empty())
      recipient_ = env.recipients.front().address;
    inner_ = next.begin(env, *this);
    pool_.ref();  // After begin(), which may throw.
  }
  bool write(std::string_view bytes) override {
    size_ += bytes.size();
    return inner_->write(bytes);
  }
  void commit() override {
    request =
        encode(client_, known_, "END-OF-MESSAGE", recipient_, known_.recipients, size_, instance_);
    asking_ = true;
    pool_.ask(*this);
  }
  void abort() noexcept override {
    if (asking_) pool_.cancel(*this);
    inner_->abort();
    finish();
  }
  void writable() noexcept override { listener_.writable(); }
  void committed(std::span<const store_outcome> outcomes) noexcept override {
    delivery_listener& l = listener_;
    finish();
    l.committed(outcomes);
  }
  void done(bool ok, std::string_view text) noexcept override {
    asking_ = false;
    try {
      std::string note;
      policy_decision d = decide(pool_, ok, text, policy_state::end_of_message, "", note);
      pool_.log(
          d.action == filter_action::proceed && !d.warn ? log_level::info : log_level::warning,
          fmt::format(FMT_STRING("id={} {}"), known_.queue_id, note));
      if (d.action == filter_action::proceed) return inner_->commit();
      inner_->abort();
      store_outcome o{.result = d.action == filter_action::reject ? store_result::permanent_fail
                                                                  : store_result::temporary_fail,
                      .reply = d.reply};
      if (d.action == filter_action::discard) o = {};
      std::vector<store_outcome> out(mailboxes_, o);
      delivery_listener& l = listener_;
      finish();
      l.committed(out);
    } catch (...) {
      inner_->abort();
      std::vector<store_outcome> none;
      delivery_listener& l = listener_;
      finish();
      l.committed(none);  // The session reads a short list as failed.
    }
  }

 private:
  void finish() noexcept {
    policy_pool& pool = pool_;
    delete this;
    pool.unref();
  }
  policy_pool& pool_;
  delivery_listener& listener_;
  client_info client_;
  known_state known_;
  std::string instance_, recipient_;
  std::size_t mailboxes_, size_ = 0;
  delivery* inner_ = nullptr;
  bool asking_ = false;
};

class policy_session final : public filter_session, public policy_call {
 public:
  policy_session(policy_pool& pool, const filter_client& c)
      : pool_(pool),
        client_{std::string(c.address), std::string(c.name.empty() ? "unknown" : c.name), c.port,
                c.lmtp} {
    static std::uint64_t sessions = 0;
    session_ = ++sessions;
    pool_.ref();
  }
  void ask(filter_stage stage, const filter_state& st, filter_listener& l) override {
    if (stage >= filter_stage::mail) known_.take(st);
    if (stage != filter_stage::rcpt) return l.filtered({});
    if (instance_.empty()) instance_ = next_instance(session_, ++transactions_);
    recipient_.assign(st.recipient);
    request = encode(client_, known_, "RCPT", recipient_, 0, st.size, instance_);
    listener_ = &l;
    pool_.ask(*this);
  }
  delivery* message(const envelope& env, sink& next, delivery_listener& l) override {
    if (!pool_.options().at_data) return nullptr;
    if (instance_.empty()) instance_ = next_instance(session_, ++transactions_);
    return new policy_delivery(pool_, client_, known_, instance_, env, next, l);
  }
  void reset() noexcept override { instance_.clear(); }
  void close() noexcept override {
    if (listener_) pool_.cancel(*this);
    policy_pool& pool = pool_;
    delete this;
    pool.unref();
  }
  void done(bool ok, std::string_view text) noexcept override {
    filter_listener* l = std::exchange(listener_, nullptr);
    try {
      std::string note;
      policy_decision d = decide(pool_, ok, text, policy_state::rcpt, recipient_, note);
      if (d.warn)
        pool_.log(log_level::warning, fmt::format(FMT_STRING("id={} {}"), known_.queue_id, note));
      l->filtered({.action = d.action, .reply = d.reply, .prepend = d.prepend, .note = note});
    } catch (...) {
      l->filtered({.action = filter_action::tempfail, .note = "policy: out of memory"});
    }
  }

 private:
  policy_pool& pool_;
  client_info client_;
  known_state known_;
  std::string recipient_, instance_;
  std::uint64_t session_ = 0, transactions_ = 0;
  filter_listener* listener_ = nullptr;
};

class policy_filter final : public filter {
 public:
  policy_filter(uv_loop_t* loop, policy_options o) : pool_(new policy_pool(loop, std::move(o))) {
    pool_->ref();
  }
  policy_filter(const policy_filter&) = delete;
  policy_filter& operator=(const policy_filter&) = delete;
  ~policy_filter() override {
    pool_->retire();
    pool_->unref();
  }
  filter_session* open(const filter_client& client) override {
    return new policy_session(*pool_, client);
  }

 private:
  policy_pool* pool_;
};

}  // namespace

bool check_policy_address(std::string_view address, std::string& error) {
  std::string_view a = address;
  if (a.starts_with("inet:")) a.remove_prefix(5);
  if (a.starts_with("unix:")) {
    if (a.size() > 5 && a[5] == '/') return true;
    error = fmt::format(FMT_STRING("policy service {}: want unix:/absolute/path"), address);
    return false;
  }
  sockaddr_storage ss{};
  if (a.rfind(':') != 0 && net::parse_address(a, ss)) return true;
  error = fmt::format(
      FMT_STRING("policy service {}: want IP:PORT, [IPv6]:PORT, inet:IP:PORT or unix:/path"),
      address);
  return false;
}

std::shared_ptr<filter> make_policy_filter(uv_loop_t* loop, policy_options options) {
  return std::make_shared<policy_filter>(loop, std::move(options));
}

void close_policy_connections(uv_loop_t* loop) noexcept {
  for (policy_pool* p : policy_pool::all())
    if (p->loop() == loop) p->retire();
}

}  // namespace inboxd
