// inboxd/filters.hpp: the filters that come with inboxd (filter.hpp).
//
// Each works on the loop it was made with, without blocking it: every
// connection it makes is a libuv handle on that loop. A filter may be made
// on another thread (a reload reads its config on libuv's pool) but is
// used, and destroyed, on the loop thread only.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>

#include "inboxd/filter.hpp"
#include "inboxd/log.hpp"
#include "inboxd/sinks.hpp"

typedef struct uv_loop_s uv_loop_t;

namespace inboxd {

// Policy services

// A client of Postfix's policy delegation protocol (SMTPD_POLICY_README),
// asked at each RCPT and, with at_data, at the end of each message (its
// protocol_state END-OF-MESSAGE); the answers are access(5) actions. The
// defaults are Postfix's smtpd_policy_service_* parameters.
struct policy_options {
  // "127.0.0.1:10023", "[::1]:10023", "inet:127.0.0.1:10023" or
  // "unix:/path": an IP address, since the loop does not wait on DNS.
  std::string address;
  bool at_data = false;  // also ask at the end of the message
  // For connecting, writing the request and reading the answer, each.
  std::chrono::milliseconds timeout{100'000};
  unsigned try_limit = 2;  // attempts per request, a new connection each
  // What a request that failed every attempt gets, as an answer would.
  std::string default_action = "451 4.3.5 Server configuration problem";
  // A connection is kept for the next request (of any session) until it
  // has been idle this long, has lived max_ttl, or served request_limit
  // requests (0: no limit).
  std::chrono::milliseconds max_idle{300'000};
  std::chrono::milliseconds max_ttl{1'000'000};
  std::size_t request_limit = 0;
  logger log = {};  // for failures and end-of-message answers; null: stderr
};

// Whether address has one of the forms above; false with why in error.
[[nodiscard]] bool check_policy_address(std::string_view address, std::string& error);

// Makes the filter; it connects when first asked. Its connections are
// shared by every session it opens, one request at a time each. When the
// filter is destroyed (a reload gave new connections new filters) the
// connections it keeps idle are closed, and the others once their request
// is done.
[[nodiscard]] std::shared_ptr<filter> make_policy_filter(uv_loop_t* loop, policy_options options);

// Closes the idle connections of every policy filter of the loop and keeps
// none from now on: call it when the server has drained, so that the loop
// ends (their handles would keep it running until max_idle).
void close_policy_connections(uv_loop_t* loop) noexcept;

// Milters

// A Sendmail milter (protocol version 6), as Postfix's smtpd_milters uses
// one: a connection per SMTP session, the steps and actions the milter
// negotiates, its replies applied as Postfix's MILTER_README describes.
struct milter_options {
  // "HOST:PORT", "inet:HOST:PORT", "[IPV6]:PORT" or "unix:PATH".
  std::string address = {};
  // Postfix's milter_connect_timeout, milter_command_timeout and
  // milter_content_timeout (the message's headers, body and its end).
  std::uint32_t connect_timeout_ms = 30'000;
  std::uint32_t command_timeout_ms = 30'000;
  std::uint32_t content_timeout_ms = 300'000;
  // milter_default_action: what happens when the milter cannot be reached,
  // times out or breaks the protocol. tempfail: every later command of the
  // session (and the message) gets 451 4.7.1; accept: the milter is left
  // out for the rest of the session.
  bool accept_on_failure = false;
  // The message is held for the milter until its end-of-message reply:
  // in memory within this budget (shared with the sinks), past it in an
  // unnamed file in spool_dir, written on the thread pool.
  std::shared_ptr<memory_budget> memory = {};
  std::string spool_dir = "/tmp";
  // Where what a milter did to a message is logged (added headers, changed
  // recipients, quarantine); the session logs the verdicts themselves.
  logger log = stderr_logger();
};

// Checks the address's form; error says what is wrong.
[[nodiscard]] bool valid_milter_address(const std::string& address, std::string& error);

std::shared_ptr<filter> make_milter(uv_loop_t* loop, milter_options options);

}  // namespace inboxd
