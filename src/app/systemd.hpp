// app/systemd.hpp: what the inboxd program takes from its service manager
// and tells it (sd_listen_fds(3), sd_notify(3)).
//
// Socket activation: the sockets systemd (or systemd-socket-activate, or
// the program's own supervisor) opened for us arrive as descriptors 3, 4,
// ... with LISTEN_PID, LISTEN_FDS and LISTEN_FDNAMES; they are sorted into
// the listen lists as "fd:N" entries. Notification: state lines (READY=1,
// RELOADING=1, STOPPING=1, STATUS=..., WATCHDOG=1) go as datagrams to
// NOTIFY_SOCKET, or, in a worker, to the supervisor's channel. Sending
// never blocks the loop: a manager that does not read loses the line.
#pragma once

#include <sys/socket.h>
#include <sys/types.h>
#include <sys/un.h>

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "inboxd/config.hpp"

namespace inboxd::app {

// One descriptor passed by the service manager, with its
// FileDescriptorName ("unknown" when none was given).
struct inherited_socket {
  int fd = -1;
  std::string name;
};

// The plain LISTEN_* protocol (sd_listen_fds(3)): the descriptors are
// 3 .. 3+LISTEN_FDS-1, meant for us only when LISTEN_PID is self; names are
// colon-separated. Unset variables give no sockets and no error; malformed
// ones give false with the reason. Pure: tests call it with literals.
[[nodiscard]] bool parse_listen_env(pid_t self, const char* listen_pid, const char* listen_fds,
                                    const char* listen_fdnames, std::vector<inherited_socket>& out,
                                    std::string& error);

// Takes the sockets passed to this process (sd_listen_fds_with_names with
// libsystemd, else parse_listen_env), marks them close-on-exec and unsets
// LISTEN_*, so nothing started later takes them for its own.
[[nodiscard]] bool take_listen_fds(std::vector<inherited_socket>& out, std::string& error);

// Which listen list a passed socket serves: by its name (smtp; smtps or
// submissions for implicit TLS; lmtp; each with "-proxy": parse_kind), else
// by the address it is bound to, matched against cfg's listen lists (a wildcard address there matches any
// address with its port). One that matches nothing is plain SMTP, and a
// note says so. On success the lists of cfg hold "fd:N" entries only.
[[nodiscard]] bool assign_sockets(const std::vector<inherited_socket>& sockets, server_config& cfg,
                                  std::vector<std::string>& notes, std::string& error);

// The kind names assign_sockets knows, as the supervisor passes them on.
inline constexpr std::string_view kind_smtp = "smtp";
inline constexpr std::string_view kind_smtps = "smtps";
inline constexpr std::string_view kind_lmtp = "lmtp";

// What a listening socket speaks: implicit TLS, LMTP, a PROXY header first.
// Its name is the base (smtp, smtps, lmtp, lmtps) with "-proxy" after it
// for a PROXY listener: "smtp-proxy" is --listen-proxy, "smtps-proxy"
// --listen-tls-proxy. "submissions" is smtps too (RFC 8314's service name).
struct socket_kind {
  bool implicit_tls = false;
  bool lmtp = false;
  bool proxy = false;
};
[[nodiscard]] std::string kind_name(socket_kind kind);
// False for a name that is none of these.
[[nodiscard]] bool parse_kind(std::string_view name, socket_kind& kind);

// Every listen entry of cfg with its kind, in the order the server opens
// them: listen, listen-tls, listen-lmtp, listen-proxy, listen-tls-proxy,
// then the [[listener]] tables.
struct listen_entry {
  std::string address;
  socket_kind kind;
};
[[nodiscard]] std::vector<listen_entry> listen_entries(const server_config& cfg);

// Empties every listen list of cfg, then puts address where a listener of
// that kind is configured (the plain lists where one fits, else a
// [[listener]] entry).
void clear_listen_lists(server_config& cfg);
void add_listen_entry(server_config& cfg, const std::string& address, socket_kind kind);

// CLOCK_MONOTONIC in microseconds, for RELOADING=1's MONOTONIC_USEC.
[[nodiscard]] std::uint64_t monotonic_usec();

// The one sender of state lines of a process.
class notifier {
 public:
  notifier() = default;
  ~notifier();
  notifier(const notifier&) = delete;
  notifier& operator=(const notifier&) = delete;

  // From NOTIFY_SOCKET (a path, or @name in the abstract namespace), or,
  // in a worker, INBOXD_SUPERVISOR_FD; and WATCHDOG_USEC when WATCHDOG_PID
  // is unset or ours. Unsets them all. Returns a note for the log when the
  // socket cannot be used (empty otherwise).
  std::string open_from_environment();
  [[nodiscard]] bool enabled() const noexcept { return fd_ >= 0; }
  // Whether the peer is the program's supervisor (a worker's channel).
  [[nodiscard]] bool to_supervisor() const noexcept { return supervisor_; }
  // 0: no watchdog was asked for.
  [[nodiscard]] std::uint64_t watchdog_usec() const noexcept { return watchdog_usec_; }
  // Sends one datagram of state lines ("READY=1\nSTATUS=..."), without
  // waiting: false when it could not go (the manager's queue is full).
  bool send(std::string_view state) noexcept;

 private:
  int fd_ = -1;
  bool supervisor_ = false;
  sockaddr_un addr_{};
  socklen_t addr_len_ = 0;
  std::uint64_t watchdog_usec_ = 0;
};

}  // namespace inboxd::app
