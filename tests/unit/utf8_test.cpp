#include <doctest/doctest.h>

#include <string>

#include "proto/utf8.hpp"

using namespace inboxd::proto;

TEST_CASE("is_utf8_text takes well-formed UTF-8 of every length") {
  CHECK(is_utf8_text(""));
  CHECK(is_utf8_text("plain ascii"));
  CHECK(is_utf8_text("m\xC3\xBCnchen"));                  // ü, 2 octets
  CHECK(is_utf8_text("\xE2\x98\x83"));                     // U+2603, 3 octets
  CHECK(is_utf8_text("\xF0\x9F\x98\x80"));                 // U+1F600, 4 octets
  CHECK(is_utf8_text("\xC2\xA0"));                         // U+00A0, first past C1
  CHECK(is_utf8_text("\xED\x9F\xBF"));                     // U+D7FF, below the surrogates
  CHECK(is_utf8_text("\xEE\x80\x80"));                     // U+E000, above them
  CHECK(is_utf8_text("\xF4\x8F\xBF\xBF"));                 // U+10FFFF, the last
  CHECK(is_utf8_text("\xE0\xA0\x80"));                     // U+0800, shortest 3-octet
  CHECK(is_utf8_text("\xF0\x90\x80\x80"));                 // U+10000, shortest 4-octet
}

TEST_CASE("is_utf8_text refuses overlong forms, surrogates, and past U+10FFFF") {
  CHECK_FALSE(is_utf8_text("\xC0\xAF"));          // overlong '/'
  CHECK_FALSE(is_utf8_text("\xC1\xBF"));          // overlong
  CHECK_FALSE(is_utf8_text("\xE0\x80\xAF"));      // overlong '/' in 3 octets
  CHECK_FALSE(is_utf8_text("\xE0\x9F\xBF"));      // overlong U+07FF
  CHECK_FALSE(is_utf8_text("\xF0\x80\x80\xAF"));  // overlong '/' in 4 octets
  CHECK_FALSE(is_utf8_text("\xF0\x8F\xBF\xBF"));  // overlong U+FFFF
  CHECK_FALSE(is_utf8_text("\xED\xA0\x80"));      // U+D800, a surrogate
  CHECK_FALSE(is_utf8_text("\xED\xBF\xBF"));      // U+DFFF
  CHECK_FALSE(is_utf8_text("\xF4\x90\x80\x80"));  // U+110000
  CHECK_FALSE(is_utf8_text("\xF5\x80\x80\x80"));
  CHECK_FALSE(is_utf8_text("\xFF"));
  CHECK_FALSE(is_utf8_text("\xFE"));
}

TEST_CASE("is_utf8_text refuses truncated and stray sequences") {
  CHECK_FALSE(is_utf8_text("\x80"));                 // a lone continuation octet
  CHECK_FALSE(is_utf8_text("a\xBF"));
  CHECK_FALSE(is_utf8_text("\xC3"));                 // cut short at the end
  CHECK_FALSE(is_utf8_text("\xE2\x98"));
  CHECK_FALSE(is_utf8_text("\xF0\x9F\x98"));
  CHECK_FALSE(is_utf8_text("\xC3z"));                // a lead without its tail
  CHECK_FALSE(is_utf8_text("\xE2\x98z"));
  CHECK_FALSE(is_utf8_text("\xF0\x9F\x98\xC3\xBC"));
}

TEST_CASE("is_utf8_text refuses C0, DEL and C1 controls") {
  CHECK_FALSE(is_utf8_text(std::string("a\0b", 3)));
  CHECK_FALSE(is_utf8_text("a\tb"));
  CHECK_FALSE(is_utf8_text("a\r\nb"));
  CHECK_FALSE(is_utf8_text("\x1F"));
  CHECK_FALSE(is_utf8_text("\x7F"));
  CHECK_FALSE(is_utf8_text("\xC2\x80"));  // U+0080
  CHECK_FALSE(is_utf8_text("\xC2\x85"));  // U+0085, NEL
  CHECK_FALSE(is_utf8_text("\xC2\x9F"));  // U+009F
}

TEST_CASE("utf8_sequence gives the length of the sequence at the start") {
  CHECK(utf8_sequence("") == 0);
  CHECK(utf8_sequence("a") == 1);
  CHECK(utf8_sequence("\xC3\xBC rest") == 2);
  CHECK(utf8_sequence("\xE2\x98\x83") == 3);
  CHECK(utf8_sequence("\xF0\x9F\x98\x80") == 4);
  CHECK(utf8_sequence("\xC3") == 0);
}

TEST_CASE("is_ascii") {
  CHECK(is_ascii(""));
  CHECK(is_ascii("abc\x7F"));
  CHECK_FALSE(is_ascii("ab\x80"));
}

TEST_CASE("every one- and two-octet input is judged as a decoder would") {
  // A reference: decode by hand, then apply the rules.
  auto reference = [](const std::string& s) {
    std::size_t i = 0;
    while (i < s.size()) {
      auto c = static_cast<unsigned char>(s[i]);
      std::size_t n = c < 0x80 ? 1 : c >= 0xC0 && c < 0xE0 ? 2 : c >= 0xE0 && c < 0xF0 ? 3
                                   : c >= 0xF0 && c < 0xF8 ? 4 : 0;
      if (n == 0 || i + n > s.size()) return false;
      unsigned cp = n == 1 ? c : c & (0x7F >> n);
      for (std::size_t k = 1; k < n; ++k) {
        auto t = static_cast<unsigned char>(s[i + k]);
        if ((t & 0xC0) != 0x80) return false;
        cp = cp << 6 | (t & 0x3F);
      }
      static constexpr unsigned min[] = {0, 0, 0x80, 0x800, 0x10000};
      if (cp < min[n] || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) return false;
      if (cp < 0x20 || (cp >= 0x7F && cp <= 0x9F)) return false;
      i += n;
    }
    return true;
  };
  for (int a = 0; a < 256; ++a) {
    std::string one(1, static_cast<char>(a));
    REQUIRE(is_utf8_text(one) == reference(one));
    for (int b = 0; b < 256; ++b) {
      std::string two{static_cast<char>(a), static_cast<char>(b)};
      REQUIRE(is_utf8_text(two) == reference(two));
    }
  }
  // Three octets, over the lead octets that start one and every second octet.
  for (int a = 0xE0; a < 0x100; ++a)
    for (int b = 0x70; b < 0xC8; ++b) {
      std::string three{static_cast<char>(a), static_cast<char>(b), '\x80'};
      REQUIRE(is_utf8_text(three) == reference(three));
      std::string four{static_cast<char>(a), static_cast<char>(b), '\x80', '\xBF'};
      REQUIRE(is_utf8_text(four) == reference(four));
    }
}
