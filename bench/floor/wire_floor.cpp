// bench/floor/wire_floor.cpp: the wire floor, the least any SMTP server can
// cost per message on this kernel. NEVER a mail server: it stores nothing,
// checks nothing and says 250 to every MAIL, RCPT and message.
//
// What it is for: bench/harness.py --headline runs it beside inboxd and
// smtp-sink under the same load. Its CPU per message is what the kernel's
// TCP path (accept, read, write, epoll) costs and no server can go under; the
// gap between it and a server is what the server's own code costs.
//
// What it does, and no more: one thread, epoll (level-triggered), non-blocking
// sockets, TCP_NODELAY. Per readable event one read() of up to 64 KiB, every
// command line in it answered (EHLO, HELO, MAIL, RCPT, RSET, NOOP, DATA, QUIT;
// anything else gets 502), and one write() of all the replies. In DATA it
// looks for <CRLF>.<CRLF> only (memchr to the next CR, then a five-state
// match), the state kept per connection so that the end may be split across
// reads; no unstuffing, no line-end policy. A command line is bounded (512
// octets: a longer one gets one 500 and is skipped to its LF). A reply the
// socket will not take at once waits, and the connection is not read until
// it has gone. EOF or an error closes the connection.
//
//   wire-floor PORT [ADDRESS]     # default 127.0.0.1; stop it with SIGTERM
//
// Prints "listening on ADDRESS:PORT" on stderr once it accepts connections.
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <string_view>

namespace {

constexpr std::size_t max_line = 512;  // RFC 5321 4.5.3.1.4, CRLF included
constexpr std::size_t read_size = 64 * 1024;

constexpr std::string_view greeting = "220 wire-floor ESMTP (a benchmark floor, not a server)\r\n";
constexpr std::string_view ehlo_reply =
    "250-wire-floor\r\n250-PIPELINING\r\n250-8BITMIME\r\n250 SIZE 1073741824\r\n";
constexpr std::string_view helo_reply = "250 wire-floor\r\n";
constexpr std::string_view ok_reply = "250 2.0.0 Ok\r\n";
constexpr std::string_view data_reply = "354 End data with <CR><LF>.<CR><LF>\r\n";
constexpr std::string_view queued_reply = "250 2.0.0 Ok: queued\r\n";
constexpr std::string_view quit_reply = "221 2.0.0 Bye\r\n";
constexpr std::string_view unknown_reply = "502 5.5.2 Error: command not recognized\r\n";
constexpr std::string_view too_long_reply = "500 5.5.0 Error: line too long\r\n";

// The end of data, and how much of it a connection has matched.
constexpr char data_end[] = "\r\n.\r\n";
constexpr int after_crlf = 2;  // DATA's own CRLF: the text starts at a line start

struct connection {
  explicit connection(int socket) : fd(socket) {}
  int fd;
  bool in_data = false;
  int matched = 0;        // of data_end, in DATA
  bool skipping = false;  // the rest of a line that was too long
  bool quitting = false;  // close once the replies are out
  std::size_t held = 0;   // bytes of a partial command line in line
  std::string pending;    // replies the socket did not take yet
  char line[max_line];
};

int epoll_fd = -1;

void watch(connection* c, int op, std::uint32_t events) {
  epoll_event ev{};
  ev.events = events;
  ev.data.ptr = c;
  if (epoll_ctl(epoll_fd, op, c->fd, &ev) != 0) std::perror("wire-floor: epoll_ctl");
}

void drop(connection* c) {
  close(c->fd);  // also takes it out of the epoll set
  delete c;
}

// One command line, CRLF (or LF) included.
void command(connection* c, std::string_view l, std::string& out) {
  auto is = [&](const char* verb) { return l.size() >= 4 && strncasecmp(l.data(), verb, 4) == 0; };
  if (is("MAIL") || is("RCPT") || is("RSET") || is("NOOP")) {
    out += ok_reply;
  } else if (is("DATA")) {
    out += data_reply;
    c->in_data = true;
    c->matched = after_crlf;
  } else if (is("EHLO")) {
    out += ehlo_reply;
  } else if (is("HELO")) {
    out += helo_reply;
  } else if (is("QUIT")) {
    out += quit_reply;
    c->quitting = true;
  } else {
    out += unknown_reply;
  }
}

// Text of a message: returns how many bytes up to and including the end of
// data, or all of them if it is not in there.
std::size_t data(connection* c, const char* p, std::size_t n, std::string& out) {
  std::size_t i = 0;
  while (i < n) {
    if (c->matched == 0) {  // only a CR can start the end: jump to the next one
      const void* cr = std::memchr(p + i, '\r', n - i);
      if (!cr) return n;
      i = static_cast<std::size_t>(static_cast<const char*>(cr) - p);
    }
    char ch = p[i++];
    if (ch == data_end[c->matched]) {
      if (++c->matched == 5) {
        c->in_data = false;
        c->matched = 0;
        out += queued_reply;
        return i;
      }
    } else {
      c->matched = ch == '\r' ? 1 : 0;
    }
  }
  return n;
}

// Command lines: returns how many bytes it used (all, unless DATA or QUIT
// came first, or a partial line was kept).
std::size_t commands(connection* c, const char* p, std::size_t n, std::string& out) {
  std::size_t i = 0;
  while (i < n && !c->in_data && !c->quitting) {
    const char* lf = static_cast<const char*>(std::memchr(p + i, '\n', n - i));
    std::size_t len = lf ? static_cast<std::size_t>(lf - (p + i)) + 1 : n - i;
    if (c->skipping) {
      c->skipping = !lf;
    } else if (c->held + len > max_line) {
      out += too_long_reply;
      c->held = 0;
      c->skipping = !lf;
    } else if (!lf) {  // a partial line: keep it for the next read
      std::memcpy(c->line + c->held, p + i, len);
      c->held += len;
    } else if (c->held == 0) {  // the common case: the whole line is in this read
      command(c, {p + i, len}, out);
    } else {
      std::memcpy(c->line + c->held, p + i, len);
      command(c, {c->line, c->held + len}, out);
      c->held = 0;
    }
    i += len;
  }
  return i;
}

// Writes the replies in one write(). What the socket does not take waits
// for EPOLLOUT, and the connection is not read meanwhile.
void flush(connection* c, std::string_view out) {
  ssize_t w;
  do w = write(c->fd, out.data(), out.size());
  while (w < 0 && errno == EINTR);
  if (w < 0 && errno != EAGAIN) return drop(c);
  out.remove_prefix(w < 0 ? 0 : static_cast<std::size_t>(w));
  if (!out.empty()) {
    c->pending.assign(out);
    watch(c, EPOLL_CTL_MOD, EPOLLOUT);
  } else if (c->quitting) {
    drop(c);
  }
}

// EPOLLOUT: the rest of the replies; then reading again (or the close).
void writable(connection* c) {
  ssize_t w = write(c->fd, c->pending.data(), c->pending.size());
  if (w < 0 && (errno == EAGAIN || errno == EINTR)) return;
  if (w < 0) return drop(c);
  c->pending.erase(0, static_cast<std::size_t>(w));
  if (!c->pending.empty()) return;
  if (c->quitting) return drop(c);
  watch(c, EPOLL_CTL_MOD, EPOLLIN);
}

void readable(connection* c, char* buf, std::string& out) {
  ssize_t r = read(c->fd, buf, read_size);
  if (r < 0 && (errno == EAGAIN || errno == EINTR)) return;
  if (r <= 0) {
    drop(c);
    return;
  }
  out.clear();
  std::size_t n = static_cast<std::size_t>(r), i = 0;
  while (i < n && !c->quitting)
    i += c->in_data ? data(c, buf + i, n - i, out) : commands(c, buf + i, n - i, out);
  if (!out.empty() || c->quitting) flush(c, out);
}

void accept_all(int listener) {
  for (;;) {
    int fd = accept4(listener, nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (fd < 0) {
      if (errno != EAGAIN && errno != EINTR && errno != ECONNABORTED)
        std::perror("wire-floor: accept4");
      return;
    }
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    auto* c = new connection(fd);
    watch(c, EPOLL_CTL_ADD, EPOLLIN);
    flush(c, greeting);
  }
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2 || argc > 3 || std::atoi(argv[1]) <= 0) {
    std::fprintf(stderr,
                 "usage: wire-floor PORT [ADDRESS (127.0.0.1)]\n"
                 "The least an SMTP responder can cost per message: a benchmark floor that\n"
                 "stores nothing and accepts everything. Never a mail server.\n");
    return 2;
  }
  const char* address = argc == 3 ? argv[2] : "127.0.0.1";
  signal(SIGPIPE, SIG_IGN);  // a client gone mid-write is an EPIPE, not a death

  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(static_cast<std::uint16_t>(std::atoi(argv[1])));
  if (inet_pton(AF_INET, address, &a.sin_addr) != 1) {
    std::fprintf(stderr, "wire-floor: not an IPv4 address: %s\n", address);
    return 2;
  }
  int listener = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  int one = 1;
  setsockopt(listener, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  if (listener < 0 || bind(listener, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0 ||
      listen(listener, 1024) != 0) {
    std::perror("wire-floor: listen");
    return 1;
  }
  epoll_fd = epoll_create1(EPOLL_CLOEXEC);
  epoll_event ev{};
  ev.events = EPOLLIN;
  ev.data.ptr = nullptr;  // the listener
  epoll_ctl(epoll_fd, EPOLL_CTL_ADD, listener, &ev);
  std::fprintf(stderr, "wire-floor: listening on %s:%s\n", address, argv[1]);

  static char buf[read_size];
  std::string out;
  out.reserve(read_size);
  epoll_event events[256];
  for (;;) {
    int n = epoll_wait(epoll_fd, events, 256, -1);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      std::perror("wire-floor: epoll_wait");
      return 1;
    }
    for (int i = 0; i < n; ++i) {
      auto* c = static_cast<connection*>(events[i].data.ptr);
      if (!c) {
        accept_all(listener);
      } else if (!c->pending.empty()) {
        writable(c);
      } else {
        readable(c, buf, out);
      }
    }
  }
}
