// net/server_state.hpp: what the listener and the connections of one server share.
#pragma once

#include <uv.h>

#include <fmt/format.h>
#include <charconv>
#include <iterator>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

#include "inboxd/server.hpp"
#include "net/buffer_pool.hpp"
#include "proto/session.hpp"

namespace inboxd::net {
class connection;
class listener;
class metrics_http;

// A network of --proxy-from or --xclient-from: "192.0.2.0/24",
// "2001:db8::/32", or one address (all its bits). parse_network() and
// in_networks() are in listener.hpp.
struct network {
  int family = 0;  // AF_INET or AF_INET6
  std::uint8_t bytes[16] = {};
  unsigned bits = 0;
};
}  // namespace inboxd::net

namespace inboxd {

struct server::state {
  uv_loop_t* loop;
  server_config config;
  proto::settings_ptr settings;  // the current snapshot; sessions copy it
  logger log;
  proto::queue_id_source ids;
  net::buffer_pool buffers;
  std::vector<net::listener*> listeners;
  // config.proxy_from and config.xclient_from, parsed (check_config).
  std::vector<net::network> proxy_from, xclient_from;
  net::connection* connections = nullptr;  // intrusive list, newest first
  std::size_t connection_count = 0;
  std::size_t admitted = 0;  // connections within the limits
  // config.max_connections, lowered to fit the open-files limit.
  std::size_t max_connections = 0;
  void fit_connection_limit();
  // Admitted connections per limit key (net::limit_key): an entry exists
  // only while a connection of that key is admitted, so the table holds at
  // most max_connections entries.
  std::unordered_map<std::string, std::size_t> per_ip;
  struct rate_window {
    std::uint64_t start = 0;  // uv_now() when this minute began
    std::size_t count = 0;
  };
  // New connections per limit key in its current minute. An entry is made
  // only for a client within the total and per-address limits; finished
  // minutes are dropped once the table has doubled since the last sweep, so
  // a sweep costs O(1) per connection, amortized, and the table holds at
  // most twice the keys admitted in the last minute (or 10,000).
  std::unordered_map<std::string, rate_window> rates;
  std::size_t rates_sweep_at = 10'000;

  // Connections in their lingering close (connection::linger): no longer
  // admitted, each closed within a bounded time, and at most this many at
  // once (past it a connection closes at once), so that they cannot use up
  // the descriptors kept in reserve beyond max_connections.
  std::size_t lingering = 0;
  std::size_t max_lingering = 1024;
  // Where lingering connections read what they discard. One buffer serves
  // them all: each read is dropped before the next alloc_cb.
  char discard[64 * 1024];
  std::uint64_t next_connection_id = 0;

  // What the server counts (inboxd/metrics.hpp), for its whole life.
  server_metrics metrics;
  // Brings the gauges of metrics up to date and returns it.
  const server_metrics& current_metrics() noexcept;
  net::metrics_http* metrics_http = nullptr;  // the --metrics listener; null: none
  // Once a second: how late the loop runs a timer is its lag.
  uv_timer_t lag_timer{};
  std::uint64_t lag_due = 0;  // uv_now() when the lag timer should run
  bool lag_timer_open = false;

  bool shutting_down = false;
  uv_timer_t drain_timer{};
  bool drain_timer_open = false;
  void (*done)(void*) = nullptr;
  void* done_ctx = nullptr;

  state(uv_loop_t* loop, server_config cfg, std::shared_ptr<inboxd::sink> sink, logger log);

  // Formats and writes one log line, into a buffer reused from line to
  // line: no string is made per line. Called from libuv callbacks, which are
  // noexcept: an embedder's logger that throws, or a line that cannot be
  // allocated, loses that line and nothing else. Should the logger log
  // through this server again (it is called with the buffer in use), the
  // inner line is formatted into a buffer of its own.
  template <typename... Args>
  void logf(log_level level, fmt::format_string<Args...> f, Args&&... args) noexcept {
    bool nested = std::exchange(log_line_in_use, true);
    try {
      fmt::memory_buffer own;
      fmt::memory_buffer& buf = nested ? own : log_line;
      buf.clear();
      fmt::format_to(std::back_inserter(buf), f, std::forward<Args>(args)...);
      log.write(log.ctx, level, {buf.data(), buf.size()});
    } catch (...) {
    }
    log_line_in_use = nested;
  }
  // A session's line with "conn=N " in front, appended rather than
  // formatted: it is logged for every message.
  void log_conn(log_level level, std::uint64_t conn, std::string_view line) noexcept {
    bool nested = std::exchange(log_line_in_use, true);
    try {
      fmt::memory_buffer own;
      fmt::memory_buffer& buf = nested ? own : log_line;
      buf.clear();
      static constexpr std::string_view prefix = "conn=";
      char digits[24];
      char* end = std::to_chars(digits, digits + sizeof digits, conn).ptr;
      buf.append(prefix.data(), prefix.data() + prefix.size());
      buf.append(digits, end);
      buf.push_back(' ');
      buf.append(line.data(), line.data() + line.size());
      log.write(log.ctx, level, {buf.data(), buf.size()});
    } catch (...) {
    }
    log_line_in_use = nested;
  }
  fmt::memory_buffer log_line;  // logf's; grows to the longest line once
  bool log_line_in_use = false;

  // Called when a connection or listener has closed, or a connection starts
  // to linger: in a shutdown, closes the lingering connections once they are
  // all that is left, and ends the shutdown once nothing is.
  void maybe_done();
};

}  // namespace inboxd
