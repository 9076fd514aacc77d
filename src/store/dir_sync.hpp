// store/dir_sync.hpp: group commit of directory fsyncs and of filesystem
// syncs (syncfs), for the sinks' pool threads.
//
// A message's entry in a folder (a link into a Maildir's new/) is durable
// only once an fsync of that folder (or a syncfs of its filesystem) has
// started after the entry was made and has finished. When many pool threads
// publish at once, one sync covers every entry made before it started, so
// they need not pay one each. sync() is called after the caller's entries
// are made:
//
// - no sync of that key (folder, or filesystem) runs: the caller starts one
//   at once (a lone message waits for nothing but its own sync, as without
//   the syncer);
// - one runs: it may have started before the caller's entry, so it does not
//   count; the caller waits for it to end, and then the first waiter starts
//   the next one, which covers every thread that arrived meanwhile.
//
// So a caller waits for at most two syncs of its key, and there is no timer:
// the window is the length of the sync in progress.
//
// Memory: a key is known only while some thread is in sync() for it; the
// last one out forgets it, so the map holds at most as many keys as there
// are threads in sync() at once.
//
// Everything here blocks: call it on the thread pool, never on the loop.
#pragma once

#include <sys/types.h>

#include <atomic>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <mutex>
#include <string>
#include <unordered_map>

namespace inboxd::store {

// The group commit itself, for any key. path is what the sync is run on
// (the folder; for a filesystem, any folder in it).
template <class Key>
class group_syncer {
 public:
  // What runs one sync of key, on path: returns 0 or an errno value.
  using sync_fn = int (*)(const Key& key, const std::string& path, void* arg) noexcept;

  group_syncer(sync_fn fn, void* arg) noexcept : fn_(fn), arg_(arg) {}
  group_syncer(const group_syncer&) = delete;
  group_syncer& operator=(const group_syncer&) = delete;

  // Returns once a sync of key that started after this call began has
  // finished: 0, or the errno value of that sync (or of a later one, when
  // one failed before this thread woke: an error is never lost, at the cost
  // of a rare failure for a message that was durable; the sink then takes
  // it back and the sender retries).
  [[nodiscard]] int sync(const Key& key, const std::string& path) noexcept;

  // For tests: the threads in sync() for key now, and the keys known.
  [[nodiscard]] std::size_t waiting(const Key& key);
  [[nodiscard]] std::size_t folders();

 private:
  struct entry {
    std::uint64_t started = 0;      // syncs started; the running one's number
    std::uint64_t done = 0;         // the number of the last one finished
    std::uint64_t failed = 0;       // the number of the last one that failed
    int error = 0;                  // its errno value
    bool running = false;           // a sync is in progress
    std::size_t users = 0;          // threads in sync() for this key
    std::condition_variable ended;  // a sync finished
  };

  sync_fn fn_;
  void* arg_;
  std::mutex mutex_;
  std::unordered_map<Key, entry> entries_;  // guarded by mutex_
};

extern template class group_syncer<std::string>;
extern template class group_syncer<std::uint64_t>;

// Folders, keyed by their path: one fsync of new/ for every link made in it
// before the fsync began.
class dir_syncer {
 public:
  // Tests put a hook here; by default a sync is fsync_dir (files.hpp).
  using sync_fn = int (*)(const std::string& dir, void* arg) noexcept;

  dir_syncer() noexcept : dir_syncer(nullptr, nullptr) {}
  dir_syncer(sync_fn fn, void* arg) noexcept : fn_(fn), arg_(arg), group_(hook, this) {}

  [[nodiscard]] int sync(const std::string& dir) noexcept { return group_.sync(dir, dir); }
  [[nodiscard]] std::size_t waiting(const std::string& dir) { return group_.waiting(dir); }
  [[nodiscard]] std::size_t folders() { return group_.folders(); }

 private:
  static int hook(const std::string& key, const std::string& dir, void* self) noexcept;

  sync_fn fn_;
  void* arg_;
  group_syncer<std::string> group_;
};

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
// caller whose message was being written when a syncfs failed gets the
// failure: pass to sync() the failures() read before the message's first
// write.
class fs_syncer {
 public:
  // Tests put a hook here (path: the caller's folder); by default syncfs.
  using sync_fn = int (*)(const std::string& path, void* arg) noexcept;

  fs_syncer() noexcept : fs_syncer(nullptr, nullptr) {}
  fs_syncer(sync_fn fn, void* arg) noexcept : fn_(fn), arg_(arg), group_(hook, this) {}
  ~fs_syncer();
  fs_syncer(const fs_syncer&) = delete;
  fs_syncer& operator=(const fs_syncer&) = delete;

  // The syncs that have failed so far.
  [[nodiscard]] std::uint64_t failures() const noexcept { return failures_.load(); }

  // Returns once a syncfs of filesystem dev (path is a folder in it) that
  // started after this call began has finished: 0, or an errno value when
  // that syncfs, or any that ended since `since` was read, failed.
  [[nodiscard]] int sync(dev_t dev, const std::string& path, std::uint64_t since) noexcept;

  [[nodiscard]] std::size_t waiting(dev_t dev) { return group_.waiting(dev); }
  [[nodiscard]] std::size_t folders() { return group_.folders(); }

 private:
  static int hook(const std::uint64_t& dev, const std::string& path, void* self) noexcept;
  int run_syncfs(std::uint64_t dev, const std::string& path) noexcept;

  sync_fn fn_;
  void* arg_;
  std::atomic<std::uint64_t> failures_{0};
  std::atomic<int> last_error_{0};
  std::mutex fds_mutex_;
  std::unordered_map<std::uint64_t, int> fds_;  // st_dev -> descriptor, never closed
  group_syncer<std::uint64_t> group_;
};

// The ones the sinks share: every delivery of the process into a folder,
// or a filesystem, whatever sink (and reload) it came from, shares its syncs.
[[nodiscard]] dir_syncer& shared_dir_syncer() noexcept;
[[nodiscard]] fs_syncer& shared_fs_syncer() noexcept;

}  // namespace inboxd::store
