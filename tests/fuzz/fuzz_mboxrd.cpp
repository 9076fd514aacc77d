// tests/fuzz/fuzz_mboxrd.cpp: store::mboxrd_quoter, streamed, against a whole-buffer model.
//
// Input: eight bytes of split seed, one byte that says where the bytes are
// cut into two messages (0: one message; else at rest * b / 256), then the
// message bytes as the mbox sink receives them (already decoded: LF line
// ends). The messages go through one quoter in random pieces, with flush()
// after each, as mbox_delivery does; then through a fresh quoter one byte at
// a time.
//
// It is a differential fuzzer: the streamed output must be exactly what a
// simple quoter that sees each whole message produces (every line matching
// ^>*From  gets one more '>'), whatever the split. And the quoter must keep
// its promise of bounded memory (store/mboxrd.hpp): after each piece, what
// it wrote is a prefix of the final output, and it holds back at most the
// four octets of a partial "From " (quoting only adds octets, so the output
// can trail the input by no more).
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

#include "fuzz_util.hpp"
#include "reference_mboxrd.hpp"
#include "store/mboxrd.hpp"

namespace {

using inboxd::store::mboxrd_quoter;

// The whole-buffer model (reference_mboxrd.hpp).
std::string model(std::string_view message) {
  return inboxd::fuzz::reference_mboxrd(message);
}

// Feeds one message in pieces of the sizes next_piece gives, checking the
// bound after each, then flushes; appends the result to out.
template <class NextPiece>
void stream(mboxrd_quoter& q, std::string_view message, const std::string& want, std::string& out,
            NextPiece next_piece) {
  std::size_t start = out.size();
  std::size_t sent = 0;
  while (sent < message.size()) {
    std::size_t n = next_piece(message.size() - sent);
    q.append(out, message.substr(sent, n));
    sent += n;
    std::string_view got(out.data() + start, out.size() - start);
    INBOXD_FUZZ_CHECK(got.size() <= want.size());
    INBOXD_FUZZ_CHECK(want.compare(0, got.size(), got) == 0);
    INBOXD_FUZZ_CHECK(got.size() + 4 >= sent);
  }
  q.flush(out);
  INBOXD_FUZZ_CHECK(std::string_view(out).substr(start) == want);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  inboxd::fuzz::input_reader in(data, size);
  inboxd::fuzz::rng rng(in.u64());
  std::uint8_t cut_byte = in.byte();
  std::string_view bytes = in.rest();
  std::size_t cut = cut_byte == 0 ? bytes.size() : bytes.size() * cut_byte / 256;
  std::string_view messages[2] = {bytes.substr(0, cut), bytes.substr(cut)};
  std::string want[2] = {model(messages[0]), model(messages[1])};

  // Both messages through one quoter, as one mbox delivery after another.
  mboxrd_quoter q;
  std::string out;
  for (int m = 0; m < 2; ++m)
    stream(q, messages[m], want[m], out, [&](std::size_t left) { return rng.piece(left); });
  INBOXD_FUZZ_CHECK(out == want[0] + want[1]);

  // One byte at a time, the worst split for a held line start.
  mboxrd_quoter bytewise;
  std::string one;
  stream(bytewise, bytes, model(bytes), one, [](std::size_t) { return std::size_t{1}; });

  // Whole, in one call.
  mboxrd_quoter whole;
  std::string all;
  whole.append(all, bytes);
  whole.flush(all);
  INBOXD_FUZZ_CHECK(all == model(bytes));
  return 0;
}
