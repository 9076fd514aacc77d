// bench/outcome.hpp: what one run measured, apart from the run itself, so
// that the runs of several worker processes (--workers) can be sent to the
// parent, merged exactly and reported as one.
//
// A worker writes serialize() of its outcome to a pipe when its run ends;
// the parent parses each with deserialize() and merge()s them: counters add
// up, histograms add bucket by bucket (so percentiles come from the merged
// counts, never from averaged percentiles; min, max and mean stay exact),
// and the measured time runs from the earliest warm-up end to the latest
// answer (every worker reads the same CLOCK_MONOTONIC). The text format is
// private to one inboxd-bench binary: "key value" lines, histograms as
// base64 HdrHistogram V2 encodings (hdr_log.hpp).
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "bench/stats.hpp"

namespace inboxd::bench {

struct cpu_usage {
  double user_seconds = 0;
  double system_seconds = 0;
  long max_rss_kib = 0;
};

struct outcome {
  stats st;
  live_counters live;
  // uv_hrtime() (CLOCK_MONOTONIC) nanoseconds.
  std::uint64_t t0_ns = 0;
  std::uint64_t warmup_end_ns = 0;
  std::uint64_t last_answer_ns = 0;  // 0: no measured answer
  std::uint64_t finish_ns = 0;
  // Wall-clock time of warmup_end_ns, seconds since the epoch: the base of
  // the interval histograms.
  double base_epoch_s = 0;
  std::string stopped_because;
  std::string last_error;
  std::string tls_version;  // empty before a handshake
  std::string tls_cipher;
  // With --histogram-log: the latency histogram of each interval k, covering
  // [k, k + 1) × interval after the warm-up (the last one may be shorter:
  // last_interval_s long), as uncompressed V2 encodings.
  std::vector<std::string> intervals;
  double last_interval_s = 0;
  // Interval lines written to the --histogram-log file.
  std::uint64_t intervals_written = 0;
  unsigned workers = 1;

  [[nodiscard]] double wall_seconds() const noexcept;
  [[nodiscard]] double measured_seconds() const noexcept;
};

[[nodiscard]] std::string serialize(const outcome& o);
// False (with a reason) on text that serialize() did not make.
[[nodiscard]] bool deserialize(std::string_view text, outcome& o, std::string& error);
// Adds from into into (into's strings win where both have one).
void merge(outcome& into, const outcome& from);

}  // namespace inboxd::bench
