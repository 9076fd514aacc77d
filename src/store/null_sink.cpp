#include <vector>

#include "inboxd/sinks.hpp"

namespace inboxd {

class null_delivery final : public delivery {
 public:
  explicit null_delivery(null_sink& sink) : sink_(sink) {}

  void start(delivery_listener& listener, std::size_t recipients) {
    listener_ = &listener;
    results_.assign(recipients, store_outcome{});
    bytes_ = 0;
  }
  bool write(std::string_view bytes) override {
    bytes_ += bytes.size();
    return true;
  }
  void commit() override {
    ++sink_.messages_;
    sink_.bytes_ += bytes_;
    listener_->committed(results_);
    done();
  }
  void abort() noexcept override { done(); }

 private:
  friend class null_sink;
  ~null_delivery() = default;

  // Back to the sink's spares: at most a few hundred are kept (as many as
  // were in flight at once, bounded), the rest are freed.
  void done() noexcept {
    constexpr std::size_t max_spare = 256;
    if (results_.capacity() > 64 || sink_.spare_.size() >= max_spare) {
      delete this;
      return;
    }
    try {
      sink_.spare_.push_back(this);
    } catch (...) {
      delete this;
    }
  }

  null_sink& sink_;
  delivery_listener* listener_ = nullptr;
  std::vector<store_outcome> results_;
  std::uint64_t bytes_ = 0;
};

null_sink::~null_sink() {
  for (null_delivery* d : spare_) delete d;
}

delivery* null_sink::begin(const envelope& env, delivery_listener& listener) {
  null_delivery* d;
  if (spare_.empty()) {
    d = new null_delivery(*this);
  } else {
    d = spare_.back();
    spare_.pop_back();
  }
  try {
    d->start(listener, env.recipients.size());
  } catch (...) {
    delete d;
    throw;
  }
  return d;
}

}  // namespace inboxd
