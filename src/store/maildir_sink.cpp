// The Maildir sink: durable delivery as DESIGN.md says, all or nothing.
//
// A message is written once to <maildir>/tmp/<unique> of its first
// recipient and fdatasynced. Then a copy is staged in the tmp/ of every
// other recipient's Maildir (a hard link, or a fsynced copy of the bytes
// when that Maildir is on another file system). Only when every copy is
// staged is each one linked as new/<unique>,S=<size>,W=<POP3 size>; the pool job then
// ends, and the sync stage (pooled_delivery.hpp) runs the fsync of each new/,
// one for every delivery that linked into it meanwhile; if any step fails,
// every copy already made is taken back and every recipient fails alike, so
// the reply is 250 with the message in every new/, or 451 (452 for a full
// disk) with it in none: the sender's retry makes no duplicate. A crash at
// any instant leaves in each new/ nothing or a whole message. With
// maildir_sync::syncfs, two syncfs of the filesystem take the place of those
// fsyncs, both from the sync stage: one after the write, before the links
// (made in the job of that syncfs), and one after the links. Maildirs named
// by a template ({domain}, {user}) get their tmp/ new/ cur/ on first
// delivery. All file work runs on libuv's thread pool (pooled_delivery).
#include <fcntl.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <unistd.h>

#include <fmt/format.h>
#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstring>

#include "inboxd/sinks.hpp"
#include "store/dir_sync.hpp"
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

// The Q part of unique names, for the whole process: a sink is made anew on
// every reload, and a counter of its own would start again at 1 and could
// give a name already used in the same microsecond. The name is made on the
// loop thread, but an atomic costs nothing and keeps it right for any number
// of loops.
std::atomic<std::uint64_t> name_counter{0};

// Makes a Maildir's root (and the folders above it) and its tmp/ new/ cur/.
// What it creates goes to owner; each new folder's entry is fsynced into its
// parent, so a message acknowledged into a new Maildir survives a crash.
int make_maildir(const std::string& root, file_owner owner = {}) noexcept {
  try {
    // Everything is made first and handed over last, deepest first
    // (store::give_all): root never works inside a folder the user owns.
    std::vector<std::string> made;
    if (int e = store::make_dirs(root, owner, &made)) return e;
    bool subs = false;
    for (const char* sub : {"/tmp", "/new", "/cur"}) {
      std::string path = root + sub;
      if (::mkdir(path.c_str(), 0700) != 0) {
        if (errno != EEXIST) return errno;
        continue;
      }
      subs = true;
      made.push_back(std::move(path));
    }
    if (subs)
      if (int e = store::fsync_dir(root)) return e;
    return store::give_all(made, owner);
  } catch (...) {
    return ENOMEM;
  }
}

// Copies the bytes of from into a new file to and fsyncs it: the staged copy
// for a Maildir on another file system, where a hard link gives EXDEV.
int copy_file(const std::string& from, const std::string& to) noexcept {
  int in = ::open(from.c_str(), O_RDONLY | O_CLOEXEC);
  if (in < 0) return errno;
  int out = ::open(to.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
  if (out < 0) {
    int e = errno;
    ::close(in);
    return e;
  }
  int e = 0;
  char buf[64 * 1024];
  for (;;) {
    ssize_t n = ::read(in, buf, sizeof buf);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) e = errno;
    if (n <= 0) break;
    if ((e = store::write_all(out, {buf, static_cast<std::size_t>(n)}))) break;
  }
  if (!e && ::fsync(out) != 0) e = errno;
  if (::close(out) != 0 && !e) e = errno;
  ::close(in);
  if (e) ::unlink(to.c_str());
  return e;
}

class maildir_sink final : public sink {
 public:
  maildir_sink(uv_loop_t* loop, std::string path, std::string host,
               std::shared_ptr<memory_budget> memory, maildir_sync sync)
      : loop_(loop),
        path_(std::move(path)),
        host_(escape_host(host)),
        memory_(memory ? std::move(memory) : std::make_shared<memory_budget>()),
        syncfs_(sync == maildir_sync::syncfs) {}
  delivery* begin(const envelope& env, delivery_listener& listener) override;

  uv_loop_t* loop_;
  std::string path_;  // one Maildir, or a template
  std::string host_;
  std::shared_ptr<memory_budget> memory_;  // the server's, shared by every sink
  bool syncfs_;
};

class maildir_delivery final : public pooled_delivery {
 public:
  maildir_delivery(maildir_sink& sink, const envelope& env, delivery_listener& listener)
      : pooled_delivery(sink.loop_, listener, env.recipients.size(), sink.memory_),
        dirs_(sink.path_, env.recipients),
        syncfs_(sink.syncfs_),
        since_(syncfs_ ? store::shared_fs_syncer().failures() : 0) {
    if (env.independent_outcomes) {
      independent_ = true;
      box_errors_.assign(dirs_.paths.size(), 0);
    }
    timeval tv{};
    ::gettimeofday(&tv, nullptr);
    name_ = fmt::format(FMT_STRING("{}.M{}P{}Q{}.{}"), tv.tv_sec, tv.tv_usec, ::getpid(),
                        ++name_counter, sink.host_);
    // Final delivery adds Return-Path (RFC 5321 4.4).
    write(fmt::format(FMT_STRING("Return-Path: <{}>\n"), env.reverse_path));
    // The ORCPT the client gave, where it says more than the RCPT address
    // (sink.hpp, original_recipient()), as Postfix's local(8) writes it.
    if (std::string_view to = original_recipient(env); !to.empty())
      write(fmt::format(FMT_STRING("X-Original-To: {}\n"), to));
  }

 private:
  ~maildir_delivery() override = default;

  // Opens tmp/<unique> in the first Maildir: the message is written there
  // once, and every other recipient's copy is made from it at the end.
  void open_staging() noexcept {
    if (dirs_.paths.empty()) {  // no recipient: the session never asks for this
      error_ = EINVAL;
      return;
    }
    // LMTP: a Maildir that cannot take the file fails alone; the next one
    // holds it.
    for (std::size_t i = 0; i < dirs_.paths.size(); ++i) {
      std::string path = dirs_.paths[i] + "/tmp/" + name_;
      fd_ = ::open(path.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
      if (fd_ < 0 && errno == ENOENT && make_maildir(dirs_.paths[i]) == 0)
        fd_ = ::open(path.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
      if (fd_ >= 0) {
        error_ = 0;
        stage_index_ = i;
        tmp_path_ = std::move(path);
        return;
      }
      error_ = errno;
      if (!independent_) return;
      box_errors_[i] = error_;
    }
  }

  // LMTP (envelope.independent_outcomes): each Maildir gets the message or
  // its own error in box_errors_, and a failure takes nothing back from the
  // others, since each recipient hears its own reply. Each link asks for an
  // fsync of its new/ (tagged with its Maildir); after_sync() takes back
  // the copies whose fsync failed. May throw bad_alloc.
  void publish_each() {
    final_name_ = fmt::format(FMT_STRING("/new/{},S={},W={}"), name_, size_, size_ + bare_lfs_);
    published_.clear();
    published_.reserve(dirs_.paths.size());
    auto publish_one = [&](std::size_t i) {
      std::string staged = tmp_path_;
      if (i != stage_index_) {
        if (int e = stage_copy(i, staged)) return e;
        if (staged.empty()) return box_errors_[stage_index_];  // the same Maildir
      }
      std::string target = dirs_.paths[i] + final_name_;
      int rc = ::link(staged.c_str(), target.c_str());
      if (rc != 0 && errno == ENOENT && make_maildir(dirs_.paths[i]) == 0)
        rc = ::link(staged.c_str(), target.c_str());
      int e = rc == 0 ? 0 : errno;
      if (i != stage_index_) ::unlink(staged.c_str());
      if (rc == 0) {
        published_.push_back(i);
        need_sync(store::sync_kind::dir, 0, dirs_.paths[i] + "/new", i);
      }
      return e;
    };
    box_errors_[stage_index_] = publish_one(stage_index_);
    for (std::size_t i = 0; i < dirs_.paths.size(); ++i)
      if (i != stage_index_ && !box_errors_[i]) box_errors_[i] = publish_one(i);
  }

  void stage(const std::string& batch) noexcept override {
    if (fd_ < 0 && !error_) open_staging();
    if (error_) return;
    if (int e = store::write_all(fd_, batch)) error_ = e;
    size_ += batch.size();
    count_bare_lfs(batch);
  }

  // The W= of the name is the size as POP3 sends it (Dovecot's convention):
  // every LF not preceded by CR becomes CRLF, so the maildrop lists our own
  // messages without reading them. The last byte carries a CR across chunks.
  void count_bare_lfs(std::string_view bytes) noexcept {
    const char* p = bytes.data();
    const char* end = p + bytes.size();
    while (p < end) {
      const auto* lf = static_cast<const char*>(std::memchr(p, '\n', end - p));
      if (!lf) break;
      char before = lf == bytes.data() ? last_byte_ : lf[-1];
      if (before != '\r') ++bare_lfs_;
      p = lf + 1;
    }
    if (!bytes.empty()) last_byte_ = bytes.back();
  }

  // Stages Maildir i's copy (i > 0) in its tmp/: a hard link to the first
  // one, or a copy of the bytes across file systems. Leaves path empty when
  // Maildir i is one already staged under another name (a symlink made two
  // mailboxes one): the message goes there once, through the first name.
  int stage_copy(std::size_t i, std::string& path) {
    path = dirs_.paths[i] + "/tmp/" + name_;
    int rc = ::link(tmp_path_.c_str(), path.c_str());
    if (rc != 0 && errno == ENOENT && make_maildir(dirs_.paths[i]) == 0)
      rc = ::link(tmp_path_.c_str(), path.c_str());
    if (rc != 0 && errno == EXDEV) return copy_file(tmp_path_, path);
    if (rc != 0 && errno == EEXIST && same_file(tmp_path_, path)) {
      path.clear();
      return 0;
    }
    return rc == 0 ? 0 : errno;
  }

  static bool same_file(const std::string& a, const std::string& b) noexcept {
    struct stat sa {};
    struct stat sb {};
    return ::stat(a.c_str(), &sa) == 0 && ::stat(b.c_str(), &sb) == 0 && sa.st_dev == sb.st_dev &&
           sa.st_ino == sb.st_ino;
  }

  // Links the message into every Maildir's new/, or into none, and asks for
  // the syncs that make the links durable. Returns 0, or the errno value of
  // the first failure with failed_ set to its Maildir (and nothing left
  // published). May throw std::bad_alloc: the caller then takes back what
  // published_ holds.
  int publish(std::vector<std::string>& staged) {
    const std::size_t n = dirs_.paths.size();
    staged[0] = tmp_path_;
    for (std::size_t i = 1; i < n; ++i) {
      if (int e = stage_copy(i, staged[i])) {
        staged[i].clear();
        failed_ = i;
        return e;
      }
    }
    // Every copy is staged: publish each. link() rather than rename(): it
    // never replaces a message already in new/ under the same name.
    final_name_ = fmt::format(FMT_STRING("/new/{},S={},W={}"), name_, size_, size_ + bare_lfs_);
    published_.clear();
    published_.reserve(n);
    int e = 0;
    for (std::size_t i = 0; i < n; ++i) {
      if (staged[i].empty()) continue;  // published through another name
      std::string target = dirs_.paths[i] + final_name_;
      int rc = ::link(staged[i].c_str(), target.c_str());
      // A Maildir with a tmp/ but no new/ gets its missing folders.
      if (rc != 0 && errno == ENOENT && make_maildir(dirs_.paths[i]) == 0)
        rc = ::link(staged[i].c_str(), target.c_str());
      if (rc != 0) {
        e = errno;
        failed_ = i;
        break;
      }
      published_.push_back(i);
    }
    // Each link is durable only once its directory is: an fsync of new/
    // (or a syncfs) that begins after the link. The sync stage shares it
    // among the deliveries into that new/ (or filesystem) meanwhile
    // (pooled_delivery.hpp); a lone one gets its own at once.
    if (!e && syncfs_) e = ask_syncfs();
    for (std::size_t k = 0; k < published_.size() && !e && !syncfs_; ++k) {
      std::size_t i = published_[k];
      need_sync(store::sync_kind::dir, 0, dirs_.paths[i] + "/new", i);
    }
    if (e) take_back();
    return e;
  }

  // Takes back what was published: the sender retries the whole message,
  // so no recipient may keep a copy. Best effort to make that durable.
  void take_back() noexcept {
    for (std::size_t i : published_) {
      try {
        ::unlink((dirs_.paths[i] + final_name_).c_str());
        (void)store::fsync_dir(dirs_.paths[i] + "/new");
      } catch (...) {  // no memory for the path: nothing more can be done
      }
    }
    published_.clear();
  }

  // Asks for one syncfs, begun after the links, of each filesystem that got
  // one. The staging Maildir's is dev_; another's new/ is on it unless its
  // copy was made across filesystems.
  int ask_syncfs() {
    std::vector<std::pair<dev_t, std::size_t>> fs;  // (filesystem, a Maildir on it)
    fs.reserve(published_.size());
    for (std::size_t i : published_) {
      struct stat st {};
      if (i != stage_index_ && ::stat((dirs_.paths[i] + "/new").c_str(), &st) != 0) {
        failed_ = i;
        return errno;
      }
      fs.emplace_back(i == stage_index_ ? dev_ : st.st_dev, i);
    }
    std::sort(fs.begin(), fs.end());
    for (std::size_t k = 0; k < fs.size(); ++k) {
      if (k > 0 && fs[k].first == fs[k - 1].first) continue;
      need_sync(store::sync_kind::fs, fs[k].first, dirs_.paths[fs[k].second], fs[k].second);
    }
    return 0;
  }

  // The staged file's bytes must be durable before its link is: else a
  // crash could leave a link in new/ to a file not all written. With
  // fsync, fdatasync(2) of the file here (its size and blocks are what
  // reading it back needs, and fdatasync writes them; a timestamp it may
  // leave is not worth a second write). With syncfs, one syncfs of the
  // filesystem, asked for once the file is closed and shared with every
  // file written meanwhile: here only its filesystem is found.
  int sync_data() noexcept {
    if (!syncfs_) return ::fdatasync(fd_) == 0 ? 0 : errno;
    struct stat st {};
    if (::fstat(fd_, &st) != 0) return errno;
    dev_ = st.st_dev;
    return 0;
  }

  void finish(const std::string& batch, std::vector<store_outcome>& outcomes) noexcept override {
    stage(batch);
    if (!error_) error_ = sync_data();
    if (fd_ >= 0 && ::close(fd_) != 0 && !error_) error_ = errno;
    fd_ = -1;
    if (!error_ && syncfs_) {
      try {
        need_sync(store::sync_kind::fs, dev_, dirs_.paths[stage_index_], stage_index_);
        synced_data_ = false;
        return;  // publish_all() runs in after_sync(), once the data is durable
      } catch (...) {
        drop_syncs();
        error_ = ENOMEM;
      }
    }
    publish_all(outcomes);
  }

  // The data is durable (or error_ says why not): links the message into
  // new/ and asks for the syncs of the links, or fails every recipient.
  // The outcomes it fills stand when it asked for no sync; else
  // after_sync() fills them again.
  void publish_all(std::vector<store_outcome>& outcomes) noexcept {
    int e = error_;
    if (e) failed_ = stage_index_;
    try {
      std::vector<std::string> staged(dirs_.paths.size());
      if (!e && independent_)
        publish_each();
      else if (!e)
        e = publish(staged);
      // The tmp/ names go whether the message was published or not: the
      // other Maildirs' here, the first one's (staged[0], tmp_path_) below,
      // once. They need no sync: a published message is durable in new/
      // once its sync ends, and a tmp/ name that a crash leaves behind is
      // never read (Maildir readers clean tmp/ of files older than 36 hours).
      for (std::size_t i = 1; i < staged.size(); ++i)
        if (!staged[i].empty()) ::unlink(staged[i].c_str());
    } catch (...) {
      e = ENOMEM;
      drop_syncs();
      take_back();
    }
    if (!tmp_path_.empty()) ::unlink(tmp_path_.c_str());
    tmp_path_.clear();
    conclude(e, outcomes);
  }

  void after_sync(std::vector<sync_request>& done,
                  std::vector<store_outcome>& outcomes) noexcept override {
    if (!synced_data_) {
      // syncfs: the data's sync has ended. A syncfs that failed while this
      // message was written may have failed on its pages (an error is
      // reported once): that fails it too.
      synced_data_ = true;
      int e = done.empty() ? 0 : done[0].error;
      if (!e) e = store::shared_fs_syncer().failed_since(since_);
      error_ = e;
      return publish_all(outcomes);
    }
    if (independent_) {
      // LMTP: a mailbox whose new/ was not synced loses its copy alone.
      for (const sync_request& r : done) {
        if (!r.error) continue;
        box_errors_[r.tag] = r.error;
        try {
          ::unlink((dirs_.paths[r.tag] + final_name_).c_str());
        } catch (...) {
        }
      }
      return conclude(0, outcomes);
    }
    int e = 0;
    for (const sync_request& r : done) {
      if (r.error && !e) {
        e = r.error;
        failed_ = r.tag;
      }
    }
    if (!e && syncfs_ && (e = store::shared_fs_syncer().failed_since(since_)))
      failed_ = stage_index_;
    if (e) take_back();
    conclude(e, outcomes);
  }

  // Every recipient gets the same result, so the reply is one truth for
  // all. The Maildir that failed carries its error, the others ECANCELED
  // ("Operation canceled"): the log names the mailbox to fix. LMTP: each
  // mailbox has its own truth.
  void conclude(int e, std::vector<store_outcome>& outcomes) noexcept {
    store_outcome fail = store::outcome_of(e);
    for (std::size_t r = 0; r < outcomes.size(); ++r) {
      outcomes[r] = fail;
      if (e && dirs_.of[r] != failed_) outcomes[r].error = ECANCELED;
      if (!e && independent_) outcomes[r] = store::outcome_of(box_errors_[dirs_.of[r]]);
    }
  }

  void discard() noexcept override {
    if (fd_ >= 0) ::close(fd_);
    fd_ = -1;
    if (!tmp_path_.empty()) ::unlink(tmp_path_.c_str());
  }

  bool staged() const noexcept override { return fd_ >= 0 || !tmp_path_.empty(); }

  std::string name_;
  store::mailbox_places dirs_;  // the distinct Maildirs
  std::string tmp_path_;        // the first Maildir's tmp/<unique>, once open
  int fd_ = -1;
  std::size_t size_ = 0;
  std::size_t bare_lfs_ = 0;            // LFs not preceded by CR, for W=
  char last_byte_ = 0;                  // the staged bytes' last, across chunks
  std::size_t failed_ = 0;              // the Maildir (index in dirs_.paths) that failed
  bool independent_ = false;            // envelope.independent_outcomes (LMTP)
  std::size_t stage_index_ = 0;         // the Maildir whose tmp/ holds the staged file
  std::vector<int> box_errors_;         // LMTP: each Maildir's errno, or 0
  std::vector<std::size_t> published_;  // Maildirs (indexes) linked into new/
  std::string final_name_;              // "/new/<unique>,S=<size>,W=<POP3 size>"
  bool syncfs_;
  bool synced_data_ = true;  // syncfs: false while the data's syncfs is awaited
  std::uint64_t since_;      // the fs syncer's failures() before the first write
  dev_t dev_ = 0;            // the filesystem of the staged file (syncfs)
};

delivery* maildir_sink::begin(const envelope& env, delivery_listener& listener) {
  return new maildir_delivery(*this, env, listener);
}

}  // namespace

std::unique_ptr<sink> open_maildir_sink(uv_loop_t* loop, const maildir_options& options,
                                        std::string& error) {
  // A single Maildir is made now, so that a bad path fails at start-up. For
  // a template, the folders before the first {...} are made now: the server
  // may run as an unprivileged user later, who must be able to make each
  // recipient's Maildir in them. What start-up makes goes to that user.
  if (!store::is_template(options.path)) {
    if (int e = make_maildir(options.path, options.owner)) {
      error =
          fmt::format(FMT_STRING("cannot create Maildir {}: {}"), options.path, std::strerror(e));
      return nullptr;
    }
  } else if (std::string prefix = store::fixed_prefix(options.path); !prefix.empty()) {
    if (int e = store::make_dirs(prefix, options.owner)) {
      error = fmt::format(FMT_STRING("cannot create folder {} for Maildirs {}: {}"), prefix,
                          options.path, std::strerror(e));
      return nullptr;
    }
  }
  return std::make_unique<maildir_sink>(loop, options.path, options.hostname, options.memory,
                                        options.sync);
}

}  // namespace inboxd
