#include "app/systemd.hpp"

#include <fcntl.h>
#include <unistd.h>

#include <fmt/format.h>
#include <algorithm>
#include <charconv>
#include <cstdlib>
#include <cstring>
#include <ctime>

#include "net/listener.hpp"

#if INBOXD_HAVE_LIBSYSTEMD
#include <systemd/sd-daemon.h>
#endif

namespace inboxd::app {

namespace {

// sd_listen_fds(3): the first passed descriptor.
constexpr int listen_fds_start = 3;

template <typename T>
bool parse_number(std::string_view text, T& out) {
  auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), out);
  return !text.empty() && ec == std::errc{} && end == text.data() + text.size();
}

}  // namespace

bool parse_listen_env(pid_t self, const char* listen_pid, const char* listen_fds,
                      const char* listen_fdnames, std::vector<inherited_socket>& out,
                      std::string& error) {
  out.clear();
  if (!listen_pid || !listen_fds) return true;
  long pid = 0;
  if (!parse_number(std::string_view(listen_pid), pid)) {
    error = fmt::format(FMT_STRING("LISTEN_PID is not a process id: '{}'"), listen_pid);
    return false;
  }
  // Meant for another process (a parent that did not unset them): not ours.
  if (pid != self) return true;
  int count = 0;
  // A bound far above any real socket unit, so that a bad value cannot
  // make us walk the descriptor table.
  if (!parse_number(std::string_view(listen_fds), count) || count < 0 || count > 4096) {
    error = fmt::format(FMT_STRING("LISTEN_FDS is not a count of descriptors: '{}'"), listen_fds);
    return false;
  }
  std::string_view names = listen_fdnames ? listen_fdnames : "";
  for (int i = 0; i < count; ++i) {
    inherited_socket s{.fd = listen_fds_start + i, .name = "unknown"};
    if (listen_fdnames) {
      auto colon = names.find(':');
      std::string_view name = names.substr(0, colon);
      if (!name.empty()) s.name = name;
      names = colon == names.npos ? std::string_view() : names.substr(colon + 1);
    }
    out.push_back(std::move(s));
  }
  return true;
}

bool take_listen_fds(std::vector<inherited_socket>& out, std::string& error) {
  out.clear();
#if INBOXD_HAVE_LIBSYSTEMD
  char** names = nullptr;
  int n = sd_listen_fds_with_names(1, &names);
  if (n < 0) {
    error = fmt::format(FMT_STRING("socket activation: {}"), std::strerror(-n));
    return false;
  }
  for (int i = 0; i < n; ++i) {
    out.push_back({.fd = SD_LISTEN_FDS_START + i,
                   .name = names && names[i] && names[i][0] ? names[i] : "unknown"});
  }
  if (names) {
    for (int i = 0; i < n; ++i) std::free(names[i]);
    std::free(names);
  }
  return true;
#else
  bool ok = parse_listen_env(::getpid(), std::getenv("LISTEN_PID"), std::getenv("LISTEN_FDS"),
                             std::getenv("LISTEN_FDNAMES"), out, error);
  for (const char* v : {"LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"}) ::unsetenv(v);
  if (!ok) return false;
  for (const auto& s : out) {
    if (::fcntl(s.fd, F_SETFD, FD_CLOEXEC) != 0) {
      error = fmt::format(FMT_STRING("socket activation: descriptor {}: {}"), s.fd,
                          std::strerror(errno));
      return false;
    }
  }
  return true;
#endif
}

namespace {

// Whether a configured listen entry names the socket bound at `bound`
// (both in listen-list form): the same text, or a wildcard address with
// the same port (":25" or "0.0.0.0:25" or "[::]:25" match "[::]:25" and
// "192.0.2.1:25": systemd's ListenStream=25 binds [::]:25).
bool same_address(const std::string& configured, const std::string& bound) {
  if (configured == bound) return true;
  if (configured.starts_with("unix:") || bound.starts_with("unix:")) return false;
  sockaddr_storage c{}, b{};
  if (!net::parse_address(configured, c) || !net::parse_address(bound, b)) return false;
  auto port = [](const sockaddr_storage& a) {
    return a.ss_family == AF_INET6 ? reinterpret_cast<const sockaddr_in6&>(a).sin6_port
                                   : reinterpret_cast<const sockaddr_in&>(a).sin_port;
  };
  if (port(c) != port(b)) return false;
  if (net::format_address(reinterpret_cast<const sockaddr*>(&c)) ==
      net::format_address(reinterpret_cast<const sockaddr*>(&b)))
    return true;
  std::string host = net::format_address(reinterpret_cast<const sockaddr*>(&c), false);
  return host == "0.0.0.0" || host == "::";
}

}  // namespace

std::string kind_name(socket_kind kind) {
  std::string name = kind.lmtp ? "lmtp" : "smtp";
  if (kind.implicit_tls) name += 's';
  if (kind.proxy) name += "-proxy";
  return name;
}

bool parse_kind(std::string_view name, socket_kind& kind) {
  kind = {};
  if (name.ends_with("-proxy")) {
    kind.proxy = true;
    name.remove_suffix(6);
  }
  if (name == "submissions") name = "smtps";
  if (name == "smtp" || name == "smtps") {
    kind.implicit_tls = name.size() == 5;
  } else if (name == "lmtp" || name == "lmtps") {
    kind.lmtp = true;
    kind.implicit_tls = name.size() == 5;
  } else {
    return false;
  }
  return true;
}

std::vector<listen_entry> listen_entries(const server_config& cfg) {
  std::vector<listen_entry> out;
  auto add = [&](const std::vector<std::string>& list, socket_kind kind) {
    for (const auto& a : list) out.push_back({a, kind});
  };
  add(cfg.listen, {});
  add(cfg.listen_tls, {.implicit_tls = true});
  add(cfg.listen_lmtp, {.lmtp = true});
  add(cfg.listen_proxy, {.proxy = true});
  add(cfg.listen_tls_proxy, {.implicit_tls = true, .proxy = true});
  for (const auto& l : cfg.listeners)
    out.push_back({l.address, {.implicit_tls = l.implicit_tls, .lmtp = l.lmtp, .proxy = l.proxy}});
  return out;
}

void clear_listen_lists(server_config& cfg) {
  cfg.listen.clear();
  cfg.listen_tls.clear();
  cfg.listen_lmtp.clear();
  cfg.listen_proxy.clear();
  cfg.listen_tls_proxy.clear();
  cfg.listeners.clear();
}

void add_listen_entry(server_config& cfg, const std::string& address, socket_kind k) {
  if (!k.proxy && !k.lmtp) {
    (k.implicit_tls ? cfg.listen_tls : cfg.listen).push_back(address);
  } else if (!k.proxy && !k.implicit_tls) {
    cfg.listen_lmtp.push_back(address);
  } else if (!k.lmtp) {
    (k.implicit_tls ? cfg.listen_tls_proxy : cfg.listen_proxy).push_back(address);
  } else {
    cfg.listeners.push_back(
        {.address = address, .implicit_tls = k.implicit_tls, .lmtp = k.lmtp, .proxy = k.proxy});
  }
}

bool assign_sockets(const std::vector<inherited_socket>& sockets, server_config& cfg,
                    std::vector<std::string>& notes, std::string& error) {
  const std::vector<listen_entry> configured = listen_entries(cfg);
  server_config out = cfg;
  clear_listen_lists(out);
  for (const auto& s : sockets) {
    std::string entry = fmt::format(FMT_STRING("fd:{}"), s.fd);
    std::string bound = net::socket_address(s.fd);
    if (bound.empty()) {
      error = fmt::format(FMT_STRING("socket activation: descriptor {} ({}) is not a TCP or unix "
                                     "socket"),
                          s.fd, s.name);
      return false;
    }
    socket_kind kind;
    if (!parse_kind(s.name, kind)) {
      // No name we know: the kind of the configured entry bound there.
      auto it = std::find_if(configured.begin(), configured.end(),
                             [&](const listen_entry& e) { return same_address(e.address, bound); });
      if (it != configured.end()) {
        kind = it->kind;
      } else {
        kind = {};
        notes.push_back(fmt::format(FMT_STRING("socket {} (name {}) matches no listen address "
                                               "and no name (smtp, smtps, lmtp, ...-proxy): "
                                               "plain SMTP"),
                                    bound, s.name));
      }
    }
    add_listen_entry(out, entry, kind);
  }
  cfg = std::move(out);
  return true;
}

std::uint64_t monotonic_usec() {
  timespec ts{};
  ::clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<std::uint64_t>(ts.tv_sec) * 1'000'000u +
         static_cast<std::uint64_t>(ts.tv_nsec) / 1000u;
}

notifier::~notifier() {
  if (fd_ >= 0) ::close(fd_);
}

std::string notifier::open_from_environment() {
  std::string note;
  const char* wd_usec = std::getenv("WATCHDOG_USEC");
  const char* wd_pid = std::getenv("WATCHDOG_PID");
  long pid = 0;
  std::uint64_t usec = 0;
  if (wd_usec && parse_number(std::string_view(wd_usec), usec) &&
      (!wd_pid || (parse_number(std::string_view(wd_pid), pid) && pid == ::getpid())))
    watchdog_usec_ = usec;
  const char* supervisor = std::getenv("INBOXD_SUPERVISOR_FD");
  const char* path = std::getenv("NOTIFY_SOCKET");
  int fd = -1;
  if (supervisor && parse_number(std::string_view(supervisor), fd) && fd >= 0) {
    fd_ = fd;
    supervisor_ = true;
    ::fcntl(fd_, F_SETFD, FD_CLOEXEC);
  } else if (path && path[0]) {
    std::string_view p = path;
    if ((p[0] != '/' && p[0] != '@') || p.size() >= sizeof addr_.sun_path) {
      note =
          fmt::format(FMT_STRING("NOTIFY_SOCKET '{}' is not a unix socket path: not notifying"), p);
    } else {
      addr_.sun_family = AF_UNIX;
      std::memcpy(addr_.sun_path, p.data(), p.size());
      // '@' is the abstract namespace: a leading NUL, and no terminating one.
      if (p[0] == '@') addr_.sun_path[0] = '\0';
      addr_len_ = static_cast<socklen_t>(offsetof(sockaddr_un, sun_path) + p.size() +
                                         (p[0] == '@' ? 0 : 1));
      fd_ = ::socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
      if (fd_ < 0)
        note =
            fmt::format(FMT_STRING("cannot notify the service manager: {}"), std::strerror(errno));
    }
  }
  for (const char* v : {"NOTIFY_SOCKET", "INBOXD_SUPERVISOR_FD", "WATCHDOG_USEC", "WATCHDOG_PID"})
    ::unsetenv(v);
  return note;
}

// One datagram per call, MSG_DONTWAIT: a manager whose queue is full loses
// a line rather than stall the loop (sd_notify(3) would wait there).
bool notifier::send(std::string_view state) noexcept {
  if (fd_ < 0) return false;
  ssize_t n = supervisor_ ? ::send(fd_, state.data(), state.size(), MSG_DONTWAIT | MSG_NOSIGNAL)
                          : ::sendto(fd_, state.data(), state.size(), MSG_DONTWAIT | MSG_NOSIGNAL,
                                     reinterpret_cast<const sockaddr*>(&addr_), addr_len_);
  return n == static_cast<ssize_t>(state.size());
}

}  // namespace inboxd::app
