#include "bench/histogram.hpp"

#include <algorithm>
#include <bit>
#include <cmath>

namespace inboxd::bench {

namespace {

// Values below this are their own bucket: 0 .. 2 * sub_bucket_count - 1.
constexpr std::uint64_t exact_limit = 2 * histogram::sub_bucket_count;

}  // namespace

histogram::histogram() : counts_(bucket_count(), 0) {}

std::size_t histogram::bucket_count() noexcept {
  return bucket_index(max_trackable) + 1;
}

// Above exact_limit, a value with its highest bit at position msb falls in the
// group shift = msb - sub_bucket_bits, whose buckets are 2^shift wide. Groups
// follow one another with sub_bucket_count buckets each, so the index grows
// monotonically with the value.
std::size_t histogram::bucket_index(std::uint64_t value) noexcept {
  if (value > max_trackable) value = max_trackable;
  if (value < exact_limit) return static_cast<std::size_t>(value);
  unsigned msb = 63 - static_cast<unsigned>(std::countl_zero(value));
  unsigned shift = msb - sub_bucket_bits;
  return static_cast<std::size_t>((shift + 1) * sub_bucket_count +
                                  ((value >> shift) - sub_bucket_count));
}

std::uint64_t histogram::bucket_lowest(std::size_t index) noexcept {
  if (index < exact_limit) return index;
  std::uint64_t shift = index / sub_bucket_count - 1;
  std::uint64_t sub = index % sub_bucket_count + sub_bucket_count;
  return sub << shift;
}

std::uint64_t histogram::bucket_highest(std::size_t index) noexcept {
  if (index < exact_limit) return index;
  std::uint64_t shift = index / sub_bucket_count - 1;
  return bucket_lowest(index) + (std::uint64_t{1} << shift) - 1;
}

void histogram::record_n(std::uint64_t value, std::uint64_t n) noexcept {
  if (n == 0) return;
  counts_[bucket_index(value)] += n;
  total_ += n;
  min_ = std::min(min_, value);
  max_ = std::max(max_, value);
  sum_ += static_cast<long double>(value) * static_cast<long double>(n);
}

void histogram::merge(const histogram& other) noexcept {
  for (std::size_t i = 0; i < counts_.size(); ++i) counts_[i] += other.counts_[i];
  total_ += other.total_;
  min_ = std::min(min_, other.min_);
  max_ = std::max(max_, other.max_);
  sum_ += other.sum_;
}

std::size_t histogram::used_buckets() const noexcept {
  if (total_ == 0) return 0;
  return bucket_index(max_) + 1;
}

void histogram::reset() noexcept {
  std::fill(counts_.begin(), counts_.end(), 0);
  total_ = 0;
  min_ = UINT64_MAX;
  max_ = 0;
  sum_ = 0;
}

double histogram::mean() const noexcept {
  return total_ ? static_cast<double>(sum_ / static_cast<long double>(total_)) : 0.0;
}

std::uint64_t histogram::value_at_percentile(double percentile) const noexcept {
  if (total_ == 0) return 0;
  percentile = std::clamp(percentile, 0.0, 100.0);
  // The rank of the wanted value, 1-based, rounded to the nearest as
  // HdrHistogram does (a ceiling would turn 99.9% of 1000 into 1000 through
  // floating-point error): p0 is the smallest value, p100 the largest.
  auto rank = static_cast<std::uint64_t>(percentile / 100.0 * static_cast<double>(total_) + 0.5);
  rank = std::clamp<std::uint64_t>(rank, 1, total_);
  if (rank == total_) return max_;
  std::uint64_t seen = 0;
  for (std::size_t i = 0; i < counts_.size(); ++i) {
    seen += counts_[i];
    if (seen >= rank) return std::clamp(bucket_highest(i), min(), max_);
  }
  return max_;
}

}  // namespace inboxd::bench
