// Unit tests of the HdrHistogram encodings (hdr_log.hpp), the worker
// outcome's round trip and merge (outcome.hpp) and the corpus's pieces
// (corpus.hpp). That HdrHistogram's own reader agrees is checked by
// tests/integration/test_bench.py with its Java tool.
#define DOCTEST_CONFIG_IMPLEMENT_WITH_MAIN
#include <doctest/doctest.h>

#include <cstdint>
#include <string>

#include "bench/corpus.hpp"
#include "bench/hdr_log.hpp"
#include "bench/histogram.hpp"
#include "bench/outcome.hpp"

using namespace inboxd::bench;

namespace {

histogram sample() {
  histogram h;
  for (std::uint64_t v = 1; v < 100000; v = v * 3 / 2 + 1) h.record_n(v, v % 7 + 1);
  h.record(0);
  h.record(4'000'000'000ULL);
  return h;
}

void check_same_counts(const histogram& a, const histogram& b) {
  REQUIRE(a.count() == b.count());
  for (std::size_t i = 0; i < histogram::bucket_count(); ++i)
    REQUIRE(a.count_at_index(i) == b.count_at_index(i));
  for (double p : {0.0, 50.0, 90.0, 99.0, 99.9})
    CHECK(a.value_at_percentile(p) >= b.value_at_percentile(p));
}

}  // namespace

TEST_CASE("base64 as RFC 4648 10 gives it") {
  CHECK(base64_encode("") == "");
  CHECK(base64_encode("f") == "Zg==");
  CHECK(base64_encode("fo") == "Zm8=");
  CHECK(base64_encode("foo") == "Zm9v");
  CHECK(base64_encode("foobar") == "Zm9vYmFy");
  std::string out;
  CHECK(base64_decode("Zm9vYmE=", out));
  CHECK(out == "fooba");
  CHECK(!base64_decode("Zm9", out));
  CHECK(!base64_decode("Zm=v", out));
  CHECK(!base64_decode("Zm9!", out));
}

TEST_CASE("the V2 encoding has HdrHistogram's header") {
  histogram h;
  h.record(1000);
  std::string e = hdr_encode(h);
  REQUIRE(e.size() > 40);
  // Cookie 0x1c849313: the V2 encoding cookie with word size 1.
  CHECK(static_cast<unsigned char>(e[0]) == 0x1c);
  CHECK(static_cast<unsigned char>(e[3]) == 0x13);
  CHECK(e[15] == 2);  // significant digits
  std::string c = hdr_encode_compressed(h);
  CHECK(static_cast<unsigned char>(c[3]) == 0x14);
}

TEST_CASE("encode and decode keep every count") {
  histogram h = sample();
  for (bool compressed : {false, true}) {
    histogram back;
    REQUIRE(hdr_decode(compressed ? hdr_encode_compressed(h) : hdr_encode(h), compressed, back));
    check_same_counts(h, back);
  }
  histogram empty, back;
  REQUIRE(hdr_decode(hdr_encode(empty), false, back));
  CHECK(back.count() == 0);
}

TEST_CASE("decoding refuses what is not ours") {
  histogram h = sample(), out;
  std::string e = hdr_encode(h);
  CHECK(!hdr_decode(e.substr(0, 20), false, out));
  std::string bad = e;
  bad[15] = 3;  // three significant digits: another bucket layout
  CHECK(!hdr_decode(bad, false, out));
  // A zero run past the last bucket.
  std::string runaway = e.substr(0, 40) + std::string("\xff\xff\x03", 3) + std::string("\x02", 1);
  runaway[7] = 4;
  CHECK(!hdr_decode(runaway, false, out));
  CHECK(!hdr_decode("garbage that is no zlib stream", true, out));
}

TEST_CASE("an outcome survives the pipe, and merges add up") {
  outcome a;
  a.st.started = 10;
  a.st.accepted = 9;
  a.st.failed = 1;
  a.st.codes[250] = 9;
  a.st.errors[2] = 1;
  a.st.latency = sample();
  a.live.writes = 42;
  a.t0_ns = 100;
  a.warmup_end_ns = 200;
  a.last_answer_ns = 1'000'000'200;
  a.finish_ns = 2'000'000'000;
  a.last_error = "connection reset\nby peer";
  a.intervals = {hdr_encode(sample()), hdr_encode(histogram())};
  a.last_interval_s = 0.25;
  outcome b;
  std::string error;
  REQUIRE(deserialize(serialize(a), b, error));
  CHECK(b.st.accepted == 9);
  CHECK(b.st.codes[250] == 9);
  CHECK(b.st.errors[2] == 1);
  CHECK(b.live.writes == 42);
  CHECK(b.st.latency.min() == a.st.latency.min());
  CHECK(b.st.latency.max() == a.st.latency.max());
  CHECK(b.st.latency.mean() == doctest::Approx(a.st.latency.mean()));
  check_same_counts(a.st.latency, b.st.latency);
  CHECK(b.measured_seconds() == doctest::Approx(1.0));
  CHECK(b.last_error == "connection reset by peer");
  CHECK(b.intervals.size() == 2);
  merge(b, a);
  CHECK(b.workers == 2);
  CHECK(b.st.accepted == 18);
  CHECK(b.st.codes[250] == 18);
  CHECK(b.st.latency.count() == 2 * a.st.latency.count());
  histogram first;
  REQUIRE(hdr_decode(b.intervals[0], false, first));
  CHECK(first.count() == 2 * sample().count());
  CHECK(!deserialize("started 1\n", b, error));  // no end line
  CHECK(!deserialize("started x\nend\n", b, error));
  CHECK(!deserialize("nonsense 1\nend\n", b, error));
}

TEST_CASE("mboxrd: From_ lines split, quoted ones lose one '>'") {
  auto m = split_mboxrd(
      "From a@b Thu Jan  1 00:00:00 2026\nSubject: one\n\n>From here\n>>From there\n\n"
      "From c@d Thu Jan  1 00:00:00 2026\nSubject: two\n\nlast\n");
  REQUIRE(m.size() == 2);
  CHECK(m[0] == "Subject: one\n\nFrom here\n>From there\n");
  CHECK(m[1] == "Subject: two\n\nlast\n");
  CHECK(split_mboxrd("no from line\n").empty());
}

TEST_CASE("CRLF line ends and dot-stuffing") {
  CHECK(to_crlf("a\nb\r\nc") == "a\r\nb\r\nc\r\n");
  CHECK(to_crlf("") == "");
  CHECK(dot_stuff("a\r\nb\r\n").empty());
  CHECK(dot_stuff(".a\r\nb\r\n.\r\n") == "..a\r\nb\r\n..\r\n");
}
