#include <doctest/doctest.h>

#include <string>

#include "harness.hpp"
#include "proto/data_decoder.hpp"

using inboxd::proto::data_decoder;
using inboxd::test::printable;
using inboxd::test::same_when_dribbled;

namespace {

// Decodes the pieces in order, as the session does: bytes left unconsumed
// are passed again in front of the next piece. Describes the result: the
// output, the input consumed in all, whether the end was seen, and the bare
// LF / bare CR flags.
std::string decode(const std::vector<std::string_view>& pieces, bool after_crlf = true) {
  data_decoder d;
  d.reset(after_crlf);
  std::string out, broken, left;
  std::size_t consumed = 0;
  bool done = false;
  for (auto piece : pieces) {
    if (done) break;
    std::string wire = left + std::string(piece);
    std::string buf = wire;  // Decoded in place, so a copy of its own.
    auto r = d.decode(buf);
    if (r.out.data() != buf.data() || r.out.size() > r.consumed) broken += " (out not in place)";
    if (buf.substr(r.consumed) != wire.substr(r.consumed)) broken += " (wrote past consumed)";
    left = wire.substr(r.consumed);
    if (!r.done && left != "" && left != "\r" && left != "." && left != ".\r")
      broken += " (short consume)";
    out += r.out;
    consumed += r.consumed;
    done = r.done;
  }
  return printable(out) + " | consumed " + std::to_string(consumed) + (done ? " | done" : "") +
         (d.saw_bare_lf() ? " | bare LF" : "") + (d.saw_bare_cr() ? " | bare CR" : "") + broken;
}

// decode() of the whole, checked against every way of splitting it.
std::string decoded(std::string_view wire, bool after_crlf = true) {
  return same_when_dribbled(wire, [&](const auto& pieces) { return decode(pieces, after_crlf); });
}

}  // namespace

TEST_CASE("data_decoder unstuffs and ends at CRLF.CRLF") {
  std::string in = "a\r\n..b\r\n.\r\nMAIL";
  data_decoder d;
  d.reset();
  auto r = d.decode(in);
  CHECK(r.done);
  CHECK(r.out == "a\n.b\n");
  CHECK(r.consumed == in.size() - 4);
  CHECK(decoded("a\r\n..b\r\n.\r\nMAIL") == "a\\n.b\\n | consumed 11 | done");
}

TEST_CASE("data_decoder writes every CRLF as LF") {
  CHECK(decoded("Subject: x\r\n\r\nline 1\r\nline 2\r\n.\r\n") ==
        "Subject: x\\n\\nline 1\\nline 2\\n | consumed 33 | done");
}

TEST_CASE("data_decoder removes one leading dot from each line, and only that") {
  CHECK(decoded("..\r\n...x\r\n.x\r\na.b.\r\n.\r\n") ==
        ".\\n..x\\nx\\na.b.\\n | consumed 23 | done");
}

TEST_CASE("data_decoder ends an empty message at a dot line right after DATA") {
  CHECK(decoded(".\r\n") == " | consumed 3 | done");
}

TEST_CASE("data_decoder does not end at a dot line after a bare-LF DATA line") {
  CHECK(decoded(".\r\n.\r\n", false) == "\\n | consumed 6 | done");
}

TEST_CASE("data_decoder stops at the first end of data and leaves what follows") {
  CHECK(decoded("a\r\n.\r\nb\r\n.\r\n") == "a\\n | consumed 6 | done");
}

TEST_CASE("data_decoder without CRLF.CRLF does not end, and keeps an undecided end") {
  CHECK(decoded("a\r\n.\r") == "a\\n | consumed 3");
  CHECK(decoded("a\r\n.") == "a\\n | consumed 3");
  CHECK(decoded("a\r\n..\r\n") == "a\\n.\\n | consumed 7");
}

TEST_CASE("data_decoder: <LF>.<LF> does not end data") {
  CHECK(decoded("a\n.\nMAIL FROM:<x@y>\r\n.\r\n") ==
        "a\\n\\nMAIL FROM:<x@y>\\n | consumed 24 | done | bare LF");
}

TEST_CASE("data_decoder: <CR>.<CR> does not end data") {
  CHECK(decoded("a\r.\rMAIL FROM:<x@y>\r\n.\r\n") ==
        "a\\r.\\rMAIL FROM:<x@y>\\n | consumed 24 | done | bare CR");
}

TEST_CASE("data_decoder: <LF>.<CRLF> does not end data") {
  CHECK(decoded("a\n.\r\nMAIL FROM:<x@y>\r\n.\r\n") ==
        "a\\n\\nMAIL FROM:<x@y>\\n | consumed 25 | done | bare LF");
}

TEST_CASE("data_decoder: <CRLF>.<LF> does not end data") {
  CHECK(decoded("a\r\n.\nMAIL FROM:<x@y>\r\n.\r\n") ==
        "a\\n\\nMAIL FROM:<x@y>\\n | consumed 25 | done | bare LF");
}

TEST_CASE("data_decoder: a dot line ending in CR CR LF does not end data") {
  CHECK(decoded("a\r\n.\r\r\n.\r\n") == "a\\n\\r\\n | consumed 10 | done | bare CR");
}

TEST_CASE("data_decoder flags a bare LF and ends the line with it") {
  CHECK(decoded("a\nb\r\n.\r\n") == "a\\nb\\n | consumed 8 | done | bare LF");
}

TEST_CASE("data_decoder flags a bare CR and keeps it as text") {
  CHECK(decoded("a\rb\r\n.\r\n") == "a\\rb\\n | consumed 8 | done | bare CR");
  CHECK(decoded("a\r\r\n.\r\n") == "a\\r\\n | consumed 7 | done | bare CR");
  CHECK(decoded("\r\r\r\n.\r\n") == "\\r\\r\\n | consumed 7 | done | bare CR");
}

TEST_CASE("data_decoder leaves a CR at the end unconsumed") {
  data_decoder d;
  d.reset();
  std::string a = "a\r";
  auto r1 = d.decode(a);
  CHECK(r1.out == "a");
  CHECK(r1.consumed == 1);
  CHECK_FALSE(r1.done);
  std::string b = "\rb\r\n.\r\n";  // The CR again, then what followed it.
  auto r2 = d.decode(b);
  CHECK(r2.out == "\rb\n");
  CHECK(r2.consumed == b.size());
  CHECK(r2.done);
  CHECK(d.saw_bare_cr());
}

TEST_CASE("data_decoder leaves a dot line's CR at the end unconsumed") {
  data_decoder d;
  d.reset();
  std::string a = "a\r\n.\r";
  auto r1 = d.decode(a);
  CHECK(r1.out == "a\n");
  CHECK(r1.consumed == 3);
  std::string b = ".\rx\r\n.\r\n";
  auto r2 = d.decode(b);
  CHECK(r2.out == "\rx\n");
  CHECK(r2.done);
}

TEST_CASE("data_decoder makes one LF of a CR LF split across calls") {
  data_decoder d;
  d.reset();
  std::string a = "a\r";
  CHECK(d.decode(a).out == "a");
  std::string b = "\r\n.\r\n";
  auto r2 = d.decode(b);
  CHECK(r2.out == "\n");
  CHECK(r2.done);
  CHECK_FALSE(d.saw_bare_cr());
}

TEST_CASE("data_decoder reset clears the flags") {
  data_decoder d;
  d.reset();
  std::string in = "a\n\r\n.\r\n";
  CHECK(d.decode(in).done);
  CHECK(d.saw_bare_lf());
  d.reset();
  CHECK_FALSE(d.saw_bare_lf());
  CHECK_FALSE(d.saw_bare_cr());
}

TEST_CASE("data_decoder handles a mixed body the same however it arrives") {
  CHECK(decoded("..a\r\r\n.\n\r.\r\n\n..\r\n.\r\r\r\nz\r\n.\r\nQUIT\r\n") ==
        ".a\\r\\n\\n\\r.\\n\\n.\\n\\r\\r\\nz\\n | consumed 28 | done | bare LF | bare CR");
}

TEST_CASE("data_decoder counts the line ends it writes, for RFC 1870's SIZE") {
  data_decoder d;
  d.reset();
  std::string in = "a\r\nb\nc\r\rd\r\n..e\r\n.\r\n";
  auto r = d.decode(in);
  CHECK(r.done);
  CHECK(r.out == "a\nb\nc\r\rd\n.e\n");
  CHECK(r.line_ends == 4);
}

TEST_CASE("data_decoder keeps long runs of CR and long lines, in one pass") {
  data_decoder d;
  d.reset();
  std::string crs(100'000, '\r');
  std::string in = "x" + crs + "\n" + std::string(200'000, 'y') + "\r\n.\r\n";
  auto r = d.decode(in);
  CHECK(r.done);
  CHECK(r.out == "x" + std::string(99'999, '\r') + "\n" + std::string(200'000, 'y') + "\n");
  CHECK(d.saw_bare_cr());
  CHECK_FALSE(d.saw_bare_lf());
}
