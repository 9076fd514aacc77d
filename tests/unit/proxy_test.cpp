#include <doctest/doctest.h>

#include <arpa/inet.h>

#include <cstdint>
#include <string>
#include <vector>

#include "harness.hpp"
#include "proto/command.hpp"
#include "proto/proxy_header.hpp"

using inboxd::proto::proxy_header_parser;
using inboxd::proto::proxy_info;
using inboxd::proto::proxy_v2_signature;
using inboxd::test::same_when_dribbled;
using status = proxy_header_parser::status;

namespace {

std::string endpoint(const sockaddr_storage& ss) {
  char ip[INET6_ADDRSTRLEN] = "?";
  if (ss.ss_family == AF_INET) {
    const auto& in4 = reinterpret_cast<const sockaddr_in&>(ss);
    inet_ntop(AF_INET, &in4.sin_addr, ip, sizeof ip);
    return std::string(ip) + ":" + std::to_string(ntohs(in4.sin_port));
  }
  if (ss.ss_family == AF_INET6) {
    const auto& in6 = reinterpret_cast<const sockaddr_in6&>(ss);
    inet_ntop(AF_INET6, &in6.sin6_addr, ip, sizeof ip);
    return "[" + std::string(ip) + "]:" + std::to_string(ntohs(in6.sin6_port));
  }
  return "none";
}

// Feeds the pieces as the connection does and describes the outcome: what
// the header said, and the bytes after it (the stream that follows).
std::string parse(const std::vector<std::string_view>& pieces) {
  proxy_header_parser p;
  std::string after;
  bool done = false;
  for (auto piece : pieces) {
    if (done) {
      after.append(piece);
      continue;
    }
    auto r = p.feed({piece.data(), piece.size()});
    if (r.st == status::error) return "error: " + std::string(p.error());
    if (r.st == status::done) {
      done = true;
      after.append(piece.substr(r.consumed));
    } else {
      CHECK(r.consumed == piece.size());
    }
  }
  if (!done) return "need more";
  const proxy_info& i = p.info();
  std::string out = "v" + std::to_string(i.version);
  if (i.local)
    out += " local";
  else
    out += " " + endpoint(i.source) + " -> " + endpoint(i.destination);
  if (i.ssl)
    out += " ssl=" + i.ssl_version + "/" + i.ssl_cipher + (i.ssl_verified ? " verified" : "");
  if (!i.authority.empty()) out += " sni=" + i.authority;
  return out + " | " + after;
}

std::string parse_dribbled(std::string_view bytes) {
  return same_when_dribbled(bytes, parse);
}

std::string be16(std::size_t v) {
  return {static_cast<char>(v >> 8), static_cast<char>(v & 0xff)};
}

// A v2 header: signature, version and command, family, then the block.
std::string v2(std::uint8_t ver_cmd, std::uint8_t family, const std::string& block) {
  std::string h(proxy_v2_signature);
  h += static_cast<char>(ver_cmd);
  h += static_cast<char>(family);
  h += be16(block.size());
  return h + block;
}

std::string inet4_block(const char* src, const char* dst, std::uint16_t sport,
                        std::uint16_t dport) {
  std::string b(12, '\0');
  inet_pton(AF_INET, src, b.data());
  inet_pton(AF_INET, dst, b.data() + 4);
  b[8] = static_cast<char>(sport >> 8), b[9] = static_cast<char>(sport);
  b[10] = static_cast<char>(dport >> 8), b[11] = static_cast<char>(dport);
  return b;
}

std::string tlv(std::uint8_t type, const std::string& value) {
  return static_cast<char>(type) + be16(value.size()) + value;
}

}  // namespace

TEST_CASE("PROXY v1 TCP4 gives the client, and leaves the SMTP bytes after it") {
  CHECK(parse_dribbled("PROXY TCP4 203.0.113.5 192.0.2.1 56324 25\r\nEHLO x\r\n") ==
        "v1 203.0.113.5:56324 -> 192.0.2.1:25 | EHLO x\r\n");
}

TEST_CASE("PROXY v1 TCP6") {
  CHECK(parse_dribbled("PROXY TCP6 2001:db8::5 2001:db8::1 65535 0\r\n") ==
        "v1 [2001:db8::5]:65535 -> [2001:db8::1]:0 | ");
}

TEST_CASE("PROXY v1 UNKNOWN keeps the connection's own address") {
  CHECK(parse_dribbled("PROXY UNKNOWN\r\nQUIT\r\n") == "v1 local | QUIT\r\n");
  CHECK(parse_dribbled("PROXY UNKNOWN ffff::1 ffff::2 1 2\r\n") == "v1 local | ");
}

TEST_CASE("PROXY v1 at exactly 107 octets is taken, one more is refused") {
  // "PROXY UNKNOWN " is 14 octets; 91 more and CRLF make 107.
  std::string line = "PROXY UNKNOWN " + std::string(91, 'x') + "\r\n";
  REQUIRE(line.size() == 107);
  CHECK(parse_dribbled(line + "X") == "v1 local | X");
  std::string over = "PROXY UNKNOWN " + std::string(92, 'x') + "\r\n";
  CHECK(parse_dribbled(over) == "error: PROXY v1 line longer than 107 octets");
  // No LF at all: refused once 107 octets came, not read on.
  CHECK(parse_dribbled("PROXY TCP4 " + std::string(500, '1')) ==
        "error: PROXY v1 line longer than 107 octets");
}

TEST_CASE("PROXY v1 refuses malformed lines") {
  for (std::string_view bad : {
           "PROXY TCP4 203.0.113.5 192.0.2.1 56324 25\n",      // bare LF
           "PROXY TCP4 203.0.113.5 192.0.2.1 56324\r\n",       // a port missing
           "PROXY TCP4 203.0.113.5 192.0.2.1 56324 25 1\r\n",  // one field too many
           "PROXY TCP4 203.0.113.5  192.0.2.1 56324 25\r\n",   // two spaces
           "PROXY TCP4 203.0.113.256 192.0.2.1 56324 25\r\n",  // not an address
           "PROXY TCP4 2001:db8::5 192.0.2.1 56324 25\r\n",    // the wrong family
           "PROXY TCP6 203.0.113.5 2001:db8::1 56324 25\r\n",  // the wrong family
           "PROXY TCP4 203.0.113.5 192.0.2.1 65536 25\r\n",    // port too big
           "PROXY TCP4 203.0.113.5 192.0.2.1 056324 25\r\n",   // leading zero
           "PROXY TCP4 203.0.113.5 192.0.2.1 -1 25\r\n",       // not a number
           "PROXY UDP4 203.0.113.5 192.0.2.1 1 25\r\n",        // not TCP
           "PROXY TCP4\r\n",                                   // no addresses
           "PROXY \r\n",                                       // nothing
       }) {
    INFO(inboxd::test::printable(bad));
    CHECK(parse_dribbled(bad).starts_with("error: "));
  }
}

TEST_CASE("anything but a PROXY header is refused at its first wrong octet") {
  proxy_header_parser p;
  auto r = p.feed({"EHLO x\r\n", 8});
  CHECK(r.st == status::error);
  CHECK(p.error() == "not a PROXY protocol header");
  proxy_header_parser q;
  CHECK(q.feed({"PRO", 3}).st == status::need_more);
  CHECK(q.feed({"XX", 2}).st == status::error);
  CHECK(parse_dribbled("\r\n\r\n\0\r\nQUIT!" + std::string(20, 'x')) ==
        "error: not a PROXY protocol header");
  CHECK(parse_dribbled("proxy TCP4 1.2.3.4 1.2.3.4 1 2\r\n") ==
        "error: not a PROXY protocol header");
}

TEST_CASE("PROXY v2 over IPv4, with the SMTP bytes after it") {
  std::string h = v2(0x21, 0x11, inet4_block("203.0.113.5", "192.0.2.1", 56324, 25));
  CHECK(parse_dribbled(h + "EHLO x\r\n") == "v2 203.0.113.5:56324 -> 192.0.2.1:25 | EHLO x\r\n");
}

TEST_CASE("PROXY v2 over IPv6") {
  std::string b(36, '\0');
  inet_pton(AF_INET6, "2001:db8::5", b.data());
  inet_pton(AF_INET6, "2001:db8::1", b.data() + 16);
  b[32] = 1, b[33] = 2, b[34] = 0, b[35] = 25;
  CHECK(parse_dribbled(v2(0x21, 0x21, b)) == "v2 [2001:db8::5]:258 -> [2001:db8::1]:25 | ");
}

TEST_CASE("PROXY v2 LOCAL (a health check) keeps the connection's own address") {
  CHECK(parse_dribbled(v2(0x20, 0x00, "") + "QUIT\r\n") == "v2 local | QUIT\r\n");
  // Whatever block a LOCAL header has is ignored.
  CHECK(parse_dribbled(v2(0x20, 0x11, inet4_block("1.2.3.4", "5.6.7.8", 1, 2))) == "v2 local | ");
  // AF_UNSPEC and AF_UNIX carry no IP address either.
  CHECK(parse_dribbled(v2(0x21, 0x00, "")) == "v2 local | ");
  CHECK(parse_dribbled(v2(0x21, 0x31, std::string(216, '\0'))) == "v2 local | ");
}

TEST_CASE("PROXY v2 TLVs: TLS as the proxy saw it, and the SNI name") {
  std::string ssl = std::string{0x05, 0, 0, 0, 0} + tlv(0x21, "TLSv1.3") +
                    tlv(0x23, "TLS_AES_256_GCM_SHA384") + tlv(0x22, "client.example");
  std::string block = inet4_block("203.0.113.5", "192.0.2.1", 1000, 465) + tlv(0x04, "noop") +
                      tlv(0x20, ssl) + tlv(0x02, "mx.example");
  CHECK(parse_dribbled(v2(0x21, 0x11, block)) ==
        "v2 203.0.113.5:1000 -> 192.0.2.1:465 ssl=TLSv1.3/TLS_AES_256_GCM_SHA384 verified "
        "sni=mx.example | ");
  // PP2_CLIENT_SSL without a certificate: TLS, not verified.
  std::string plain_tls = std::string{0x01, 0, 0, 0, 0} + tlv(0x21, "TLSv1.2");
  CHECK(parse_dribbled(
            v2(0x21, 0x11, inet4_block("1.2.3.4", "5.6.7.8", 1, 2) + tlv(0x20, plain_tls))) ==
        "v2 1.2.3.4:1 -> 5.6.7.8:2 ssl=TLSv1.2/ | ");
}

TEST_CASE("PROXY v2 with a CRC32C checks it") {
  std::string block =
      inet4_block("203.0.113.5", "192.0.2.1", 1, 25) + tlv(0x03, std::string(4, '\0'));
  std::string h = v2(0x21, 0x11, block);
  // CRC-32C over the header with the field zeroed, computed here the long way.
  std::uint32_t crc = 0xffffffff;
  for (unsigned char c : h) {
    crc ^= c;
    for (int k = 0; k < 8; ++k) crc = (crc >> 1) ^ (0x82f63b78u & (0u - (crc & 1u)));
  }
  crc = ~crc;
  std::string good = h;
  for (int i = 0; i < 4; ++i) good[h.size() - 4 + i] = static_cast<char>(crc >> (24 - 8 * i));
  CHECK(parse_dribbled(good) == "v2 203.0.113.5:1 -> 192.0.2.1:25 | ");
  good[h.size() - 1] ^= 1;
  CHECK(parse_dribbled(good) == "error: PROXY v2 header fails its CRC32C");
}

TEST_CASE("PROXY v2 refuses what it cannot use") {
  std::string addr = inet4_block("1.2.3.4", "5.6.7.8", 1, 2);
  CHECK(parse_dribbled(v2(0x11, 0x11, addr)) == "error: PROXY v2 header of an unknown version");
  CHECK(parse_dribbled(v2(0x22, 0x11, addr)) == "error: PROXY v2 header with an unknown command");
  CHECK(parse_dribbled(v2(0x21, 0x12, addr)) ==
        "error: PROXY v2 header for a transport other than a stream");
  CHECK(parse_dribbled(v2(0x21, 0x41, addr)) ==
        "error: PROXY v2 header with an unknown address family");
  CHECK(parse_dribbled(v2(0x21, 0x11, addr.substr(0, 11))) ==
        "error: PROXY v2 header too short for its addresses");
  CHECK(parse_dribbled(v2(0x21, 0x11, addr + std::string{0x20, 0})) ==
        "error: PROXY v2 header with a truncated TLV");
  CHECK(parse_dribbled(v2(0x21, 0x11, addr + tlv(0x02, "abc").substr(0, 5))) ==
        "error: PROXY v2 TLV longer than the header");
  CHECK(parse_dribbled(v2(0x21, 0x11, addr + tlv(0x20, "abc"))) ==
        "error: PROXY v2 SSL TLV too short");
  // A sub-TLV that runs past its SSL TLV, though within the header.
  std::string ssl = std::string{0x01, 0, 0, 0, 0} + std::string{0x21, 0, 9} + "TLS";
  CHECK(parse_dribbled(v2(0x21, 0x11, addr + tlv(0x20, ssl) + std::string(6, '\x04'))) ==
        "error: PROXY v2 TLV longer than the header");
}

TEST_CASE("PROXY v2 length is capped, and refused before its body is read") {
  std::string h(proxy_v2_signature);
  h += "\x21\x11";
  h += be16(proxy_header_parser::v2_max_length + 1);
  proxy_header_parser p;
  auto r = p.feed({h.data(), h.size()});
  CHECK(r.st == status::error);
  CHECK(p.error() == "PROXY v2 header too long");
  // At the cap itself: taken.
  std::string at = v2(0x21, 0x11,
                      inet4_block("1.2.3.4", "5.6.7.8", 1, 2) +
                          tlv(0x04, std::string(proxy_header_parser::v2_max_length - 15, 'n')));
  CHECK(parse_dribbled(at + "Z") == "v2 1.2.3.4:1 -> 5.6.7.8:2 | Z");
}

TEST_CASE("a parser that is done or failed takes nothing more") {
  proxy_header_parser p;
  std::string h = "PROXY UNKNOWN\r\n";
  CHECK(p.feed({h.data(), h.size()}).st == status::done);
  auto r = p.feed({"EHLO", 4});
  CHECK(r.st == status::done);
  CHECK(r.consumed == 0);
}

// XCLIENT's argument (Postfix's XCLIENT_README), parsed in proto/command.cpp.
TEST_CASE("parse_xclient decodes, checks and normalises every attribute") {
  using namespace inboxd::proto;
  xclient_attrs a;
  auto p = parse_xclient(
      "ADDR=IPv6:2001:DB8::5 port=4711 NAME=mail.example HELO=[UNAVAILABLE] PROTO=esmtp "
      "LOGIN=a+40b DESTADDR=192.0.2.1 DESTPORT=25",
      a);
  REQUIRE(p.error == xclient_error::none);
  CHECK(*a.addr == "2001:db8::5");
  CHECK(*a.port == "4711");
  CHECK(*a.name == "mail.example");
  CHECK(a.helo->empty());  // unavailable
  CHECK(*a.proto == "ESMTP");
  CHECK(*a.login == "a@b");
  CHECK(*a.destaddr == "192.0.2.1");
  CHECK(*a.destport == "25");
  CHECK(parse_xclient("NAME=[TEMPUNAVAIL]", a).error == xclient_error::none);
  CHECK(a.name->empty());
  CHECK(!a.addr);  // not given: left alone by the session
}

TEST_CASE("parse_xclient refuses what does not parse, naming the attribute") {
  using namespace inboxd::proto;
  xclient_attrs a;
  CHECK(parse_xclient("", a).error == xclient_error::syntax);
  CHECK(parse_xclient("ADDR", a).error == xclient_error::syntax);
  CHECK(parse_xclient("=1.2.3.4", a).error == xclient_error::syntax);
  auto p = parse_xclient("ADDR=1.2.3.4 COLOR=red", a);
  CHECK(p.error == xclient_error::bad_name);
  CHECK(p.what == "COLOR");
  for (std::string_view bad :
       {"ADDR=1.2.3", "ADDR=2001:db8::1", "ADDR=IPV6:1.2.3.4", "PORT=65536", "PORT=-1",
        "DESTPORT=", "PROTO=LMTP", "NAME=a+20b", "HELO=+4", "LOGIN=", "HELO=" /* empty */}) {
    INFO(bad);
    CHECK(parse_xclient(bad, a).error == xclient_error::bad_value);
  }
  CHECK(parse_xclient("NAME=" + std::string(256, 'a'), a).error == xclient_error::bad_value);
  CHECK(parse_xclient("NAME=" + std::string(255, 'a'), a).error == xclient_error::none);
}
