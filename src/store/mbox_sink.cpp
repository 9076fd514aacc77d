// The mbox sink: one mbox file per recipient, from a path template.
//
// The message is quoted (mboxrd) as it arrives and staged in memory, or past
// flush_bytes in an unnamed spool file. At commit, on the thread pool, each
// recipient's mbox is locked as mutt and Dovecot expect (a <file>.lock
// dotlock where the directory allows it, then an fcntl write lock), the
// "From " line, the message and a blank line are appended, and the file is
// fsynced. Any failure truncates the file back to its old size: no half
// message stays. A new mbox is created with mode 0600.
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <fmt/format.h>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <ctime>
#include <thread>

#include "inboxd/sinks.hpp"
#include "store/files.hpp"
#include "store/mboxrd.hpp"
#include "store/pooled_delivery.hpp"

namespace inboxd {
namespace {

using namespace std::chrono_literals;
using store::pooled_delivery;

constexpr auto lock_patience = 10s;   // how long to wait for another writer
constexpr auto stale_dotlock = 300s;  // a dotlock older than this is left over
constexpr auto lock_retry = 50ms;

// "Mon Nov 30 12:40:19 2026", asctime's form without its newline, in UTC.
std::string asctime_now() {
  std::time_t t = std::time(nullptr);
  std::tm tm{};
  gmtime_r(&t, &tm);
  static constexpr std::string_view days[] = {"Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"};
  static constexpr std::string_view months[] = {"Jan", "Feb", "Mar", "Apr", "May", "Jun",
                                                "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"};
  return fmt::format(FMT_STRING("{} {} {:2} {:02}:{:02}:{:02} {}"), days[tm.tm_wday],
                     months[tm.tm_mon], tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec,
                     tm.tm_year + 1900);
}

// A <file>.lock dotlock. Where the directory does not let us create it
// (permissions, read-only), the fcntl lock alone guards the file.
class dotlock {
 public:
  explicit dotlock(std::string path) : path_(std::move(path) + ".lock") {}
  ~dotlock() {
    if (held_) ::unlink(path_.c_str());
  }
  // Returns 0, or an errno value (EAGAIN when another writer kept it too long).
  int acquire() noexcept {
    auto deadline = std::chrono::steady_clock::now() + lock_patience;
    for (;;) {
      int fd = ::open(path_.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
      if (fd >= 0) {
        ::close(fd);
        held_ = true;
        return 0;
      }
      if (errno == EACCES || errno == EPERM || errno == EROFS) return 0;
      if (errno != EEXIST) return errno;
      struct stat st {};
      if (::stat(path_.c_str(), &st) == 0 &&
          std::time(nullptr) - st.st_mtime > std::chrono::seconds(stale_dotlock).count())
        ::unlink(path_.c_str());
      if (std::chrono::steady_clock::now() > deadline) return EAGAIN;
      std::this_thread::sleep_for(lock_retry);
    }
  }

 private:
  std::string path_;
  bool held_ = false;
};

int lock_fcntl(int fd) noexcept {
  auto deadline = std::chrono::steady_clock::now() + lock_patience;
  struct flock fl {};
  fl.l_type = F_WRLCK;
  fl.l_whence = SEEK_SET;
  while (::fcntl(fd, F_SETLK, &fl) != 0) {
    if (errno != EACCES && errno != EAGAIN && errno != EINTR) return errno;
    if (std::chrono::steady_clock::now() > deadline) return EAGAIN;
    std::this_thread::sleep_for(lock_retry);
  }
  return 0;
}

class mbox_sink final : public sink {
 public:
  mbox_sink(uv_loop_t* loop, mbox_options options) : loop_(loop), options_(std::move(options)) {}
  delivery* begin(const envelope& env, delivery_listener& listener) override;

  uv_loop_t* loop_;
  mbox_options options_;
};

class mbox_delivery final : public pooled_delivery {
 public:
  mbox_delivery(const mbox_sink& sink, const envelope& env, delivery_listener& listener)
      : pooled_delivery(sink.loop_, listener, env.recipients.size()),
        spool_dir_(sink.options_.spool_dir),
        mboxes_(sink.options_.path, env.recipients) {
    std::string_view sender = env.reverse_path.empty() ? "MAILER-DAEMON" : env.reverse_path;
    from_line_ = fmt::format(FMT_STRING("From {} {}\n"), sender, asctime_now());
    write(fmt::format(FMT_STRING("Return-Path: <{}>\n"), env.reverse_path));
  }

 private:
  ~mbox_delivery() override {
    if (spool_fd_ >= 0) ::close(spool_fd_);
  }

  void append(std::string& batch, std::string_view bytes) override {
    quoter_.append(batch, bytes);
    if (!bytes.empty()) last_ = bytes.back();
  }

  // Past flush_bytes the message goes to an unnamed file in the spool
  // directory: removed at once, so nothing is left behind by a crash.
  void stage(const std::string& batch) noexcept override {
    if (error_) return;
    if (spool_fd_ < 0) {
      std::string tpl = spool_dir_ + "/inboxd-mbox.XXXXXX";
      if (int e = store::make_dirs(spool_dir_)) {
        error_ = e;
        return;
      }
      spool_fd_ = ::mkstemp(tpl.data());
      if (spool_fd_ < 0) {
        error_ = errno;
        return;
      }
      ::unlink(tpl.c_str());
    }
    if (int e = store::write_all(spool_fd_, batch)) error_ = e;
    spooled_ += batch.size();
  }

  void finish(const std::string& batch, std::vector<store_outcome>& outcomes) noexcept override {
    std::string tail = batch;
    quoter_.flush(tail);
    // Every message ends in a newline, then a blank line parts it from the next.
    if (last_ != '\n') tail += '\n';
    tail += '\n';
    std::vector<int> path_error(mboxes_.paths.size(), error_);
    if (!error_)
      for (std::size_t i = 0; i < path_error.size(); ++i)
        path_error[i] = append_to(mboxes_.paths[i], tail);
    mboxes_.fill(outcomes, path_error);
  }

  // Appends the From line, the spooled bytes and tail to one mbox.
  int append_to(const std::string& path, const std::string& tail) noexcept {
    if (int e = store::make_dirs(store::parent_of(path))) return e;
    dotlock dot(path);
    if (int e = dot.acquire()) return e;
    int fd = ::open(path.c_str(), O_RDWR | O_APPEND | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0600);
    if (fd < 0) return errno;
    int e = lock_fcntl(fd);
    struct stat st {};
    if (!e && ::fstat(fd, &st) != 0) e = errno;
    if (e) {
      ::close(fd);  // Nothing was written: nothing to take back.
      return e;
    }
    off_t old_size = st.st_size;
    e = store::write_all(fd, separator(fd, old_size) + from_line_);
    if (!e) e = copy_spool(fd);
    if (!e) e = store::write_all(fd, tail);
    if (!e && ::fsync(fd) != 0) e = errno;
    // Take back what this delivery appended, and only that.
    if (e && ::ftruncate(fd, old_size) == 0) ::fsync(fd);
    ::close(fd);  // Also drops the fcntl lock.
    return e;
  }

  // A "From " line needs a blank line before it; supply what an mbox written
  // by someone else lacks.
  static std::string separator(int fd, off_t size) noexcept {
    if (size == 0) return {};
    char end[2] = {0, 0};
    off_t from = size >= 2 ? size - 2 : 0;
    ssize_t n = ::pread(fd, end, sizeof end, from);
    if (n == 2 && end[0] == '\n' && end[1] == '\n') return {};
    if (n >= 1 && end[n - 1] == '\n') return "\n";
    return "\n\n";
  }

  int copy_spool(int fd) noexcept {
    char buf[64 * 1024];
    for (off_t off = 0; off < static_cast<off_t>(spooled_);) {
      ssize_t n = ::pread(spool_fd_, buf, sizeof buf, off);
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) return n < 0 ? errno : EIO;
      if (int e = store::write_all(fd, {buf, static_cast<std::size_t>(n)})) return e;
      off += n;
    }
    return 0;
  }

  void discard() noexcept override {}
  bool staged() const noexcept override { return false; }

  std::string spool_dir_;
  store::mailbox_places mboxes_;  // the distinct mbox files
  std::string from_line_;
  store::mboxrd_quoter quoter_;  // loop thread, then the finish job
  char last_ = '\n';             // the last message byte seen
  int spool_fd_ = -1;
  std::size_t spooled_ = 0;
};

delivery* mbox_sink::begin(const envelope& env, delivery_listener& listener) {
  return new mbox_delivery(*this, env, listener);
}

}  // namespace

std::unique_ptr<sink> open_mbox_sink(uv_loop_t* loop, const mbox_options& options,
                                     std::string& error) {
  if (options.path.empty()) {
    error = "no mbox path";
    return nullptr;
  }
  return std::make_unique<mbox_sink>(loop, options);
}

}  // namespace inboxd
