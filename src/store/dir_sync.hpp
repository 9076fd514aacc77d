// store/dir_sync.hpp: the syncs that make a message's entry durable, run by
// the sync stage of pooled_delivery (pooled_delivery.hpp), which groups
// them.
//
// A message's entry in a folder (a link into a Maildir's new/) is durable
// only once an fsync of that folder (or a syncfs of its filesystem) has
// started after the entry was made and has finished. One sync covers every
// entry made before it started, so deliveries that link at about the same
// time share one: the sync stage runs one sync per folder (or filesystem)
// at a time, for every delivery that linked while the last one ran.
//
// Everything here blocks: call it on the thread pool, never on the loop.
#pragma once

#include <sys/types.h>

#include <atomic>
#include <cstdint>
#include <mutex>
#include <string>
#include <unordered_map>

namespace inboxd::store {

// What one sync is: an fsync of a folder, or a syncfs(2) of a filesystem.
enum class sync_kind : unsigned char { dir, fs };

// Filesystems, keyed by st_dev: one syncfs(2) makes durable every file
// written and every entry made on that filesystem before it began.
//
// Errors: since Linux 5.8, syncfs reports a writeback error of the
// filesystem once to each open file description that was open when the
// error happened. So the syncer keeps one descriptor per filesystem open for
// the life of the process and runs every syncfs on it, so that no error is
// missed (it is the first Maildir seen there: if removed, that folder stays
// allocated until the process ends, and the filesystem stays busy for
// umount). Since the error may concern any file of that filesystem, every
// message that was being written when a syncfs failed must fail too: read
// failures() before its first write, and compare once its syncs are done
// (failed_since()).
class fs_syncer {
 public:
  // Tests put a hook here (path: the caller's folder); by default syncfs.
  using sync_fn = int (*)(const std::string& path, void* arg) noexcept;

  fs_syncer() noexcept : fs_syncer(nullptr, nullptr) {}
  fs_syncer(sync_fn fn, void* arg) noexcept : fn_(fn), arg_(arg) {}
  ~fs_syncer();
  fs_syncer(const fs_syncer&) = delete;
  fs_syncer& operator=(const fs_syncer&) = delete;

  // The syncs that have failed so far.
  [[nodiscard]] std::uint64_t failures() const noexcept { return failures_.load(); }

  // One syncfs of filesystem dev (path is a folder in it): 0 or an errno
  // value. Any thread; two may run at once.
  [[nodiscard]] int sync(dev_t dev, const std::string& path) noexcept;

  // Counts a failure of a syncfs run elsewhere (a test hook's).
  void note(int error) noexcept;

  // 0 when no syncfs failed since `since` (a failures() read earlier), else
  // the errno value of the last one that did.
  [[nodiscard]] int failed_since(std::uint64_t since) const noexcept {
    return failures_.load() == since ? 0 : last_error_.load();
  }

 private:
  int run_syncfs(std::uint64_t dev, const std::string& path) noexcept;

  sync_fn fn_;
  void* arg_;
  std::atomic<std::uint64_t> failures_{0};
  std::atomic<int> last_error_{0};
  std::mutex fds_mutex_;
  std::unordered_map<std::uint64_t, int> fds_;  // st_dev -> descriptor, never closed
};

// The one the sinks share: every syncfs of the process runs on its
// descriptors, whatever sink (and reload) asked for it.
[[nodiscard]] fs_syncer& shared_fs_syncer() noexcept;

// Runs one sync: an fsync of folder path, or a syncfs of filesystem dev
// (path: a folder in it, for shared_fs_syncer()). Returns 0 or an errno
// value. A syncfs's failure is counted in shared_fs_syncer().
[[nodiscard]] int run_sync(sync_kind kind, dev_t dev, const std::string& path) noexcept;

// For tests: run_sync() calls this instead of fsync or syncfs (null: the
// real ones). Set it while no delivery is in flight.
using sync_hook = int (*)(sync_kind kind, const std::string& path, void* arg) noexcept;
void set_sync_hook(sync_hook hook, void* arg) noexcept;

}  // namespace inboxd::store
