// The mbox sink: one mbox file per recipient, from a path template.
//
// The message is quoted (mboxrd) as it arrives and staged in memory, or past
// flush_bytes (or when the memory budget is spent) in an unnamed spool file.
// At commit, on the thread pool, every recipient's mbox is locked as mutt and
// Dovecot expect (a <file>.lock dotlock where the directory allows it, then
// an fcntl write lock), in the order of their paths, so that two writers
// that each want several never hold one the other needs. No lock is waited
// for on a pool thread: if one is held by someone else, every lock taken is
// let go and pooled_delivery tries again from a loop timer. With all locks
// held, the "From " line, the message and a blank line are appended to every
// mbox and each is fsynced; any failure truncates every one back to its old
// size, so the message is in all of them (250) or in none (4xx): a retry
// by the sender makes no duplicate. A new mbox is created with mode 0600,
// and the folder holding it is fsynced, so that it survives a crash.
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <fmt/format.h>
#include <algorithm>
#include <cerrno>
#include <cstring>
#include <ctime>
#include <numeric>

#include "inboxd/sinks.hpp"
#include "store/files.hpp"
#include "store/mboxrd.hpp"
#include "store/pooled_delivery.hpp"

namespace inboxd {
namespace {

using store::pooled_delivery;

constexpr std::time_t stale_dotlock_s = 300;  // a dotlock older than this is left over
constexpr int busy = -1;                      // a lock is held by someone else

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

// Takes the fcntl write lock on the whole file without waiting: 0, busy, or
// an errno value. An open-file-description lock (Linux 3.15) where there is
// one: it conflicts with the POSIX locks of mutt and Dovecot as a POSIX lock
// would, and also with another of our own pool threads, which a POSIX lock
// (owned by the process) does not.
int try_lock_fcntl(int fd) noexcept {
  struct flock fl {};
  fl.l_type = F_WRLCK;
  fl.l_whence = SEEK_SET;
#ifdef F_OFD_SETLK
  if (::fcntl(fd, F_OFD_SETLK, &fl) == 0) return 0;
  if (errno != EINVAL) return errno == EACCES || errno == EAGAIN ? busy : errno;
  fl = {};
  fl.l_type = F_WRLCK;
  fl.l_whence = SEEK_SET;
#endif
  while (::fcntl(fd, F_SETLK, &fl) != 0) {
    if (errno == EINTR) continue;
    return errno == EACCES || errno == EAGAIN ? busy : errno;
  }
  return 0;
}

// One mbox while the message is appended to it: its dotlock, its open file
// (holding the fcntl lock) and its size before.
struct locked_mbox {
  std::string path;
  std::string dotlock;  // the <file>.lock this holds; empty when none
  int fd = -1;
  off_t old_size = 0;

  // Takes the dotlock, opens (or creates) the mbox and locks it, all without
  // waiting: 0, busy, or an errno value. On anything but 0, call release().
  int acquire() noexcept {
    if (int e = take_dotlock()) return e;
    int e = open_mbox();
    if (e) return e;
    if ((e = try_lock_fcntl(fd))) return e;
    struct stat st {};
    if (::fstat(fd, &st) != 0) return errno;
    old_size = st.st_size;
    return 0;
  }

  void release() noexcept {
    if (fd >= 0) ::close(fd);  // Also lets the fcntl lock go.
    fd = -1;
    if (!dotlock.empty()) ::unlink(dotlock.c_str());
    dotlock.clear();
  }

  // A <file>.lock dotlock. Where the directory does not let us create it
  // (permissions, read-only), the fcntl lock alone guards the file.
  int take_dotlock() noexcept {
    std::string lock = path + ".lock";
    for (int tries = 0; tries < 3; ++tries) {
      int fd_lock = ::open(lock.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
      if (fd_lock >= 0) {
        ::close(fd_lock);
        dotlock = std::move(lock);
        return 0;
      }
      if (errno == EACCES || errno == EPERM || errno == EROFS) return 0;
      if (errno == ENOENT) {
        // The mbox's folder is missing: make it (make_dirs fsyncs what it makes).
        if (int e = store::make_dirs(store::parent_of(path))) return e;
        continue;
      }
      if (errno != EEXIST) return errno;
      // Someone holds it, or left it behind long ago (a crashed writer).
      struct stat st {};
      if (::stat(lock.c_str(), &st) != 0 || std::time(nullptr) - st.st_mtime <= stale_dotlock_s)
        return busy;
      ::unlink(lock.c_str());
    }
    return busy;
  }

  // Opens the mbox for appending, creating it when missing. A new file is
  // durable only once its folder is: that folder is fsynced before anything
  // is written to the file (and long before any 250).
  int open_mbox() noexcept {
    constexpr int flags = O_RDWR | O_APPEND | O_CLOEXEC | O_NOFOLLOW;
    for (int tries = 0; tries < 3; ++tries) {
      fd = ::open(path.c_str(), flags | O_CREAT | O_EXCL, 0600);
      if (fd >= 0) return store::fsync_dir(store::parent_of(path));
      if (errno == ENOENT) {
        if (int e = store::make_dirs(store::parent_of(path))) return e;
        continue;
      }
      if (errno != EEXIST) return errno;
      fd = ::open(path.c_str(), flags);
      if (fd >= 0) return 0;
      if (errno != ENOENT) return errno;  // Removed in between: create it.
    }
    return EAGAIN;
  }
};

class mbox_sink final : public sink {
 public:
  mbox_sink(uv_loop_t* loop, mbox_options options) : loop_(loop), options_(std::move(options)) {
    if (!options_.memory) options_.memory = std::make_shared<memory_budget>();
  }
  delivery* begin(const envelope& env, delivery_listener& listener) override;

  uv_loop_t* loop_;
  mbox_options options_;
};

class mbox_delivery final : public pooled_delivery {
 public:
  mbox_delivery(const mbox_sink& sink, const envelope& env, delivery_listener& listener)
      : pooled_delivery(sink.loop_, listener, env.recipients.size(), sink.options_.memory),
        spool_dir_(sink.options_.spool_dir),
        mboxes_(sink.options_.path, env.recipients) {
    if (env.independent_outcomes) {
      independent_ = true;
      box_errors_.assign(mboxes_.paths.size(), 0);
    }
    std::string_view sender = env.reverse_path.empty() ? "MAILER-DAEMON" : env.reverse_path;
    from_line_ = fmt::format(FMT_STRING("From {} {}\n"), sender, asctime_now());
    write(fmt::format(FMT_STRING("Return-Path: <{}>\n"), env.reverse_path));
    // The ORCPT the client gave, where it says more than the RCPT address
    // (sink.hpp, original_recipient()), as Postfix's local(8) writes it.
    if (std::string_view to = original_recipient(env); !to.empty())
      write(fmt::format(FMT_STRING("X-Original-To: {}\n"), to));
  }

 private:
  // The spool is closed on the pool (finish or discard) on every path but
  // a failed start; this is the last resort.
  ~mbox_delivery() override { close_spool(); }

  void append(std::string& batch, std::string_view bytes) override {
    quoter_.append(batch, bytes);
    if (!bytes.empty()) last_ = bytes.back();
  }

  // Past flush_bytes the message goes to an unnamed file in the spool
  // directory: removed at once, so nothing is left behind by a crash.
  void stage(const std::string& batch) noexcept override {
    if (error_) return;
    if (int e = spool(batch)) error_ = e;
  }

  // Appends to the spool file (made on first use): 0 or an errno value.
  int spool(const std::string& bytes) noexcept {
    if (spool_fd_ < 0) {
      std::string tpl = spool_dir_ + "/inboxd-mbox.XXXXXX";
      if (int e = store::make_dirs(spool_dir_)) return e;
      spool_fd_ = ::mkstemp(tpl.data());
      if (spool_fd_ < 0) return errno;
      ::unlink(tpl.c_str());
    }
    // At its place, not at the file offset: bytes a failed write left past
    // spooled_ are never read, and the next write goes over them.
    std::string_view rest = bytes;
    for (off_t at = static_cast<off_t>(spooled_); !rest.empty();) {
      ssize_t n = ::pwrite(spool_fd_, rest.data(), rest.size(), at);
      if (n < 0 && errno == EINTR) continue;
      if (n < 0) return errno;
      rest.remove_prefix(static_cast<std::size_t>(n));
      at += n;
    }
    spooled_ += bytes.size();
    return 0;
  }

  void finish(const std::string& batch, std::vector<store_outcome>& outcomes) noexcept override {
    if (!tail_ready_) {
      // The first call has the last batch (a retry after a busy lock has
      // none). The tail is what comes after it: what the quoter still holds,
      // and the end of the message. Every message ends in a newline, then a
      // blank line parts it from the next.
      quoter_.flush(tail_);
      if (last_ != '\n') tail_ += '\n';
      tail_ += '\n';
      tail_ready_ = true;
    }
    int e = error_ ? error_ : independent_ ? append_each(batch) : append_all(batch);
    if (e == busy) {
      // While waiting for the lock the message waits on disk, not in memory
      // that the budget does not see. If the spool fails, it waits here.
      if (!batch.empty() && spool(batch) != 0) tail_.insert(0, batch);
      if (tail_.size() > 2 && spool(tail_) == 0) std::string().swap(tail_);
      return retry_later();
    }
    // Every recipient gets the same result, so the reply is one truth for
    // all. The mbox that failed carries its errno, the others ECANCELED
    // ("Operation canceled"): the log names the mailbox to fix.
    store_outcome fail = store::outcome_of(e);
    for (std::size_t r = 0; r < outcomes.size(); ++r) {
      outcomes[r] = fail;
      if (e && failed_ != no_mbox && mboxes_.of[r] != failed_) outcomes[r].error = ECANCELED;
      // LMTP: each mailbox has its own truth.
      if (!e && independent_) outcomes[r] = store::outcome_of(box_errors_[mboxes_.of[r]]);
    }
    close_spool();  // Here on the pool: the last close of an unlinked file frees its blocks.
  }

  void close_spool() noexcept {
    if (spool_fd_ >= 0) ::close(spool_fd_);
    spool_fd_ = -1;
  }

  // Locks every mbox, then appends to all of them or to none. Returns 0,
  // busy (nothing written, no lock kept), or the errno value of the first
  // failure (nothing kept in any mbox), with failed_ set to its mbox.
  int append_all(const std::string& batch) noexcept {
    try {
      std::vector<std::size_t> order(mboxes_.paths.size());
      std::iota(order.begin(), order.end(), std::size_t{0});
      std::sort(order.begin(), order.end(),
                [&](std::size_t a, std::size_t b) { return mboxes_.paths[a] < mboxes_.paths[b]; });
      std::vector<locked_mbox> held(order.size());
      int e = 0;
      std::size_t taken = 0;
      for (; taken < order.size() && !e; ++taken) {
        held[taken].path = mboxes_.paths[order[taken]];
        if ((e = held[taken].acquire())) failed_ = order[taken];
      }
      std::size_t written = 0;
      if (!e) {
        for (; written < held.size() && !e; ++written)
          if ((e = append_to(held[written], batch))) failed_ = order[written];
        // Durable in every mbox, or the message is taken back from all.
        for (std::size_t i = 0; i < held.size() && !e; ++i)
          if (::fsync(held[i].fd) != 0) {
            e = errno;
            failed_ = order[i];
          }
        if (e) {
          // Take back what this delivery appended, and only that.
          for (std::size_t i = 0; i < written; ++i)
            if (::ftruncate(held[i].fd, held[i].old_size) == 0) ::fsync(held[i].fd);
        }
      }
      for (std::size_t i = 0; i < taken; ++i) held[i].release();
      return e;
    } catch (...) {
      return ENOMEM;
    }
  }

  // LMTP (envelope.independent_outcomes): as append_all, but an mbox that
  // fails fails alone, with its errno in box_errors_; the others keep the
  // message. A busy lock still makes all wait (nothing written): returns
  // busy, ENOMEM, or 0.
  int append_each(const std::string& batch) noexcept {
    try {
      std::vector<locked_mbox> held(mboxes_.paths.size());
      int e = 0;
      for (std::size_t i = 0; i < held.size() && e != busy; ++i) {
        held[i].path = mboxes_.paths[i];
        box_errors_[i] = e = held[i].acquire();
      }
      for (std::size_t i = 0; i < held.size() && e != busy; ++i) {
        if (box_errors_[i]) continue;
        int own = append_to(held[i], batch);
        if (!own && ::fsync(held[i].fd) != 0) own = errno;
        if (own && ::ftruncate(held[i].fd, held[i].old_size) == 0) ::fsync(held[i].fd);
        box_errors_[i] = own;
      }
      for (auto& m : held)
        if (!m.path.empty()) m.release();
      if (e == busy) std::fill(box_errors_.begin(), box_errors_.end(), 0);
      return e == busy ? busy : 0;
    } catch (...) {
      return ENOMEM;
    }
  }

  // Appends the From line, the spooled bytes, the last batch and the tail
  // to one locked mbox.
  int append_to(const locked_mbox& m, const std::string& batch) {
    if (int e = store::write_all(m.fd, separator(m.fd, m.old_size) + from_line_)) return e;
    if (int e = copy_spool(m.fd)) return e;
    if (int e = store::write_all(m.fd, batch)) return e;
    return store::write_all(m.fd, tail_);
  }

  // A "From " line needs a blank line before it; supply what an mbox written
  // by someone else lacks.
  static std::string separator(int fd, off_t size) {
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
      auto want = std::min(sizeof buf, static_cast<std::size_t>(spooled_ - off));
      ssize_t n = ::pread(spool_fd_, buf, want, off);
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) return n < 0 ? errno : EIO;
      if (int e = store::write_all(fd, {buf, static_cast<std::size_t>(n)})) return e;
      off += n;
    }
    return 0;
  }

  void discard() noexcept override { close_spool(); }
  bool staged() const noexcept override { return spool_fd_ >= 0; }

  std::string spool_dir_;
  store::mailbox_places mboxes_;  // the distinct mbox files
  std::string from_line_;
  store::mboxrd_quoter quoter_;  // loop thread, then the finish job
  char last_ = '\n';             // the last message byte seen
  int spool_fd_ = -1;
  std::size_t spooled_ = 0;
  std::string tail_;  // what follows the last batch, made by the first finish()
  bool tail_ready_ = false;
  // The mbox (index in mboxes_.paths) that failed; no_mbox when the
  // failure was no one mbox's (the spool).
  static constexpr std::size_t no_mbox = static_cast<std::size_t>(-1);
  std::size_t failed_ = no_mbox;
  bool independent_ = false;     // envelope.independent_outcomes (LMTP)
  std::vector<int> box_errors_;  // LMTP: each mbox's errno, or 0
};

delivery* mbox_sink::begin(const envelope& env, delivery_listener& listener) {
  return new mbox_delivery(*this, env, listener);
}

// Start-up: the spool, and the folders of the template before its first
// {...} (or a single mbox's folder and the file itself), are made now and
// handed to options.owner: a server started as root that then runs as a
// user must be able to create each recipient's mbox and its spool files.
int prepare(const mbox_options& options, std::string& what) noexcept {
  try {
    if (!options.spool_dir.empty()) {
      what = options.spool_dir;
      if (int e = store::make_dirs(options.spool_dir, options.owner)) return e;
    }
    bool single = !store::is_template(options.path);
    std::string folder =
        single ? store::parent_of(options.path) : store::fixed_prefix(options.path);
    if (!folder.empty()) {
      what = folder;
      if (int e = store::make_dirs(folder, options.owner)) return e;
    }
    if (!single) return 0;
    what = options.path;
    int fd = ::open(options.path.c_str(),
                    O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK, 0600);
    if (fd < 0) return errno == EEXIST ? 0 : errno;
    // Handed over by its descriptor, not by name: nothing can be swapped in.
    int e =
        options.owner.set() && ::fchown(fd, options.owner.uid, options.owner.gid) != 0 ? errno : 0;
    ::close(fd);
    if (e) return e;
    return store::fsync_dir(store::parent_of(options.path));
  } catch (...) {
    return ENOMEM;
  }
}

}  // namespace

std::unique_ptr<sink> open_mbox_sink(uv_loop_t* loop, const mbox_options& options,
                                     std::string& error) {
  if (options.path.empty()) {
    error = "no mbox path";
    return nullptr;
  }
  std::string what;
  if (int e = prepare(options, what)) {
    error = fmt::format(FMT_STRING("cannot create {} for mbox {}: {}"), what, options.path,
                        std::strerror(e));
    return nullptr;
  }
  return std::make_unique<mbox_sink>(loop, options);
}

}  // namespace inboxd
