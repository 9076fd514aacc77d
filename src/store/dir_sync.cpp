#include "store/dir_sync.hpp"

#include <cerrno>

#include "store/files.hpp"

namespace inboxd::store {

int dir_syncer::sync(const std::string& dir) noexcept {
  std::unique_lock<std::mutex> lock(mutex_, std::defer_lock);
  std::unordered_map<std::string, folder>::iterator it;
  try {
    lock.lock();
    it = folders_.try_emplace(dir).first;
  } catch (...) {
    // No memory for the folder's entry: an fsync of our own is as durable,
    // only not shared.
    if (lock.owns_lock()) lock.unlock();
    return run(dir);
  }
  folder& f = it->second;
  ++f.users;
  // The fsync running now may have started before the caller's entries were
  // made, so only the next one to start is sure to cover them.
  const std::uint64_t mine = f.started + 1;
  while (f.done < mine) {
    if (f.running) {
      f.ended.wait(lock);
      continue;
    }
    // None runs, so every one started has finished (started == done ==
    // mine - 1): this thread starts number mine, for itself and for every
    // thread that came while the last one ran.
    f.running = true;
    ++f.started;
    lock.unlock();
    int e = run(dir);
    lock.lock();
    f.running = false;
    f.done = f.started;
    if (e) {
      f.failed = f.done;
      f.error = e;
    }
    f.ended.notify_all();
  }
  // A failure of ours, or of a later fsync that ended before we woke: either
  // way report it (the folder's state on disk is then unknown).
  int e = f.failed >= mine ? f.error : 0;
  if (--f.users == 0) folders_.erase(it);
  return e;
}

int dir_syncer::run(const std::string& dir) noexcept {
  return fn_ ? fn_(dir, arg_) : fsync_dir(dir);
}

std::size_t dir_syncer::waiting(const std::string& dir) {
  std::lock_guard<std::mutex> lock(mutex_);
  auto it = folders_.find(dir);
  return it == folders_.end() ? 0 : it->second.users;
}

std::size_t dir_syncer::folders() {
  std::lock_guard<std::mutex> lock(mutex_);
  return folders_.size();
}

dir_syncer& shared_dir_syncer() noexcept {
  // Never destroyed: a pool thread may still be in sync() while the process
  // exits, and must not find the mutex gone.
  static dir_syncer* const syncer = new dir_syncer;
  return *syncer;
}

}  // namespace inboxd::store
