// tests/fuzz/fuzz_line_reader.cpp: proto::line_reader under a dribbling client.
//
// Input: one byte that picks the line limit, eight bytes of split seed, then
// the wire bytes. The bytes are delivered in pieces; what next() leaves
// unconsumed is passed again with the next piece after it, as
// net/connection does. Every result is checked against its contract, and the
// sequence of lines and too-long reports against a model that reads the
// whole stream at once: the split must never change what the reader sees.
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string>
#include <string_view>
#include <vector>

#include "fuzz_util.hpp"
#include "proto/line_reader.hpp"

namespace {

using inboxd::proto::line_reader;

struct event {
  bool too_long;
  std::string line;
  bool bare_lf;
  bool operator==(const event&) const = default;
};

// What the reader must report for the whole stream: each LF-terminated line,
// or one too-long report for it; a trailing part without LF is reported only
// once it is already over the limit.
std::vector<event> model(std::string_view s, std::size_t max_line, std::string& leftover) {
  std::vector<event> ev;
  while (true) {
    std::size_t lf = s.find('\n');
    if (lf == s.npos) break;
    bool bare_lf = lf == 0 || s[lf - 1] != '\r';
    std::size_t len = bare_lf ? lf : lf - 1;
    if (len + 2 > max_line)
      ev.push_back({true, {}, false});
    else
      ev.push_back({false, std::string(s.substr(0, len)), bare_lf});
    s.remove_prefix(lf + 1);
  }
  leftover.clear();
  if (s.size() > max_line)
    ev.push_back({true, {}, false});
  else
    leftover.assign(s);
  return ev;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  inboxd::fuzz::input_reader in(data, size);
  std::uint8_t limit = in.byte();
  std::size_t max_line = limit == 0 ? 512 : limit < 128 ? limit : 512 + (limit - 128) * 4;
  inboxd::fuzz::rng rng(in.u64());
  std::string_view wire = in.rest();

  line_reader reader(max_line);
  std::vector<event> got;
  std::string pending;  // read, not yet consumed: the connection's buffer
  bool skipping = false;
  std::size_t sent = 0;
  while (sent < wire.size()) {
    std::size_t n = rng.piece(wire.size() - sent);
    pending.append(wire.substr(sent, n));
    sent += n;
    // Like session::feed: call next() until it needs more bytes.
    while (!pending.empty()) {
      auto r = reader.next(pending);
      INBOXD_FUZZ_CHECK(r.consumed <= pending.size());
      std::string_view used(pending.data(), r.consumed);
      bool progress = r.consumed > 0;
      switch (r.st) {
        case line_reader::status::line: {
          INBOXD_FUZZ_CHECK(!skipping);
          INBOXD_FUZZ_CHECK(r.line.data() == pending.data());
          INBOXD_FUZZ_CHECK(r.line.find('\n') == std::string_view::npos);
          INBOXD_FUZZ_CHECK(r.line.size() + 2 <= max_line);
          INBOXD_FUZZ_CHECK(!used.empty() && used.back() == '\n');
          INBOXD_FUZZ_CHECK(r.consumed == r.line.size() + (r.bare_lf ? 1 : 2));
          INBOXD_FUZZ_CHECK(r.bare_lf || used[r.consumed - 2] == '\r');
          // With a bare LF, the line keeps any CR of its own: it was not a CRLF.
          INBOXD_FUZZ_CHECK(!r.bare_lf || r.line.empty() || r.line.back() != '\r');
          got.push_back({false, std::string(r.line), r.bare_lf});
          break;
        }
        case line_reader::status::too_long:
          INBOXD_FUZZ_CHECK(!skipping);
          INBOXD_FUZZ_CHECK(progress);
          // Either the whole line up to its LF, or everything so far (over the limit).
          if (used.find('\n') == std::string_view::npos) {
            INBOXD_FUZZ_CHECK(r.consumed == pending.size() && r.consumed > max_line);
            skipping = true;
          } else {
            INBOXD_FUZZ_CHECK(used.find('\n') == r.consumed - 1);
          }
          got.push_back({true, {}, false});
          break;
        case line_reader::status::need_more:
          if (skipping) {
            // Dropping the rest of an over-long line, up to and with its LF.
            INBOXD_FUZZ_CHECK(progress);
            std::size_t lf = used.find('\n');
            if (lf == std::string_view::npos) {
              INBOXD_FUZZ_CHECK(r.consumed == pending.size());
            } else {
              INBOXD_FUZZ_CHECK(lf == r.consumed - 1);
              skipping = false;
            }
          } else {
            // A partial line within the limit: nothing is consumed.
            INBOXD_FUZZ_CHECK(!progress);
            INBOXD_FUZZ_CHECK(pending.find('\n') == std::string::npos);
            INBOXD_FUZZ_CHECK(pending.size() <= max_line);
          }
          break;
      }
      pending.erase(0, r.consumed);
      if (!progress) break;
    }
  }

  std::string leftover;
  std::vector<event> want = model(wire, max_line, leftover);
  INBOXD_FUZZ_CHECK(got == want);
  INBOXD_FUZZ_CHECK(pending == leftover);
  return 0;
}
