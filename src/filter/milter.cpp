// filter/milter.cpp: the milter client (inboxd/filters.hpp), on libuv.
//
// One connection per SMTP session (as Postfix opens one: libmilter closes
// it when the client goes). Each question of the session becomes a MACRO
// packet and a command, unless the milter asked to skip that step (NO*) or
// its reply (NR_*); the one reply that ends it becomes the verdict. The
// message is held (in memory within the shared budget, past it in an
// unnamed file written on the thread pool) while its headers, end of
// headers, body chunks and end of message go to the milter; only after the
// end-of-message reply does the next sink begin, with the changed envelope
// and the changed header section, and the body read back from where it is
// held. So nothing is stored before the milter agreed, as Postfix does.
//
// Failures (no connection, a timeout, a broken packet) apply the default
// action, Postfix's milter_default_action: tempfail or accept.
//
// Quarantine: Postfix puts the message on hold; inboxd has no queue, so
// the message is delivered and the reason logged (and noted in the log
// line), as with Postfix's "hold" being unavailable.
#include <fcntl.h>
#include <uv.h>

#include <fmt/format.h>
#include <algorithm>
#include <cctype>
#include <cstring>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "inboxd/filters.hpp"
#include "proto/milter_codec.hpp"

namespace inboxd {

namespace {

namespace m = proto::milter;
using m::command;
using m::reply_code;

constexpr std::string_view tempfail_reply = "451 4.7.1 Service unavailable - try again later";

// The changes a milter may make to one message (SMFIR_ADDHEADER,
// INSHEADER, CHGHEADER; ADDRCPT, ADDRCPT_PAR, DELRCPT); past them, or past
// header_section::max_work, it is broken (its default action): each change
// costs the loop up to a scan of the fields or the recipients, so the end
// of a message stays bounded whatever a hostile milter sends.
constexpr std::size_t max_header_changes = 1000;
constexpr std::size_t max_recipient_changes = 1000;

// The actions we allow and the steps we can skip (all of those in the
// protocol that we implement; SMFIF_CHGBODY is not offered).
constexpr std::uint32_t our_actions =
    m::action::addhdrs | m::action::addrcpt | m::action::delrcpt | m::action::chghdrs |
    m::action::quarantine | m::action::chgfrom | m::action::addrcpt_par | m::action::setsymlist;
constexpr std::uint32_t our_steps =
    m::step::noconnect | m::step::nohelo | m::step::nomail | m::step::norcpt | m::step::nobody |
    m::step::nohdrs | m::step::noeoh | m::step::nr_hdr | m::step::nounknown | m::step::nodata |
    m::step::skip | m::step::nr_conn | m::step::nr_helo | m::step::nr_mail | m::step::nr_rcpt |
    m::step::nr_data | m::step::nr_unkn | m::step::nr_eoh | m::step::nr_body | m::step::hdr_leadspc;

struct endpoint {
  bool unix_socket = false;
  std::string host, port, path;
};

bool parse_address(std::string_view a, endpoint& ep, std::string& error) {
  if (a.starts_with("unix:") || a.starts_with("local:")) {
    ep.unix_socket = true;
    ep.path = std::string(a.substr(a.find(':') + 1));
    if (ep.path.empty()) return error = "a unix: milter address needs a path", false;
    return true;
  }
  if (a.starts_with("inet:")) a.remove_prefix(5);
  if (a.starts_with("inet6:")) a.remove_prefix(6);
  std::size_t colon = a.rfind(':');
  if (colon == a.npos || colon == 0 || colon + 1 == a.size())
    return error = fmt::format("milter address '{}' is not HOST:PORT or unix:PATH", a), false;
  ep.host = std::string(a.substr(0, colon));
  ep.port = std::string(a.substr(colon + 1));
  if (ep.host.size() > 2 && ep.host.front() == '[' && ep.host.back() == ']')
    ep.host = ep.host.substr(1, ep.host.size() - 2);
  if (!std::all_of(ep.port.begin(), ep.port.end(), [](char c) { return c >= '0' && c <= '9'; }) ||
      ep.port.size() > 5 || std::stoul(ep.port) == 0 || std::stoul(ep.port) > 65535)
    return error = fmt::format("milter address '{}' has a bad port", a), false;
  return true;
}

struct shared_options {
  milter_options o;
  endpoint ep;
};

void log_line(const milter_options& o, log_level level, std::string_view line) {
  if (o.log.write) o.log.write(o.log.ctx, level, line);
}

// A local part and a lower-case domain for an address a milter added.
recipient recipient_of(std::string_view address) {
  recipient r;
  r.address = std::string(address);
  std::size_t at = address.rfind('@');
  r.user = std::string(address.substr(0, at));
  if (at != address.npos)
    for (char c : address.substr(at + 1))
      r.domain += static_cast<char>(c >= 'A' && c <= 'Z' ? c + 32 : c);
  return r;
}

// An address as a milter gives it: "<a@b>" or "a@b".
std::string_view unbracket(std::string_view a) {
  if (a.size() >= 2 && a.front() == '<' && a.back() == '>') return a.substr(1, a.size() - 2);
  return a;
}

class milter_session;

// The message on its way through one milter: held, shown, changed, passed on.
// The envelope is its own (owned_envelope), as the milter may change it.
class milter_delivery final : public owned_envelope, public delivery, public delivery_listener {
 public:
  milter_delivery(milter_session& s, const envelope& env, sink& next, delivery_listener& l);
  ~milter_delivery();
  bool write(std::string_view bytes) override;
  void commit() override;
  void abort() noexcept override;
  // delivery_listener, for the next sink's delivery.
  void writable() noexcept override;
  void committed(std::span<const store_outcome> outcomes) noexcept override;

  // From the session's connection: the milter's verdict on the message.
  void milter_done(filter_action action, std::string_view reply);
  // The connection wants the next piece of the body for the milter.
  void next_body_piece();
  [[nodiscard]] bool aborted() const noexcept { return listener_ == nullptr; }

  m::header_section headers;
  std::size_t header_changes = 0, recipient_changes = 0;  // made so far
  bool recipients_changed = false;
  std::string notes;  // what the milter changed, for the log

 private:
  friend class milter_session;
  void append_body(std::string_view bytes);
  void count_headers() noexcept;
  void flush();
  void start_file();
  void write_file();
  void read_body(std::size_t offset);
  void body_read(std::string_view bytes);
  void pass_on();
  void discard_all();
  void next_out();
  void fail_all(store_result result, std::string_view reply);
  void file_progress();
  void spool_failed(int error);
  void release() noexcept;
  static void fs_cb(uv_fs_t* req) noexcept;

  milter_session& s_;
  sink& next_;
  delivery_listener* listener_;
  std::size_t mailboxes_;
  std::shared_ptr<memory_budget> budget_;
  std::string mem_;                  // the body while it fits, then what waits for the file
  std::size_t counted_ = 0;          // what this holds in the budget
  std::size_t counted_headers_ = 0;  // of it, for the header section
  std::string writing_;              // the bytes a file write has in flight
  std::string reading_;              // the buffer a file read fills
  std::size_t body_size_ = 0;
  std::size_t file_size_ = 0;
  std::size_t read_at_ = 0;
  uv_file fd_ = -1;
  int spool_error_ = 0;  // a libuv error: the message cannot be held
  uv_fs_t req_{};
  enum class fs_op : std::uint8_t { none, open, write, read, close } op_ = fs_op::none;
  enum class pass : std::uint8_t { to_milter, to_next } pass_ = pass::to_milter;
  bool use_file_ = false;
  bool paused_ = false;      // write() returned false: writable() is owed
  bool committing_ = false;  // commit() came: flush, then the milter
  bool next_paused_ = false;
  bool prev_cr_ = false;
  std::string out_;  // body bytes converted for the milter (CRLF), waiting
  delivery* inner_ = nullptr;
  bool finished_ = false;  // milter_done() came
  bool in_cb_ = false;     // inside fs_cb: release() waits for its end
  bool released_ = false;
};

class milter_session final : public filter_session {
 public:
  milter_session(uv_loop_t* loop, std::shared_ptr<const shared_options> opts,
                 const filter_client& client);
  void ask(filter_stage stage, const filter_state& state, filter_listener& listener) override;
  delivery* message(const envelope& env, sink& next, delivery_listener& listener) override;
  void reset() noexcept override;
  void close() noexcept override;

  // For milter_delivery.
  void send_message_start();
  void send_body(std::string_view crlf_bytes, bool last);
  void delivery_gone(milter_delivery* d) noexcept;
  [[nodiscard]] const milter_options& options() const noexcept { return opts_->o; }
  [[nodiscard]] uv_loop_t* loop() const noexcept { return loop_; }
  [[nodiscard]] bool leadspc() const noexcept { return (steps_ & m::step::hdr_leadspc) != 0; }
  [[nodiscard]] bool failed() const noexcept { return state_ == state::failed; }
  void hold() noexcept { ++holds_; }
  void unhold() noexcept;
  std::string name;  // "milter ADDRESS", for notes

 private:
  enum class state : std::uint8_t { resolving, connecting, negotiating, ready, failed, closed };
  enum class wait : std::uint8_t { none, optneg, stage, header, eoh, body, eom };

  void start_connect();
  void connected(int status);
  void fail(std::string_view why);
  void answer(filter_action a, std::string_view reply, std::string_view what);
  void default_answer();
  void send_stage();
  void send_macros(command cmd, m::macro_stage stage, std::span<const m::macro> macros);
  void expect(wait w, std::uint32_t timeout_ms);
  void restart_timer();
  void flush_out();
  void on_read(std::string_view bytes);
  void on_reply(const m::reply& r);
  void stage_reply(const m::reply& r);
  void message_reply(const m::reply& r);
  void apply_change(const m::reply& r);
  void headers_next();
  void finish_close() noexcept;
  [[nodiscard]] bool skips(std::uint32_t bit) const noexcept { return (steps_ & bit) != 0; }

  static void getaddrinfo_cb(uv_getaddrinfo_t* req, int status, addrinfo* res) noexcept;
  static void connect_cb(uv_connect_t* req, int status) noexcept;
  static void alloc_cb(uv_handle_t*, std::size_t, uv_buf_t* buf) noexcept;
  static void read_cb(uv_stream_t* s, ssize_t n, const uv_buf_t* buf) noexcept;
  static void write_cb(uv_write_t* req, int status) noexcept;
  static void timer_cb(uv_timer_t* t) noexcept;
  static void close_cb(uv_handle_t* h) noexcept;

  uv_loop_t* loop_;
  std::shared_ptr<const shared_options> opts_;
  union {
    uv_tcp_t tcp;
    uv_pipe_t pipe;
  } stream_{};
  uv_timer_t timer_{};
  uv_connect_t connect_req_{};
  uv_getaddrinfo_t gai_{};
  uv_write_t write_req_{};
  bool stream_open_ = false;
  int handles_ = 0;  // handles not closed yet
  int holds_ = 0;    // requests in flight (and the delivery's file work)
  std::string out_, writing_;
  m::decoder decoder_;
  state state_ = state::resolving;
  wait wait_ = wait::none;
  std::uint32_t timeout_ms_ = 0;  // of the reply awaited
  std::uint32_t actions_ = 0, steps_ = 0;
  std::string symlists_[m::macro_stages];
  // The client, copied from open().
  std::string client_addr_, client_name_, server_name_;
  std::uint16_t client_port_ = 0;
  // The question open (one at a time), and what it needs.
  filter_listener* listener_ = nullptr;
  filter_stage stage_ = filter_stage::connect;
  std::string helo_, tls_, auth_type_, auth_user_, queue_id_, from_, params_, rcpt_;
  bool stage_pending_ = false;  // asked before the milter was ready
  bool accept_conn_ = false;    // ACCEPT/REJECT for the connection: no more questions to it
  filter_action conn_action_ = filter_action::proceed;
  bool accept_msg_ = false;  // ACCEPT for this message
  bool tx_open_ = false;     // MAIL went to the milter; ABORT when it ends early
  milter_delivery* delivery_ = nullptr;
  std::size_t header_at_ = 0;
  std::vector<m::header_section::field_view> fields_;
  bool body_last_ = false;
  bool closing_ = false;
};

class milter_filter final : public filter {
 public:
  milter_filter(uv_loop_t* loop, std::shared_ptr<const shared_options> o)
      : loop_(loop), opts_(std::move(o)) {}
  filter_session* open(const filter_client& client) override {
    return new milter_session(loop_, opts_, client);
  }

 private:
  uv_loop_t* loop_;
  std::shared_ptr<const shared_options> opts_;
};

// --- The session's connection ---

milter_session::milter_session(uv_loop_t* loop, std::shared_ptr<const shared_options> opts,
                               const filter_client& client)
    : name("milter " + opts->o.address),
      loop_(loop),
      opts_(std::move(opts)),
      client_addr_(client.address),
      client_name_(client.name),
      server_name_(client.server_name),
      client_port_(client.port) {
  uv_timer_init(loop_, &timer_);
  timer_.data = this;
  ++handles_;
  start_connect();
}

void milter_session::start_connect() {
  const endpoint& ep = opts_->ep;
  uv_timer_start(&timer_, timer_cb, opts_->o.connect_timeout_ms, 0);
  if (ep.unix_socket) {
    uv_pipe_init(loop_, &stream_.pipe, 0);
    stream_.pipe.data = this;
    stream_open_ = true;
    ++handles_;
    state_ = state::connecting;
    connect_req_.data = this;
    hold();
    uv_pipe_connect(&connect_req_, &stream_.pipe, ep.path.c_str(), connect_cb);
    return;
  }
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  gai_.data = this;
  hold();
  int r = uv_getaddrinfo(loop_, &gai_, getaddrinfo_cb, ep.host.c_str(), ep.port.c_str(), &hints);
  if (r != 0) {
    unhold();
    fail(uv_strerror(r));
  }
}

void milter_session::getaddrinfo_cb(uv_getaddrinfo_t* req, int status, addrinfo* res) noexcept {
  auto* s = static_cast<milter_session*>(req->data);
  if (s->state_ == state::resolving && !s->closing_) {
    if (status != 0 || !res) {
      s->fail(fmt::format("cannot resolve: {}", uv_strerror(status)));
    } else {
      uv_tcp_init(s->loop_, &s->stream_.tcp);
      s->stream_.tcp.data = s;
      s->stream_open_ = true;
      ++s->handles_;
      s->state_ = state::connecting;
      s->connect_req_.data = s;
      s->hold();
      int r = uv_tcp_connect(&s->connect_req_, &s->stream_.tcp, res->ai_addr, connect_cb);
      if (r != 0) {
        s->unhold();
        s->fail(fmt::format("cannot connect: {}", uv_strerror(r)));
      }
    }
  }
  uv_freeaddrinfo(res);
  s->unhold();
}

void milter_session::connect_cb(uv_connect_t* req, int status) noexcept {
  auto* s = static_cast<milter_session*>(req->data);
  if (!s->closing_ && s->state_ == state::connecting) s->connected(status);
  s->unhold();
}

void milter_session::connected(int status) {
  if (status != 0) return fail(fmt::format("cannot connect: {}", uv_strerror(status)));
  state_ = state::negotiating;
  uv_read_start(reinterpret_cast<uv_stream_t*>(&stream_), alloc_cb, read_cb);
  m::encode_optneg(out_, our_actions, our_steps);
  expect(wait::optneg, opts_->o.command_timeout_ms);
  flush_out();
}

void milter_session::alloc_cb(uv_handle_t*, std::size_t, uv_buf_t* buf) noexcept {
  thread_local char space[64 * 1024];
  *buf = uv_buf_init(space, sizeof space);
}

void milter_session::read_cb(uv_stream_t* st, ssize_t n, const uv_buf_t* buf) noexcept {
  auto* s = static_cast<milter_session*>(st->data);
  if (s->closing_ || s->state_ == state::failed) return;
  try {
    if (n < 0) return s->fail(n == UV_EOF ? "connection closed" : uv_err_name(static_cast<int>(n)));
    s->on_read({buf->base, static_cast<std::size_t>(n)});
  } catch (...) {
    s->fail("out of memory");
  }
}

void milter_session::on_read(std::string_view bytes) {
  while (!bytes.empty() && state_ != state::failed && !closing_) {
    bytes.remove_prefix(decoder_.feed(bytes));
    if (decoder_.state() == m::decoder::status::error)
      return fail(fmt::format("bad packet: {}", decoder_.error()));
    if (decoder_.state() != m::decoder::status::ready) continue;
    m::reply r = decoder_.get();  // Its views live until next().
    on_reply(r);
    decoder_.next();
  }
}

void milter_session::expect(wait w, std::uint32_t timeout_ms) {
  wait_ = w;
  timeout_ms_ = timeout_ms;
  uv_timer_start(&timer_, timer_cb, timeout_ms, 0);
}

// The clock of the reply awaited starts again (SMFIR_PROGRESS, a change).
// Not uv_timer_again: that does nothing to a timer started without repeat.
void milter_session::restart_timer() {
  uv_timer_start(&timer_, timer_cb, timeout_ms_, 0);
}

void milter_session::timer_cb(uv_timer_t* t) noexcept {
  auto* s = static_cast<milter_session*>(t->data);
  try {
    s->fail(s->state_ == state::connecting || s->state_ == state::resolving ? "connect timeout"
                                                                            : "timeout");
  } catch (...) {
  }
}

void milter_session::flush_out() {
  if (out_.empty() || !writing_.empty() || !stream_open_ || state_ == state::failed) return;
  writing_.swap(out_);
  uv_buf_t b = uv_buf_init(writing_.data(), static_cast<unsigned>(writing_.size()));
  write_req_.data = this;
  hold();
  int r = uv_write(&write_req_, reinterpret_cast<uv_stream_t*>(&stream_), &b, 1, write_cb);
  if (r != 0) {
    unhold();
    writing_.clear();
    fail(fmt::format("write: {}", uv_strerror(r)));
  }
}

void milter_session::write_cb(uv_write_t* req, int status) noexcept {
  auto* s = static_cast<milter_session*>(req->data);
  s->writing_.clear();
  try {
    if (status != 0 && !s->closing_ && s->state_ != state::failed)
      s->fail(fmt::format("write: {}", uv_strerror(status)));
    else
      s->flush_out();
  } catch (...) {
  }
  s->unhold();
}

// The milter is out for the rest of the session: the default action from now.
void milter_session::fail(std::string_view why) {
  if (state_ == state::failed || closing_) return;
  bool was_waiting = wait_ != wait::none || stage_pending_;
  state_ = state::failed;
  wait_ = wait::none;
  uv_timer_stop(&timer_);
  if (stream_open_) {
    stream_open_ = false;
    uv_close(reinterpret_cast<uv_handle_t*>(&stream_), close_cb);
  }
  std::string line = fmt::format("{}: {}; default action {}", name, why,
                                 opts_->o.accept_on_failure ? "accept" : "tempfail");
  log_line(opts_->o, log_level::warning, line);
  // A message with the milter: its end is the default action (a file
  // request in flight comes back to it through failed()).
  if (delivery_ && delivery_->committing_ && !delivery_->finished_) {
    if (delivery_->op_ != milter_delivery::fs_op::none) return;
    if (opts_->o.accept_on_failure)
      delivery_->milter_done(filter_action::proceed, {});
    else
      delivery_->milter_done(filter_action::tempfail, tempfail_reply);
    return;
  }
  if (was_waiting && listener_) {
    stage_pending_ = false;
    answer(opts_->o.accept_on_failure ? filter_action::proceed : filter_action::tempfail,
           opts_->o.accept_on_failure ? std::string_view() : tempfail_reply, line);
  }
}

void milter_session::answer(filter_action a, std::string_view reply, std::string_view what) {
  filter_listener* l = std::exchange(listener_, nullptr);
  wait_ = wait::none;
  uv_timer_stop(&timer_);
  if (!l) return;
  // A continue before DATA says nothing worth a log line.
  std::string note;
  if (!what.empty() && (what != "continue" || stage_ == filter_stage::data))
    note = what.starts_with("milter ") ? std::string(what) : name + ": " + std::string(what);
  l->filtered(filter_verdict{.action = a, .reply = reply, .note = note});
}

void milter_session::default_answer() {
  if (opts_->o.accept_on_failure)
    answer(filter_action::proceed, {}, "unavailable, default action accept");
  else
    answer(filter_action::tempfail, tempfail_reply, "unavailable, default action tempfail");
}

void milter_session::ask(filter_stage stage, const filter_state& st, filter_listener& listener) {
  listener_ = &listener;
  stage_ = stage;
  helo_ = st.helo;
  tls_ = st.tls;
  auth_type_ = st.sasl_method;
  auth_user_ = st.sasl_user;
  queue_id_ = st.queue_id;
  from_ = st.reverse_path;
  params_ = stage == filter_stage::rcpt ? st.rcpt_params : st.mail_params;
  rcpt_ = st.recipient;
  if (state_ == state::failed) return default_answer();
  if (accept_conn_) {
    if (conn_action_ == filter_action::proceed) return answer(conn_action_, {}, "");
    return answer(conn_action_, {}, "refused for the connection");
  }
  if (accept_msg_ && stage >= filter_stage::rcpt) return answer(filter_action::proceed, {}, "");
  if (state_ != state::ready) {
    stage_pending_ = true;  // Sent once OPTNEG is done.
    return;
  }
  send_stage();
}

void milter_session::send_macros(command cmd, m::macro_stage stage,
                                 std::span<const m::macro> macros) {
  const std::string& want = symlists_[static_cast<std::size_t>(stage)];
  if (want.empty()) return m::encode_macros(out_, cmd, macros);
  // The milter named the macros it wants (SMFIF_SETSYMLIST): only those.
  std::vector<m::macro> chosen;
  for (const m::macro& mac : macros) {
    std::string_view bare = mac.name;
    if (bare.starts_with('{')) bare = bare.substr(1, bare.size() - 2);
    for (std::string_view w = want; !w.empty();) {
      std::size_t sp = w.find(' ');
      std::string_view t = w.substr(0, sp);
      if (t.starts_with('{') && t.size() >= 2) t = t.substr(1, t.size() - 2);
      if (t == bare) chosen.push_back(mac);
      w = sp == w.npos ? std::string_view() : w.substr(sp + 1);
    }
  }
  m::encode_macros(out_, cmd, chosen);
}

// Postfix's milter_*_macros defaults, with what inboxd knows.
void milter_session::send_stage() {
  stage_pending_ = false;
  std::uint32_t no = 0, nr = 0;
  const std::uint32_t t = opts_->o.command_timeout_ms;
  switch (stage_) {
    case filter_stage::connect: {
      no = m::step::noconnect;
      nr = m::step::nr_conn;
      if (skips(no)) break;
      std::string underscore = fmt::format("{} [{}]", client_name_, client_addr_);
      std::string port = std::to_string(client_port_);
      m::macro mac[] = {{"j", server_name_},
                        {"_", underscore},
                        {"{daemon_name}", "inboxd"},
                        {"v", "inboxd"},
                        {"{client_addr}", client_addr_},
                        {"{client_name}", client_name_},
                        {"{client_port}", port}};
      send_macros(command::connect, m::macro_stage::connect, mac);
      char family = client_addr_.empty()                          ? 'U'
                    : client_addr_.find(':') != client_addr_.npos ? '6'
                                                                  : '4';
      m::encode_connect(out_, client_name_, family, client_port_, client_addr_);
      break;
    }
    case filter_stage::helo: {
      no = m::step::nohelo;
      nr = m::step::nr_helo;
      if (skips(no)) break;
      std::string version = tls_.substr(0, tls_.find(' '));
      m::macro mac[] = {{"{tls_version}", version}};
      send_macros(command::helo, m::macro_stage::helo,
                  tls_.empty() ? std::span<const m::macro>() : std::span<const m::macro>(mac));
      std::string data = helo_;
      data += '\0';
      m::encode(out_, command::helo, data);
      break;
    }
    case filter_stage::mail: {
      no = m::step::nomail;
      nr = m::step::nr_mail;
      tx_open_ = true;
      accept_msg_ = false;
      if (skips(no)) break;
      std::string addr = "<" + from_ + ">";
      m::macro mac[] = {{"i", queue_id_},
                        {"{mail_addr}", from_},
                        {"{auth_type}", auth_type_},
                        {"{auth_authen}", auth_user_}};
      send_macros(command::mail, m::macro_stage::envfrom,
                  std::span<m::macro>(mac, auth_user_.empty() ? 2 : 4));
      m::encode_args(out_, command::mail, from_, params_);
      break;
    }
    case filter_stage::rcpt: {
      no = m::step::norcpt;
      nr = m::step::nr_rcpt;
      if (skips(no)) break;
      m::macro mac[] = {{"i", queue_id_}, {"{rcpt_addr}", rcpt_}};
      send_macros(command::rcpt, m::macro_stage::envrcpt, mac);
      m::encode_args(out_, command::rcpt, rcpt_, params_);
      break;
    }
    case filter_stage::data: {
      no = m::step::nodata;
      nr = m::step::nr_data;
      if (skips(no)) break;
      m::macro mac[] = {{"i", queue_id_}};
      send_macros(command::data, m::macro_stage::data, mac);
      m::encode(out_, command::data);
      break;
    }
  }
  flush_out();
  if (skips(no) || skips(nr)) return answer(filter_action::proceed, {}, "");
  expect(wait::stage, t);
}

void milter_session::on_reply(const m::reply& r) {
  if (r.code == reply_code::progress) {  // Still working: the clock starts again.
    if (wait_ != wait::none) restart_timer();
    return;
  }
  switch (wait_) {
    case wait::none: return fail(fmt::format("unexpected reply {}", m::name(r.code)));
    case wait::optneg:
      if (r.code != reply_code::optneg) return fail("no OPTNEG reply");
      if (r.version < 2) return fail(fmt::format("protocol version {}", r.version));
      // What was not offered is not granted (libmilter itself refuses a
      // milter that needs more).
      actions_ = r.actions & our_actions;
      steps_ = r.steps & our_steps;
      // Before version 4 there is no DATA command nor unknown ones (as
      // Postfix's milter8 leaves them out for an older milter).
      if (r.version < 4) steps_ |= m::step::nodata | m::step::nounknown;
      for (std::size_t k = 0; k < m::macro_stages; ++k) symlists_[k] = r.symlists[k];
      state_ = state::ready;
      wait_ = wait::none;
      uv_timer_stop(&timer_);
      if (stage_pending_) send_stage();
      return;
    case wait::stage: return stage_reply(r);
    case wait::header:
    case wait::eoh:
    case wait::body:
    case wait::eom: return message_reply(r);
  }
}

// The verdict on a command.
void milter_session::stage_reply(const m::reply& r) {
  std::string what(m::name(r.code));
  bool conn = stage_ <= filter_stage::helo;
  switch (r.code) {
    case reply_code::continue_: return answer(filter_action::proceed, {}, what);
    case reply_code::accept:
      // Accept the connection (at connect and HELO) or the message.
      if (conn) {
        accept_conn_ = true;
        conn_action_ = filter_action::proceed;
      } else {
        accept_msg_ = true;
      }
      return answer(filter_action::proceed, {}, what);
    case reply_code::reject:
    case reply_code::tempfail:
    case reply_code::replycode: {
      filter_action a =
          r.code == reply_code::tempfail ? filter_action::tempfail : filter_action::reject;
      if (r.code == reply_code::replycode) {
        if (r.text.starts_with('4'))
          a = filter_action::tempfail;
        else if (!r.text.starts_with('5'))
          return fail("bad REPLYCODE");
        what += " " + std::string(r.text.substr(0, 200));
      }
      // At HELO a refusal holds for the rest of the connection (libmilter:
      // "reject this connection").
      if (stage_ == filter_stage::helo) {
        accept_conn_ = true;
        conn_action_ = a;
      }
      return answer(a, r.text, what);
    }
    case reply_code::discard: return answer(filter_action::discard, {}, what);
    case reply_code::shutdown:
    case reply_code::conn_fail: return answer(filter_action::disconnect, {}, what);
    case reply_code::skip:
      if (stage_ != filter_stage::rcpt) break;
      return answer(filter_action::proceed, {}, what);
    default: break;
  }
  fail(fmt::format("reply {} out of place", m::name(r.code)));
}

delivery* milter_session::message(const envelope& env, sink& next, delivery_listener& listener) {
  if (accept_conn_ || accept_msg_) return nullptr;
  if (state_ == state::failed && opts_->o.accept_on_failure) return nullptr;
  auto* d = new milter_delivery(*this, env, next, listener);
  delivery_ = d;
  return d;
}

void milter_session::delivery_gone(milter_delivery* d) noexcept {
  if (delivery_ == d) delivery_ = nullptr;
}

// The message is held: its headers, end of headers and body go out now.
void milter_session::send_message_start() {
  if (state_ == state::failed)
    return delivery_->milter_done(
        opts_->o.accept_on_failure ? filter_action::proceed : filter_action::tempfail,
        opts_->o.accept_on_failure ? std::string_view() : tempfail_reply);
  fields_ = skips(m::step::nohdrs) ? std::vector<m::header_section::field_view>()
                                   : delivery_->headers.visible(leadspc());
  header_at_ = 0;
  m::macro mac[] = {{"i", queue_id_}};
  send_macros(command::header, m::macro_stage::eoh, mac);
  headers_next();
}

// Sends headers until one needs its reply; then the end of headers, then
// the body.
void milter_session::headers_next() {
  while (header_at_ < fields_.size()) {
    const auto& f = fields_[header_at_++];
    m::encode_header(out_, f.name, f.value);
    if (!skips(m::step::nr_hdr)) {
      flush_out();
      return expect(wait::header, opts_->o.content_timeout_ms);
    }
  }
  if (header_at_ == fields_.size()) {
    ++header_at_;
    if (!skips(m::step::noeoh)) {
      m::encode(out_, command::eoh);
      if (!skips(m::step::nr_eoh)) {
        flush_out();
        return expect(wait::eoh, opts_->o.content_timeout_ms);
      }
    }
  }
  flush_out();
  body_last_ = false;
  if (skips(m::step::nobody)) return send_body({}, true);
  delivery_->next_body_piece();
}

// A piece of the body for the milter (CRLF line ends); last: the end.
void milter_session::send_body(std::string_view bytes, bool last) {
  if (state_ == state::failed) return;
  if (!skips(m::step::nobody) && !bytes.empty()) {
    m::encode(out_, command::body, bytes);
    if (!skips(m::step::nr_body)) {
      body_last_ = last;
      flush_out();
      return expect(wait::body, opts_->o.content_timeout_ms);
    }
  }
  if (!last) {
    flush_out();
    return delivery_->next_body_piece();
  }
  m::macro mac[] = {{"i", queue_id_}};
  send_macros(command::eob, m::macro_stage::eom, mac);
  m::encode(out_, command::eob);
  flush_out();
  expect(wait::eom, opts_->o.content_timeout_ms);
}

// A reply while the message goes out: to a header, the end of headers,
// a body chunk, or the end of the message.
void milter_session::message_reply(const m::reply& r) {
  milter_delivery* d = delivery_;
  if (!d || d->aborted()) return fail("reply after the message was dropped");
  auto done = [&](filter_action a, std::string_view reply) {
    wait_ = wait::none;
    uv_timer_stop(&timer_);
    tx_open_ = false;  // The milter's transaction is over.
    d->milter_done(a, reply);
  };
  switch (r.code) {
    case reply_code::continue_:
      if (wait_ == wait::eom) return done(filter_action::proceed, {});
      if (wait_ == wait::header || wait_ == wait::eoh) return headers_next();
      if (body_last_) return send_body({}, true);
      wait_ = wait::none;
      return d->next_body_piece();
    case reply_code::skip:
      if (wait_ != wait::body) break;
      return send_body({}, true);  // The rest of the body is not wanted.
    case reply_code::accept:
      d->notes += d->notes.empty() ? "accept" : "; accept";
      return done(filter_action::proceed, {});
    case reply_code::discard: d->notes += "discard"; return done(filter_action::discard, {});
    case reply_code::reject: return done(filter_action::reject, {});
    case reply_code::tempfail: return done(filter_action::tempfail, {});
    case reply_code::replycode:
      if (!r.text.starts_with('4') && !r.text.starts_with('5')) return fail("bad REPLYCODE");
      return done(r.text.starts_with('4') ? filter_action::tempfail : filter_action::reject,
                  r.text);
    case reply_code::shutdown:
    case reply_code::conn_fail: return done(filter_action::tempfail, {});
    default:
      if (wait_ == wait::eom) return apply_change(r);
      break;
  }
  fail(fmt::format("reply {} out of place", m::name(r.code)));
}

// A change at the end of the message, where negotiated.
void milter_session::apply_change(const m::reply& r) {
  milter_delivery& d = *delivery_;
  auto allowed = [&](std::uint32_t a) { return (actions_ & a) != 0; };
  auto note = [&](std::string_view what, std::string_view arg) {
    if (d.notes.size() > 400) return;
    if (!d.notes.empty()) d.notes += "; ";
    d.notes += what;
    d.notes += ' ';
    for (char c : arg.substr(0, 60))
      d.notes +=
          static_cast<unsigned char>(c) < 32 || static_cast<unsigned char>(c) > 126 ? '?' : c;
  };
  const bool smtputf8 = d.view().smtputf8;
  // An address that could not go into an envelope: the milter broke the
  // protocol (its default action), and the log says what it sent.
  auto bad_address = [&](std::string_view what) {
    std::string shown;
    for (char c : r.text.substr(0, 100))
      shown += static_cast<unsigned char>(c) < 32 || static_cast<unsigned char>(c) > 126 ? '?' : c;
    fail(fmt::format("id={}: {} with a malformed address ({} octets): <{}>", queue_id_, what,
                     r.text.size(), shown));
  };
  switch (r.code) {
    case reply_code::addheader:
    case reply_code::insheader:
    case reply_code::chgheader:
      if (++d.header_changes > max_header_changes)
        return fail(fmt::format("more than {} header changes", max_header_changes));
      break;
    case reply_code::addrcpt:
    case reply_code::addrcpt_par:
    case reply_code::delrcpt:
      if (++d.recipient_changes > max_recipient_changes)
        return fail(fmt::format("more than {} recipient changes", max_recipient_changes));
      break;
    default: break;
  }
  bool ok = true;
  switch (r.code) {
    case reply_code::addheader:
      if (!allowed(m::action::addhdrs)) break;
      ok = d.headers.add(r.text, r.value, leadspc());
      note("addheader", r.text);
      break;
    case reply_code::insheader:
      if (!allowed(m::action::addhdrs)) break;
      ok = d.headers.insert(r.index, r.text, r.value, leadspc());
      note("insheader", r.text);
      break;
    case reply_code::chgheader:
      if (!allowed(m::action::chghdrs)) break;
      ok = d.headers.change(r.index, r.text, r.value, leadspc());
      note(r.value.empty() ? "delheader" : "chgheader", r.text);
      break;
    case reply_code::chgfrom: {
      if (!allowed(m::action::chgfrom)) break;
      std::string_view a;
      if (!m::envelope_address(r.text, smtputf8, true, a)) return bad_address("CHGFROM");
      d.reverse_path = std::string(a);
      note("chgfrom", d.reverse_path);
      break;
    }
    case reply_code::addrcpt:
    case reply_code::addrcpt_par: {
      if (!allowed(r.code == reply_code::addrcpt ? m::action::addrcpt : m::action::addrcpt_par))
        break;
      std::string_view a;
      if (!m::envelope_address(r.text, smtputf8, false, a))
        return bad_address(r.code == reply_code::addrcpt ? "ADDRCPT" : "ADDRCPT_PAR");
      if (d.recipients.size() >= 1000) return fail("too many recipients added");
      d.recipients.push_back(recipient_of(a));
      d.recipients_changed = true;
      note("addrcpt", a);
      break;
    }
    case reply_code::delrcpt: {
      if (!allowed(m::action::delrcpt)) break;
      // Only compared with the recipients: bounded, not judged.
      if (r.text.size() > m::max_address + 2) return bad_address("DELRCPT");
      std::string_view a = unbracket(r.text);
      std::erase_if(d.recipients, [&](const recipient& x) {
        return x.address.size() == a.size() &&
               std::equal(a.begin(), a.end(), x.address.begin(),
                          [](char p, char q) { return std::tolower(p) == std::tolower(q); });
      });
      d.recipients_changed = true;
      note("delrcpt", a);
      break;
    }
    case reply_code::quarantine:
      if (!allowed(m::action::quarantine)) break;
      note("quarantine", r.text);
      log_line(opts_->o, log_level::warning,
               fmt::format("id={} {}: quarantine (kept: inboxd has no hold queue): {}", queue_id_,
                           name, r.text.substr(0, 200)));
      break;
    default: return fail(fmt::format("reply {} out of place", m::name(r.code)));
  }
  if (!ok) note("refused (too large)", r.text);
  d.count_headers();
  if (d.headers.work() > m::header_section::max_work)
    return fail("header changes past the work bound");
  restart_timer();
  if (d.notes.empty() || ok) return;
}

void milter_session::reset() noexcept {
  accept_msg_ = false;
  if (!tx_open_ || state_ != state::ready) return;
  tx_open_ = false;
  try {
    m::encode(out_, command::abort);
    flush_out();
  } catch (...) {
  }
}

void milter_session::unhold() noexcept {
  --holds_;
  finish_close();
}

void milter_session::close() noexcept {
  closing_ = true;
  listener_ = nullptr;
  uv_timer_stop(&timer_);
  if (stream_open_ && state_ == state::ready && writing_.empty()) {
    try {
      out_.clear();
      m::encode(out_, command::quit);
      flush_out();
    } catch (...) {
    }
  }
  if (!uv_is_closing(reinterpret_cast<uv_handle_t*>(&timer_)))
    uv_close(reinterpret_cast<uv_handle_t*>(&timer_), close_cb);
  if (stream_open_ && writing_.empty()) {
    stream_open_ = false;
    uv_close(reinterpret_cast<uv_handle_t*>(&stream_), close_cb);
  }
  if (state_ == state::resolving) uv_cancel(reinterpret_cast<uv_req_t*>(&gai_));
  finish_close();
}

void milter_session::close_cb(uv_handle_t* h) noexcept {
  auto* s = static_cast<milter_session*>(h->data);
  --s->handles_;
  s->finish_close();
}

void milter_session::finish_close() noexcept {
  if (!closing_) return;
  // The QUIT went out: now the connection closes.
  if (stream_open_ && writing_.empty()) {
    stream_open_ = false;
    uv_close(reinterpret_cast<uv_handle_t*>(&stream_), close_cb);
  }
  if (handles_ == 0 && holds_ == 0) delete this;
}

// --- The message ---

milter_delivery::milter_delivery(milter_session& s, const envelope& env, sink& next,
                                 delivery_listener& l)
    : owned_envelope(env),
      s_(s),
      next_(next),
      listener_(&l),
      mailboxes_(env.recipients.size()),
      budget_(s.options().memory ? s.options().memory : std::make_shared<memory_budget>()) {
  req_.data = this;
}

milter_delivery::~milter_delivery() {
  if (budget_) budget_->used -= counted_ + counted_headers_;
}

// The header section is held in memory (header_section::max_bytes as sent,
// twice that with a milter's changes): it counts in the shared budget, so
// that other messages' bodies go to files sooner, never this one's headers.
void milter_delivery::count_headers() noexcept {
  std::size_t now = headers.memory();
  budget_->used -= counted_headers_;
  budget_->used += now;
  counted_headers_ = now;
}

bool milter_delivery::write(std::string_view bytes) {
  if (!headers.done()) {
    std::string body;
    bool done = headers.feed(bytes, body);
    count_headers();
    if (!done) return true;
    append_body(body);
  }
  append_body(bytes);
  return !paused_;
}

void milter_delivery::append_body(std::string_view bytes) {
  // The spool failed: the message fails at its end; its bytes go nowhere.
  if (bytes.empty() || spool_error_ != 0) return;
  mem_.append(bytes);
  body_size_ += bytes.size();
  budget_->used += bytes.size();
  counted_ += bytes.size();
  if (!use_file_ && budget_->used > budget_->limit) start_file();
  if (use_file_) {
    if (op_ == fs_op::none && fd_ >= 0) write_file();
    // Past one batch in flight and one gathering, the session waits.
    if (mem_.size() >= 256 * 1024) paused_ = true;
  }
}

void milter_delivery::start_file() {
  use_file_ = true;
  op_ = fs_op::open;
  s_.hold();
  int r =
      uv_fs_open(s_.loop(), &req_, s_.options().spool_dir.c_str(), O_TMPFILE | O_RDWR, 0600, fs_cb);
  if (r != 0) {
    op_ = fs_op::none;
    s_.unhold();
    spool_failed(r);
  }
}

// The message cannot be held: it fails (451) at its end; what comes
// meanwhile is dropped.
void milter_delivery::spool_failed(int error) {
  if (spool_error_ != 0) return;
  spool_error_ = error;
  budget_->used -= mem_.size();
  counted_ -= mem_.size();
  mem_.clear();
  log_line(s_.options(), log_level::error,
           fmt::format("id={} {}: cannot hold the message in {}: {}", queue_id, s_.name,
                       s_.options().spool_dir, uv_strerror(error)));
}

void milter_delivery::write_file() {
  writing_.swap(mem_);
  mem_.clear();
  op_ = fs_op::write;
  uv_buf_t b = uv_buf_init(writing_.data(), static_cast<unsigned>(writing_.size()));
  s_.hold();
  int r = uv_fs_write(s_.loop(), &req_, fd_, &b, 1, static_cast<int64_t>(file_size_), fs_cb);
  if (r != 0) {
    op_ = fs_op::none;
    s_.unhold();
    spool_failed(r);
  }
}

void milter_delivery::fs_cb(uv_fs_t* req) noexcept {
  auto* d = static_cast<milter_delivery*>(req->data);
  milter_session& s = d->s_;
  fs_op op = std::exchange(d->op_, fs_op::none);
  d->in_cb_ = true;
  ssize_t result = req->result;
  uv_fs_req_cleanup(req);
  try {
    switch (op) {
      case fs_op::none: break;
      case fs_op::open:
        if (result >= 0)
          d->fd_ = static_cast<uv_file>(result);
        else
          d->spool_failed(static_cast<int>(result));
        if (d->listener_) d->file_progress();
        break;
      case fs_op::write: {
        if (result < 0 || static_cast<std::size_t>(result) != d->writing_.size())
          d->spool_failed(result < 0 ? static_cast<int>(result) : UV_EIO);
        d->file_size_ += d->writing_.size();
        d->budget_->used -= d->writing_.size();
        d->counted_ -= d->writing_.size();
        d->writing_.clear();
        d->writing_.shrink_to_fit();
        if (d->listener_) d->file_progress();
        break;
      }
      case fs_op::read:
        if (d->listener_) {
          if (result < 0) {
            d->fail_all(store_result::temporary_fail, {});
          } else {
            d->read_at_ += static_cast<std::size_t>(result);
            d->reading_.resize(static_cast<std::size_t>(result));
            d->body_read(d->reading_);
          }
        }
        break;
      case fs_op::close: break;
    }
  } catch (...) {
    if (d->listener_) d->fail_all(store_result::temporary_fail, {});
  }
  d->in_cb_ = false;
  if ((d->released_ || !d->listener_) && d->op_ == fs_op::none) d->release();
  s.unhold();
}

// After a file request: the next write, the milter, or the session's next bytes.
void milter_delivery::file_progress() {
  if (spool_error_ != 0) {
    if (committing_) return fail_all(store_result::temporary_fail, {});
    // The rest of the message is read and dropped: the session goes on to its end.
    if (std::exchange(paused_, false)) listener_->writable();
    return;
  }
  if (!mem_.empty() && (mem_.size() >= 64 * 1024 || committing_)) return write_file();
  if (committing_) return s_.send_message_start();
  if (paused_ && mem_.size() < 256 * 1024) {
    paused_ = false;
    listener_->writable();
  }
}

void milter_delivery::commit() {
  committing_ = true;
  std::string body;
  headers.finish(body);
  count_headers();
  append_body(body);
  if (spool_error_ != 0) return fail_all(store_result::temporary_fail, {});
  if (use_file_) {
    if (op_ == fs_op::none && fd_ >= 0 && !mem_.empty()) return write_file();
    if (op_ != fs_op::none || !mem_.empty()) return;  // fs_cb goes on.
  }
  s_.send_message_start();
}

// The next piece of the body, from memory or the file.
void milter_delivery::next_body_piece() {
  if (!use_file_) {
    std::string_view piece =
        std::string_view(mem_).substr(std::min(read_at_, mem_.size()), 32 * 1024);
    read_at_ += piece.size();
    return body_read(piece);
  }
  read_body(read_at_);
}

void milter_delivery::read_body(std::size_t offset) {
  if (offset >= file_size_) return body_read({});
  reading_.resize(std::min<std::size_t>(64 * 1024, file_size_ - offset));
  uv_buf_t b = uv_buf_init(reading_.data(), static_cast<unsigned>(reading_.size()));
  op_ = fs_op::read;
  s_.hold();
  int r = uv_fs_read(s_.loop(), &req_, fd_, &b, 1, static_cast<int64_t>(offset), fs_cb);
  if (r != 0) {
    op_ = fs_op::none;
    s_.unhold();
    fail_all(store_result::temporary_fail, {});
  }
}

// A piece of the body read back (empty: the end), for the milter or the next sink.
void milter_delivery::body_read(std::string_view bytes) {
  bool last = bytes.empty();
  if (pass_ == pass::to_next) {
    if (last) {
      delivery* d = inner_;
      return d->commit();
    }
    if (!inner_->write(bytes)) {
      next_paused_ = true;
      return;
    }
    return next_out();
  }
  // For the milter: CRLF line ends (Postfix converts too), chunks of at
  // most chunk_size.
  if (s_.failed())
    return s_.options().accept_on_failure ? milter_done(filter_action::proceed, {})
                                          : milter_done(filter_action::tempfail, tempfail_reply);
  for (char c : bytes) {
    if (c == '\n' && !prev_cr_) out_ += '\r';
    out_ += c;
    prev_cr_ = c == '\r';
  }
  if (last) {
    if (out_.empty()) return s_.send_body({}, true);
    std::string piece;
    piece.swap(out_);
    // A final piece larger than one chunk goes in chunks, the last flagged.
    if (piece.size() <= m::chunk_size) return s_.send_body(piece, true);
    out_ = piece.substr(m::chunk_size);
    return s_.send_body(std::string_view(piece).substr(0, m::chunk_size), false);
  }
  if (out_.size() < m::chunk_size) return next_body_piece();
  std::string piece = out_.substr(0, m::chunk_size);
  out_.erase(0, m::chunk_size);
  // More may follow: the next call (after the milter's reply) brings it.
  s_.send_body(piece, false);
}

void milter_delivery::milter_done(filter_action action, std::string_view reply) {
  if (finished_ || !listener_) return;
  finished_ = true;
  if (!notes.empty())
    log_line(s_.options(), log_level::info, fmt::format("id={} {}: {}", queue_id, s_.name, notes));
  switch (action) {
    case filter_action::proceed: return pass_on();
    case filter_action::discard: return discard_all();
    case filter_action::reject:
      return fail_all(
          store_result::permanent_fail,
          reply.empty() ? std::string_view("550 5.7.1 Message content rejected") : reply);
    default: return fail_all(store_result::temporary_fail, reply.empty() ? tempfail_reply : reply);
  }
}

// The message is thrown away (SMFIR_DISCARD, or every recipient deleted):
// the client is told it was delivered; nothing is stored.
void milter_delivery::discard_all() {
  delivery_listener* l = std::exchange(listener_, nullptr);
  if (!l) return;
  std::vector<store_outcome> out(mailboxes_);
  release();
  l->committed(out);
}

// The milter agreed: the next sink begins, with what it changed.
void milter_delivery::pass_on() {
  if (recipients.empty()) {
    // Every recipient deleted: nothing to deliver, as Postfix drops it.
    log_line(s_.options(), log_level::info,
             fmt::format("id={} {}: no recipients left; message dropped", queue_id, s_.name));
    return discard_all();
  }
  envelope env = view();
  pass_ = pass::to_next;
  inner_ = next_.begin(env, *this);
  std::string head = headers.render();
  read_at_ = 0;
  if (!inner_->write(head)) {
    next_paused_ = true;
    return;
  }
  next_out();
}

void milter_delivery::next_out() {
  if (!use_file_) {
    if (read_at_ == 0 && !mem_.empty()) {
      read_at_ = mem_.size();
      if (!inner_->write(mem_)) {
        next_paused_ = true;
        return;
      }
    }
    return body_read({});
  }
  read_body(read_at_);
}

void milter_delivery::writable() noexcept {
  if (!next_paused_ || !listener_) return;
  next_paused_ = false;
  try {
    next_out();
  } catch (...) {
    fail_all(store_result::temporary_fail, {});
  }
}

void milter_delivery::committed(std::span<const store_outcome> outcomes) noexcept {
  inner_ = nullptr;
  delivery_listener* l = std::exchange(listener_, nullptr);
  if (!l) return;
  try {
    std::vector<store_outcome> out(outcomes.begin(), outcomes.end());
    std::string reply;
    if (recipients_changed || out.size() != mailboxes_) {
      // The recipients changed: every one of the client's gets the worst.
      store_outcome worst;
      for (const store_outcome& o : outcomes)
        if (static_cast<int>(o.result) > static_cast<int>(worst.result)) worst = o;
      reply = std::string(worst.reply);
      worst.reply = reply;
      out.assign(mailboxes_, worst);
    }
    release();
    l->committed(out);
  } catch (...) {
    std::vector<store_outcome> none;
    release();
    l->committed(none);
  }
}

void milter_delivery::fail_all(store_result result, std::string_view reply) {
  delivery_listener* l = std::exchange(listener_, nullptr);
  if (!l) return;
  if (inner_) std::exchange(inner_, nullptr)->abort();
  std::string text(reply);
  std::vector<store_outcome> out(mailboxes_, store_outcome{.result = result, .reply = text});
  release();
  l->committed(out);
}

void milter_delivery::abort() noexcept {
  listener_ = nullptr;
  if (inner_) std::exchange(inner_, nullptr)->abort();
  // A milter still busy with this message is out of step: it is dropped.
  if (committing_ && !finished_) {
    try {
      s_.delivery_gone(this);
    } catch (...) {
    }
  }
  release();
}

// Frees this once no file request runs; closes the file first.
void milter_delivery::release() noexcept {
  s_.delivery_gone(this);
  released_ = true;
  if (op_ != fs_op::none || in_cb_) return;  // fs_cb comes back here.
  if (fd_ >= 0) {
    uv_fs_t close_req;
    // The file is unnamed: closing it frees its blocks. A close of a
    // regular file does not wait on the disk.
    uv_fs_close(s_.loop(), &close_req, fd_, nullptr);
    uv_fs_req_cleanup(&close_req);
    fd_ = -1;
  }
  delete this;
}

}  // namespace

bool valid_milter_address(const std::string& address, std::string& error) {
  endpoint ep;
  return parse_address(address, ep, error);
}

std::shared_ptr<filter> make_milter(uv_loop_t* loop, milter_options options) {
  auto o = std::make_shared<shared_options>();
  std::string error;
  parse_address(options.address, o->ep, error);
  o->o = std::move(options);
  return std::make_shared<milter_filter>(loop, std::move(o));
}

}  // namespace inboxd
