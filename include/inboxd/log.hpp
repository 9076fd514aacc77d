// inboxd/log.hpp: where the library's log lines go.
//
// One line per call, without a trailing newline; the text is borrowed for the
// call. The default writes to stderr with a timestamp.
#pragma once

#include <string>
#include <string_view>

namespace inboxd {

enum class log_level { debug, info, warning, error };

struct logger {
  void (*write)(void* ctx, log_level level, std::string_view line) = nullptr;
  void* ctx = nullptr;
};

// A logger that writes "YYYY-mm-ddTHH:MM:SS.mmmZ inboxd[pid]: level: line" to stderr.
logger stderr_logger();

// Appends one line in that form, with its newline, to out.
void format_log_line(std::string& out, log_level level, std::string_view line);

}  // namespace inboxd
