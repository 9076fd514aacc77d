#include "proto/proxy_header.hpp"

#include <arpa/inet.h>

#include <algorithm>
#include <cstring>

namespace inboxd::proto {
namespace {

constexpr std::string_view v1_prefix = "PROXY ";

// Section 2.2: the command (low nibble of byte 13) and the address family
// and transport (byte 14).
constexpr std::uint8_t cmd_local = 0x0, cmd_proxy = 0x1;
constexpr std::uint8_t af_unspec = 0x0, af_inet = 0x1, af_inet6 = 0x2, af_unix = 0x3;
constexpr std::uint8_t transport_stream = 0x1;

// Section 2.2.x: the TLV types read here.
constexpr std::uint8_t pp2_type_authority = 0x02;
constexpr std::uint8_t pp2_type_crc32c = 0x03;
constexpr std::uint8_t pp2_type_ssl = 0x20;
constexpr std::uint8_t pp2_subtype_ssl_version = 0x21;
constexpr std::uint8_t pp2_subtype_ssl_cipher = 0x23;
constexpr std::uint8_t pp2_client_ssl = 0x01;
constexpr std::uint8_t pp2_client_cert_conn = 0x02;
constexpr std::uint8_t pp2_client_cert_sess = 0x04;

// CRC-32C (Castagnoli), bit by bit: a header is at most about a kilobyte,
// and few senders add the checksum at all.
std::uint32_t crc32c(const std::uint8_t* p, std::size_t n) {
  std::uint32_t crc = 0xffffffffu;
  for (std::size_t i = 0; i < n; ++i) {
    crc ^= p[i];
    for (int k = 0; k < 8; ++k) crc = (crc >> 1) ^ (0x82f63b78u & (0u - (crc & 1u)));
  }
  return ~crc;
}

// Section 2.1: a port is a decimal number from 0 to 65535; leading zeros
// are not sent, so they are not taken either.
bool parse_port(std::string_view s, std::uint16_t& out) {
  if (s.empty() || s.size() > 5 || (s.size() > 1 && s.front() == '0')) return false;
  std::uint32_t v = 0;
  for (char c : s) {
    if (c < '0' || c > '9') return false;
    v = v * 10 + static_cast<std::uint32_t>(c - '0');
  }
  if (v > 65535) return false;
  out = static_cast<std::uint16_t>(v);
  return true;
}

// An address of family af (AF_INET, AF_INET6) in its text form, as
// inet_pton(3) takes it (glibc's takes dotted quads only, without leading
// zeros), and a port, into out.
bool parse_endpoint(int af, std::string_view ip, std::string_view port, sockaddr_storage& out) {
  char text[INET6_ADDRSTRLEN + 1];
  std::uint16_t p = 0;
  if (ip.empty() || ip.size() >= sizeof text || !parse_port(port, p)) return false;
  std::memcpy(text, ip.data(), ip.size());
  text[ip.size()] = '\0';
  out = {};
  if (af == AF_INET) {
    auto* in4 = reinterpret_cast<sockaddr_in*>(&out);
    in4->sin_family = AF_INET;
    in4->sin_port = htons(p);
    return ::inet_pton(AF_INET, text, &in4->sin_addr) == 1;
  }
  auto* in6 = reinterpret_cast<sockaddr_in6*>(&out);
  in6->sin6_family = AF_INET6;
  in6->sin6_port = htons(p);
  return ::inet_pton(AF_INET6, text, &in6->sin6_addr) == 1;
}

// Splits off the text up to the next space; false when there is none.
bool next_field(std::string_view& rest, std::string_view& field) {
  auto sp = rest.find(' ');
  if (sp == rest.npos) return false;
  field = rest.substr(0, sp);
  rest.remove_prefix(sp + 1);
  return true;
}

}  // namespace

proxy_header_parser::result proxy_header_parser::feed(std::span<const char> input) {
  if (st_ != status::need_more) return {st_, 0};
  std::size_t pos = 0;
  while (pos < input.size()) {
    if (len_ == 0) {
      // The first octet tells the versions apart (section 2.3): 'P' or CR.
      if (input[0] != v1_prefix[0] && input[0] != proxy_v2_signature[0])
        return fail("not a PROXY protocol header", 0);
    }
    bool v1 = buf_[0] == v1_prefix[0] || (len_ == 0 && input[0] == v1_prefix[0]);
    if (v1) {
      // Up to and with the LF, within 107 octets in all.
      std::size_t room = v1_max - len_;
      std::size_t avail = std::min(room, input.size() - pos);
      const char* start = input.data() + pos;
      const void* lf = std::memchr(start, '\n', avail);
      std::size_t n =
          lf ? static_cast<std::size_t>(static_cast<const char*>(lf) - start) + 1 : avail;
      std::memcpy(buf_.data() + len_, start, n);
      // The fixed start is checked as it comes, so that garbage fails at once.
      std::size_t checked = std::min(len_ + n, v1_prefix.size());
      if (std::string_view(buf_.data(), checked) != v1_prefix.substr(0, checked))
        return fail("not a PROXY protocol header", pos + n);
      len_ += n;
      pos += n;
      if (lf) {
        if (!parse_v1()) return fail(error_, pos);
        st_ = status::done;
        return {st_, pos};
      }
      if (len_ == v1_max) return fail("PROXY v1 line longer than 107 octets", pos);
      continue;
    }
    // Version 2: the fixed part, then exactly the length it gives.
    std::size_t target = want_ ? want_ : v2_fixed;
    std::size_t n = std::min(target - len_, input.size() - pos);
    std::memcpy(buf_.data() + len_, input.data() + pos, n);
    std::size_t checked = std::min(len_ + n, proxy_v2_signature.size());
    if (std::string_view(buf_.data(), checked) != proxy_v2_signature.substr(0, checked))
      return fail("not a PROXY protocol header", pos + n);
    len_ += n;
    pos += n;
    if (!want_ && len_ == v2_fixed) {
      auto ver_cmd = static_cast<std::uint8_t>(buf_[12]);
      if (ver_cmd >> 4 != 2) return fail("PROXY v2 header of an unknown version", pos);
      std::size_t length =
          static_cast<std::uint8_t>(buf_[14]) << 8 | static_cast<std::uint8_t>(buf_[15]);
      if (length > v2_max_length) return fail("PROXY v2 header too long", pos);
      want_ = v2_fixed + length;
    }
    if (want_ && len_ == want_) {
      if (!parse_v2()) return fail(error_, pos);
      st_ = status::done;
      return {st_, pos};
    }
  }
  return {st_, pos};
}

// Section 2.1: "PROXY" SP ( "TCP4" / "TCP6" ) SP src SP dst SP sport SP
// dport CRLF, single spaces; or "PROXY UNKNOWN", then anything up to CRLF.
bool proxy_header_parser::parse_v1() {
  info_ = {};
  info_.version = 1;
  std::string_view line(buf_.data(), len_);
  if (line.size() < 2 || line[line.size() - 2] != '\r') {
    error_ = "PROXY v1 line does not end in CRLF";
    return false;
  }
  line.remove_suffix(2);
  line.remove_prefix(v1_prefix.size());
  std::string_view proto = line.substr(0, line.find(' '));
  if (proto == "UNKNOWN") return true;  // The rest is to be ignored.
  int af = proto == "TCP4" ? AF_INET : proto == "TCP6" ? AF_INET6 : 0;
  if (!af) {
    error_ = "PROXY v1 line names no known protocol";
    return false;
  }
  std::string_view rest = line.substr(proto.size());
  std::string_view src, dst, sport;
  if (rest.empty() || rest.front() != ' ') {
    error_ = "PROXY v1 line without addresses";
    return false;
  }
  rest.remove_prefix(1);
  if (!next_field(rest, src) || !next_field(rest, dst) || !next_field(rest, sport) ||
      !parse_endpoint(af, src, sport, info_.source) ||
      !parse_endpoint(af, dst, rest, info_.destination)) {
    error_ = "PROXY v1 line with malformed addresses or ports";
    return false;
  }
  info_.local = false;
  return true;
}

bool proxy_header_parser::parse_v2() {
  info_ = {};
  info_.version = 2;
  const auto* h = reinterpret_cast<const std::uint8_t*>(buf_.data());
  std::uint8_t cmd = h[12] & 0x0f;
  std::uint8_t family = h[13] >> 4, transport = h[13] & 0x0f;
  std::size_t length = want_ - v2_fixed;
  const std::uint8_t* body = h + v2_fixed;
  if (cmd == cmd_local) return true;  // The block is to be discarded (section 2.2).
  if (cmd != cmd_proxy) {
    error_ = "PROXY v2 header with an unknown command";
    return false;
  }
  std::size_t addresses = 0;
  switch (family) {
    case af_unspec: return true;  // No address to use: the connection's own.
    case af_inet: addresses = 12; break;
    case af_inet6: addresses = 36; break;
    case af_unix: addresses = 216; break;
    default: error_ = "PROXY v2 header with an unknown address family"; return false;
  }
  if (transport != transport_stream) {
    error_ = "PROXY v2 header for a transport other than a stream";
    return false;
  }
  if (length < addresses) {
    error_ = "PROXY v2 header too short for its addresses";
    return false;
  }
  if (family == af_inet) {
    auto* src = reinterpret_cast<sockaddr_in*>(&info_.source);
    auto* dst = reinterpret_cast<sockaddr_in*>(&info_.destination);
    src->sin_family = dst->sin_family = AF_INET;
    std::memcpy(&src->sin_addr, body, 4);
    std::memcpy(&dst->sin_addr, body + 4, 4);
    std::memcpy(&src->sin_port, body + 8, 2);  // Both in network order.
    std::memcpy(&dst->sin_port, body + 10, 2);
    info_.local = false;
  } else if (family == af_inet6) {
    auto* src = reinterpret_cast<sockaddr_in6*>(&info_.source);
    auto* dst = reinterpret_cast<sockaddr_in6*>(&info_.destination);
    src->sin6_family = dst->sin6_family = AF_INET6;
    std::memcpy(&src->sin6_addr, body, 16);
    std::memcpy(&dst->sin6_addr, body + 16, 16);
    std::memcpy(&src->sin6_port, body + 32, 2);
    std::memcpy(&dst->sin6_port, body + 34, 2);
    info_.local = false;
  }
  // AF_UNIX: a client with no IP address; the connection's own stays.
  return parse_tlvs(body + addresses, length - addresses, 0);
}

// Section 2.2: type, a 16-bit length, the value; PP2_TYPE_SSL holds
// sub-TLVs of the same shape after its 5 fixed octets (2.2.5), and nothing
// nests deeper.
bool proxy_header_parser::parse_tlvs(const std::uint8_t* p, std::size_t n, int depth) {
  while (n > 0) {
    if (n < 3) {
      error_ = "PROXY v2 header with a truncated TLV";
      return false;
    }
    std::uint8_t type = p[0];
    std::size_t len = static_cast<std::size_t>(p[1]) << 8 | p[2];
    if (len > n - 3) {
      error_ = "PROXY v2 TLV longer than the header";
      return false;
    }
    const std::uint8_t* v = p + 3;
    auto text = [&] { return std::string(reinterpret_cast<const char*>(v), len); };
    if (depth == 0) {
      if (type == pp2_type_authority) info_.authority = text();
      if (type == pp2_type_crc32c) {
        // Section 2.2.3: the checksum of the whole header with this field as zeros.
        if (len != 4) {
          error_ = "PROXY v2 CRC32C TLV of the wrong size";
          return false;
        }
        std::array<std::uint8_t, v2_fixed + v2_max_length> copy;
        const auto* h = reinterpret_cast<const std::uint8_t*>(buf_.data());
        std::memcpy(copy.data(), h, want_);
        std::memset(copy.data() + (v - h), 0, 4);
        std::uint32_t sent =
            std::uint32_t{v[0]} << 24 | std::uint32_t{v[1]} << 16 | std::uint32_t{v[2]} << 8 | v[3];
        if (crc32c(copy.data(), want_) != sent) {
          error_ = "PROXY v2 header fails its CRC32C";
          return false;
        }
      }
      if (type == pp2_type_ssl) {
        if (len < 5) {
          error_ = "PROXY v2 SSL TLV too short";
          return false;
        }
        std::uint32_t verify =
            std::uint32_t{v[1]} << 24 | std::uint32_t{v[2]} << 16 | std::uint32_t{v[3]} << 8 | v[4];
        info_.ssl = (v[0] & pp2_client_ssl) != 0;
        // verify is 0 when a certificate was presented and verified.
        info_.ssl_verified =
            info_.ssl && (v[0] & (pp2_client_cert_conn | pp2_client_cert_sess)) && verify == 0;
        if (!parse_tlvs(v + 5, len - 5, 1)) return false;
      }
    } else {
      if (type == pp2_subtype_ssl_version) info_.ssl_version = text();
      if (type == pp2_subtype_ssl_cipher) info_.ssl_cipher = text();
    }
    p += 3 + len;
    n -= 3 + len;
  }
  return true;
}

}  // namespace inboxd::proto
