// tests/unit/metrics_test.cpp: the Prometheus text, the HTTP request heads
// of the metrics listener, and what the session counts.
#include <doctest/doctest.h>

#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "harness.hpp"
#include "inboxd/metrics.hpp"
#include "inboxd/version.hpp"
#include "net/http_head.hpp"

namespace {

using namespace inboxd;
using inboxd::net::find_head_end;
using inboxd::net::http_head;
using inboxd::net::parse_http_head;

bool has_line(const std::string& text, std::string_view line) {
  std::string needle = "\n" + std::string(line) + "\n";
  return ("\n" + text).find(needle) != std::string::npos;
}

}  // namespace

TEST_CASE("the text format: HELP and TYPE before each family, counters end in _total") {
  server_metrics m;
  m.connections = 7;
  m.messages[static_cast<std::size_t>(message_status::accepted)] = 3;
  m.refused[static_cast<std::size_t>(refusal::per_ip)] = 2;
  m.memory_limit = 1024;
  std::string out;
  render_metrics(m, out);
  CHECK(has_line(out, "inboxd_connections_total 7"));
  CHECK(has_line(out, "inboxd_messages_total{status=\"accepted\"} 3"));
  CHECK(has_line(out, "inboxd_messages_total{status=\"rejected\"} 0"));
  CHECK(has_line(out, "inboxd_connections_refused_total{reason=\"per_ip\"} 2"));
  CHECK(has_line(out, "inboxd_memory_budget_limit_bytes 1024"));
  CHECK(has_line(out, "inboxd_build_info{version=\"" INBOXD_VERSION "\"} 1"));
  CHECK(out.ends_with("\n"));
  // Every sample's family was announced by a TYPE line just before, and a
  // counter's name ends in _total.
  std::string family, type;
  std::size_t pos = 0;
  while (pos < out.size()) {
    std::size_t nl = out.find('\n', pos);
    std::string_view line(out.data() + pos, nl - pos);
    pos = nl + 1;
    if (line.starts_with("# HELP ")) continue;
    if (line.starts_with("# TYPE ")) {
      line.remove_prefix(7);
      family = std::string(line.substr(0, line.find(' ')));
      type = std::string(line.substr(line.find(' ') + 1));
      if (type == "counter") CHECK(family.ends_with("_total"));
      continue;
    }
    INFO(line);
    CHECK(line.starts_with(family));
    CHECK(line.find(' ') != line.npos);
  }
}

TEST_CASE("the commit histogram is cumulative, with +Inf equal to the count") {
  server_metrics m;
  m.commit_seconds.observe(0.001);  // on the first bound: in it (le is "at most")
  m.commit_seconds.observe(0.003);  // le=0.005
  m.commit_seconds.observe(30.0);   // past 10 s: +Inf only
  CHECK(m.commit_seconds.counts[0] == 1);
  CHECK(m.commit_seconds.counts[2] == 1);
  CHECK(m.commit_seconds.counts.back() == 1);
  std::string out;
  render_metrics(m, out);
  CHECK(has_line(out, "inboxd_commit_duration_seconds_bucket{le=\"0.001\"} 1"));
  CHECK(has_line(out, "inboxd_commit_duration_seconds_bucket{le=\"0.0025\"} 1"));
  CHECK(has_line(out, "inboxd_commit_duration_seconds_bucket{le=\"0.005\"} 2"));
  CHECK(has_line(out, "inboxd_commit_duration_seconds_bucket{le=\"10\"} 2"));
  CHECK(has_line(out, "inboxd_commit_duration_seconds_bucket{le=\"+Inf\"} 3"));
  CHECK(has_line(out, "inboxd_commit_duration_seconds_count 3"));
  CHECK(has_line(out, "inboxd_commit_duration_seconds_sum 30.004"));
}

TEST_CASE("sink errors are classified by errno") {
  CHECK(sink_error_of(ENOSPC) == sink_error::no_space);
  CHECK(sink_error_of(EDQUOT) == sink_error::no_space);
  CHECK(sink_error_of(EIO) == sink_error::io);
  CHECK(sink_error_of(EAGAIN) == sink_error::lock_busy);
  CHECK(sink_error_of(EACCES) == sink_error::permission);
  CHECK(sink_error_of(0) == sink_error::other);
  CHECK(sink_error_of(ENOENT) == sink_error::other);
}

TEST_CASE("an HTTP head: GET /metrics over HTTP/1.1 keeps the connection") {
  std::string_view req = "GET /metrics HTTP/1.1\r\nHost: x\r\nAccept: */*\r\n\r\nNEXT";
  auto h = parse_http_head(req);
  REQUIRE(h.st == http_head::status::ok);
  CHECK(h.method == "GET");
  CHECK(h.target == "/metrics");
  CHECK(h.keep_alive);
  CHECK(!h.has_body);
  CHECK(h.length == req.size() - 4);
}

TEST_CASE("an HTTP head: Connection decides keep-alive, per version") {
  CHECK(!parse_http_head("GET / HTTP/1.0\r\n\r\n").keep_alive);
  CHECK(parse_http_head("GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n").keep_alive);
  CHECK(!parse_http_head("GET / HTTP/1.1\r\nconnection: TE, close\r\n\r\n").keep_alive);
  CHECK(parse_http_head("GET / HTTP/1.1\r\nConnection: TE\r\n\r\n").keep_alive);
}

TEST_CASE("an HTTP head: a body is noticed, and bare LFs end lines") {
  CHECK(parse_http_head("POST /metrics HTTP/1.1\r\nContent-Length: 5\r\n\r\n").has_body);
  CHECK(!parse_http_head("GET /metrics HTTP/1.1\r\nContent-Length: 0\r\n\r\n").has_body);
  CHECK(parse_http_head("GET / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n").has_body);
  auto h = parse_http_head("GET /metrics HTTP/1.1\nHost: x\n\n");
  CHECK(h.st == http_head::status::ok);
  CHECK(h.target == "/metrics");
}

TEST_CASE("an HTTP head that is not one is bad") {
  for (std::string_view bad :
       {"\r\n\r\n", "GET\r\n\r\n", "GET /metrics\r\n\r\n", "GET /metrics HTTP/2.0\r\n\r\n",
        "GET /metrics HTTP/1.1x\r\n\r\n", "G(T /metrics HTTP/1.1\r\n\r\n", "GET  HTTP/1.1\r\n\r\n",
        "GET /metrics HTTP/1.1\r\nHost : x\r\n\r\n",
        "GET /metrics HTTP/1.1\r\nHost: x\r\n folded\r\n\r\n",
        "GET /metrics HTTP/1.1\r\nno colon\r\n\r\n", "GET /a\x01 HTTP/1.1\r\n\r\n"}) {
    INFO(inboxd::test::printable(bad));
    CHECK(parse_http_head(bad).st == http_head::status::bad);
  }
  CHECK(parse_http_head("GET /metrics HTTP/1.1\r\nHost: x\r\n").st ==
        http_head::status::incomplete);
}

TEST_CASE("the end of a head is found the same however the bytes come") {
  std::string_view req = "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\nGET";
  std::size_t whole = find_head_end(req, 0);
  CHECK(whole == req.size() - 3);
  for (std::size_t split = 0; split <= req.size(); ++split) {
    std::size_t first = find_head_end(req.substr(0, split), 0);
    std::size_t got = first != std::string_view::npos ? first : find_head_end(req, split);
    CHECK(got == whole);
  }
  // One byte at a time, each search starting where the last one stopped.
  std::size_t got = std::string_view::npos;
  for (std::size_t n = 1; n <= req.size() && got == std::string_view::npos; ++n)
    got = find_head_end(req.substr(0, n), n - 1);
  CHECK(got == whole);
}

TEST_CASE("the session counts recipients, messages, bytes and the commit") {
  using inboxd::test::test_connection;
  server_metrics m;
  recipient_rules rules;
  rules.domains.push_back({"example.com", {"b"}, {}});
  test_connection c({}, rules);
  auto counted = std::make_shared<proto::settings>(*c.settings);
  counted->metrics = &m;
  c.settings = counted;  // Taken up at the next command outside a transaction.
  c.send(
      "EHLO client.example\r\nMAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.com>\r\n"
      "RCPT TO:<nobody@example.com>\r\nRCPT TO:<x@elsewhere.example>\r\nDATA\r\nhi\r\n.\r\n");
  REQUIRE(c.sink.messages.size() == 1);
  CHECK(m.recipients_accepted == 1);
  CHECK(m.recipients_refused == 2);
  CHECK(m.messages[static_cast<std::size_t>(message_status::accepted)] == 1);
  // The trace header is ours, not received: "hi" and its CRLF.
  CHECK(m.message_bytes == 4);
  CHECK(m.commit_seconds.count == 1);
  // A failing store: 452 (no space) counts as temp_failed and as no_space.
  c.sink.results = {store_result::no_space};
  c.send("MAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.com>\r\nDATA\r\nhi\r\n.\r\n");
  CHECK(m.messages[static_cast<std::size_t>(message_status::temp_failed)] == 1);
  CHECK(m.sink_errors[static_cast<std::size_t>(sink_error::other)] == 1);  // no errno given
  CHECK(m.commit_seconds.count == 2);
  // Too big: rejected (552), counted without a commit.
  c.sink.results = {};
  session_config small;
  small.max_message_size = 3;
  auto tiny = std::make_shared<proto::settings>(*counted);
  tiny->limits = small;
  c.settings = tiny;
  c.send("MAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.com>\r\nDATA\r\n12345\r\n.\r\n");
  CHECK(m.messages[static_cast<std::size_t>(message_status::rejected)] == 1);
  CHECK(m.commit_seconds.count == 2);
  CHECK(m.message_bytes == 4 + 4 + 7);
}

TEST_CASE("a sink that throws is a sink error of kind exception") {
  using inboxd::test::test_connection;
  server_metrics m;
  test_connection c;
  auto counted = std::make_shared<proto::settings>(*c.settings);
  counted->metrics = &m;
  c.settings = counted;
  c.sink.throws = inboxd::test::memory_sink::throw_at::commit;
  c.send(
      "EHLO client.example\r\nMAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.com>\r\n"
      "DATA\r\nhi\r\n.\r\n");
  CHECK(m.sink_errors[static_cast<std::size_t>(sink_error::exception)] == 1);
  CHECK(m.messages[static_cast<std::size_t>(message_status::temp_failed)] == 1);
}
