// relay/tee_sink.cpp: two sinks as one (sinks.hpp, make_tee_sink), for
// `--sink maildir --sink pipe`: store a copy and forward.
//
// The first sink is the hand-off: it commits first, and the second (the
// local store) commits only after every recipient of the first was stored,
// so no copy is kept of what the next hop refused. The tee holds the first's
// outcomes (their replies copied: they are borrowed for its callback only)
// until the second has answered.
#include <string>
#include <vector>

#include "inboxd/sinks.hpp"

namespace inboxd {
namespace {

// How bad an outcome is, in the order the session ranks them (a permanent
// failure beats a temporary one, which beats a full disk).
int rank(store_result r) {
  switch (r) {
    case store_result::stored: return 0;
    case store_result::no_space: return 1;
    case store_result::temporary_fail: return 2;
    case store_result::permanent_fail: return 3;
  }
  return 3;
}

class tee_delivery;

// One side of the tee: forwards its delivery's calls to the tee.
class side final : public delivery_listener {
 public:
  side(tee_delivery& tee, bool first) : tee_(tee), first_(first) {}
  void writable() noexcept override;
  void committed(std::span<const store_outcome> per_recipient) noexcept override;

  delivery* d = nullptr;  // null once it committed or was aborted
  bool paused = false;    // its last write() returned false, no writable() yet

 private:
  tee_delivery& tee_;
  bool first_;
};

class tee_delivery final : public delivery {
 public:
  // Begins the message on both sides; an embedder's sink may throw.
  static tee_delivery* make(sink& first, sink& second, const envelope& env,
                            delivery_listener& listener) {
    auto* d = new tee_delivery(listener, env.recipients.size());
    try {
      d->a_.d = first.begin(env, d->a_);
      d->b_.d = second.begin(env, d->b_);
    } catch (...) {
      if (d->a_.d) d->a_.d->abort();
      delete d;
      throw;
    }
    return d;
  }

  bool write(std::string_view bytes) override {
    // Each side takes the bytes either way; the tee pauses while one does.
    if (!a_.d->write(bytes)) a_.paused = true;
    if (!b_.d->write(bytes)) b_.paused = true;
    paused_ = a_.paused || b_.paused;
    return !paused_;
  }

  void commit() override {
    // a_'s callback may run inside commit(), and may end this delivery.
    a_.d->commit();
  }

  void abort() noexcept override {
    if (a_.d) a_.d->abort();
    if (b_.d) b_.d->abort();
    delete this;  // Neither side calls back after abort() (sink.hpp).
  }

  void writable(bool first) noexcept {
    (first ? a_ : b_).paused = false;
    if (paused_ && !a_.paused && !b_.paused) {
      paused_ = false;
      listener_.writable();
    }
  }

  void committed(bool first, std::span<const store_outcome> per_recipient) noexcept {
    if (first) return first_committed(per_recipient);
    b_.d = nullptr;
    for (std::size_t i = 0; i < out_.size(); ++i) {
      out_[i].reply = replies_[i];
      if (i < per_recipient.size() && rank(per_recipient[i].result) > rank(out_[i].result))
        out_[i] = per_recipient[i];
    }
    finish(out_);
  }

 private:
  // What is answered is made now: an answer needs no allocation.
  tee_delivery(delivery_listener& listener, std::size_t recipients)
      : listener_(listener), out_(recipients), replies_(recipients) {}
  ~tee_delivery() = default;

  void first_committed(std::span<const store_outcome> per_recipient) noexcept {
    a_.d = nullptr;
    bool all_stored = true;
    for (const store_outcome& o : per_recipient) all_stored &= o.result == store_result::stored;
    if (!all_stored || per_recipient.size() < out_.size()) {
      // Nothing of what the hop refused is kept: the local copy goes. Over
      // SMTP the message failed whole; over LMTP the recipients the hop
      // took have it there, and a 4xx for them would send it twice.
      b_.d->abort();
      b_.d = nullptr;
      return finish(per_recipient);
    }
    for (std::size_t i = 0; i < out_.size(); ++i) {
      out_[i] = i < per_recipient.size() ? per_recipient[i]
                                         : store_outcome{.result = store_result::temporary_fail};
      try {
        replies_[i].assign(out_[i].reply);  // Borrowed for this call only.
      } catch (...) {
        replies_[i].clear();  // No memory for the text: the outcome stands.
      }
    }
    // b_'s callback may run inside commit() and end this delivery.
    b_.d->commit();
  }

  void finish(std::span<const store_outcome> out) noexcept {
    listener_.committed(out);
    delete this;
  }

  delivery_listener& listener_;
  side a_{*this, true};
  side b_{*this, false};
  bool paused_ = false;
  std::vector<store_outcome> out_;    // the first's outcomes, then the answer
  std::vector<std::string> replies_;  // the first's replies, copied
};

void side::writable() noexcept {
  tee_.writable(first_);
}

void side::committed(std::span<const store_outcome> per_recipient) noexcept {
  tee_.committed(first_, per_recipient);
}

class tee_sink final : public sink {
 public:
  tee_sink(std::shared_ptr<sink> first, std::shared_ptr<sink> second)
      : first_(std::move(first)), second_(std::move(second)) {}

  delivery* begin(const envelope& env, delivery_listener& listener) override {
    return tee_delivery::make(*first_, *second_, env, listener);
  }
  [[nodiscard]] bool carries_dsn() const noexcept override { return first_->carries_dsn(); }

 private:
  std::shared_ptr<sink> first_;
  std::shared_ptr<sink> second_;
};

}  // namespace

std::unique_ptr<sink> make_tee_sink(std::shared_ptr<sink> first, std::shared_ptr<sink> second) {
  return std::make_unique<tee_sink>(std::move(first), std::move(second));
}

}  // namespace inboxd
