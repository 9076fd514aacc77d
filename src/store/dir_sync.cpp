#include "store/dir_sync.hpp"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>

#include "store/files.hpp"

namespace inboxd::store {

template <class Key>
int group_syncer<Key>::sync(const Key& key, const std::string& path) noexcept {
  std::unique_lock<std::mutex> lock(mutex_, std::defer_lock);
  typename std::unordered_map<Key, entry>::iterator it;
  try {
    lock.lock();
    it = entries_.try_emplace(key).first;
  } catch (...) {
    // No memory for the key's entry: a sync of our own is as durable, only
    // not shared.
    if (lock.owns_lock()) lock.unlock();
    return fn_(key, path, arg_);
  }
  entry& f = it->second;
  ++f.users;
  // The sync running now may have started before the caller's entries were
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
    int e = fn_(key, path, arg_);
    lock.lock();
    f.running = false;
    f.done = f.started;
    if (e) {
      f.failed = f.done;
      f.error = e;
    }
    // Woken with the mutex free, the waiters need not block on it at once
    // (a context switch each). Our count in users keeps f alive meanwhile.
    lock.unlock();
    f.ended.notify_all();
    lock.lock();
  }
  // A failure of ours, or of a later sync that ended before we woke: either
  // way report it (the state on disk is then unknown).
  int e = f.failed >= mine ? f.error : 0;
  if (--f.users == 0) entries_.erase(it);
  return e;
}

template <class Key>
std::size_t group_syncer<Key>::waiting(const Key& key) {
  std::lock_guard<std::mutex> lock(mutex_);
  auto it = entries_.find(key);
  return it == entries_.end() ? 0 : it->second.users;
}

template <class Key>
std::size_t group_syncer<Key>::folders() {
  std::lock_guard<std::mutex> lock(mutex_);
  return entries_.size();
}

template class group_syncer<std::string>;
template class group_syncer<std::uint64_t>;

int dir_syncer::hook(const std::string&, const std::string& dir, void* self) noexcept {
  auto* s = static_cast<dir_syncer*>(self);
  return s->fn_ ? s->fn_(dir, s->arg_) : fsync_dir(dir);
}

fs_syncer::~fs_syncer() {
  for (const auto& [dev, fd] : fds_)
    if (fd >= 0) ::close(fd);
}

int fs_syncer::sync(dev_t dev, const std::string& path, std::uint64_t since) noexcept {
  int e = group_.sync(static_cast<std::uint64_t>(dev), path);
  // A syncfs that failed while this message was being written may have
  // failed on its pages: a writeback error is reported only once.
  if (!e && failures_.load() != since) e = last_error_.load();
  return e;
}

int fs_syncer::hook(const std::uint64_t& dev, const std::string& path, void* self) noexcept {
  auto* s = static_cast<fs_syncer*>(self);
  int e = s->fn_ ? s->fn_(path, s->arg_) : s->run_syncfs(dev, path);
  if (e) {
    s->last_error_.store(e);
    s->failures_.fetch_add(1);
  }
  return e;
}

int fs_syncer::run_syncfs(std::uint64_t dev, const std::string& path) noexcept {
  int fd = -1;
  {
    std::lock_guard<std::mutex> lock(fds_mutex_);
    try {
      auto [it, added] = fds_.try_emplace(dev, -1);
      if (added || it->second < 0)
        it->second = ::open(path.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
      fd = it->second;
    } catch (...) {
      return ENOMEM;
    }
    if (fd < 0) return errno;
  }
  return ::syncfs(fd) == 0 ? 0 : errno;
}

dir_syncer& shared_dir_syncer() noexcept {
  // Never destroyed: a pool thread may still be in sync() while the process
  // exits, and must not find the mutex gone.
  static dir_syncer* const syncer = new dir_syncer;
  return *syncer;
}

fs_syncer& shared_fs_syncer() noexcept {
  static fs_syncer* const syncer = new fs_syncer;
  return *syncer;
}

}  // namespace inboxd::store
