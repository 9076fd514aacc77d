// app/supervisor.hpp: --workers N, one supervisor process over N workers.
//
// The supervisor binds the listening sockets once (or takes systemd's),
// gives up root, and starts each worker by running this program again with
// its sockets passed by the LISTEN_FDS protocol and a channel back to the
// supervisor (INBOXD_SUPERVISOR_FD, a SOCK_SEQPACKET socket) over which the
// worker sends the state lines it would send systemd. Workers are whole
// inboxd processes, each one thread and one loop; the supervisor does no
// SMTP and holds no mail. It passes SIGHUP, SIGTERM and SIGINT on to every
// worker, restarts a worker that dies (with backoff, logged), tells systemd
// READY=1 once every worker is ready (and again once every worker has
// applied a reload), and exits once every worker has exited after a stop
// signal. A worker dies with its supervisor (PR_SET_PDEATHSIG).
//
// Everything here runs on the supervisor's loop thread; the time between
// fork() and exec() in the child calls only async-signal-safe functions.
#pragma once

#include <uv.h>

#include <string>
#include <vector>

#include "app/systemd.hpp"
#include "inboxd/config.hpp"

namespace inboxd::app {

// The sockets for the workers: sets[i] are worker i's (each socket named by
// its kind: kind_name(), e.g. smtp, smtps-proxy). TCP addresses are bound once
// per worker with SO_REUSEPORT (port 0 is resolved by the first bind and the
// others take that port), so the kernel spreads connections over them
// evenly and each worker accepts from its own queue. Unix sockets and "fd:N"
// entries (systemd's) are one socket shared by every worker. Unix socket
// files made here go into unix_paths, for the supervisor to remove at exit.
// Blocks (bind): at start-up, before privileges are given up.
[[nodiscard]] bool bind_worker_sockets(const server_config& cfg, unsigned workers,
                                       std::vector<std::vector<inherited_socket>>& sets,
                                       std::vector<std::string>& unix_paths,
                                       std::vector<std::string>& notes, std::string& error);

struct supervisor_options {
  unsigned workers = 2;
  std::vector<std::vector<inherited_socket>> sockets{};  // from bind_worker_sockets
  std::vector<std::string> unix_paths{};                 // removed at exit
  char** argv = nullptr;                                 // each worker runs it again
  notifier* notify = nullptr;                            // to systemd; may be disabled
};

// Starts the workers and runs the loop until they have all exited after a
// stop signal (or one failed before it was ever ready). Returns the exit
// code for main.
[[nodiscard]] int supervise(uv_loop_t* loop, supervisor_options options);

}  // namespace inboxd::app
