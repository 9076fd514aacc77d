#include "bench/options.hpp"

#include <fmt/format.h>
#include <CLI/CLI.hpp>
#include <algorithm>
#include <charconv>
#include <cmath>
#include <cstdio>
#include <fstream>

#include "bench/message.hpp"

namespace inboxd::bench {

namespace {

// A size: bytes, or with a binary suffix (k, KiB, m, MiB). Returns false when
// the text is not one.
bool parse_size(std::string_view text, std::size_t& out) {
  while (!text.empty() && (text.front() == ' ' || text.front() == '\t')) text.remove_prefix(1);
  while (!text.empty() && (text.back() == ' ' || text.back() == '\t' || text.back() == '\r'))
    text.remove_suffix(1);
  std::uint64_t value = 0;
  auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), value);
  if (ec != std::errc{} || end == text.data()) return false;
  std::string_view suffix(end, static_cast<std::size_t>(text.data() + text.size() - end));
  std::uint64_t unit = 1;
  if (suffix == "" || suffix == "b" || suffix == "B")
    unit = 1;
  else if (suffix == "k" || suffix == "K" || suffix == "KiB" || suffix == "kiB")
    unit = 1024;
  else if (suffix == "m" || suffix == "M" || suffix == "MiB")
    unit = 1024 * 1024;
  else
    return false;
  if (value > max_message_size / unit) return false;
  out = static_cast<std::size_t>(value * unit);
  return true;
}

// Reads a file of sizes, one a line; blank lines and lines starting with '#'
// are skipped. Returns an error message, empty on success.
std::string read_size_file(const std::string& path, std::vector<std::size_t>& sizes) {
  std::ifstream in(path);
  if (!in) return fmt::format("--size-file: cannot open {}", path);
  std::string line;
  unsigned number = 0;
  while (std::getline(in, line)) {
    ++number;
    std::string_view view(line);
    auto first = view.find_first_not_of(" \t\r");
    if (first == std::string_view::npos || view[first] == '#') continue;
    std::size_t size = 0;
    if (!parse_size(view, size))
      return fmt::format("--size-file: {} line {}: not a size: \"{}\"", path, number, line);
    sizes.push_back(size);
  }
  if (sizes.empty()) return fmt::format("--size-file: {} holds no sizes", path);
  return {};
}

// A --from or --to template may use {n}, {c} and {r}, and nothing else in braces.
std::string check_template(std::string_view flag, const std::string& text) {
  std::string error;
  if (!address_template::parse(text, error)) return fmt::format("{}: {}", flag, error);
  return {};
}

void print_error(std::string what) {
  std::replace(what.begin(), what.end(), '\n', ' ');
  fmt::print(stderr, "inboxd-bench: {} (try --help)\n", what);
}

}  // namespace

int parse_options(int argc, char** argv, options& opt) {
  CLI::App app{"inboxd-bench: an SMTP load generator (one thread, one libuv loop)", "inboxd-bench"};
  std::string size_text = "1024";
  std::string size_file;
  std::string pipelining = "on";
  std::string tls;
  std::string tls_resume = "on";
  std::string auth;
  auto* host = app.add_option("--host", opt.host, "server address (default 127.0.0.1)");
  host->type_name("ADDR");
  app.add_option("--port", opt.port, "server port (default 2525)")->check(CLI::Range(1, 65535));
  app.add_option("--connections,-c", opt.connections, "concurrent connections (default 1)")
      ->check(CLI::Range(1u, 1000000u));
  auto* messages = app.add_option("--messages,-m", opt.messages,
                                  "messages to send, after the warm-up (default 1000)")
                       ->check(CLI::Range(std::uint64_t{1}, std::uint64_t{1} << 48));
  auto* duration = app.add_option("--duration,-d", opt.duration,
                                  "seconds to send for, after the warm-up, instead of --messages")
                       ->check(CLI::Range(0.001, 1e6));
  messages->excludes(duration);
  auto* size =
      app.add_option("--size,-s", size_text,
                     "message size in bytes, headers included; k/M suffixes (default 1024)")
          ->type_name("BYTES");
  auto* size_file_opt = app.add_option("--size-file", size_file,
                                       "file of sizes, one a line, drawn at random per message")
                            ->type_name("FILE");
  size->excludes(size_file_opt);
  app.add_option("--recipients,-r", opt.recipients, "recipients per message (default 1)")
      ->check(CLI::Range(1u, 100000u));
  app.add_option("--pipelining", pipelining,
                 "on (default): MAIL+RCPT+DATA in one write, and with the previous text; "
                 "group: not with the text; off: one command per round trip")
      ->check(CLI::IsMember({"on", "group", "off"}));
  app.add_flag("--bdat", opt.bdat,
               "send the text as one BDAT <n> LAST (RFC 3030) where the server offers CHUNKING, "
               "pipelined with MAIL and RCPT where it offers PIPELINING");
  app.add_option("--messages-per-connection", opt.messages_per_connection,
                 "QUIT and reconnect after this many messages (default: never)")
      ->check(CLI::Range(std::uint64_t{1}, UINT64_MAX));
  app.add_option("--rate", opt.rate,
                 "open loop: start messages on a schedule of R/s in all, latency from the schedule")
      ->check(CLI::Range(0.001, 1e9));
  app.add_option("--from", opt.from, "sender template; {n} message, {c} connection, {r} recipient")
      ->type_name("TEMPLATE");
  app.add_option("--to", opt.to, "recipient template, same fields (default user{r}@inboxd.example)")
      ->type_name("TEMPLATE");
  app.add_option("--helo", opt.helo, "the name in EHLO (default bench.client.example)");
  app.add_option("--warmup", opt.warmup, "seconds sent first and left out of the results")
      ->check(CLI::Range(0.0, 1e6));
  app.add_option("--timeout", opt.timeout, "seconds to wait for each reply (default 30)")
      ->check(CLI::Range(0.001, 1e6));
  app.add_flag("--json", opt.json, "print one JSON object on stdout instead of the summary");
  app.add_option("--progress", opt.progress, "live progress line: auto (on a terminal), on, off")
      ->check(CLI::IsMember({"auto", "on", "off"}));
  app.add_option("--seed", opt.seed, "seed for the size draw (default 1)");
  app.add_option("--tls", tls,
                 "starttls: STARTTLS after EHLO; implicit: TLS from the first byte on --port")
      ->check(CLI::IsMember({"starttls", "implicit"}));
  app.add_option("--tls-resume", tls_resume,
                 "on (default): a slot's reconnects resume its TLS session (ticket); "
                 "off: full handshakes")
      ->check(CLI::IsMember({"on", "off"}));
  app.add_option("--auth", auth, "AUTH PLAIN with these credentials after EHLO")
      ->type_name("USER:PASS");
  app.add_option("--histogram-log", opt.histogram_log,
                 "write the latency histogram of each interval to FILE in HdrHistogram's "
                 "interval log format (microseconds)")
      ->type_name("FILE");
  app.add_option("--histogram-interval", opt.histogram_interval,
                 "seconds per interval of --histogram-log (default 1)")
      ->check(CLI::Range(0.1, 86400.0));
  app.add_option("--workers", opt.workers,
                 "generator processes sharing --connections, --messages and --rate; "
                 "one merged report (default 1)")
      ->check(CLI::Range(1u, 1024u));
  auto* corpus = app.add_option("--corpus", opt.corpus,
                                "replay the messages of a Maildir (cur/ and new/) or an mbox file, "
                                "in order, cycling, instead of synthetic ones")
                     ->type_name("DIR|FILE");
  corpus->excludes(size)->excludes(size_file_opt);
  app.set_version_flag("--version", "inboxd-bench 0.1.0");
  try {
    app.parse(argc, argv);
  } catch (const CLI::CallForHelp&) {
    std::fputs(app.help().c_str(), stdout);
    return 0;
  } catch (const CLI::CallForVersion&) {
    std::puts(app.version().c_str());
    return 0;
  } catch (const CLI::ParseError& e) {
    print_error(e.what());
    return 2;
  }
  opt.tls = tls == "starttls"   ? tls_mode::starttls
            : tls == "implicit" ? tls_mode::implicit
                                : tls_mode::none;
  opt.tls_resume = tls_resume == "on";
  if (!auth.empty()) {
    auto colon = auth.find(':');
    if (colon == 0 || colon == std::string::npos) {
      print_error("--auth: want USER:PASS");
      return 2;
    }
    opt.auth_user = auth.substr(0, colon);
    opt.auth_password = auth.substr(colon + 1);
  }
  if (opt.workers > opt.connections) {
    print_error(fmt::format("--workers {}: at most one worker per connection (-c {})", opt.workers,
                            opt.connections));
    return 2;
  }
  if (opt.messages && opt.workers > opt.messages) {
    print_error(
        fmt::format("--workers {}: more workers than --messages {}", opt.workers, opt.messages));
    return 2;
  }
  opt.pipelining = pipelining != "off";
  opt.chain = pipelining == "on";
  if (opt.messages == 0 && opt.duration == 0) opt.messages = 1000;
  if (!size_file.empty()) {
    if (auto error = read_size_file(size_file, opt.sizes); !error.empty()) {
      print_error(error);
      return 2;
    }
  } else {
    std::size_t bytes = 0;
    if (!parse_size(size_text, bytes)) {
      print_error(
          fmt::format("--size: not a size up to {} bytes: \"{}\"", max_message_size, size_text));
      return 2;
    }
    opt.sizes.push_back(bytes);
  }
  for (auto [flag, text] : {std::pair{"--from", &opt.from}, std::pair{"--to", &opt.to}}) {
    if (auto error = check_template(flag, *text); !error.empty()) {
      print_error(error);
      return 2;
    }
  }
  if (opt.helo.empty() || opt.helo.find_first_of(" \r\n") != std::string::npos) {
    print_error("--helo: want one word");
    return 2;
  }
  return -1;
}

}  // namespace inboxd::bench
