// tests/fuzz/fuzz_proxy_header.cpp: proto::proxy_header_parser under a
// dribbling client.
//
// Input: eight bytes of split seed, then the wire bytes. The bytes are fed
// in pieces, as net/connection reads them, and the outcome is checked
// against the same bytes fed whole: the split never changes what the parser
// says, it never takes an octet past the header (what follows is the SMTP
// stream), it takes every octet of a piece while it needs more, and it never
// holds more than the largest header it accepts.
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string>
#include <string_view>

#include "fuzz_util.hpp"
#include "proto/proxy_header.hpp"

namespace {

using inboxd::proto::proxy_header_parser;
using status = proxy_header_parser::status;

struct outcome {
  status st = status::need_more;
  std::size_t header = 0;  // octets of the header, when done or failed
  std::string what;        // the error, or a summary of the header
};

std::string summary(const inboxd::proto::proxy_info& i) {
  std::string s = std::to_string(i.version) + (i.local ? " local " : " remote ");
  auto bytes = [&](const sockaddr_storage& ss) {
    s.append(reinterpret_cast<const char*>(&ss), sizeof ss);
  };
  bytes(i.source);
  bytes(i.destination);
  s += i.ssl ? 'S' : '-';
  s += i.ssl_verified ? 'V' : '-';
  s += i.ssl_version + '\0' + i.ssl_cipher + '\0' + i.authority;
  return s;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  inboxd::fuzz::input_reader in(data, size);
  inboxd::fuzz::rng rng(in.u64());
  std::string_view wire = in.rest();
  constexpr std::size_t max_header =
      proxy_header_parser::v2_fixed + proxy_header_parser::v2_max_length;

  // Whole.
  outcome whole;
  {
    proxy_header_parser p;
    auto r = p.feed({wire.data(), wire.size()});
    INBOXD_FUZZ_CHECK(r.consumed <= wire.size());
    INBOXD_FUZZ_CHECK(p.size() <= max_header);
    whole.st = r.st;
    whole.header = r.consumed;
    if (r.st == status::need_more) INBOXD_FUZZ_CHECK(r.consumed == wire.size());
    if (r.st == status::error) whole.what = std::string(p.error());
    if (r.st == status::done) {
      whole.what = summary(p.info());
      INBOXD_FUZZ_CHECK(p.size() == r.consumed);
      INBOXD_FUZZ_CHECK(p.info().version == 1 || p.info().version == 2);
      if (p.info().version == 1) INBOXD_FUZZ_CHECK(r.consumed <= proxy_header_parser::v1_max);
      // A v1 header ends at its first LF; a v2 one at 16 + its length.
      if (p.info().version == 1) {
        INBOXD_FUZZ_CHECK(wire[r.consumed - 1] == '\n');
        INBOXD_FUZZ_CHECK(std::memchr(wire.data(), '\n', r.consumed - 1) == nullptr);
      } else {
        std::size_t length =
            static_cast<std::uint8_t>(wire[14]) << 8 | static_cast<std::uint8_t>(wire[15]);
        INBOXD_FUZZ_CHECK(r.consumed == 16 + length);
      }
    }
  }

  // In pieces.
  proxy_header_parser p;
  std::size_t sent = 0, taken = 0;
  status st = status::need_more;
  while (sent < wire.size() && st == status::need_more) {
    std::size_t n = rng.piece(wire.size() - sent);
    auto r = p.feed({wire.data() + sent, n});
    INBOXD_FUZZ_CHECK(r.consumed <= n);
    INBOXD_FUZZ_CHECK(p.size() <= max_header);
    if (r.st == status::need_more) INBOXD_FUZZ_CHECK(r.consumed == n);
    taken += r.consumed;
    sent += n;
    st = r.st;
  }
  INBOXD_FUZZ_CHECK(st == whole.st);
  if (st == status::done) {
    INBOXD_FUZZ_CHECK(taken == whole.header);
    INBOXD_FUZZ_CHECK(summary(p.info()) == whole.what);
  }
  if (st == status::error) INBOXD_FUZZ_CHECK(std::string(p.error()) == whole.what);
  // Once done or failed, nothing more is taken.
  if (st != status::need_more) {
    auto r = p.feed({wire.data(), wire.size()});
    INBOXD_FUZZ_CHECK(r.consumed == 0 && r.st == st);
  }
  return 0;
}
