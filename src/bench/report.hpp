// bench/report.hpp: the end-of-run summary, as text for people or as one
// JSON object for scripts.
//
// Both read the outcome of a finished run (or the merged outcome of the
// workers) and the client's own resource usage; neither keeps anything.
#pragma once

#include <cstdio>

#include "bench/options.hpp"
#include "bench/outcome.hpp"

namespace inboxd::bench {

// The CPU time this process has used so far (getrusage), and with children
// that of its waited-for children too (--workers).
[[nodiscard]] cpu_usage measure_cpu(bool children = false);

// Exit status of a finished run: 0 when it ran (even if the server refused
// every message), 1 when not one transaction could be completed.
[[nodiscard]] int exit_code(const outcome& r);

void print_text(std::FILE* out, const options& opt, const outcome& r, const cpu_usage& cpu);
// Exactly one JSON object and a newline.
void print_json(std::FILE* out, const options& opt, const outcome& r, const cpu_usage& cpu);

}  // namespace inboxd::bench
