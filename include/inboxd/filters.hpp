// inboxd/filters.hpp: the filters that come with inboxd (filter.hpp).
//
// Each runs on the loop it was made with; every connection it makes is a
// libuv handle on that loop, and no call blocks.
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "inboxd/filter.hpp"
#include "inboxd/log.hpp"
#include "inboxd/sinks.hpp"

typedef struct uv_loop_s uv_loop_t;

namespace inboxd {

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
