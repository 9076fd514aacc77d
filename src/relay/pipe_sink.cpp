// relay/pipe_sink.cpp: a program per message, the message on its standard
// input, its exit status the answer (sinks.hpp, open_pipe_sink), as
// Postfix's pipe(8) and E-MailRelay's filters run one.
//
// Everything runs on the loop: uv_spawn starts the child (its own process
// group, so that a kill reaches what it started too), the message goes to
// its stdin through a uv_pipe in chunks, its stderr is read to the end and
// kept only as its first line (proto::first_line), a timer bounds its time.
// At most max_running children run at once; later messages wait in a
// bounded queue, their first bytes held (one chunk, in the memory budget)
// and their client paused. The child's exit decides, whether or not it read
// all its input (Postfix's rule: a write error to it, EPIPE, is not a
// failure of itself); a message the client had not finished when its child
// was done is answered at commit().
//
// A delivery frees itself once it has answered (or was aborted) and its
// handles are closed; it keeps its sink's options and the slots it counts
// in alive through shared_ptrs, so a reload may drop the sink while
// children still run.
#include <fmt/format.h>
#include <uv.h>

#include <algorithm>
#include <csignal>
#include <cstdlib>
#include <list>
#include <memory>
#include <string>
#include <vector>

#include "inboxd/sinks.hpp"
#include "proto/pipe_command.hpp"

namespace inboxd {
namespace {

// A chunk: what a delivery holds before it pauses its client.
constexpr std::size_t chunk = 64 * 1024;
// After the child exits, how long its stderr may stay open (a grandchild
// that kept it) before the answer goes without the rest of it.
constexpr std::uint64_t stderr_grace_ms = 200;

class pipe_delivery;

}  // namespace

// The running children and the messages that wait for one, of every pipe
// sink that shares it (loop thread only).
struct pipe_slots {
  std::size_t running = 0;
  std::list<pipe_delivery*> waiting;  // in arrival order

  // Starts waiting messages while fewer than max_running children run.
  void start_next(std::size_t max_running);
};

std::shared_ptr<pipe_slots> make_pipe_slots() {
  return std::make_shared<pipe_slots>();
}

namespace {

// What the sink and its deliveries share: the options, made ready once.
// Each delivery keeps it alive, so a reload may drop the sink.
struct pipe_pool {
  uv_loop_t* loop = nullptr;
  pipe_options options;                // options.slots is set
  std::vector<std::string> words;      // the command, split
  std::vector<std::string> inherited;  // PATH, TZ, LANG of this process
};

class pipe_delivery final : public delivery {
 public:
  pipe_delivery(std::shared_ptr<pipe_pool> pool, delivery_listener& listener,
                std::size_t recipients)
      : pool_(std::move(pool)), listener_(listener), outcomes_(recipients) {
    uv_timer_init(pool_->loop, &timer_);
    timer_.data = this;
    ++handles_;
  }

  void open(const envelope& env) {
    std::string error;
    if (!proto::pipe_environment(env, pool_->inherited, env_, error))
      return fail(store_result::temporary_fail, 0, "pipe: " + error);
    if (pool_->options.from_line) hold(proto::from_line(env.reverse_path, std::time(nullptr)));
    pipe_slots& slots = *pool_->options.slots;
    if (slots.running < pool_->options.max_running) return start();
    if (slots.waiting.size() >= pool_->options.max_waiting)
      return fail(store_result::temporary_fail, 0,
                  fmt::format(FMT_STRING("pipe: {} messages wait for a free {} already"),
                              slots.waiting.size(), pool_->words[0]));
    queued_ = slots.waiting.insert(slots.waiting.end(), this);
    waiting_ = true;
    uv_timer_start(&timer_, timer_cb, timeout_ms(), 0);
  }

  // Out of the queue: a child slot is free.
  void start() {
    leave_queue();
    if (int r = spawn(); r != 0) {
      close_child_handles();
      return fail(store_result::temporary_fail, -r,
                  fmt::format(FMT_STRING("pipe: cannot run {}"), pool_->words[0]));
    }
    running_ = true;
    ++pool_->options.slots->running;
    uv_read_start(reinterpret_cast<uv_stream_t*>(&err_), alloc_cb, read_cb);
    uv_timer_start(&timer_, timer_cb, timeout_ms(), 0);
    flush();
  }

  // The child, its stdin and stderr pipes; returns uv_spawn's result.
  int spawn() {
    std::vector<char*> argv, envp;
    for (std::string& w : pool_->words) argv.push_back(w.data());
    argv.push_back(nullptr);
    for (std::string& e : env_) envp.push_back(e.data());
    envp.push_back(nullptr);
    uv_pipe_init(pool_->loop, &in_, 0);
    uv_pipe_init(pool_->loop, &err_, 0);
    in_.data = err_.data = process_.data = this;
    handles_ += 2;
    uv_stdio_container_t stdio[3];
    stdio[0].flags = static_cast<uv_stdio_flags>(UV_CREATE_PIPE | UV_READABLE_PIPE);
    stdio[0].data.stream = reinterpret_cast<uv_stream_t*>(&in_);
    stdio[1].flags = UV_IGNORE;
    stdio[2].flags = static_cast<uv_stdio_flags>(UV_CREATE_PIPE | UV_WRITABLE_PIPE);
    stdio[2].data.stream = reinterpret_cast<uv_stream_t*>(&err_);
    uv_process_options_t o{};
    o.exit_cb = exit_cb;
    o.file = argv[0];
    o.args = argv.data();
    o.env = envp.data();
    o.stdio_count = 3;
    o.stdio = stdio;
    // A session and process group of its own: the timeout's kill reaches
    // what a shell started too.
    o.flags = UV_PROCESS_DETACHED;
    int r = uv_spawn(pool_->loop, &process_, &o);
    ++handles_;  // uv_spawn inits the handle even when it fails.
    spawned_ = true;
    return r;
  }

  void leave_queue() {
    if (!waiting_) return;
    pool_->options.slots->waiting.erase(queued_);
    waiting_ = false;
    uv_timer_stop(&timer_);
  }

  bool write(std::string_view bytes) override {
    if (done_ || input_closed_) return true;  // Its answer is known: the bytes go nowhere.
    hold(bytes);
    flush();
    paused_ = !can_take();
    return !paused_;
  }

  void commit() override {
    committed_ = true;
    if (done_) return answer();
    flush();
  }

  void abort() noexcept override {
    aborted_ = true;
    leave_queue();
    // A message the client did not finish must not reach the program as
    // if whole (its stdin would end): the child goes first. One whose data
    // all went is killed too (sink.hpp: it may or may not be stored), so
    // that a drain or a client that left never waits for a slow program.
    if (running_) kill_group();
    if (!running_) release();
  }

 private:
  ~pipe_delivery() { pool_->options.memory->used -= held(); }

  // Bytes held for the child, counted in the shared budget.
  void hold(std::string_view bytes) {
    pending_.append(bytes);
    pool_->options.memory->used += bytes.size();
  }
  [[nodiscard]] std::size_t held() const { return pending_.size() + inflight_.size(); }
  void drop_held() {
    pool_->options.memory->used -= pending_.size();
    pending_.clear();
  }
  // Takes more while less than a chunk waits and the budget has room (a
  // delivery that holds nothing always takes: a write_cb is what resumes).
  [[nodiscard]] bool can_take() const {
    const memory_budget& m = *pool_->options.memory;
    return held() < chunk && (held() == 0 || m.used <= m.limit);
  }

  std::uint64_t timeout_ms() const {
    return static_cast<std::uint64_t>(std::max<std::int64_t>(1, pool_->options.timeout.count()));
  }

  // Sends what is held, one write at a time; once everything went and the
  // message is complete, closes the child's stdin (its end of input).
  void flush() {
    if (!running_ || input_closed_ || writing_) return;
    if (!pending_.empty()) {
      inflight_.swap(pending_);
      uv_buf_t buf = uv_buf_init(inflight_.data(), static_cast<unsigned>(inflight_.size()));
      int r = uv_write(&write_req_, reinterpret_cast<uv_stream_t*>(&in_), &buf, 1, write_cb);
      if (r == 0) {
        writing_ = true;
        return;
      }
      input_broken();
      return;
    }
    if (committed_) close_input();
  }

  // The child closed its stdin, or exited: what is left is dropped.
  void input_broken() {
    pool_->options.memory->used -= inflight_.size();
    inflight_.clear();
    drop_held();
    close_input();
  }

  void close_input() {
    if (input_closed_) return;
    input_closed_ = true;
    uv_close(reinterpret_cast<uv_handle_t*>(&in_), close_cb);
  }

  void wrote(int status) {
    writing_ = false;
    pool_->options.memory->used -= inflight_.size();
    inflight_.clear();
    if (status < 0) {
      input_broken();  // EPIPE: the child's exit decides (pipe(8)).
    } else {
      flush();
    }
    resume();
  }

  // The client was paused and may go on.
  void resume() {
    if (!paused_ || aborted_ || committed_) return;
    if (!done_ && !input_closed_ && !can_take()) return;
    paused_ = false;
    listener_.writable();
  }

  void kill_group() {
    if (process_.pid > 0) uv_kill(-process_.pid, SIGKILL);
  }

  void exited(std::int64_t status, int signal) {
    running_ = false;
    --pool_->options.slots->running;
    exit_status_ = status;
    term_signal_ = signal;
    uv_timer_stop(&timer_);
    // Another message may have its child now.
    pool_->options.slots->start_next(pool_->options.max_running);
    if (stderr_done_) return ended();
    uv_timer_start(&timer_, timer_cb, stderr_grace_ms, 0);
  }

  void timer_fired() {
    if (waiting_) {
      leave_queue();
      return fail(store_result::temporary_fail, 0,
                  fmt::format(FMT_STRING("pipe: no free {} within {} ms"), pool_->words[0],
                              pool_->options.timeout.count()));
    }
    if (running_) {
      timed_out_ = true;
      kill_group();
      return;
    }
    ended();  // The stderr grace after the exit is over.
  }

  // The child is gone and its stderr read: the outcome is known.
  void ended() {
    if (done_) return;
    std::string what;
    const std::string& prog = pool_->words[0];
    if (timed_out_)
      what = fmt::format(FMT_STRING("pipe: {} killed after {} ms"), prog,
                         pool_->options.timeout.count());
    else if (term_signal_ != 0)
      what = fmt::format(FMT_STRING("pipe: {} died of signal {}"), prog, term_signal_);
    else
      what = fmt::format(FMT_STRING("pipe: {} exit status {}"), prog, exit_status_);
    store_result r =
        timed_out_ ? store_result::temporary_fail : proto::exit_result(exit_status_, term_signal_);
    close_child_handles();
    if (r == store_result::stored) {
      outcome_ = {.result = r, .reply = {}};
      reply_ = std::move(what);  // For the log line: which program took it.
      done_ = true;
      if (committed_ && !aborted_) return answer();
      if (aborted_) return release();
      return resume();
    }
    fail(r, 0, proto::failure_text(what, stderr_.line()));
  }

  void fail(store_result r, int error, std::string text) {
    done_ = true;
    reply_ = std::move(text);
    outcome_ = {.result = r, .error = error};
    drop_held();
    if (aborted_) return release();
    if (committed_) return answer();
    resume();
  }

  void answer() {
    outcome_.reply = reply_;
    for (store_outcome& o : outcomes_) o = outcome_;
    listener_.committed(outcomes_);
    release();
  }

  void close_child_handles() {
    if (!spawned_ || child_closed_) return;
    child_closed_ = true;
    close_input();
    uv_close(reinterpret_cast<uv_handle_t*>(&err_), close_cb);
    uv_close(reinterpret_cast<uv_handle_t*>(&process_), close_cb);
  }

  // Frees this once its handles are closed.
  void release() {
    if (released_) return;
    released_ = true;
    close_child_handles();
    uv_close(reinterpret_cast<uv_handle_t*>(&timer_), close_cb);
  }

  void handle_closed() {
    if (--handles_ == 0 && released_) delete this;
  }

  static pipe_delivery* self(void* data) { return static_cast<pipe_delivery*>(data); }
  static void exit_cb(uv_process_t* p, std::int64_t status, int signal) noexcept {
    self(p->data)->exited(status, signal);
  }
  static void timer_cb(uv_timer_t* t) noexcept { self(t->data)->timer_fired(); }
  static void write_cb(uv_write_t* req, int status) noexcept {
    self(req->handle->data)->wrote(status);
  }
  static void close_cb(uv_handle_t* h) noexcept { self(h->data)->handle_closed(); }
  static void alloc_cb(uv_handle_t* h, std::size_t, uv_buf_t* buf) noexcept {
    pipe_delivery& d = *self(h->data);
    *buf = uv_buf_init(d.err_buf_, sizeof d.err_buf_);
  }
  static void read_cb(uv_stream_t* s, ssize_t n, const uv_buf_t* buf) noexcept {
    pipe_delivery& d = *self(s->data);
    if (n > 0) d.stderr_.append({buf->base, static_cast<std::size_t>(n)});
    if (n >= 0) return;
    uv_read_stop(s);
    d.stderr_done_ = true;
    if (!d.running_ && !d.done_) {
      uv_timer_stop(&d.timer_);
      d.ended();
    }
  }

  std::shared_ptr<pipe_pool> pool_;
  delivery_listener& listener_;
  std::vector<store_outcome> outcomes_;  // one per recipient, made at begin()
  std::vector<std::string> env_;
  uv_timer_t timer_{};
  uv_pipe_t in_{};
  uv_pipe_t err_{};
  uv_process_t process_{};
  uv_write_t write_req_{};
  std::string pending_;   // held, not yet written
  std::string inflight_;  // given to uv_write, until its write_cb
  proto::first_line stderr_;
  char err_buf_[4096];
  std::list<pipe_delivery*>::iterator queued_;
  int handles_ = 0;  // initialised and not yet closed
  std::int64_t exit_status_ = 0;
  int term_signal_ = 0;
  store_outcome outcome_;
  std::string reply_;  // what outcome_.reply points at once answered
  bool waiting_ = false, spawned_ = false, running_ = false, writing_ = false;
  bool input_closed_ = false, child_closed_ = false, stderr_done_ = false, timed_out_ = false;
  bool paused_ = false, committed_ = false, aborted_ = false, done_ = false, released_ = false;

  friend struct inboxd::pipe_slots;
};

class pipe_sink final : public sink {
 public:
  explicit pipe_sink(std::shared_ptr<pipe_pool> pool) : pool_(std::move(pool)) {}
  delivery* begin(const envelope& env, delivery_listener& listener) override {
    auto* d = new pipe_delivery(pool_, listener, env.recipients.size());
    try {
      d->open(env);
    } catch (...) {
      d->abort();  // Closes its timer, then frees it.
      throw;
    }
    return d;
  }

 private:
  std::shared_ptr<pipe_pool> pool_;
};

}  // namespace

std::unique_ptr<sink> open_pipe_sink(uv_loop_t* loop, const pipe_options& options,
                                     std::string& error) {
  auto pool = std::make_shared<pipe_pool>();
  pool->loop = loop;
  pool->options = options;
  if (!pool->options.memory) pool->options.memory = std::make_shared<memory_budget>();
  if (pool->options.max_running == 0) pool->options.max_running = 1;
  if (!pool->options.slots) pool->options.slots = make_pipe_slots();
  if (!proto::split_command(options.command, pool->words, error)) {
    error = "pipe-command: " + error;
    return nullptr;
  }
  // As Postfix's export_environment (TZ MAIL_CONFIG LANG), with a PATH so
  // that a bare program name is found (execvp reads the child's).
  const char* path = std::getenv("PATH");
  pool->inherited.push_back(std::string("PATH=") + (path ? path : "/usr/bin:/bin"));
  for (const char* name : {"TZ", "LANG"})
    if (const char* v = std::getenv(name)) pool->inherited.push_back(std::string(name) + "=" + v);
  return std::make_unique<pipe_sink>(std::move(pool));
}

void pipe_slots::start_next(std::size_t max_running) {
  while (running < max_running && !waiting.empty()) waiting.front()->start();
}

}  // namespace inboxd
