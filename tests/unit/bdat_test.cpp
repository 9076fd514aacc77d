// BDAT and BINARYMIME (RFC 3030): what the sink receives, streaming and
// backpressure, and the session's state around refused chunks. The replies
// of each case are in tests/transcripts/bdat*.txt as well, dribbled there.
#include <doctest/doctest.h>

#include <string>

#include "harness.hpp"
#include "proto/data_decoder.hpp"
#include "proto/session.hpp"

using namespace inboxd;
using namespace std::string_literals;
using inboxd::test::memory_sink;
using inboxd::test::test_connection;

namespace {

constexpr std::string_view plain_envelope =
    "MAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.com>\r\n";
constexpr std::string_view binary_envelope =
    "MAIL FROM:<a@example.com> BODY=BINARYMIME\r\nRCPT TO:<b@example.com>\r\n";
constexpr std::string_view envelope_replies = "250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n";

void greet(test_connection& c) {
  c.send("EHLO client.example\r\n");
  std::string out = c.take();
  REQUIRE(out.find("250-CHUNKING\r\n") != out.npos);
  REQUIRE(out.find("250-BINARYMIME\r\n") != out.npos);
}

std::string bdat(std::string_view bytes, bool last = false) {
  return "BDAT " + std::to_string(bytes.size()) + (last ? " LAST\r\n" : "\r\n") +
         std::string(bytes);
}

std::string queued(const memory_sink::message& m) {
  return "250 2.0.0 Ok: queued as " + m.queue_id + "\r\n";
}

// Every byte value, with NULs, lone CRs and lone LFs, CRLFs and ".\r\n"
// lines among them.
std::string all_bytes() {
  std::string s;
  for (int round = 0; round < 2; ++round)
    for (int b = 0; b < 256; ++b) s += static_cast<char>(b);
  s += "\r\n.\r\nFrom x\r\n\r\r\n\n\n\r\0\0\r"s;
  return s;
}

}  // namespace

TEST_CASE("chunks reach the sink as one message with LF line ends and no unstuffing") {
  test_connection c;
  greet(c);
  c.send(std::string(plain_envelope) + bdat("Subject: x\r\n\r\n..a\r") +
         bdat("\nb\r\n.\r\n", true));
  REQUIRE(c.sink.messages.size() == 1);
  const auto& m = c.sink.messages[0];
  CHECK(m.committed);
  CHECK_FALSE(m.body_binary);
  CHECK(
      m.bytes.starts_with("Received: from client.example ([192.0.2.1])\n"
                          "\tby localhost (inboxd) with ESMTP id "));
  CHECK(m.body() == "Subject: x\n\n..a\nb\n.\n");
  CHECK(c.take() == std::string(envelope_replies) + "250 2.0.0 Ok: 18 octets\r\n" + queued(m));
  // The log line gives the size as sent: the sum of the chunks.
  CHECK(c.events.log.back().find(" size=25 status=sent") != std::string::npos);
}

TEST_CASE("a bare CR, a bare LF and a CR split from its LF by a chunk boundary") {
  test_connection c;
  greet(c);
  c.send(std::string(plain_envelope) + bdat("a\rb\nc\r") + bdat("\r") + bdat("\n") + bdat("x\r") +
         bdat("y") + bdat("\r") + bdat("", true));
  REQUIRE(c.sink.messages.size() == 1);
  CHECK(c.sink.messages[0].body() == "a\rb\nc\r\nx\ry\r");
}

TEST_CASE("BDAT 0 LAST alone is an empty message") {
  test_connection c;
  greet(c);
  c.send(std::string(plain_envelope) + "BDAT 0 LAST\r\n");
  REQUIRE(c.sink.messages.size() == 1);
  CHECK(c.sink.messages[0].committed);
  CHECK(c.sink.messages[0].body().empty());
  CHECK(c.take() == std::string(envelope_replies) + queued(c.sink.messages[0]));
}

TEST_CASE("pipelined messages, chunks and the next MAIL in one read (RFC 3030 4.2)") {
  std::string input = "EHLO c\r\n";
  for (int i = 0; i < 3; ++i)
    input += std::string(plain_envelope) + bdat("one\r\n") + bdat("BDAT 99 LAST\r\n") +
             bdat("three\r\n", true);
  input += "QUIT\r\n";
  auto run = [&](const std::vector<std::string_view>& pieces) {
    test_connection c;
    for (auto p : pieces) c.send(p);
    std::string seen = c.take();
    for (const auto& m : c.sink.messages) seen += "[" + std::string(m.body()) + "]";
    return seen;
  };
  std::string seen = test::same_when_dribbled(input, run);
  std::string one = "[one\nBDAT 99 LAST\nthree\n]";
  CHECK(seen.ends_with(one + one + one));
  CHECK(seen.find("221 2.0.0 Bye\r\n") != seen.npos);
}

TEST_CASE("a chunk streams to the sink as it arrives, never held whole") {
  test_connection c;
  greet(c);
  std::string chunk(1 << 20, 'x');
  for (std::size_t i = 0; i < chunk.size(); i += 100) chunk[i] = '\n';
  c.send(std::string(plain_envelope) + "BDAT " + std::to_string(chunk.size()) + " LAST\r\n");
  c.send(chunk.substr(0, 4096));
  REQUIRE(c.sink.messages.size() == 1);
  // The bytes so far are in the sink, none in the session's input.
  CHECK(c.sink.messages[0].body().size() == 4096);
  CHECK(c.input.empty());
  CHECK(c.session.in_data());
  for (std::size_t i = 4096; i < chunk.size(); i += 65536) c.send(chunk.substr(i, 65536));
  CHECK_FALSE(c.session.in_data());
  CHECK(c.sink.messages[0].committed);
  CHECK(c.sink.messages[0].body() == chunk);
  CHECK(c.sink.messages[0].writes > 16);
}

TEST_CASE("write() returning false pauses the chunk until writable()") {
  test_connection c;
  greet(c);
  c.sink.pause_from_write = 2;  // The first chunk write.
  c.send(std::string(plain_envelope) + "BDAT 10\r\n0123");
  CHECK(c.session.waiting());
  c.send("456789BDAT 2 LAST\r\nab");
  CHECK(c.input == "456789BDAT 2 LAST\r\nab");  // Not fed while paused.
  CHECK(c.take() == envelope_replies);
  c.sink.pause_from_write = 3;
  c.sink.resume();
  // The rest of the chunk was one write, refused again: the reply to the
  // chunk still goes out, the next BDAT waits.
  CHECK(c.session.waiting());
  CHECK(c.take() == "250 2.0.0 Ok: 10 octets\r\n");
  CHECK(c.input == "BDAT 2 LAST\r\nab");
  c.sink.pause_from_write = 100;
  c.sink.resume();
  CHECK(c.sink.messages[0].body() == "0123456789ab");
  CHECK(c.take() == queued(c.sink.messages[0]));
  CHECK_FALSE(c.sink.wrote_while_paused);
  CHECK_FALSE(c.session.waiting());
}

TEST_CASE("a held CR that turns out bare is its own write, never one after a refused write") {
  test_connection c;
  greet(c);
  c.send(std::string(plain_envelope) +
         bdat("a\r"));  // Writes 1 (trace) and 2 ("a"); the CR is held.
  c.sink.pause_from_write = 3;
  c.send(bdat("b", true));  // "\r" is write 3, refused; "b" waits for writable().
  CHECK(c.session.waiting());
  CHECK(c.sink.messages[0].writes == 3);
  c.sink.pause_from_write = 100;
  c.sink.resume();
  CHECK_FALSE(c.sink.wrote_while_paused);
  CHECK(c.sink.messages[0].body() == "a\rb");
  CHECK(c.sink.messages[0].committed);
}

TEST_CASE("an asynchronous commit at the LAST chunk holds the pipelined commands") {
  test_connection c;
  c.sink.mode = memory_sink::commit_mode::later;
  greet(c);
  c.send(std::string(plain_envelope) + bdat("hi", true) + "NOOP\r\n");
  CHECK(c.session.waiting());
  CHECK(c.input == "NOOP\r\n");
  CHECK(c.take() == envelope_replies);
  c.sink.complete();
  CHECK(c.take() == queued(c.sink.messages[0]) + "250 2.0.0 Ok\r\n");
}

TEST_CASE("past the size limit the chunks are read and dropped, the delivery aborted") {
  test_connection c({.max_message_size = 10});
  greet(c);
  c.send(std::string(plain_envelope) + bdat("123456") + bdat("7890X") + bdat("more") +
         bdat("", true) + "NOOP\r\n");
  REQUIRE(c.sink.messages.size() == 1);
  CHECK(c.sink.messages[0].aborted);
  CHECK_FALSE(c.sink.messages[0].committed);
  CHECK(c.sink.messages[0].body() == "123456");  // Nothing after the limit was passed.
  CHECK(c.take() == std::string(envelope_replies) +
                        "250 2.0.0 Ok: 6 octets\r\n"
                        "552 5.3.4 Message size exceeds fixed limit\r\n"
                        "552 5.3.4 Message size exceeds fixed limit\r\n"
                        "552 5.3.4 Message size exceeds fixed limit\r\n250 2.0.0 Ok\r\n");
  CHECK(c.session.idle());
  CHECK(c.events.log.back().find("status=rejected") != std::string::npos);
}

TEST_CASE("BDAT without MAIL or without a recipient consumes its octets and opens nothing") {
  test_connection c;
  greet(c);
  c.send(bdat("RSET\r\n") + "MAIL FROM:<a@example.com>\r\n" + bdat("QUIT\r\n", true) + "NOOP\r\n");
  CHECK(c.take() ==
        "503 5.5.1 Error: need MAIL command\r\n250 2.1.0 Ok\r\n"
        "503 5.5.1 Error: need RCPT command\r\n250 2.0.0 Ok\r\n");
  CHECK(c.sink.messages.empty());
  CHECK(c.session.idle());  // The LAST chunk ended the transaction.
  CHECK_FALSE(c.session.closing());
  c.send(std::string(plain_envelope) + bdat("ok", true));
  REQUIRE(c.sink.messages.size() == 1);
  CHECK(c.sink.messages[0].body() == "ok");
}

TEST_CASE("DATA after BDAT drops the message; RSET, EHLO and a disconnect between chunks too") {
  test_connection c;
  greet(c);
  c.send(std::string(plain_envelope) + bdat("abc") + "DATA\r\n" + bdat("def", true));
  REQUIRE(c.sink.messages.size() == 1);
  CHECK(c.sink.messages[0].aborted);
  CHECK(c.take() == std::string(envelope_replies) +
                        "250 2.0.0 Ok: 3 octets\r\n503 5.5.1 Error: DATA after BDAT, send RSET\r\n"
                        "503 5.5.1 Error: an earlier BDAT of this message failed, send RSET\r\n");
  CHECK(c.session.idle());
  for (std::string_view between : {"RSET\r\n", "EHLO again\r\n"}) {
    c.send(std::string(plain_envelope) + bdat("abc") + std::string(between));
    CHECK(c.sink.messages.back().aborted);
    CHECK(c.session.idle());
  }
  c.send(std::string(plain_envelope) + bdat("abc"));
  CHECK_FALSE(c.sink.messages.back().aborted);
  c.session.disconnect();
  CHECK(c.sink.messages.back().aborted);
  CHECK_FALSE(c.sink.misuse);
}

TEST_CASE("a client that goes away inside a chunk aborts the delivery") {
  test_connection c;
  greet(c);
  c.send(std::string(plain_envelope) + "BDAT 100 LAST\r\nhalf");
  CHECK(c.session.in_data());
  c.session.time_out(proto::reply_id::timeout);
  REQUIRE(c.sink.messages.size() == 1);
  CHECK(c.sink.messages[0].aborted);
  CHECK(c.session.closing());
}

TEST_CASE("a sink that throws gets 451 for each chunk and at the LAST one") {
  using throw_at = memory_sink::throw_at;
  for (throw_at where : {throw_at::begin, throw_at::write, throw_at::commit}) {
    CAPTURE(static_cast<int>(where));
    test_connection c;
    greet(c);
    c.sink.throws = where;
    c.send(std::string(plain_envelope) + bdat("a") + bdat("b", true));
    std::string failed = "451 4.3.0 Error: could not store the message, try again later\r\n";
    std::string first = where == throw_at::commit ? "250 2.0.0 Ok: 1 octets\r\n" : failed;
    CHECK(c.take() == std::string(envelope_replies) + first + failed);
    c.send(std::string(plain_envelope) + bdat("again", true));
    CHECK(c.take() == std::string(envelope_replies) + queued(c.sink.messages.back()));
    CHECK_FALSE(c.sink.misuse);
  }
}

// BINARYMIME.

TEST_CASE("a BINARYMIME body is stored byte for byte after an LF header section") {
  std::string body = all_bytes();
  std::string message = "Subject: bin\r\nX-A: b\r\n\r\n" + body;
  // Chunks of every small size, so that CRs, LFs and the header's end fall
  // on every kind of boundary.
  for (std::size_t size = 1; size <= 9; ++size) {
    CAPTURE(size);
    test_connection c({.bare_newline = bare_newline_policy::reject});
    greet(c);
    std::string input(binary_envelope);
    for (std::size_t i = 0; i < message.size(); i += size) input += bdat(message.substr(i, size));
    input += "BDAT 0 LAST\r\n";
    c.send(input);
    REQUIRE(c.sink.messages.size() == 1);
    const auto& m = c.sink.messages[0];
    CHECK(m.body_binary);
    CHECK(m.committed);
    CHECK(m.body() == "Subject: bin\nX-A: b\n\n" + body);
  }
}

TEST_CASE("a BINARYMIME message without a body, and one whose header ends at a bare LF") {
  test_connection c;
  greet(c);
  c.send(std::string(binary_envelope) + bdat("Subject: h\r\n", true));
  c.send(std::string(binary_envelope) + bdat("Subject: h\n\n\r\n", true));
  REQUIRE(c.sink.messages.size() == 2);
  CHECK(c.sink.messages[0].body() == "Subject: h\n");
  CHECK(c.sink.messages[1].body() == "Subject: h\n\n\r\n");
}

TEST_CASE("BODY=BINARYMIME with DATA is 503 and the transaction goes on with BDAT") {
  test_connection c;
  greet(c);
  c.send(std::string(binary_envelope) + "DATA\r\n" + bdat("\r\n\0"s, true));
  REQUIRE(c.sink.messages.size() == 1);
  CHECK(c.take() == std::string(envelope_replies) +
                        "503 5.5.1 Error: BODY=BINARYMIME needs BDAT, not DATA\r\n" +
                        queued(c.sink.messages[0]));
  CHECK(c.sink.messages[0].body() == "\n"s + '\0');
}

// The decoder on its own.

TEST_CASE("chunk_decoder converts line ends in place and holds only a trailing CR") {
  proto::chunk_decoder d;
  d.reset(false);
  std::string a = "x\r\ny\r";
  auto r = d.decode(a);
  CHECK(r.consumed == a.size());
  CHECK(r.out == "x\ny");
  std::string b = "z";
  r = d.decode(b);
  CHECK(r.out == "\r");
  CHECK(r.consumed == 0);
  r = d.decode(b);
  CHECK(r.out == "z");
  CHECK(d.saw_bare_cr());
  CHECK_FALSE(d.saw_bare_lf());
  CHECK_FALSE(d.finish());
  std::string e = "\r";
  r = d.decode(e);
  CHECK(r.out.empty());
  CHECK(d.finish());
  // At the message's end a CR is bare at once.
  d.reset(false);
  std::string f = "a\r";
  r = d.decode(f, true);
  CHECK(r.out == "a\r");
  CHECK_FALSE(d.finish());
}

// Found by the fuzzer: the LAST chunk ending in a CR, its write refused.
TEST_CASE("a LAST chunk that ends in a CR is written once, even when the write pauses") {
  test_connection c;
  greet(c);
  c.sink.pause_from_write = 2;  // The chunk's write.
  c.send(std::string(plain_envelope) + bdat("QUIT\r", true) + "NOOP\r\n");
  CHECK_FALSE(c.sink.wrote_while_paused);
  REQUIRE(c.sink.messages.size() == 1);
  CHECK(c.sink.messages[0].committed);
  CHECK(c.sink.messages[0].body() == "QUIT\r");
  CHECK(c.take() ==
        std::string(envelope_replies) + queued(c.sink.messages[0]) + "250 2.0.0 Ok\r\n");
}
