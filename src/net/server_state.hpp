// net/server_state.hpp: what the listener and the connections of one server share.
#pragma once

#include <uv.h>

#include <fmt/format.h>
#include <string>
#include <unordered_map>
#include <vector>

#include "inboxd/server.hpp"
#include "net/buffer_pool.hpp"
#include "proto/session.hpp"

namespace inboxd::net {
class connection;
class listener;
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
  net::connection* connections = nullptr;  // intrusive list, newest first
  std::size_t connection_count = 0;
  std::size_t admitted = 0;  // connections within the limits
  // config.max_connections, lowered to fit the open-files limit.
  std::size_t max_connections = 0;
  void fit_connection_limit();
  std::unordered_map<std::string, std::size_t> per_ip;
  struct rate_window {
    std::uint64_t start = 0;  // uv_now() when this minute began
    std::size_t count = 0;
  };
  std::unordered_map<std::string, rate_window> rates;
  std::uint64_t next_connection_id = 0;

  bool shutting_down = false;
  uv_timer_t drain_timer{};
  bool drain_timer_open = false;
  void (*done)(void*) = nullptr;
  void* done_ctx = nullptr;

  state(uv_loop_t* loop, server_config cfg, std::shared_ptr<inboxd::sink> sink, logger log);

  template <typename... Args>
  void logf(log_level level, fmt::format_string<Args...> f, Args&&... args) {
    std::string line = fmt::format(f, std::forward<Args>(args)...);
    log.write(log.ctx, level, line);
  }

  // Called when a connection or listener has closed: ends a shutdown once
  // nothing is left.
  void maybe_done();
};

}  // namespace inboxd
