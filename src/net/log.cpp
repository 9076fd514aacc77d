#include <sys/time.h>
#include <unistd.h>

#include <fmt/format.h>
#include <cstdio>
#include <ctime>

#include "inboxd/log.hpp"

namespace inboxd {
namespace {

void write_stderr(void*, log_level level, std::string_view line) {
  // One write per line, so lines from a crash or from several processes stay whole.
  std::string buf;
  format_log_line(buf, level, line);
  std::fwrite(buf.data(), 1, buf.size(), stderr);
}

}  // namespace

void format_log_line(std::string& out, log_level level, std::string_view line) {
  static constexpr std::string_view names[] = {"debug", "info", "warning", "error"};
  timeval tv{};
  ::gettimeofday(&tv, nullptr);
  std::tm tm{};
  gmtime_r(&tv.tv_sec, &tm);
  fmt::format_to(std::back_inserter(out),
                 FMT_STRING("{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z inboxd[{}]: {}: {}\n"),
                 tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec,
                 tv.tv_usec / 1000, ::getpid(), names[static_cast<int>(level)], line);
}

logger stderr_logger() {
  return {write_stderr, nullptr};
}

}  // namespace inboxd
