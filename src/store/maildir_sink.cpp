// The Maildir sink: durable delivery as DESIGN.md says.
//
// A message is written to tmp/<unique>, fsynced, renamed to
// new/<unique>,S=<size>, and new/ is fsynced; only then does the session
// hear "stored". A crash at any instant leaves nothing in new/ or a whole
// message. All of it runs on libuv's thread pool.
//
// Bodies stream: bytes gather in `pending_` until flush_bytes, then one pool
// job writes them while the next ones gather. When a second batch is full
// before the first is written, write() returns false and the session stops
// reading until writable(). A small message costs one pool job in all.
#include <fcntl.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <sys/uio.h>
#include <unistd.h>
#include <uv.h>

#include <fmt/format.h>
#include <cerrno>
#include <cstring>
#include <vector>

#include "inboxd/sinks.hpp"

namespace inboxd {
namespace {

constexpr std::size_t flush_bytes = 256 * 1024;

int make_dir(const std::string& path) {
  if (::mkdir(path.c_str(), 0700) == 0 || errno == EEXIST) return 0;
  return errno;
}

// mkdir -p, for the Maildir root given on the command line.
int make_dirs(const std::string& path) {
  for (std::size_t i = 1; i < path.size(); ++i)
    if (path[i] == '/')
      if (int e = make_dir(path.substr(0, i))) return e;
  return make_dir(path);
}

// Maildir unique names escape '/' and ':' in the host name (the Maildir spec).
std::string escape_host(std::string_view host) {
  std::string out;
  for (char c : host) {
    if (c == '/')
      out += "\\057";
    else if (c == ':')
      out += "\\072";
    else
      out += c;
  }
  return out;
}

class maildir_delivery;

class maildir_sink final : public sink {
 public:
  maildir_sink(uv_loop_t* loop, int tmp_fd, int new_fd, std::string host)
      : loop_(loop), tmp_fd_(tmp_fd), new_fd_(new_fd), host_(escape_host(host)) {}
  ~maildir_sink() override {
    ::close(tmp_fd_);
    ::close(new_fd_);
  }
  delivery* begin(const envelope& env, delivery_listener& listener) override;

  uv_loop_t* loop_;
  int tmp_fd_;
  int new_fd_;
  std::string host_;
  std::uint64_t counter_ = 0;
};

class maildir_delivery final : public delivery {
 public:
  maildir_delivery(maildir_sink& sink, const envelope& env, delivery_listener& listener)
      : sink_(sink), listener_(&listener), recipients_(env.recipients.size()) {
    timeval tv{};
    ::gettimeofday(&tv, nullptr);
    name_ = fmt::format(FMT_STRING("{}.M{}P{}Q{}.{}"), tv.tv_sec, tv.tv_usec, ::getpid(),
                        ++sink.counter_, sink.host_);
    // Final delivery adds Return-Path (RFC 5321 4.4).
    pending_ = fmt::format(FMT_STRING("Return-Path: <{}>\n"), env.reverse_path);
    req_.data = this;
  }

  bool write(std::string_view bytes) override {
    pending_.append(bytes);
    if (pending_.size() < flush_bytes) return true;
    if (!busy_) {
      start(job::append);
      return true;
    }
    paused_ = pending_.size() >= 2 * flush_bytes;
    return !paused_;
  }

  void commit() override {
    committing_ = true;
    if (!busy_) start(job::finish);
  }

  void abort() noexcept override {
    listener_ = nullptr;
    if (!busy_) discard();
  }

 private:
  enum class job : unsigned char { append, finish, discard };

  // Frees the delivery, removing its tmp/ file first if there is one.
  void discard() noexcept {
    if (fd_ < 0) {
      delete this;
      return;
    }
    start(job::discard);
  }

  void start(job j) {
    job_ = j;
    writing_.swap(pending_);
    pending_.clear();
    busy_ = true;
    uv_queue_work(sink_.loop_, &req_, work_cb, after_work_cb);
  }

  // On a pool thread: touches only fd_, writing_, size_, error_ and name_.
  void work() noexcept {
    if (job_ == job::discard) {
      if (fd_ >= 0) {
        ::close(fd_);
        ::unlinkat(sink_.tmp_fd_, name_.c_str(), 0);
      }
      return;
    }
    if (!error_ && fd_ < 0) {
      fd_ = ::openat(sink_.tmp_fd_, name_.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
      if (fd_ < 0) error_ = errno;
    }
    for (std::size_t off = 0; !error_ && off < writing_.size();) {
      ssize_t n = ::write(fd_, writing_.data() + off, writing_.size() - off);
      if (n < 0 && errno == EINTR) continue;
      if (n < 0)
        error_ = errno;
      else
        off += static_cast<std::size_t>(n);
    }
    if (!error_) size_ += writing_.size();
    writing_.clear();
    if (job_ != job::finish) return;
    std::string final_name = fmt::format(FMT_STRING("{},S={}"), name_, size_);
    if (!error_ && ::fsync(fd_) != 0) error_ = errno;
    if (fd_ >= 0 && ::close(fd_) != 0 && !error_) error_ = errno;
    fd_ = -1;
    if (!error_ && ::renameat(sink_.tmp_fd_, name_.c_str(), sink_.new_fd_, final_name.c_str()) != 0)
      error_ = errno;
    if (error_) {
      ::unlinkat(sink_.tmp_fd_, name_.c_str(), 0);
      return;
    }
    // The rename is durable only once the directory is.
    if (::fsync(sink_.new_fd_) != 0) error_ = errno;
  }

  void after_work() noexcept {
    busy_ = false;
    if (job_ == job::finish || job_ == job::discard) {
      if (listener_ && job_ == job::finish) {
        store_result r = !error_                                  ? store_result::stored
                         : (error_ == ENOSPC || error_ == EDQUOT) ? store_result::no_space
                                                                  : store_result::temporary_fail;
        std::vector<store_result> results(recipients_, r);
        listener_->committed(results);
      }
      delete this;
      return;
    }
    if (!listener_) return discard();
    if (committing_) return start(job::finish);
    if (pending_.size() >= flush_bytes) start(job::append);
    if (paused_ && pending_.size() < 2 * flush_bytes) {
      paused_ = false;
      listener_->writable();
    }
  }

  static void work_cb(uv_work_t* req) noexcept {
    static_cast<maildir_delivery*>(req->data)->work();
  }
  static void after_work_cb(uv_work_t* req, int) noexcept {
    static_cast<maildir_delivery*>(req->data)->after_work();
  }

  ~maildir_delivery() = default;

  maildir_sink& sink_;
  delivery_listener* listener_;  // null once aborted
  std::size_t recipients_;
  std::string name_;
  std::string pending_;  // loop thread only
  std::string writing_;  // the pool job's, while busy_
  uv_work_t req_{};
  job job_ = job::append;
  int fd_ = -1;
  int error_ = 0;
  std::size_t size_ = 0;
  bool busy_ = false;
  bool paused_ = false;
  bool committing_ = false;
};

delivery* maildir_sink::begin(const envelope& env, delivery_listener& listener) {
  return new maildir_delivery(*this, env, listener);
}

}  // namespace

std::unique_ptr<sink> open_maildir_sink(uv_loop_t* loop, const maildir_options& options,
                                        std::string& error) {
  const std::string& root = options.path;
  for (const char* sub : {"", "/tmp", "/new", "/cur"}) {
    std::string dir = root + sub;
    if (int e = *sub ? make_dir(dir) : make_dirs(dir)) {
      error = fmt::format(FMT_STRING("cannot create {}: {}"), dir, std::strerror(e));
      return nullptr;
    }
  }
  int tmp_fd = ::open((root + "/tmp").c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  int new_fd = ::open((root + "/new").c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (tmp_fd < 0 || new_fd < 0) {
    error = fmt::format(FMT_STRING("cannot open {}: {}"), root, std::strerror(errno));
    if (tmp_fd >= 0) ::close(tmp_fd);
    if (new_fd >= 0) ::close(new_fd);
    return nullptr;
  }
  return std::make_unique<maildir_sink>(loop, tmp_fd, new_fd, options.hostname);
}

}  // namespace inboxd
