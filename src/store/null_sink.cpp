#include <vector>

#include "inboxd/sinks.hpp"

namespace inboxd {

class null_delivery final : public delivery {
 public:
  null_delivery(null_sink& sink, delivery_listener& listener, std::size_t recipients)
      : sink_(sink), listener_(listener), results_(recipients) {}

  bool write(std::string_view bytes) override {
    bytes_ += bytes.size();
    return true;
  }
  void commit() override {
    ++sink_.messages_;
    sink_.bytes_ += bytes_;
    listener_.committed(results_);
    delete this;
  }
  void abort() noexcept override { delete this; }

 private:
  ~null_delivery() = default;
  null_sink& sink_;
  delivery_listener& listener_;
  std::vector<store_outcome> results_;
  std::uint64_t bytes_ = 0;
};

delivery* null_sink::begin(const envelope& env, delivery_listener& listener) {
  return new null_delivery(*this, listener, env.recipients.size());
}

}  // namespace inboxd
