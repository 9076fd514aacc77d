// bench/options.hpp: inboxd-bench's command line, parsed once into plain values.
//
// parse_options() fills an options struct from argv with CLI11 and checks the
// combinations CLI11 cannot (for example --messages with --duration). It
// prints --help itself, and a one-line error for a bad flag; the caller only
// exits with the code it returns.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace inboxd::bench {

// How the client starts TLS: not at all, with STARTTLS after EHLO (RFC 3207),
// or from the first byte (implicit TLS, RFC 8314 3.3).
enum class tls_mode { none, starttls, implicit };

struct options {
  std::string host = "127.0.0.1";
  std::uint16_t port = 2525;
  unsigned connections = 1;
  // Exactly one of the two bounds the run. messages counts the measured
  // messages (the warm-up comes on top); duration is in seconds, also after
  // the warm-up.
  std::uint64_t messages = 0;
  double duration = 0;
  // The message sizes, in bytes of message text (headers and body, without
  // the terminating "." line); drawn at random per message when several.
  std::vector<std::size_t> sizes;
  unsigned recipients = 1;
  bool pipelining = true;
  // With pipelining: send the next transaction's commands with the message
  // text (RFC 2920 3.1). --pipelining group turns this off.
  bool chain = true;
  // --bdat: the text goes as one BDAT <n> LAST (RFC 3030) when the server
  // offers CHUNKING, after MAIL and RCPT in the same write with PIPELINING;
  // else DATA as usual.
  bool bdat = false;
  // 0: unlimited (one session per connection slot for the whole run).
  std::uint64_t messages_per_connection = 0;
  // Messages per second over all connections; 0: closed loop (as fast as the
  // server answers).
  double rate = 0;
  std::string from = "bench{c}@client.example";
  std::string to = "user{r}@inboxd.example";
  std::string helo = "bench.client.example";
  double warmup = 0;
  double timeout = 30;
  bool json = false;
  // --progress auto|on|off: auto is on when stderr is a terminal.
  std::string progress = "auto";
  std::uint64_t seed = 1;
  tls_mode tls = tls_mode::none;
  // Resume the slot's previous TLS session (RFC 5077 ticket) on reconnect.
  bool tls_resume = true;
  // --auth user:pass: AUTH PLAIN after EHLO (inside TLS with --tls). Empty
  // user: no AUTH.
  std::string auth_user;
  std::string auth_password;
  // --histogram-log FILE: the latency histogram of every interval of
  // histogram_interval seconds, in HdrHistogram's interval log format.
  std::string histogram_log;
  double histogram_interval = 1;
  // --workers N: N processes share connections, messages and rate.
  unsigned workers = 1;
  // --corpus DIR|FILE: replay a Maildir's or an mbox's messages.
  std::string corpus;

  // Set for each worker process, not by a flag: its first connection's {c}
  // and its message numbers ({n} = number_base + k * number_stride, k from
  // 0), so that {c} and {n} stay unique across the workers.
  unsigned connection_base = 0;
  std::uint64_t number_base = 0;
  std::uint64_t number_stride = 1;
};

// Returns -1 to run, or the exit code to exit with now: 0 after --help or
// --version, 2 after a bad flag (the error is already printed).
[[nodiscard]] int parse_options(int argc, char** argv, options& opt);

}  // namespace inboxd::bench
