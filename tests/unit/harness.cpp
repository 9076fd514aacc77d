#include "harness.hpp"

#include <stdexcept>

#include <fmt/format.h>

#include <algorithm>
#include <span>
#include <utility>

namespace inboxd::test {

std::string printable(std::string_view bytes) {
  std::string s;
  for (char c : bytes) {
    auto u = static_cast<unsigned char>(c);
    if (c == '\r')
      s += "\\r";
    else if (c == '\n')
      s += "\\n";
    else if (c == '\t')
      s += "\\t";
    else if (c == '\\')
      s += "\\\\";
    else if (u < 32 || u > 126)
      s += fmt::format("\\x{:02x}", u);
    else
      s += c;
  }
  return s;
}

std::vector<std::vector<std::string_view>> dribbles(std::string_view bytes) {
  std::vector<std::vector<std::string_view>> ways;
  for (std::size_t i = 1; i < bytes.size(); ++i)
    ways.push_back({bytes.substr(0, i), bytes.substr(i)});
  std::vector<std::string_view> one_by_one;
  for (std::size_t i = 0; i < bytes.size(); ++i) one_by_one.push_back(bytes.substr(i, 1));
  ways.push_back(std::move(one_by_one));
  return ways;
}

std::vector<std::string> reply_lines(std::string_view out) {
  std::vector<std::string> lines;
  while (!out.empty()) {
    auto end = out.find("\r\n");
    lines.emplace_back(out.substr(0, end));
    out.remove_prefix(end == out.npos ? out.size() : end + 2);
  }
  return lines;
}

// memory_sink

std::string_view memory_sink::message::trace() const {
  std::string_view all = bytes;
  for (std::size_t lf = all.find('\n'); lf != all.npos; lf = all.find('\n', lf + 1))
    if (lf + 1 == all.size() || (all[lf + 1] != '\t' && all[lf + 1] != ' '))
      return all.substr(0, lf + 1);
  return all;
}

std::string_view memory_sink::message::body() const {
  return std::string_view(bytes).substr(trace().size());
}

class memory_sink::record final : public delivery {
 public:
  record(memory_sink& sink, std::size_t index, delivery_listener& listener)
      : sink_(sink), index_(index), listener_(listener) {}

  bool write(std::string_view bytes) override {
    sink_.maybe_throw(throw_at::write);
    message& m = sink_.messages[index_];
    check_open();
    if (paused_) sink_.wrote_while_paused = true;
    m.bytes.append(bytes);
    paused_ = ++m.writes >= sink_.pause_from_write;
    return !paused_;
  }

  void commit() override {
    sink_.maybe_throw(throw_at::commit);
    check_open();
    sink_.open_ = nullptr;
    committing_ = true;
    if (sink_.mode == commit_mode::now) finish();
  }

  void abort() noexcept override {
    sink_.messages[index_].aborted = true;
    committing_ = false;
    if (sink_.open_ == this) sink_.open_ = nullptr;
  }

  [[nodiscard]] bool committing() const { return committing_; }

  void finish() {
    committing_ = false;
    message& m = sink_.messages[index_];
    m.committed = true;
    std::vector<store_outcome> per_recipient;
    for (std::size_t i = 0; i < std::min(m.recipients.size(), sink_.outcomes); ++i) {
      if (sink_.results.empty())
        per_recipient.push_back({store_result::stored, 0, sink_.reply});
      else
        per_recipient.push_back(
            {sink_.results[std::min(i, sink_.results.size() - 1)], 0, sink_.reply});
    }
    listener_.committed(per_recipient);
  }

  void writable() {
    paused_ = false;
    listener_.writable();
  }

 private:
  // The session must not use a delivery after commit() or abort().
  void check_open() const {
    const message& m = sink_.messages[index_];
    if (m.aborted || m.committed || committing_) sink_.misuse = true;
  }

  memory_sink& sink_;
  std::size_t index_;
  delivery_listener& listener_;
  bool committing_ = false;
  bool paused_ = false;  // write() returned false and writable() has not come yet
};

memory_sink::memory_sink() = default;
memory_sink::~memory_sink() = default;

void memory_sink::maybe_throw(throw_at where) {
  if (throws != where) return;
  throws = throw_at::none;
  throw std::runtime_error("the test sink throws");
}

delivery* memory_sink::begin(const envelope& env, delivery_listener& listener) {
  maybe_throw(throw_at::begin);
  message m;
  m.queue_id = env.queue_id;
  m.client_address = env.client_address;
  m.helo = env.helo;
  m.reverse_path = env.reverse_path;
  for (const recipient& r : env.recipients) {
    m.recipients.push_back(r.address);
    m.mailboxes.push_back(r.user + "@" + r.domain);
  }
  m.esmtp = env.esmtp;
  m.body_8bit = env.body_8bit;
  m.body_binary = env.body_binary;
  m.independent_outcomes = env.independent_outcomes;
  messages.push_back(std::move(m));
  records_.push_back(std::make_unique<record>(*this, messages.size() - 1, listener));
  open_ = records_.back().get();
  return open_;
}

bool memory_sink::commit_pending() const {
  for (const auto& r : records_)
    if (r->committing()) return true;
  return false;
}

void memory_sink::complete() {
  for (const auto& r : records_)
    if (r->committing()) return r->finish();
}

void memory_sink::resume() {
  if (open_) open_->writable();
}

// event_recorder

void event_recorder::session_ready() noexcept {
  ++ready;
  if (conn) conn->pump();
}

void event_recorder::session_log(log_level, std::string_view line) noexcept {
  log.emplace_back(line);
}

void event_recorder::session_sleep(std::uint32_t milliseconds) noexcept {
  sleeps.push_back(milliseconds);
}

// test_connection

namespace {

proto::settings_ptr make_settings(session_config limits, recipient_rules rules,
                                  std::shared_ptr<sink> store,
                                  std::vector<std::shared_ptr<filter>> filters) {
  auto s = std::make_shared<proto::settings>();
  s->limits = std::move(limits);
  s->policy = make_rules_policy(std::move(rules));
  s->store = std::move(store);
  s->filters = std::move(filters);
  return s;
}

}  // namespace

test_connection::test_connection(session_config c, recipient_rules rules,
                                 std::vector<std::shared_ptr<filter>> filters)
    : settings(make_settings(std::move(c), std::move(rules), sink_owner, std::move(filters))),
      session(settings, events, ids, "192.0.2.1") {
  events.conn = this;
  session.start();
}

void test_connection::restart_as_lmtp() {
  session.output().clear();
  session.set_lmtp(true);
  session.start();
}

void test_connection::send(std::string_view bytes) {
  input.append(bytes);
  pump();
}

void test_connection::pump() {
  if (input.empty() || session.waiting() || session.closing()) return;
  std::size_t used = session.feed(std::span<char>(input.data(), input.size()));
  input.erase(0, used);
}

std::string test_connection::take() {
  return std::exchange(session.output(), {});
}

}  // namespace inboxd::test
