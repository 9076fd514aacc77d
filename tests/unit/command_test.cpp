#include <doctest/doctest.h>

#include "proto/command.hpp"

using namespace inboxd::proto;

TEST_CASE("verbs are case-insensitive") {
  CHECK(parse_command("mAiL FROM:<a@b>").v == verb::mail);
  CHECK(parse_command("mAiL FROM:<a@b>").arg == "FROM:<a@b>");
}
