// tests/fuzz/fuzz_http_head.cpp: net::find_head_end and parse_http_head, the
// request heads the metrics listener reads from anyone who connects.
//
// Input: eight bytes of split seed, then the bytes a client sends. They
// arrive in pieces, as reads do; the end of the head is searched for after
// each piece from where the last search stopped, as metrics_http does, and
// must be where one search over the whole input finds it. The head is then
// parsed: its views must lie inside it, and a complete head parses to ok or
// bad, never incomplete.
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

#include "fuzz_util.hpp"
#include "net/http_head.hpp"

using inboxd::net::find_head_end;
using inboxd::net::http_head;
using inboxd::net::parse_http_head;

namespace {

bool inside(std::string_view part, std::string_view whole) {
  return part.empty() ||
         (part.data() >= whole.data() && part.data() + part.size() <= whole.data() + whole.size());
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  inboxd::fuzz::input_reader in(data, size);
  std::uint64_t seed = in.u64();
  std::string_view wire = in.rest();
  std::size_t whole = find_head_end(wire, 0);
  // Pieces of 1 to 16 bytes, their sizes from the seed.
  std::size_t got = std::string_view::npos, have = 0, scanned = 0;
  while (have < wire.size() && got == std::string_view::npos) {
    std::size_t piece = 1 + (seed & 15);
    seed = seed * 6364136223846793005ULL + 1442695040888963407ULL;
    have = std::min(wire.size(), have + piece);
    got = find_head_end(wire.substr(0, have), scanned);
    scanned = have;
  }
  INBOXD_FUZZ_CHECK(got == whole);
  http_head h = parse_http_head(wire);
  if (whole == std::string_view::npos) {
    INBOXD_FUZZ_CHECK(h.st == http_head::status::incomplete);
    return 0;
  }
  INBOXD_FUZZ_CHECK(h.st != http_head::status::incomplete);
  if (h.st == http_head::status::ok) {
    std::string_view head = wire.substr(0, whole);
    INBOXD_FUZZ_CHECK(h.length == whole);
    INBOXD_FUZZ_CHECK(inside(h.method, head) && inside(h.target, head));
    INBOXD_FUZZ_CHECK(!h.method.empty() && !h.target.empty());
  }
  return 0;
}
