#include "bench/report.hpp"

#include <sys/resource.h>

#include <fmt/format.h>
#include <algorithm>
#include <iterator>
#include <string>

namespace inboxd::bench {

namespace {

double seconds(const timeval& tv) {
  return static_cast<double>(tv.tv_sec) + static_cast<double>(tv.tv_usec) / 1e6;
}

double per_second(std::uint64_t count, double s) {
  return s > 0 ? static_cast<double>(count) / s : 0.0;
}

std::string json_string(std::string_view text) {
  std::string out = "\"";
  for (char c : text) {
    switch (c) {
      case '"': out += "\\\""; break;
      case '\\': out += "\\\\"; break;
      case '\n': out += "\\n"; break;
      case '\r': out += "\\r"; break;
      case '\t': out += "\\t"; break;
      default:
        if (static_cast<unsigned char>(c) < 0x20)
          fmt::format_to(std::back_inserter(out), "\\u{:04x}", static_cast<unsigned>(c));
        else
          out += c;
    }
  }
  out += '"';
  return out;
}

// "250: 9990, 451: 10" (text) or "\"250\": 9990, \"451\": 10" (JSON).
template <std::size_t N>
std::string code_list(const std::array<std::uint64_t, N>& codes, bool json) {
  std::string out;
  for (std::size_t code = 0; code < N; ++code) {
    if (!codes[code]) continue;
    if (!out.empty()) out += ", ";
    if (json)
      fmt::format_to(std::back_inserter(out), "\"{}\": {}", code, codes[code]);
    else
      fmt::format_to(std::back_inserter(out), "{}: {}", code, codes[code]);
  }
  return out;
}

std::string error_list(const stats& st, bool json) {
  std::string out;
  for (unsigned i = 0; i < st.errors.size(); ++i) {
    if (json) {
      fmt::format_to(std::back_inserter(out), "{}\"{}\": {}", out.empty() ? "" : ", ",
                     conn_error_names[i], st.errors[i]);
    } else if (st.errors[i]) {
      fmt::format_to(std::back_inserter(out), "{}{} {}", out.empty() ? "" : ", ",
                     conn_error_names[i], st.errors[i]);
    }
  }
  return out.empty() ? "none" : out;
}

std::string ms(std::uint64_t us) {
  return fmt::format("{:.3f}", static_cast<double>(us) / 1000);
}

std::string latency_json(const histogram& h) {
  return fmt::format(
      "{{\"count\": {}, \"min\": {}, \"mean\": {:.1f}, \"p50\": {}, \"p90\": {}, \"p99\": {}, "
      "\"p99_9\": {}, \"max\": {}}}",
      h.count(), h.min(), h.mean(), h.value_at_percentile(50), h.value_at_percentile(90),
      h.value_at_percentile(99), h.value_at_percentile(99.9), h.max());
}

const char* pipelining_name(const options& opt) {
  return !opt.pipelining ? "off" : opt.chain ? "on" : "group";
}

const char* tls_name(const options& opt) {
  switch (opt.tls) {
    case tls_mode::none: return "none";
    case tls_mode::starttls: return "starttls";
    case tls_mode::implicit: return "implicit";
  }
  return "none";
}

std::string sizes_text(const options& opt) {
  if (!opt.corpus.empty()) return fmt::format("messages of {}", opt.corpus);
  if (opt.sizes.size() == 1) return fmt::format("{}-byte messages", opt.sizes[0]);
  return fmt::format("{} sizes from --size-file", opt.sizes.size());
}

}  // namespace

cpu_usage measure_cpu(bool children) {
  rusage ru{};
  ::getrusage(RUSAGE_SELF, &ru);
  cpu_usage cpu{.user_seconds = seconds(ru.ru_utime),
                .system_seconds = seconds(ru.ru_stime),
                .max_rss_kib = ru.ru_maxrss};
  if (children) {
    rusage kids{};
    ::getrusage(RUSAGE_CHILDREN, &kids);
    cpu.user_seconds += seconds(kids.ru_utime);
    cpu.system_seconds += seconds(kids.ru_stime);
    // The largest worker's peak: the workers do not peak together.
    cpu.max_rss_kib = std::max(cpu.max_rss_kib, kids.ru_maxrss);
  }
  return cpu;
}

int exit_code(const outcome& r) {
  return r.live.completed > 0 ? 0 : 1;
}

void print_text(std::FILE* out, const options& opt, const outcome& r, const cpu_usage& cpu) {
  const stats& st = r.st;
  const live_counters& live = r.live;
  double measured = r.measured_seconds(), wall = r.wall_seconds();
  std::string mode = opt.rate > 0 ? fmt::format("open loop at {:g}/s", opt.rate) : "closed loop";
  fmt::print(out,
             "inboxd-bench: {}:{}, {} connection{}, {}, {} recipient{}, pipelining {}, {}{}{}{}\n",
             opt.host, opt.port, opt.connections, opt.connections == 1 ? "" : "s", sizes_text(opt),
             opt.recipients, opt.recipients == 1 ? "" : "s", pipelining_name(opt), mode,
             opt.tls != tls_mode::none ? fmt::format(", TLS {}", tls_name(opt)) : "",
             opt.auth_user.empty() ? "" : ", AUTH PLAIN", opt.bdat ? ", BDAT" : "");
  fmt::print(out, "  messages    {} sent, {} accepted, {} refused, {} failed", st.started,
             st.accepted, st.refused, st.failed);
  if (st.warmup) fmt::print(out, " (and {} in the warm-up)", st.warmup);
  fmt::print(out, "\n");
  std::string codes = code_list(st.codes, false);
  fmt::print(out, "  replies     {}\n", codes.empty() ? "none" : codes);
  if (st.recipients_refused)
    fmt::print(out, "  recipients  {} refused in accepted messages\n", st.recipients_refused);
  fmt::print(out, "  errors      {}\n", error_list(st, false));
  if (std::string refused = code_list(st.session_codes, false); !refused.empty())
    fmt::print(out, "  sessions refused with {}\n", refused);
  fmt::print(out, "  throughput  {:.1f} msg/s, {:.2f} MB/s of message text ({} transactions/s)\n",
             per_second(st.accepted, measured), per_second(st.bytes_accepted, measured) / 1e6,
             fmt::format("{:.1f}", per_second(st.accepted + st.refused, measured)));
  const histogram& h = st.latency;
  fmt::print(
      out, "  latency ms  p50 {}  p90 {}  p99 {}  p99.9 {}  max {}  (mean {:.3f}, {} messages)\n",
      ms(h.value_at_percentile(50)), ms(h.value_at_percentile(90)), ms(h.value_at_percentile(99)),
      ms(h.value_at_percentile(99.9)), ms(h.max()), h.mean() / 1000, h.count());
  if (opt.rate > 0) {
    const histogram& lag = st.start_lag;
    fmt::print(out, "  start lag   p50 {}  p99 {}  max {} ms after the schedule\n",
               ms(lag.value_at_percentile(50)), ms(lag.value_at_percentile(99)), ms(lag.max()));
  }
  fmt::print(out, "  sessions    {} opened ({} offered PIPELINING)", live.sessions,
             live.sessions_pipelined);
  if (st.setup.count())
    fmt::print(out, ", setup p50 {} ms, max {} ms", ms(st.setup.value_at_percentile(50)),
               ms(st.setup.max()));
  fmt::print(out, "\n");
  double writes = live.completed ? static_cast<double>(live.writes) / live.completed : 0;
  if (opt.tls != tls_mode::none) {
    const histogram& hs = st.handshake;
    std::string negotiated = !r.tls_version.empty()
                                 ? fmt::format("{} {}", r.tls_version, r.tls_cipher)
                                 : std::string("no handshake completed");
    fmt::print(out, "  tls         {}, {}, resumption {}\n", tls_name(opt), negotiated,
               opt.tls_resume ? "on" : "off");
    fmt::print(out,
               "  handshakes  {} ({} resumed), {:.1f}/s, ms p50 {}  p90 {}  p99 {}  max {}  "
               "(mean {:.3f})\n",
               st.handshakes, st.handshakes_resumed, per_second(st.handshakes, measured),
               ms(hs.value_at_percentile(50)), ms(hs.value_at_percentile(90)),
               ms(hs.value_at_percentile(99)), ms(hs.max()), hs.mean() / 1000);
  }
  if (!opt.auth_user.empty())
    fmt::print(out, "  auth        PLAIN as {}: {} accepted\n", opt.auth_user, st.auth_accepted);
  fmt::print(out, "  wire        {:.1f} MB written in {} writes ({:.2f} per transaction)\n",
             static_cast<double>(live.bytes_written) / 1e6, live.writes, writes);
  double cpu_total = cpu.user_seconds + cpu.system_seconds;
  fmt::print(out,
             "  time        wall {:.3f} s (measured {:.3f} s), client CPU {:.3f} s "
             "(user {:.3f}, sys {:.3f}) = {:.0f}% of one core, max RSS {} KiB\n",
             wall, measured, cpu_total, cpu.user_seconds, cpu.system_seconds,
             wall > 0 ? 100 * cpu_total / wall : 0.0, cpu.max_rss_kib);
  if (r.workers > 1)
    fmt::print(out, "  workers     {} processes, merged (CPU: all of them)\n", r.workers);
  if (!opt.histogram_log.empty())
    fmt::print(out, "  histograms  {} intervals of {:g} s in {}\n", r.intervals_written,
               opt.histogram_interval, opt.histogram_log);
  if (!r.stopped_because.empty()) fmt::print(out, "  stopped     {}\n", r.stopped_because);
  std::fflush(out);
}

void print_json(std::FILE* out, const options& opt, const outcome& r, const cpu_usage& cpu) {
  const stats& st = r.st;
  const live_counters& live = r.live;
  double measured = r.measured_seconds(), wall = r.wall_seconds();
  std::string sizes;
  for (std::size_t s : opt.sizes)
    fmt::format_to(std::back_inserter(sizes), "{}{}", sizes.empty() ? "" : ", ", s);
  std::string o = "{";
  auto field = [&o](std::string_view name, const std::string& value) {
    if (o.size() > 1) o += ", ";
    fmt::format_to(std::back_inserter(o), "\"{}\": {}", name, value);
  };
  auto number = [](double v) { return fmt::format("{:.6g}", v); };
  field("tool", "\"inboxd-bench\"");
  field("host", json_string(opt.host));
  field("port", std::to_string(opt.port));
  field("connections", std::to_string(opt.connections));
  field("messages_requested", opt.duration > 0 ? "null" : std::to_string(opt.messages));
  field("duration_requested", opt.duration > 0 ? number(opt.duration) : "null");
  field("warmup", number(opt.warmup));
  field("rate", opt.rate > 0 ? number(opt.rate) : "null");
  field("sizes", fmt::format("[{}]", sizes));
  field("recipients", std::to_string(opt.recipients));
  field("pipelining", json_string(pipelining_name(opt)));
  field("bdat", opt.bdat ? "true" : "false");
  field("messages_per_connection",
        opt.messages_per_connection ? std::to_string(opt.messages_per_connection) : "null");
  field("tls", opt.tls != tls_mode::none ? json_string(tls_name(opt)) : "null");
  field("tls_resume", opt.tls_resume ? "true" : "false");
  field("auth_user", opt.auth_user.empty() ? "null" : json_string(opt.auth_user));
  field("started", std::to_string(st.started));
  field("accepted", std::to_string(st.accepted));
  field("refused", std::to_string(st.refused));
  field("failed", std::to_string(st.failed));
  field("warmup_messages", std::to_string(st.warmup));
  field("recipients_refused", std::to_string(st.recipients_refused));
  // fmt, not "{" + …: GCC 12's -Wrestrict misfires on operator+ (a false
  // positive that -Dwerror=true builds would stop at).
  field("codes", fmt::format("{{{}}}", code_list(st.codes, true)));
  field("session_codes", fmt::format("{{{}}}", code_list(st.session_codes, true)));
  field("connection_errors", fmt::format("{{{}}}", error_list(st, true)));
  field("sessions", std::to_string(live.sessions));
  field("sessions_pipelining", std::to_string(live.sessions_pipelined));
  field("messages_per_second", number(per_second(st.accepted, measured)));
  field("transactions_per_second", number(per_second(st.accepted + st.refused, measured)));
  field("megabytes_per_second", number(per_second(st.bytes_accepted, measured) / 1e6));
  field("bytes_accepted", std::to_string(st.bytes_accepted));
  field("bytes_written", std::to_string(live.bytes_written));
  field("writes", std::to_string(live.writes));
  field("writes_per_transaction",
        number(live.completed ? static_cast<double>(live.writes) / live.completed : 0));
  field("latency_us", latency_json(st.latency));
  field("setup_latency_us", latency_json(st.setup));
  field("start_lag_us", opt.rate > 0 ? latency_json(st.start_lag) : "null");
  field("tls_version", !r.tls_version.empty() ? json_string(r.tls_version) : "null");
  field("tls_cipher", !r.tls_cipher.empty() ? json_string(r.tls_cipher) : "null");
  field("handshakes", std::to_string(st.handshakes));
  field("handshakes_resumed", std::to_string(st.handshakes_resumed));
  field("handshakes_per_second", number(per_second(st.handshakes, measured)));
  field("handshake_latency_us", latency_json(st.handshake));
  field("auth_accepted", std::to_string(st.auth_accepted));
  field("wall_seconds", number(wall));
  field("measured_seconds", number(measured));
  field("cpu_user_seconds", number(cpu.user_seconds));
  field("cpu_system_seconds", number(cpu.system_seconds));
  field("max_rss_kib", std::to_string(cpu.max_rss_kib));
  field("workers", std::to_string(r.workers));
  field("corpus", opt.corpus.empty() ? "null" : json_string(opt.corpus));
  field("histogram_log", opt.histogram_log.empty() ? "null" : json_string(opt.histogram_log));
  field("histogram_intervals", std::to_string(r.intervals_written));
  field("stopped_because", r.stopped_because.empty() ? "null" : json_string(r.stopped_because));
  field("last_error", r.last_error.empty() ? "null" : json_string(r.last_error));
  field("exit_code", std::to_string(exit_code(r)));
  o += "}\n";
  std::fputs(o.c_str(), out);
  std::fflush(out);
}

}  // namespace inboxd::bench
