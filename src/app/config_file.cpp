#include "app/config_file.hpp"

#include <fmt/format.h>

#include <toml++/toml.h>
#include <uv.h>

#include <algorithm>
#include <charconv>
#include <set>

#include "inboxd/filters.hpp"
#include "proto/pipe_command.hpp"

namespace inboxd::app {
namespace {

// A config error at the place in the file it is about.
struct config_error {
  toml::source_region where;
  std::string what;
};

std::string position(const std::string& file, const toml::source_region& where) {
  return fmt::format(FMT_STRING("{}:{}:{}"), file, where.begin.line, where.begin.column);
}

class reader {
 public:
  explicit reader(const toml::table& table) : table_(table) {}

  // Each getter marks its key as known; unknown() then names the rest.
  void get(std::string_view key, std::string& out) {
    if (const toml::node* n = find(key)) {
      auto v = n->value<std::string>();
      if (!v) throw config_error{n->source(), fmt::format(FMT_STRING("{} must be a string"), key)};
      out = *v;
    }
  }
  void get(std::string_view key, bool& out) {
    if (const toml::node* n = find(key)) {
      auto v = n->value<bool>();
      if (!v)
        throw config_error{n->source(), fmt::format(FMT_STRING("{} must be true or false"), key)};
      out = *v;
    }
  }
  void get_count(std::string_view key, std::size_t& out) {
    if (const toml::node* n = find(key)) {
      auto v = n->value<std::int64_t>();
      if (!v || *v < 1)
        throw config_error{n->source(),
                           fmt::format(FMT_STRING("{} must be a whole number of at least 1"), key)};
      out = static_cast<std::size_t>(*v);
    }
  }
  void get_number(std::string_view key, std::size_t& out) {
    if (const toml::node* n = find(key)) {
      auto v = n->value<std::int64_t>();
      if (!v || *v < 0)
        throw config_error{n->source(),
                           fmt::format(FMT_STRING("{} must be a whole number, 0 or more"), key)};
      out = static_cast<std::size_t>(*v);
    }
  }
  void get_range(std::string_view key, std::size_t low, std::size_t high, std::size_t& out) {
    if (const toml::node* n = find(key)) {
      auto v = n->value<std::int64_t>();
      if (!v || *v < 0 || static_cast<std::uint64_t>(*v) < low ||
          static_cast<std::uint64_t>(*v) > high)
        throw config_error{n->source(), fmt::format(FMT_STRING("{} must be a whole number from "
                                                               "{} to {}"),
                                                    key, low, high)};
      out = static_cast<std::size_t>(*v);
    }
  }
  void get_seconds(std::string_view key, std::chrono::milliseconds& out) {
    if (const toml::node* n = find(key)) {
      auto v = n->value<double>();
      if (!v || *v < 0)
        throw config_error{n->source(),
                           fmt::format(FMT_STRING("{} must be seconds, 0 or more"), key)};
      out = std::chrono::milliseconds(static_cast<long long>(*v * 1000));
    }
  }
  void get(std::string_view key, std::vector<std::string>& out) {
    if (const toml::node* n = find(key)) out = strings(*n, key);
  }
  const toml::node* find(std::string_view key) {
    known_.insert(std::string(key));
    return table_.get(key);
  }
  void reject_unknown() const {
    for (const auto& [key, node] : table_)
      if (!known_.count(std::string(key.str())))
        throw config_error{key.source(), fmt::format(FMT_STRING("unknown key '{}'"), key.str())};
  }

  static std::vector<std::string> strings(const toml::node& n, std::string_view key) {
    std::vector<std::string> out;
    if (auto s = n.value<std::string>()) return {*s};
    const toml::array* a = n.as_array();
    if (!a)
      throw config_error{n.source(), fmt::format(FMT_STRING("{} must be a list of strings"), key)};
    for (const toml::node& item : *a) {
      auto s = item.value<std::string>();
      if (!s)
        throw config_error{item.source(),
                           fmt::format(FMT_STRING("{} must be a list of strings"), key)};
      out.push_back(*s);
    }
    return out;
  }

 private:
  const toml::table& table_;
  std::set<std::string> known_;
};

bare_newline_policy parse_bare_newline(const toml::node& n) {
  auto v = n.value<std::string>();
  if (v && *v == "normalize") return bare_newline_policy::normalize;
  if (v && *v == "reject") return bare_newline_policy::reject;
  throw config_error{n.source(), "bare-newline must be \"normalize\" or \"reject\""};
}

domain_rules read_domain(const toml::table& t) {
  reader r(t);
  domain_rules d;
  r.get("name", d.name);
  if (d.name.empty()) throw config_error{t.source(), "a [[domain]] needs a name"};
  r.get("users", d.users);
  if (const toml::node* aliases = r.find("aliases")) {
    const toml::table* at = aliases->as_table();
    if (!at)
      throw config_error{aliases->source(), "aliases must be a table: alias = [\"user\", ...]"};
    for (const auto& [alias, targets] : *at)
      d.aliases[std::string(alias.str())] = reader::strings(targets, alias.str());
  }
  r.reject_unknown();
  return d;
}

// [[listener]]: address, and what it speaks (tls, lmtp, proxy).
server_config::listener_config read_listener(const toml::table& t) {
  reader r(t);
  server_config::listener_config l;
  r.get("address", l.address);
  if (l.address.empty()) throw config_error{t.source(), "a [[listener]] needs an address"};
  r.get("tls", l.implicit_tls);
  r.get("lmtp", l.lmtp);
  r.get("proxy", l.proxy);
  r.reject_unknown();
  return l;
}

// workers = 4, or workers = "auto".
void read_workers(reader& r, std::string& out) {
  const toml::node* n = r.find("workers");
  if (!n) return;
  if (auto count = n->value<std::int64_t>()) {
    out = std::to_string(*count);
  } else if (auto word = n->value<std::string>()) {
    out = *word;
  }
  if (parse_workers(out) == 0)
    throw config_error{n->source(), "workers must be \"auto\" or a whole number from 1 to 1024"};
}

void read_policy(reader& r, app_config& cfg) {
  policy_options& p = cfg.policy;
  r.get("policy-service", cfg.policy_services);
  r.get("policy-at-data", p.at_data);
  r.get_seconds("policy-timeout", p.timeout);
  std::size_t tries = p.try_limit;
  r.get_range("policy-try-limit", 1, 100, tries);
  p.try_limit = static_cast<unsigned>(tries);
  r.get("policy-default-action", p.default_action);
  r.get_seconds("policy-max-idle", p.max_idle);
  r.get_seconds("policy-max-ttl", p.max_ttl);
  r.get_number("policy-request-limit", p.request_limit);
}

void read_file(const toml::table& root, app_config& cfg) {
  reader r(root);
  session_config& s = cfg.server.session;
  r.get("listen", cfg.server.listen);
  r.get("hostname", s.hostname);
  r.get_count("max-message-size", s.max_message_size);
  r.get_count("max-recipients", s.max_recipients);
  r.get_number("recipient-overshoot-limit", s.recipient_overshoot_limit);
  if (const toml::node* n = r.find("bare-newline")) s.bare_newline = parse_bare_newline(*n);
  r.get("sink", cfg.sink);
  r.get("maildir", cfg.maildir);
  r.get("lmtp-to", cfg.lmtp_to);
  r.get("smtp-to", cfg.smtp_to);
  r.get_seconds("handoff-connect-timeout", cfg.handoff_connect_timeout);
  r.get_seconds("handoff-command-timeout", cfg.handoff_command_timeout);
  r.get_seconds("handoff-data-timeout", cfg.handoff_data_timeout);
  r.get_seconds("handoff-max-idle", cfg.handoff_max_idle);
  r.get("handoff-dsn", cfg.handoff_dsn);
  r.get("smtp-tls", cfg.smtp_tls);
  r.get("smtp-tls-ca", cfg.smtp_tls_ca);
  r.get("smtp-auth-file", cfg.smtp_auth_file);
  r.get("maildir-sync", cfg.maildir_sync);
  r.get("mbox", cfg.mbox);
  r.get("pipe-command", cfg.pipe_command);
  r.get_count("pipe-max", cfg.pipe_max);
  r.get_number("pipe-queue", cfg.pipe_queue);
  r.get_seconds("pipe-timeout", cfg.pipe_timeout);
  r.get("pipe-from-line", cfg.pipe_from_line);
  r.get("spool-dir", cfg.spool_dir);
  r.get("listen-tls", cfg.server.listen_tls);
  r.get("listen-lmtp", cfg.server.listen_lmtp);
  r.get("metrics", cfg.server.metrics_listen);
  r.get("listen-proxy", cfg.server.listen_proxy);
  r.get("listen-tls-proxy", cfg.server.listen_tls_proxy);
  r.get("proxy-from", cfg.server.proxy_from);
  r.get_seconds("proxy-timeout", cfg.server.proxy_timeout);
  r.get("xclient-from", cfg.server.xclient_from);
  if (const toml::node* n = r.find("listener")) {
    const toml::array* a = n->as_array();
    if (!a) throw config_error{n->source(), "listener must be a list of tables: [[listener]]"};
    cfg.server.listeners.clear();
    for (const toml::node& item : *a) {
      const toml::table* t = item.as_table();
      if (!t) throw config_error{item.source(), "each listener must be a table: [[listener]]"};
      cfg.server.listeners.push_back(read_listener(*t));
    }
  }
  r.get("unix-socket-mode", cfg.unix_socket_mode);
  r.get("unix-socket-owner", cfg.unix_socket_owner);
  r.get("tls-cert", cfg.tls_cert);
  r.get("tls-key", cfg.tls_key);
  r.get("state-dir", cfg.state_dir);
  r.get("require-tls", s.require_tls);
  r.get("auth-users", cfg.auth_users);
  r.get("allow-plaintext-auth", s.allow_plaintext_auth);
  r.get("require-auth", s.require_auth);
  r.get("accept-dsn", s.accept_dsn);
  recipient_rules& rules = cfg.server.recipients;
  r.get("case-insensitive-local-parts", rules.case_insensitive);
  r.get("sub-address-delimiter", rules.sub_address_delimiter);
  r.get("postmaster-domain", rules.postmaster_domain);
  r.get_seconds("drain-timeout", cfg.server.drain_timeout);
  r.get_seconds("command-timeout", cfg.server.command_timeout);
  r.get_seconds("data-timeout", cfg.server.data_timeout);
  r.get_seconds("greeting-delay", cfg.server.greeting_delay);
  r.get_count("max-connections", cfg.server.max_connections);
  r.get_count("max-connections-per-ip", cfg.server.max_connections_per_ip);
  r.get_number("connection-rate-per-ip", cfg.server.connection_rate_per_ip);
  r.get_number("min-data-rate", cfg.server.min_data_rate);
  r.get_seconds("min-data-rate-window", cfg.server.min_data_rate_window);
  r.get("limit-loopback", cfg.server.limit_loopback);
  std::size_t prefix = cfg.server.ipv6_prefix_length;
  r.get_range("ipv6-prefix-length", 0, 128, prefix);
  cfg.server.ipv6_prefix_length = static_cast<unsigned>(prefix);
  r.get_count("memory-budget", cfg.memory_budget);
  r.get_count("max-errors", s.max_errors);
  std::size_t error_delay_ms = s.error_delay_ms;
  r.get_number("error-delay-ms", error_delay_ms);
  s.error_delay_ms = static_cast<std::uint32_t>(std::min<std::size_t>(error_delay_ms, 10'000));
  r.get("user", cfg.user);
  r.get("group", cfg.group);
  r.get("allow-root", cfg.allow_root);
  read_workers(r, cfg.workers);
  read_policy(r, cfg);
  r.get("milter", cfg.milters);
  r.get("milter-default-action", cfg.milter_default_action);
  r.get_seconds("milter-connect-timeout", cfg.milter_connect_timeout);
  r.get_seconds("milter-command-timeout", cfg.milter_command_timeout);
  r.get_seconds("milter-content-timeout", cfg.milter_content_timeout);
  if (const toml::node* n = r.find("domain")) {
    const toml::array* a = n->as_array();
    if (!a) throw config_error{n->source(), "domain must be a list of tables: [[domain]]"};
    rules.domains.clear();
    for (const toml::node& item : *a) {
      const toml::table* t = item.as_table();
      if (!t) throw config_error{item.source(), "each domain must be a table: [[domain]]"};
      rules.domains.push_back(read_domain(*t));
    }
  }
  r.reject_unknown();
}

}  // namespace

bool load_config_file(const std::string& path, app_config& cfg, std::string& error) {
  try {
    toml::table root = toml::parse_file(path);
    app_config next = cfg;
    read_file(root, next);
    if (!validate(next, error)) {
      error = fmt::format(FMT_STRING("{}:1:1: {}"), path, error);
      return false;
    }
    cfg = std::move(next);
    return true;
  } catch (const toml::parse_error& e) {
    if (e.source().begin.line == 0)  // The file could not be read: point at its start.
      error = fmt::format(FMT_STRING("{}:1:1: {}"), path, e.description());
    else
      error = fmt::format(FMT_STRING("{}: {}"), position(path, e.source()), e.description());
  } catch (const config_error& e) {
    error = fmt::format(FMT_STRING("{}: {}"), position(path, e.where), e.what);
  }
  return false;
}

unsigned parse_workers(const std::string& text) {
  if (text == "auto") return std::max(1u, uv_available_parallelism());
  unsigned n = 0;
  auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), n);
  if (ec != std::errc{} || end != text.data() + text.size() || n < 1 || n > 1024) return 0;
  return n;
}

bool parse_socket_mode(const std::string& text, unsigned& mode) {
  if (text.empty() || text.size() > 4 || text.find_first_not_of("01234567") != text.npos)
    return false;
  mode = static_cast<unsigned>(std::stoul(text, nullptr, 8));
  return mode <= 0777;
}

bool is_local_sink(std::string_view name) {
  return name == "maildir" || name == "mbox" || name == "null";
}

namespace {

// One sink, or a local store and a hand-off (make_tee_sink in sinks.hpp).
bool validate_sinks(const app_config& cfg, std::string& error) {
  for (const std::string& name : cfg.sink) {
    if (!is_local_sink(name) && name != "pipe" && name != "lmtp" && name != "smtp") {
      error = fmt::format(
          FMT_STRING("sink must be maildir, mbox, null, pipe, lmtp or smtp, not '{}'"), name);
      return false;
    }
  }
  std::size_t local = std::count_if(cfg.sink.begin(), cfg.sink.end(), is_local_sink);
  if (cfg.sink.empty() || cfg.sink.size() > 2 || (cfg.sink.size() == 2 && local != 1)) {
    error = "sink names one sink, or two: a local store (maildir, mbox, null) and a hand-off";
    return false;
  }
  if (uses_sink(cfg, "lmtp") && cfg.lmtp_to.empty()) {
    error = "sink = \"lmtp\" needs lmtp-to, e.g. lmtp-to = \"unix:/run/dovecot/lmtp\"";
    return false;
  }
  if (uses_sink(cfg, "smtp") && cfg.smtp_to.empty()) {
    error = "sink = \"smtp\" needs smtp-to, e.g. smtp-to = \"relay.example:25\"";
    return false;
  }
  if (cfg.smtp_tls != "none" && cfg.smtp_tls != "may" && cfg.smtp_tls != "require") {
    error =
        fmt::format(FMT_STRING("smtp-tls must be none, may or require, not '{}'"), cfg.smtp_tls);
    return false;
  }
  if (uses_sink(cfg, "pipe") && cfg.pipe_command.empty()) {
    error = "sink = \"pipe\" needs pipe-command, e.g. pipe-command = \"/usr/bin/procmail -d user\"";
    return false;
  }
  std::vector<std::string> words;
  if (uses_sink(cfg, "pipe") && !proto::split_command(cfg.pipe_command, words, error)) {
    error = "pipe-command: " + error;
    return false;
  }
  if (cfg.pipe_timeout.count() <= 0) {
    error = "pipe-timeout must be more than 0 seconds";
    return false;
  }
  return true;
}

}  // namespace

bool validate(const app_config& cfg, std::string& error) {
  if (!validate_sinks(cfg, error)) return false;
  if (cfg.maildir_sync != "fsync" && cfg.maildir_sync != "syncfs") {
    error =
        fmt::format(FMT_STRING("maildir-sync must be fsync or syncfs, not '{}'"), cfg.maildir_sync);
    return false;
  }
  if (uses_sink(cfg, "mbox") && cfg.mbox.empty()) {
    error = "sink = \"mbox\" needs an mbox path template, e.g. mbox = \"var/mail/{user}\"";
    return false;
  }
  if (cfg.server.listen.empty() && cfg.server.listen_tls.empty() &&
      cfg.server.listen_lmtp.empty() && cfg.server.listen_proxy.empty() &&
      cfg.server.listen_tls_proxy.empty() && cfg.server.listeners.empty()) {
    error = "listen names no address";
    return false;
  }
  if (unsigned mode = 0; !parse_socket_mode(cfg.unix_socket_mode, mode)) {
    error = fmt::format(FMT_STRING("unix-socket-mode must be octal, at most 0777, not '{}'"),
                        cfg.unix_socket_mode);
    return false;
  }
  if (cfg.tls_cert.empty() != cfg.tls_key.empty()) {
    error = "tls-cert and tls-key go together";
    return false;
  }
  if (cfg.server.session.require_auth && cfg.auth_users.empty()) {
    error = "require-auth needs auth-users";
    return false;
  }
  for (const auto& service : cfg.policy_services)
    if (!check_policy_address(service, error)) return false;
  if (cfg.policy.timeout.count() <= 0) {
    error = "policy-timeout must be more than 0 seconds";
    return false;
  }
  if (cfg.milter_default_action != "tempfail" && cfg.milter_default_action != "accept") {
    error = fmt::format(FMT_STRING("milter-default-action must be tempfail or accept, not '{}'"),
                        cfg.milter_default_action);
    return false;
  }
  for (const auto& m : cfg.milters)
    if (!inboxd::valid_milter_address(m, error)) return false;
  for (const auto& d : cfg.server.recipients.domains) {
    for (const auto& [alias, targets] : d.aliases) {
      if (targets.empty()) {
        error = fmt::format(FMT_STRING("alias '{}' of {} names no user"), alias, d.name);
        return false;
      }
    }
  }
  return true;
}

}  // namespace inboxd::app
