#include <doctest/doctest.h>

#include <string>

#include "harness.hpp"
#include "store/files.hpp"
#include "store/mboxrd.hpp"

using inboxd::recipient;
using inboxd::store::expand_path;
using inboxd::store::mboxrd_quoter;
using inboxd::test::same_when_dribbled;

namespace {

std::string quoted(std::string_view message) {
  return same_when_dribbled(message, [](const auto& pieces) {
    mboxrd_quoter q;
    std::string out;
    for (auto piece : pieces) q.append(out, piece);
    q.flush(out);
    return out;
  });
}

}  // namespace

TEST_CASE("mboxrd quotes every >*From line with one more >") {
  CHECK(quoted("From a\nx From b\n>From c\n>>From d\nFromage\n") ==
        ">From a\nx From b\n>>From c\n>>>From d\nFromage\n");
}

TEST_CASE("mboxrd leaves other lines alone, even ones that start like From") {
  CHECK(quoted(">Fro\nFrom\n>\n\nFrom") == ">Fro\nFrom\n>\n\nFrom");
}

TEST_CASE("mboxrd quotes a From line at the very end without a newline") {
  CHECK(quoted("a\nFrom x") == "a\n>From x");
}

TEST_CASE("path templates put each recipient's names in as one safe component") {
  recipient r{"a@b", "alice", "example.com"};
  CHECK(expand_path("var/{domain}/{user}/Maildir", r) == "var/example.com/alice/Maildir");
  recipient evil{"x", "../../etc/passwd", "a/b"};
  CHECK(expand_path("var/{domain}/{user}", evil) == "var/a%2Fb/%2E.%2F..%2Fetc%2Fpasswd");
  recipient dot{"x", ".", ""};
  CHECK(expand_path("{domain}/{user}", dot) == "%00/%2E");
}
