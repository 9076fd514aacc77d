// store/dir_sync.hpp: group commit of directory fsyncs, for the sinks' pool
// threads.
//
// A message's entry in a folder (a link into a Maildir's new/) is durable
// only once an fsync of that folder has started after the entry was made and
// has finished. When many pool threads publish into one folder at once, one
// fsync covers every entry made before it started, so they need not pay one
// each. dir_syncer::sync() is called after the caller's entries are made:
//
// - no fsync of that folder runs: the caller starts one at once (a lone
//   message waits for nothing but its own fsync, as without the syncer);
// - one runs: it may have started before the caller's entry, so it does not
//   count; the caller waits for it to end, and then the first waiter starts
//   the next one, which covers every thread that arrived meanwhile.
//
// So a caller waits for at most two fsyncs of its folder, and there is no
// timer: the window is the length of the fsync in progress.
//
// Memory: a folder is known only while some thread is in sync() for it; the
// last one out forgets it, so the map holds at most as many folders as there
// are threads in sync() at once.
//
// Everything here blocks: call it on the thread pool, never on the loop.
#pragma once

#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <mutex>
#include <string>
#include <unordered_map>

namespace inboxd::store {

class dir_syncer {
 public:
  // What runs one fsync of a folder: returns 0 or an errno value. Tests put
  // a hook here; by default it is fsync_dir (files.hpp).
  using sync_fn = int (*)(const std::string& dir, void* arg) noexcept;

  dir_syncer() noexcept = default;
  dir_syncer(sync_fn fn, void* arg) noexcept : fn_(fn), arg_(arg) {}
  dir_syncer(const dir_syncer&) = delete;
  dir_syncer& operator=(const dir_syncer&) = delete;

  // Returns once an fsync of dir that started after this call began has
  // finished: 0, or the errno value of that fsync (or of a later one, when
  // one failed before this thread woke: an error is never lost, at the cost
  // of a rare failure for a message that was durable; the sink then takes
  // it back and the sender retries).
  [[nodiscard]] int sync(const std::string& dir) noexcept;

  // For tests: the threads in sync() for dir now, and the folders known.
  [[nodiscard]] std::size_t waiting(const std::string& dir);
  [[nodiscard]] std::size_t folders();

 private:
  struct folder {
    std::uint64_t started = 0;      // fsyncs started; the running one's number
    std::uint64_t done = 0;         // the number of the last one finished
    std::uint64_t failed = 0;       // the number of the last one that failed
    int error = 0;                  // its errno value
    bool running = false;           // an fsync is in progress
    std::size_t users = 0;          // threads in sync() for this folder
    std::condition_variable ended;  // an fsync finished
  };

  int run(const std::string& dir) noexcept;

  sync_fn fn_ = nullptr;
  void* arg_ = nullptr;
  std::mutex mutex_;
  std::unordered_map<std::string, folder> folders_;  // guarded by mutex_
};

// The one the sinks share: every delivery of the process into a folder,
// whatever sink (and reload) it came from, shares its fsyncs.
[[nodiscard]] dir_syncer& shared_dir_syncer() noexcept;

}  // namespace inboxd::store
