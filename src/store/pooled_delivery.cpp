#include "store/pooled_delivery.hpp"

#include <algorithm>
#include <cerrno>
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

}  // namespace

store_outcome outcome_of(int error) noexcept {
  if (error == 0) return {store_result::stored, 0};
  if (error == ENOSPC || error == EDQUOT) return {store_result::no_space, error};
  return {store_result::temporary_fail, error};
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
  budget_->used -= counted_;
}

// Counts what this delivery holds now in the shared budget. The capacity,
// not the size: that is the memory taken.
void pooled_delivery::count() noexcept {
  std::size_t now = held(pending_) + batch_held_;
  budget_->used = budget_->used - counted_ + now;
  counted_ = now;
}

bool pooled_delivery::write(std::string_view bytes) {
  append(pending_, bytes);
  count();
  if (!should_stage()) return true;
  if (!busy_) {
    start(job::stage);
    return true;
  }
  // A job of ours runs. Pause the session when a second batch is full, or
  // while the budget is spent: it hands over what it already read, then
  // reads no more until our job is done (after_work wakes it).
  paused_ = pending_.size() >= 2 * flush_bytes || over_budget();
  return !paused_;
}

void pooled_delivery::commit() {
  committing_ = true;
  if (!busy_) start(job::finish);
}

void pooled_delivery::abort() noexcept {
  listener_ = nullptr;
  if (waiting_) {
    // Waiting for a lock: nothing is written anywhere, so nothing to undo.
    uv_timer_stop(&timer_);
    waiting_ = false;
  }
  if (!busy_) drop();
}

void pooled_delivery::drop() noexcept {
  if (!staged()) return destroy();
  start(job::discard);
}

// Frees the object, after closing its timer if it has one (a libuv handle
// may be freed only in its close callback).
void pooled_delivery::destroy() noexcept {
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
  count();
  uv_queue_work(loop_, &req_, work_cb, after_work_cb);
}

void pooled_delivery::work_cb(uv_work_t* req) noexcept {
  auto* self = static_cast<pooled_delivery*>(req->data);
  switch (self->job_) {
    case job::stage: self->stage(self->batch_); break;
    case job::finish: self->finish(self->batch_, self->outcomes_); break;
    case job::discard: self->discard(); break;
  }
  // The memory goes back now, here; the budget hears of it in after_work.
  std::string().swap(self->batch_);
}

void pooled_delivery::after_work_cb(uv_work_t* req, int) noexcept {
  static_cast<pooled_delivery*>(req->data)->after_work();
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
      if (listener_) listener_->committed(outcomes_);
      return destroy();
    case job::discard: return destroy();
    case job::stage: break;
  }
  if (!listener_) return drop();
  if (committing_) return start(job::finish);
  if (should_stage()) start(job::stage);
  if (paused_ && pending_.size() < 2 * flush_bytes) {
    paused_ = false;
    // Last: the session may write, commit or abort in this call.
    listener_->writable();
  }
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
