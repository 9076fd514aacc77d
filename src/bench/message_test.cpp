// Unit tests of inboxd-bench's wire pieces: reply lines, message text, templates.
#define DOCTEST_CONFIG_IMPLEMENT_WITH_MAIN
#include <doctest/doctest.h>

#include <string>

#include "bench/message.hpp"
#include "bench/reply.hpp"

using namespace inboxd::bench;

namespace {

std::string whole(const message_text& t, std::size_t i) {
  std::string out;
  for (auto s : t.slices(i)) out += s;
  return out;
}

}  // namespace

TEST_CASE("a reply line needs its line ending") {
  reply_line line;
  std::size_t used = 0;
  CHECK(parse_reply_line("250 ok", line, used) == reply_status::incomplete);
  CHECK(parse_reply_line("", line, used) == reply_status::incomplete);
}

TEST_CASE("last and continued reply lines") {
  reply_line line;
  std::size_t used = 0;
  REQUIRE(parse_reply_line("250-PIPELINING\r\n250 OK\r\n", line, used) == reply_status::complete);
  CHECK(line.code == 250);
  CHECK_FALSE(line.last);
  CHECK(line.text == "PIPELINING");
  CHECK(used == 16);
  REQUIRE(parse_reply_line("354\r\n", line, used) == reply_status::complete);
  CHECK(line.code == 354);
  CHECK(line.last);
  REQUIRE(parse_reply_line("451 4.3.0 try later\n", line, used) == reply_status::complete);
  CHECK(line.code == 451);
  CHECK(line.text == "4.3.0 try later");
}

TEST_CASE("what is not a reply line") {
  reply_line line;
  std::size_t used = 0;
  CHECK(parse_reply_line("HTTP/1.1 400\r\n", line, used) == reply_status::malformed);
  CHECK(parse_reply_line("25\r\n", line, used) == reply_status::malformed);
  CHECK(parse_reply_line("250x\r\n", line, used) == reply_status::malformed);
  CHECK(parse_reply_line("150 no\r\n", line, used) == reply_status::malformed);
  CHECK(parse_reply_line("650 no\r\n", line, used) == reply_status::malformed);
}

TEST_CASE("EHLO keywords match whole words, any case") {
  CHECK(ehlo_keyword_is("PIPELINING", "PIPELINING"));
  CHECK(ehlo_keyword_is("pipelining", "PIPELINING"));
  CHECK_FALSE(ehlo_keyword_is("PIPELININGX", "PIPELINING"));
  CHECK(ehlo_keyword_is("SIZE 10240000", "SIZE"));
  CHECK_FALSE(ehlo_keyword_is("PIPE", "PIPELINING"));
}

TEST_CASE("message text has the asked size, CRLF lines, and no line starting with a dot") {
  std::vector<std::size_t> sizes;
  for (std::size_t s = 0; s < 1000; ++s) sizes.push_back(s);
  sizes.push_back(1024);
  sizes.push_back(65536);
  sizes.push_back(1 << 20);
  message_text t(sizes);
  for (std::size_t i = 0; i < sizes.size(); ++i) {
    std::string m = whole(t, i);
    REQUIRE(m.size() >= 3);
    REQUIRE(m.substr(m.size() - 3) == ".\r\n");
    std::string text = m.substr(0, m.size() - 3);
    CHECK(text.size() == t.size(i));
    if (sizes[i] >= message_text::min_size() + 3) CHECK(t.size(i) == sizes[i]);
    REQUIRE(text.size() >= 2);
    CHECK(text.substr(text.size() - 2) == "\r\n");
    std::size_t start = 0;
    while (start < text.size()) {
      std::size_t end = text.find("\r\n", start);
      REQUIRE(end != std::string::npos);
      CHECK(end - start <= 78);
      if (end > start) CHECK(text[start] != '.');
      CHECK(text.substr(start, end - start).find_first_of("\r\n") == std::string::npos);
      start = end + 2;
    }
  }
}

TEST_CASE("address templates fill {n}, {c} and {r}") {
  std::string error;
  CHECK(address_template::parse("u{n}.{c}.{r}@x.example", error));
  address_template t("u{n}.{c}.{r}@x.example");
  std::string out = "<";
  t.append(out, 42, 3, 1);
  CHECK(out == "<u42.3.1@x.example");
  address_template plain("a@b.example");
  out.clear();
  plain.append(out, 1, 2, 3);
  CHECK(out == "a@b.example");
}

TEST_CASE("bad address templates are refused") {
  std::string error;
  CHECK_FALSE(address_template::parse("", error));
  CHECK_FALSE(address_template::parse("a b@c", error));
  CHECK_FALSE(address_template::parse("<a@b>", error));
  CHECK_FALSE(address_template::parse("a{x}@b", error));
  CHECK_FALSE(address_template::parse("a{n@b", error));
}
