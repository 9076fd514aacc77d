// app/config_file.hpp: the inboxd program's settings, from a TOML file and
// the command line.
//
// Precedence: built-in defaults, then the file (-c), then the command-line
// flags that were given. A reload (SIGHUP) reads the file again and applies
// the same flags on top, so a flag keeps winning.
#pragma once

#include <algorithm>
#include <chrono>
#include <cstddef>
#include <functional>
#include <string>
#include <string_view>
#include <vector>

#include "inboxd/config.hpp"
#include "inboxd/filters.hpp"

namespace inboxd::app {

struct app_config {
  server_config server;
  // Where mail goes: maildir | mbox | null | pipe | lmtp | smtp, or two of them, a local
  // store and a hand-off (store a copy and forward: make_tee_sink).
  std::vector<std::string> sink = {"maildir"};
  std::string maildir = "var/maildir";
  std::string maildir_sync = "fsync";  // fsync | syncfs (maildir_sync in sinks.hpp)
  std::string mbox;                    // a path template; selects the mbox sink on the command line
  std::string spool_dir = "var/spool";
  std::string tls_cert;  // PEM files; none: a self-signed pair in state_dir
  std::string tls_key;
  std::string state_dir = "var/state";
  std::string auth_users;   // a file of user:hash lines; none: no AUTH
  std::string user;         // started as root: run as this user once bound
  std::string group;        // and this group (default: the user's)
  bool allow_root = false;  // keep running as root (not recommended)
  // The unix sockets of the listen lists ("unix:/path"): octal mode, and
  // "user[:group]" (empty: the server's own), resolved at start-up.
  std::string unix_socket_mode = "0660";
  std::string unix_socket_owner;
  // Message bytes all deliveries together may hold in memory (memory_budget
  // in sinks.hpp): past it, data goes to disk sooner or reading pauses.
  std::size_t memory_budget = 64 * 1024 * 1024;
  // The hand-off sinks (sink lmtp or smtp; handoff_options in sinks.hpp):
  // the next hop, "HOST:PORT" or "unix:PATH", and how to talk to it.
  std::string lmtp_to, smtp_to;
  std::chrono::milliseconds handoff_connect_timeout{30'000}, handoff_command_timeout{300'000},
      handoff_data_timeout{180'000}, handoff_max_idle{2'000};
  bool handoff_dsn = false;       // the hop takes DSN parameters on: EHLO offers DSN
  std::string smtp_tls = "none";  // none | may | require (STARTTLS towards the hop)
  std::string smtp_tls_ca;        // PEM CAs for require (default: the system's)
  std::string smtp_auth_file;     // a user:password line for AUTH PLAIN
  // Worker processes (app/supervisor.hpp): "auto" (one per core) or a
  // count; 1 is one process and no supervisor. Read at start-up only.
  std::string workers = "1";
  // Policy services (inboxd/filters.hpp), asked before every other filter,
  // all with the settings of `policy` (its address unused).
  std::vector<std::string> policy_services;
  policy_options policy;
  // The pipe sink (pipe_options in sinks.hpp).
  std::string pipe_command;
  std::size_t pipe_max = 100;
  std::size_t pipe_queue = 100;
  std::chrono::milliseconds pipe_timeout{100'000};
  bool pipe_from_line = false;
  // Milters (inboxd/filters.hpp), applied in order after the other filters;
  // Postfix's milter_default_action and milter_*_timeout.
  std::vector<std::string> milters;
  std::string milter_default_action = "tempfail";  // tempfail | accept
  std::chrono::milliseconds milter_connect_timeout{30'000}, milter_command_timeout{30'000},
      milter_content_timeout{300'000};
};

// The one check of which sinks the config names ("maildir", "pipe", ...).
[[nodiscard]] inline bool uses_sink(const app_config& cfg, std::string_view name) {
  return std::find(cfg.sink.begin(), cfg.sink.end(), name) != cfg.sink.end();
}

// A sink that stores here (maildir, mbox, null), not one that hands on.
[[nodiscard]] bool is_local_sink(std::string_view name);

// Reads a TOML config file into cfg (keys not in the file keep their value).
// On failure returns false with "FILE:LINE:COL: what is wrong" in error.
// Unknown keys are errors.
[[nodiscard]] bool load_config_file(const std::string& path, app_config& cfg, std::string& error);

// Checks what no single key can: the names of the sink, a path for it.
[[nodiscard]] bool validate(const app_config& cfg, std::string& error);

// "auto" or a whole number from 1 to 1024: the worker count it means
// (auto: the cores this process may run on), or 0 when it is neither.
[[nodiscard]] unsigned parse_workers(const std::string& text);

// unix-socket-mode as a number: false unless it is octal and at most 0777.
[[nodiscard]] bool parse_socket_mode(const std::string& text, unsigned& mode);

}  // namespace inboxd::app
