// bench/hdr_log.hpp: histograms in HdrHistogram's own formats, so that its
// tools (HistogramLogProcessor, HdrHistogram_c's hdr_log_reader, the Python
// and Go ports) read, merge and plot what inboxd-bench measured.
//
// bench::histogram has exactly the bucket layout of an HdrHistogram with
// lowestDiscernibleValue 1, 2 significant digits (256 sub-buckets, 128 per
// power of two above 255) and highestTrackableValue 2^32 - 1, so its counts
// are written index for index. The V2 encoding (HdrHistogram_c
// src/hdr_histogram_log.c, hdr_encode_compressed; Java
// AbstractHistogram.encodeIntoByteBuffer): a 40-byte big-endian header
// (cookie 0x1c849313 = V2 encoding cookie 0x1c849303 | word size 1 << 4,
// payload length, normalizing index offset, significant digits, lowest,
// highest, conversion ratio as IEEE-754 bits), then the counts up to the
// highest non-zero one, each a ZigZag LEB128 number, a run of k zero
// counts written as -k. The compressed form wraps that in cookie
// 0x1c849314 (V2 compression cookie 0x1c849304 | 0x10), the length of the
// deflated bytes, and the zlib stream (RFC 1950). The interval log
// (HistogramLogWriter, format version 1.3) puts one base64 (RFC 4648 4)
// compressed histogram on each line.
#pragma once

#include <cstdint>
#include <cstdio>
#include <string>
#include <string_view>

#include "bench/histogram.hpp"

namespace inboxd::bench {

// The uncompressed V2 encoding of h.
[[nodiscard]] std::string hdr_encode(const histogram& h);
// The compressed V2 encoding of h (zlib), as HdrHistogram logs hold it.
[[nodiscard]] std::string hdr_encode_compressed(const histogram& h);
// Adds the counts of an uncompressed (decompress false) or compressed V2
// encoding to out. Values are restored at their bucket's lowest value, so
// count and percentiles are exact and min, max and mean are within the
// bucket precision. Returns false, leaving out partly filled, when data is
// not such an encoding of a histogram with our layout. Bounded: a count
// index past our last bucket is an error, and the inflated size is capped.
[[nodiscard]] bool hdr_decode(std::string_view data, bool compressed, histogram& out);

[[nodiscard]] std::string base64_encode(std::string_view in);
// Returns false on a character outside the alphabet or bad padding.
[[nodiscard]] bool base64_decode(std::string_view in, std::string& out);

// An interval log (HistogramLogWriter's format version 1.3). Values are
// microseconds; Interval_Max is written in milliseconds (max / 1000), as
// jHiccup's logs are; HistogramLogProcessor's -outputValueUnitRatio 1
// prints microseconds, 1000 milliseconds.
class hdr_log_writer {
 public:
  hdr_log_writer() = default;
  hdr_log_writer(const hdr_log_writer&) = delete;
  hdr_log_writer& operator=(const hdr_log_writer&) = delete;
  ~hdr_log_writer();

  // Opens (truncates) path. Returns an error message, empty on success.
  [[nodiscard]] std::string open(const std::string& path);
  [[nodiscard]] bool is_open() const noexcept { return file_ != nullptr; }
  // The header comments; base_epoch_s is the wall-clock time (seconds since
  // the epoch) that interval timestamps count from: StartTime and BaseTime.
  void write_header(double base_epoch_s);
  // One interval: start in seconds after the base time, its length, and the
  // compressed histogram (already encoded, so a merged one can be written too).
  void write_interval(double start_s, double length_s, std::uint64_t max_us,
                      std::string_view compressed);
  // Flushes and closes; false when a write failed (disk full).
  bool close();
  [[nodiscard]] std::uint64_t intervals() const noexcept { return intervals_; }

 private:
  std::FILE* file_ = nullptr;
  std::uint64_t intervals_ = 0;
  bool failed_ = false;
};

}  // namespace inboxd::bench
