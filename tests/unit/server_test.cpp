// tests/unit/server_test.cpp: the server through the library API, on a real loop.
//
// Each test runs a server on 127.0.0.1:0 on a uv loop in the test's thread,
// and a client in a std::thread: a blocking POSIX socket with a 5 s timeout
// on every read and write, so every wait is bounded. The client asks the
// loop thread to do things (reconfigure) through a uv_async_t and waits for
// them, 5 s at most. Each test ends with uv_loop_close() == 0 (libuv's rule:
// the server left no handle behind). Last, limit_key(), which the per-address
// limits count by.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>
#include <uv.h>

#include <doctest/doctest.h>

#include <chrono>
#include <cstdlib>
#include <functional>
#include <future>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <string>
#include <string_view>
#include <thread>
#include <utility>
#include <vector>

#include "inboxd/config.hpp"
#include "inboxd/policy.hpp"
#include "inboxd/server.hpp"
#include "inboxd/sink.hpp"
#include "inboxd/sinks.hpp"
#include "inboxd/tls.hpp"
#include "net/listener.hpp"

namespace {

using namespace std::chrono_literals;

// One SMTP client over a blocking socket; every read and write gives up
// after 5 s.
class smtp_client {
 public:
  explicit smtp_client(int port) {
    fd_ = ::socket(AF_INET, SOCK_STREAM, 0);
    timeval tv{5, 0};
    ::setsockopt(fd_, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    ::setsockopt(fd_, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_port = htons(static_cast<std::uint16_t>(port));
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    connected_ = ::connect(fd_, reinterpret_cast<const sockaddr*>(&addr), sizeof addr) == 0;
  }
  ~smtp_client() { ::close(fd_); }
  smtp_client(const smtp_client&) = delete;
  smtp_client& operator=(const smtp_client&) = delete;

  [[nodiscard]] bool connected() const { return connected_; }

  // Connects, reads the greeting and says EHLO; false (a failed check) if
  // any of it did not work.
  bool greet() {
    if (!connected_) {
      FAIL_CHECK("cannot connect");
      return false;
    }
    bool ok = reply().starts_with("220") && cmd("EHLO client.example").starts_with("250");
    CHECK_MESSAGE(ok, "no greeting or EHLO reply");
    return ok;
  }

  void send(std::string_view bytes) {
    while (!bytes.empty()) {
      ssize_t n = ::send(fd_, bytes.data(), bytes.size(), MSG_NOSIGNAL);
      if (n <= 0) return;
      bytes.remove_prefix(static_cast<std::size_t>(n));
    }
  }

  // The last line of the next complete reply (multi-line replies have
  // "250-" lines before it), or "" when none came in time.
  std::string reply() {
    for (;;) {
      auto end = buf_.find("\r\n");
      if (end == std::string::npos) {
        char chunk[4096];
        ssize_t n = ::recv(fd_, chunk, sizeof chunk, 0);
        if (n <= 0) return {};
        buf_.append(chunk, static_cast<std::size_t>(n));
        continue;
      }
      std::string line = buf_.substr(0, end);
      buf_.erase(0, end + 2);
      if (line.size() < 4 || line[3] != '-') return line;
    }
  }

  std::string cmd(std::string_view line) {
    send(std::string(line) + "\r\n");
    return reply();
  }

 private:
  int fd_ = -1;
  bool connected_ = false;
  std::string buf_;
};

bool starts_with(std::string_view s, std::string_view prefix) {
  return s.substr(0, prefix.size()) == prefix;
}

int port_of(const std::string& address) {
  return std::atoi(address.substr(address.rfind(':') + 1).c_str());
}

// A loop, a server on it, and a way for the client thread to run work on
// the loop thread.
class loop_harness {
 public:
  loop_harness() { uv_loop_init(&loop_); }
  ~loop_harness() = default;
  loop_harness(const loop_harness&) = delete;
  loop_harness& operator=(const loop_harness&) = delete;

  uv_loop_t* loop() { return &loop_; }
  inboxd::server& server() { return *server_; }

  // Makes and starts the server; false (with the reason) if start() failed.
  bool start(const inboxd::server_config& cfg, std::shared_ptr<inboxd::sink> sink,
             inboxd::logger log, std::string& error) {
    server_ = std::make_unique<inboxd::server>(&loop_, cfg, std::move(sink), log);
    return server_->start(error);
  }

  // Runs the loop while client() runs in a thread; the server is shut down
  // once client() returns. Returns uv_loop_close().
  int run(const std::function<void()>& client) {
    uv_async_init(&loop_, &wake_, wake_cb);
    wake_.data = this;
    // Should a client wait stay unanswered, the connections are closed
    // after 20 s, which ends every wait of the client.
    uv_timer_init(&loop_, &deadline_);
    deadline_.data = this;
    uv_timer_start(
        &deadline_,
        [](uv_timer_t* t) {
          static_cast<loop_harness*>(t->data)->server_->abort();
          FAIL_CHECK("the test ran out of time");
        },
        20'000, 0);
    std::thread t([&] {
      client();
      if (!on_loop([this] { stop(); })) FAIL_CHECK("the loop did not stop the server");
    });
    uv_run(&loop_, UV_RUN_DEFAULT);
    t.join();
    server_.reset();
    return uv_loop_close(&loop_);
  }

  // Runs work on the loop thread and waits for it, 5 s at most.
  bool on_loop(std::function<void()> work) {
    auto done = std::make_shared<std::promise<void>>();
    auto finished = done->get_future();
    {
      std::lock_guard lock(mutex_);
      tasks_.push_back([work = std::move(work), done] {
        work();
        done->set_value();
      });
    }
    uv_async_send(&wake_);
    return finished.wait_for(5s) == std::future_status::ready;
  }

 private:
  static void wake_cb(uv_async_t* async) noexcept {
    auto* self = static_cast<loop_harness*>(async->data);
    std::vector<std::function<void()>> tasks;
    {
      std::lock_guard lock(self->mutex_);
      tasks.swap(self->tasks_);
    }
    for (auto& task : tasks) task();
  }

  void stop() {
    server_->shutdown(
        [](void* ctx) {
          auto* self = static_cast<loop_harness*>(ctx);
          uv_close(reinterpret_cast<uv_handle_t*>(&self->wake_), nullptr);
          uv_close(reinterpret_cast<uv_handle_t*>(&self->deadline_), nullptr);
        },
        this);
  }

  uv_loop_t loop_{};
  uv_async_t wake_{};
  uv_timer_t deadline_{};
  std::unique_ptr<inboxd::server> server_;
  std::mutex mutex_;
  std::vector<std::function<void()>> tasks_;
};

// Keeps log lines for the test to read after the loop has stopped.
struct log_lines {
  std::vector<std::string> lines;
  inboxd::logger logger() {
    return {[](void* ctx, inboxd::log_level, std::string_view line) {
              static_cast<log_lines*>(ctx)->lines.emplace_back(line);
            },
            this};
  }
  [[nodiscard]] bool has(std::string_view part) const {
    for (const auto& l : lines)
      if (l.find(part) != std::string::npos) return true;
    return false;
  }
};

inboxd::server_config test_config() {
  inboxd::server_config cfg;
  cfg.listen = {"127.0.0.1:0"};
  cfg.session.hostname = "server-test.example";
  cfg.drain_timeout = 2s;
  return cfg;
}

// A sink that throws from begin(), write() or commit() as long as it has
// failures left, and then stores (in memory) as a sink should.
class flaky_sink final : public inboxd::sink {
 public:
  enum class where { begin, write, commit };
  flaky_sink(where w, int failures) : where_(w), failures_(failures) {}

  inboxd::delivery* begin(const inboxd::envelope& env, inboxd::delivery_listener& l) override {
    if (where_ == where::begin) fail();
    return new flaky_delivery(*this, l, env.recipients.size());
  }

  int stored = 0;

 private:
  void fail() {
    if (failures_ == 0) return;
    --failures_;
    throw std::runtime_error("the embedder's sink failed");
  }

  class flaky_delivery final : public inboxd::delivery {
   public:
    flaky_delivery(flaky_sink& s, inboxd::delivery_listener& l, std::size_t n)
        : sink_(s), listener_(l), results_(n) {}
    bool write(std::string_view) override {
      if (sink_.where_ == where::write) sink_.fail();
      return true;
    }
    void commit() override {
      if (sink_.where_ == where::commit) sink_.fail();
      ++sink_.stored;
      listener_.committed(results_);
      delete this;
    }
    void abort() noexcept override { delete this; }

   private:
    ~flaky_delivery() = default;
    flaky_sink& sink_;
    inboxd::delivery_listener& listener_;
    std::vector<inboxd::store_outcome> results_;
  };

  where where_;
  int failures_;
};

// One message on an open session; returns the reply to its end of data (or
// to DATA, when that is refused).
std::string send_message(smtp_client& c) {
  if (!starts_with(c.cmd("MAIL FROM:<s@example.com>"), "250")) return "MAIL refused";
  if (!starts_with(c.cmd("RCPT TO:<r@example.org>"), "250")) return "RCPT refused";
  std::string r = c.cmd("DATA");
  if (!starts_with(r, "354")) return r;
  c.send("Subject: test\r\n\r\nbody\r\n.\r\n");
  return c.reply();
}

// Makes a self-signed pair in a fresh folder.
std::shared_ptr<const inboxd::tls_credentials> test_credentials() {
  char dir[] = "/tmp/inboxd-server-test-XXXXXX";
  REQUIRE(::mkdtemp(dir) != nullptr);
  inboxd::tls_options opts;
  opts.state_dir = dir;
  opts.hostname = "server-test.example";
  std::string error, note;
  auto creds = inboxd::load_tls_credentials(opts, error, note);
  INFO(error);
  REQUIRE(creds);
  std::string cleanup = std::string("rm -rf '") + dir + "'";
  CHECK(std::system(cleanup.c_str()) == 0);
  return creds;
}

}  // namespace

TEST_CASE("reconfigure refuses to take the credentials from an implicit-TLS listener") {
  auto creds = test_credentials();
  auto sink = std::make_shared<inboxd::null_sink>();
  inboxd::server_config cfg = test_config();
  cfg.listen_tls = {"127.0.0.1:0"};
  cfg.tls = creds;
  loop_harness h;
  log_lines log;
  std::string error;
  REQUIRE(h.start(cfg, sink, log.logger(), error));
  auto bound = h.server().bound_addresses();
  REQUIRE(bound.size() == 2);
  int port = port_of(bound[0]), tls_port = port_of(bound[1]);

  // Without credentials: refused, whatever the new config's listen
  // addresses say (the listeners open are what count).
  inboxd::server_config no_tls = cfg;
  no_tls.tls = nullptr;
  error.clear();
  CHECK_FALSE(h.server().reconfigure(no_tls, sink, error));
  CHECK(error.find("TLS credentials") != std::string::npos);
  no_tls.listen_tls.clear();
  error.clear();
  CHECK_FALSE(h.server().reconfigure(no_tls, sink, error));
  CHECK(error.find("TLS credentials") != std::string::npos);
  int closed = h.run([&] {
    // A client of the implicit-TLS listener is accepted with the
    // credentials kept (it then waits for our ClientHello), and the plain
    // listener serves on.
    smtp_client tls_client(tls_port);
    CHECK(tls_client.connected());
    smtp_client c(port);
    if (!c.connected()) {
      FAIL_CHECK("cannot connect");
      return;
    }
    CHECK(c.reply() == "220 server-test.example ESMTP inboxd");
    CHECK(starts_with(c.cmd("EHLO client.example"), "250"));
    CHECK(starts_with(c.cmd("NOOP"), "250"));
    // Both clients are in (the TLS one accepted), 2 s at most.
    std::size_t in = 0;
    for (int i = 0; i < 200 && in < 2; ++i) {
      CHECK(h.on_loop([&] { in = h.server().connection_count(); }));
      if (in < 2) std::this_thread::sleep_for(10ms);
    }
    CHECK(in == 2);
    // With credentials, a change is taken up.
    bool ok = false;
    std::string why = "not run";
    CHECK(h.on_loop([&] {
      inboxd::server_config renamed = cfg;
      renamed.session.hostname = "renamed.example";
      why.clear();
      ok = h.server().reconfigure(renamed, sink, why);
    }));
    CHECK(ok);
    CHECK(why.empty());
    smtp_client d(port);
    CHECK(d.reply() == "220 renamed.example ESMTP inboxd");
    CHECK(starts_with(d.cmd("QUIT"), "221"));
    CHECK(starts_with(c.cmd("QUIT"), "221"));
  });
  CHECK(closed == 0);
  CHECK(log.has("connect from"));
}

TEST_CASE("reconfigure without credentials is fine with no implicit-TLS listener") {
  auto sink = std::make_shared<inboxd::null_sink>();
  loop_harness h;
  log_lines log;
  std::string error;
  REQUIRE(h.start(test_config(), sink, log.logger(), error));
  inboxd::server_config next = test_config();
  next.listen_tls = {"127.0.0.1:0"};  // Not opened: the listen addresses stay.
  next.session.hostname = "next.example";
  CHECK(h.server().reconfigure(next, sink, error));
  int port = port_of(h.server().bound_addresses().at(0));
  CHECK(h.server().bound_addresses().size() == 1);
  int closed = h.run([&] {
    smtp_client c(port);
    if (!c.connected()) {
      FAIL_CHECK("cannot connect");
      return;
    }
    CHECK(c.reply() == "220 next.example ESMTP inboxd");
    CHECK(starts_with(c.cmd("QUIT"), "221"));
  });
  CHECK(closed == 0);
}

// start() refuses cfg with a reason that names what, and binds nothing.
void check_start_refused(const inboxd::server_config& cfg, std::string_view what) {
  loop_harness h;
  log_lines log;
  std::string error;
  CHECK_FALSE(h.start(cfg, std::make_shared<inboxd::null_sink>(), log.logger(), error));
  CHECK(error.find(what) != std::string::npos);
  CHECK(h.server().bound_addresses().empty());
  CHECK(h.run([] {}) == 0);
}

TEST_CASE("start and reconfigure refuse an IPv6 prefix longer than 128 bits") {
  auto sink = std::make_shared<inboxd::null_sink>();
  inboxd::server_config cfg = test_config();
  cfg.ipv6_prefix_length = 129;
  check_start_refused(cfg, "prefix");
  loop_harness h;
  log_lines log;
  std::string error;
  REQUIRE(h.start(test_config(), sink, log.logger(), error));
  CHECK_FALSE(h.server().reconfigure(cfg, sink, error));
  CHECK(error.find("prefix") != std::string::npos);
  cfg.ipv6_prefix_length = 128;
  CHECK(h.server().reconfigure(cfg, sink, error));
  CHECK(h.run([] {}) == 0);
}

TEST_CASE("start refuses a POP3 listener: the POP3 server is not built yet") {
  inboxd::server_config cfg = test_config();
  cfg.listen_pop3 = {"127.0.0.1:0"};
  check_start_refused(cfg, "POP3");
}

TEST_CASE("a sink that throws gets 451, and the next message on the connection 250") {
  for (auto where :
       {flaky_sink::where::begin, flaky_sink::where::write, flaky_sink::where::commit}) {
    CAPTURE(static_cast<int>(where));
    auto sink = std::make_shared<flaky_sink>(where, 1);
    loop_harness h;
    log_lines log;
    std::string error;
    REQUIRE(h.start(test_config(), sink, log.logger(), error));
    int port = port_of(h.server().bound_addresses().at(0));
    int closed = h.run([&] {
      smtp_client c(port);
      if (!c.greet()) return;
      CHECK(starts_with(send_message(c), "451 4.3.0"));
      CHECK(starts_with(send_message(c), "250 2.0.0 Ok: queued as "));
      CHECK(starts_with(c.cmd("QUIT"), "221"));
    });
    CHECK(closed == 0);
    CHECK(sink->stored == 1);
    CHECK(log.has("sink failed: the embedder's sink failed"));
  }
}

TEST_CASE("after a sink that throws, a reconfigure to a good sink takes the next message") {
  auto bad = std::make_shared<flaky_sink>(flaky_sink::where::commit, 1'000'000);
  auto good = std::make_shared<inboxd::null_sink>();
  loop_harness h;
  log_lines log;
  std::string error;
  REQUIRE(h.start(test_config(), bad, log.logger(), error));
  int port = port_of(h.server().bound_addresses().at(0));
  int closed = h.run([&] {
    smtp_client c(port);
    if (!c.greet()) return;
    CHECK(starts_with(send_message(c), "451 4.3.0"));
    CHECK(starts_with(send_message(c), "451 4.3.0"));
    bool ok = false;
    CHECK(h.on_loop([&] {
      std::string why;
      ok = h.server().reconfigure(test_config(), good, why);
    }));
    CHECK(ok);
    CHECK(starts_with(send_message(c), "250 2.0.0 Ok: queued as "));
    CHECK(starts_with(c.cmd("QUIT"), "221"));
  });
  CHECK(closed == 0);
  CHECK(bad->stored == 0);
  CHECK(good->messages() == 1);
}

TEST_CASE("a recipient policy that throws gets 451 at RCPT, and the session goes on") {
  struct throwing_policy final : inboxd::recipient_policy {
    inboxd::rcpt_verdict resolve(std::string_view address,
                                 std::vector<inboxd::recipient>& out) const override {
      if (starts_with(address, "bad@")) throw std::runtime_error("directory unreachable");
      out.push_back({std::string(address), "good", "example.org"});
      return inboxd::rcpt_verdict::accept;
    }
  };
  auto sink = std::make_shared<inboxd::null_sink>();
  inboxd::server_config cfg = test_config();
  cfg.policy = std::make_shared<throwing_policy>();
  loop_harness h;
  log_lines log;
  std::string error;
  REQUIRE(h.start(cfg, sink, log.logger(), error));
  int port = port_of(h.server().bound_addresses().at(0));
  int closed = h.run([&] {
    smtp_client c(port);
    if (!c.greet()) return;
    CHECK(starts_with(c.cmd("MAIL FROM:<s@example.com>"), "250"));
    CHECK(starts_with(c.cmd("RCPT TO:<bad@example.org>"), "451 4.3.0"));
    CHECK(starts_with(c.cmd("RCPT TO:<good@example.org>"), "250"));
    CHECK(starts_with(c.cmd("DATA"), "354"));
    c.send("Subject: test\r\n\r\nbody\r\n.\r\n");
    CHECK(starts_with(c.reply(), "250 2.0.0 Ok: queued as "));
    CHECK(starts_with(c.cmd("QUIT"), "221"));
  });
  CHECK(closed == 0);
  CHECK(sink->messages() == 1);
  CHECK(log.has("directory unreachable"));
}

TEST_CASE("a logger that throws loses its lines, and the server serves on") {
  int calls = 0;
  inboxd::logger throwing{[](void* ctx, inboxd::log_level, std::string_view) {
                            ++*static_cast<int*>(ctx);
                            throw std::runtime_error("the log is gone");
                          },
                          &calls};
  auto sink = std::make_shared<inboxd::null_sink>();
  loop_harness h;
  std::string error;
  REQUIRE(h.start(test_config(), sink, throwing, error));
  int port = port_of(h.server().bound_addresses().at(0));
  int closed = h.run([&] {
    for (int i = 0; i < 2; ++i) {
      smtp_client c(port);
      if (!c.greet()) return;
      CHECK(starts_with(send_message(c), "250 2.0.0 Ok: queued as "));
      CHECK(starts_with(c.cmd("QUIT"), "221"));
    }
  });
  CHECK(closed == 0);
  CHECK(sink->messages() == 2);
  CHECK(calls > 4);  // "listening on", connects, deliveries, disconnects: all thrown away.
}

namespace {

std::string key_of(const char* address, unsigned prefix) {
  sockaddr_storage ss{};
  if (std::string_view(address).find(':') == std::string_view::npos) {
    auto* in4 = reinterpret_cast<sockaddr_in*>(&ss);
    REQUIRE(uv_ip4_addr(address, 25, in4) == 0);
  } else {
    auto* in6 = reinterpret_cast<sockaddr_in6*>(&ss);
    REQUIRE(uv_ip6_addr(address, 25, in6) == 0);
  }
  return inboxd::net::limit_key(reinterpret_cast<const sockaddr*>(&ss), prefix);
}

}  // namespace

TEST_CASE("limit_key: IPv6 clients count per prefix, IPv4 per address") {
  // One /64 (RFC 6177: what a site is given), two keys the same.
  CHECK(key_of("2001:db8:1:2:3:4:5:6", 64) == "2001:db8:1:2::/64");
  CHECK(key_of("2001:db8:1:2:ffff::", 64) == "2001:db8:1:2::/64");
  CHECK(key_of("2001:db8:1:3::1", 64) == "2001:db8:1:3::/64");
  CHECK(key_of("2001:db8:1:2:3:4:5:6", 48) == "2001:db8:1::/48");
  CHECK(key_of("2001:db8:1:ffff::1", 48) == "2001:db8:1::/48");
  // A prefix that ends inside a group keeps only its leading bits.
  CHECK(key_of("2001:db8:1:2:3:4:5:6", 60) == "2001:db8:1::/60");
  CHECK(key_of("2001:db8:1:1f::", 60) == "2001:db8:1:10::/60");
  CHECK(key_of("2001:db8:1:2:3:4:5:6", 128) == "2001:db8:1:2:3:4:5:6/128");
  CHECK(key_of("2001:db8:1:2:3:4:5:7", 128) == "2001:db8:1:2:3:4:5:7/128");
  CHECK(key_of("2001:db8:1:2:3:4:5:6", 200) == "2001:db8:1:2:3:4:5:6/128");
  CHECK(key_of("2001:db8:1:2:3:4:5:6", 0) == "::/0");
  CHECK(key_of("fe80::1", 0) == "::/0");
  CHECK(key_of("::1", 64) == "::/64");
  // IPv4, and IPv4 on a dual-stack socket, per address whatever the prefix.
  CHECK(key_of("192.0.2.1", 64) == "192.0.2.1");
  CHECK(key_of("::ffff:192.0.2.1", 64) == "192.0.2.1");
  CHECK(key_of("::ffff:192.0.2.1", 0) == "192.0.2.1");
  CHECK(key_of("::ffff:192.0.2.2", 96) == "192.0.2.2");
}
