// bench/report.hpp: the end-of-run summary, as text for people or as one
// JSON object for scripts.
//
// Both read a finished run (after uv_run() has returned) and the client's own
// resource usage; neither keeps anything.
#pragma once

#include <cstdio>

#include "bench/options.hpp"
#include "bench/run.hpp"

namespace inboxd::bench {

struct cpu_usage {
  double user_seconds = 0;
  double system_seconds = 0;
  long max_rss_kib = 0;
};

// The CPU time this process has used so far (getrusage).
[[nodiscard]] cpu_usage measure_cpu();

// Exit status of a finished run: 0 when it ran (even if the server refused
// every message), 1 when not one transaction could be completed.
[[nodiscard]] int exit_code(const run& r);

void print_text(std::FILE* out, const options& opt, const run& r, const cpu_usage& cpu);
// Exactly one JSON object and a newline.
void print_json(std::FILE* out, const options& opt, const run& r, const cpu_usage& cpu);

}  // namespace inboxd::bench
