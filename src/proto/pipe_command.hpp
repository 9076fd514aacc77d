// proto/pipe_command.hpp: what the pipe sink gives the program it runs,
// sans I/O.
//
// The pipe sink (sinks.hpp, open_pipe_sink) runs a program for each message,
// as Postfix's pipe(8) does: the command line is split into words here, once,
// at start-up (never through a shell: a command that wants one names it, as
// in `sh -c '...'`); the envelope goes into its environment; its standard
// error is read, bounded, for the first line. Everything here is linear in
// its input and bounded; nothing is borrowed past a call.
#pragma once

#include <cstddef>
#include <ctime>
#include <string>
#include <string_view>
#include <vector>

#include "inboxd/sink.hpp"

namespace inboxd::proto {

// Limits of --pipe-command: far more than a command needs, far less than
// the kernel's ARG_MAX.
inline constexpr std::size_t max_pipe_command = 4096;  // bytes
inline constexpr std::size_t max_pipe_words = 64;
// One environment string may be at most 128 KiB (Linux's MAX_ARG_STRLEN):
// RECIPIENTS stays below it, or the message is not piped (451).
inline constexpr std::size_t max_pipe_env_value = 120 * 1024;

// Splits a command line into words as sh(1) does with quotes only: '...'
// keeps everything literally, "..." keeps everything but \" \\ \$ \` and
// backslash-newline, a backslash outside quotes keeps the next byte, and
// blanks (space, tab, newline) separate words. No expansion ($, *, ~) is
// done: the words go to execvp(3) as they are. Returns false with the
// reason in error for an empty command, an unterminated quote, a trailing
// backslash, a NUL byte, or one past the limits above.
[[nodiscard]] bool split_command(std::string_view command, std::vector<std::string>& words,
                                 std::string& error);

// Appends value with every byte outside Postfix's default
// command_expansion_filter (letters, digits and !@%-_=+:,./) replaced by
// '_', so that a script that passes a variable to a shell unquoted is not
// handed a metacharacter; with utf8 (SMTPUTF8, the session checked the
// UTF-8), bytes from 0x80 on are kept too, as Postfix does with
// smtputf8_enable.
void append_safe_value(std::string& out, std::string_view value, bool utf8);

// The environment of the program for one message, "NAME=value" each, as
// Postfix's pipe(8) and local(8) name them: SENDER (empty for <>),
// RECIPIENTS (the RCPT addresses, space-separated, each once),
// ORIGINAL_RECIPIENT (the ORCPT, only where sink.hpp's
// original_recipient() gives one), QUEUE_ID, CLIENT_ADDRESS, CLIENT_HELO,
// then the inherited strings (PATH, TZ, LANG, as Postfix's
// export_environment). Returns false with error set when RECIPIENTS would
// pass max_pipe_env_value.
[[nodiscard]] bool pipe_environment(const envelope& env, const std::vector<std::string>& inherited,
                                    std::vector<std::string>& out, std::string& error);

// The mbox "From " line (with its LF) that --pipe-from-line puts first, as
// Postfix's pipe(8) flag F: "From sender Wed Dec  2 13:20:49 2026", the
// sender MAILER-DAEMON for <>, the time in UTC.
[[nodiscard]] std::string from_line(std::string_view reverse_path, std::time_t when);

// Keeps the first line of what a program writes to its standard error, up
// to max_line bytes, and counts (then drops) the rest: a program that floods
// it costs no memory. The line has its CR/LF taken off; its bytes are as
// written (the session escapes them where it shows them).
class first_line {
 public:
  static constexpr std::size_t max_line = 512;
  void append(std::string_view bytes);
  [[nodiscard]] const std::string& line() const noexcept { return line_; }
  [[nodiscard]] std::size_t total() const noexcept { return total_; }

 private:
  std::string line_;
  std::size_t total_ = 0;
  bool done_ = false;  // the line ended (or reached max_line)
};

// What the pipe sink reports for a program that ended: exit 0 is stored,
// 75 (EX_TEMPFAIL, sysexits.h) a temporary failure, any other status a
// permanent one; death by a signal (or the timeout's kill) is temporary, as
// Postfix's pipe(8) defers "Command died with signal".
[[nodiscard]] store_result exit_result(long exit_status, int term_signal) noexcept;

// The store_outcome::reply for a failed program: its first stderr line
// when that is a reply line ("550 5.1.1 ..."), so the client gets it;
// otherwise "what: line" (or what alone), which the session only logs.
[[nodiscard]] std::string failure_text(std::string_view what, std::string_view stderr_line);

}  // namespace inboxd::proto
