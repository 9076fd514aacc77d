// inboxd/server.hpp: an SMTP receiver driven by the embedder's libuv loop.
//
// The server listens on the configured addresses, runs one SMTP session per
// connection on the loop, and hands each message to the sink. It never
// blocks the loop. An exception thrown by the embedder's sink, recipient
// policy, authenticator or logger stops inside the server: the client gets
// a temporary failure (451, 454) and the server serves on; a logger's line
// is lost. The done callback of shutdown() must not throw. The loop, the sink and the logger's
// context must outlive the server; destroy the server only after shutdown() has called back (or
// before start()).
#pragma once

#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "inboxd/config.hpp"
#include "inboxd/log.hpp"
#include "inboxd/metrics.hpp"
#include "inboxd/sink.hpp"

typedef struct uv_loop_s uv_loop_t;

namespace inboxd {

class server {
 public:
  // The server keeps the sink alive while transactions use it.
  server(uv_loop_t* loop, server_config config, std::shared_ptr<sink> sink,
         logger log = stderr_logger());
  ~server();
  server(const server&) = delete;
  server& operator=(const server&) = delete;

  // Binds every listen address and starts accepting. On failure returns
  // false with a one-line reason in error, and nothing is left listening.
  [[nodiscard]] bool start(std::string& error);

  // The addresses really bound, as "127.0.0.1:2525", "[::1]:2525" or "unix:/path" (port 0
  // in the config becomes the port the kernel chose).
  [[nodiscard]] std::vector<std::string> bound_addresses() const;

  // Stops accepting; sessions get 421 4.3.2 at their next command boundary,
  // messages in progress finish and commit, for drain_timeout at most. When
  // every handle is closed, done(ctx) is called on the loop.
  void shutdown(void (*done)(void* ctx), void* ctx);

  // Takes up new limits, policy and sink for transactions that start from now
  // on; transactions in flight finish under the old ones, no connection is
  // dropped. The listen addresses stay as they are (those in config are not
  // used). A config that start() would refuse for the listeners that are
  // open (an implicit-TLS listener without TLS credentials, say) is refused:
  // false, with a one-line reason in error, and nothing changed.
  [[nodiscard]] bool reconfigure(const server_config& config, std::shared_ptr<sink> sink,
                                 std::string& error) noexcept;

  // Closes every connection at once (a second SIGTERM).
  void abort();

  [[nodiscard]] std::size_t connection_count() const noexcept;

  // The server's counters, with the gauges brought up to date. Loop thread
  // only; the reference lives as long as the server (render_metrics()
  // writes it as Prometheus text).
  [[nodiscard]] const server_metrics& metrics() const noexcept;

  // The address the metrics listener bound ("127.0.0.1:9125"), or empty.
  [[nodiscard]] std::string metrics_address() const;

  struct state;

 private:
  std::unique_ptr<state> state_;
};

}  // namespace inboxd
