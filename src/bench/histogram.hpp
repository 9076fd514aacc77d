// bench/histogram.hpp: a log-bucketed latency histogram, HdrHistogram style.
//
// Values are whole numbers (inboxd-bench records microseconds). Values below
// 2 * sub_bucket_count are counted exactly; above that, each power of two is
// split into sub_bucket_count buckets, so a bucket is at most 1/128 (0.8%) of
// its value wide. Values above max_trackable are counted in the last bucket;
// max() stays exact. The counters are one fixed array, allocated once in the
// constructor: record() never allocates and costs a count-leading-zeros, a
// shift and an increment.
//
// value_at_percentile() returns the highest value that is equivalent to the
// bucket holding the percentile (HdrHistogram's convention), never more than
// max(), so a reported p99 is an upper bound within the bucket precision.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

namespace inboxd::bench {

class histogram {
 public:
  // 2^7 sub-buckets per power of two: relative bucket width <= 1/128.
  static constexpr unsigned sub_bucket_bits = 7;
  static constexpr std::uint64_t sub_bucket_count = std::uint64_t{1} << sub_bucket_bits;
  // 2^32 µs is about 71 minutes: plenty for any reply timeout.
  static constexpr std::uint64_t max_trackable = (std::uint64_t{1} << 32) - 1;

  histogram();

  // Counts one value (or n of the same value).
  void record(std::uint64_t value) noexcept { record_n(value, 1); }
  void record_n(std::uint64_t value, std::uint64_t n) noexcept;
  // Adds every count of other into this one.
  void merge(const histogram& other) noexcept;
  void reset() noexcept;

  [[nodiscard]] std::uint64_t count() const noexcept { return total_; }
  // min(), max() and mean() are exact; they are 0 while the histogram is empty.
  [[nodiscard]] std::uint64_t min() const noexcept { return total_ ? min_ : 0; }
  [[nodiscard]] std::uint64_t max() const noexcept { return max_; }
  [[nodiscard]] double mean() const noexcept;
  // percentile in [0, 100]; 0 while the histogram is empty.
  [[nodiscard]] std::uint64_t value_at_percentile(double percentile) const noexcept;

  // Exact sum of every value counted: with min() and max(), what an exact
  // merge of serialized histograms needs besides the counts.
  [[nodiscard]] long double sum() const noexcept { return sum_; }
  // The count of bucket index (below bucket_count()), for encoders.
  [[nodiscard]] std::uint64_t count_at_index(std::size_t index) const noexcept {
    return counts_[index];
  }
  // One past the highest bucket with a count; 0 while empty.
  [[nodiscard]] std::size_t used_buckets() const noexcept;
  // Counts n values in bucket index, as its lowest value (for decoders).
  void record_index(std::size_t index, std::uint64_t n) noexcept {
    record_n(bucket_lowest(index), n);
  }
  // After decoding counts, puts back the exact min, max and sum that the
  // encoding did not carry. Only on a non-empty histogram.
  void restore_exact(std::uint64_t min, std::uint64_t max, long double sum) noexcept {
    if (total_ == 0) return;
    min_ = min;
    max_ = max;
    sum_ = sum;
  }

  // The bucket arithmetic, public for the unit test.
  [[nodiscard]] static std::size_t bucket_index(std::uint64_t value) noexcept;
  [[nodiscard]] static std::uint64_t bucket_lowest(std::size_t index) noexcept;
  [[nodiscard]] static std::uint64_t bucket_highest(std::size_t index) noexcept;
  [[nodiscard]] static std::size_t bucket_count() noexcept;

 private:
  std::vector<std::uint64_t> counts_;
  std::uint64_t total_ = 0;
  std::uint64_t min_ = UINT64_MAX;
  std::uint64_t max_ = 0;
  // A long double keeps the sum exact enough for the mean of billions of values.
  long double sum_ = 0;
};

}  // namespace inboxd::bench
