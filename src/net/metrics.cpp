// net/metrics.cpp: server_metrics in the Prometheus text exposition format.
//
// Sans-I/O: it only formats (no libuv), so that tests/unit/metrics_test.cpp
// can check the text. The format is Prometheus' "text-based format" 0.0.4:
// "# HELP name text", "# TYPE name type", then "name{label="value"} number"
// lines; a histogram has cumulative name_bucket{le="..."} lines ending in
// le="+Inf", then name_sum and name_count. Names follow Prometheus' naming
// conventions: one prefix (inboxd_), base units (seconds, bytes) in the name,
// and _total for counters.
#include <fmt/format.h>

#include <iterator>
#include <string_view>

#include "inboxd/metrics.hpp"
#include "inboxd/version.hpp"

namespace inboxd {

namespace {

constexpr std::string_view refusal_names[refusal_kinds] = {"total", "per_ip", "rate",
                                                           "early_talker"};
constexpr std::string_view status_names[message_statuses] = {"accepted", "temp_failed", "rejected"};
constexpr std::string_view sink_error_names[sink_error_kinds] = {
    "no_space", "io", "lock_busy", "permission", "other", "exception"};

class writer {
 public:
  explicit writer(std::string& out) : out_(out) {}

  void header(std::string_view name, std::string_view type, std::string_view help) {
    fmt::format_to(std::back_inserter(out_), FMT_STRING("# HELP {} {}\n# TYPE {} {}\n"), name, help,
                   name, type);
  }
  void sample(std::string_view name, std::uint64_t value) {
    fmt::format_to(std::back_inserter(out_), FMT_STRING("{} {}\n"), name, value);
  }
  void sample(std::string_view name, double value) {
    out_ += name;
    out_ += ' ';
    number(value);
    out_ += '\n';
  }
  // One label; its values here are our own names, which need no escaping
  // (label_value() below escapes any other).
  void sample(std::string_view name, std::string_view label, std::string_view value,
              std::uint64_t n) {
    fmt::format_to(std::back_inserter(out_), FMT_STRING("{}{{{}=\"{}\"}} {}\n"), name, label, value,
                   n);
  }
  template <std::size_t N>
  void counter(std::string_view name, std::string_view help, std::string_view label,
               const std::string_view (&names)[N], const std::array<std::uint64_t, N>& values) {
    header(name, "counter", help);
    for (std::size_t i = 0; i < N; ++i) sample(name, label, names[i], values[i]);
  }
  // A float as Prometheus reads it (Go's ParseFloat): the shortest text that
  // reads back as the same double.
  void number(double v) { fmt::format_to(std::back_inserter(out_), FMT_STRING("{}"), v); }
  // The text format escapes \, " and newline in a label value.
  void label_value(std::string_view v) {
    for (char c : v) {
      if (c == '\\' || c == '"') {
        out_ += '\\';
        out_ += c;
      } else if (c == '\n') {
        out_ += "\\n";
      } else {
        out_ += c;
      }
    }
  }
  std::string& out() { return out_; }

 private:
  std::string& out_;
};

}  // namespace

void render_metrics(const server_metrics& m, std::string& out) {
  writer w(out);
  w.header("inboxd_build_info", "gauge", "The version of inboxd running, as a label; always 1.");
  out += "inboxd_build_info{version=\"";
  w.label_value(INBOXD_VERSION);
  out += "\"} 1\n";
  w.header("inboxd_start_time_seconds", "gauge", "When the server started, in Unix time.");
  w.sample("inboxd_start_time_seconds", m.start_time_seconds);

  w.header("inboxd_connections", "gauge", "Client connections open now, lingering ones included.");
  w.sample("inboxd_connections", m.connections_open);
  w.header("inboxd_connections_total", "counter", "Client connections accepted.");
  w.sample("inboxd_connections_total", m.connections);
  w.counter("inboxd_connections_refused_total",
            "Connections refused before the greeting, by the limit that refused them.", "reason",
            refusal_names, m.refused);
  w.header("inboxd_sessions_total", "counter", "SMTP and LMTP sessions greeted.");
  w.sample("inboxd_sessions_total", m.sessions);

  w.counter("inboxd_messages_total",
            "Messages at their end of data, by the reply: accepted (2xx), temp_failed (4xx), "
            "rejected (5xx). Over LMTP, one per recipient reply.",
            "status", status_names, m.messages);
  w.header("inboxd_received_message_bytes_total", "counter",
           "Message octets received in DATA and BDAT, line ends counted as CRLF.");
  w.sample("inboxd_received_message_bytes_total", m.message_bytes);
  w.header("inboxd_recipients_total", "counter", "RCPT commands, by whether they were accepted.");
  w.sample("inboxd_recipients_total", "result", "accepted", m.recipients_accepted);
  w.sample("inboxd_recipients_total", "result", "refused", m.recipients_refused);

  const latency_histogram& h = m.commit_seconds;
  w.header("inboxd_commit_duration_seconds", "histogram",
           "From a message's end of data to the sink's answer (the fsyncs before a 250).");
  std::uint64_t cumulative = 0;
  for (std::size_t i = 0; i < h.bounds.size(); ++i) {
    cumulative += h.counts[i];
    out += "inboxd_commit_duration_seconds_bucket{le=\"";
    w.number(h.bounds[i]);
    fmt::format_to(std::back_inserter(out), FMT_STRING("\"}} {}\n"), cumulative);
  }
  cumulative += h.counts.back();
  fmt::format_to(std::back_inserter(out),
                 FMT_STRING("inboxd_commit_duration_seconds_bucket{{le=\"+Inf\"}} {}\n"),
                 cumulative);
  w.sample("inboxd_commit_duration_seconds_sum", h.sum);
  w.sample("inboxd_commit_duration_seconds_count", h.count);

  w.header("inboxd_tls_handshakes_total", "counter",
           "TLS handshakes completed: full, or resumed with a session ticket.");
  w.sample("inboxd_tls_handshakes_total", "kind", "full", m.tls_full);
  w.sample("inboxd_tls_handshakes_total", "kind", "resumed", m.tls_resumed);
  w.header("inboxd_tls_handshake_failures_total", "counter",
           "TLS handshakes that failed or timed out.");
  w.sample("inboxd_tls_handshake_failures_total", m.tls_failed);
  w.header("inboxd_auth_total", "counter",
           "AUTH credentials checked: success, failure, or busy (not checked, 454).");
  w.sample("inboxd_auth_total", "result", "success", m.auth_ok);
  w.sample("inboxd_auth_total", "result", "failure", m.auth_failed);
  w.sample("inboxd_auth_total", "result", "busy", m.auth_busy);
  w.counter("inboxd_sink_errors_total",
            "Messages the sink failed to store, by the kind of error it gave first.", "kind",
            sink_error_names, m.sink_errors);

  w.header("inboxd_memory_budget_used_bytes", "gauge",
           "Message bytes the sinks hold in memory now (the memory budget in use).");
  w.sample("inboxd_memory_budget_used_bytes", m.memory_used);
  w.header("inboxd_memory_budget_limit_bytes", "gauge",
           "The memory budget: past it, message data goes to disk sooner or reading pauses.");
  w.sample("inboxd_memory_budget_limit_bytes", m.memory_limit);
  w.header("inboxd_event_loop_lag_seconds", "gauge",
           "How late the event loop ran its last once-a-second timer.");
  w.sample("inboxd_event_loop_lag_seconds", m.loop_lag_seconds);
}

}  // namespace inboxd
