#include "proto/pipe_command.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <utility>

namespace inboxd::proto {
namespace {

bool blank(char c) {
  return c == ' ' || c == '\t' || c == '\n';
}

// Inside "...", a backslash quotes only these (POSIX 2.2.3); before a
// newline it joins the lines.
bool escapable_in_double(char c) {
  return c == '"' || c == '\\' || c == '$' || c == '`';
}

bool refuse(std::string& error, std::string_view why) {
  error.assign(why);
  return false;
}

}  // namespace

bool split_command(std::string_view command, std::vector<std::string>& words, std::string& error) {
  words.clear();
  if (command.size() > max_pipe_command)
    return refuse(error,
                  fmt::format(FMT_STRING("the command is longer than {} bytes"), max_pipe_command));
  if (command.find('\0') != command.npos) return refuse(error, "the command holds a NUL byte");
  std::string word;
  bool in_word = false;  // "" is a word too
  for (std::size_t i = 0; i < command.size(); ++i) {
    char c = command[i];
    if (blank(c)) {
      if (in_word) words.push_back(std::exchange(word, {}));
      in_word = false;
      continue;
    }
    in_word = true;
    if (c == '\\') {
      if (++i == command.size()) return refuse(error, "the command ends in a backslash");
      if (command[i] != '\n') word += command[i];
    } else if (c == '\'') {
      std::size_t end = command.find('\'', i + 1);
      if (end == command.npos) return refuse(error, "the command has an unterminated '");
      word.append(command.substr(i + 1, end - i - 1));
      i = end;
    } else if (c == '"') {
      for (++i;; ++i) {
        if (i == command.size()) return refuse(error, "the command has an unterminated \"");
        char d = command[i];
        if (d == '"') break;
        if (d == '\\' && i + 1 < command.size() &&
            (escapable_in_double(command[i + 1]) || command[i + 1] == '\n')) {
          if (command[++i] != '\n') word += command[i];
        } else {
          word += d;
        }
      }
    } else {
      word += c;
    }
    if (words.size() >= max_pipe_words)
      return refuse(error,
                    fmt::format(FMT_STRING("the command has more than {} words"), max_pipe_words));
  }
  if (in_word) words.push_back(std::move(word));
  if (words.empty()) return refuse(error, "the command is empty");
  return true;
}

void append_safe_value(std::string& out, std::string_view value, bool utf8) {
  static constexpr std::string_view allowed = "!@%-_=+:,./";
  for (char c : value) {
    auto u = static_cast<unsigned char>(c);
    bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              allowed.find(c) != allowed.npos || (utf8 && u >= 0x80);
    out += ok ? c : '_';
  }
}

bool pipe_environment(const envelope& env, const std::vector<std::string>& inherited,
                      std::vector<std::string>& out, std::string& error) {
  out.clear();
  auto add = [&](std::string_view name, std::string_view value) {
    std::string s(name);
    s += '=';
    append_safe_value(s, value, env.smtputf8);
    out.push_back(std::move(s));
  };
  add("SENDER", env.reverse_path);
  // Aliases give one address several mailboxes, adjacent (the session
  // appends them together): each address once, in RCPT order.
  std::string recipients = "RECIPIENTS=";
  std::string_view last;
  for (const recipient& r : env.recipients) {
    if (!last.empty() && r.address == last) continue;
    if (!last.empty()) recipients += ' ';
    append_safe_value(recipients, r.address, env.smtputf8);
    last = r.address;
    if (recipients.size() > max_pipe_env_value)
      return refuse(error, fmt::format(FMT_STRING("the recipients pass the {} bytes an "
                                                  "environment variable may hold"),
                                       max_pipe_env_value));
  }
  out.push_back(std::move(recipients));
  if (std::string_view orcpt = original_recipient(env); !orcpt.empty())
    add("ORIGINAL_RECIPIENT", orcpt);
  add("QUEUE_ID", env.queue_id);
  add("CLIENT_ADDRESS", env.client_address);
  add("CLIENT_HELO", env.helo);
  out.insert(out.end(), inherited.begin(), inherited.end());
  return true;
}

std::string from_line(std::string_view reverse_path, std::time_t when) {
  std::tm tm{};
  gmtime_r(&when, &tm);
  static constexpr std::string_view days[] = {"Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"};
  static constexpr std::string_view months[] = {"Jan", "Feb", "Mar", "Apr", "May", "Jun",
                                                "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"};
  std::string sender;
  // A From_ line ends at its first blank: the sender must have none.
  if (reverse_path.empty())
    sender = "MAILER-DAEMON";
  else
    append_safe_value(sender, reverse_path, true);
  return fmt::format(FMT_STRING("From {} {} {} {:2} {:02}:{:02}:{:02} {}\n"), sender,
                     days[tm.tm_wday], months[tm.tm_mon], tm.tm_mday, tm.tm_hour, tm.tm_min,
                     tm.tm_sec, tm.tm_year + 1900);
}

void first_line::append(std::string_view bytes) {
  total_ += bytes.size();
  if (done_) return;
  std::size_t end = bytes.find_first_of("\r\n");
  if (end != bytes.npos) {
    bytes = bytes.substr(0, end);
    done_ = true;
  }
  std::size_t room = max_line - line_.size();
  if (bytes.size() >= room) {
    bytes = bytes.substr(0, room);
    done_ = true;
  }
  line_.append(bytes);
}

store_result exit_result(long exit_status, int term_signal) noexcept {
  constexpr long ex_tempfail = 75;  // sysexits.h
  if (term_signal != 0) return store_result::temporary_fail;
  if (exit_status == 0) return store_result::stored;
  if (exit_status == ex_tempfail) return store_result::temporary_fail;
  return store_result::permanent_fail;
}

std::string failure_text(std::string_view what, std::string_view stderr_line) {
  auto digit = [](char c) { return c >= '0' && c <= '9'; };
  bool reply_line = stderr_line.size() >= 3 && (stderr_line[0] == '4' || stderr_line[0] == '5') &&
                    digit(stderr_line[1]) && digit(stderr_line[2]) &&
                    (stderr_line.size() == 3 || stderr_line[3] == ' ' || stderr_line[3] == '-');
  if (reply_line) return std::string(stderr_line);
  if (stderr_line.empty()) return std::string(what);
  return fmt::format(FMT_STRING("{}: {}"), what, stderr_line);
}

}  // namespace inboxd::proto
