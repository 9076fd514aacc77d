// bench/stats.hpp: the counters of one inboxd-bench run.
//
// Plain data, owned by the run and written only from the loop thread. A
// message that starts during the warm-up is counted in `warmup` only; the
// rest of the fields describe the measured part of the run.
#pragma once

#include <array>
#include <cstdint>

#include "bench/histogram.hpp"

namespace inboxd::bench {

// Why a connection ended other than by our QUIT.
enum class conn_error : unsigned {
  refused,   // connect() failed: ECONNREFUSED, unreachable
  reset,     // ECONNRESET, EPIPE
  timeout,   // no reply (or no connect) within --timeout
  closed,    // the server closed the connection where a reply was due
  rejected,  // greeting or EHLO/HELO not 2xx (the code is in session_codes)
  protocol,  // a reply that is not SMTP, or too long a line
  tls,       // STARTTLS refused (the code is in session_codes) or the handshake failed
  auth,      // AUTH refused, 535 and the like (the code is in session_codes)
  other,     // any other libuv error
  count_
};
inline constexpr std::array<const char*, static_cast<unsigned>(conn_error::count_)>
    conn_error_names = {"refused",  "reset", "timeout", "closed", "rejected",
                        "protocol", "tls",   "auth",    "other"};

struct stats {
  // Messages: started = accepted + refused + failed, once the run has ended.
  std::uint64_t started = 0;
  std::uint64_t accepted = 0;  // final reply 2xx after the message text
  std::uint64_t refused = 0;   // a 4xx/5xx ended the transaction
  std::uint64_t failed = 0;    // the connection broke or timed out during it
  // Recipients refused within messages that were otherwise accepted.
  std::uint64_t recipients_refused = 0;
  // By reply code: the final reply of an accepted message, or the reply that
  // refused the transaction (MAIL, all RCPTs, DATA or the final one).
  std::array<std::uint64_t, 600> codes{};
  // Codes of greetings, EHLO/HELO, STARTTLS and AUTH replies that refused a session.
  std::array<std::uint64_t, 600> session_codes{};
  std::array<std::uint64_t, static_cast<unsigned>(conn_error::count_)> errors{};
  std::uint64_t bytes_accepted = 0;  // message text of accepted messages
  std::uint64_t warmup = 0;          // messages started during the warm-up
  // TLS handshakes completed after the warm-up, and of those, resumed ones.
  std::uint64_t handshakes = 0;
  std::uint64_t handshakes_resumed = 0;
  std::uint64_t auth_accepted = 0;  // AUTH answered 235 after the warm-up

  // From the start of each measured transaction (its scheduled start with
  // --rate) to the final reply; accepted messages only. Microseconds.
  histogram latency;
  // From connect() to the session being ready for MAIL (EHLO, and STARTTLS,
  // the handshake, EHLO again and AUTH when asked for), for sessions opened
  // after the warm-up.
  histogram setup;
  // From the ClientHello to the end of the handshake, for handshakes started
  // after the warm-up: full and resumed ones together.
  histogram handshake;
  // --rate only: how late each measured message was handed to a connection
  // after it was due. Large values mean too few connections for the rate (or
  // a client that cannot keep up); they are part of the latency above.
  histogram start_lag;
};

// The whole run, warm-up included: for the live progress line and the exit code.
struct live_counters {
  std::uint64_t completed = 0;  // transactions with a final answer, accepted or not
  std::uint64_t accepted = 0;
  std::uint64_t bytes_accepted = 0;
  std::uint64_t bytes_written = 0;  // everything written to sockets
  std::uint64_t errors = 0;
  std::uint64_t sessions = 0;            // connections that reached the ready state
  std::uint64_t sessions_pipelined = 0;  // of which the server offered PIPELINING
  std::uint64_t handshakes = 0;          // TLS handshakes completed
  std::uint64_t writes = 0;              // uv_try_write/uv_write calls
};

}  // namespace inboxd::bench
