#include "app/supervisor.hpp"

#include <fcntl.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <fmt/format.h>
#include <algorithm>
#include <charconv>
#include <csignal>
#include <cstring>
#include <memory>

#include "app/log_writer.hpp"
#include "net/listener.hpp"

extern char** environ;

namespace inboxd::app {

bool bind_worker_sockets(const server_config& cfg, unsigned workers,
                         std::vector<std::vector<inherited_socket>>& sets,
                         std::vector<std::string>& unix_paths, std::vector<std::string>& notes,
                         std::string& error) {
  sets.assign(workers, {});
  auto shared = [&](int fd, std::string_view kind) {
    for (auto& set : sets) set.push_back({.fd = fd, .name = std::string(kind)});
  };
  auto bind_list = [&](const std::vector<std::string>& list, std::string_view kind) {
    for (const auto& address : list) {
      if (address.starts_with("fd:")) {
        int fd = -1;
        std::string_view digits = std::string_view(address).substr(3);
        std::from_chars(digits.data(), digits.data() + digits.size(), fd);
        shared(fd, kind);
      } else if (address.starts_with("unix:")) {
        std::string path = address.substr(5), note;
        int fd =
            net::make_unix_socket(path, cfg.unix_socket_mode, cfg.unix_socket_owner, note, error);
        if (!note.empty()) notes.push_back(note);
        if (fd < 0) return false;
        unix_paths.push_back(path);
        shared(fd, kind);
      } else {
        // The first bind resolves port 0; the others join its port.
        std::string bound = address;
        for (auto& set : sets) {
          int fd = net::make_tcp_socket(bound, true, error);
          if (fd < 0) return false;
          bound = net::socket_address(fd);
          set.push_back({.fd = fd, .name = std::string(kind)});
        }
      }
    }
    return true;
  };
  for (const auto& e : listen_entries(cfg))
    if (!bind_list({e.address}, kind_name(e.kind))) return false;
  return true;
}

namespace {

class supervisor;

// The first restart waits this long; each quick death doubles it, up to
// max_backoff_ms; a worker that lived stable_ms starts the count again.
constexpr std::uint64_t first_backoff_ms = 100;
constexpr std::uint64_t max_backoff_ms = 10'000;
constexpr std::uint64_t stable_ms = 10'000;
// STATUS= is sent at most this often (and only when it changed).
constexpr std::uint64_t status_interval_ms = 2'000;

struct worker {
  supervisor* sup = nullptr;
  unsigned index = 0;  // 1-based, as the log names it
  pid_t pid = 0;       // 0: not running
  int channel = -1;    // our end of its SOCK_SEQPACKET channel
  uv_poll_t poll{};
  bool polling = false;
  uv_timer_t restart{};
  bool ready = false;       // said READY=1 since it started
  bool ever_ready = false;  // in any of its lives
  bool reload_pending = false;
  std::string reload_error;  // the last reload that failed there
  std::uint64_t connections = 0;
  std::uint64_t messages = 0;
  std::uint64_t started_at = 0;  // uv_now()
  std::uint64_t last_ping = 0;   // uv_now() of its last WATCHDOG=1
  std::uint64_t backoff_ms = 0;
};

std::string describe(int status) {
  if (WIFEXITED(status))
    return fmt::format(FMT_STRING("exited with status {}"), WEXITSTATUS(status));
  if (WIFSIGNALED(status))
    return fmt::format(FMT_STRING("was killed by signal {} ({})"), WTERMSIG(status),
                       ::strsignal(WTERMSIG(status)));
  return fmt::format(FMT_STRING("ended ({:#x})"), status);
}

// Writes n in decimal at out (async-signal-safe: for the child before exec).
void put_decimal(char* out, long n) {
  char digits[24];
  int len = 0;
  do {
    digits[len++] = static_cast<char>('0' + n % 10);
    n /= 10;
  } while (n > 0);
  while (len > 0) *out++ = digits[--len];
  *out = '\0';
}

class supervisor {
 public:
  supervisor(uv_loop_t* loop, supervisor_options options) : loop_(loop), opt_(std::move(options)) {}

  int run() {
    parent_pid_ = ::getpid();
    // The program's own path, so that a worker is named inboxd in ps, not
    // exe; once the file was replaced (an upgrade), the running image, so
    // that every worker runs the supervisor's version.
    char path[4096];
    ssize_t n = ::readlink("/proc/self/exe", path, sizeof path - 1);
    exe_ = "/proc/self/exe";
    if (n > 0 && !std::string_view(path, static_cast<std::size_t>(n)).ends_with(" (deleted)"))
      exe_.assign(path, static_cast<std::size_t>(n));
    base_env_.clear();
    // What systemd gave the supervisor is not the workers'; each gets its own.
    static constexpr std::string_view ours[] = {
        "LISTEN_PID=",    "LISTEN_FDS=",   "LISTEN_FDNAMES=",       "NOTIFY_SOCKET=",
        "WATCHDOG_USEC=", "WATCHDOG_PID=", "INBOXD_SUPERVISOR_FD=", "INBOXD_WORKER="};
    for (char** e = environ; *e; ++e) {
      std::string_view v = *e;
      if (std::none_of(std::begin(ours), std::end(ours),
                       [&](std::string_view p) { return v.starts_with(p); }))
        base_env_.emplace_back(v);
    }
    for (auto [h, sig] : {std::pair{&sigterm_, SIGTERM}, std::pair{&sigint_, SIGINT},
                          std::pair{&sighup_, SIGHUP}, std::pair{&sigchld_, SIGCHLD}}) {
      uv_signal_init(loop_, h);
      h->data = this;
      uv_signal_start(h, signal_cb, sig);
    }
    uv_timer_init(loop_, &status_timer_);
    status_timer_.data = this;
    uv_timer_init(loop_, &watchdog_timer_);
    watchdog_timer_.data = this;
    for (unsigned i = 0; i < opt_.workers; ++i) {
      auto w = std::make_unique<worker>();
      w->sup = this;
      w->index = i + 1;
      uv_timer_init(loop_, &w->restart);
      w->restart.data = w.get();
      workers_.push_back(std::move(w));
    }
    say(log_level::info, "supervisor: starting {} workers", opt_.workers);
    for (auto& w : workers_) start(*w);
    uv_run(loop_, UV_RUN_DEFAULT);
    for (const auto& path : opt_.unix_paths) ::unlink(path.c_str());
    return exit_code_;
  }

 private:
  // fork, then in the child: the sockets to 3.., the channel after them,
  // PR_SET_PDEATHSIG, and exec of this program with the same arguments.
  void start(worker& w) {
    const auto& set = opt_.sockets[opt_.sockets.size() == 1 ? 0 : w.index - 1];
    int sv[2];
    if (::socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv) != 0) {
      say(log_level::error, "worker {}: cannot make its channel: {}", w.index,
          std::strerror(errno));
      return schedule_restart(w);
    }
    // Everything the child needs is made here: after fork() it may not allocate.
    std::vector<std::string> env = base_env_;
    std::string names;
    for (const auto& s : set) names += (names.empty() ? "" : ":") + s.name;
    int channel_fd = 3 + static_cast<int>(set.size());
    env.push_back(fmt::format(FMT_STRING("LISTEN_FDS={}"), set.size()));
    env.push_back("LISTEN_FDNAMES=" + names);
    env.push_back(fmt::format(FMT_STRING("INBOXD_SUPERVISOR_FD={}"), channel_fd));
    env.push_back(fmt::format(FMT_STRING("INBOXD_WORKER={}"), w.index));
    if (opt_.notify && opt_.notify->watchdog_usec())
      env.push_back(fmt::format(FMT_STRING("WATCHDOG_USEC={}"), opt_.notify->watchdog_usec()));
    char listen_pid[40] = "LISTEN_PID=";
    std::vector<char*> envp;
    for (auto& e : env) envp.push_back(e.data());
    envp.push_back(listen_pid);
    envp.push_back(nullptr);
    std::vector<int> from;
    for (const auto& s : set) from.push_back(s.fd);
    from.push_back(sv[1]);
    std::vector<int> moved(from.size());  // Filled in by the child, which may not allocate.
    int above = channel_fd + 1;
    for (int fd : from) above = std::max(above, fd + 1);
    pid_t parent = parent_pid_;
    char** argv = opt_.argv;
    const char* exe = exe_.c_str();

    pid_t pid = ::fork();
    if (pid == 0) {
      // The child: only async-signal-safe calls until execve.
      ::setpgid(0, 0);  // A terminal's ^C reaches the supervisor alone, which passes it on.
      if (::prctl(PR_SET_PDEATHSIG, SIGTERM) != 0 || ::getppid() != parent) ::_exit(1);
      std::size_t n = from.size();
      // First above every target, then into place: no target overwrites a source.
      for (std::size_t i = 0; i < n; ++i) moved[i] = ::fcntl(from[i], F_DUPFD_CLOEXEC, above);
      for (std::size_t i = 0; i < n; ++i)
        if (moved[i] < 0 || ::dup2(moved[i], 3 + static_cast<int>(i)) < 0) ::_exit(1);
      put_decimal(listen_pid + 11, ::getpid());
      ::execve(exe, argv, envp.data());
      ::_exit(127);
    }
    ::close(sv[1]);
    if (pid < 0) {
      say(log_level::error, "worker {}: cannot fork: {}", w.index, std::strerror(errno));
      ::close(sv[0]);
      return schedule_restart(w);
    }
    w.pid = pid;
    w.channel = sv[0];
    w.ready = false;
    w.started_at = uv_now(loop_);
    w.last_ping = w.started_at;
    ::fcntl(w.channel, F_SETFL, ::fcntl(w.channel, F_GETFL) | O_NONBLOCK);
    uv_poll_init(loop_, &w.poll, w.channel);
    w.poll.data = &w;
    w.polling = true;
    uv_poll_start(&w.poll, UV_READABLE, channel_cb);
    say(log_level::info, "worker {} started (pid {})", w.index, pid);
  }

  void schedule_restart(worker& w) {
    std::uint64_t now = uv_now(loop_);
    if (w.backoff_ms == 0 || now - w.started_at >= stable_ms)
      w.backoff_ms = first_backoff_ms;
    else
      w.backoff_ms = std::min(w.backoff_ms * 2, max_backoff_ms);
    uv_timer_start(
        &w.restart,
        [](uv_timer_t* t) {
          auto* w = static_cast<worker*>(t->data);
          if (!w->sup->stop_signals_) w->sup->start(*w);
        },
        w.backoff_ms, 0);
  }

  void close_channel(worker& w) {
    if (w.polling) {
      w.polling = false;
      uv_close(reinterpret_cast<uv_handle_t*>(&w.poll), nullptr);
    }
    if (w.channel >= 0) {
      // The poll handle is closed first; libuv no longer watches the fd.
      int fd = std::exchange(w.channel, -1);
      ::close(fd);
    }
  }

  static void channel_cb(uv_poll_t* handle, int status, int) noexcept {
    auto* w = static_cast<worker*>(handle->data);
    supervisor& s = *w->sup;
    char buf[4096];
    for (;;) {
      ssize_t n = status < 0 ? 0 : ::recv(w->channel, buf, sizeof buf, MSG_DONTWAIT);
      if (n < 0 && errno == EINTR) continue;
      if (n < 0) return;  // EAGAIN: all read.
      if (n == 0) {
        // The worker closed its end (it is exiting): SIGCHLD will say how.
        uv_poll_stop(handle);
        return;
      }
      try {
        s.on_message(*w, std::string_view(buf, static_cast<std::size_t>(n)));
      } catch (...) {
        // Out of memory: that message is lost, the channel goes on.
      }
    }
  }

  void on_message(worker& w, std::string_view message) {
    bool ready = false;
    std::string reload_error;
    while (!message.empty()) {
      auto nl = message.find('\n');
      std::string_view line = message.substr(0, nl);
      message = nl == message.npos ? std::string_view() : message.substr(nl + 1);
      auto eq = line.find('=');
      if (eq == line.npos) continue;
      std::string_view key = line.substr(0, eq), value = line.substr(eq + 1);
      auto number = [&](std::uint64_t& out) {
        std::from_chars(value.data(), value.data() + value.size(), out);
      };
      if (key == "READY" && value == "1") ready = true;
      if (key == "WATCHDOG" && value == "1") w.last_ping = uv_now(loop_);
      if (key == "X_INBOXD_CONNECTIONS") number(w.connections);
      if (key == "X_INBOXD_MESSAGES") number(w.messages);
      if (key == "X_INBOXD_RELOAD_FAILED") reload_error = value;
    }
    if (!ready) return;
    w.last_ping = uv_now(loop_);
    if (w.reload_pending) {
      w.reload_pending = false;
      w.reload_error = reload_error;
      maybe_reloaded();
    }
    if (w.ready) return;
    w.ready = w.ever_ready = true;
    if (announced_ ||
        std::any_of(workers_.begin(), workers_.end(), [](const auto& x) { return !x->ready; }))
      return;
    announced_ = true;
    say(log_level::info, "supervisor: all {} workers ready", workers_.size());
    notify("READY=1\nSTATUS=" + status_text());
    uv_timer_start(&status_timer_, status_cb, status_interval_ms, status_interval_ms);
    if (opt_.notify && opt_.notify->watchdog_usec()) {
      std::uint64_t half_ms = std::max<std::uint64_t>(1, opt_.notify->watchdog_usec() / 2000);
      uv_timer_start(&watchdog_timer_, watchdog_cb, half_ms, half_ms);
    }
  }

  std::string status_text() const {
    std::uint64_t connections = 0, messages = retired_messages_;
    unsigned running = 0;
    for (const auto& w : workers_) {
      connections += w->connections;
      messages += w->messages;
      running += w->pid != 0;
    }
    return fmt::format(FMT_STRING("{} workers, {} connections, {} messages accepted"), running,
                       connections, messages);
  }

  void notify(const std::string& state) {
    if (opt_.notify) opt_.notify->send(state);
  }

  static void status_cb(uv_timer_t* t) noexcept {
    auto* s = static_cast<supervisor*>(t->data);
    if (s->reloading_) return;  // The reload's own STATUS comes with its READY=1.
    try {
      std::string text = s->status_text();
      if (text == s->last_status_) return;
      s->last_status_ = text;
      s->notify("STATUS=" + text);
    } catch (...) {
      // Out of memory: no STATUS= this time.
    }
  }

  // A ready worker that has not pinged for a whole interval has a stalled
  // loop: it is killed (and restarted), so the others serve on and systemd
  // keeps being pinged by a supervisor whose own loop runs.
  static void watchdog_cb(uv_timer_t* t) noexcept {
    auto* s = static_cast<supervisor*>(t->data);
    std::uint64_t now = uv_now(s->loop_), limit_ms = s->opt_.notify->watchdog_usec() / 1000;
    for (auto& w : s->workers_) {
      if (w->pid == 0 || !w->ready || now - w->last_ping <= limit_ms) continue;
      say(log_level::error, "worker {} (pid {}) sent no watchdog ping for {} ms: killing it",
          w->index, w->pid, now - w->last_ping);
      ::kill(w->pid, SIGKILL);
      w->last_ping = now;  // Once: SIGCHLD takes it from here.
    }
    s->notify("WATCHDOG=1");
  }

  void maybe_reloaded() {
    if (!reloading_ || std::any_of(workers_.begin(), workers_.end(),
                                   [](const auto& w) { return w->reload_pending; }))
      return;
    reloading_ = false;
    std::string failed;
    for (const auto& w : workers_)
      if (!w->reload_error.empty())
        failed += fmt::format(FMT_STRING("{}worker {}: {}"), failed.empty() ? "" : "; ", w->index,
                              w->reload_error);
    if (failed.empty()) {
      say(log_level::info, "supervisor: every worker reloaded");
      notify("READY=1\nSTATUS=reloaded; " + status_text());
    } else {
      say(log_level::error, "supervisor: reload failed, the old config stays: {}", failed);
      notify("READY=1\nSTATUS=reload failed, the old config stays: " + failed);
    }
  }

  static void signal_cb(uv_signal_t* handle, int signum) noexcept {
    auto* s = static_cast<supervisor*>(handle->data);
    // What allocates here is log lines and state lines; out of memory loses
    // them, not the signal's effect on the workers (kill and waitpid come
    // first in each path).
    try {
      switch (signum) {
        case SIGCHLD: return s->reap();
        case SIGHUP: return s->reload();
        default: return s->stop(signum);
      }
    } catch (...) {
    }
  }

  void reload() {
    if (stop_signals_) return;
    reloading_ = true;
    notify(fmt::format(FMT_STRING("RELOADING=1\nMONOTONIC_USEC={}"), monotonic_usec()));
    unsigned n = 0;
    for (auto& w : workers_) {
      // One that is still starting reads the file as it is now anyway.
      if (w->pid == 0 || !w->ready) continue;
      w->reload_pending = true;
      w->reload_error.clear();
      ::kill(w->pid, SIGHUP);
      ++n;
    }
    say(log_level::info, "SIGHUP: reloading {} workers", n);
    maybe_reloaded();
  }

  void stop(int signum) {
    ++stop_signals_;
    for (auto& w : workers_) {
      uv_timer_stop(&w->restart);
      if (w->pid != 0) ::kill(w->pid, signum);
    }
    const char* name = signum == SIGTERM ? "SIGTERM" : "SIGINT";
    if (stop_signals_ == 1) {
      notify("STOPPING=1");
      say(log_level::info, "{}: stopping the workers", name);
    } else {
      say(log_level::warning, "{} again: passed on, the workers close every connection now", name);
    }
    maybe_done();
  }

  void reap() {
    int status = 0;
    pid_t pid;
    while ((pid = ::waitpid(-1, &status, WNOHANG)) > 0) {
      auto it = std::find_if(workers_.begin(), workers_.end(),
                             [&](const auto& w) { return w->pid == pid; });
      if (it == workers_.end()) continue;
      worker& w = **it;
      w.pid = 0;
      close_channel(w);
      retired_messages_ += std::exchange(w.messages, 0);
      w.connections = 0;
      w.ready = false;
      bool was_reloading = std::exchange(w.reload_pending, false);
      std::string how = describe(status);
      bool clean = WIFEXITED(status) && WEXITSTATUS(status) == 0;
      if (stop_signals_) {
        say(clean ? log_level::info : log_level::warning, "worker {} (pid {}) {}", w.index, pid,
            how);
      } else if (!w.ever_ready && !announced_) {
        // It could not start (a config or permission problem): so would
        // the next one. The service fails now rather than loop.
        say(log_level::error, "worker {} (pid {}) {} before it was ready: stopping", w.index, pid,
            how);
        exit_code_ = 1;
        stop(SIGTERM);
      } else {
        schedule_restart(w);
        say(log_level::warning, "worker {} (pid {}) {}; restarting it in {:.1f} s", w.index, pid,
            how, static_cast<double>(w.backoff_ms) / 1000.0);
      }
      if (was_reloading) maybe_reloaded();
    }
    maybe_done();
  }

  void maybe_done() {
    if (!stop_signals_ || done_ ||
        std::any_of(workers_.begin(), workers_.end(), [](const auto& w) { return w->pid != 0; }))
      return;
    done_ = true;
    say(log_level::info, "supervisor: every worker has exited");
    for (uv_signal_t* h : {&sigterm_, &sigint_, &sighup_, &sigchld_})
      uv_close(reinterpret_cast<uv_handle_t*>(h), nullptr);
    for (uv_timer_t* t : {&status_timer_, &watchdog_timer_})
      uv_close(reinterpret_cast<uv_handle_t*>(t), nullptr);
    for (auto& w : workers_) {
      close_channel(*w);
      uv_close(reinterpret_cast<uv_handle_t*>(&w->restart), nullptr);
    }
    std::vector<int> fds;
    for (const auto& set : opt_.sockets)
      for (const auto& s : set) fds.push_back(s.fd);
    std::sort(fds.begin(), fds.end());
    fds.erase(std::unique(fds.begin(), fds.end()), fds.end());  // A shared socket is in every set.
    for (int fd : fds) ::close(fd);
    the_log().stop();
  }

  uv_loop_t* loop_;
  supervisor_options opt_;
  pid_t parent_pid_ = 0;
  std::string exe_;  // what each worker runs
  std::vector<std::string> base_env_;
  std::vector<std::unique_ptr<worker>> workers_;
  uv_signal_t sigterm_{}, sigint_{}, sighup_{}, sigchld_{};
  uv_timer_t status_timer_{}, watchdog_timer_{};
  std::string last_status_;
  std::uint64_t retired_messages_ = 0;
  int stop_signals_ = 0;
  bool announced_ = false;
  bool reloading_ = false;
  bool done_ = false;
  int exit_code_ = 0;
};

}  // namespace

int supervise(uv_loop_t* loop, supervisor_options options) {
  supervisor s(loop, std::move(options));
  return s.run();
}

}  // namespace inboxd::app
