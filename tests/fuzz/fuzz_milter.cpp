// tests/fuzz/fuzz_milter.cpp: proto::milter::decoder under a dribbling
// milter, and the encoders round-tripped through it.
//
// Input: eight bytes of split seed, then the milter's bytes. They are fed
// whole and in pieces: the split never changes the replies or the error,
// the decoder takes no octet while a reply waits, holds at most one packet
// (max_packet), and so does linear work. Each header change decoded is
// encoded again as a header (SMFIC_HEADER) and as an SMFIR_ADDHEADER reply,
// which must decode to the same name and value.
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "fuzz_util.hpp"
#include "proto/milter_codec.hpp"

namespace {

using namespace inboxd::proto::milter;

std::string summary(const reply& r) {
  std::string s(1, static_cast<char>(r.code));
  s += std::to_string(r.version) + ' ' + std::to_string(r.actions) + ' ' + std::to_string(r.steps) +
       ' ' + std::to_string(r.index) + ' ';
  for (auto l : r.symlists) s.append(l).append(1, '\0');
  s.append(r.text).append(1, '\0').append(r.value);
  return s;
}

void round_trip(const reply& r) {
  if (r.code != reply_code::addheader && r.code != reply_code::insheader &&
      r.code != reply_code::chgheader)
    return;
  std::string out;
  encode_header(out, r.text, r.value);
  INBOXD_FUZZ_CHECK(out.size() == 4 + 1 + r.text.size() + 1 + r.value.size() + 1);
  out[4] = static_cast<char>(reply_code::addheader);
  decoder d;
  INBOXD_FUZZ_CHECK(d.feed(out) == out.size());
  INBOXD_FUZZ_CHECK(d.state() == decoder::status::ready);
  INBOXD_FUZZ_CHECK(d.get().text == r.text && d.get().value == r.value);
}

// Feeds wire in pieces chosen by rng (piece 0: whole); returns the replies
// and the error.
std::vector<std::string> run(std::string_view wire, inboxd::fuzz::rng* rng) {
  decoder d;
  std::vector<std::string> out;
  while (!wire.empty()) {
    std::size_t n = rng ? rng->piece(wire.size()) : wire.size();
    std::size_t taken = d.feed(wire.substr(0, n));
    INBOXD_FUZZ_CHECK(taken <= n);
    if (d.state() == decoder::status::need_more) INBOXD_FUZZ_CHECK(taken == n);
    wire.remove_prefix(taken);
    if (d.state() == decoder::status::error) {
      INBOXD_FUZZ_CHECK(d.feed(wire) == 0);
      out.push_back("error " + std::string(d.error()));
      break;
    }
    if (d.state() == decoder::status::ready) {
      INBOXD_FUZZ_CHECK(d.feed(wire) == 0);  // One reply at a time.
      INBOXD_FUZZ_CHECK(d.get().text.size() + d.get().value.size() <= max_packet);
      out.push_back(summary(d.get()));
      round_trip(d.get());
      d.next();
    }
  }
  return out;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  inboxd::fuzz::input_reader in(data, size);
  inboxd::fuzz::rng rng(in.u64());
  std::string_view wire = in.rest();
  auto whole = run(wire, nullptr);
  auto pieces = run(wire, &rng);
  INBOXD_FUZZ_CHECK(whole == pieces);
  return 0;
}
