// inboxd/config.hpp: the settings of one server, plain data with defaults.
//
// The defaults are what `inboxd` runs with when given no option: loopback,
// Postfix's message size limit, and RFC 5321's recipient minimum well covered.
#pragma once

#include <chrono>
#include <cstddef>
#include <memory>
#include <string>
#include <vector>

#include "inboxd/owner.hpp"
#include "inboxd/policy.hpp"

namespace inboxd {

// What to do with a line that ends in a bare LF, or holds a bare CR, with the
// meaning Postfix 3.9 gives smtpd_forbid_bare_newline.
enum class bare_newline_policy {
  normalize,  // a bare LF ends a line as CRLF would; a bare CR is kept as text
  reject,     // such a command or message is refused with 550 5.5.2
};

// The limits and names one SMTP session works with.
struct session_config {
  std::string hostname = "localhost";
  std::size_t max_message_size = 10'240'000;  // Postfix's message_size_limit
  std::size_t max_recipients = 1000;          // RFC 5321 4.5.3.1.8 asks for >= 100
  // RFC 5321 4.5.3.1.10: past max_recipients a RCPT gets 452 and the client
  // sends the rest in another transaction. Such 452s count as protocol
  // errors only past this many (Postfix's smtpd_recipient_overshoot_limit).
  std::size_t recipient_overshoot_limit = 1000;
  bare_newline_policy bare_newline = bare_newline_policy::normalize;
  bool require_tls = false;           // MAIL before STARTTLS: 530 5.7.0
  bool require_auth = false;          // MAIL before AUTH: 530 5.7.0
  bool allow_plaintext_auth = false;  // offer AUTH without TLS (RFC 4954 4 says don't)
  // Offer DSN (RFC 3461) for local delivery too: its parameters are taken
  // and ORCPT becomes X-Original-To:, but no notice is ever sent (README).
  bool accept_dsn = false;
  std::size_t max_auth_failures = 3;  // then 421 and close
  std::size_t max_errors = 20;        // protocol errors in a session, then 421 4.7.0
  // Tarpit: each error reply past the first waits this long times the
  // number of errors so far (10 s at most); 0 is off.
  std::uint32_t error_delay_ms = 0;
};

class tls_credentials;
class filter;
class authenticator;
class maildrop_source;
struct memory_budget;

struct server_config {
  std::vector<std::string> listen = {"127.0.0.1:2525"};  // "ADDR:PORT", "[v6]:PORT"
  std::vector<std::string> listen_tls;  // implicit TLS (RFC 8314), port 465 in production
  // LMTP (RFC 2033): final delivery for an MTA such as Postfix; never on port 25.
  std::vector<std::string> listen_lmtp;
  // PROXY protocol listeners (HAProxy's doc/proxy-protocol.txt, v1 and
  // v2): each connection starts with the header a load balancer in TCP mode
  // sends, and the client it names is the client for everything (the log,
  // the Received header, the per-address limits, XCLIENT's check).
  // listen_proxy speaks SMTP after the header; listen_tls_proxy implicit TLS
  // (the header first, then the handshake: HAProxy in front of port 465).
  std::vector<std::string> listen_proxy;
  std::vector<std::string> listen_tls_proxy;
  // Listeners of any kind, each given whole (the config file's [[listener]]
  // tables); opened besides those of the lists above.
  struct listener_config {
    std::string address;
    bool implicit_tls = false;
    bool lmtp = false;
    bool proxy = false;
    bool pop3 = false;  // POP3 (with implicit_tls: POP3S) instead of SMTP or LMTP
  };
  std::vector<listener_config> listeners;
  // POP3 (RFC 1939) over the mail the sinks stored: listen_pop3 offers STLS
  // (RFC 2595) when tls is set; listen_pop3s is implicit TLS (port 995 in
  // production, RFC 8314). Not built yet (issue 14): start() and
  // reconfigure() refuse a config with a POP3 listener. Each will need auth (the users file, the
  // same as SMTP AUTH's) and maildrops.
  std::vector<std::string> listen_pop3;
  std::vector<std::string> listen_pop3s;
  // Where an authenticated POP3 user's mail is (open_maildir_drops).
  std::shared_ptr<const maildrop_source> maildrops;
  // RFC 1939 3: a POP3 session idle this long is closed (at least 10 minutes).
  std::chrono::milliseconds pop3_timeout{600'000};
  // Who may send a PROXY header: networks as "ADDR/BITS" (or one address).
  // A connection to a PROXY listener from anywhere else is closed and
  // logged. A unix-socket PROXY listener trusts its peers (the socket's mode
  // says who they are).
  std::vector<std::string> proxy_from = {"127.0.0.0/8", "::1/128"};
  // How long a PROXY listener waits for the header before it closes.
  std::chrono::milliseconds proxy_timeout{5'000};
  // Who may use XCLIENT (Postfix's XCLIENT_README): networks as above,
  // matched against the client (the one a PROXY header named). Default none.
  std::vector<std::string> xclient_from;
  // Every listen list also takes "unix:/path", a unix socket made with this
  // mode and owner (a stale socket file is replaced; it is removed at exit),
  // and "fd:N", a listening TCP or unix socket already open as descriptor N
  // (systemd's socket activation): the server adopts and closes it, and
  // never unlinks its file.
  unsigned unix_socket_mode = 0660;
  file_owner unix_socket_owner;  // unset: the server's own user
  // Certificates (load_tls_credentials): STARTTLS is offered when set.
  std::shared_ptr<const tls_credentials> tls;
  // Checks AUTH credentials (load_password_file): AUTH is offered when set.
  std::shared_ptr<const authenticator> auth;
  session_config session;
  recipient_rules recipients;  // the default accepts every recipient
  // An embedder's own policy; when set, `recipients` is not used.
  std::shared_ptr<const recipient_policy> policy;
  // Milters, policy services or an embedder's own filters (filter.hpp),
  // asked in this order at every stage of each session. A reload applies
  // new filters to new connections; a session keeps those it began with.
  std::vector<std::shared_ptr<filter>> filters;
  // Serve Prometheus metrics (GET /metrics) on this "ADDR:PORT"; empty: no
  // listener (server::metrics() counts all the same). Like the listen
  // addresses, fixed at start(): reconfigure() keeps it.
  std::string metrics_listen;
  // The budget the sinks share, reported in the metrics (null: none). Kept
  // from start() on, as metrics_listen.
  std::shared_ptr<const memory_budget> memory;
  // How long SIGTERM waits for transactions in flight before closing them.
  std::chrono::milliseconds drain_timeout{30'000};

  // RFC 5321 4.5.3.2: how long a client may keep us waiting for its next
  // command (and for the greeting's first), and for more DATA.
  std::chrono::milliseconds command_timeout{300'000};
  std::chrono::milliseconds data_timeout{180'000};
  // Below this average rate (bytes/s) after the first window of DATA the
  // client is cut off; 0 is off.
  std::size_t min_data_rate = 500;
  std::chrono::milliseconds min_data_rate_window{60'000};
  // The greeting waits this long; a client that talks first is refused.
  std::chrono::milliseconds greeting_delay{0};

  std::size_t max_connections = 10'000;
  std::size_t max_connections_per_ip = 50;
  std::size_t connection_rate_per_ip = 0;  // new connections per minute; 0 is off
  // Per-IP limits skip loopback clients (local programs), as Postfix skips
  // $mynetworks; set to apply them there too.
  bool limit_loopback = false;
  // Per-IP limits count IPv6 clients per prefix of this length (one site
  // usually has a whole /64); IPv4 clients per address.
  unsigned ipv6_prefix_length = 64;
};

}  // namespace inboxd
