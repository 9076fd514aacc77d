// bench/run.hpp: one inboxd-bench run: the clients, the schedule, the clock
// and the counters.
//
// The run owns its clients, its handles (a 100 ms tick for timeouts,
// reconnects, the deadline and the progress line; with --rate, a timerfd
// polled by the loop; SIGINT) and the stats. Everything happens on the loop
// thread. start() opens every connection; the loop then runs until every
// client has closed and the run has closed its own handles, so uv_run()
// returns by itself and uv_loop_close() finds the loop empty.
//
// The schedule: closed loop (no --rate), a client starts its next message as
// soon as the previous one is answered. Open loop, message k is due at
// t0 + k / rate; a due message goes to a ready client at once, or waits for
// the first one to become ready, and its latency counts from when it was due
// (so a stalled server cannot hide behind fewer sends: coordinated omission).
#pragma once

#include <sys/socket.h>
#include <sys/timerfd.h>
#include <uv.h>

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "bench/client.hpp"
#include "bench/hdr_log.hpp"
#include "bench/message.hpp"
#include "bench/options.hpp"
#include "bench/outcome.hpp"
#include "bench/stats.hpp"
#include "bench/tls_client.hpp"

namespace inboxd::bench {

struct message_plan {
  std::uint64_t number = 0;    // {n}, from 1
  std::uint64_t start_ns = 0;  // latency origin (uv_hrtime)
  std::size_t size_index = 0;
  bool measured = false;
};

class run {
 public:
  // text outlives the run. With --histogram-log, each interval's histogram
  // goes to log when it is given (open, header not yet written), else it is
  // kept in the outcome (a worker's, for the parent to merge).
  run(uv_loop_t* loop, const options& opt, const message_text& text, hdr_log_writer* log = nullptr);
  ~run();
  run(const run&) = delete;
  run& operator=(const run&) = delete;

  // Resolves the server's address and opens every connection. Returns false,
  // with a message in error, when the address does not resolve.
  [[nodiscard]] bool start(std::string& error);

  // What the clients use.
  enum class next { start, wait, stop };
  [[nodiscard]] next next_message(message_plan& plan);
  // A ready client with nothing due: it gets the next due message.
  void park(client& c);
  void message_accepted(bool measured, std::uint64_t start_ns, int code, std::size_t size_index,
                        unsigned recipients_refused);
  void message_refused(bool measured, int code);
  void message_failed(bool measured);
  void transaction_done() noexcept { failure_streak_ = 0; }
  void session_up(std::uint64_t connect_ns, bool pipelining);
  // what: "the session", "STARTTLS", "AUTH": for the last error.
  void session_refused(int code, std::string_view what);
  // A TLS handshake ended; started_ns is when its ClientHello left. version
  // and cipher are mbedTLS's static strings.
  void handshake_done(std::uint64_t started_ns, bool resumed, const char* version,
                      const char* cipher);
  void tls_failed(int mbedtls_code);
  void auth_accepted() noexcept;
  void connection_error(conn_error why, int uv_code);
  void count_write(std::size_t bytes) noexcept {
    live_.bytes_written += bytes;
    ++live_.writes;
  }
  // Called from the client's close_cb: reconnect it, or count it out.
  void client_closed(client& c, bool session_failed);

  [[nodiscard]] uv_loop_t* loop() const noexcept { return loop_; }
  [[nodiscard]] const sockaddr* address() const noexcept {
    return reinterpret_cast<const sockaddr*>(&address_);
  }
  [[nodiscard]] const options& opt() const noexcept { return opt_; }
  [[nodiscard]] const message_text& text() const noexcept { return text_; }
  [[nodiscard]] const address_template& from() const noexcept { return from_; }
  [[nodiscard]] const address_template& to() const noexcept { return to_; }
  // With --tls: shared by every client's stream; null otherwise.
  [[nodiscard]] const tls_client_config* tls_config() const noexcept { return tls_config_.get(); }
  // With --auth: "AUTH PLAIN <base64>\r\n", made once (RFC 4954 4, RFC 4616).
  [[nodiscard]] const std::string& auth_line() const noexcept { return auth_line_; }
  [[nodiscard]] std::uint64_t now_ms() const noexcept { return uv_now(loop_); }
  [[nodiscard]] std::uint64_t timeout_ms() const noexcept { return timeout_ms_; }

  // Everything measured, once uv_run() has returned.
  [[nodiscard]] outcome result() const;

  // Results, once uv_run() has returned.
  [[nodiscard]] const stats& results() const noexcept { return stats_; }
  [[nodiscard]] const live_counters& live() const noexcept { return live_; }
  // Seconds from start() to the end of the run, and of the measured part
  // (from the end of the warm-up to the last measured answer).
  [[nodiscard]] double wall_seconds() const noexcept;
  [[nodiscard]] double measured_seconds() const noexcept;
  // Why the run stopped early, empty when it ran to its end.
  [[nodiscard]] const std::string& stopped_because() const noexcept { return stopped_because_; }
  [[nodiscard]] const std::string& last_error() const noexcept { return last_error_; }
  // The first TLS handshake's protocol and cipher suite; null before one.
  [[nodiscard]] const char* tls_version() const noexcept { return tls_version_; }
  [[nodiscard]] const char* tls_cipher() const noexcept { return tls_cipher_; }

 private:
  [[nodiscard]] bool exhausted(std::uint64_t now_ns) const noexcept;
  [[nodiscard]] std::uint64_t scheduled_ns(std::uint64_t k) const noexcept;
  void dispatch();
  void arm_rate_timer();
  void stop_idle_clients();
  void stop(std::string why, bool abort_clients);
  void tick();
  void print_progress(std::uint64_t now_ns);
  void finish();
  // --histogram-log: ends the intervals that are over by now_ns (all of
  // them, the last one partial, when final).
  void close_intervals(std::uint64_t now_ns, bool final);

  static void tick_cb(uv_timer_t* timer) noexcept;
  static void rate_cb(uv_poll_t* poll, int status, int events) noexcept;
  static void rate_close_cb(uv_handle_t* handle) noexcept;
  static void signal_cb(uv_signal_t* handle, int signum) noexcept;

  uv_loop_t* loop_;
  const options& opt_;
  const message_text& text_;
  address_template from_, to_;
  random_source random_;
  sockaddr_storage address_{};
  std::uint64_t timeout_ms_;
  std::unique_ptr<tls_client_config> tls_config_;
  std::string auth_line_;
  const char* tls_version_ = nullptr;
  const char* tls_cipher_ = nullptr;

  std::vector<std::unique_ptr<client>> clients_;
  unsigned active_ = 0;     // clients with a socket or a reconnect pending
  client* idle_ = nullptr;  // parked clients, linked through next_idle

  uv_timer_t tick_{};
  // --rate: a timerfd set to the next due time (absolute, CLOCK_MONOTONIC
  // like uv_hrtime), so messages start within microseconds of their
  // schedule; libuv's own timers have millisecond resolution.
  int rate_fd_ = -1;
  uv_poll_t rate_poll_{};
  bool rate_armed_ = false;
  uv_signal_t signal_{};
  bool handles_open_ = false;
  unsigned ticks_ = 0;
  unsigned signals_ = 0;

  // The clock, in uv_hrtime() nanoseconds.
  std::uint64_t t0_ns_ = 0;
  std::uint64_t warmup_end_ns_ = 0;
  std::uint64_t end_ns_ = 0;       // duration mode: no message starts after this
  std::uint64_t deadline_ns_ = 0;  // duration mode: everything closes at this
  std::uint64_t finish_ns_ = 0;
  std::uint64_t last_answer_ns_ = 0;  // the last measured answer
  double interval_ns_ = 0;            // --rate: between scheduled starts

  std::uint64_t numbered_ = 0;   // messages started, warm-up included ({n})
  std::uint64_t scheduled_ = 0;  // --rate: messages handed out so far
  unsigned failure_streak_ = 0;  // sessions that failed in a row
  bool stopping_ = false;
  std::string stopped_because_;
  std::string last_error_;

  stats stats_;
  live_counters live_;
  // --histogram-log: the current interval's latencies, its number, and
  // what was closed (in the outcome when there is no log to write to).
  bool intervals_on_ = false;
  hdr_log_writer* log_ = nullptr;
  histogram interval_;
  std::uint64_t hist_interval_ns_ = 0;
  std::uint64_t interval_number_ = 0;
  double base_epoch_s_ = 0;
  std::vector<std::string> intervals_;
  double last_interval_s_ = 0;
  // The live progress line.
  bool progress_ = false;
  std::uint64_t progress_ns_ = 0;
  live_counters progress_last_;
};

}  // namespace inboxd::bench
