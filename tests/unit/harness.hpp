// tests/unit/harness.hpp: test doubles for driving the sans-I/O SMTP core.
//
// memory_sink records what the session hands a sink and completes commits as
// a test asks; event_recorder records the session's events; test_connection
// plays the part of net/connection: it keeps the bytes the session did not
// consume and passes them again, with the next bytes after them, as
// connection::run() does. dribbles() gives every way the tests split input.
#pragma once

#include <doctest/doctest.h>

#include <cstddef>
#include <limits>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "inboxd/config.hpp"
#include "inboxd/filter.hpp"
#include "inboxd/sink.hpp"
#include "proto/session.hpp"

namespace inboxd::test {

// The bytes with CR, LF, TAB and other controls written as escapes, for messages.
[[nodiscard]] std::string printable(std::string_view bytes);

// Every way a dribbling client may deliver bytes: in two pieces split at each
// byte boundary, then one byte at a time. The views borrow from bytes.
[[nodiscard]] std::vector<std::vector<std::string_view>> dribbles(std::string_view bytes);

// Runs run(pieces) on the whole input, then on every dribble of it, and checks
// that each dribble gives what the whole gave (reporting the first that does
// not). Returns the result for the whole input.
template <class Run>
auto same_when_dribbled(std::string_view bytes, Run run) {
  auto whole = run(std::vector<std::string_view>{bytes});
  for (const auto& pieces : dribbles(bytes)) {
    auto got = run(pieces);
    if (got == whole) continue;
    INFO("fed as ", pieces.size() == 2 ? printable(pieces[0]) + " | " + printable(pieces[1])
                                       : std::string("one byte at a time"));
    CHECK(got == whole);
    break;
  }
  return whole;
}

// A sink that keeps every message in memory.
class memory_sink final : public sink {
 public:
  enum class commit_mode {
    now,    // committed() runs inside commit()
    later,  // committed() runs when the test calls complete()
  };

  struct message {
    std::string queue_id, client_address, helo, reverse_path;
    std::vector<std::string> recipients;  // the RCPT addresses, one per mailbox
    std::vector<std::string> mailboxes;   // "user@domain" as the policy resolved them
    bool esmtp = false;
    bool body_8bit = false;
    bool body_binary = false;
    bool independent_outcomes = false;
    std::string bytes;  // everything written, the trace header first
    int writes = 0;
    bool committed = false;
    bool aborted = false;

    // The first header field (the Received: trace), with its continuation lines.
    [[nodiscard]] std::string_view trace() const;
    // What follows the trace header.
    [[nodiscard]] std::string_view body() const;
  };

  memory_sink();
  ~memory_sink() override;

  commit_mode mode = commit_mode::now;
  // The outcome per recipient; the last entry repeats; empty means all stored.
  std::vector<store_result> results;
  // What every outcome says another program answered (store_outcome::reply).
  std::string reply;
  // At most this many outcomes are reported (a sink out of memory gives fewer).
  std::size_t outcomes = std::numeric_limits<std::size_t>::max();
  // write() returns false from this call on (1-based, per message).
  int pause_from_write = std::numeric_limits<int>::max();
  // An embedder's sink that throws: at the next begin(), write() or commit(),
  // once (then none again).
  enum class throw_at { none, begin, write, commit };
  throw_at throws = throw_at::none;

  std::vector<message> messages;
  // The session wrote to or committed a delivery after commit() or abort().
  bool misuse = false;
  // The session wrote again after write() returned false, before writable().
  bool wrote_while_paused = false;

  delivery* begin(const envelope& env, delivery_listener& listener) override;

  // A commit waits for complete() (commit_mode::later only).
  [[nodiscard]] bool commit_pending() const;
  // Runs the committed() callback of the waiting commit.
  void complete();
  // Calls writable() on the open delivery, as a sink does once it has drained.
  void resume();
  // A delivery is open (begun, neither committed nor aborted).
  [[nodiscard]] bool delivery_open() const { return open_ != nullptr; }

 private:
  class record;
  void maybe_throw(throw_at where);
  record* open_ = nullptr;  // the delivery not yet committed or aborted
  std::vector<std::unique_ptr<record>> records_;
};

class test_connection;

// Records the events a session sends its connection.
class event_recorder final : public proto::session_events {
 public:
  int ready = 0;
  std::vector<std::string> log;
  test_connection* conn = nullptr;  // fed again on session_ready()

  void session_ready() noexcept override;
  void session_log(log_level level, std::string_view line) noexcept override;
  // Records the delay asked for; the test calls session.wake() itself.
  void session_sleep(std::uint32_t milliseconds) noexcept override;
  std::vector<std::uint32_t> sleeps;
};

// One session with its sink, events and input buffer.
class test_connection {
 public:
  explicit test_connection(session_config cfg = {}, recipient_rules rules = {},
                           std::vector<std::shared_ptr<filter>> filters = {});
  test_connection(const test_connection&) = delete;
  test_connection& operator=(const test_connection&) = delete;

  // Appends bytes read from the client to the input and feeds it.
  void send(std::string_view bytes);
  // Feeds the unconsumed input, unless the session waits or closes.
  void pump();
  // Makes the session an LMTP one, with the LMTP greeting instead of the SMTP one.
  void restart_as_lmtp();
  // Returns the replies so far and clears them.
  [[nodiscard]] std::string take();

  std::shared_ptr<memory_sink> sink_owner = std::make_shared<memory_sink>();
  memory_sink& sink = *sink_owner;
  proto::settings_ptr settings;
  event_recorder events;
  proto::queue_id_source ids{0x12345678, 0x4242};
  proto::session session;
  std::string input;  // read from the client, not yet consumed
};

// Splits replies at CRLF, without the CRLFs.
[[nodiscard]] std::vector<std::string> reply_lines(std::string_view out);

}  // namespace inboxd::test
