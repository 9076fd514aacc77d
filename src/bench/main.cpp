// inboxd-bench: an SMTP load generator on one thread and one libuv loop.
//
// main parses the flags, raises the descriptor limit when many connections
// are asked for, runs one bench::run on a private loop until it ends by
// itself, and prints the summary (or one JSON object with --json).
// Exit status: 0 when the run completed, even with refused messages; 1 when
// nothing could be sent; 2 on a bad flag.
#include <sys/prctl.h>
#include <sys/resource.h>
#include <uv.h>

#include <fmt/format.h>
#include <csignal>
#include <cstdio>

#include "bench/options.hpp"
#include "bench/report.hpp"
#include "bench/run.hpp"

namespace {

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

}  // namespace

int main(int argc, char** argv) {
  using namespace inboxd::bench;
  options opt;
  if (int rc = parse_options(argc, argv, opt); rc >= 0) return rc;
  // A server that closes mid-write must give an error code, not a signal.
  std::signal(SIGPIPE, SIG_IGN);
  raise_fd_limit(opt.connections);
  // The --rate schedule sleeps on a timerfd; the default 50 µs slack would
  // show up in every latency measured from the schedule.
  if (opt.rate > 0) ::prctl(PR_SET_TIMERSLACK, 1UL, 0, 0, 0);

  uv_loop_t loop;
  if (int rc = uv_loop_init(&loop); rc != 0) {
    fmt::print(stderr, "inboxd-bench: uv_loop_init: {}\n", uv_strerror(rc));
    return 1;
  }
  int code = 0;
  {
    run r(&loop, opt);
    std::string error;
    if (!r.start(error)) {
      fmt::print(stderr, "inboxd-bench: {}\n", error);
      uv_run(&loop, UV_RUN_DEFAULT);
      uv_loop_close(&loop);
      return 2;
    }
    uv_run(&loop, UV_RUN_DEFAULT);
    cpu_usage cpu = measure_cpu();
    if (opt.json)
      print_json(stdout, opt, r, cpu);
    else
      print_text(stdout, opt, r, cpu);
    code = exit_code(r);
    if (code == 1)
      fmt::print(stderr, "inboxd-bench: nothing could be sent to {}:{}: {}\n", opt.host, opt.port,
                 r.last_error().empty() ? "no session" : r.last_error());
  }
  if (int rc = uv_loop_close(&loop); rc != 0)
    fmt::print(stderr, "inboxd-bench: loop not empty at exit: {}\n", uv_err_name(rc));
  return code;
}
