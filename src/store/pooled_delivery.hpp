// store/pooled_delivery.hpp: the part every file-backed delivery shares.
//
// Message bytes gather in `pending_` on the loop thread. Past flush_bytes, one
// pool job stages them (writes them to a file) while the next ones gather;
// when a second batch fills before the first is staged, write() asks the
// session to pause until writable(). commit() runs one last pool job that
// makes the message durable and fills one outcome per recipient. A small
// message costs that one job in all. Nothing here runs file I/O on the loop.
//
// Lifetime: the object frees itself, after committed() or, once aborted,
// after its last pool job. A derived class keeps all it needs in itself: it
// must not use its sink after abort() (sink.hpp).
#pragma once

#include <uv.h>

#include <string>
#include <vector>

#include "inboxd/sink.hpp"

namespace inboxd::store {

class pooled_delivery : public delivery {
 public:
  static constexpr std::size_t flush_bytes = 256 * 1024;

  bool write(std::string_view bytes) final;
  void commit() final;
  void abort() noexcept final;

 protected:
  pooled_delivery(uv_loop_t* loop, delivery_listener& listener, std::size_t recipients);
  virtual ~pooled_delivery() = default;

  // Loop thread: adds message bytes to the batch (a sink may transform them).
  virtual void append(std::string& batch, std::string_view bytes) { batch.append(bytes); }

  // Pool thread. stage() writes a batch to the staging area; finish() gets
  // the last batch and makes the message durable for every recipient,
  // filling outcomes; discard() removes whatever was staged. Each records
  // its first failure in error_ (an errno value).
  virtual void stage(const std::string& batch) noexcept = 0;
  virtual void finish(const std::string& batch, std::vector<store_outcome>& outcomes) noexcept = 0;
  virtual void discard() noexcept = 0;
  // Loop thread, when no job runs: whether discard() has anything to do.
  [[nodiscard]] virtual bool staged() const noexcept = 0;

  int error_ = 0;

 private:
  enum class job : unsigned char { stage, finish, discard };

  void start(job j);
  void drop() noexcept;
  void after_work() noexcept;
  static void work_cb(uv_work_t* req) noexcept;
  static void after_work_cb(uv_work_t* req, int status) noexcept;

  uv_loop_t* loop_;
  delivery_listener* listener_;  // null once aborted
  std::vector<store_outcome> outcomes_;
  std::string pending_;  // loop thread only
  std::string batch_;    // the pool job's, while busy_
  uv_work_t req_{};
  job job_ = job::stage;
  bool busy_ = false;
  bool paused_ = false;
  bool committing_ = false;
};

// Classifies an errno value for the session: ENOSPC and EDQUOT are "no space".
[[nodiscard]] store_outcome outcome_of(int error) noexcept;

}  // namespace inboxd::store
