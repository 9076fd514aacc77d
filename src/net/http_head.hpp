// net/http_head.hpp: the head of an HTTP/1.x request, sans I/O.
//
// What the metrics listener (net/metrics_http.hpp) reads of a request: the
// method, the target and whether the connection is kept. No libuv: the
// fuzzer tests/fuzz/fuzz_http_head.cpp drives it directly.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string_view>

namespace inboxd::net {

// What the head of one HTTP request asks for. Views borrow the buffer given
// to parse_http_head().
struct http_head {
  enum class status : std::uint8_t {
    incomplete,  // no blank line yet: read more (if below the limit)
    ok,
    bad,  // not an HTTP/1.x request: 400 and close
  };
  status st = status::incomplete;
  std::string_view method;
  std::string_view target;  // the request-target as sent
  bool keep_alive = false;  // the client will send another request on this connection
  bool has_body = false;    // Content-Length other than 0, or Transfer-Encoding
  std::size_t length = 0;   // octets of the head, blank line included
};

// The offset just past the blank line that ends a request head (CRLF CRLF,
// or LF LF as RFC 9112 2.2 lets a server accept), or npos. The search starts
// at `from` (less three, for a terminator split between reads), so that a
// dribbling client costs O(bytes) over all calls.
[[nodiscard]] std::size_t find_head_end(std::string_view buf, std::size_t from) noexcept;

// Parses a complete head: buf must end where find_head_end() said, or
// contain a blank line; RFC 9112 3 (request line) and 5 (fields).
[[nodiscard]] http_head parse_http_head(std::string_view buf) noexcept;

}  // namespace inboxd::net
