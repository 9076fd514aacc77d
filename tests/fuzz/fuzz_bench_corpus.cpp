// tests/fuzz/fuzz_bench_corpus.cpp: inboxd-bench's readers of untrusted
// bytes: the mboxrd splitter of --corpus and the decoders of what workers
// send (outcome, HdrHistogram V2, base64).
//
// Input: one byte that says where the rest is cut into two messages (0: one
// message; else at rest * b / 256), then the message bytes.
//
// Round trip: the two messages, written as the server's mbox sink writes
// them (a From_ line, the text quoted by store::mboxrd_quoter, one blank
// line), must come back exactly from bench::split_mboxrd, whatever they
// hold ("From " lines, '>' runs, CR). Each message is made to end in LF
// first, as the sink's messages do. to_crlf and dot_stuff must keep their
// promises (no bare LF left; unstuffing gives the text back). And the same
// bytes fed raw to the decoders must be refused or decoded, never crash,
// never record past the histogram's buckets.
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

#include "bench/corpus.hpp"
#include "bench/hdr_log.hpp"
#include "bench/histogram.hpp"
#include "bench/outcome.hpp"
#include "fuzz_util.hpp"
#include "store/mboxrd.hpp"

namespace {

// Undoes dot_stuff on CRLF text.
std::string unstuff(std::string_view text) {
  std::string out;
  std::size_t pos = 0;
  while (pos < text.size()) {
    std::size_t lf = text.find('\n', pos);
    std::size_t end = lf == std::string_view::npos ? text.size() : lf + 1;
    std::string_view line = text.substr(pos, end - pos);
    if (line.substr(0, 2) == "..") line.remove_prefix(1);
    out.append(line);
    pos = end;
  }
  return out;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  using namespace inboxd::bench;
  inboxd::fuzz::input_reader in(data, size);
  std::uint8_t cut_byte = in.byte();
  std::string_view bytes = in.rest();
  std::size_t cut = cut_byte == 0 ? bytes.size() : bytes.size() * cut_byte / 256;
  std::string messages[2] = {std::string(bytes.substr(0, cut)), std::string(bytes.substr(cut))};

  std::string file;
  for (auto& m : messages) {
    if (m.empty() || m.back() != '\n') m += '\n';
    inboxd::store::mboxrd_quoter q;
    file += "From fuzz@example.test Thu Jan  1 00:00:00 2026\n";
    q.append(file, m);
    q.flush(file);
    file += '\n';
  }
  auto back = split_mboxrd(file);
  INBOXD_FUZZ_CHECK(back.size() == 2);
  INBOXD_FUZZ_CHECK(back[0] == messages[0]);
  INBOXD_FUZZ_CHECK(back[1] == messages[1]);

  std::string crlf = to_crlf(bytes);
  for (std::size_t i = 0; i < crlf.size(); ++i)
    if (crlf[i] == '\n') INBOXD_FUZZ_CHECK(i > 0 && crlf[i - 1] == '\r');
  INBOXD_FUZZ_CHECK(crlf.empty() || crlf.back() == '\n');
  std::string stuffed = dot_stuff(crlf);
  INBOXD_FUZZ_CHECK(stuffed.empty() || unstuff(stuffed) == crlf);
  if (!stuffed.empty()) INBOXD_FUZZ_CHECK(stuffed.find("\r\n.\r\n") == std::string::npos);

  for (bool compressed : {false, true}) {
    histogram h;
    if (hdr_decode(bytes, compressed, h)) {
      // What decoded re-encodes to the same counts.
      histogram again;
      INBOXD_FUZZ_CHECK(hdr_decode(hdr_encode(h), false, again));
      INBOXD_FUZZ_CHECK(again.count() == h.count());
    }
  }
  std::string decoded;
  if (base64_decode(bytes, decoded)) INBOXD_FUZZ_CHECK(base64_encode(decoded) == bytes);
  outcome o;
  std::string error;
  (void)deserialize(bytes, o, error);
  return 0;
}
