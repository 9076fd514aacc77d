#include "store/pooled_delivery.hpp"

#include <cerrno>

namespace inboxd::store {

store_outcome outcome_of(int error) noexcept {
  if (error == 0) return {store_result::stored, 0};
  if (error == ENOSPC || error == EDQUOT) return {store_result::no_space, error};
  return {store_result::temporary_fail, error};
}

pooled_delivery::pooled_delivery(uv_loop_t* loop, delivery_listener& listener,
                                 std::size_t recipients)
    : loop_(loop), listener_(&listener), outcomes_(recipients) {
  req_.data = this;
}

bool pooled_delivery::write(std::string_view bytes) {
  append(pending_, bytes);
  if (pending_.size() < flush_bytes) return true;
  if (!busy_) {
    start(job::stage);
    return true;
  }
  paused_ = pending_.size() >= 2 * flush_bytes;
  return !paused_;
}

void pooled_delivery::commit() {
  committing_ = true;
  if (!busy_) start(job::finish);
}

void pooled_delivery::abort() noexcept {
  listener_ = nullptr;
  if (!busy_) drop();
}

void pooled_delivery::drop() noexcept {
  if (!staged()) {
    delete this;
    return;
  }
  start(job::discard);
}

void pooled_delivery::start(job j) {
  job_ = j;
  batch_.swap(pending_);
  pending_.clear();
  busy_ = true;
  uv_queue_work(loop_, &req_, work_cb, after_work_cb);
}

void pooled_delivery::work_cb(uv_work_t* req) noexcept {
  auto* self = static_cast<pooled_delivery*>(req->data);
  switch (self->job_) {
    case job::stage: self->stage(self->batch_); break;
    case job::finish: self->finish(self->batch_, self->outcomes_); break;
    case job::discard: self->discard(); break;
  }
  self->batch_.clear();
}

void pooled_delivery::after_work_cb(uv_work_t* req, int) noexcept {
  static_cast<pooled_delivery*>(req->data)->after_work();
}

void pooled_delivery::after_work() noexcept {
  busy_ = false;
  if (job_ == job::finish || job_ == job::discard) {
    if (listener_ && job_ == job::finish) listener_->committed(outcomes_);
    delete this;
    return;
  }
  if (!listener_) return drop();
  if (committing_) return start(job::finish);
  if (pending_.size() >= flush_bytes) start(job::stage);
  if (paused_ && pending_.size() < 2 * flush_bytes) {
    paused_ = false;
    listener_->writable();
  }
}

}  // namespace inboxd::store
