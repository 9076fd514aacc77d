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

// Every line is stamped to the millisecond. The date and time down to the
// second, and the " inboxd[pid]: " after the milliseconds, change once a
// second at most: they are formatted then and copied for each line.
void format_log_line(std::string& out, log_level level, std::string_view line) {
  static constexpr std::string_view names[] = {"debug: ", "info: ", "warning: ", "error: "};
  thread_local std::time_t cached_second = -1;
  thread_local std::string date;  // "2026-12-01T22:03:11."
  thread_local std::string tag;   // "Z inboxd[6733]: "
  timeval tv{};
  ::gettimeofday(&tv, nullptr);
  if (tv.tv_sec != cached_second) {
    std::tm tm{};
    gmtime_r(&tv.tv_sec, &tm);
    date = fmt::format(FMT_STRING("{:04}-{:02}-{:02}T{:02}:{:02}:{:02}."), tm.tm_year + 1900,
                       tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec);
    tag = fmt::format(FMT_STRING("Z inboxd[{}]: "), ::getpid());  // The pid changes in a fork.
    cached_second = tv.tv_sec;
  }
  auto ms = static_cast<unsigned>(tv.tv_usec / 1000);
  char digits[3] = {static_cast<char>('0' + ms / 100), static_cast<char>('0' + ms / 10 % 10),
                    static_cast<char>('0' + ms % 10)};
  out += date;
  out.append(digits, 3);
  out += tag;
  out += names[static_cast<int>(level)];
  out += line;
  out += '\n';
}

logger stderr_logger() {
  return {write_stderr, nullptr};
}

}  // namespace inboxd
