#include "bench/run.hpp"

#include <netdb.h>
#include <unistd.h>

#include <fmt/format.h>
#include <cmath>
#include <csignal>
#include <cstdio>
#include <cstring>

namespace inboxd::bench {

namespace {

constexpr std::uint64_t ns_per_s = 1'000'000'000;
constexpr std::uint64_t tick_ms = 100;
constexpr unsigned progress_ticks = 5;  // one line every 0.5 s
constexpr std::uint64_t reconnect_backoff_ns = 100'000'000;

std::uint64_t seconds_to_ns(double s) {
  return static_cast<std::uint64_t>(std::llround(s * 1e9));
}

// Fills address from a literal IPv4/IPv6 address, else from getaddrinfo().
// This blocks, but only before the loop starts.
bool resolve(const std::string& host, std::uint16_t port, sockaddr_storage& address,
             std::string& error) {
  if (uv_ip4_addr(host.c_str(), port, reinterpret_cast<sockaddr_in*>(&address)) == 0) return true;
  if (uv_ip6_addr(host.c_str(), port, reinterpret_cast<sockaddr_in6*>(&address)) == 0) return true;
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  addrinfo* found = nullptr;
  std::string service = std::to_string(port);
  if (int rc = ::getaddrinfo(host.c_str(), service.c_str(), &hints, &found); rc != 0) {
    error = fmt::format("{}: {}", host, ::gai_strerror(rc));
    return false;
  }
  std::memcpy(&address, found->ai_addr, found->ai_addrlen);
  ::freeaddrinfo(found);
  return true;
}

}  // namespace

run::run(uv_loop_t* loop, const options& opt, const message_text& text, hdr_log_writer* log)
    : loop_(loop),
      opt_(opt),
      text_(text),
      from_(opt.from),
      to_(opt.to),
      random_(opt.seed),
      timeout_ms_(static_cast<std::uint64_t>(std::ceil(opt.timeout * 1000))),
      intervals_on_(!opt.histogram_log.empty()),
      log_(log),
      hist_interval_ns_(seconds_to_ns(opt.histogram_interval)) {
  if (!opt.auth_user.empty()) {
    // RFC 4616 2: authzid NUL authcid NUL passwd, the authzid empty.
    std::string plain;
    plain.append(1, '\0').append(opt.auth_user).append(1, '\0').append(opt.auth_password);
    auth_line_ = "AUTH PLAIN " + base64_encode(plain) + "\r\n";
  }
}

run::~run() = default;

bool run::start(std::string& error) {
  if (!resolve(opt_.host, opt_.port, address_, error)) {
    error = "--host: " + error;
    return false;
  }
  if (opt_.tls != tls_mode::none) {
    tls_config_ = std::make_unique<tls_client_config>();
    if (tls_config_->setup(error) != 0) return false;
  }
  t0_ns_ = uv_hrtime();
  warmup_end_ns_ = t0_ns_ + seconds_to_ns(opt_.warmup);
  // The wall-clock time of the end of the warm-up: the log's base time.
  timespec wall{};
  ::clock_gettime(CLOCK_REALTIME, &wall);
  base_epoch_s_ =
      static_cast<double>(wall.tv_sec) + static_cast<double>(wall.tv_nsec) / 1e9 + opt_.warmup;
  if (log_) log_->write_header(base_epoch_s_);
  if (opt_.duration > 0) {
    end_ns_ = warmup_end_ns_ + seconds_to_ns(opt_.duration);
    // The last message may start just before the end and then wait one
    // timeout per reply; past this, whatever is left is cut.
    deadline_ns_ = end_ns_ + 2 * timeout_ms_ * 1'000'000 + ns_per_s;
  }
  if (opt_.rate > 0) interval_ns_ = 1e9 / opt_.rate;
  progress_ = opt_.progress == "on" || (opt_.progress == "auto" && ::isatty(STDERR_FILENO));
  progress_ns_ = t0_ns_;

  uv_timer_init(loop_, &tick_);
  tick_.data = this;
  uv_timer_start(&tick_, tick_cb, tick_ms, tick_ms);
  if (opt_.rate > 0) {
    rate_fd_ = ::timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC);
    if (rate_fd_ < 0 || uv_poll_init(loop_, &rate_poll_, rate_fd_) != 0) {
      error = fmt::format("timerfd: {}", std::strerror(errno));
      if (rate_fd_ >= 0) ::close(rate_fd_);
      rate_fd_ = -1;
      uv_close(reinterpret_cast<uv_handle_t*>(&tick_), nullptr);
      return false;
    }
    rate_poll_.data = this;
  }
  uv_signal_init(loop_, &signal_);
  signal_.data = this;
  uv_signal_start(&signal_, signal_cb, SIGINT);
  handles_open_ = true;

  clients_.reserve(opt_.connections);
  for (unsigned i = 0; i < opt_.connections; ++i)
    clients_.push_back(std::make_unique<client>(*this, i));
  active_ = opt_.connections;
  for (auto& c : clients_) c->connect();
  return true;
}

std::uint64_t run::scheduled_ns(std::uint64_t k) const noexcept {
  return t0_ns_ + static_cast<std::uint64_t>(static_cast<double>(k) * interval_ns_);
}

// True once no more messages may start.
bool run::exhausted(std::uint64_t now_ns) const noexcept {
  if (stopping_) return true;
  std::uint64_t at = opt_.rate > 0 ? scheduled_ns(scheduled_) : now_ns;
  if (opt_.duration > 0) return at >= end_ns_;
  return at >= warmup_end_ns_ && stats_.started >= opt_.messages;
}

run::next run::next_message(message_plan& plan) {
  std::uint64_t now = uv_hrtime();
  if (exhausted(now)) return next::stop;
  if (opt_.rate > 0) {
    std::uint64_t due = scheduled_ns(scheduled_);
    if (due > now) return next::wait;
    ++scheduled_;
    plan.start_ns = due;
    if (due >= warmup_end_ns_) stats_.start_lag.record((now - due) / 1000);
  } else {
    plan.start_ns = now;
  }
  plan.measured = plan.start_ns >= warmup_end_ns_;
  plan.number = opt_.number_base + numbered_++ * opt_.number_stride + 1;
  // A corpus goes round in order; with workers, each takes every Nth message.
  plan.size_index =
      text_.sequential() ? (plan.number - 1) % text_.count() : random_.below(text_.count());
  if (plan.measured)
    ++stats_.started;
  else
    ++stats_.warmup;
  return next::start;
}

void run::park(client& c) {
  if (!c.in_idle_list) {
    c.next_idle = idle_;
    idle_ = &c;
    c.in_idle_list = true;
  }
  arm_rate_timer();
}

void run::arm_rate_timer() {
  if (!idle_ || stopping_ || !handles_open_ || rate_fd_ < 0) return;
  std::uint64_t due = scheduled_ns(scheduled_);
  // An expiry already past fires at once; zero would disarm the timer instead.
  itimerspec when{};
  when.it_value.tv_sec = static_cast<time_t>(due / ns_per_s);
  when.it_value.tv_nsec = static_cast<long>(due % ns_per_s);
  if (due == 0) when.it_value.tv_nsec = 1;
  ::timerfd_settime(rate_fd_, TFD_TIMER_ABSTIME, &when, nullptr);
  if (!rate_armed_) {
    uv_poll_start(&rate_poll_, UV_READABLE, rate_cb);
    rate_armed_ = true;
  }
}

void run::rate_cb(uv_poll_t* poll, int, int) noexcept {
  auto* r = static_cast<run*>(poll->data);
  std::uint64_t expirations = 0;
  // Reading clears the readiness; EAGAIN only means it fired early or twice.
  [[maybe_unused]] auto n = ::read(r->rate_fd_, &expirations, sizeof expirations);
  uv_poll_stop(poll);
  r->rate_armed_ = false;
  r->dispatch();
}

// Hands every due message to a parked client.
void run::dispatch() {
  std::uint64_t now = uv_hrtime();
  while (idle_) {
    if (exhausted(now)) return stop_idle_clients();
    if (scheduled_ns(scheduled_) > now) break;
    client* c = idle_;
    idle_ = c->next_idle;
    c->in_idle_list = false;
    // A parked client may have been closed by its server meanwhile.
    if (c->is_ready()) c->start_message();
  }
  arm_rate_timer();
}

void run::stop_idle_clients() {
  while (idle_) {
    client* c = idle_;
    idle_ = c->next_idle;
    c->in_idle_list = false;
    if (c->is_ready()) c->finish();
  }
}

void run::stop(std::string why, bool abort_clients) {
  if (!stopping_) {
    stopping_ = true;
    stopped_because_ = std::move(why);
  }
  stop_idle_clients();
  for (auto& c : clients_) {
    if (c->is_closed() && c->reconnect_at_ns) {
      c->reconnect_at_ns = 0;
      --active_;
    } else if (abort_clients) {
      c->abort(conn_error::timeout);
    }
  }
  if (active_ == 0) finish();
}

void run::message_accepted(bool measured, std::uint64_t start_ns, int code, std::size_t size_index,
                           unsigned recipients_refused) {
  std::size_t size = text_.size(size_index);
  ++live_.completed;
  ++live_.accepted;
  live_.bytes_accepted += size;
  if (!measured) return;
  std::uint64_t now = uv_hrtime();
  ++stats_.accepted;
  ++stats_.codes[static_cast<std::size_t>(code)];
  stats_.bytes_accepted += size;
  stats_.recipients_refused += recipients_refused;
  std::uint64_t us = now > start_ns ? (now - start_ns) / 1000 : 0;
  stats_.latency.record(us);
  if (intervals_on_) interval_.record(us);
  last_answer_ns_ = now;
}

void run::message_refused(bool measured, int code) {
  ++live_.completed;
  if (!measured) return;
  ++stats_.refused;
  if (code >= 200 && code < 600) ++stats_.codes[static_cast<std::size_t>(code)];
  last_answer_ns_ = uv_hrtime();
}

void run::message_failed(bool measured) {
  if (!measured) return;
  ++stats_.failed;
  last_answer_ns_ = uv_hrtime();
}

void run::session_up(std::uint64_t connect_ns, bool pipelining) {
  ++live_.sessions;
  live_.sessions_pipelined += pipelining;
  if (connect_ns >= warmup_end_ns_) stats_.setup.record((uv_hrtime() - connect_ns) / 1000);
}

void run::session_refused(int code, std::string_view what) {
  last_error_ = fmt::format("the server refused {} with {}", what, code);
  if (uv_hrtime() >= warmup_end_ns_) ++stats_.session_codes[static_cast<std::size_t>(code)];
}

void run::handshake_done(std::uint64_t started_ns, bool resumed, const char* version,
                         const char* cipher) {
  ++live_.handshakes;
  if (!tls_version_) {
    tls_version_ = version;
    tls_cipher_ = cipher;
  }
  if (started_ns < warmup_end_ns_) return;
  ++stats_.handshakes;
  stats_.handshakes_resumed += resumed;
  stats_.handshake.record((uv_hrtime() - started_ns) / 1000);
}

void run::tls_failed(int mbedtls_code) {
  last_error_ = "TLS: " + tls_error_text(mbedtls_code);
}

void run::auth_accepted() noexcept {
  if (uv_hrtime() >= warmup_end_ns_) ++stats_.auth_accepted;
}

void run::connection_error(conn_error why, int uv_code) {
  ++live_.errors;
  if (uv_code != 0)
    last_error_ = fmt::format("{} ({})", uv_strerror(uv_code), uv_err_name(uv_code));
  else if (why != conn_error::rejected && why != conn_error::tls && why != conn_error::auth)
    last_error_ = conn_error_names[static_cast<unsigned>(why)];
  if (uv_hrtime() >= warmup_end_ns_) ++stats_.errors[static_cast<unsigned>(why)];
}

void run::client_closed(client& c, bool session_failed) {
  std::uint64_t now = uv_hrtime();
  if (session_failed && ++failure_streak_ >= 2 * opt_.connections + 2 && !stopping_)
    stop(fmt::format("{} sessions in a row failed", failure_streak_), false);
  if (!exhausted(now)) {
    if (session_failed)
      c.reconnect_at_ns = now + reconnect_backoff_ns;  // tick() reconnects it
    else
      c.connect();
    return;
  }
  if (--active_ == 0) finish();
}

void run::tick_cb(uv_timer_t* timer) noexcept {
  static_cast<run*>(timer->data)->tick();
}

void run::tick() {
  std::uint64_t now_ms = uv_now(loop_), now = uv_hrtime();
  bool done = exhausted(now);
  for (auto& c : clients_) {
    c->check_timeout(now_ms);
    if (c->is_closed() && c->reconnect_at_ns && now >= c->reconnect_at_ns) {
      if (done) {
        c->reconnect_at_ns = 0;
        --active_;
      } else {
        c->connect();
      }
    }
  }
  if (deadline_ns_ && now >= deadline_ns_ && !stopping_) {
    stop("the deadline passed (duration + timeouts)", true);
  } else if (deadline_ns_ && now >= deadline_ns_) {
    // Stopping already, and still not done: cut what is left.
    for (auto& c : clients_) c->abort(conn_error::timeout);
  }
  if (done) stop_idle_clients();
  if (intervals_on_) close_intervals(now, false);
  if (progress_ && ++ticks_ % progress_ticks == 0) print_progress(now);
  if (active_ == 0) finish();
}

void run::print_progress(std::uint64_t now) {
  double interval = static_cast<double>(now - progress_ns_) / 1e9;
  if (interval <= 0) return;
  double msgs = static_cast<double>(live_.accepted - progress_last_.accepted) / interval;
  double mb =
      static_cast<double>(live_.bytes_accepted - progress_last_.bytes_accepted) / 1e6 / interval;
  unsigned open = 0;
  for (auto& c : clients_) open += !c->is_closed();
  fmt::print(stderr,
             "\r{:7.1f} s {:10.0f} msg/s {:8.1f} MB/s  {} accepted  {} errors  {} open{}\x1b[K",
             static_cast<double>(now - t0_ns_) / 1e9, msgs, mb, live_.accepted, live_.errors, open,
             now < warmup_end_ns_ ? "  (warm-up)" : "");
  std::fflush(stderr);
  progress_ns_ = now;
  progress_last_ = live_;
}

void run::signal_cb(uv_signal_t* handle, int) noexcept {
  auto* r = static_cast<run*>(handle->data);
  if (++r->signals_ == 1) {
    fmt::print(stderr,
               "\ninboxd-bench: interrupted: finishing the messages in flight "
               "(again to stop now)\n");
    r->stop("interrupted", false);
  } else {
    r->stop("interrupted", true);
  }
}

// The descriptor outlives its poll handle: closed only once libuv is done with it.
void run::rate_close_cb(uv_handle_t* handle) noexcept {
  auto* r = static_cast<run*>(handle->data);
  ::close(r->rate_fd_);
  r->rate_fd_ = -1;
}

// Every client is closed for good: close the run's own handles, so that
// uv_run() returns.
void run::finish() {
  if (!handles_open_) return;
  handles_open_ = false;
  finish_ns_ = uv_hrtime();
  if (intervals_on_) close_intervals(finish_ns_, true);
  if (progress_) {
    fmt::print(stderr, "\r\x1b[K");
    std::fflush(stderr);
  }
  uv_close(reinterpret_cast<uv_handle_t*>(&tick_), nullptr);
  if (rate_fd_ >= 0) uv_close(reinterpret_cast<uv_handle_t*>(&rate_poll_), rate_close_cb);
  uv_close(reinterpret_cast<uv_handle_t*>(&signal_), nullptr);
}

// Interval k covers [k, k + 1) × interval after the end of the warm-up. The
// 100 ms tick closes it up to 100 ms late, so an answer may land in the
// interval after its own; the totals are exact. At the end, the last
// interval is cut at the end of the run (and written only when it holds an
// answer, or is the only one).
void run::close_intervals(std::uint64_t now_ns, bool final) {
  if (now_ns < warmup_end_ns_) return;
  auto emit = [this](std::uint64_t length_ns) {
    double start_s = static_cast<double>(interval_number_ * hist_interval_ns_) / 1e9;
    double length_s = static_cast<double>(length_ns) / 1e9;
    if (log_)
      log_->write_interval(start_s, length_s, interval_.max(), hdr_encode_compressed(interval_));
    else
      intervals_.push_back(hdr_encode(interval_));
    last_interval_s_ = length_s;
    interval_.reset();
    ++interval_number_;
  };
  while (now_ns >= warmup_end_ns_ + (interval_number_ + 1) * hist_interval_ns_)
    emit(hist_interval_ns_);
  if (final && (interval_.count() > 0 || interval_number_ == 0)) {
    std::uint64_t start = warmup_end_ns_ + interval_number_ * hist_interval_ns_;
    emit(std::max<std::uint64_t>(now_ns - start, 1'000'000));
  }
}

outcome run::result() const {
  outcome o;
  o.st = stats_;
  o.live = live_;
  o.t0_ns = t0_ns_;
  o.warmup_end_ns = warmup_end_ns_;
  o.last_answer_ns = last_answer_ns_;
  o.finish_ns = finish_ns_;
  o.base_epoch_s = base_epoch_s_;
  o.stopped_because = stopped_because_;
  o.last_error = last_error_;
  if (tls_version_) o.tls_version = tls_version_;
  if (tls_cipher_) o.tls_cipher = tls_cipher_;
  o.intervals = intervals_;
  o.last_interval_s = last_interval_s_;
  return o;
}

double run::wall_seconds() const noexcept {
  return static_cast<double>(finish_ns_ - t0_ns_) / 1e9;
}

double run::measured_seconds() const noexcept {
  if (last_answer_ns_ <= warmup_end_ns_) return 0;
  return static_cast<double>(last_answer_ns_ - warmup_end_ns_) / 1e9;
}

}  // namespace inboxd::bench
