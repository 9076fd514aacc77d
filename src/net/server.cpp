#include <sys/resource.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>

#include <ctime>
#include <utility>

#include "inboxd/sinks.hpp"
#include "net/connection.hpp"
#include "net/listener.hpp"
#include "net/metrics_http.hpp"
#include "net/server_state.hpp"

namespace inboxd {

namespace {

proto::settings_ptr make_settings(const server_config& cfg, std::shared_ptr<sink> store,
                                  server_metrics& metrics) {
  auto s = std::make_shared<proto::settings>();
  s->metrics = &metrics;
  s->limits = cfg.session;
  s->policy = cfg.policy ? cfg.policy : make_rules_policy(cfg.recipients);
  s->store = std::move(store);
  s->auth = cfg.auth;
  s->filters = cfg.filters;
  s->tls = cfg.tls;
  s->maildrops = cfg.maildrops;
  return s;
}

// The networks of a --proxy-from or --xclient-from list.
bool parse_networks(const std::vector<std::string>& texts, std::string_view what,
                    std::vector<net::network>& out, std::string& error) {
  out.clear();
  for (const auto& t : texts) {
    net::network n;
    if (!net::parse_network(t, n)) {
      error =
          fmt::format(FMT_STRING("bad {} network '{}': want ADDR/BITS, host bits zero"), what, t);
      return false;
    }
    out.push_back(n);
  }
  return true;
}

// Whether the config names an implicit-TLS listener.
bool wants_implicit_tls(const server_config& cfg) {
  return !cfg.listen_tls.empty() || !cfg.listen_tls_proxy.empty() ||
         std::any_of(cfg.listeners.begin(), cfg.listeners.end(),
                     [](const auto& l) { return l.implicit_tls; });
}

// What start() and reconfigure() refuse: a config the listeners cannot
// serve. implicit_tls: an implicit-TLS listener is (or is to be) open.
// The networks of proxy_from and xclient_from are parsed into proxy and
// xclient.
bool check_config(const server_config& cfg, bool implicit_tls, std::string& error,
                  std::vector<net::network>& proxy, std::vector<net::network>& xclient) {
  if (!parse_networks(cfg.proxy_from, "proxy-from", proxy, error) ||
      !parse_networks(cfg.xclient_from, "xclient-from", xclient, error))
    return false;

  if (implicit_tls && !cfg.tls) {
    error = "an implicit-TLS listener needs TLS credentials";
    return false;
  }
  // The POP3 server (issue 14) is not built yet: a config that asks for a
  // POP3 listener is refused, never silently served without one.
  const bool pop3 =
      !cfg.listen_pop3.empty() || !cfg.listen_pop3s.empty() ||
      std::any_of(cfg.listeners.begin(), cfg.listeners.end(), [](const auto& l) { return l.pop3; });
  if (pop3) {
    error = "POP3 listeners are not available in this version of inboxd";
    return false;
  }
  if (cfg.ipv6_prefix_length > 128) {
    error = "the IPv6 prefix length of the per-address limits is at most 128";
    return false;
  }
  return true;
}

}  // namespace

server::state::state(uv_loop_t* l, server_config cfg, std::shared_ptr<inboxd::sink> s, logger lg)
    : loop(l),
      config(std::move(cfg)),
      settings(make_settings(config, std::move(s), metrics)),
      log(lg),
      ids(static_cast<std::uint64_t>(std::time(nullptr)), static_cast<std::uint32_t>(::getpid())) {
  metrics.start_time_seconds =
      std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
}

const server_metrics& server::state::current_metrics() noexcept {
  metrics.connections_open = connection_count;
  if (config.memory) {
    metrics.memory_used = config.memory->used;
    metrics.memory_limit = config.memory->limit;
  }
  return metrics;
}

namespace {

// The loop's lag: a timer due in 1 s runs late by as long as the loop was
// busy (or blocked) when it fell due. uv_now() is the loop's time at the
// start of this turn, when timers run.
constexpr std::uint64_t lag_interval_ms = 1'000;

void lag_timer_cb(uv_timer_t* t) noexcept {
  auto* s = static_cast<server::state*>(t->data);
  std::uint64_t now = uv_now(s->loop);
  s->metrics.loop_lag_seconds =
      static_cast<double>(now > s->lag_due ? now - s->lag_due : 0) / 1000.0;
  s->lag_due = now + lag_interval_ms;
  uv_timer_start(t, lag_timer_cb, lag_interval_ms, 0);
}

}  // namespace

void server::state::maybe_done() {
  if (!shutting_down || !listeners.empty() || metrics_http) return;
  // Lingering connections have had their last reply: once nothing else is
  // left, they do not hold up the exit (a lingering close protects a reply
  // from a reset; here only a client that still sends would get one).
  if (connections && lingering == connection_count) {
    for (auto* c = connections; c; c = c->next) c->close();
    return;
  }
  if (connections) return;
  if (lag_timer_open) {
    lag_timer_open = false;
    uv_close(reinterpret_cast<uv_handle_t*>(&lag_timer),
             [](uv_handle_t* h) { static_cast<server::state*>(h->data)->maybe_done(); });
    return;
  }
  if (drain_timer_open) {
    drain_timer_open = false;
    uv_close(reinterpret_cast<uv_handle_t*>(&drain_timer),
             [](uv_handle_t* h) { static_cast<server::state*>(h->data)->maybe_done(); });
    return;
  }
  if (auto cb = std::exchange(done, nullptr)) cb(done_ctx);
}

server::server(uv_loop_t* loop, server_config config, std::shared_ptr<inboxd::sink> sink,
               logger log)
    : state_(std::make_unique<state>(loop, std::move(config), sink, log)) {}

server::~server() = default;

// Each connection is a file descriptor, and delivery needs a few more (files,
// directories, the loop's own). Past the open-files limit accept() fails
// with EMFILE and libuv drops the client without a word; below it a client
// over the limit gets a 421 and the log says why. So the connection limit
// is kept under the descriptor limit, with room to spare.
//
// Lingering connections (connection::linger) are no longer counted as
// admitted, so they live in that reserve: at most half of it is theirs.
void server::state::fit_connection_limit() {
  max_connections = config.max_connections;
  max_lingering = 1024;
  rlimit rl{};
  if (::getrlimit(RLIMIT_NOFILE, &rl) != 0 || rl.rlim_cur == RLIM_INFINITY) return;
  auto limit = static_cast<std::size_t>(rl.rlim_cur);
  std::size_t reserve = std::max<std::size_t>(32, limit / 8);
  max_lingering = std::min(max_lingering, reserve / 2);
  std::size_t fits = limit > reserve ? limit - reserve : 1;
  if (fits < max_connections) {
    max_connections = fits;
    logf(log_level::warning, "max-connections lowered to {} to fit the open files limit of {}",
         fits, limit);
  }
}

namespace {

// The metrics listener, when the config names one; logged as the
// listeners are, so that a test (or an operator) finds port 0's choice.
bool start_metrics(server::state& s, std::string& error) {
  if (s.config.metrics_listen.empty()) return true;
  s.metrics_http = net::metrics_http::open(s, s.config.metrics_listen, error);
  if (!s.metrics_http) return false;
  s.logf(log_level::info, "metrics on http://{}/metrics", s.metrics_http->bound_address());
  return true;
}

}  // namespace

bool server::start(std::string& error) {
  state& s = *state_;
  s.fit_connection_limit();
  if (!check_config(s.config, wants_implicit_tls(s.config), error, s.proxy_from, s.xclient_from))
    return false;
  auto open_one = [&](const std::string& address, bool implicit_tls, bool lmtp, bool proxy) {
    auto* l = net::listener::open(s, address, implicit_tls, lmtp, proxy, error);
    if (!l) return false;
    s.logf(log_level::info, "listening on {}{}{}{}", l->bound_address(),
           implicit_tls ? " (implicit TLS)" : "", lmtp ? " (LMTP)" : "",
           proxy ? " (PROXY protocol)" : "");
    return true;
  };
  auto open_all = [&](const std::vector<std::string>& addresses, bool implicit_tls, bool lmtp,
                      bool proxy) {
    for (const auto& address : addresses)
      if (!open_one(address, implicit_tls, lmtp, proxy)) return false;
    return true;
  };
  bool opened = open_all(s.config.listen, false, false, false) &&
                open_all(s.config.listen_tls, true, false, false) &&
                open_all(s.config.listen_lmtp, false, true, false) &&
                open_all(s.config.listen_proxy, false, false, true) &&
                open_all(s.config.listen_tls_proxy, true, false, true);
  for (const auto& l : s.config.listeners)
    opened = opened && open_one(l.address, l.implicit_tls, l.lmtp, l.proxy);
  if (!opened || !start_metrics(s, error)) {
    // close() takes each listener off the list.
    while (!s.listeners.empty()) s.listeners.back()->close();
    if (s.metrics_http) s.metrics_http->close();
    return false;
  }
  // Unreferenced: the lag timer alone does not keep the loop running.
  uv_timer_init(s.loop, &s.lag_timer);
  s.lag_timer.data = &s;
  s.lag_timer_open = true;
  s.lag_due = uv_now(s.loop) + lag_interval_ms;
  uv_timer_start(&s.lag_timer, lag_timer_cb, lag_interval_ms, 0);
  uv_unref(reinterpret_cast<uv_handle_t*>(&s.lag_timer));
  return true;
}

const server_metrics& server::metrics() const noexcept {
  return state_->current_metrics();
}

std::string server::metrics_address() const {
  return state_->metrics_http ? state_->metrics_http->bound_address() : std::string{};
}

std::vector<std::string> server::bound_addresses() const {
  std::vector<std::string> out;
  for (auto* l : state_->listeners) out.push_back(l->bound_address());
  return out;
}

std::size_t server::connection_count() const noexcept {
  return state_->connection_count;
}

void server::shutdown(void (*done)(void*), void* ctx) {
  state& s = *state_;
  if (s.shutting_down) return;
  s.shutting_down = true;
  s.done = done;
  s.done_ctx = ctx;
  s.logf(log_level::info, "shutting down: {} connection(s) open", s.connection_count);
  // close() takes each listener off the list.
  while (!s.listeners.empty()) s.listeners.back()->close();
  if (s.metrics_http) s.metrics_http->close();
  // shutdown() may close a connection, but only in uv_close: the list holds.
  for (auto* c = s.connections; c; c = c->next) c->shutdown();
  // Idle connections to a next hop would keep the loop alive.
  s.settings->store->drain();
  uv_timer_init(s.loop, &s.drain_timer);
  s.drain_timer.data = &s;
  s.drain_timer_open = true;
  uv_timer_start(
      &s.drain_timer,
      [](uv_timer_t* t) {
        auto* st = static_cast<state*>(t->data);
        st->logf(log_level::warning, "drain timeout: closing {} connection(s)",
                 st->connection_count);
        for (auto* c = st->connections; c; c = c->next) c->close();
      },
      static_cast<std::uint64_t>(s.config.drain_timeout.count()), 0);
  s.maybe_done();
}

bool server::reconfigure(const server_config& config, std::shared_ptr<inboxd::sink> sink,
                         std::string& error) noexcept {
  state& s = *state_;
  // The listeners stay: what they need, the new config must give (start()
  // checked the same against the listen addresses).
  bool implicit_tls = std::any_of(s.listeners.begin(), s.listeners.end(),
                                  [](const net::listener* l) { return l->implicit_tls(); });
  // Before start(), the config's own implicit-TLS addresses are the ones to come.
  if (s.listeners.empty()) implicit_tls = wants_implicit_tls(s.config);
  try {
    std::vector<net::network> proxy_from, xclient_from;
    if (!check_config(config, implicit_tls, error, proxy_from, xclient_from)) return false;
    // Everything that allocates comes first: on failure nothing has changed.
    auto settings = make_settings(config, std::move(sink), s.metrics);
    server_config next = config;
    next.listen = s.config.listen;
    next.listen_tls = s.config.listen_tls;
    next.listen_lmtp = s.config.listen_lmtp;
    next.listen_proxy = s.config.listen_proxy;
    next.listen_tls_proxy = s.config.listen_tls_proxy;
    next.listeners = s.config.listeners;
    next.unix_socket_mode = s.config.unix_socket_mode;
    next.unix_socket_owner = s.config.unix_socket_owner;
    next.metrics_listen = s.config.metrics_listen;
    next.memory = s.config.memory;
    s.settings = std::move(settings);
    s.config = std::move(next);
    s.proxy_from = std::move(proxy_from);
    s.xclient_from = std::move(xclient_from);
  } catch (...) {
    error.clear();
    error.append("out of memory");
    return false;
  }
  s.fit_connection_limit();
  return true;
}

void server::abort() {
  for (auto* c = state_->connections; c; c = c->next) c->close();
}

}  // namespace inboxd
