// inboxd/metrics.hpp: what a server counts, for Prometheus and for an embedder.
//
// server_metrics is plain data owned by the server (server::metrics()). The
// loop thread writes it: each event is one increment of a field, with no
// lock, allocation or string, so counting costs the hot path next to
// nothing. Read it on the loop thread only. The counters start at zero when
// the server is made and live as long as it does: a reconfigure() (SIGHUP)
// keeps them. The gauges (the fields under "Gauges") are filled in by
// server::metrics() when it is called.
//
// render_metrics() writes the Prometheus text exposition format (0.0.4);
// names follow Prometheus' conventions: an inboxd_ prefix, base units
// (seconds, bytes), _total on counters. The --metrics listener serves it.
//
// This header includes no libuv type: the sans-I/O session counts into it.
#pragma once

#include <array>
#include <cerrno>
#include <cstddef>
#include <cstdint>
#include <string>

namespace inboxd {

// Why a connection was refused before its session began (the label reason=).
enum class refusal : std::uint8_t {
  total,         // max_connections
  per_ip,        // max_connections_per_ip
  rate,          // connection_rate_per_ip
  early_talker,  // talked before a delayed greeting (greeting_delay)
};
inline constexpr std::size_t refusal_kinds = 4;

// How a message ended, by the reply after its data (the label status=).
// Over LMTP each recipient's reply counts, as each is its own outcome.
enum class message_status : std::uint8_t {
  accepted,     // 250: stored
  temp_failed,  // 4xx: the sender retries
  rejected,     // 5xx: the sender bounces
};
inline constexpr std::size_t message_statuses = 3;

// Why a sink failed a message (the label kind=), from the errno it gave.
enum class sink_error : std::uint8_t {
  no_space,    // ENOSPC, EDQUOT: 452
  io,          // EIO: the disk failed
  lock_busy,   // EAGAIN: an mbox stayed locked by another program too long
  permission,  // EACCES, EPERM, EROFS
  other,       // any other errno, or none
  exception,   // an embedder's sink threw
};
inline constexpr std::size_t sink_error_kinds = 6;

// The sink_error of an errno value a sink reported (0: other).
[[nodiscard]] constexpr sink_error sink_error_of(int error) noexcept {
  switch (error) {
    case ENOSPC:
    case EDQUOT: return sink_error::no_space;
    case EIO: return sink_error::io;
    case EAGAIN: return sink_error::lock_busy;
    case EACCES:
    case EPERM:
    case EROFS: return sink_error::permission;
    default: return sink_error::other;
  }
}

// A Prometheus histogram with fixed buckets: counts[i] holds the
// observations at most bounds[i] (and above the previous bound);
// counts.back() those above the last bound.
struct latency_histogram {
  // Seconds, from 1 ms to 10 s: a commit is an fsync or two, or a wait for
  // an mbox lock (at most 10 s, pooled_delivery.hpp).
  static constexpr std::array<double, 13> bounds = {0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
                                                    0.25,  0.5,    1.0,   2.5,  5.0,   10.0};
  std::array<std::uint64_t, bounds.size() + 1> counts{};
  double sum = 0;  // seconds
  std::uint64_t count = 0;

  void observe(double seconds) noexcept {
    std::size_t i = 0;
    while (i < bounds.size() && seconds > bounds[i]) ++i;
    ++counts[i];
    sum += seconds;
    ++count;
  }
};

struct server_metrics {
  // Counters.
  std::uint64_t connections = 0;  // accepted, refused ones included
  std::array<std::uint64_t, refusal_kinds> refused{};
  std::uint64_t sessions = 0;  // greetings sent
  std::array<std::uint64_t, message_statuses> messages{};
  std::uint64_t message_bytes = 0;  // message octets received, as RFC 1870 counts them
  std::uint64_t recipients_accepted = 0;
  std::uint64_t recipients_refused = 0;  // every RCPT not accepted, 452s included
  latency_histogram commit_seconds;      // from the end of data to the sink's answer
  std::uint64_t tls_full = 0;            // handshakes done in full
  std::uint64_t tls_resumed = 0;         // with a session ticket (RFC 5077)
  std::uint64_t tls_failed = 0;          // handshakes that failed or timed out
  std::uint64_t auth_ok = 0;
  std::uint64_t auth_failed = 0;
  std::uint64_t auth_busy = 0;  // not checked: too many checks waiting (454)
  std::array<std::uint64_t, sink_error_kinds> sink_errors{};

  // Gauges, filled in by server::metrics().
  std::uint64_t connections_open = 0;  // lingering ones included
  std::uint64_t memory_used = 0;       // message bytes the sinks hold (memory_budget)
  std::uint64_t memory_limit = 0;      // 0: the server knows of no budget
  double loop_lag_seconds = 0;         // how late the last 1 s tick of the loop ran
  double start_time_seconds = 0;       // when the server was made (Unix time)
};

// Appends the metrics in the Prometheus text format (version 0.0.4), with a
// HELP and TYPE line for each, and inboxd_build_info{version="..."} 1.
void render_metrics(const server_metrics& m, std::string& out);

// The Content-Type of what render_metrics() writes.
inline constexpr const char* metrics_content_type = "text/plain; version=0.0.4; charset=utf-8";

}  // namespace inboxd
