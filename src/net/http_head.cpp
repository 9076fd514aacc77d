#include "net/http_head.hpp"

#include <algorithm>
#include <cstring>

namespace inboxd::net {

namespace {

// RFC 9110 5.6.2: tchar.
bool is_tchar(char c) noexcept {
  if ((c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z')) return true;
  return std::strchr("!#$%&'*+-.^_`|~", c) != nullptr && c != '\0';
}

bool is_token(std::string_view s) noexcept {
  return !s.empty() && std::all_of(s.begin(), s.end(), is_tchar);
}

bool iequals(std::string_view a, std::string_view b) noexcept {
  return a.size() == b.size() && std::equal(a.begin(), a.end(), b.begin(), [](char x, char y) {
           return (x | 0x20) == (y | 0x20);
         });
}

std::string_view trim(std::string_view s) noexcept {
  while (!s.empty() && (s.front() == ' ' || s.front() == '\t')) s.remove_prefix(1);
  while (!s.empty() && (s.back() == ' ' || s.back() == '\t')) s.remove_suffix(1);
  return s;
}

}  // namespace

std::size_t find_head_end(std::string_view buf, std::size_t from) noexcept {
  std::size_t i = from >= 3 ? from - 3 : 0;
  while (i < buf.size()) {
    const void* lf = std::memchr(buf.data() + i, '\n', buf.size() - i);
    if (!lf) return std::string_view::npos;
    i = static_cast<std::size_t>(static_cast<const char*>(lf) - buf.data()) + 1;
    if (i < buf.size() && buf[i] == '\n') return i + 1;
    if (i + 1 < buf.size() && buf[i] == '\r' && buf[i + 1] == '\n') return i + 2;
  }
  return std::string_view::npos;
}

http_head parse_http_head(std::string_view buf) noexcept {
  http_head h;
  h.st = http_head::status::bad;
  std::size_t end = find_head_end(buf, 0);
  if (end == std::string_view::npos) {
    h.st = http_head::status::incomplete;
    return h;
  }
  h.length = end;
  std::string_view rest = buf.substr(0, end);
  auto next_line = [&rest]() {
    std::size_t lf = rest.find('\n');  // There is one: the head ends in a blank line.
    std::string_view line = rest.substr(0, lf);
    rest.remove_prefix(lf + 1);
    if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
    return line;
  };
  // RFC 9112 3: method SP request-target SP HTTP-version.
  std::string_view line = next_line();
  std::size_t sp1 = line.find(' ');
  if (sp1 == line.npos) return h;
  std::size_t sp2 = line.find(' ', sp1 + 1);
  if (sp2 == line.npos) return h;
  h.method = line.substr(0, sp1);
  h.target = line.substr(sp1 + 1, sp2 - sp1 - 1);
  std::string_view version = line.substr(sp2 + 1);
  if (!is_token(h.method) || h.target.empty()) return h;
  for (char c : h.target)
    if (static_cast<unsigned char>(c) <= ' ' || c == '\x7f') return h;
  if (version.size() != 8 || !version.starts_with("HTTP/1.") || version[7] < '0' ||
      version[7] > '9')
    return h;
  bool http10 = version[7] == '0';
  bool close = false, keep_alive = false;
  // RFC 9112 5: field-name ":" OWS field-value OWS, up to the blank line.
  while (true) {
    line = next_line();
    if (line.empty()) break;
    // RFC 9112 5.2: obsolete line folding may be refused with 400.
    if (line.front() == ' ' || line.front() == '\t') return h;
    std::size_t colon = line.find(':');
    // RFC 9112 5.1: no whitespace between the name and the colon.
    if (colon == line.npos || !is_token(line.substr(0, colon))) return h;
    std::string_view name = line.substr(0, colon);
    std::string_view value = trim(line.substr(colon + 1));
    if (iequals(name, "connection")) {
      // A list of tokens (RFC 9110 7.6.1): "close", "keep-alive", others.
      while (!value.empty()) {
        std::size_t comma = value.find(',');
        std::string_view option = trim(value.substr(0, comma));
        if (iequals(option, "close")) close = true;
        if (iequals(option, "keep-alive")) keep_alive = true;
        value = comma == value.npos ? std::string_view{} : value.substr(comma + 1);
      }
    } else if (iequals(name, "content-length")) {
      if (value != "0") h.has_body = true;
    } else if (iequals(name, "transfer-encoding")) {
      h.has_body = true;
    }
  }
  h.keep_alive = !close && (!http10 || keep_alive);
  h.st = http_head::status::ok;
  return h;
}

}  // namespace inboxd::net
