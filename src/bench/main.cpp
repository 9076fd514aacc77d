// inboxd-bench: an SMTP load generator on one thread and one libuv loop.
//
// main parses the flags, loads the --corpus, raises the descriptor limit
// when many connections are asked for, runs one bench::run on a private
// loop until it ends by itself, and prints the summary (or one JSON object
// with --json). With --workers N it forks N processes instead, each running
// its share of the connections, messages and rate; each sends its outcome
// through a pipe, and the parent merges them (outcome.hpp) into one report
// and one --histogram-log.
// Exit status: 0 when the run completed, even with refused messages; 1 when
// nothing could be sent (or a worker did not report); 2 on a bad flag.
#include <poll.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>
#include <uv.h>

#include <fmt/format.h>
#include <cerrno>
#include <csignal>
#include <cstdio>
#include <cstring>
#include <optional>
#include <vector>

#include "bench/corpus.hpp"
#include "bench/hdr_log.hpp"
#include "bench/options.hpp"
#include "bench/outcome.hpp"
#include "bench/report.hpp"
#include "bench/run.hpp"

namespace {

using namespace inboxd::bench;

// Each connection is one descriptor; a few more are the loop's own.
void raise_fd_limit(unsigned connections) {
  rlimit lim{};
  if (::getrlimit(RLIMIT_NOFILE, &lim) != 0) return;
  rlim_t want = connections + 64;
  if (lim.rlim_cur >= want) return;
  lim.rlim_cur = lim.rlim_max == RLIM_INFINITY ? want : std::min(want, lim.rlim_max);
  if (::setrlimit(RLIMIT_NOFILE, &lim) != 0 || lim.rlim_cur < want)
    fmt::print(stderr, "inboxd-bench: warning: only {} descriptors for {} connections\n",
               lim.rlim_cur, connections);
}

// Runs opt on a fresh loop; returns the outcome, or nothing after a start
// error (printed; exit 2).
std::optional<outcome> run_once(const options& opt, const message_text& text, hdr_log_writer* log) {
  raise_fd_limit(opt.connections);
  uv_loop_t loop;
  if (int rc = uv_loop_init(&loop); rc != 0) {
    fmt::print(stderr, "inboxd-bench: uv_loop_init: {}\n", uv_strerror(rc));
    return std::nullopt;
  }
  std::optional<outcome> result;
  {
    run r(&loop, opt, text, log);
    std::string error;
    if (!r.start(error)) {
      fmt::print(stderr, "inboxd-bench: {}\n", error);
      uv_run(&loop, UV_RUN_DEFAULT);
    } else {
      uv_run(&loop, UV_RUN_DEFAULT);
      result = r.result();
    }
  }
  if (int rc = uv_loop_close(&loop); rc != 0)
    fmt::print(stderr, "inboxd-bench: loop not empty at exit: {}\n", uv_err_name(rc));
  return result;
}

int report(const options& opt, const outcome& o, const cpu_usage& cpu) {
  if (opt.json)
    print_json(stdout, opt, o, cpu);
  else
    print_text(stdout, opt, o, cpu);
  int code = exit_code(o);
  if (code == 1)
    fmt::print(stderr, "inboxd-bench: nothing could be sent to {}:{}: {}\n", opt.host, opt.port,
               o.last_error.empty() ? "no session" : o.last_error);
  return code;
}

// The workers' pids, for the parent's signal handler.
std::vector<pid_t> worker_pids;

// SIGINT and SIGTERM to the parent go on to every worker as SIGINT: each
// finishes its transactions in flight (a second one stops it at once), and
// the parent reports what they send back.
extern "C" void forward_signal(int) {
  for (pid_t pid : worker_pids)
    if (pid > 0) ::kill(pid, SIGINT);
}

// The share of total that worker w of n gets: the first total % n get one more.
std::uint64_t share(std::uint64_t total, unsigned w, unsigned n) {
  return total / n + (w < total % n ? 1 : 0);
}

[[noreturn]] void worker_main(options opt, const message_text& text, int fd) {
  // The parent forwards its signals; the terminal's Ctrl-C must not reach a
  // worker twice, and a worker must not outlive a parent killed outright.
  ::setpgid(0, 0);
  ::prctl(PR_SET_PDEATHSIG, SIGINT);
  std::optional<outcome> o = run_once(opt, text, nullptr);
  if (!o) ::_exit(2);
  std::string bytes = serialize(*o);
  std::size_t done = 0;
  while (done < bytes.size()) {
    ssize_t n = ::write(fd, bytes.data() + done, bytes.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) ::_exit(1);
    done += static_cast<std::size_t>(n);
  }
  ::_exit(0);
}

int run_workers(const options& opt, const message_text& text) {
  hdr_log_writer log;
  if (!opt.histogram_log.empty()) {
    if (auto error = log.open(opt.histogram_log); !error.empty()) {
      fmt::print(stderr, "inboxd-bench: {}\n", error);
      return 2;
    }
  }
  const unsigned n = opt.workers;
  std::vector<int> fds(n, -1);
  worker_pids.assign(n, 0);
  struct sigaction forward {};
  forward.sa_handler = forward_signal;
  ::sigemptyset(&forward.sa_mask);
  unsigned connection_base = 0;
  for (unsigned w = 0; w < n; ++w) {
    options mine = opt;
    mine.workers = 1;
    mine.connections = static_cast<unsigned>(share(opt.connections, w, n));
    if (opt.messages) mine.messages = share(opt.messages, w, n);
    if (opt.rate > 0) mine.rate = opt.rate / n;
    mine.connection_base = connection_base;
    connection_base += mine.connections;
    mine.number_base = w;
    mine.number_stride = n;
    mine.progress = "off";
    int pipe_fds[2];
    if (::pipe2(pipe_fds, O_CLOEXEC) != 0) {
      fmt::print(stderr, "inboxd-bench: pipe: {}\n", std::strerror(errno));
      forward_signal(SIGINT);
      return 1;
    }
    std::fflush(nullptr);
    pid_t pid = ::fork();
    if (pid < 0) {
      fmt::print(stderr, "inboxd-bench: fork: {}\n", std::strerror(errno));
      forward_signal(SIGINT);
      return 1;
    }
    if (pid == 0) {
      ::close(pipe_fds[0]);
      for (unsigned k = 0; k < w; ++k) ::close(fds[k]);
      worker_main(std::move(mine), text, pipe_fds[1]);
    }
    ::close(pipe_fds[1]);
    fds[w] = pipe_fds[0];
    worker_pids[w] = pid;
  }
  ::sigaction(SIGINT, &forward, nullptr);
  ::sigaction(SIGTERM, &forward, nullptr);

  // Read every worker's outcome to its end (EOF when it exits).
  std::vector<std::string> texts(n);
  std::vector<pollfd> polls(n);
  unsigned open = n;
  for (unsigned w = 0; w < n; ++w) polls[w] = {.fd = fds[w], .events = POLLIN, .revents = 0};
  char buffer[65536];
  while (open > 0) {
    if (::poll(polls.data(), n, -1) < 0) {
      if (errno == EINTR) continue;
      break;
    }
    for (unsigned w = 0; w < n; ++w) {
      if (polls[w].fd < 0 || !polls[w].revents) continue;
      ssize_t got = ::read(polls[w].fd, buffer, sizeof buffer);
      if (got < 0 && errno == EINTR) continue;
      if (got > 0) {
        texts[w].append(buffer, static_cast<std::size_t>(got));
        continue;
      }
      ::close(polls[w].fd);
      polls[w].fd = -1;
      --open;
    }
  }
  int worst = 0;
  std::optional<outcome> merged;
  for (unsigned w = 0; w < n; ++w) {
    int status = 0;
    while (::waitpid(worker_pids[w], &status, 0) < 0 && errno == EINTR) {
    }
    worker_pids[w] = 0;
    outcome o;
    std::string error;
    if (!deserialize(texts[w], o, error)) {
      fmt::print(stderr, "inboxd-bench: worker {} sent no result ({}; exit status {})\n", w, error,
                 WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status));
      worst = std::max(worst, WIFEXITED(status) && WEXITSTATUS(status) == 2 ? 2 : 1);
      continue;
    }
    if (!merged)
      merged = std::move(o);
    else
      merge(*merged, o);
  }
  ::signal(SIGINT, SIG_DFL);
  ::signal(SIGTERM, SIG_DFL);
  if (!merged) return worst ? worst : 1;
  if (log.is_open()) {
    log.write_header(merged->base_epoch_s);
    for (std::size_t k = 0; k < merged->intervals.size(); ++k) {
      histogram h;
      (void)hdr_decode(merged->intervals[k], false, h);
      bool last = k + 1 == merged->intervals.size();
      log.write_interval(static_cast<double>(k) * opt.histogram_interval,
                         last ? merged->last_interval_s : opt.histogram_interval, h.max(),
                         hdr_encode_compressed(h));
    }
    merged->intervals_written = log.intervals();
    if (!log.close())
      fmt::print(stderr, "inboxd-bench: --histogram-log: writing {} failed\n", opt.histogram_log);
  }
  int code = report(opt, *merged, measure_cpu(true));
  return std::max(code, worst);
}

}  // namespace

int main(int argc, char** argv) {
  options opt;
  if (int rc = parse_options(argc, argv, opt); rc >= 0) return rc;
  // A server that closes mid-write must give an error code, not a signal.
  std::signal(SIGPIPE, SIG_IGN);
  // The --rate schedule sleeps on a timerfd; the default 50 µs slack would
  // show up in every latency measured from the schedule.
  if (opt.rate > 0) ::prctl(PR_SET_TIMERSLACK, 1UL, 0, 0, 0);

  // Loaded once, before any fork: the workers share its pages.
  std::optional<message_text> text;
  if (!opt.corpus.empty()) {
    std::vector<corpus_message> messages;
    if (auto error = load_corpus(opt.corpus, messages); !error.empty()) {
      fmt::print(stderr, "inboxd-bench: {} (try --help)\n", error);
      return 2;
    }
    text.emplace(std::move(messages));
  } else {
    text.emplace(opt.sizes);
  }
  if (opt.workers > 1) return run_workers(opt, *text);

  hdr_log_writer log;
  if (!opt.histogram_log.empty()) {
    if (auto error = log.open(opt.histogram_log); !error.empty()) {
      fmt::print(stderr, "inboxd-bench: {}\n", error);
      return 2;
    }
  }
  std::optional<outcome> o = run_once(opt, *text, log.is_open() ? &log : nullptr);
  if (!o) return 2;
  o->intervals_written = log.intervals();
  if (log.is_open() && !log.close())
    fmt::print(stderr, "inboxd-bench: --histogram-log: writing {} failed\n", opt.histogram_log);
  return report(opt, *o, measure_cpu());
}
