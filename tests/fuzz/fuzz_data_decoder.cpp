// tests/fuzz/fuzz_data_decoder.cpp: proto::data_decoder, in place, under splits.
//
// Input: one flags byte (bit 0: the DATA line ended in CRLF), eight bytes of
// split seed, then the body bytes as the client sends them. After an end of
// data the decoder is reset and decoding goes on, as after a second DATA.
//
// The stream is decoded in one call, in random pieces, in other random pieces
// and one byte at a time; bytes left unconsumed are passed again with the
// next piece after them, as the session does. Every call is checked against
// the contract (output at the front of the input, never longer than what was
// consumed, at most a CR or a "." or "." CR held back and left intact), and
// every run against a model that reads the whole stream as lines: the end of
// data is the first <CRLF>.<CRLF> (RFC 5321 4.1.1.4) and nothing else, one
// leading dot is dropped from each line (4.5.2), CRLF and bare LF become LF,
// other CRs stay. All runs must agree with the model and with each other.
//
// It is also a differential fuzzer: every call of the fast line-at-a-time
// decoder is repeated, on a copy of the same input, with the byte-at-a-time
// reference decoder (reference_decoder.hpp), and the two must give the same
// output, the same consumed count, the same end and the same bare LF/CR flags.
#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "fuzz_util.hpp"
#include "proto/data_decoder.hpp"
#include "reference_decoder.hpp"

namespace {

using inboxd::fuzz::rng;
using inboxd::proto::data_decoder;

struct message {
  std::string out;
  bool done = false;
  std::size_t end = 0;  // stream offset just after <CRLF>.<CRLF>, when done
  bool bare_lf = false;
  bool bare_cr = false;
  bool operator==(const message&) const = default;
};

struct outcome {
  std::vector<message> messages;  // the last one is unfinished unless done
  std::string leftover;           // held back at the end of the stream
  bool operator==(const outcome&) const = default;
};

// Appends the stored form of one line (without its LF) that was read at the
// start of a line: one leading dot dropped, a CR before the LF dropped.
void model_line(std::string_view line, bool ends_with_lf, message& m, std::string& held) {
  if (!line.empty() && line.front() == '.') line.remove_prefix(1);
  if (ends_with_lf) {
    if (!line.empty() && line.back() == '\r')
      line.remove_suffix(1);
    else
      m.bare_lf = true;
  } else if (!line.empty() && line.back() == '\r') {
    // A CR at the very end cannot be told from a CRLF yet.
    line.remove_suffix(1);
    held = "\r";
  }
  if (line.find('\r') != std::string_view::npos) m.bare_cr = true;
  m.out.append(line);
  if (ends_with_lf) m.out.push_back('\n');
}

outcome model(std::string_view wire, bool after_crlf) {
  outcome o;
  std::size_t pos = 0;
  std::string prefix = after_crlf ? "\r\n" : "\n";
  while (true) {
    std::string s = prefix + std::string(wire.substr(pos));
    std::size_t p = prefix.size();
    std::size_t k = s.find("\r\n.\r\n");
    message m;
    std::size_t body_end = k == std::string::npos ? s.size() : k + 2;
    // Whole lines first.
    std::size_t bol = p;
    for (std::size_t lf = s.find('\n', bol); lf != std::string::npos && lf < body_end;
         lf = s.find('\n', bol)) {
      model_line(std::string_view(s).substr(bol, lf - bol), true, m, o.leftover);
      bol = lf + 1;
    }
    if (k != std::string::npos) {
      m.done = true;
      m.end = pos + (k + 5 - p);
      o.messages.push_back(std::move(m));
      pos += k + 5 - p;
      prefix = "\r\n";
      continue;
    }
    // The unfinished line: a "." or "." CR right after a CRLF is held whole.
    std::string_view part = std::string_view(s).substr(bol);
    bool after_crlf_here = bol >= 2 && s[bol - 2] == '\r' && s[bol - 1] == '\n';
    if (after_crlf_here && (part == "." || part == ".\r"))
      o.leftover = part;
    else
      model_line(part, false, m, o.leftover);
    o.messages.push_back(std::move(m));
    return o;
  }
}

// Decodes wire in pieces whose lengths next_piece() gives.
template <class Pieces>
outcome run(std::string_view wire, bool after_crlf, Pieces next_piece) {
  outcome o;
  data_decoder dec;
  dec.reset(after_crlf);
  inboxd::fuzz::reference_decoder ref;
  ref.reset(after_crlf);
  message m;
  std::string pending;         // unconsumed bytes, then the next piece
  std::size_t pending_at = 0;  // the stream offset of pending[0]
  std::size_t sent = 0;
  while (sent < wire.size()) {
    std::size_t n = next_piece(wire.size() - sent);
    INBOXD_FUZZ_CHECK(n > 0);
    pending.append(wire.substr(sent, n));
    sent += n;
    while (!pending.empty()) {
      std::string copy_for_ref = pending;
      auto want = ref.decode({copy_for_ref.data(), copy_for_ref.size()});
      std::span<char> in(pending.data(), pending.size());
      auto r = dec.decode(in);
      INBOXD_FUZZ_CHECK(r.out == want.out);
      INBOXD_FUZZ_CHECK(r.consumed == want.consumed);
      INBOXD_FUZZ_CHECK(r.done == want.done);
      INBOXD_FUZZ_CHECK(dec.saw_bare_lf() == ref.saw_bare_lf());
      INBOXD_FUZZ_CHECK(dec.saw_bare_cr() == ref.saw_bare_cr());
      std::size_t lfs = 0;
      for (char c : r.out) lfs += c == '\n';
      INBOXD_FUZZ_CHECK(r.line_ends == lfs);
      INBOXD_FUZZ_CHECK(r.consumed <= pending.size());
      INBOXD_FUZZ_CHECK(r.out.size() <= r.consumed);
      INBOXD_FUZZ_CHECK(r.out.empty() || r.out.data() == pending.data());
      m.out.append(r.out);
      pending.erase(0, r.consumed);
      pending_at += r.consumed;
      // What is left is the input as it was: decode() wrote only over what it consumed.
      INBOXD_FUZZ_CHECK(std::string_view(pending) == wire.substr(pending_at, pending.size()));
      if (r.done) {
        std::string_view used = wire.substr(0, pending_at);
        INBOXD_FUZZ_CHECK(used.size() >= 3 && used.substr(used.size() - 3) == ".\r\n");
        m.done = true;
        m.end = pending_at;
        m.bare_lf = dec.saw_bare_lf();
        m.bare_cr = dec.saw_bare_cr();
        o.messages.push_back(std::move(m));
        m = message{};
        dec.reset(true);
        ref.reset(true);
        continue;
      }
      // Not done: all was read but a CR, or a "." or "." CR, held at the end.
      INBOXD_FUZZ_CHECK(pending.size() <= 2);
      INBOXD_FUZZ_CHECK(pending.empty() || pending == "\r" || pending == "." || pending == ".\r");
      if (!pending.empty()) {
        // Passing the held bytes alone again changes nothing.
        std::string copy = pending;
        auto again = dec.decode({pending.data(), pending.size()});
        INBOXD_FUZZ_CHECK(again.consumed == 0 && again.out.empty() && !again.done);
        INBOXD_FUZZ_CHECK(pending == copy);
      }
      break;
    }
  }
  m.bare_lf = dec.saw_bare_lf();
  m.bare_cr = dec.saw_bare_cr();
  o.messages.push_back(std::move(m));
  o.leftover = pending;
  return o;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  inboxd::fuzz::input_reader in(data, size);
  bool after_crlf = (in.byte() & 1) == 0;
  std::uint64_t seed = in.u64();
  std::string_view wire = in.rest();

  outcome want = model(wire, after_crlf);
  outcome whole = run(wire, after_crlf, [](std::size_t left) { return left; });
  INBOXD_FUZZ_CHECK(whole == want);
  for (std::uint64_t i = 0; i < 2; ++i) {
    rng r(seed + i);
    outcome split = run(wire, after_crlf, [&](std::size_t left) { return r.piece(left); });
    INBOXD_FUZZ_CHECK(split == whole);
  }
  if (wire.size() <= 4096) {
    outcome dribbled = run(wire, after_crlf, [](std::size_t) { return std::size_t{1}; });
    INBOXD_FUZZ_CHECK(dribbled == whole);
  }
  return 0;
}
