// Runs every tests/transcripts/*.txt against a session, whole and dribbled.
//
// A transcript is a list of lines:
//   # comment              ignored, as are empty lines
//   ! key=value            session setup, before the first C:/R: line:
//                          hostname, max_message_size, max_recipients,
//                          bare_newline (normalize | reject), accept_dsn (true), and
//                          store (the sink's result per recipient, comma-separated:
//                          stored | temporary_fail | no_space | permanent_fail;
//                          the last one repeats), and lmtp=yes (an LMTP session)
//   C: text                client bytes, with CRLF added
//   R: text                raw client bytes, nothing added
//   S: text                one expected reply line (without CRLF); a trailing
//                          "*" matches any rest of the line (queue ids)
// In C: and R: text, \r \n \t \\ and \xHH stand for those bytes, and \{N}c for
// the character c repeated N times. The session's greeting comes first.
//
// All client bytes are sent in one read, then again split in two at every byte
// boundary and one byte at a time; each way must give the same replies and the
// same stored messages.
#include <doctest/doctest.h>

#include <algorithm>
#include <charconv>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "harness.hpp"
#include "proto/reply.hpp"

#ifndef INBOXD_TRANSCRIPTS
#error "tests/meson.build defines INBOXD_TRANSCRIPTS, the directory of the transcripts"
#endif

using namespace inboxd;
using inboxd::test::printable;
using inboxd::test::test_connection;

namespace {

struct transcript {
  session_config cfg;
  std::vector<store_result> store;
  bool lmtp = false;
  std::string client;                 // every byte the client sends
  std::vector<std::string> expected;  // reply lines
  std::string error;                  // a malformed transcript
};

std::size_t number(std::string_view s) {
  std::size_t n = 0;
  std::from_chars(s.data(), s.data() + s.size(), n);
  return n;
}

std::string unescape(std::string_view s, std::string& error) {
  std::string out;
  for (std::size_t i = 0; i < s.size(); ++i) {
    if (s[i] != '\\' || i + 1 == s.size()) {
      out += s[i];
      continue;
    }
    char e = s[++i];
    if (e == 'r') {
      out += '\r';
    } else if (e == 'n') {
      out += '\n';
    } else if (e == 't') {
      out += '\t';
    } else if (e == '\\') {
      out += '\\';
    } else if (e == 'x' && i + 2 < s.size()) {
      out += static_cast<char>(std::stoi(std::string(s.substr(i + 1, 2)), nullptr, 16));
      i += 2;
    } else if (e == '{' && s.find('}', i) != s.npos && s.find('}', i) + 1 < s.size()) {
      std::size_t close = s.find('}', i);
      out.append(number(s.substr(i + 1, close - i - 1)), s[close + 1]);
      i = close + 1;
    } else {
      error = "unknown escape \\" + std::string(1, e);
    }
  }
  return out;
}

store_result store_result_of(std::string_view name, std::string& error) {
  if (name == "stored") return store_result::stored;
  if (name == "temporary_fail") return store_result::temporary_fail;
  if (name == "no_space") return store_result::no_space;
  if (name == "permanent_fail") return store_result::permanent_fail;
  error = "unknown store result " + std::string(name);
  return store_result::stored;
}

void set(transcript& t, std::string_view key, std::string_view value) {
  if (key == "hostname") {
    t.cfg.hostname = value;
  } else if (key == "max_message_size") {
    t.cfg.max_message_size = number(value);
  } else if (key == "max_recipients") {
    t.cfg.max_recipients = number(value);
  } else if (key == "bare_newline" && (value == "reject" || value == "normalize")) {
    t.cfg.bare_newline =
        value == "reject" ? bare_newline_policy::reject : bare_newline_policy::normalize;
  } else if (key == "accept_dsn") {
    t.cfg.accept_dsn = value == "true";
  } else if (key == "lmtp" && value == "yes") {
    t.lmtp = true;
  } else if (key == "store") {
    for (std::size_t start = 0; start <= value.size();) {
      std::size_t comma = std::min(value.find(',', start), value.size());
      t.store.push_back(store_result_of(value.substr(start, comma - start), t.error));
      start = comma + 1;
    }
  } else {
    t.error = "unknown setting " + std::string(key) + "=" + std::string(value);
  }
}

transcript load(const std::filesystem::path& file) {
  transcript t;
  std::ifstream in(file);
  std::string line;
  while (std::getline(in, line)) {
    std::string_view l = line;
    if (l.empty() || l.front() == '#') continue;
    std::string_view tag = l.substr(0, 2), text = l.size() > 3 ? l.substr(3) : std::string_view{};
    if (l.front() == '!') {
      text = l.substr(1);
      while (!text.empty() && text.front() == ' ') text.remove_prefix(1);
      auto eq = text.find('=');
      set(t, text.substr(0, eq), eq == text.npos ? "" : text.substr(eq + 1));
    } else if (tag == "C:") {
      t.client += unescape(text, t.error) + "\r\n";
    } else if (tag == "R:") {
      t.client += unescape(text, t.error);
    } else if (tag == "S:") {
      t.expected.emplace_back(text);
    } else {
      t.error = "bad line: " + line;
    }
  }
  return t;
}

// Sends the pieces one read at a time; returns the replies and what the sink
// stored, the trace header's date left out.
std::string run(const transcript& t, const std::vector<std::string_view>& pieces) {
  test_connection c(t.cfg);
  if (t.lmtp) c.restart_as_lmtp();
  c.sink.results = t.store;
  for (auto piece : pieces) c.send(piece);
  std::string seen = c.session.output();
  for (const auto& m : c.sink.messages) {
    seen += "message " + m.queue_id + " from <" + m.reverse_path + "> to";
    for (const auto& r : m.recipients) seen += " <" + r + ">";
    // What an aborted message got before its abort depends on how the body arrived.
    auto trace = m.trace();
    if (m.aborted) seen += " aborted\n";
    if (m.committed)
      seen += " committed\n" + printable(trace.substr(0, trace.rfind(';'))) + "\n" +
              printable(m.body()) + "\n";
  }
  if (c.sink.misuse) seen += "sink misused\n";
  return seen + (c.session.closing() ? "closing\n" : "") + (c.session.waiting() ? "waiting\n" : "");
}

// The reply lines as text, with each "*" line of the expected replies taken
// as matched when the actual line starts with what comes before the "*".
std::pair<std::string, std::string> compare(const std::vector<std::string>& expected,
                                            const std::vector<std::string>& actual) {
  std::string want, got;
  for (std::size_t i = 0; i < std::max(expected.size(), actual.size()); ++i) {
    std::string e = i < expected.size() ? expected[i] : "(nothing)";
    std::string a = i < actual.size() ? actual[i] : "(nothing)";
    if (!e.empty() && e.back() == '*' && a.starts_with(e.substr(0, e.size() - 1))) e = a;
    want += e + "\n";
    got += printable(a) + "\n";
  }
  return {want, got};
}

std::vector<std::filesystem::path> transcript_files() {
  std::vector<std::filesystem::path> files;
  for (const auto& entry : std::filesystem::directory_iterator(INBOXD_TRANSCRIPTS))
    if (entry.path().extension() == ".txt") files.push_back(entry.path());
  std::sort(files.begin(), files.end());
  return files;
}

}  // namespace

TEST_CASE("transcripts give their replies, whole and dribbled") {
  auto files = transcript_files();
  CHECK(files.size() >= 20);
  for (const auto& file : files) {
    INFO("transcript ", file.filename().string());
    transcript t = load(file);
    CHECK_MESSAGE(t.error.empty(), t.error);
    test_connection c(t.cfg);
    if (t.lmtp) c.restart_as_lmtp();
    c.sink.results = t.store;
    c.send(t.client);
    auto [want, got] = compare(t.expected, test::reply_lines(c.session.output()));
    CHECK(got == want);
    test::same_when_dribbled(t.client, [&](const auto& pieces) { return run(t, pieces); });
  }
}

// A reply of the catalogue that no transcript shows is a reply nobody checks.
// Two are covered elsewhere or not sent: shutting_down needs a server
// shutdown (session_test.cpp), and the session never sends bad_sequence.
TEST_CASE("the transcripts show every reply of the catalogue") {
  std::vector<std::string> expected;
  for (const auto& file : transcript_files()) {
    auto t = load(file);
    expected.insert(expected.end(), t.expected.begin(), t.expected.end());
  }
  for (int i = 0; i <= static_cast<int>(proto::reply_id::bad_body_type); ++i) {
    auto id = static_cast<proto::reply_id>(i);
    if (id == proto::reply_id::shutting_down || id == proto::reply_id::bad_sequence) continue;
    std::string line;
    proto::append_reply(line, id);
    line.resize(line.size() - 2);  // Without its CRLF; a detail may follow.
    INFO("reply ", line);
    CHECK(std::any_of(expected.begin(), expected.end(),
                      [&](const std::string& e) { return e.starts_with(line); }));
  }
}
