// app/log_writer.hpp: the program's log, written to stderr without ever
// stalling the loop.
//
// Lines gather in one bounded buffer and leave once per loop turn. When stderr
// is a pipe or a socket (journald, a container runtime, `| logger`), a reader
// that stops reading must not stop SMTP: the writer never blocks there, keeps
// what the reader has not taken yet (at most `capacity` bytes), waits for
// writability on the loop, and past the bound drops whole new lines, counts
// them, and says how many once the backlog has drained. A regular file or a
// tty stays blocking: a write there waits on no reader.
//
// One writer per process (the_log()), used on the loop thread only (the
// library's logger is called there; a thread-pool job returns its notes to
// the loop instead of logging). Lines are copied into the buffer; nothing is
// borrowed past a call.
#pragma once

#include <uv.h>

#include <fmt/format.h>
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <utility>

#include "inboxd/log.hpp"

namespace inboxd::app {

class log_writer {
 public:
  // The most log bytes held for a reader that does not read (1 MiB: several
  // thousand lines, a few seconds of a busy server).
  static constexpr std::size_t default_capacity = std::size_t{1} << 20;

  explicit log_writer(std::size_t capacity = default_capacity) : capacity_(capacity) {}
  // Tries once more to write what is left (waiting only within the exit
  // bound), then gives stderr its flags back.
  ~log_writer();
  log_writer(const log_writer&) = delete;
  log_writer& operator=(const log_writer&) = delete;

  // Lines written from now on leave once per turn of `loop`, before it polls.
  // Before start() and after stop() each line is written at once, waiting for
  // a stalled reader only within a bounded time.
  void start(uv_loop_t* loop);
  // Writes the backlog, giving the reader a bounded time (exit_wait_ms) on
  // the loop, then closes the writer's handles: call it when the server has
  // shut down, so that the loop can end.
  void stop();

  // Appends one line in format_log_line's form (dropped, and counted, when
  // the buffer is full).
  void write(log_level level, std::string_view line);
  // The library's logger, writing here.
  inboxd::logger logger();

 private:
  enum class phase { before, running, draining, after };
  // How long the exit, and the lines outside the loop, may wait in all for a
  // reader that does not read.
  static constexpr int exit_wait_ms = 1000;
  // A long turn writes its lines early rather than holding many of them.
  static constexpr std::size_t flush_at = 64 * 1024;

  void open_output();
  [[nodiscard]] std::size_t pending() const { return buf_.size() - head_; }
  [[nodiscard]] std::size_t next_write_size() const;
  [[nodiscard]] bool room_for(std::size_t n) const;
  [[nodiscard]] bool write_some();
  void note_drops();
  void flush_in_loop();
  void flush_outside_loop();
  void finish();

  static void prepare_cb(uv_prepare_t* handle) noexcept;
  static void poll_cb(uv_poll_t* handle, int status, int events) noexcept;
  static void deadline_cb(uv_timer_t* handle) noexcept;

  std::size_t capacity_;
  // Where lines go: stderr itself, or (for a pipe) a description of the same
  // pipe opened for the writer alone. -2 until the first line; -1 when
  // there is no stderr.
  int fd_ = -2;
  bool nonblocking_ = false;  // fd_ is a pipe or a socket, written without blocking.
  bool pipe_ = false;         // fd_ is a pipe (else, when nonblocking_, a socket).
  bool own_fd_ = false;       // fd_ was opened here (and is closed at exit).
  [[nodiscard]] bool is_socket() const noexcept { return nonblocking_ && !pipe_; }
  int restore_flags_ = -1;  // stderr's flags, when O_NONBLOCK had to be set on it
  int watch_fd_ = -1;  // for a socket: the epoll set holding fd_ that poll_ watches
  // Bytes [head_, size) are still to be written; [0, head_) are written.
  std::string buf_;
  std::size_t head_ = 0;
  std::size_t dropped_ = 0;  // Lines dropped since the last notice.
  phase phase_ = phase::before;
  uv_prepare_t prepare_{};
  uv_poll_t poll_{};
  uv_timer_t deadline_{};
  bool poll_ok_ = false;             // poll_ is initialised (epoll accepts fd_).
  bool waiting_ = false;             // poll_ waits for fd_ to take more.
  int wait_left_ms_ = exit_wait_ms;  // What is left of the exit bound.
  bool deadline_on_ = false;         // deadline_ is initialised (stop() waits for the reader).
  std::uint64_t drain_started_ = 0;  // uv_now() when stop() began to wait.
};

// The process's log writer.
log_writer& the_log();

// The program's own lines go where the library's do, in the same form.
template <typename... Args>
void say(log_level level, fmt::format_string<Args...> f, Args&&... args) {
  the_log().write(level, fmt::format(f, std::forward<Args>(args)...));
}

}  // namespace inboxd::app
