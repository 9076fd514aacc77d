#include "store/pooled_delivery.hpp"

#include <algorithm>
#include <cerrno>
#include <mutex>
#include <unordered_map>
#include <utility>

namespace inboxd::store {
namespace {

// What an empty std::string holds in itself (its small buffer): not counted.
const std::size_t empty_capacity = std::string().capacity();

std::size_t held(const std::string& s) noexcept {
  return s.capacity() > empty_capacity ? s.capacity() : 0;
}

// The budget of deliveries made without one (an embedder's sink built on
// pooled_delivery, or a test). Per thread, since a budget belongs to one
// loop's thread.
std::shared_ptr<memory_budget> thread_budget() {
  thread_local auto budget = std::make_shared<memory_budget>();
  return budget;
}

// The deliveries of this thread paused for the budget, oldest first, and
// how many pool jobs of this thread's deliveries run (each frees memory
// when it is done). Loop thread only, like the budget.
struct budget_queue {
  pooled_delivery* head = nullptr;
  pooled_delivery* tail = nullptr;
  std::size_t jobs = 0;
  // Room promised to sessions woken but not written yet (wake_room each):
  // counted as used, so that one wake-up of many cannot overshoot the budget
  // by a read per session woken.
  std::size_t reserved = 0;
  bool waking = false;
};
thread_local budget_queue queue;

}  // namespace

namespace detail {

// One folder's (or filesystem's) group commit, on one loop: at most one
// sync job at a time, for the cohort that joined before it began. The
// cohort is taken when the job begins on its pool thread, not when it is
// queued: deliveries that join while it waits in the pool's queue behind
// others' jobs (their links made) are covered too.
struct sync_group {
  using member = std::pair<pooled_delivery*, std::size_t>;  // delivery, its request

  sync_group(sync_kind k, dev_t d, std::string p, uv_loop_t* l, std::string name)
      : kind(k), dev(d), path(std::move(p)), loop(l), key(std::move(name)) {}
  sync_group(const sync_group&) = delete;
  sync_group& operator=(const sync_group&) = delete;

  sync_kind kind;
  dev_t dev;
  std::string path;
  uv_loop_t* loop;
  std::string key;              // in the map of groups
  std::mutex mutex;             // guards waiting, and cohort while it is swapped
  std::vector<member> waiting;  // joined since the running sync began
  std::vector<member> cohort;   // covered by the running sync
  int error = 0;                // the running sync's result
  bool running = false;         // a job is queued or runs (loop thread)
  bool draining = false;        // after_work is handing results out: start later
  uv_work_t req{};

  // False when there is no memory to wait here.
  [[nodiscard]] bool join(pooled_delivery* d, std::size_t i) noexcept;
  void start();
  static void work_cb(uv_work_t* req) noexcept;
  static void after_work_cb(uv_work_t* req, int status) noexcept;
};

namespace {

// The groups of this thread's loop, by key ("d" + folder, or "f" + st_dev).
// A group lives while deliveries wait in it or its sync runs, so there are
// at most as many as deliveries in the stage.
thread_local std::unordered_map<std::string, std::unique_ptr<sync_group>> groups;

std::string key_of(sync_kind kind, dev_t dev, const std::string& path) {
  return kind == sync_kind::dir ? "d" + path : "f" + std::to_string(dev);
}

}  // namespace

bool sync_group::join(pooled_delivery* d, std::size_t i) noexcept {
  {
    std::lock_guard<std::mutex> lock(mutex);
    try {
      waiting.emplace_back(d, i);
    } catch (...) {
      return false;
    }
  }
  if (!running && !draining) start();
  return true;
}

void sync_group::start() {
  running = true;
  req.data = this;
  uv_queue_work(loop, &req, work_cb, after_work_cb);
}

void sync_group::work_cb(uv_work_t* req) noexcept {
  auto* g = static_cast<sync_group*>(req->data);
  {
    // Every delivery in waiting has made its links: the sync begins after.
    std::lock_guard<std::mutex> lock(g->mutex);
    g->cohort.swap(g->waiting);
  }
  g->error = run_sync(g->kind, g->dev, g->path);
  // A delivery that waits for this sync only (sync_inline_) gets its
  // after_sync() run here, right after the sync: no job of its own.
  for (auto& [d, i] : g->cohort) {
    if (!d->sync_inline_) continue;
    d->syncing_[i].error = g->error;
    d->after_sync(d->syncing_, d->outcomes_);
  }
}

void sync_group::after_work_cb(uv_work_t* req, int) noexcept {
  auto* g = static_cast<sync_group*>(req->data);
  g->running = false;
  // Deliveries handed their result may join again (a second sync), here or
  // elsewhere: this group's next sync starts once all of this cohort has
  // had its turn, so that it covers every one that joins.
  g->draining = true;
  std::vector<member> done;
  {
    std::lock_guard<std::mutex> lock(g->mutex);
    done.swap(g->cohort);
  }
  for (auto& [d, i] : done) {
    if (d->sync_inline_) {
      d->sync_pending_ = 0;
      d->synced();
      continue;
    }
    d->syncing_[i].error = g->error;
    // Its last sync: after_sync() gets a job of its own (a delivery that
    // waited for several folders, which rarely happens).
    if (--d->sync_pending_ == 0) d->start(pooled_delivery::job::after_sync);
  }
  g->draining = false;
  bool more = false;
  {
    std::lock_guard<std::mutex> lock(g->mutex);
    more = !g->waiting.empty();
    done.clear();
    g->cohort.swap(done);  // keep the memory for the next cohort
  }
  if (more) return g->start();
  std::string key = std::move(g->key);  // not a reference into what erase frees
  groups.erase(key);
}

}  // namespace detail

store_outcome outcome_of(int error) noexcept {
  if (error == 0) return {store_result::stored, 0};
  if (error == ENOSPC || error == EDQUOT) return {store_result::no_space, error};
  return {store_result::temporary_fail, error};
}

std::size_t pooled_delivery::in_sync_stage(sync_kind kind, dev_t dev, const std::string& path) {
  auto it = detail::groups.find(detail::key_of(kind, dev, path));
  if (it == detail::groups.end()) return 0;
  std::lock_guard<std::mutex> lock(it->second->mutex);
  return it->second->waiting.size() + it->second->cohort.size();
}

std::size_t pooled_delivery::sync_groups() noexcept {
  return detail::groups.size();
}

void pooled_delivery::need_sync(sync_kind kind, dev_t dev, std::string path, std::size_t tag) {
  requests_.push_back({kind, dev, std::move(path), tag, 0});
}

void pooled_delivery::after_sync(std::vector<sync_request>& done,
                                 std::vector<store_outcome>& outcomes) noexcept {
  int e = 0;
  for (const auto& r : done)
    if (r.error && !e) e = r.error;
  std::fill(outcomes.begin(), outcomes.end(), outcome_of(e));
}

pooled_delivery::pooled_delivery(uv_loop_t* loop, delivery_listener& listener,
                                 std::size_t recipients, std::shared_ptr<memory_budget> budget)
    : loop_(loop),
      listener_(&listener),
      budget_(budget ? std::move(budget) : thread_budget()),
      outcomes_(recipients) {
  req_.data = this;
}

pooled_delivery::~pooled_delivery() {
  leave_queue();
  unreserve();
  budget_->used -= counted_;
}

// Counts what this delivery holds now in the shared budget. The capacity,
// not the size: that is the memory taken.
void pooled_delivery::count() noexcept {
  std::size_t now = held(pending_) + batch_held_;
  budget_->used = budget_->used - counted_ + now;
  counted_ = now;
}

void pooled_delivery::unreserve() noexcept {
  if (!reserved_) return;
  reserved_ = false;
  queue.reserved -= wake_room;
}

bool pooled_delivery::write(std::string_view bytes) {
  unreserve();  // What was promised is here now, counted below.
  append(pending_, bytes);
  count();
  if (!should_stage()) return true;
  if (!busy_) {
    start(job::stage);
    // While the budget is spent, one read at a time: the session reads on
    // once this is staged and the budget has room (wake_queued).
    paused_ = over_budget();
    return !paused_;
  }
  // A job of ours runs. Pause the session when a second batch is full, or
  // while the budget is spent: it hands over what it already read, then
  // reads no more until our job is done.
  paused_ = pending_.size() >= 2 * flush_bytes || over_budget();
  return !paused_;
}

void pooled_delivery::commit() {
  leave_queue();
  unreserve();
  committing_ = true;
  if (!busy_) start(job::finish);
}

void pooled_delivery::abort() noexcept {
  listener_ = nullptr;
  leave_queue();
  unreserve();
  if (waiting_) {
    // Waiting for a lock: nothing is written anywhere, so nothing to undo.
    uv_timer_stop(&timer_);
    waiting_ = false;
  }
  if (busy_) return;  // after_work drops it, and wakes who may read on.
  drop();
  // What it held is free: a session that timed out or left may be the last
  // holder, and no job may be left whose end would wake the queue.
  wake_queued();
}

void pooled_delivery::drop() noexcept {
  if (!staged()) return destroy();
  start(job::discard);
}

// Frees the object, after closing its timer if it has one (a libuv handle
// may be freed only in its close callback).
void pooled_delivery::destroy() noexcept {
  leave_queue();
  unreserve();
  budget_->used -= counted_;
  counted_ = 0;
  if (!timer_open_) {
    delete this;
    return;
  }
  uv_close(reinterpret_cast<uv_handle_t*>(&timer_), close_cb);
}

void pooled_delivery::close_cb(uv_handle_t* handle) noexcept {
  delete static_cast<pooled_delivery*>(handle->data);
}

void pooled_delivery::start(job j) {
  job_ = j;
  // No job runs, so batch_ is empty (work_cb released it).
  batch_.swap(pending_);
  batch_held_ = held(batch_);
  busy_ = true;
  ++queue.jobs;
  count();
  uv_queue_work(loop_, &req_, work_cb, after_work_cb);
}

void pooled_delivery::work_cb(uv_work_t* req) noexcept {
  auto* self = static_cast<pooled_delivery*>(req->data);
  switch (self->job_) {
    case job::stage: self->stage(self->batch_); break;
    case job::finish: self->finish(self->batch_, self->outcomes_); break;
    case job::discard: self->discard(); break;
    case job::after_sync: self->after_sync(self->syncing_, self->outcomes_); break;
  }
  // The memory goes back now, here; the budget hears of it in after_work.
  std::string().swap(self->batch_);
}

void pooled_delivery::after_work_cb(uv_work_t* req, int) noexcept {
  --queue.jobs;
  // The delivery may be gone after after_work(); the memory it let go may
  // let others read again.
  static_cast<pooled_delivery*>(req->data)->after_work();
  wake_queued();
}

void pooled_delivery::after_work() noexcept {
  busy_ = false;
  batch_held_ = 0;
  count();
  switch (job_) {
    case job::finish:
      if (std::exchange(retry_, false)) {
        if (!listener_) return drop();
        return wait_for_lock();
      }
      return synced();
    case job::after_sync: return synced();
    case job::discard: return destroy();
    case job::stage: break;
  }
  if (!listener_) return drop();
  if (committing_) return start(job::finish);
  if (should_stage()) start(job::stage);
  // Paused: read on when the budget has room (wake_queued, right after).
  if (paused_ && pending_.size() < 2 * flush_bytes) queue_for_budget();
}

// After finish() or after_sync(): the syncs it asked for, or the outcome.
// Once in the stage the message may be on its way to new/, so an abort()
// meanwhile does not take it back: like a finish job that ran, the stage
// ends on its own, and the outcome then goes nowhere.
void pooled_delivery::synced() noexcept {
  if (!requests_.empty()) return enter_sync_stage();
  busy_ = false;
  if (listener_) listener_->committed(outcomes_);
  destroy();
}

void pooled_delivery::enter_sync_stage() noexcept {
  // busy_ stays set: abort() waits for the stage to end.
  busy_ = true;
  syncing_.swap(requests_);
  requests_.clear();
  const std::size_t n = syncing_.size();
  sync_pending_ = n;
  // Waiting for one sync only, after_sync() runs in that sync's job (read
  // there on the pool: set before join(), whose lock orders the two).
  sync_inline_ = n == 1;
  // Once the last one has joined, its group's job may already run this
  // delivery's after_sync() on the pool: nothing here touches it after that.
  for (std::size_t i = 0; i < n; ++i) {
    const sync_request& r = syncing_[i];
    detail::sync_group* g = nullptr;
    try {
      std::string key = detail::key_of(r.kind, r.dev, r.path);
      auto& slot = detail::groups[key];
      if (!slot) {
        slot = std::make_unique<detail::sync_group>(r.kind, r.dev, r.path, loop_, key);
      }
      g = slot.get();
    } catch (...) {
      g = nullptr;
    }
    if (g && g->join(this, i)) continue;
    // No memory for the group: this sync cannot be waited for, so it fails
    // (the sender retries), and after_sync() gets a job of its own.
    syncing_[i].error = ENOMEM;
    if (n == 1) sync_inline_ = false;
    if (--sync_pending_ == 0) start(job::after_sync);
  }
}

void pooled_delivery::queue_for_budget() noexcept {
  if (queued_) return;
  queued_ = true;
  queue_prev_ = queue.tail;
  queue_next_ = nullptr;
  (queue.tail ? queue.tail->queue_next_ : queue.head) = this;
  queue.tail = this;
}

void pooled_delivery::leave_queue() noexcept {
  if (!queued_) return;
  queued_ = false;
  (queue_prev_ ? queue_prev_->queue_next_ : queue.head) = queue_next_;
  (queue_next_ ? queue_next_->queue_prev_ : queue.tail) = queue_prev_;
  queue_prev_ = queue_next_ = nullptr;
}

// Wakes paused deliveries, oldest first, while their budget has room for
// what each may bring (one read). When no job is left that would free
// memory, one is woken whatever the budget says: the memory is then held by
// sessions that are not sending, and waiting for them could take forever.
void pooled_delivery::wake_queued() noexcept {
  // A session woken below may abort its delivery, which calls this again:
  // the walk already under way goes on instead.
  if (queue.waking) return;
  queue.waking = true;
  while (pooled_delivery* d = queue.head) {
    const memory_budget& b = *d->budget_;
    bool room = b.used + queue.reserved + wake_room <= b.limit;
    if (!room && queue.jobs > 0) break;
    d->leave_queue();
    d->paused_ = false;
    if (room) {
      d->reserved_ = true;
      queue.reserved += wake_room;
    }
    // The session may write, commit or abort in this call: d may be gone.
    d->listener_->writable();
    if (!room) break;
  }
  queue.waking = false;
}

// A lock was held by someone else: try again from a loop timer, a little
// later each time, until lock_patience_ms have passed since the first try.
void pooled_delivery::wait_for_lock() noexcept {
  std::uint64_t now = uv_now(loop_);
  if (!timer_open_) {
    uv_timer_init(loop_, &timer_);
    timer_.data = this;
    timer_open_ = true;
    busy_since_ = now;
  }
  std::uint64_t waited = now - busy_since_;
  if (waited >= lock_patience_ms) {
    // Nothing was written: the sender retries later (451 4.3.0).
    std::fill(outcomes_.begin(), outcomes_.end(), outcome_of(EAGAIN));
    listener_->committed(outcomes_);
    return destroy();
  }
  std::uint64_t delay = std::min(retry_ms_, lock_patience_ms - waited);
  retry_ms_ = std::min(retry_ms_ + retry_ms_ / 4, lock_retry_max_ms);
  waiting_ = true;
  uv_timer_start(&timer_, timer_cb, delay, 0);
}

void pooled_delivery::timer_cb(uv_timer_t* timer) noexcept {
  auto* self = static_cast<pooled_delivery*>(timer->data);
  self->waiting_ = false;
  self->start(job::finish);
}

}  // namespace inboxd::store
