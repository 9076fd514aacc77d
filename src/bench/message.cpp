#include "bench/message.hpp"

#include <algorithm>
#include <charconv>

namespace inboxd::bench {

namespace {

// RFC 5322 wants Date and From; the rest makes the text look like mail to a
// server that parses it. Every message carries the same header block.
constexpr std::string_view header_block =
    "Date: Thu, 01 Jan 2026 00:00:00 +0000\r\n"
    "From: inboxd-bench <bench@client.example>\r\n"
    "To: <user@inboxd.example>\r\n"
    "Subject: inboxd-bench load\r\n"
    "Message-ID: <load@inboxd-bench.invalid>\r\n"
    "MIME-Version: 1.0\r\n"
    "Content-Type: text/plain; charset=us-ascii\r\n"
    "\r\n";

constexpr std::string_view alphabet =
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
constexpr std::size_t line_chars = 76;
constexpr std::size_t line_bytes = line_chars + 2;
constexpr std::string_view end_of_data = ".\r\n";

// A line of n printable characters, none of them '.', then CRLF.
void append_line(std::string& out, std::size_t number, std::size_t n) {
  for (std::size_t j = 0; j < n; ++j) out += alphabet[(number + j) % alphabet.size()];
  out += "\r\n";
}

}  // namespace

std::size_t message_text::min_size() noexcept {
  return header_block.size();
}

message_text::message_text(const std::vector<std::size_t>& sizes) {
  // A last line of k bytes (k - 2 characters and CRLF) for k = 3 .. 2 lines' worth - 1;
  // k = 0 is no last line at all. k = 1 and 2 cannot be made and stay empty.
  tails_.resize(line_bytes + 3);
  for (std::size_t k = 0; k < tails_.size(); ++k) {
    if (k == 1 || k == 2) continue;
    if (k >= 3) append_line(tails_[k], k, k - 2);
    tails_[k] += end_of_data;
  }
  std::size_t longest = 0;
  for (std::size_t wanted : sizes) {
    std::size_t size = std::max(wanted, min_size());
    std::size_t rest = size - header_block.size();
    std::size_t full = rest / line_bytes, tail = rest % line_bytes;
    if (tail == 1 || tail == 2) {
      if (full > 0) {
        // Borrow the last whole line: the last line becomes 79 or 80 bytes.
        --full;
        tail += line_bytes;
      } else {
        size += 3 - tail;  // two bytes cannot be a line; send three
        tail = 3;
      }
    }
    entries_.push_back({.size = size, .body = full * line_bytes, .tail = tail});
    longest = std::max(longest, full * line_bytes);
  }
  lines_.reserve(longest);
  for (std::size_t i = 0; lines_.size() < longest; ++i) append_line(lines_, i, line_chars);
}

message_text::message_text(std::vector<corpus_message> corpus) : corpus_(std::move(corpus)) {}

std::array<std::string_view, 3> message_text::slices(std::size_t index) const noexcept {
  if (!corpus_.empty()) {
    const corpus_message& m = corpus_[index];
    return {m.stuffed.empty() ? std::string_view(m.text) : std::string_view(m.stuffed),
            {},
            end_of_data};
  }
  const entry& e = entries_[index];
  return {header_block, std::string_view(lines_).substr(0, e.body), tails_[e.tail]};
}

std::array<std::string_view, 3> message_text::chunk_slices(std::size_t index) const noexcept {
  if (!corpus_.empty()) return {corpus_[index].text, {}, {}};
  auto s = slices(index);
  s[2].remove_suffix(end_of_data.size());
  return s;
}

bool address_template::parse(std::string_view text, std::string& error) {
  if (text.empty()) {
    error = "empty address";
    return false;
  }
  if (text.find_first_of(" \t\r\n<>") != std::string_view::npos) {
    error = "no white space or angle brackets in an address";
    return false;
  }
  for (std::size_t i = 0; (i = text.find('{', i)) != std::string_view::npos; ++i) {
    auto field = text.substr(i, 3);
    if (field != "{n}" && field != "{c}" && field != "{r}") {
      error = "the only fields are {n} (message), {c} (connection) and {r} (recipient)";
      return false;
    }
  }
  return true;
}

address_template::address_template(std::string text) : text_(std::move(text)) {
  std::size_t literal = 0;
  for (std::size_t i = 0; (i = text_.find('{', i)) != std::string::npos;) {
    if (i > literal) parts_.push_back({field::literal, literal, i - literal});
    char name = text_[i + 1];
    parts_.push_back({name == 'n'   ? field::message
                      : name == 'c' ? field::connection
                                    : field::recipient,
                      0, 0});
    i += 3;
    literal = i;
  }
  if (literal < text_.size()) parts_.push_back({field::literal, literal, text_.size() - literal});
}

bool address_template::uses_message() const noexcept {
  for (const part& p : parts_)
    if (p.kind == field::message) return true;
  return false;
}

void address_template::append(std::string& out, std::uint64_t n, std::uint64_t c,
                              std::uint64_t r) const {
  for (const part& p : parts_) {
    std::uint64_t value = 0;
    switch (p.kind) {
      case field::literal: out.append(text_, p.offset, p.length); continue;
      case field::message: value = n; break;
      case field::connection: value = c; break;
      case field::recipient: value = r; break;
    }
    char digits[24];
    auto [end, ec] = std::to_chars(digits, digits + sizeof digits, value);
    out.append(digits, end);
  }
}

}  // namespace inboxd::bench
