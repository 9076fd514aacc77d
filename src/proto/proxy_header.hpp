// proto/proxy_header.hpp: the PROXY protocol header (HAProxy's
// doc/proxy-protocol.txt, versions 1 and 2), read sans I/O.
//
// A load balancer in TCP mode sends this header first on each connection it
// relays, to say who its client was. The parser takes the bytes as they
// arrive, in any split, and never takes a byte past the header: what follows
// is the SMTP stream (or a TLS handshake), and may have arrived in the same
// read. It copies what it takes into its own buffer, bounded by the largest
// header it accepts, so the caller may drop the bytes it was given at once.
//
// The parser only says what the header means; the caller decides what to
// trust (who may send one) and closes the connection on an error.
#pragma once

#include <netinet/in.h>
#include <sys/socket.h>

#include <array>
#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <string_view>

namespace inboxd::proto {

// What a complete header said.
struct proxy_info {
  int version = 0;  // 1 or 2
  // The header carries no client address: a v2 LOCAL command (the proxy's
  // own health check), v1 UNKNOWN, or a v2 family the receiver does not use
  // (AF_UNSPEC, AF_UNIX). Section 2.1 and 2.2: the connection's own
  // endpoints are then the ones to use.
  bool local = true;
  sockaddr_storage source{};       // the client, when !local
  sockaddr_storage destination{};  // the address the client connected to
  // v2 TLVs (section 2.2.x), each bounded by the header's length.
  bool ssl = false;           // PP2_TYPE_SSL with PP2_CLIENT_SSL: the client used TLS
  bool ssl_verified = false;  // and presented a certificate that verified
  std::string ssl_version;    // PP2_SUBTYPE_SSL_VERSION, e.g. "TLSv1.3"
  std::string ssl_cipher;     // PP2_SUBTYPE_SSL_CIPHER
  std::string authority;      // PP2_TYPE_AUTHORITY: the SNI name
};

class proxy_header_parser {
 public:
  // Section 2.1: a v1 line is at most 107 octets with its CRLF.
  static constexpr std::size_t v1_max = 107;
  // Section 2.2: v2 is 16 octets, then as many as its length field says.
  // The field allows 65535; HAProxy's own addresses and TLVs (AUTHORITY up
  // to 255, UNIQUE_ID up to 128, the SSL sub-TLVs) stay well within this,
  // and a longer header is refused, so that a connection's header costs at
  // most this much memory.
  static constexpr std::size_t v2_max_length = 1024;
  static constexpr std::size_t v2_fixed = 16;

  enum class status : std::uint8_t { need_more, done, error };
  struct result {
    status st;
    std::size_t consumed;  // octets of input that belong to the header
  };

  // Takes header octets from the front of input. need_more: every octet was
  // taken and the header is not complete. done: info() holds it, and
  // input[consumed..] is the stream after it. error: error() says why.
  [[nodiscard]] result feed(std::span<const char> input);

  [[nodiscard]] const proxy_info& info() const noexcept { return info_; }
  // Why the header was refused, for the log (static text).
  [[nodiscard]] std::string_view error() const noexcept { return error_; }
  // Octets taken so far.
  [[nodiscard]] std::size_t size() const noexcept { return len_; }

 private:
  result fail(std::string_view why, std::size_t consumed) {
    error_ = why;
    st_ = status::error;
    return {st_, consumed};
  }
  bool parse_v1();
  bool parse_v2();
  bool parse_tlvs(const std::uint8_t* p, std::size_t n, int depth);

  std::array<char, v2_fixed + v2_max_length> buf_{};
  std::size_t len_ = 0;
  std::size_t want_ = 0;  // v2: the header's whole size, once known
  status st_ = status::need_more;
  std::string_view error_;
  proxy_info info_;
};

// The v2 signature (section 2.2), for tests and callers that build headers.
inline constexpr std::string_view proxy_v2_signature{"\r\n\r\n\0\r\nQUIT\n", 12};

}  // namespace inboxd::proto
