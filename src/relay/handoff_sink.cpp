// relay/handoff_sink.cpp: the LMTP and SMTP hand-off sinks (sinks.hpp).
//
// Each message goes to the next hop while our client waits: the delivery
// takes a connection (a hop) from the sink's pool or opens one, and the hop
// drives proto::smtp_client over libuv (TCP or a unix socket, STARTTLS
// through net/tls). Body bytes go on as they come; what the hop cannot take
// yet waits in the client, and write() says "pause" past high_water or the
// shared memory budget. The outcomes are the hop's replies, per recipient.
//
// Ownership: a hop belongs to the delivery using it, or to the sink's pool
// while idle, and frees itself in its last close callback. A delivery
// frees itself after committed() or abort(); an aborted delivery closes its
// hop (a transaction cannot be taken back otherwise: the hop drops it).
// What every hop needs (addresses, TLS config) is a hop_config that hops
// share, so that a hop closing after its sink is gone still has it.
#include <netdb.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>
#include <uv.h>

#include <fmt/format.h>
#include <cstring>
#include <fstream>
#include <utility>
#include <vector>

#include "inboxd/sinks.hpp"
#include "net/tls.hpp"
#include "proto/smtp_client.hpp"

namespace inboxd {

namespace {

using proto::smtp_client;
using state = smtp_client::state;

// Body bytes one delivery holds (waiting for the hop, or on their way to it)
// before it asks the session to pause.
constexpr std::size_t high_water = 256 * 1024;

struct hop_config {
  handoff_options options;
  bool unix_socket = false;
  std::string path;  // of the unix socket
  std::string host;  // the name the hop's certificate must have (require)
  sockaddr_storage address{};
  proto::smtp_client_options client;
  std::shared_ptr<const tls_credentials> tls;  // null: no STARTTLS
};

class handoff_sink;
class handoff_delivery;

class hop {
 public:
  hop(uv_loop_t* loop, std::shared_ptr<const hop_config> config);
  hop(const hop&) = delete;
  hop& operator=(const hop&) = delete;

  void connect();
  void close() noexcept;
  // After the client changed (a message started, body bytes, the end of
  // it): sends what it wrote and acts on its state.
  void changed();
  [[nodiscard]] std::size_t in_flight() const noexcept { return in_flight_; }
  [[nodiscard]] bool encrypted() const noexcept { return tls_ && tls_->established(); }

  smtp_client client;
  handoff_delivery* user = nullptr;  // the delivery using it
  handoff_sink* pool = nullptr;      // the sink whose pool holds it, while idle

 private:
  static void connect_cb(uv_connect_t* req, int status) noexcept;
  static void alloc_cb(uv_handle_t* handle, size_t, uv_buf_t* buf) noexcept;
  static void read_cb(uv_stream_t* stream, ssize_t nread, const uv_buf_t* buf) noexcept;
  static void write_cb(uv_write_t* req, int status) noexcept;
  static void timer_cb(uv_timer_t* timer) noexcept;
  static void close_cb(uv_handle_t* handle) noexcept;
  uv_stream_t* stream() noexcept { return reinterpret_cast<uv_stream_t*>(&h_); }
  void on_bytes(std::string_view bytes);
  void on_plain(std::string_view bytes);
  void react();
  void flush();
  void send(std::string& bytes);
  void start_tls();
  void lost(std::string_view reply);
  void arm_timer();

  std::shared_ptr<const hop_config> config_;
  union {
    uv_tcp_t tcp;
    uv_pipe_t pipe;
  } h_{};
  uv_timer_t timer_{};
  uv_connect_t connect_{};
  std::unique_ptr<net::tls_stream> tls_;
  std::size_t in_flight_ = 0;
  int handles_ = 0;  // open handles: freed when the last one closes
  bool connected_ = false;
  bool closing_ = false;
  char buf_[16 * 1024];
};

class handoff_sink final : public sink {
 public:
  handoff_sink(uv_loop_t* loop, std::shared_ptr<const hop_config> config)
      : loop_(loop), config_(std::move(config)) {}
  ~handoff_sink() override { drain(); }
  void drain() noexcept override;
  delivery* begin(const envelope& env, delivery_listener& listener) override;
  [[nodiscard]] bool carries_dsn() const noexcept override { return config_->options.dsn; }
  // A delivery is done with its hop: the pool keeps it when it is usable.
  void give_back(hop* h);
  void forget(hop* h) noexcept;  // an idle hop that closes

  std::shared_ptr<memory_budget> memory;

 private:
  hop* take();
  uv_loop_t* loop_;
  std::shared_ptr<const hop_config> config_;
  std::vector<hop*> idle_;
  bool draining_ = false;  // the server drains: no more idle connections
};

// The envelope, copied: begin()'s views are borrowed, and a message starts
// on a new connection only once the hop has greeted.

class handoff_delivery final : public delivery {
 public:
  handoff_delivery(handoff_sink& sink, const envelope& env, delivery_listener& listener)
      : sink_(&sink), memory_(sink.memory), envelope_(env), listener_(&listener) {}
  handoff_delivery(const handoff_delivery&) = delete;
  handoff_delivery& operator=(const handoff_delivery&) = delete;

  bool write(std::string_view bytes) override;
  void commit() override;
  void abort() noexcept override;

  // begin() gives it its hop before anything can happen on it: an abort()
  // before the message started must still unlink and close it.
  void attach(hop* h) noexcept { hop_ = h; }
  // The hop is ready for this message (at once, or once it has greeted).
  void start(hop* h);
  // The hop has the outcomes (state done), or failed (state failed).
  void finished(hop* h);
  // The hop took bytes: maybe the session may write again.
  void drained() noexcept;

 private:
  void take_results(const smtp_client& client);
  void report();
  void account() noexcept;
  [[nodiscard]] std::size_t holding() const noexcept;

  handoff_sink* sink_;
  std::shared_ptr<memory_budget> memory_;
  owned_envelope envelope_;
  delivery_listener* listener_;
  hop* hop_ = nullptr;
  std::string early_;  // body bytes before the message started at the hop
  std::vector<std::string> replies_;
  std::vector<store_outcome> outcomes_;
  std::size_t counted_ = 0;  // in memory_->used
  bool started_ = false, committing_ = false, have_results_ = false, paused_ = false;
  bool in_write_ = false;
};

// --- hop ---

hop::hop(uv_loop_t* loop, std::shared_ptr<const hop_config> config)
    : client(config->client), config_(std::move(config)) {
  uv_timer_init(loop, &timer_);
  timer_.data = this;
  ++handles_;
  if (config_->unix_socket)
    uv_pipe_init(loop, &h_.pipe, 0);
  else
    uv_tcp_init(loop, &h_.tcp);
  h_.tcp.data = this;  // The same field in both: uv_handle_t's.
  ++handles_;
}

void hop::connect() {
  connect_.data = this;
  int rc = 0;
  if (config_->unix_socket)
    uv_pipe_connect(&connect_, &h_.pipe, config_->path.c_str(), connect_cb);
  else
    rc = uv_tcp_connect(&connect_, &h_.tcp, reinterpret_cast<const sockaddr*>(&config_->address),
                        connect_cb);
  if (rc != 0)
    return lost(
        fmt::format(FMT_STRING("451 4.4.1 cannot connect to the next hop: {}"), uv_strerror(rc)));
  uv_timer_start(&timer_, timer_cb, config_->options.connect_timeout.count(), 0);
}

void hop::connect_cb(uv_connect_t* req, int status) noexcept {
  auto* self = static_cast<hop*>(req->data);
  if (self->closing_) return;
  if (status < 0)
    return self->lost(fmt::format(FMT_STRING("451 4.4.1 cannot connect to the next hop: {}"),
                                  uv_strerror(status)));
  self->connected_ = true;
  if (int rc = uv_read_start(self->stream(), alloc_cb, read_cb); rc != 0)
    return self->lost("451 4.4.2 cannot read from the next hop");
  self->arm_timer();
}

void hop::alloc_cb(uv_handle_t* handle, size_t, uv_buf_t* buf) noexcept {
  auto* self = static_cast<hop*>(handle->data);
  *buf = uv_buf_init(self->buf_, sizeof self->buf_);
}

void hop::read_cb(uv_stream_t* stream, ssize_t nread, const uv_buf_t* buf) noexcept {
  auto* self = static_cast<hop*>(stream->data);
  if (self->closing_ || nread == 0) return;
  if (nread < 0) {
    if (self->client.current() == state::quit) return self->close();
    return self->lost("451 4.4.2 next hop closed the connection");
  }
  try {
    self->on_bytes({buf->base, static_cast<std::size_t>(nread)});
  } catch (...) {
    self->lost("451 4.3.0 out of memory");
  }
}

void hop::on_bytes(std::string_view bytes) {
  if (!tls_) return on_plain(bytes);
  tls_->feed(bytes);
  if (!tls_->established()) {
    net::tls_stream::status st = tls_->handshake();
    flush();
    if (st == net::tls_stream::status::failed)
      return lost("451 4.7.5 TLS handshake with the next hop failed: " +
                  tls_error_text(tls_->error()));
    if (st != net::tls_stream::status::ok) return arm_timer();
    client.tls_started();
    changed();
  }
  char plain[16 * 1024];
  while (!closing_) {
    std::size_t n = 0;
    net::tls_stream::status st = tls_->read(plain, sizeof plain, n);
    if (st == net::tls_stream::status::failed)
      return lost("451 4.4.2 TLS error from the next hop: " + tls_error_text(tls_->error()));
    if (st == net::tls_stream::status::closed) return lost("451 4.4.2 next hop closed TLS");
    if (st != net::tls_stream::status::ok || n == 0) break;
    on_plain({plain, n});
  }
}

void hop::on_plain(std::string_view bytes) {
  do {
    bool ok = client.feed(bytes);
    if (!ok) return lost(client.error());
    changed();
  } while (!closing_ && !bytes.empty());
}

void hop::changed() {
  flush();
  react();
  if (closing_) return;
  arm_timer();
  // A refusal drops the body bytes the client held (a refused RCPT, DATA or
  // BDAT): a session paused for them may go on (drained() decides).
  if (user) user->drained();
}

// What the client's state asks of the I/O side.
void hop::react() {
  switch (client.current()) {
    case state::handshake:
      if (!tls_) start_tls();
      return;
    case state::ready:
      if (user) user->start(this);
      return;
    case state::done:
      if (user) user->finished(this);
      return;
    case state::failed: return lost(client.error());
    default: return;
  }
}

void hop::start_tls() {
  tls_ = std::make_unique<net::tls_stream>(config_->tls);
  if (config_->options.starttls == handoff_options::tls::require) tls_->set_hostname(config_->host);
  if (tls_->handshake() == net::tls_stream::status::failed)
    return lost("451 4.7.5 cannot start TLS: " + tls_error_text(tls_->error()));
  flush();
}

void hop::flush() {
  std::string& out = client.output();
  if (tls_ && tls_->established() && !out.empty()) {
    if (tls_->write(out) == net::tls_stream::status::failed) return lost("451 4.4.2 TLS error");
    out.clear();
  }
  send(tls_ ? tls_->output() : out);
}

struct write_req {
  uv_write_t req;
  hop* owner;
  std::string bytes;
};

void hop::send(std::string& bytes) {
  if (bytes.empty() || closing_ || !connected_) return;
  auto* w = new write_req;
  w->bytes.swap(bytes);
  w->req.data = w;
  w->owner = this;
  uv_buf_t b = uv_buf_init(w->bytes.data(), static_cast<unsigned>(w->bytes.size()));
  in_flight_ += w->bytes.size();
  if (int rc = uv_write(&w->req, stream(), &b, 1, write_cb); rc != 0) {
    in_flight_ -= w->bytes.size();
    delete w;
    lost(fmt::format(FMT_STRING("451 4.4.2 cannot write to the next hop: {}"), uv_strerror(rc)));
  }
}

void hop::write_cb(uv_write_t* req, int status) noexcept {
  std::unique_ptr<write_req> w(static_cast<write_req*>(req->data));
  hop* self = w->owner;
  self->in_flight_ -= w->bytes.size();
  if (self->closing_) return;
  if (status < 0) return self->lost("451 4.4.2 next hop closed the connection");
  self->arm_timer();
  if (self->user) self->user->drained();
}

// Each wait for the hop has its time, counted from the last progress: the
// greeting and each reply the command timeout, a body the hop does not take
// the data timeout, an idle connection in the pool max_idle.
void hop::arm_timer() {
  const handoff_options& o = config_->options;
  std::chrono::milliseconds t{0};
  switch (client.current()) {
    case state::body:
      if (in_flight_ > 0)
        t = o.data_timeout;
      else if (client.awaiting_reply())
        t = o.command_timeout;
      break;
    case state::ready:
    case state::done:
      if (pool) t = o.max_idle;
      if (!pool && !user) t = o.command_timeout;
      break;
    case state::failed: return;
    default: t = in_flight_ > 0 ? o.data_timeout : o.command_timeout;
  }
  if (t.count() > 0 && (user || pool || client.current() == state::quit))
    uv_timer_start(&timer_, timer_cb, static_cast<std::uint64_t>(t.count()), 0);
  else
    uv_timer_stop(&timer_);
}

void hop::timer_cb(uv_timer_t* timer) noexcept {
  auto* self = static_cast<hop*>(timer->data);
  if (self->pool) {
    // Idle too long: QUIT, and close whatever the hop says.
    self->pool->forget(self);
    self->client.quit();
    self->flush();
    return self->close();
  }
  self->lost(self->connected_ ? "451 4.4.2 next hop timed out"
                              : "451 4.4.1 connecting to the next hop timed out");
}

// The connection is gone or useless: the delivery (if any) gets what the
// client knows, every open recipient a temporary failure with reply.
void hop::lost(std::string_view reply) {
  if (closing_) return;
  client.fail(reply);
  if (pool) pool->forget(this);
  handoff_delivery* u = std::exchange(user, nullptr);
  close();
  if (u) u->finished(this);
}

void hop::close() noexcept {
  if (closing_) return;
  closing_ = true;
  if (pool) pool->forget(this);
  user = nullptr;
  uv_close(reinterpret_cast<uv_handle_t*>(&timer_), close_cb);
  uv_close(reinterpret_cast<uv_handle_t*>(&h_), close_cb);
}

void hop::close_cb(uv_handle_t* handle) noexcept {
  auto* self = static_cast<hop*>(handle->data);
  if (--self->handles_ == 0) delete self;
}

// --- sink ---

void handoff_sink::drain() noexcept {
  draining_ = true;
  for (hop* h : std::exchange(idle_, {})) {
    h->pool = nullptr;
    try {
      h->client.quit();
      h->changed();
    } catch (...) {
      // No memory for QUIT: the hop sees the connection close.
    }
    h->close();
  }
}

hop* handoff_sink::take() {
  while (!idle_.empty()) {
    hop* h = idle_.back();
    idle_.pop_back();
    h->pool = nullptr;
    if (h->client.usable()) return h;
    h->close();  // Still in RSET, or gone bad: not worth waiting for.
  }
  // Not connected yet: begin() links it to its delivery first, so that a
  // connect that fails at once has someone to tell.
  return new hop(loop_, config_);
}

void handoff_sink::give_back(hop* h) {
  h->user = nullptr;
  h->client.take();
  bool keep = !draining_ && config_->options.max_idle.count() > 0 &&
              idle_.size() < config_->options.max_pool &&
              (h->client.current() == state::ready || h->client.current() == state::reset);
  if (!keep) {
    h->client.quit();
    h->changed();
    return h->close();
  }
  h->pool = this;
  idle_.push_back(h);
  h->changed();
}

void handoff_sink::forget(hop* h) noexcept {
  h->pool = nullptr;
  std::erase(idle_, h);
}

delivery* handoff_sink::begin(const envelope& env, delivery_listener& listener) {
  auto* d = new handoff_delivery(*this, env, listener);
  hop* h = take();
  h->user = d;  // Both ways at once: see abort().
  d->attach(h);
  if (h->client.usable())
    d->start(h);
  else
    h->connect();  // A connect that fails at once tells d through lost().
  return d;
}

// --- delivery ---

void handoff_delivery::start(hop* h) {
  if (started_) return;
  started_ = true;
  hop_ = h;
  if (!h->client.start(envelope_.view(), h->encrypted())) return finished(h);
  h->client.body(early_);
  early_.clear();
  early_.shrink_to_fit();
  if (committing_) h->client.finish();
  h->changed();
}

bool handoff_delivery::write(std::string_view bytes) {
  if (have_results_) return true;  // The outcome is known: the rest goes nowhere.
  if (started_) {
    // The hop's progress may not call the listener from inside write().
    in_write_ = true;
    hop_->client.body(bytes);
    hop_->changed();
    in_write_ = false;
    if (have_results_) return true;  // The hop failed meanwhile.
  } else {
    early_.append(bytes);
  }
  account();
  if (holding() > high_water || (memory_->used > memory_->limit && holding() > 0)) paused_ = true;
  return !paused_;
}

void handoff_delivery::commit() {
  committing_ = true;
  if (have_results_) return report();
  if (started_) {
    hop_->client.finish();
    hop_->changed();
  }
}

void handoff_delivery::abort() noexcept {
  // Started or not (still connecting or greeting), the hop must not call
  // this delivery any more: it is closed, and drops the transaction if any.
  if (hop* h = std::exchange(hop_, nullptr)) {
    h->user = nullptr;
    h->close();
  }
  memory_->used -= counted_;
  delete this;
}

void handoff_delivery::finished(hop* h) {
  take_results(h->client);
  hop_ = nullptr;
  if (h->user == this) sink_->give_back(h);
  if (committing_) return report();
  // A paused session waits for writable(): the rest of its body goes nowhere now.
  if (paused_ && !in_write_) {
    paused_ = false;
    listener_->writable();
  }
}

void handoff_delivery::take_results(const smtp_client& client) {
  have_results_ = true;
  std::size_t n = envelope_.recipients.size();
  replies_.assign(n, {});
  outcomes_.assign(n, {});
  bool known = client.outcomes().size() > 0 && started_;
  for (std::size_t i = 0; i < n; ++i) {
    if (known) {
      replies_[i] = client.outcome_of(i).reply;
      outcomes_[i].result = client.outcome_of(i).result;
    } else {
      replies_[i] = client.error();
      outcomes_[i].result = store_result::temporary_fail;
    }
  }
  for (std::size_t i = 0; i < n; ++i) outcomes_[i].reply = replies_[i];
  early_.clear();
  account();
}

void handoff_delivery::report() {
  memory_->used -= counted_;
  counted_ = 0;
  delivery_listener* l = listener_;
  std::vector<store_outcome> outcomes = std::move(outcomes_);
  std::vector<std::string> keep = std::move(replies_);
  delete this;
  l->committed(outcomes);
}

std::size_t handoff_delivery::holding() const noexcept {
  return early_.size() + (hop_ ? hop_->client.held() + hop_->in_flight() : 0);
}

void handoff_delivery::account() noexcept {
  std::size_t now = holding();
  memory_->used = memory_->used - counted_ + now;
  counted_ = now;
}

void handoff_delivery::drained() noexcept {
  account();
  if (!paused_ || in_write_ || committing_ || holding() > high_water / 2) return;
  paused_ = false;
  listener_->writable();
}

// "host:port", "[v6]:port" or "unix:/path".
bool resolve(hop_config& c, std::string& error) {
  const std::string& to = c.options.to;
  if (to.starts_with("unix:")) {
    c.unix_socket = true;
    c.path = to.substr(5);
    if (c.path.empty() || c.path.size() >= sizeof(sockaddr_un::sun_path)) {
      error = fmt::format(FMT_STRING("bad unix socket path in '{}'"), to);
      return false;
    }
    return true;
  }
  std::size_t colon = to.rfind(':');
  if (colon == to.npos || colon + 1 == to.size()) {
    error = fmt::format(FMT_STRING("the next hop '{}' is not HOST:PORT or unix:PATH"), to);
    return false;
  }
  c.host = to.substr(0, colon);
  if (c.host.size() > 2 && c.host.front() == '[' && c.host.back() == ']')
    c.host = c.host.substr(1, c.host.size() - 2);
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  addrinfo* res = nullptr;
  if (int rc = ::getaddrinfo(c.host.c_str(), to.c_str() + colon + 1, &hints, &res); rc != 0) {
    error = fmt::format(FMT_STRING("cannot resolve the next hop '{}': {}"), to, gai_strerror(rc));
    return false;
  }
  std::memcpy(&c.address, res->ai_addr, res->ai_addrlen);
  ::freeaddrinfo(res);
  return true;
}

// The first line of the AUTH file: "user:password".
bool read_auth(hop_config& c, std::string& error) {
  if (c.options.auth_file.empty()) return true;
  std::ifstream in(c.options.auth_file);
  std::string line;
  if (!in || !std::getline(in, line)) {
    error = fmt::format(FMT_STRING("cannot read {}"), c.options.auth_file);
    return false;
  }
  if (!line.empty() && line.back() == '\r') line.pop_back();
  std::size_t colon = line.find(':');
  if (colon == line.npos || colon == 0) {
    error = fmt::format(FMT_STRING("{}: want one user:password line"), c.options.auth_file);
    return false;
  }
  c.client.auth_user = line.substr(0, colon);
  c.client.auth_password = line.substr(colon + 1);
  return true;
}

// One EHLO (LHLO) when the sink is opened: does the hop offer DSN, so that
// our EHLO may offer it too (RFC 3461 5.2)? This blocks, for 5 s at most (at
// start-up or on the pool, as open_handoff_sink may); a hop that is down
// then offers nothing, and --handoff-dsn says so instead.
bool probe_dsn(const hop_config& c) {
  sockaddr_un un{};
  const sockaddr* to = reinterpret_cast<const sockaddr*>(&c.address);
  socklen_t len = c.address.ss_family == AF_INET6 ? sizeof(sockaddr_in6) : sizeof(sockaddr_in);
  if (c.unix_socket) {
    un.sun_family = AF_UNIX;
    std::memcpy(un.sun_path, c.path.data(), c.path.size());
    to = reinterpret_cast<const sockaddr*>(&un);
    len = sizeof un;
  }
  int fd = ::socket(to->sa_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return false;
  timeval tv{.tv_sec = 5, .tv_usec = 0};
  ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  ::setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
  proto::smtp_client client({.lmtp = c.client.lmtp, .helo = c.client.helo});
  char buf[4096];
  bool ok = ::connect(fd, to, len) == 0;
  for (int reads = 0; ok && reads < 64 && client.current() != state::ready; ++reads) {
    ssize_t n = ::recv(fd, buf, sizeof buf, 0);
    std::string_view in(buf, n > 0 ? static_cast<std::size_t>(n) : 0);
    ok = n > 0 && client.feed(in);
    std::string& out = client.output();
    if (ok && !out.empty()) ok = ::send(fd, out.data(), out.size(), MSG_NOSIGNAL) > 0;
    out.clear();
  }
  bool dsn = ok && client.usable() && client.extensions().dsn;
  if (ok) {
    client.quit();
    ::send(fd, client.output().data(), client.output().size(), MSG_NOSIGNAL);
  }
  ::close(fd);
  return dsn;
}

}  // namespace

std::unique_ptr<sink> open_handoff_sink(uv_loop_t* loop, const handoff_options& options,
                                        std::string& error) {
  auto c = std::make_shared<hop_config>();
  c->options = options;
  c->client.lmtp = options.lmtp;
  c->client.helo = options.helo;
  c->client.starttls = static_cast<proto::smtp_client_options::tls>(options.starttls);
  if (!resolve(*c, error) || !read_auth(*c, error)) return nullptr;
  if (options.starttls != handoff_options::tls::none) {
    bool verify = options.starttls == handoff_options::tls::require;
    std::string ca = options.tls_ca;
    if (ca.empty() && verify) ca = "/etc/ssl/certs/ca-certificates.crt";
    auto creds = std::make_shared<tls_credentials>();
    if (creds->load_client(ca, verify, error) != 0) return nullptr;
    c->tls = std::move(creds);
  }
  if (!c->options.dsn) c->options.dsn = probe_dsn(*c);
  auto s = std::make_unique<handoff_sink>(loop, std::move(c));
  s->memory = options.memory ? options.memory : std::make_shared<memory_budget>();
  return s;
}

}  // namespace inboxd
