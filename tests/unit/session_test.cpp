#include <doctest/doctest.h>

#include "proto/session.hpp"

TEST_CASE("session compiles") { CHECK(true); }
