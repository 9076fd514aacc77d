#include "bench/hdr_log.hpp"

#include <zlib.h>

#include <cerrno>
#include <cmath>
#include <cstring>
#include <ctime>

namespace inboxd::bench {

namespace {

constexpr std::uint32_t v2_encoding_cookie = 0x1c849303 | 0x10;
constexpr std::uint32_t v2_compression_cookie = 0x1c849304 | 0x10;
constexpr std::size_t v2_header_size = 40;
constexpr int significant_digits = 2;
// An encoding of our histogram is at most this long (10 bytes per count);
// anything that inflates to more is not one, and is refused before it costs
// memory.
constexpr std::size_t max_encoded = v2_header_size + 10 * 4096;

void put32(std::string& out, std::uint32_t v) {
  for (int shift = 24; shift >= 0; shift -= 8) out += static_cast<char>((v >> shift) & 0xff);
}

void put64(std::string& out, std::uint64_t v) {
  for (int shift = 56; shift >= 0; shift -= 8) out += static_cast<char>((v >> shift) & 0xff);
}

std::uint64_t get(std::string_view in, std::size_t at, int bytes) {
  std::uint64_t v = 0;
  for (int i = 0; i < bytes; ++i) v = (v << 8) | static_cast<unsigned char>(in[at + i]);
  return v;
}

// ZigZag (0, -1, 1, -2 … as 0, 1, 2, 3 …), then LEB128: seven bits a byte,
// low first, the high bit set on every byte but the last. HdrHistogram's
// ZigZagEncoding stops after 8 bytes and gives the ninth all 8 bits; with
// counts below 2^56 the two agree, and ours never reach that.
void put_zigzag(std::string& out, std::int64_t value) {
  std::uint64_t v =
      (static_cast<std::uint64_t>(value) << 1) ^ static_cast<std::uint64_t>(value >> 63);
  while (v >= 0x80) {
    out += static_cast<char>((v & 0x7f) | 0x80);
    v >>= 7;
  }
  out += static_cast<char>(v);
}

// HdrHistogram's reading: up to 8 bytes of 7 bits, a ninth of 8 bits.
bool get_zigzag(std::string_view in, std::size_t& at, std::int64_t& value) {
  std::uint64_t v = 0;
  for (int i = 0; i < 9; ++i) {
    if (at >= in.size()) return false;
    auto byte = static_cast<unsigned char>(in[at++]);
    if (i == 8) {
      v |= static_cast<std::uint64_t>(byte) << 56;
      break;
    }
    v |= static_cast<std::uint64_t>(byte & 0x7f) << (7 * i);
    if (!(byte & 0x80)) break;
  }
  value = static_cast<std::int64_t>(v >> 1) ^ -static_cast<std::int64_t>(v & 1);
  return true;
}

constexpr char alphabet[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

}  // namespace

std::string hdr_encode(const histogram& h) {
  std::string out;
  out.reserve(v2_header_size + 64);
  put32(out, v2_encoding_cookie);
  put32(out, 0);  // the payload length, filled in below
  put32(out, 0);  // normalizing index offset
  put32(out, significant_digits);
  put64(out, 1);  // lowest discernible value
  put64(out, histogram::max_trackable);
  double ratio = 1.0;
  std::uint64_t ratio_bits = 0;
  std::memcpy(&ratio_bits, &ratio, sizeof ratio_bits);
  put64(out, ratio_bits);
  std::size_t used = h.used_buckets();
  for (std::size_t i = 0; i < used;) {
    std::uint64_t count = h.count_at_index(i++);
    if (count != 0) {
      put_zigzag(out, static_cast<std::int64_t>(count));
      continue;
    }
    std::int64_t zeros = 1;
    while (i < used && h.count_at_index(i) == 0) {
      ++zeros;
      ++i;
    }
    put_zigzag(out, -zeros);
  }
  auto payload = static_cast<std::uint32_t>(out.size() - v2_header_size);
  for (int k = 0; k < 4; ++k) out[4 + k] = static_cast<char>((payload >> (24 - 8 * k)) & 0xff);
  return out;
}

std::string hdr_encode_compressed(const histogram& h) {
  std::string plain = hdr_encode(h);
  uLongf length = compressBound(static_cast<uLong>(plain.size()));
  std::string out(8 + length, '\0');
  // compress() is zlib's RFC 1950 stream, which Java's Inflater reads.
  int rc =
      ::compress(reinterpret_cast<Bytef*>(out.data() + 8), &length,
                 reinterpret_cast<const Bytef*>(plain.data()), static_cast<uLong>(plain.size()));
  if (rc != Z_OK) return {};
  out.resize(8 + length);
  std::string head;
  put32(head, v2_compression_cookie);
  put32(head, static_cast<std::uint32_t>(length));
  out.replace(0, 8, head);
  return out;
}

bool hdr_decode(std::string_view data, bool compressed, histogram& out) {
  std::string inflated;
  if (compressed) {
    if (data.size() < 8 || get(data, 0, 4) != v2_compression_cookie) return false;
    std::uint64_t length = get(data, 4, 4);
    if (length > data.size() - 8) return false;
    inflated.resize(max_encoded);
    uLongf size = static_cast<uLongf>(inflated.size());
    if (::uncompress(reinterpret_cast<Bytef*>(inflated.data()), &size,
                     reinterpret_cast<const Bytef*>(data.data() + 8),
                     static_cast<uLong>(length)) != Z_OK)
      return false;
    inflated.resize(size);
    data = inflated;
  }
  if (data.size() < v2_header_size || get(data, 0, 4) != v2_encoding_cookie) return false;
  std::uint64_t payload = get(data, 4, 4);
  if (payload > data.size() - v2_header_size) return false;
  // Another layout would put counts at other indexes: refuse rather than guess.
  if (get(data, 8, 4) != 0 || get(data, 12, 4) != significant_digits || get(data, 16, 8) != 1)
    return false;
  std::string_view counts = data.substr(v2_header_size, payload);
  std::size_t at = 0, index = 0;
  const std::size_t buckets = histogram::bucket_count();
  while (at < counts.size()) {
    std::int64_t value = 0;
    if (!get_zigzag(counts, at, value)) return false;
    if (value < 0) {
      auto zeros = static_cast<std::uint64_t>(-(value + 1)) + 1;
      if (zeros > buckets - index) return false;
      index += zeros;
      continue;
    }
    if (index >= buckets) return false;
    out.record_index(index++, static_cast<std::uint64_t>(value));
  }
  return true;
}

std::string base64_encode(std::string_view in) {
  std::string out;
  out.reserve((in.size() + 2) / 3 * 4);
  std::size_t i = 0;
  for (; i + 3 <= in.size(); i += 3) {
    auto v = static_cast<unsigned>(get(in, i, 3));
    for (int shift : {18, 12, 6, 0}) out += alphabet[(v >> shift) & 63];
  }
  if (std::size_t rest = in.size() - i; rest > 0) {
    unsigned v = static_cast<unsigned char>(in[i]) << 16;
    if (rest == 2) v |= static_cast<unsigned char>(in[i + 1]) << 8;
    out += alphabet[(v >> 18) & 63];
    out += alphabet[(v >> 12) & 63];
    out += rest == 2 ? alphabet[(v >> 6) & 63] : '=';
    out += '=';
  }
  return out;
}

bool base64_decode(std::string_view in, std::string& out) {
  if (in.size() % 4 != 0) return false;
  out.clear();
  out.reserve(in.size() / 4 * 3);
  for (std::size_t i = 0; i < in.size(); i += 4) {
    unsigned v = 0;
    int pad = 0;
    for (std::size_t k = 0; k < 4; ++k) {
      char c = in[i + k];
      unsigned d = 0;
      if (c == '=' && i + 4 == in.size() && k >= 2) {
        ++pad;
      } else {
        // '=' is in no position but the last two of the last group.
        if (pad) return false;
        const char* p = c ? std::strchr(alphabet, c) : nullptr;
        if (!p) return false;
        d = static_cast<unsigned>(p - alphabet);
      }
      v = (v << 6) | d;
    }
    out += static_cast<char>((v >> 16) & 0xff);
    if (pad < 2) out += static_cast<char>((v >> 8) & 0xff);
    if (pad < 1) out += static_cast<char>(v & 0xff);
  }
  return true;
}

hdr_log_writer::~hdr_log_writer() {
  close();
}

std::string hdr_log_writer::open(const std::string& path) {
  file_ = std::fopen(path.c_str(), "w");
  if (!file_) return "--histogram-log: " + path + ": " + std::strerror(errno);
  return {};
}

void hdr_log_writer::write_header(double base_epoch_s) {
  if (!file_) return;
  auto seconds = static_cast<std::time_t>(base_epoch_s);
  std::tm tm{};
  ::gmtime_r(&seconds, &tm);
  char date[64];
  std::strftime(date, sizeof date, "%a %b %d %H:%M:%S UTC %Y", &tm);
  // HistogramLogWriter's header, in its order; readers skip other comments.
  if (std::fprintf(file_,
                   "#[Logged with inboxd-bench: transaction latency in microseconds]\n"
                   "#[Histogram log format version 1.3]\n"
                   "#[StartTime: %.3f (seconds since epoch), %s]\n"
                   "#[BaseTime: %.3f (seconds since epoch)]\n"
                   "\"StartTimestamp\",\"Interval_Length\",\"Interval_Max\","
                   "\"Interval_Compressed_Histogram\"\n",
                   base_epoch_s, date, base_epoch_s) < 0)
    failed_ = true;
  std::fflush(file_);
}

void hdr_log_writer::write_interval(double start_s, double length_s, std::uint64_t max_us,
                                    std::string_view compressed) {
  if (!file_) return;
  std::string text = base64_encode(compressed);
  if (std::fprintf(file_, "%.3f,%.3f,%.3f,%s\n", start_s, length_s,
                   static_cast<double>(max_us) / 1000.0, text.c_str()) < 0)
    failed_ = true;
  ++intervals_;
  // One line a second at most: flushed so that a reader following the file
  // (or a run cut by SIGKILL) has every finished interval.
  std::fflush(file_);
}

bool hdr_log_writer::close() {
  if (!file_) return !failed_;
  if (std::fclose(file_) != 0) failed_ = true;
  file_ = nullptr;
  return !failed_;
}

}  // namespace inboxd::bench
