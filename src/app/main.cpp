// The inboxd program: a thin main over libinboxd.
//
// Reads the command line and the config file, opens the sink, runs the
// server on the default libuv loop. SIGHUP reloads the config file (on the
// thread pool; a bad file keeps the old settings); SIGTERM/SIGINT drain, and
// a second one closes every connection at once. With --workers N it is the
// supervisor of N such processes instead (app/supervisor.hpp). Under
// systemd it takes socket-activated listeners and reports its state
// (app/systemd.hpp).
#include <grp.h>
#include <pwd.h>
#include <sys/resource.h>
#include <unistd.h>
#include <uv.h>

#include <fmt/format.h>
#include <CLI/CLI.hpp>
#include <algorithm>
#include <cerrno>
#include <charconv>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <iostream>

#include "app/config_file.hpp"
#include "app/log_writer.hpp"
#include "app/supervisor.hpp"
#include "app/systemd.hpp"
#include "inboxd/auth.hpp"
#include "inboxd/filters.hpp"
#include "inboxd/server.hpp"
#include "inboxd/sinks.hpp"
#include "inboxd/tls.hpp"
#include "inboxd/version.hpp"
#include "proto/pipe_command.hpp"
#include "store/files.hpp"

namespace {

using inboxd::app::app_config;
using inboxd::app::uses_sink;

// The log (app/log_writer.hpp) leaves once per loop turn and never blocks
// the loop on a reader that does not read.
using inboxd::app::say;
using inboxd::app::the_log;

struct command_line {
  std::string config_file;
  bool prepare_config = false;
  // The flags that were given, applied over the config file (again on reload).
  std::vector<std::function<void(app_config&)>> overrides;
  std::string workers;  // --workers, when given
};

std::string default_hostname() {
  char name[256] = {};
  if (::gethostname(name, sizeof name - 1) != 0 || !name[0]) return "localhost";
  return name;
}

// --workers N|auto: read at start-up (a reload does not change it).
void add_worker_flags(CLI::App& app, command_line& cl) {
  app.add_option("--workers", cl.workers,
                 "N or auto (one per core): a supervisor and N worker processes (default 1: "
                 "one process, no supervisor); per-address limits are per worker")
      ->check(CLI::Validator(
          [](std::string& s) -> std::string {
            return inboxd::app::parse_workers(s) ? "" : "want auto or a number from 1 to 1024";
          },
          "N|auto"));
}

// Policy services (inboxd/filters.hpp): the flags, each applied over the
// config file as given. The defaults are Postfix's smtpd_policy_service_*.
void add_policy_flags(CLI::App& app, command_line& cl) {
  struct values {
    std::vector<std::string> services;
    double timeout = 0, max_idle = 0, max_ttl = 0;
    unsigned try_limit = 0;
    std::size_t request_limit = 0;
    std::string default_action;
    bool at_data = false;
  };
  auto v = std::make_shared<values>();
  app.add_option("--policy-service", v->services,
                 "IP:PORT or unix:/path of a Postfix policy server (SMTPD_POLICY_README) asked "
                 "at each RCPT, repeatable, before any other filter");
  auto* at_data = app.add_flag("--policy-at-data", v->at_data,
                               "ask the policy services at the end of each message too");
  auto* timeout = app.add_option("--policy-timeout", v->timeout,
                                 "seconds to connect, send and read an answer (default 100)")
                      ->check(CLI::PositiveNumber);
  auto* tries = app.add_option("--policy-try-limit", v->try_limit,
                               "attempts per request, each on a new connection (default 2)")
                    ->check(CLI::Range(1, 100));
  auto* action = app.add_option("--policy-default-action", v->default_action,
                                "the action when no answer came (default \"451 4.3.5 Server "
                                "configuration problem\")");
  auto* idle = app.add_option("--policy-max-idle", v->max_idle,
                              "seconds an idle connection is kept (default 300)")
                   ->check(CLI::PositiveNumber);
  auto* ttl = app.add_option("--policy-max-ttl", v->max_ttl,
                             "seconds after which a connection is not reused (default 1000)")
                  ->check(CLI::PositiveNumber);
  auto* limit = app.add_option("--policy-request-limit", v->request_limit,
                               "requests per connection (default 0: no limit)");
  auto ms = [](double s) { return std::chrono::milliseconds(static_cast<long long>(s * 1000)); };
  app.final_callback([=, &cl, &app] {
    auto& o = cl.overrides;
    if (app.count("--policy-service"))
      o.push_back([=](app_config& c) { c.policy_services = v->services; });
    if (at_data->count()) o.push_back([](app_config& c) { c.policy.at_data = true; });
    if (timeout->count()) o.push_back([=](app_config& c) { c.policy.timeout = ms(v->timeout); });
    if (tries->count()) o.push_back([=](app_config& c) { c.policy.try_limit = v->try_limit; });
    if (action->count())
      o.push_back([=](app_config& c) { c.policy.default_action = v->default_action; });
    if (idle->count()) o.push_back([=](app_config& c) { c.policy.max_idle = ms(v->max_idle); });
    if (ttl->count()) o.push_back([=](app_config& c) { c.policy.max_ttl = ms(v->max_ttl); });
    if (limit->count())
      o.push_back([=](app_config& c) { c.policy.request_limit = v->request_limit; });
  });
}

// The policy services go first in the server's filters: Postfix applies
// its restrictions (check_policy_service) before the milters see RCPT.
// Made without touching the loop, so a reload may make them on the pool.
void add_policy_filters(uv_loop_t* loop, app_config& cfg) {
  auto& filters = cfg.server.filters;
  std::vector<std::shared_ptr<inboxd::filter>> made;
  for (const auto& address : cfg.policy_services) {
    inboxd::policy_options o = cfg.policy;
    o.address = address;
    o.log = {
        [](void*, inboxd::log_level level, std::string_view line) { the_log().write(level, line); },
        nullptr};
    made.push_back(inboxd::make_policy_filter(loop, std::move(o)));
  }
  filters.insert(filters.begin(), made.begin(), made.end());
}

// The pipe sink's flags (sinks.hpp, pipe_options).
void add_pipe_flags(CLI::App& app, app_config& v, double& timeout,
                    const CLI::Validator& at_least_one, const CLI::Validator& whole) {
  app.add_option("--pipe-command", v.pipe_command,
                 "'PROGRAM ARGS...' that --sink pipe runs per message, the message on its stdin "
                 "(split as sh(1) would, never run by a shell unless it names one)");
  app.add_option("--pipe-max", v.pipe_max, "pipe programs running at once (default 100)")
      ->check(at_least_one);
  app.add_option("--pipe-queue", v.pipe_queue,
                 "messages waiting for a pipe program beyond those; more get 451 (default 100)")
      ->check(whole);
  app.add_option("--pipe-timeout", timeout,
                 "seconds a pipe program may run before it is killed and 451 sent (default 100)")
      ->check(CLI::PositiveNumber);
  app.add_flag("--pipe-from-line", v.pipe_from_line,
               "an mbox \"From \" line before the message on the program's stdin");
}

// Returns the exit code to use now, or -1 to go on.
int parse(int argc, char** argv, command_line& cl) {
  CLI::App app{"inboxd: a lightweight inbound SMTP server", "inboxd"};
  CLI::Validator at_least_one(
      [](std::string& s) -> std::string {
        bool digits = !s.empty() && s.find_first_not_of("0123456789") == std::string::npos;
        bool zero = s.find_first_not_of('0') == std::string::npos;
        return digits && !zero ? "" : "want a whole number of at least 1";
      },
      "N");
  // CLI11 reads "-1" into an unsigned as its largest value: digits only.
  CLI::Validator whole(
      [](std::string& s) -> std::string {
        bool digits = !s.empty() && s.find_first_not_of("0123456789") == std::string::npos;
        return digits ? "" : "want a whole number, 0 or more";
      },
      "N");
  app_config v;  // Holds the parsed values; only the flags given are applied.
  std::vector<std::string> listen, domains;
  std::string bare_newline;
  app.add_option("-c,--config", cl.config_file, "TOML config file (see inboxd.example.toml)");
  app.add_flag("--check-config", cl.prepare_config, "validate the config and exit: 0 ok, 2 not");
  app.add_option("--listen", listen, "ADDR:PORT to listen on, repeatable (default 127.0.0.1:2525)");
  app.add_option("--domain", domains, "a domain to accept mail for, repeatable (default: any)");
  app.add_option("--maildir", v.maildir, "Maildir, or a template with {domain} and {user}");
  app.add_option("--mbox", v.mbox,
                 "store into mbox files from this template, e.g. var/mail/{user}");
  double handoff_times[4] = {};  // connect, command, data, max idle
  app.add_option("--lmtp-to", v.lmtp_to, "the LMTP server of --sink lmtp: HOST:PORT or unix:PATH");
  app.add_option("--smtp-to", v.smtp_to, "the next hop of --sink smtp: HOST:PORT or unix:PATH");
  app.add_option("--handoff-connect-timeout", handoff_times[0], "seconds (default 30)")
      ->check(CLI::PositiveNumber);
  app.add_option("--handoff-command-timeout", handoff_times[1],
                 "seconds for each reply of the next hop (default 300)")
      ->check(CLI::PositiveNumber);
  app.add_option("--handoff-data-timeout", handoff_times[2],
                 "seconds a body write to the next hop may take (default 180)")
      ->check(CLI::PositiveNumber);
  app.add_option("--handoff-max-idle", handoff_times[3],
                 "seconds a connection to the next hop waits for the next message (default 2; "
                 "0: one session per message)")
      ->check(CLI::NonNegativeNumber);
  app.add_flag("--handoff-dsn", v.handoff_dsn,
               "the next hop takes DSN parameters on: offer DSN and pass them");
  app.add_option("--smtp-tls", v.smtp_tls, "STARTTLS towards the next hop: none, may or require")
      ->check(CLI::IsMember({"none", "may", "require"}));
  app.add_option("--smtp-tls-ca", v.smtp_tls_ca,
                 "PEM CA file to verify the next hop with (require; default: the system's)");
  app.add_option("--smtp-auth-file", v.smtp_auth_file,
                 "file with a user:password line: AUTH PLAIN towards the next hop");
  app.add_option("--sink", v.sink,
                 "where mail goes: maildir, mbox, null, pipe, lmtp or smtp; given twice, a local "
                 "store and a hand-off (a copy is stored once the hand-off took it)")
      ->check(CLI::IsMember({"maildir", "mbox", "null", "pipe", "lmtp", "smtp"}));
  app.add_option("--maildir-sync", v.maildir_sync,
                 "fsync (default): file and new/ per message; syncfs: one syncfs of the "
                 "Maildir's filesystem shared by concurrent messages (a filesystem of its own)")
      ->check(CLI::IsMember({"fsync", "syncfs"}));
  app.add_option("--spool-dir", v.spool_dir, "where large messages wait for the mbox sink");
  app.add_option("--hostname", v.server.session.hostname, "our name in replies and Received");
  std::vector<std::string> listen_tls, listen_lmtp;
  app.add_option("--listen-tls", listen_tls, "ADDR:PORT for implicit TLS (RFC 8314), repeatable");
  app.add_option("--listen-lmtp", listen_lmtp,
                 "ADDR:PORT (or unix:/path, as every --listen* takes) for LMTP, RFC 2033");
  std::vector<std::string> listen_proxy, listen_tls_proxy, proxy_from, xclient_from;
  double proxy_timeout = 0;
  app.add_option("--listen-proxy", listen_proxy,
                 "ADDR:PORT for SMTP behind a load balancer: each connection starts with a "
                 "PROXY protocol header (v1 or v2), repeatable");
  app.add_option("--listen-tls-proxy", listen_tls_proxy,
                 "ADDR:PORT for implicit TLS behind a load balancer: the PROXY header, then TLS");
  app.add_option(
      "--proxy-from", proxy_from,
      "CIDR allowed to send PROXY headers, repeatable (default 127.0.0.0/8 and ::1/128)");
  app.add_option("--proxy-timeout", proxy_timeout,
                 "seconds a PROXY listener waits for the header (default 5)")
      ->check(CLI::PositiveNumber);
  app.add_option("--xclient-from", xclient_from,
                 "CIDR of clients allowed XCLIENT (Postfix's), repeatable (default: none)");
  app.add_option("--unix-socket-mode", v.unix_socket_mode,
                 "octal mode of the unix sockets listened on (default 0660)");
  app.add_option("--unix-socket-owner", v.unix_socket_owner,
                 "user[:group] of the unix sockets (default: the server's)");
  app.add_option("--tls-cert", v.tls_cert, "PEM certificate chain (default: self-signed)");
  app.add_option("--tls-key", v.tls_key, "PEM private key of --tls-cert");
  app.add_option("--state-dir", v.state_dir,
                 "where the self-signed certificate is kept (var/state)");
  app.add_flag("--require-tls", v.server.session.require_tls,
               "MAIL before STARTTLS gets 530 5.7.0");
  app.add_option("--auth-users", v.auth_users, "file of user:crypt-hash lines; enables AUTH");
  app.add_flag("--allow-plaintext-auth", v.server.session.allow_plaintext_auth,
               "offer AUTH without TLS too");
  app.add_flag("--require-auth", v.server.session.require_auth, "MAIL before AUTH gets 530 5.7.0");
  app.add_flag("--accept-dsn", v.server.session.accept_dsn,
               "offer DSN (RFC 3461) and keep ORCPT as X-Original-To; sends no notices");
  double command_timeout = 0, data_timeout = 0, greeting_delay = 0, drain_timeout = 0,
         rate_window = 0;
  app.add_option("--max-connections", v.server.max_connections, "in all (default 10000)")
      ->check(at_least_one);
  app.add_option("--max-connections-per-ip", v.server.max_connections_per_ip,
                 "from one address (default 50; loopback exempt unless --limit-loopback)")
      ->check(at_least_one);
  app.add_option("--connection-rate-per-ip", v.server.connection_rate_per_ip,
                 "new connections per minute from one address (default 0: no limit)");
  app.add_flag("--limit-loopback", v.server.limit_loopback,
               "apply per-address limits to loopback too");
  app.add_option("--max-errors", v.server.session.max_errors,
                 "protocol errors, then 421 (default 20)")
      ->check(at_least_one);
  app.add_option("--error-delay-ms", v.server.session.error_delay_ms,
                 "tarpit: each error reply waits this long times the errors so far (default 0)");
  app.add_option("--command-timeout", command_timeout, "seconds (default 300, RFC 5321 4.5.3.2)")
      ->check(CLI::PositiveNumber);
  app.add_option("--data-timeout", data_timeout, "seconds between DATA reads (default 180)")
      ->check(CLI::PositiveNumber);
  app.add_option("--min-data-rate", v.server.min_data_rate,
                 "bytes/s in DATA after a minute (default 500; 0 off)");
  app.add_option("--min-data-rate-window", rate_window,
                 "seconds of DATA before the rate counts (60)")
      ->check(CLI::PositiveNumber);
  app.add_option("--greeting-delay", greeting_delay, "seconds; early talkers get 554 (default 0)")
      ->check(CLI::NonNegativeNumber);
  app.add_option("--drain-timeout", drain_timeout, "seconds SIGTERM waits (default 30)")
      ->check(CLI::NonNegativeNumber);
  app.add_option("--user", v.user,
                 "started as root: run as this user once the ports are bound (what start-up "
                 "makes is theirs)");
  app.add_option("--group", v.group, "and this group (default: the user's)");
  app.add_flag("--allow-root", v.allow_root, "keep running as root (not recommended)");
  app.add_option("--max-message-size", v.server.session.max_message_size,
                 "in bytes (default 10240000)")
      ->check(at_least_one);
  app.add_option("--max-recipients", v.server.session.max_recipients, "per message (default 1000)")
      ->check(at_least_one);
  app.add_option("--recipient-overshoot-limit", v.server.session.recipient_overshoot_limit,
                 "RCPTs past --max-recipients (452) that are not yet errors (default 1000)")
      ->check(whole);
  app.add_option("--ipv6-prefix-length", v.server.ipv6_prefix_length,
                 "per-address limits count IPv6 clients per prefix this long (default 64)")
      ->check(CLI::Range(0, 128));
  app.add_option("--memory-budget", v.memory_budget,
                 "bytes of message data all clients together hold in memory (default 67108864)")
      ->check(at_least_one);
  app.add_option("--metrics", v.server.metrics_listen,
                 "serve Prometheus metrics at http://ADDR:PORT/metrics (a bare PORT: loopback)");
  app.add_option("--bare-newline", bare_newline, "normalize (default) or reject")
      ->check(CLI::IsMember({"normalize", "reject"}));
  add_worker_flags(app, cl);
  add_policy_flags(app, cl);
  double pipe_timeout = 0;
  add_pipe_flags(app, v, pipe_timeout, at_least_one, whole);
  // Milters: Postfix's smtpd_milters, milter_default_action, milter_*_timeout.
  double milter_timeouts[3] = {30, 30, 300};
  app.add_option("--milter", v.milters, "HOST:PORT or unix:PATH of a milter, repeatable, in order");
  app.add_option("--milter-default-action", v.milter_default_action,
                 "when a milter fails: tempfail (default) or accept")
      ->check(CLI::IsMember({"tempfail", "accept"}));
  app.add_option("--milter-connect-timeout", milter_timeouts[0], "seconds (default 30)")
      ->check(CLI::PositiveNumber);
  app.add_option("--milter-command-timeout", milter_timeouts[1], "seconds (default 30)")
      ->check(CLI::PositiveNumber);
  app.add_option("--milter-content-timeout", milter_timeouts[2],
                 "seconds for the message's end (default 300)")
      ->check(CLI::PositiveNumber);
  app.set_version_flag("--version", std::string("inboxd ") + INBOXD_VERSION + " (" +
                                        inboxd::tls_library_version() + ")");
  app.footer("Also: inboxd passwd   (reads a password on stdin, prints a hash for --auth-users)");
  try {
    app.parse(argc, argv);
  } catch (const CLI::CallForHelp&) {
    std::fputs(app.help().c_str(), stdout);
    return 0;
  } catch (const CLI::CallForVersion&) {
    std::puts(app.version().c_str());
    return 0;
  } catch (const CLI::ParseError& e) {
    std::string what = e.what();
    std::replace(what.begin(), what.end(), '\n', ' ');
    fmt::print(stderr, "inboxd: {} (try --help)\n", what);
    return 2;
  }
  auto& o = cl.overrides;
  auto given = [&](const char* flag) { return app.count(flag) > 0; };
  if (given("--listen")) o.push_back([=](app_config& c) { c.server.listen = listen; });
  if (given("--workers")) o.push_back([w = cl.workers](app_config& c) { c.workers = w; });
  if (given("--domain"))
    o.push_back([=](app_config& c) {
      c.server.recipients.domains.clear();
      for (const auto& d : domains) c.server.recipients.domains.push_back({d, {}, {}});
    });
  if (given("--maildir")) o.push_back([=](app_config& c) { c.maildir = v.maildir; });
  if (given("--maildir-sync")) o.push_back([=](app_config& c) { c.maildir_sync = v.maildir_sync; });
  if (given("--mbox"))
    o.push_back([=](app_config& c) {
      c.mbox = v.mbox;
      c.sink = {"mbox"};
    });
  if (given("--sink")) o.push_back([=](app_config& c) { c.sink = v.sink; });
  if (given("--spool-dir")) o.push_back([=](app_config& c) { c.spool_dir = v.spool_dir; });
  if (given("--lmtp-to")) o.push_back([=](app_config& c) { c.lmtp_to = v.lmtp_to; });
  if (given("--smtp-to")) o.push_back([=](app_config& c) { c.smtp_to = v.smtp_to; });
  auto ms = [](double s) { return std::chrono::milliseconds(static_cast<long long>(s * 1000)); };
  std::chrono::milliseconds app_config::*times[4] = {
      &app_config::handoff_connect_timeout, &app_config::handoff_command_timeout,
      &app_config::handoff_data_timeout, &app_config::handoff_max_idle};
  const char* time_flags[4] = {"--handoff-connect-timeout", "--handoff-command-timeout",
                               "--handoff-data-timeout", "--handoff-max-idle"};
  for (int i = 0; i < 4; ++i)
    if (given(time_flags[i]))
      o.push_back([=, t = ms(handoff_times[i]), f = times[i]](app_config& c) { c.*f = t; });
  if (given("--handoff-dsn")) o.push_back([](app_config& c) { c.handoff_dsn = true; });
  if (given("--smtp-tls")) o.push_back([=](app_config& c) { c.smtp_tls = v.smtp_tls; });
  if (given("--smtp-tls-ca")) o.push_back([=](app_config& c) { c.smtp_tls_ca = v.smtp_tls_ca; });
  if (given("--smtp-auth-file"))
    o.push_back([=](app_config& c) { c.smtp_auth_file = v.smtp_auth_file; });
  if (given("--listen-tls")) o.push_back([=](app_config& c) { c.server.listen_tls = listen_tls; });
  if (given("--listen-lmtp"))
    o.push_back([=](app_config& c) { c.server.listen_lmtp = listen_lmtp; });
  if (given("--listen-proxy"))
    o.push_back([=](app_config& c) { c.server.listen_proxy = listen_proxy; });
  if (given("--listen-tls-proxy"))
    o.push_back([=](app_config& c) { c.server.listen_tls_proxy = listen_tls_proxy; });
  if (given("--proxy-from")) o.push_back([=](app_config& c) { c.server.proxy_from = proxy_from; });
  if (given("--xclient-from"))
    o.push_back([=](app_config& c) { c.server.xclient_from = xclient_from; });
  if (given("--unix-socket-mode"))
    o.push_back([=](app_config& c) { c.unix_socket_mode = v.unix_socket_mode; });
  if (given("--unix-socket-owner"))
    o.push_back([=](app_config& c) { c.unix_socket_owner = v.unix_socket_owner; });
  if (given("--tls-cert")) o.push_back([=](app_config& c) { c.tls_cert = v.tls_cert; });
  if (given("--tls-key")) o.push_back([=](app_config& c) { c.tls_key = v.tls_key; });
  if (given("--state-dir")) o.push_back([=](app_config& c) { c.state_dir = v.state_dir; });
  if (given("--require-tls"))
    o.push_back([](app_config& c) { c.server.session.require_tls = true; });
  if (given("--auth-users")) o.push_back([=](app_config& c) { c.auth_users = v.auth_users; });
  if (given("--allow-plaintext-auth"))
    o.push_back([](app_config& c) { c.server.session.allow_plaintext_auth = true; });
  if (given("--require-auth"))
    o.push_back([](app_config& c) { c.server.session.require_auth = true; });
  if (given("--accept-dsn")) o.push_back([](app_config& c) { c.server.session.accept_dsn = true; });
  auto seconds = [](double s) {
    return std::chrono::milliseconds(static_cast<long long>(s * 1000));
  };
  if (given("--max-connections"))
    o.push_back([=](app_config& c) { c.server.max_connections = v.server.max_connections; });
  if (given("--max-connections-per-ip"))
    o.push_back(
        [=](app_config& c) { c.server.max_connections_per_ip = v.server.max_connections_per_ip; });
  if (given("--connection-rate-per-ip"))
    o.push_back(
        [=](app_config& c) { c.server.connection_rate_per_ip = v.server.connection_rate_per_ip; });
  if (given("--limit-loopback")) o.push_back([](app_config& c) { c.server.limit_loopback = true; });
  if (given("--max-errors"))
    o.push_back([=](app_config& c) { c.server.session.max_errors = v.server.session.max_errors; });
  if (given("--error-delay-ms"))
    o.push_back([=](app_config& c) {
      c.server.session.error_delay_ms =
          std::min<std::uint32_t>(v.server.session.error_delay_ms, 10'000);
    });
  if (given("--command-timeout"))
    o.push_back([=](app_config& c) { c.server.command_timeout = seconds(command_timeout); });
  if (given("--data-timeout"))
    o.push_back([=](app_config& c) { c.server.data_timeout = seconds(data_timeout); });
  if (given("--min-data-rate"))
    o.push_back([=](app_config& c) { c.server.min_data_rate = v.server.min_data_rate; });
  if (given("--min-data-rate-window"))
    o.push_back([=](app_config& c) { c.server.min_data_rate_window = seconds(rate_window); });
  if (given("--greeting-delay"))
    o.push_back([=](app_config& c) { c.server.greeting_delay = seconds(greeting_delay); });
  if (given("--proxy-timeout"))
    o.push_back([=](app_config& c) { c.server.proxy_timeout = seconds(proxy_timeout); });
  if (given("--drain-timeout"))
    o.push_back([=](app_config& c) { c.server.drain_timeout = seconds(drain_timeout); });
  if (given("--user")) o.push_back([=](app_config& c) { c.user = v.user; });
  if (given("--group")) o.push_back([=](app_config& c) { c.group = v.group; });
  if (given("--allow-root")) o.push_back([](app_config& c) { c.allow_root = true; });
  if (given("--hostname"))
    o.push_back([=](app_config& c) { c.server.session.hostname = v.server.session.hostname; });
  if (given("--max-message-size"))
    o.push_back([=](app_config& c) {
      c.server.session.max_message_size = v.server.session.max_message_size;
    });
  if (given("--max-recipients"))
    o.push_back(
        [=](app_config& c) { c.server.session.max_recipients = v.server.session.max_recipients; });
  if (given("--recipient-overshoot-limit"))
    o.push_back([=](app_config& c) {
      c.server.session.recipient_overshoot_limit = v.server.session.recipient_overshoot_limit;
    });
  if (given("--ipv6-prefix-length"))
    o.push_back([=](app_config& c) { c.server.ipv6_prefix_length = v.server.ipv6_prefix_length; });
  if (given("--memory-budget"))
    o.push_back([=](app_config& c) { c.memory_budget = v.memory_budget; });
  if (given("--metrics"))
    o.push_back([=](app_config& c) { c.server.metrics_listen = v.server.metrics_listen; });
  if (given("--pipe-command")) o.push_back([=](app_config& c) { c.pipe_command = v.pipe_command; });
  if (given("--pipe-max")) o.push_back([=](app_config& c) { c.pipe_max = v.pipe_max; });
  if (given("--pipe-queue")) o.push_back([=](app_config& c) { c.pipe_queue = v.pipe_queue; });
  if (given("--pipe-timeout"))
    o.push_back([=](app_config& c) { c.pipe_timeout = seconds(pipe_timeout); });
  if (given("--pipe-from-line")) o.push_back([](app_config& c) { c.pipe_from_line = true; });
  if (given("--milter")) o.push_back([=](app_config& c) { c.milters = v.milters; });
  if (given("--milter-default-action"))
    o.push_back([=](app_config& c) { c.milter_default_action = v.milter_default_action; });
  if (given("--milter-connect-timeout"))
    o.push_back([=](app_config& c) { c.milter_connect_timeout = seconds(milter_timeouts[0]); });
  if (given("--milter-command-timeout"))
    o.push_back([=](app_config& c) { c.milter_command_timeout = seconds(milter_timeouts[1]); });
  if (given("--milter-content-timeout"))
    o.push_back([=](app_config& c) { c.milter_content_timeout = seconds(milter_timeouts[2]); });
  if (given("--bare-newline"))
    o.push_back([=](app_config& c) {
      c.server.session.bare_newline = bare_newline == "reject"
                                          ? inboxd::bare_newline_policy::reject
                                          : inboxd::bare_newline_policy::normalize;
    });
  return -1;
}

// Defaults, then the file, then the flags. Blocks (reads the file).
bool load(const command_line& cl, app_config& cfg, std::string& error) {
  cfg = app_config{};
  cfg.server.session.hostname = default_hostname();
  if (!cl.config_file.empty() && !inboxd::app::load_config_file(cl.config_file, cfg, error))
    return false;
  for (const auto& apply : cl.overrides) apply(cfg);
  return inboxd::app::validate(cfg, error);
}

// The settings of the LMTP (lmtp) or SMTP hand-off sink.
inboxd::handoff_options handoff_options(const app_config& cfg, bool lmtp,
                                        const std::shared_ptr<inboxd::memory_budget>& memory) {
  using tls = inboxd::handoff_options::tls;
  return {.lmtp = lmtp,
          .to = lmtp ? cfg.lmtp_to : cfg.smtp_to,
          .helo = cfg.server.session.hostname,
          .connect_timeout = cfg.handoff_connect_timeout,
          .command_timeout = cfg.handoff_command_timeout,
          .data_timeout = cfg.handoff_data_timeout,
          .max_idle = cfg.handoff_max_idle,
          .max_pool = 8,
          .dsn = cfg.handoff_dsn,
          .starttls = cfg.smtp_tls == "require" ? tls::require
                      : cfg.smtp_tls == "may"   ? tls::may
                                                : tls::none,
          .tls_ca = cfg.smtp_tls_ca,
          .auth_file = cfg.smtp_auth_file,
          .memory = memory};
}

std::shared_ptr<inboxd::sink> open_sink(const std::string& name, uv_loop_t* loop,
                                        const app_config& cfg,
                                        const std::shared_ptr<inboxd::memory_budget>& memory,
                                        inboxd::file_owner owner, std::string& error);
// The milters go after the other filters (a policy service asks first, as
// Postfix's smtpd_*_restrictions run before smtpd_milters). A message held
// for them past the memory budget waits in an unnamed file in $TMPDIR.
void add_milters(uv_loop_t* loop, app_config& cfg,
                 const std::shared_ptr<inboxd::memory_budget>& memory) {
  const char* tmp = std::getenv("TMPDIR");
  auto ms = [](std::chrono::milliseconds d) { return static_cast<std::uint32_t>(d.count()); };
  for (const auto& address : cfg.milters)
    cfg.server.filters.push_back(inboxd::make_milter(
        loop, {.address = address,
               .connect_timeout_ms = ms(cfg.milter_connect_timeout),
               .command_timeout_ms = ms(cfg.milter_command_timeout),
               .content_timeout_ms = ms(cfg.milter_content_timeout),
               .accept_on_failure = cfg.milter_default_action == "accept",
               .memory = memory,
               .spool_dir = tmp && *tmp ? tmp : "/tmp",
               .log = {[](void*, inboxd::log_level level, std::string_view line) {
                         the_log().write(level, line);
                       },
                       nullptr}}));
}

// Opens what the config names: the sink, the TLS credentials, the password
// file. Both sinks count their memory in the one budget the program keeps
// for its whole life (its limit is the loop thread's to change). What this
// creates (folders, files, the self-signed pair) goes to owner: at start-up
// as root, the user the server is about to become; on reload, nobody else
// (the server already runs as that user). Blocks (files, folders): call at
// start-up or on the thread pool.
std::shared_ptr<inboxd::sink> open_parts(uv_loop_t* loop, app_config& cfg,
                                         const std::shared_ptr<inboxd::memory_budget>& memory,
                                         inboxd::file_owner owner, std::string& error,
                                         std::string& note) {
  inboxd::tls_options tls{.cert_file = cfg.tls_cert,
                          .key_file = cfg.tls_key,
                          .state_dir = cfg.state_dir,
                          .hostname = cfg.server.session.hostname,
                          .owner = owner};
  cfg.server.tls = inboxd::load_tls_credentials(tls, error, note);
  if (!cfg.server.tls) return nullptr;
  if (!cfg.auth_users.empty()) {
    cfg.server.auth = inboxd::load_password_file(loop, cfg.auth_users, error);
    if (!cfg.server.auth) return nullptr;
  }
  add_policy_filters(loop, cfg);
  add_milters(loop, cfg, memory);
  if (cfg.sink.size() == 1) return open_sink(cfg.sink[0], loop, cfg, memory, owner, error);
  // The hand-off commits first, the local store only after it (sinks.hpp).
  bool local_first = inboxd::app::is_local_sink(cfg.sink[0]);
  std::shared_ptr<inboxd::sink> local =
      open_sink(cfg.sink[local_first ? 0 : 1], loop, cfg, memory, owner, error);
  if (!local) return nullptr;
  std::shared_ptr<inboxd::sink> hop =
      open_sink(cfg.sink[local_first ? 1 : 0], loop, cfg, memory, owner, error);
  if (!hop) return nullptr;
  return inboxd::make_tee_sink(std::move(hop), std::move(local));
}

// Opens one sink by its name; as open_parts, this blocks.
std::shared_ptr<inboxd::sink> open_sink(const std::string& name, uv_loop_t* loop,
                                        const app_config& cfg,
                                        const std::shared_ptr<inboxd::memory_budget>& memory,
                                        inboxd::file_owner owner, std::string& error) {
  if (name == "null") return std::make_shared<inboxd::null_sink>();
  if (name == "lmtp" || name == "smtp")
    return inboxd::open_handoff_sink(loop, handoff_options(cfg, name == "lmtp", memory), error);
  // One count of running programs for every pipe sink (reloads make new
  // ones), as the memory budget; made once, used on the loop thread only.
  static const std::shared_ptr<inboxd::pipe_slots> slots = inboxd::make_pipe_slots();
  if (name == "pipe")
    return inboxd::open_pipe_sink(loop,
                                  {.command = cfg.pipe_command,
                                   .max_running = cfg.pipe_max,
                                   .max_waiting = cfg.pipe_queue,
                                   .timeout = cfg.pipe_timeout,
                                   .from_line = cfg.pipe_from_line,
                                   .memory = memory,
                                   .slots = slots},
                                  error);
  if (name == "mbox")
    return inboxd::open_mbox_sink(
        loop, {.path = cfg.mbox, .spool_dir = cfg.spool_dir, .memory = memory, .owner = owner},
        error);
  return inboxd::open_maildir_sink(
      loop,
      {.path = cfg.maildir,
       .hostname = cfg.server.session.hostname,
       .memory = memory,
       .owner = owner,
       .sync = cfg.maildir_sync == "syncfs" ? inboxd::maildir_sync::syncfs
                                            : inboxd::maildir_sync::fsync},
      error);
}

// Raises the soft limit on open files to the hard one: each connection is a
// file descriptor. Returns the limit now in force.
rlim_t raise_fd_limit() {
  rlimit rl{};
  if (::getrlimit(RLIMIT_NOFILE, &rl) != 0) return 0;
  if (rl.rlim_cur < rl.rlim_max) {
    rl.rlim_cur = rl.rlim_max;
    ::setrlimit(RLIMIT_NOFILE, &rl);
    ::getrlimit(RLIMIT_NOFILE, &rl);
  }
  return rl.rlim_cur;
}

// Whom the server runs as once its ports are bound.
struct run_as {
  std::string name;          // empty: stay who we are
  inboxd::file_owner owner;  // set when started as root with a user to become
};

// Started as root with --user: looks up the user (and --group) now, before
// anything is created, because what start-up makes (Maildirs, the spool, the
// state folder, the self-signed pair) must be theirs: after the drop they
// deliver every message and reread every file on SIGHUP. Blocks (the user
// database): at start-up only.
bool resolve_user(const app_config& cfg, run_as& who, std::string& error) {
  if (::geteuid() != 0 || cfg.user.empty()) return true;
  const passwd* pw = ::getpwnam(cfg.user.c_str());
  if (!pw) {
    error = fmt::format(FMT_STRING("no such user: {}"), cfg.user);
    return false;
  }
  who.name = pw->pw_name;
  who.owner = {pw->pw_uid, pw->pw_gid};
  if (!cfg.group.empty()) {
    const group* gr = ::getgrnam(cfg.group.c_str());
    if (!gr) {
      error = fmt::format(FMT_STRING("no such group: {}"), cfg.group);
      return false;
    }
    who.owner.gid = gr->gr_gid;
  }
  return true;
}

// The unix sockets' mode and owner ("user[:group]"), into cfg.server.
// Blocks (the user database): at start-up only.
bool resolve_socket_owner(app_config& cfg, std::string& error) {
  if (!inboxd::app::parse_socket_mode(cfg.unix_socket_mode, cfg.server.unix_socket_mode)) {
    error = fmt::format(FMT_STRING("bad unix-socket-mode '{}'"), cfg.unix_socket_mode);
    return false;
  }
  if (cfg.unix_socket_owner.empty()) return true;
  std::string name = cfg.unix_socket_owner, group_name;
  if (auto colon = name.find(':'); colon != name.npos) {
    group_name = name.substr(colon + 1);
    name.resize(colon);
  }
  inboxd::file_owner& owner = cfg.server.unix_socket_owner;
  if (!name.empty()) {
    const passwd* pw = ::getpwnam(name.c_str());
    if (!pw) {
      error = fmt::format(FMT_STRING("unix-socket-owner: no such user: {}"), name);
      return false;
    }
    owner = {pw->pw_uid, group_name.empty() ? pw->pw_gid : owner.gid};
  }
  if (!group_name.empty()) {
    const group* gr = ::getgrnam(group_name.c_str());
    if (!gr) {
      error = fmt::format(FMT_STRING("unix-socket-owner: no such group: {}"), group_name);
      return false;
    }
    owner.gid = gr->gr_gid;
  }
  return true;
}

// The ports are bound: become the user (setgid, initgroups, setuid: in that
// order, or the groups stay root's). Without a user, going on as root needs
// --allow-root (said after the rest of the config is found good, so that a
// config error is the one reported).
bool drop_privileges(const app_config& cfg, const run_as& who, std::string& error) {
  if (::geteuid() != 0) return true;
  if (!who.owner.set()) {
    if (cfg.allow_root) return true;
    error = "refusing to run as root: give --user (or --allow-root)";
    return false;
  }
  if (::setgid(who.owner.gid) != 0 || ::initgroups(who.name.c_str(), who.owner.gid) != 0 ||
      ::setuid(who.owner.uid) != 0) {
    error = fmt::format(FMT_STRING("cannot become {}: {}"), who.name, std::strerror(errno));
    return false;
  }
  // setuid(0) must fail now, or the drop did not take.
  if (::setuid(0) == 0) {
    error = "still able to become root after dropping privileges";
    return false;
  }
  return true;
}

// After the drop, as the user: can it do what every delivery and every
// reload will ask of it? Start-up made what was missing and gave it to the
// user, but what was there before keeps its owner (a Maildir made as root
// by an earlier start, mode 0700, refuses every delivery with 451). A
// folder the sink writes into that the user cannot write is an error now,
// in one line, rather than a deferral of every message; a file a reload
// rereads that the user cannot read is a warning (the server works until
// the next SIGHUP, which would then fail). Blocks (access(2)): at start-up.
bool check_usable(const command_line& cl, const app_config& cfg, const std::string& user,
                  std::string& error, std::vector<std::string>& warnings) {
  auto usable = [&](const std::string& path, int mode, const char* what) {
    if (::access(path.c_str(), mode) == 0) return true;
    error =
        fmt::format(FMT_STRING("{} cannot {} {} {}: {} (give it to {}, or remove it and "
                               "let inboxd make it)"),
                    user, mode & W_OK ? "write to" : "use", what, path, std::strerror(errno), user);
    return false;
  };
  auto readable = [&](const std::string& path, const char* what) {
    if (path.empty() || ::access(path.c_str(), R_OK) == 0) return;
    warnings.push_back(fmt::format(FMT_STRING("{} cannot read {} {}: {}; a SIGHUP will fail to "
                                              "reload it"),
                                   user, what, path, std::strerror(errno)));
  };
  namespace store = inboxd::store;
  // Where a template makes each recipient's place: its fixed folders, or
  // the working folder when it starts with a {...}.
  auto template_root = [](const std::string& path) {
    std::string prefix = store::fixed_prefix(path);
    return prefix.empty() ? std::string(".") : prefix;
  };
  if (uses_sink(cfg, "maildir")) {
    if (!store::is_template(cfg.maildir)) {
      for (const char* sub : {"/tmp", "/new", "/cur"})
        if (!usable(cfg.maildir + sub, W_OK | X_OK, "the Maildir folder")) return false;
    } else if (!usable(template_root(cfg.maildir), W_OK | X_OK, "the folder of Maildirs")) {
      return false;
    }
  }
  if (uses_sink(cfg, "mbox")) {
    if (!cfg.spool_dir.empty() && !usable(cfg.spool_dir, W_OK | X_OK, "the spool folder"))
      return false;
    if (!store::is_template(cfg.mbox)) {
      if (!usable(cfg.mbox, R_OK | W_OK, "the mbox")) return false;
    } else if (!usable(template_root(cfg.mbox), W_OK | X_OK, "the folder of mboxes")) {
      return false;
    }
  }
  // A program named by its path that the user may not run would fail
  // every message with 451: say so now. A bare name is looked up in PATH
  // by each child.
  std::vector<std::string> words;
  if (uses_sink(cfg, "pipe") && inboxd::proto::split_command(cfg.pipe_command, words, error) &&
      words[0].find('/') != std::string::npos && ::access(words[0].c_str(), X_OK) != 0) {
    error = fmt::format(FMT_STRING("{} cannot run the pipe program {}: {}"), user, words[0],
                        std::strerror(errno));
    return false;
  }
  error.clear();
  if (cfg.tls_cert.empty()) {
    readable(cfg.state_dir + "/self-signed-key.pem", "the TLS key");
    readable(cfg.state_dir + "/self-signed-cert.pem", "the TLS certificate");
  } else {
    readable(cfg.tls_key, "the TLS key");
    readable(cfg.tls_cert, "the TLS certificate");
  }
  readable(cfg.auth_users, "the password file");
  readable(cl.config_file, "the config file");
  return true;
}

// "inboxd passwd": a hash for the password file, from a password on stdin.
int passwd_command() {
  std::string password;
  if (!std::getline(std::cin, password) || password.empty()) {
    fmt::print(stderr, "inboxd passwd: give the password on standard input\n");
    return 2;
  }
  std::string hash = inboxd::hash_password(password);
  std::fill(password.begin(), password.end(), '\0');
  if (hash.empty()) {
    fmt::print(stderr, "inboxd passwd: libcrypt could not hash\n");
    return 1;
  }
  fmt::print("{}\n", hash);
  return 0;
}

struct runtime {
  uv_loop_t* loop = nullptr;
  const command_line* cl = nullptr;
  inboxd::server* srv = nullptr;
  // Shared by every sink the program opens, so that a reload neither resets
  // nor doubles what messages in progress hold.
  std::shared_ptr<inboxd::memory_budget> memory;
  uv_signal_t sigterm{};
  uv_signal_t sigint{};
  uv_signal_t sighup{};
  // What systemd (or the supervisor) is told: app/systemd.hpp.
  inboxd::app::notifier* notify = nullptr;
  uv_timer_t status_timer{};
  uv_timer_t watchdog_timer{};
  std::string last_status{};
  int stop_signals = 0;
  bool reloading = false;
  bool reload_again = false;  // a SIGHUP came during a reload
};

// A reload reads files and makes folders, so it runs on the thread pool.
struct reload_job {
  uv_work_t req{};
  runtime* rt = nullptr;
  app_config cfg;
  std::shared_ptr<inboxd::sink> sink;
  std::string error;
  std::string note;
};

void reload_work_cb(uv_work_t* req) noexcept {
  auto* job = static_cast<reload_job*>(req->data);
  try {
    if (load(*job->rt->cl, job->cfg, job->error))
      job->sink = open_parts(job->rt->loop, job->cfg, job->rt->memory, {}, job->error, job->note);
  } catch (const std::exception& e) {
    job->error = e.what();
  }
}

// Messages accepted, for STATUS=: counted from the one line each message
// gets in the log ("status=sent"), so the library keeps no counter for it.
std::uint64_t messages_accepted = 0;

// The library's logger: the log writer, counting accepted messages on the way.
inboxd::logger counting_logger() {
  return {[](void*, inboxd::log_level level, std::string_view line) {
            if (line.find(" status=sent (") != line.npos) ++messages_accepted;
            the_log().write(level, line);
          },
          nullptr};
}

// STATUS= for systemd (sd_notify(3)); to the supervisor also the counts it
// adds up over its workers.
std::string status_lines(const runtime& rt) {
  std::size_t connections = rt.srv->connection_count();
  std::string s = fmt::format(FMT_STRING("STATUS={} connections, {} messages accepted"),
                              connections, messages_accepted);
  if (rt.notify->to_supervisor())
    s += fmt::format(FMT_STRING("\nX_INBOXD_CONNECTIONS={}\nX_INBOXD_MESSAGES={}"), connections,
                     messages_accepted);
  return s;
}

// STATUS= at most every 2 s, and only when it changed.
void status_cb(uv_timer_t* t) noexcept {
  auto* rt = static_cast<runtime*>(t->data);
  if (rt->reloading) return;  // The reload's READY=1 brings its own STATUS=.
  try {
    std::string s = status_lines(*rt);
    if (s == rt->last_status) return;
    rt->last_status = std::move(s);
    rt->notify->send(rt->last_status);
  } catch (...) {
    // Out of memory: no STATUS= this time.
  }
}

// From the loop, so that a stalled loop stops the pings and systemd (or
// the supervisor) sees it.
void watchdog_cb(uv_timer_t* t) noexcept {
  static_cast<runtime*>(t->data)->notify->send("WATCHDOG=1");
}

// Listening, and as the user it runs as: READY=1, then STATUS= and the
// watchdog's pings (at half its interval, as sd_watchdog_enabled(3) asks).
void start_notifying(runtime& rt) {
  for (uv_timer_t* t : {&rt.status_timer, &rt.watchdog_timer}) {
    uv_timer_init(rt.loop, t);
    t->data = &rt;
  }
  if (!rt.notify->enabled()) return;
  rt.last_status = status_lines(rt);
  rt.notify->send("READY=1\n" + rt.last_status);
  uv_timer_start(&rt.status_timer, status_cb, 2000, 2000);
  if (std::uint64_t usec = rt.notify->watchdog_usec()) {
    std::uint64_t half_ms = std::max<std::uint64_t>(1, usec / 2000);
    uv_timer_start(&rt.watchdog_timer, watchdog_cb, half_ms, half_ms);
  }
}

// A reload (or a run of them, SIGHUPs coalesced) is over: READY=1 again,
// with STATUS= saying whether it was applied.
void reload_done(runtime* rt, const std::string& error) {
  if (rt->stop_signals) return;  // STOPPING=1 was said: no READY=1 after it.
  if (error.empty()) {
    rt->last_status = status_lines(*rt);
    rt->notify->send("READY=1\nSTATUS=reloaded; " + rt->last_status.substr(7));
    return;
  }
  std::string state = "READY=1\nSTATUS=reload failed, the old config stays: " + error;
  if (rt->notify->to_supervisor()) state += "\nX_INBOXD_RELOAD_FAILED=" + error;
  rt->last_status.clear();
  rt->notify->send(state);
}

void start_reload(runtime* rt);

void reload_after_cb(uv_work_t* req, int) noexcept {
  std::unique_ptr<reload_job> job(static_cast<reload_job*>(req->data));
  runtime* rt = job->rt;
  rt->reloading = false;
  // The file may have changed since this reload read it: read it again.
  if (std::exchange(rt->reload_again, false) && !rt->stop_signals) start_reload(rt);
  bool ok = job->sink && job->rt->srv->reconfigure(job->cfg.server, job->sink, job->error);
  if (!ok) {
    say(inboxd::log_level::error, "reload failed, the old config stays: {}", job->error);
  } else {
    rt->memory->limit = job->cfg.memory_budget;  // Here: the budget is the loop thread's.
    if (!job->note.empty()) say(inboxd::log_level::info, "{}", job->note);
    say(inboxd::log_level::info, "reloaded {}",
        job->rt->cl->config_file.empty() ? "(no config file)" : job->rt->cl->config_file);
  }
  if (!rt->reloading) reload_done(rt, ok ? std::string() : job->error);
}

void on_sighup(uv_signal_t* handle, int) noexcept {
  auto* rt = static_cast<runtime*>(handle->data);
  if (rt->stop_signals) return;
  if (rt->reloading) {
    rt->reload_again = true;
    return;
  }
  // systemd.service(5), Type=notify-reload: RELOADING=1 with the time it began.
  rt->notify->send(
      fmt::format(FMT_STRING("RELOADING=1\nMONOTONIC_USEC={}"), inboxd::app::monotonic_usec()));
  start_reload(rt);
}

void start_reload(runtime* rt) {
  rt->reloading = true;
  auto* job = new reload_job;
  job->rt = rt;
  job->req.data = job;
  uv_queue_work(rt->loop, &job->req, reload_work_cb, reload_after_cb);
}

void on_stop_signal(uv_signal_t* handle, int signum) noexcept {
  auto* rt = static_cast<runtime*>(handle->data);
  if (++rt->stop_signals == 1) {
    say(inboxd::log_level::info, "{}: draining", signum == SIGTERM ? "SIGTERM" : "SIGINT");
    rt->notify->send("STOPPING=1");
    rt->srv->shutdown(
        [](void* ctx) {
          auto* r = static_cast<runtime*>(ctx);
          for (uv_signal_t* h : {&r->sigterm, &r->sigint, &r->sighup})
            uv_close(reinterpret_cast<uv_handle_t*>(h), nullptr);
          for (uv_timer_t* t : {&r->status_timer, &r->watchdog_timer})
            uv_close(reinterpret_cast<uv_handle_t*>(t), nullptr);
          inboxd::close_policy_connections(r->loop);
          the_log().stop();
        },
        rt);
  } else {
    say(inboxd::log_level::warning, "second signal: closing every connection now");
    rt->srv->abort();
  }
}

// With --workers, worker i (INBOXD_WORKER, from 1) serves its own metrics
// on the configured port + i - 1: a scrape must reach every worker, which
// one SO_REUSEPORT port would not do (it reaches one at random). Prometheus
// lists the N targets and sums them. Port 0 stays 0: each worker picks one.
void worker_metrics_port(command_line& cl, app_config& cfg) {
  const char* index = std::getenv("INBOXD_WORKER");
  unsigned worker = 0;
  if (!index || std::from_chars(index, index + std::strlen(index), worker).ec != std::errc{} ||
      worker <= 1)
    return;
  auto shift = [worker](app_config& c) {
    std::string& m = c.server.metrics_listen;
    std::size_t colon = m.rfind(':');
    std::size_t digits = colon == std::string::npos ? 0 : colon + 1;
    unsigned port = 0;
    auto [end, ec] = std::from_chars(m.data() + digits, m.data() + m.size(), port);
    if (m.empty() || ec != std::errc{} || end != m.data() + m.size() || port == 0) return;
    m = m.substr(0, digits) + std::to_string(std::min(port + worker - 1, 65535u));
  };
  shift(cfg);
  cl.overrides.push_back(shift);
}

// Socket activation (sd_listen_fds(3)): the passed sockets become the
// listen lists, as "fd:N" entries sorted by name or address, and stay so on
// every reload (the same override). False with the reason in error.
bool adopt_sockets(command_line& cl, app_config& cfg, std::vector<std::string>& notes,
                   std::string& error) {
  std::vector<inboxd::app::inherited_socket> inherited;
  if (!inboxd::app::take_listen_fds(inherited, error)) return false;
  if (inherited.empty()) return true;
  inboxd::server_config lists = cfg.server;
  if (!inboxd::app::assign_sockets(inherited, lists, notes, error)) return false;
  auto apply = [lists](app_config& c) {
    c.server.listen = lists.listen;
    c.server.listen_tls = lists.listen_tls;
    c.server.listen_lmtp = lists.listen_lmtp;
    c.server.listen_proxy = lists.listen_proxy;
    c.server.listen_tls_proxy = lists.listen_tls_proxy;
    c.server.listeners = lists.listeners;
  };
  apply(cfg);
  cl.overrides.push_back(apply);
  return true;
}

// --workers N: binds the sockets once (as root, for port 25), becomes the
// user, and supervises N workers that run this program again as that user.
// open_parts has already made what the workers will use, owned by the user.
int run_supervisor(uv_loop_t* loop, const command_line& cl, app_config& cfg, unsigned workers,
                   const run_as& who, inboxd::app::notifier& notify, char** argv,
                   std::vector<std::string> notes) {
  std::string error;
  inboxd::app::supervisor_options opt{.workers = workers, .argv = argv, .notify = &notify};
  if (!inboxd::app::bind_worker_sockets(cfg.server, workers, opt.sockets, opt.unix_paths, notes,
                                        error)) {
    fmt::print(stderr, "inboxd: {}\n", error);
    return 2;
  }
  std::vector<std::string> warnings;
  if (!drop_privileges(cfg, who, error) ||
      (who.owner.set() && !check_usable(cl, cfg, who.name, error, warnings))) {
    fmt::print(stderr, "inboxd: {}\n", error);
    for (const auto& path : opt.unix_paths) ::unlink(path.c_str());
    return 2;
  }
  the_log().start(loop);
  for (const auto& w : warnings) say(inboxd::log_level::warning, "{}", w);
  for (const auto& n : notes) say(inboxd::log_level::info, "{}", n);
  if (::geteuid() != 0 || !cfg.user.empty())
    say(inboxd::log_level::info, "supervisor running as uid {} gid {}", ::getuid(), ::getgid());
  int rc = inboxd::app::supervise(loop, std::move(opt));
  if (int closed = uv_loop_close(loop); closed != 0)
    say(inboxd::log_level::error, "loop not empty at exit: {}", uv_err_name(closed));
  say(inboxd::log_level::info, "stopped");
  return rc;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc == 2 && std::string_view(argv[1]) == "passwd") return passwd_command();
  command_line cl;
  if (int rc = parse(argc, argv, cl); rc >= 0) return rc;
  app_config cfg;
  std::string error;
  if (!load(cl, cfg, error)) {
    fmt::print(stderr, "{}\n", error);
    return 2;
  }
  if (cl.prepare_config) {
    fmt::print(stderr, "{}: ok\n", cl.config_file.empty() ? "(command line)" : cl.config_file);
    return 0;
  }
  // Sockets from systemd (or from our supervisor, for a worker) replace the
  // listen lists; the notifier tells the one or the other how we are.
  std::vector<std::string> notes;
  inboxd::app::notifier notify;
  if (std::string note = notify.open_from_environment(); !note.empty()) notes.push_back(note);
  worker_metrics_port(cl, cfg);
  if (!adopt_sockets(cl, cfg, notes, error)) {
    fmt::print(stderr, "inboxd: {}\n", error);
    return 2;
  }
  // A worker is one process whatever --workers says.
  unsigned workers = notify.to_supervisor() ? 1 : inboxd::app::parse_workers(cfg.workers);
  std::signal(SIGPIPE, SIG_IGN);
  // fsync-bound deliveries wait on the thread pool; give it more than libuv's 4.
  ::setenv("UV_THREADPOOL_SIZE", "16", 0);

  uv_loop_t* loop = uv_default_loop();
  auto memory = std::make_shared<inboxd::memory_budget>();
  memory->limit = cfg.memory_budget;
  run_as who;
  if (!resolve_user(cfg, who, error) || !resolve_socket_owner(cfg, error)) {
    fmt::print(stderr, "inboxd: {}\n", error);
    return 2;
  }
  // The sinks and the self-signed pair are made before the ports are bound
  // and root is given up: root can create under root-owned folders such as
  // /var/mail, and hands what it makes to the user.
  std::string note;
  std::shared_ptr<inboxd::sink> sink = open_parts(loop, cfg, memory, who.owner, error, note);
  if (!sink) {
    fmt::print(stderr, "inboxd: {}\n", error);
    return 2;
  }
  if (workers > 1) {
    // The supervisor holds no mail: what open_parts made stays, for the
    // workers to open, and its objects go.
    sink.reset();
    cfg.server.tls.reset();
    cfg.server.auth.reset();
    if (!note.empty()) notes.push_back(note);
    return run_supervisor(loop, cl, cfg, workers, who, notify, argv, notes);
  }
  the_log().start(loop);
  cfg.server.memory = memory;  // Reported in the metrics.
  inboxd::server srv(loop, cfg.server, sink, counting_logger());
  sink.reset();
  // The server holds the filters now: when a reload replaces them, the old
  // ones go with their last session, and close their connections.
  cfg.server.filters.clear();
  if (!srv.start(error)) {
    fmt::print(stderr, "inboxd: {}\n", error);
    uv_run(loop, UV_RUN_DEFAULT);
    return 2;
  }
  std::vector<std::string> warnings;
  if (!drop_privileges(cfg, who, error) ||
      (who.owner.set() && !check_usable(cl, cfg, who.name, error, warnings))) {
    fmt::print(stderr, "inboxd: {}\n", error);
    return 2;
  }
  for (const auto& w : warnings) say(inboxd::log_level::warning, "{}", w);
  if (::geteuid() != 0 || !cfg.user.empty())
    say(inboxd::log_level::info, "running as uid {} gid {}", ::getuid(), ::getgid());
  say(inboxd::log_level::info, "open files limit: {}", raise_fd_limit());
  if (!note.empty()) say(inboxd::log_level::info, "{}", note);
  for (const auto& n : notes) say(inboxd::log_level::info, "{}", n);
  runtime rt{.loop = loop, .cl = &cl, .srv = &srv, .memory = memory, .notify = &notify};
  for (auto [h, sig] : {std::pair{&rt.sigterm, SIGTERM}, std::pair{&rt.sigint, SIGINT},
                        std::pair{&rt.sighup, SIGHUP}}) {
    uv_signal_init(loop, h);
    h->data = &rt;
    uv_signal_start(h, sig == SIGHUP ? on_sighup : on_stop_signal, sig);
  }
  start_notifying(rt);
  uv_run(loop, UV_RUN_DEFAULT);
  int rc = uv_loop_close(loop);
  if (rc != 0) say(inboxd::log_level::error, "loop not empty at exit: {}", uv_err_name(rc));
  say(inboxd::log_level::info, "stopped");
  return 0;
}
