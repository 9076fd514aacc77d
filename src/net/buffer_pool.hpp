// net/buffer_pool.hpp: read buffers, lent to connections while they have input.
//
// An idle connection holds no buffer (docs/DESIGN.md, rule 4): it takes one
// from the pool in libuv's alloc callback and gives it back as soon as every
// byte in it was consumed. The pool keeps a bounded number of free buffers.
#pragma once

#include <cstddef>
#include <vector>

namespace inboxd::net {

class buffer_pool {
 public:
  static constexpr std::size_t buffer_size = 64 * 1024;
  static constexpr std::size_t max_free = 256;

  // Room for every free buffer up front, so that give_back() never allocates.
  buffer_pool() { free_.reserve(max_free); }
  buffer_pool(const buffer_pool&) = delete;
  buffer_pool& operator=(const buffer_pool&) = delete;
  ~buffer_pool() {
    for (char* b : free_) delete[] b;
  }

  [[nodiscard]] char* take() {
    if (free_.empty()) return new char[buffer_size];
    char* b = free_.back();
    free_.pop_back();
    return b;
  }

  void give_back(char* b) {
    if (free_.size() < max_free)
      free_.push_back(b);
    else
      delete[] b;
  }

 private:
  std::vector<char*> free_;
};

}  // namespace inboxd::net
