// app/log_writer.cpp: the bounded, non-blocking stderr log (see log_writer.hpp).
#include "app/log_writer.hpp"

#include <fcntl.h>
#include <limits.h>
#include <linux/sockios.h>
#include <poll.h>
#include <sys/epoll.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>

namespace inboxd::app {

log_writer& the_log() {
  static log_writer writer;
  return writer;
}

log_writer::~log_writer() {
  // The loop is gone (or never ran to its end): what is left gets the rest of
  // the exit bound, outside any loop.
  if (fd_ >= 0) flush_outside_loop();
  if (restore_flags_ >= 0) ::fcntl(STDERR_FILENO, F_SETFL, restore_flags_);
  if (own_fd_) ::close(fd_);
  if (watch_fd_ >= 0) ::close(watch_fd_);
}

void log_writer::open_output() {
  fd_ = -1;
  struct stat st {};
  if (::fstat(STDERR_FILENO, &st) != 0) return;  // No stderr: the lines go nowhere.
  fd_ = STDERR_FILENO;
  // A write to a regular file or a tty waits on no reader: it stays blocking,
  // as today, and keeps every line.
  if (!S_ISFIFO(st.st_mode) && !S_ISSOCK(st.st_mode)) return;
  // O_NONBLOCK belongs to the open file description, which stderr shares with
  // whoever else holds it (a wrapper script writing to the same pipe, the
  // program's own stdio, the service manager): set there, their blocking
  // writes would start to fail with EAGAIN. So it is set there only as a
  // last resort. A pipe opened again through /proc is a description of the same pipe that
  // the writer alone uses; a socket (journald's stream), which cannot be
  // opened again, is written with send(MSG_DONTWAIT), non-blocking for this
  // call only. Only a pipe that cannot be opened again (no /proc) gets
  // O_NONBLOCK on stderr itself, and its old flags back at exit: a stalled
  // reader must not stop the server.
  pipe_ = S_ISFIFO(st.st_mode);
  nonblocking_ = true;
  if (!pipe_) return;
  int fd = ::open("/proc/self/fd/2", O_WRONLY | O_NONBLOCK | O_CLOEXEC);
  if (fd >= 0) {
    fd_ = fd;
    own_fd_ = true;
    return;
  }
  int flags = ::fcntl(STDERR_FILENO, F_GETFL);
  if (flags < 0 || ((flags & O_NONBLOCK) == 0 &&
                    ::fcntl(STDERR_FILENO, F_SETFL, flags | O_NONBLOCK) != 0)) {
    nonblocking_ = false;
    return;
  }
  if ((flags & O_NONBLOCK) == 0) restore_flags_ = flags;
}

void log_writer::write(log_level level, std::string_view line) {
  if (fd_ == -2) open_output();
  if (fd_ < 0) return;
  note_drops();
  if (dropped_ > 0) {
    // The backlog has not drained since lines were dropped: this one goes
    // too, so that the notice stands where the gap is.
    ++dropped_;
  } else {
    std::size_t old_size = buf_.size();
    format_log_line(buf_, level, line);
    // Whole lines only: a line that does not fit is taken out again, whole.
    if (pending() > capacity_) {
      buf_.resize(old_size);
      ++dropped_;
    }
  }
  switch (phase_) {
    case phase::before:
    case phase::after: return flush_outside_loop();
    case phase::running:
      if (pending() > flush_at) flush_in_loop();
      return;
    case phase::draining: return flush_in_loop();
  }
}

inboxd::logger log_writer::logger() {
  return {[](void* ctx, log_level level, std::string_view line) {
            static_cast<log_writer*>(ctx)->write(level, line);
          },
          this};
}

// Once the backlog is down to half the bound, the reader reads again: say
// how many lines it missed, before any line that came after them.
void log_writer::note_drops() {
  if (dropped_ == 0 || pending() > capacity_ / 2) return;
  std::size_t n = std::exchange(dropped_, 0);
  format_log_line(buf_, log_level::warning,
                  fmt::format(FMT_STRING("log: {} line(s) dropped: the log was not read"), n));
}

// Writes as much of the backlog as fd_ takes now (one write when the reader
// keeps up). False when the rest must wait until fd_ is writable again. A
// partial write leaves the rest of its line at the head of the backlog, and
// the next write goes on from there, so the reader sees whole lines.
bool log_writer::write_some() {
  for (;;) {
    while (head_ < buf_.size()) {
      ssize_t n = is_socket()
                      ? ::send(fd_, buf_.data() + head_, next_write_size(), MSG_DONTWAIT | MSG_NOSIGNAL)
                      : ::write(fd_, buf_.data() + head_, next_write_size());
      if (n > 0) {
        head_ += static_cast<std::size_t>(n);
        continue;
      }
      if (n < 0 && errno == EINTR) continue;
      if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
        // Compact only once the written part is the larger: each byte moves
        // a bounded number of times, and the buffer stays under twice the bound.
        if (head_ >= buf_.size() / 2) {
          buf_.erase(0, head_);
          head_ = 0;
        }
        return false;
      }
      // Nowhere to log to (EPIPE: the reader is gone; EIO, ENOSPC): drop the
      // backlog and keep serving.
      break;
    }
    buf_.clear();
    head_ = 0;
    if (dropped_ == 0) return true;
    note_drops();  // Drained: the notice is the next thing written.
  }
}

// How much of the backlog the next write offers. A pipe takes a write of up
// to PIPE_BUF bytes whole or not at all (POSIX write(), O_NONBLOCK), but a
// longer one in part, cutting a line wherever the pipe is full; if the reader
// then never reads again (it stalled, and the exit bound ran out), half a
// line is what it finds. So a longer write goes out only when nothing is
// queued and it fits (the reader keeps up: one write per turn); otherwise the
// writes are whole lines of at most PIPE_BUF bytes, and only a single line
// longer than that can still be cut. (An empty queue is the only state whose
// room is known: a pipe that holds data may have pages written in part.) A
// Unix stream socket (journald's) promises nothing, but Linux queues a write
// of a few KiB there as one buffer, taken whole or not at all.
std::size_t log_writer::next_write_size() const {
  std::size_t rest = buf_.size() - head_;
  if (!nonblocking_ || rest <= PIPE_BUF || room_for(rest)) return rest;
  std::string_view next(buf_.data() + head_, PIPE_BUF);
  if (auto end = next.rfind('\n'); end != std::string_view::npos) return end + 1;
  // One line longer than PIPE_BUF (or the rest of one): it goes alone.
  std::string_view line(buf_.data() + head_, rest);
  auto end = line.find('\n');
  return end == std::string_view::npos ? rest : end + 1;
}

// Whether fd_ holds nothing unread and can take n bytes whole.
bool log_writer::room_for(std::size_t n) const {
  int queued = -1;
  if (pipe_) {
    int size = ::fcntl(fd_, F_GETPIPE_SZ);
    return size > 0 && ::ioctl(fd_, FIONREAD, &queued) == 0 && queued == 0 &&
           n <= static_cast<std::size_t>(size);
  }
  // A socket's send buffer counts the kernel's overhead too: half of it is
  // what surely fits.
  int sndbuf = 0;
  socklen_t len = sizeof sndbuf;
  return ::getsockopt(fd_, SOL_SOCKET, SO_SNDBUF, &sndbuf, &len) == 0 &&
         ::ioctl(fd_, SIOCOUTQ, &queued) == 0 && queued == 0 &&
         n <= static_cast<std::size_t>(sndbuf) / 2;
}

// On the loop: never waits. What fd_ does not take now is written when poll_
// says fd_ is writable (or, without a poll handle, on the next turn).
void log_writer::flush_in_loop() {
  if (waiting_ || pending() == 0) return;
  if (write_some() || !poll_ok_) return;
  // The socket's epoll set (start()) is readable when the socket is writable.
  if (uv_poll_start(&poll_, is_socket() ? UV_READABLE : UV_WRITABLE, poll_cb) == 0) waiting_ = true;
}

// Outside the loop (before it runs, after it stopped): waits for a reader
// that is slow, but only within what is left of the exit bound, so that a
// reader that stopped reading never holds the start or the exit.
void log_writer::flush_outside_loop() {
  using clock = std::chrono::steady_clock;
  while (!write_some()) {
    if (!nonblocking_ || wait_left_ms_ <= 0) return;  // The backlog waits, bounded.
    pollfd p{.fd = fd_, .events = POLLOUT, .revents = 0};
    auto t0 = clock::now();
    int rc = ::poll(&p, 1, wait_left_ms_);
    auto spent = std::chrono::duration_cast<std::chrono::milliseconds>(clock::now() - t0).count();
    wait_left_ms_ =
        std::max(0, wait_left_ms_ - static_cast<int>(std::max<decltype(spent)>(spent, 1)));
    if (rc == 0 || (rc < 0 && errno != EINTR)) wait_left_ms_ = 0;
  }
}

void log_writer::start(uv_loop_t* loop) {
  if (phase_ != phase::before) return;
  if (fd_ == -2) open_output();
  uv_prepare_init(loop, &prepare_);
  prepare_.data = this;
  // A uv_prepare handle runs just before each poll for I/O: a busy server
  // writes its log once per turn, not once per line, and no line waits while
  // the loop sleeps.
  uv_prepare_start(&prepare_, prepare_cb);
  uv_unref(reinterpret_cast<uv_handle_t*>(&prepare_));  // The log keeps no loop alive.
  // uv_poll_t rather than a uv_pipe_t: uv_close on a pipe handle closes its
  // descriptor (stderr must outlive the loop), and uv_write queues without a
  // bound, while the bound and the whole-line drops are the point here.
  // uv_poll_init sets O_NONBLOCK on what it watches: a socket's description
  // is shared with stderr's other holders, so the handle watches an epoll
  // set of our own that holds the socket instead.
  int watched = fd_;
  if (is_socket()) {
    watch_fd_ = ::epoll_create1(EPOLL_CLOEXEC);
    epoll_event ev{.events = EPOLLOUT, .data = {}};
    if (watch_fd_ >= 0 && ::epoll_ctl(watch_fd_, EPOLL_CTL_ADD, fd_, &ev) != 0) {
      ::close(watch_fd_);
      watch_fd_ = -1;
    }
    watched = watch_fd_;
  }
  if (nonblocking_ && watched >= 0 && uv_poll_init(loop, &poll_, watched) == 0) {
    poll_ok_ = true;
    poll_.data = this;
    uv_unref(reinterpret_cast<uv_handle_t*>(&poll_));
  }
  phase_ = phase::running;
}

void log_writer::stop() {
  if (phase_ != phase::running) return;
  phase_ = phase::draining;
  uv_close(reinterpret_cast<uv_handle_t*>(&prepare_), nullptr);
  flush_in_loop();
  if (!waiting_ || wait_left_ms_ <= 0) return finish();
  // The reader gets a bounded time to take the rest, on the loop (which now
  // waits for it): the exit never hangs on a reader that stalled.
  uv_ref(reinterpret_cast<uv_handle_t*>(&poll_));
  uv_timer_init(poll_.loop, &deadline_);
  deadline_.data = this;
  uv_timer_start(&deadline_, deadline_cb, static_cast<std::uint64_t>(wait_left_ms_), 0);
  drain_started_ = uv_now(poll_.loop);
  deadline_on_ = true;
}

void log_writer::finish() {
  phase_ = phase::after;
  if (deadline_on_) {
    auto spent = static_cast<int>(std::min<std::uint64_t>(
        uv_now(deadline_.loop) - drain_started_, static_cast<std::uint64_t>(wait_left_ms_)));
    wait_left_ms_ -= spent;
    uv_close(reinterpret_cast<uv_handle_t*>(&deadline_), nullptr);
  }
  waiting_ = false;
  if (poll_ok_) uv_close(reinterpret_cast<uv_handle_t*>(&poll_), nullptr);
}

void log_writer::prepare_cb(uv_prepare_t* handle) noexcept {
  static_cast<log_writer*>(handle->data)->flush_in_loop();
}

void log_writer::poll_cb(uv_poll_t* handle, int status, int) noexcept {
  auto* self = static_cast<log_writer*>(handle->data);
  if (status < 0) {
    // The descriptor failed (the reader closed its end): nothing queued can
    // be written any more.
    self->buf_.clear();
    self->head_ = 0;
  } else if (!self->write_some()) {
    return;  // Still more than the reader took: wait again.
  }
  uv_poll_stop(handle);
  self->waiting_ = false;
  if (self->phase_ == phase::draining) self->finish();
}

void log_writer::deadline_cb(uv_timer_t* handle) noexcept {
  auto* self = static_cast<log_writer*>(handle->data);
  if (self->phase_ != phase::draining) return;
  self->finish();
  self->wait_left_ms_ = 0;  // The reader stalled: nothing more waits for it.
}

}  // namespace inboxd::app
