#include "bench/outcome.hpp"

#include <fmt/format.h>
#include <algorithm>
#include <charconv>
#include <cstdlib>
#include <iterator>

#include "bench/hdr_log.hpp"

namespace inboxd::bench {

namespace {

struct named_counter {
  const char* name;
  std::uint64_t stats::*field;
};
constexpr named_counter stats_counters[] = {
    {"started", &stats::started},
    {"accepted", &stats::accepted},
    {"refused", &stats::refused},
    {"failed", &stats::failed},
    {"recipients_refused", &stats::recipients_refused},
    {"bytes_accepted", &stats::bytes_accepted},
    {"warmup", &stats::warmup},
    {"handshakes", &stats::handshakes},
    {"handshakes_resumed", &stats::handshakes_resumed},
    {"auth_accepted", &stats::auth_accepted},
};

struct named_live {
  const char* name;
  std::uint64_t live_counters::*field;
};
constexpr named_live live_fields[] = {
    {"live.completed", &live_counters::completed},
    {"live.accepted", &live_counters::accepted},
    {"live.bytes_accepted", &live_counters::bytes_accepted},
    {"live.bytes_written", &live_counters::bytes_written},
    {"live.errors", &live_counters::errors},
    {"live.sessions", &live_counters::sessions},
    {"live.sessions_pipelined", &live_counters::sessions_pipelined},
    {"live.handshakes", &live_counters::handshakes},
    {"live.writes", &live_counters::writes},
};

struct named_histogram {
  const char* name;
  histogram stats::*field;
};
constexpr named_histogram histograms[] = {
    {"latency", &stats::latency},
    {"setup", &stats::setup},
    {"handshake", &stats::handshake},
    {"start_lag", &stats::start_lag},
};

// Strings go on one line: their line ends (never expected) become spaces.
std::string one_line(std::string text) {
  std::replace(text.begin(), text.end(), '\n', ' ');
  return text;
}

bool to_u64(std::string_view text, std::uint64_t& out) {
  auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), out);
  return ec == std::errc{} && end == text.data() + text.size();
}

// Splits "key rest" at the first space.
std::pair<std::string_view, std::string_view> split(std::string_view line) {
  auto space = line.find(' ');
  if (space == std::string_view::npos) return {line, {}};
  return {line.substr(0, space), line.substr(space + 1)};
}

bool parse_histogram(std::string_view text, histogram& h) {
  // min max sum base64
  auto [min_text, rest] = split(text);
  auto [max_text, rest2] = split(rest);
  auto [sum_text, encoded] = split(rest2);
  std::uint64_t min = 0, max = 0;
  if (!to_u64(min_text, min) || !to_u64(max_text, max)) return false;
  std::string sum_string(sum_text);
  char* end = nullptr;
  long double sum = std::strtold(sum_string.c_str(), &end);
  if (end != sum_string.c_str() + sum_string.size()) return false;
  std::string bytes;
  if (!base64_decode(encoded, bytes)) return false;
  histogram decoded;
  if (!hdr_decode(bytes, false, decoded)) return false;
  decoded.restore_exact(min, max, sum);
  h.merge(decoded);
  return true;
}

}  // namespace

double outcome::wall_seconds() const noexcept {
  return finish_ns > t0_ns ? static_cast<double>(finish_ns - t0_ns) / 1e9 : 0.0;
}

double outcome::measured_seconds() const noexcept {
  if (last_answer_ns <= warmup_end_ns) return 0;
  return static_cast<double>(last_answer_ns - warmup_end_ns) / 1e9;
}

std::string serialize(const outcome& o) {
  std::string out;
  auto line = [&out](std::string_view key, auto value) {
    fmt::format_to(std::back_inserter(out), "{} {}\n", key, value);
  };
  for (auto& c : stats_counters) line(c.name, o.st.*c.field);
  for (auto& c : live_fields) line(c.name, o.live.*c.field);
  for (std::size_t code = 0; code < o.st.codes.size(); ++code)
    if (o.st.codes[code])
      fmt::format_to(std::back_inserter(out), "code {} {}\n", code, o.st.codes[code]);
  for (std::size_t code = 0; code < o.st.session_codes.size(); ++code)
    if (o.st.session_codes[code])
      fmt::format_to(std::back_inserter(out), "session_code {} {}\n", code,
                     o.st.session_codes[code]);
  for (std::size_t i = 0; i < o.st.errors.size(); ++i)
    if (o.st.errors[i]) fmt::format_to(std::back_inserter(out), "error {} {}\n", i, o.st.errors[i]);
  for (auto& h : histograms) {
    const histogram& hist = o.st.*h.field;
    fmt::format_to(std::back_inserter(out), "hist {} {} {} {} {}\n", h.name, hist.min(), hist.max(),
                   hist.sum(), base64_encode(hdr_encode(hist)));
  }
  line("t0_ns", o.t0_ns);
  line("warmup_end_ns", o.warmup_end_ns);
  line("last_answer_ns", o.last_answer_ns);
  line("finish_ns", o.finish_ns);
  fmt::format_to(std::back_inserter(out), "base_epoch_s {:.6f}\n", o.base_epoch_s);
  fmt::format_to(std::back_inserter(out), "last_interval_s {:.6f}\n", o.last_interval_s);
  for (auto& encoded : o.intervals) line("interval", base64_encode(encoded));
  if (!o.stopped_because.empty()) line("stopped_because", one_line(o.stopped_because));
  if (!o.last_error.empty()) line("last_error", one_line(o.last_error));
  if (!o.tls_version.empty()) line("tls_version", one_line(o.tls_version));
  if (!o.tls_cipher.empty()) line("tls_cipher", one_line(o.tls_cipher));
  out += "end\n";
  return out;
}

bool deserialize(std::string_view text, outcome& o, std::string& error) {
  bool ended = false;
  unsigned number = 0;
  while (!text.empty()) {
    auto lf = text.find('\n');
    std::string_view line = text.substr(0, lf);
    text.remove_prefix(lf == std::string_view::npos ? text.size() : lf + 1);
    ++number;
    auto [key, value] = split(line);
    bool ok = true;
    auto set_u64 = [&](std::uint64_t& field) { ok = to_u64(value, field); };
    auto set_double = [&](double& field) {
      std::string v(value);
      char* end = nullptr;
      field = std::strtod(v.c_str(), &end);
      ok = !v.empty() && end == v.c_str() + v.size();
    };
    auto set_indexed = [&](auto& array) {
      auto [index_text, count_text] = split(value);
      std::uint64_t index = 0, count = 0;
      ok = to_u64(index_text, index) && to_u64(count_text, count) && index < array.size();
      if (ok) array[index] += count;
    };
    bool known = true;
    if (key == "end") {
      ended = true;
      break;
    } else if (key == "code") {
      set_indexed(o.st.codes);
    } else if (key == "session_code") {
      set_indexed(o.st.session_codes);
    } else if (key == "error") {
      set_indexed(o.st.errors);
    } else if (key == "hist") {
      auto [name, rest] = split(value);
      known = false;
      for (auto& h : histograms)
        if (name == h.name) {
          known = true;
          ok = parse_histogram(rest, o.st.*h.field);
        }
    } else if (key == "t0_ns") {
      set_u64(o.t0_ns);
    } else if (key == "warmup_end_ns") {
      set_u64(o.warmup_end_ns);
    } else if (key == "last_answer_ns") {
      set_u64(o.last_answer_ns);
    } else if (key == "finish_ns") {
      set_u64(o.finish_ns);
    } else if (key == "base_epoch_s") {
      set_double(o.base_epoch_s);
    } else if (key == "last_interval_s") {
      set_double(o.last_interval_s);
    } else if (key == "interval") {
      std::string bytes;
      ok = base64_decode(value, bytes);
      o.intervals.push_back(std::move(bytes));
    } else if (key == "stopped_because") {
      o.stopped_because = value;
    } else if (key == "last_error") {
      o.last_error = value;
    } else if (key == "tls_version") {
      o.tls_version = value;
    } else if (key == "tls_cipher") {
      o.tls_cipher = value;
    } else {
      known = false;
      for (auto& c : stats_counters)
        if (key == c.name) {
          known = true;
          set_u64(o.st.*c.field);
        }
      for (auto& c : live_fields)
        if (key == c.name) {
          known = true;
          set_u64(o.live.*c.field);
        }
    }
    if (!known || !ok) {
      error = fmt::format("line {}: \"{}\"", number, std::string(line.substr(0, 80)));
      return false;
    }
  }
  if (!ended) {
    error = "cut short (no \"end\" line)";
    return false;
  }
  return true;
}

void merge(outcome& into, const outcome& from) {
  for (auto& c : stats_counters) into.st.*c.field += from.st.*c.field;
  for (auto& c : live_fields) into.live.*c.field += from.live.*c.field;
  for (std::size_t i = 0; i < into.st.codes.size(); ++i) into.st.codes[i] += from.st.codes[i];
  for (std::size_t i = 0; i < into.st.session_codes.size(); ++i)
    into.st.session_codes[i] += from.st.session_codes[i];
  for (std::size_t i = 0; i < into.st.errors.size(); ++i) into.st.errors[i] += from.st.errors[i];
  for (auto& h : histograms) (into.st.*h.field).merge(from.st.*h.field);
  into.t0_ns = std::min(into.t0_ns, from.t0_ns);
  into.warmup_end_ns = std::min(into.warmup_end_ns, from.warmup_end_ns);
  into.last_answer_ns = std::max(into.last_answer_ns, from.last_answer_ns);
  into.finish_ns = std::max(into.finish_ns, from.finish_ns);
  into.base_epoch_s = std::min(into.base_epoch_s, from.base_epoch_s);
  // Interval k of every worker covers the same time (within the
  // milliseconds between the workers' starts): merged count by count.
  if (into.intervals.size() < from.intervals.size()) {
    into.intervals.resize(from.intervals.size());
    into.last_interval_s = from.last_interval_s;
  } else if (into.intervals.size() == from.intervals.size()) {
    into.last_interval_s = std::max(into.last_interval_s, from.last_interval_s);
  }
  for (std::size_t k = 0; k < from.intervals.size(); ++k) {
    histogram sum;
    if (!into.intervals[k].empty()) (void)hdr_decode(into.intervals[k], false, sum);
    histogram other;
    (void)hdr_decode(from.intervals[k], false, other);
    sum.merge(other);
    into.intervals[k] = hdr_encode(sum);
  }
  for (auto [mine, theirs] : {std::pair{&into.stopped_because, &from.stopped_because},
                              std::pair{&into.last_error, &from.last_error},
                              std::pair{&into.tls_version, &from.tls_version},
                              std::pair{&into.tls_cipher, &from.tls_cipher}})
    if (mine->empty()) *mine = *theirs;
  into.workers += from.workers;
}

}  // namespace inboxd::bench
