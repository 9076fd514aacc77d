// Unit tests of bench::histogram: bucket arithmetic, precision, percentiles.
#define DOCTEST_CONFIG_IMPLEMENT_WITH_MAIN
#include <doctest/doctest.h>

#include <cstdint>

#include "bench/histogram.hpp"

using inboxd::bench::histogram;

TEST_CASE("an empty histogram reports zeros") {
  histogram h;
  CHECK(h.count() == 0);
  CHECK(h.min() == 0);
  CHECK(h.max() == 0);
  CHECK(h.mean() == 0.0);
  CHECK(h.value_at_percentile(99) == 0);
}

TEST_CASE("small values are counted exactly") {
  for (std::uint64_t v = 0; v < 2 * histogram::sub_bucket_count; ++v) {
    CHECK(histogram::bucket_index(v) == v);
    CHECK(histogram::bucket_lowest(v) == v);
    CHECK(histogram::bucket_highest(v) == v);
  }
}

TEST_CASE("buckets tile the range without gaps or overlaps") {
  for (std::size_t i = 0; i + 1 < histogram::bucket_count(); ++i) {
    REQUIRE(histogram::bucket_lowest(i) <= histogram::bucket_highest(i));
    REQUIRE(histogram::bucket_highest(i) + 1 == histogram::bucket_lowest(i + 1));
  }
  CHECK(histogram::bucket_highest(histogram::bucket_count() - 1) == histogram::max_trackable);
}

TEST_CASE("every value falls in the bucket whose bounds hold it") {
  for (std::uint64_t v = 1; v < histogram::max_trackable; v = v * 3 / 2 + 1) {
    std::size_t i = histogram::bucket_index(v);
    CHECK(histogram::bucket_lowest(i) <= v);
    CHECK(v <= histogram::bucket_highest(i));
  }
}

TEST_CASE("values sharing a bucket differ by less than 1/128") {
  for (std::size_t i = 1; i < histogram::bucket_count(); ++i) {
    double spread = static_cast<double>(histogram::bucket_highest(i) - histogram::bucket_lowest(i));
    CHECK(spread / static_cast<double>(histogram::bucket_lowest(i)) < 1.0 / 128);
  }
}

TEST_CASE("min, max and mean are exact") {
  histogram h;
  h.record(1000);
  h.record(3000);
  h.record(123456);
  CHECK(h.count() == 3);
  CHECK(h.min() == 1000);
  CHECK(h.max() == 123456);
  CHECK(h.mean() == doctest::Approx((1000 + 3000 + 123456) / 3.0));
}

TEST_CASE("percentiles of a uniform 1..100000 run are within 1%") {
  histogram h;
  for (std::uint64_t v = 1; v <= 100000; ++v) h.record(v);
  for (double p : {50.0, 90.0, 99.0, 99.9}) {
    double exact = p / 100 * 100000;
    auto got = static_cast<double>(h.value_at_percentile(p));
    CHECK(got >= exact);
    CHECK(got <= exact * 1.01);
  }
  CHECK(h.value_at_percentile(100) == 100000);
  CHECK(h.value_at_percentile(0) == 1);
}

TEST_CASE("one slow outlier shows at p99.9 and max, not at p99") {
  histogram h;
  h.record_n(100, 999);
  h.record(2'000'000);
  CHECK(h.value_at_percentile(99) == 100);
  CHECK(h.value_at_percentile(99.9) == 100);
  CHECK(h.value_at_percentile(99.99) == 2'000'000);
  CHECK(h.max() == 2'000'000);
}

TEST_CASE("a percentile is the highest value of its bucket, within 1/128") {
  histogram h;
  h.record_n(500, 10);
  h.record(100'000);
  CHECK(h.value_at_percentile(50) >= 500);
  CHECK(h.value_at_percentile(50) <= 500 + 500 / 128);
}

TEST_CASE("percentiles never exceed the largest value recorded") {
  histogram h;
  h.record(1'000'001);
  CHECK(h.value_at_percentile(50) == 1'000'001);
}

TEST_CASE("values past the trackable range land in the last bucket, max stays exact") {
  histogram h;
  h.record(1);
  h.record(histogram::max_trackable * 4);
  CHECK(h.count() == 2);
  CHECK(h.max() == histogram::max_trackable * 4);
  CHECK(h.value_at_percentile(50) == 1);
  CHECK(h.value_at_percentile(100) == histogram::max_trackable * 4);
  CHECK(histogram::bucket_index(histogram::max_trackable * 4) == histogram::bucket_count() - 1);
}

TEST_CASE("merge adds counts, and reset empties") {
  histogram a, b;
  a.record_n(100, 10);
  b.record_n(10000, 10);
  a.merge(b);
  CHECK(a.count() == 20);
  CHECK(a.min() == 100);
  CHECK(a.max() == 10000);
  CHECK(a.value_at_percentile(50) == 100);
  CHECK(a.value_at_percentile(60) >= 10000);
  a.reset();
  CHECK(a.count() == 0);
  CHECK(a.max() == 0);
  CHECK(a.value_at_percentile(50) == 0);
}
