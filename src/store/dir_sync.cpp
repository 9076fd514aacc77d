#include "store/dir_sync.hpp"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>

#include "store/files.hpp"

namespace inboxd::store {
namespace {

// Set by tests only, before deliveries run; pool threads read it after the
// loop thread queued their job (uv_queue_work orders the two).
sync_hook test_hook = nullptr;
void* test_hook_arg = nullptr;

}  // namespace

fs_syncer::~fs_syncer() {
  for (const auto& [dev, fd] : fds_)
    if (fd >= 0) ::close(fd);
}

int fs_syncer::sync(dev_t dev, const std::string& path) noexcept {
  int e = fn_ ? fn_(path, arg_) : run_syncfs(static_cast<std::uint64_t>(dev), path);
  note(e);
  return e;
}

void fs_syncer::note(int error) noexcept {
  if (!error) return;
  // The error first, then the count: a reader that sees the new count finds
  // this error (or a later one).
  last_error_.store(error);
  failures_.fetch_add(1);
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

fs_syncer& shared_fs_syncer() noexcept {
  // Never destroyed: a pool thread may still run a sync while the process
  // exits, and must not find the mutex gone.
  static fs_syncer* const syncer = new fs_syncer;
  return *syncer;
}

int run_sync(sync_kind kind, dev_t dev, const std::string& path) noexcept {
  if (test_hook) {
    int e = test_hook(kind, path, test_hook_arg);
    if (kind == sync_kind::fs) shared_fs_syncer().note(e);
    return e;
  }
  if (kind == sync_kind::dir) return fsync_dir(path);
  return shared_fs_syncer().sync(dev, path);
}

void set_sync_hook(sync_hook hook, void* arg) noexcept {
  test_hook = hook;
  test_hook_arg = arg;
}

}  // namespace inboxd::store
