// store/pooled_delivery.hpp: the part every file-backed delivery shares.
//
// Message bytes gather in `pending_` on the loop thread. Past flush_bytes, one
// pool job stages them (writes them to a file) while the next ones gather;
// when a second batch fills before the first is staged, write() asks the
// session to pause until writable(). commit() runs one last pool job that
// makes the message durable and fills one outcome per recipient. A small
// message costs that one job in all. Nothing here runs file I/O on the loop.
//
// Memory: every byte held here (pending_ and the batch a job is staging) is
// counted in a memory_budget shared by all deliveries of a server (loop
// thread only). While the budget is spent, a delivery stages what it holds
// as soon as no job of its own runs, however little that is, and pauses the
// session while one does. A paused delivery whose stage is done joins a
// queue (one per thread, first come first served) and is woken while the
// budget has room for one more read (wake_room), or when no job at all is
// left to free memory, so that everyone progresses. So the bytes held by
// all deliveries stay near the budget, plus at most one read per session
// that writes when the budget fills, and a message larger than the budget
// still goes through in pieces.
//
// Locks: finish() may find a mailbox locked by someone else. It then calls
// retry_later() instead of waiting: no pool thread ever sleeps on a lock.
// finish() runs again from a loop timer (lock_retry_first, a little longer
// each time), for lock_patience in all; past that every recipient fails
// with EAGAIN (451 4.3.0, the sender retries later).
//
// The sync stage: finish() need not wait for a sync that other deliveries
// could share. It asks for it (need_sync(): an fsync of a folder, or a
// syncfs of a filesystem) and returns; the pool thread is free at once. On
// the loop, the delivery then joins its folder's group (one per folder or
// filesystem, on this thread): a group runs one sync at a time, as a pool
// job, for every delivery that joined before that sync began; those that
// join while it runs wait for the next one, which starts as soon as it ends
// (no timer: a lone delivery's sync starts at once). When every sync a
// delivery asked for has ended, after_sync() runs on the pool with their
// errors (inside the group's job when it waited for that one sync only, so
// a cohort costs one pool job in all): it may ask for more syncs (a syncfs
// after the links, when the one before them covered the data), or fill the
// outcomes, which committed() then carries to the session. So no pool
// thread ever waits for another delivery's sync, and the deliveries that
// share one are as many as there are sessions committing, not threads.
// Everything in the stage is a libuv request, so the loop stays alive (and
// a server's drain waits) until every delivery in it is done, and there is
// no thread to join.
//
// Lifetime: the object frees itself, after committed() or, once aborted,
// after its last pool job (and the close of its timer, if it had one). A
// derived class keeps all it needs in itself: it must not use its sink after
// abort() (sink.hpp).
#pragma once

#include <uv.h>

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "inboxd/sink.hpp"
#include "inboxd/sinks.hpp"
#include "store/dir_sync.hpp"

namespace inboxd::store {

namespace detail {
struct sync_group;
}

class pooled_delivery : public delivery {
 public:
  static constexpr std::size_t flush_bytes = 256 * 1024;
  static constexpr std::uint64_t lock_retry_first_ms = 50;
  static constexpr std::uint64_t lock_retry_max_ms = 200;
  static constexpr std::uint64_t lock_patience_ms = 10'000;
  // What a woken session may bring at once: one read buffer.
  static constexpr std::size_t wake_room = 64 * 1024;

  bool write(std::string_view bytes) final;
  void commit() final;
  void abort() noexcept final;

  // For tests (loop thread): the deliveries in the sync stage for this
  // folder (or filesystem), running or waiting, and the groups known.
  [[nodiscard]] static std::size_t in_sync_stage(sync_kind kind, dev_t dev,
                                                 const std::string& path);
  [[nodiscard]] static std::size_t sync_groups() noexcept;

 protected:
  // budget: the server's shared one; null means one budget for every
  // delivery made on this thread without one, with the default limit.
  pooled_delivery(uv_loop_t* loop, delivery_listener& listener, std::size_t recipients,
                  std::shared_ptr<memory_budget> budget = {});
  virtual ~pooled_delivery();

  // Loop thread: adds message bytes to the batch (a sink may transform them).
  virtual void append(std::string& batch, std::string_view bytes) { batch.append(bytes); }

  // Pool thread. stage() writes a batch to the staging area; finish() gets
  // the last batch and makes the message durable for every recipient,
  // filling outcomes; discard() removes whatever was staged. Each records
  // its first failure in error_ (an errno value). finish() that found a
  // lock held calls retry_later() and leaves outcomes alone: it is called
  // again later with an empty batch, so it keeps what it needs of the first
  // one.
  virtual void stage(const std::string& batch) noexcept = 0;
  virtual void finish(const std::string& batch, std::vector<store_outcome>& outcomes) noexcept = 0;
  virtual void discard() noexcept = 0;
  // Loop thread, when no job runs: whether discard() has anything to do.
  [[nodiscard]] virtual bool staged() const noexcept = 0;

  // Pool thread, from finish(): a lock is held by someone else; try again.
  void retry_later() noexcept { retry_ = true; }

  // A sync asked for by finish() or after_sync(), and once it has ended,
  // its result.
  struct sync_request {
    sync_kind kind = sync_kind::dir;
    dev_t dev = 0;        // sync_kind::fs: the filesystem
    std::string path;     // the folder (fs: a folder in the filesystem)
    std::size_t tag = 0;  // the derived class's own (which mailbox)
    int error = 0;        // set when the sync has ended: 0 or an errno value
  };

  // Pool thread, from finish() or after_sync(): the outcome waits for a sync
  // of path (or of filesystem dev) begun after this call. May throw
  // std::bad_alloc; the caller then calls drop_syncs() and fails.
  void need_sync(sync_kind kind, dev_t dev, std::string path, std::size_t tag = 0);
  void drop_syncs() noexcept { requests_.clear(); }

  // Pool thread: every sync asked for has ended; done holds them with their
  // errors. Fills outcomes, or asks for more syncs and leaves them alone.
  virtual void after_sync(std::vector<sync_request>& done,
                          std::vector<store_outcome>& outcomes) noexcept;

  int error_ = 0;

 private:
  enum class job : unsigned char { stage, finish, discard, after_sync };
  friend struct detail::sync_group;

  void start(job j);
  void drop() noexcept;
  void destroy() noexcept;
  void after_work() noexcept;
  void enter_sync_stage() noexcept;
  void synced() noexcept;
  void wait_for_lock() noexcept;
  void count() noexcept;
  void queue_for_budget() noexcept;
  void leave_queue() noexcept;
  void unreserve() noexcept;
  static void wake_queued() noexcept;
  [[nodiscard]] bool over_budget() const noexcept { return budget_->used > budget_->limit; }
  // Whether what pending_ holds should go to disk now rather than later.
  [[nodiscard]] bool should_stage() const noexcept {
    return pending_.size() >= flush_bytes || (!pending_.empty() && over_budget());
  }
  static void work_cb(uv_work_t* req) noexcept;
  static void after_work_cb(uv_work_t* req, int status) noexcept;
  static void timer_cb(uv_timer_t* timer) noexcept;
  static void close_cb(uv_handle_t* handle) noexcept;

  uv_loop_t* loop_;
  delivery_listener* listener_;  // null once aborted
  std::shared_ptr<memory_budget> budget_;
  std::vector<store_outcome> outcomes_;
  std::string pending_;         // loop thread only
  std::string batch_;           // the pool job's, while busy_
  std::size_t batch_held_ = 0;  // bytes of batch_ counted while a job holds it
  std::size_t counted_ = 0;     // what this delivery counts in budget_
  uv_work_t req_{};
  uv_timer_t timer_{};            // initialised the first time a lock is busy
  std::uint64_t busy_since_ = 0;  // uv_now() of the first busy lock
  std::uint64_t retry_ms_ = lock_retry_first_ms;
  job job_ = job::stage;
  bool busy_ = false;
  bool paused_ = false;
  bool committing_ = false;
  bool retry_ = false;  // set by finish() on the pool thread, read after the job
  bool timer_open_ = false;
  bool waiting_ = false;   // the timer runs: waiting to try the locks again
  bool queued_ = false;    // paused, in the queue for the budget
  bool reserved_ = false;  // woken with room promised (wake_room), not written yet
  // The sync stage. requests_: asked for by the job that runs (pool thread
  // while busy_); syncing_: the ones being waited for (loop thread, and the
  // pool job that runs after_sync), sync_pending_ of them not ended yet.
  std::vector<sync_request> requests_;
  std::vector<sync_request> syncing_;
  std::size_t sync_pending_ = 0;
  bool sync_inline_ = false;  // after_sync runs inside its group's job
  pooled_delivery* queue_prev_ = nullptr;
  pooled_delivery* queue_next_ = nullptr;
};

// Classifies an errno value for the session: ENOSPC and EDQUOT are "no space".
[[nodiscard]] store_outcome outcome_of(int error) noexcept;

}  // namespace inboxd::store
