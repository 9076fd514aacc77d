// The Maildir sink: durable delivery as DESIGN.md says.
//
// A message is written once to <maildir>/tmp/<unique> of its first
// recipient, fsynced, hard-linked as new/<unique>,S=<size> into the Maildir
// of every recipient, each new/ fsynced, and the tmp/ name removed. Only
// then does the session hear "stored". A crash at any instant leaves nothing
// in new/ or a whole message. Maildirs named by a template ({domain},
// {user}) get their tmp/ new/ cur/ on first delivery. All file work runs on
// libuv's thread pool (pooled_delivery).
#include <fcntl.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <unistd.h>

#include <fmt/format.h>
#include <cerrno>
#include <cstring>

#include "inboxd/sinks.hpp"
#include "store/files.hpp"
#include "store/pooled_delivery.hpp"

namespace inboxd {
namespace {

using store::pooled_delivery;

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

int make_maildir(const std::string& root) noexcept {
  if (int e = store::make_dirs(root)) return e;
  for (const char* sub : {"/tmp", "/new", "/cur"})
    if (::mkdir((root + sub).c_str(), 0700) != 0 && errno != EEXIST) return errno;
  return 0;
}

class maildir_sink final : public sink {
 public:
  maildir_sink(uv_loop_t* loop, std::string path, std::string host)
      : loop_(loop), path_(std::move(path)), host_(escape_host(host)) {}
  delivery* begin(const envelope& env, delivery_listener& listener) override;

  uv_loop_t* loop_;
  std::string path_;  // one Maildir, or a template
  std::string host_;
  std::uint64_t counter_ = 0;
};

class maildir_delivery final : public pooled_delivery {
 public:
  maildir_delivery(maildir_sink& sink, const envelope& env, delivery_listener& listener)
      : pooled_delivery(sink.loop_, listener, env.recipients.size()),
        dirs_(sink.path_, env.recipients) {
    timeval tv{};
    ::gettimeofday(&tv, nullptr);
    name_ = fmt::format(FMT_STRING("{}.M{}P{}Q{}.{}"), tv.tv_sec, tv.tv_usec, ::getpid(),
                        ++sink.counter_, sink.host_);
    // Final delivery adds Return-Path (RFC 5321 4.4).
    write(fmt::format(FMT_STRING("Return-Path: <{}>\n"), env.reverse_path));
  }

 private:
  ~maildir_delivery() override = default;

  // Opens tmp/<unique> in the first Maildir that takes it.
  void open_staging() noexcept {
    for (const auto& dir : dirs_.paths) {
      std::string path = dir + "/tmp/" + name_;
      fd_ = ::open(path.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
      if (fd_ < 0 && errno == ENOENT && make_maildir(dir) == 0)
        fd_ = ::open(path.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
      if (fd_ >= 0) {
        // An earlier Maildir that failed fails only its own recipients, at link time.
        error_ = 0;
        tmp_path_ = std::move(path);
        return;
      }
      error_ = errno;
    }
  }

  void stage(const std::string& batch) noexcept override {
    if (fd_ < 0 && !error_) open_staging();
    if (error_) return;
    if (int e = store::write_all(fd_, batch)) error_ = e;
    size_ += batch.size();
  }

  void finish(const std::string& batch, std::vector<store_outcome>& outcomes) noexcept override {
    stage(batch);
    if (!error_ && ::fsync(fd_) != 0) error_ = errno;
    if (fd_ >= 0 && ::close(fd_) != 0 && !error_) error_ = errno;
    fd_ = -1;
    std::vector<int> dir_error(dirs_.paths.size(), error_);
    if (!error_) {
      std::string final_name = fmt::format(FMT_STRING("/new/{},S={}"), name_, size_);
      for (std::size_t i = 0; i < dirs_.paths.size(); ++i) {
        std::string target = dirs_.paths[i] + final_name;
        int rc = ::link(tmp_path_.c_str(), target.c_str());
        if (rc != 0 && errno == ENOENT && make_maildir(dirs_.paths[i]) == 0)
          rc = ::link(tmp_path_.c_str(), target.c_str());
        // The link is durable only once its directory is.
        dir_error[i] = rc != 0 ? errno : store::fsync_dir(dirs_.paths[i] + "/new");
      }
    }
    if (!tmp_path_.empty()) ::unlink(tmp_path_.c_str());
    dirs_.fill(outcomes, dir_error);
  }

  void discard() noexcept override {
    if (fd_ >= 0) ::close(fd_);
    fd_ = -1;
    if (!tmp_path_.empty()) ::unlink(tmp_path_.c_str());
  }

  bool staged() const noexcept override { return fd_ >= 0 || !tmp_path_.empty(); }

  std::string name_;
  store::mailbox_places dirs_;  // the distinct Maildirs
  std::string tmp_path_;
  int fd_ = -1;
  std::size_t size_ = 0;
};

delivery* maildir_sink::begin(const envelope& env, delivery_listener& listener) {
  return new maildir_delivery(*this, env, listener);
}

}  // namespace

std::unique_ptr<sink> open_maildir_sink(uv_loop_t* loop, const maildir_options& options,
                                        std::string& error) {
  // A single Maildir is made now, so that a bad path fails at start-up.
  if (!store::is_template(options.path)) {
    if (int e = make_maildir(options.path)) {
      error =
          fmt::format(FMT_STRING("cannot create Maildir {}: {}"), options.path, std::strerror(e));
      return nullptr;
    }
  }
  return std::make_unique<maildir_sink>(loop, options.path, options.hostname);
}

}  // namespace inboxd
