// The password file's checking queue, on a real loop: a few hashes at once,
// a bounded FIFO, busy past it inside check(), cancel of a waiting check,
// one queue for a loop across a reload.
#include <doctest/doctest.h>
#include <uv.h>

#include <cstdio>
#include <fstream>
#include <memory>
#include <string>
#include <vector>

#include "inboxd/auth.hpp"

namespace {

struct recording_listener final : inboxd::auth_listener {
  void auth_checked(inboxd::auth_result r) noexcept override { results.push_back(r); }
  std::vector<inboxd::auth_result> results;
};

std::string users_file() {
  char path[] = "/tmp/inboxd-users-XXXXXX";
  int fd = ::mkstemp(path);
  REQUIRE(fd >= 0);
  ::close(fd);
  std::ofstream(path) << "alice:" << inboxd::hash_password("pw") << "\n";
  return path;
}

}  // namespace

TEST_CASE("password checks: a bounded queue, busy past it, cancel takes a waiting one out") {
  uv_loop_t loop;
  REQUIRE(uv_loop_init(&loop) == 0);
  std::string path = users_file();
  std::string error;
  auto auth = inboxd::load_password_file(&loop, path, error);
  REQUIRE(auth);
  constexpr int n = 100;  // more than may run (2) plus wait (64)
  std::vector<recording_listener> listeners(n);
  std::vector<inboxd::auth_check*> checks(n);
  for (int i = 0; i < n; ++i)
    checks[i] = auth->check(i % 2 ? "alice" : "nobody", i % 4 == 1 ? "pw" : "no", listeners[i]);
  int busy = 0;
  for (int i = 0; i < n; ++i) {
    if (checks[i]) {
      CHECK(listeners[i].results.empty());
      continue;
    }
    // The answer came inside check(), and it is busy.
    REQUIRE(listeners[i].results.size() == 1);
    CHECK(listeners[i].results[0] == inboxd::auth_result::busy);
    ++busy;
  }
  CHECK(busy == n - 66);
  // The refusals are the last ones: the queue is first come, first served.
  for (int i = 0; i < 66; ++i) CHECK(checks[i] != nullptr);

  // A reload's new authenticator shares the loop's queue, so it is full too;
  // then the old one goes while its checks are in flight.
  auto reloaded = inboxd::load_password_file(&loop, path, error);
  REQUIRE(reloaded);
  recording_listener late;
  CHECK(reloaded->check("alice", "pw", late) == nullptr);
  REQUIRE(late.results.size() == 1);
  CHECK(late.results[0] == inboxd::auth_result::busy);
  auth.reset();

  // Cancel a running check (0) and the waiting ones 10..59: no answer comes.
  checks[0]->cancel();
  for (int i = 10; i < 60; ++i) checks[i]->cancel();
  uv_run(&loop, UV_RUN_DEFAULT);
  for (int i = 0; i < 66; ++i) {
    bool cancelled = i == 0 || (i >= 10 && i < 60);
    INFO("check " << i);
    REQUIRE(listeners[i].results.size() == (cancelled ? 0U : 1U));
    if (!cancelled)
      CHECK(listeners[i].results[0] ==
            (i % 4 == 1 ? inboxd::auth_result::ok : inboxd::auth_result::failed));
  }
  // Room again once the queue drained.
  recording_listener after;
  auto* check = reloaded->check("alice", "pw", after);
  CHECK(check != nullptr);
  uv_run(&loop, UV_RUN_DEFAULT);
  REQUIRE(after.results.size() == 1);
  CHECK(after.results[0] == inboxd::auth_result::ok);
  CHECK(uv_loop_close(&loop) == 0);
  std::remove(path.c_str());
}
