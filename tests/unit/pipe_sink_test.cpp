// The pipe sink on a real libuv loop: each test ends with the loop empty
// (every handle of every delivery closed) and closed, libuv's own rule.
#include <uv.h>

#include <doctest/doctest.h>

#include <cerrno>
#include <memory>
#include <string>
#include <vector>

#include "inboxd/sinks.hpp"

using namespace inboxd;

namespace {

struct pipe_loop {
  pipe_loop() { uv_loop_init(&loop); }
  ~pipe_loop() { CHECK(uv_loop_close(&loop) == 0); }
  uv_loop_t loop{};
};

struct pipe_listener final : delivery_listener {
  void writable() noexcept override { ++writables; }
  void committed(std::span<const store_outcome> o) noexcept override {
    ++commits;
    for (const store_outcome& x : o) {
      results.push_back(x.result);
      replies.emplace_back(x.reply);
      errors.push_back(x.error);
    }
  }
  int writables = 0;
  int commits = 0;
  std::vector<store_result> results;
  std::vector<std::string> replies;
  std::vector<int> errors;
};

struct pipe_message {
  std::vector<recipient> rcpts = std::vector<recipient>(2);
  envelope env;
  pipe_message() {
    rcpts[0].address = "a@ex.org";
    rcpts[1].address = "b@ex.org";
    env.queue_id = "Q1";
    env.reverse_path = "s@ex.net";
    env.recipients = rcpts;
  }
};

std::unique_ptr<sink> pipe_for(uv_loop_t* loop, std::string command, std::size_t max = 100,
                               std::shared_ptr<pipe_slots> slots = {}) {
  std::string error;
  auto s = open_pipe_sink(
      loop, {.command = std::move(command), .max_running = max, .slots = std::move(slots)}, error);
  REQUIRE_MESSAGE(s, error);
  return s;
}

// One whole message through s, the loop run until it is empty; what the
// session would have seen.
pipe_listener deliver_one(pipe_loop& l, sink& s, std::initializer_list<std::string_view> pieces) {
  pipe_message m;
  pipe_listener r;
  delivery* d = s.begin(m.env, r);
  for (std::string_view piece : pieces) CHECK(d->write(piece));
  d->commit();
  uv_run(&l.loop, UV_RUN_DEFAULT);
  CHECK(r.commits == 1);
  return r;
}

// With one program at a time: a message begun on `one`, then one on `two`
// (or on `one` again when two is null), which waits, holds a chunk and
// pauses, and runs once the first is done.
void second_waits_for_first(pipe_loop& l, std::unique_ptr<sink> one, std::unique_ptr<sink> two) {
  pipe_message m;
  pipe_listener first, second;
  delivery* a = one->begin(m.env, first);
  if (two) one.reset();  // A reload: the old sink goes while its delivery runs.
  delivery* b = (two ? two : one)->begin(m.env, second);
  CHECK_FALSE(b->write(std::string(64 * 1024, 'x')));  // No child yet: one chunk, then a pause.
  a->write("x\n");
  a->commit();
  while (second.writables == 0 && uv_run(&l.loop, UV_RUN_ONCE) != 0) {
  }
  CHECK(first.commits == 1);
  CHECK(second.writables == 1);  // Its child started and took the chunk.
  b->commit();
  uv_run(&l.loop, UV_RUN_DEFAULT);
  CHECK(second.results[0] == store_result::stored);
}

}  // namespace

TEST_CASE("pipe sink: exit 0 is stored for every recipient, and the loop ends empty") {
  pipe_loop l;
  auto s = pipe_for(&l.loop, "sh -c 'test \"$(cat)\" = \"$(printf \"Subject: x\\n\\nhi\")\"'");
  pipe_listener r = deliver_one(l, *s, {"Subject: x\n\n", "hi\n"});
  CHECK(r.results == std::vector{store_result::stored, store_result::stored});
  CHECK(r.replies[0] == "pipe: sh exit status 0");
}

TEST_CASE("pipe sink: exit 75 is temporary, another status permanent, with stderr's line") {
  pipe_loop l;
  for (auto [status, want] : {std::pair{"75", store_result::temporary_fail},
                              std::pair{"1", store_result::permanent_fail}}) {
    auto s = pipe_for(&l.loop,
                      std::string("sh -c 'cat >/dev/null; echo oops >&2; exit ") + status + "'");
    pipe_listener r = deliver_one(l, *s, {"x\n"});
    REQUIRE(r.commits == 1);
    CHECK(r.results[0] == want);
    CHECK(r.replies[0] == std::string("pipe: sh exit status ") + status + ": oops");
  }
}

TEST_CASE("pipe sink: a program that cannot run is a temporary failure with its errno") {
  pipe_loop l;
  auto s = pipe_for(&l.loop, "/nonexistent/program");
  pipe_listener r = deliver_one(l, *s, {"x\n"});
  REQUIRE(r.commits == 1);
  CHECK(r.results[0] == store_result::temporary_fail);
  CHECK(r.errors[0] == ENOENT);
}

TEST_CASE("pipe sink: abort() kills a program still reading, and nothing calls back") {
  pipe_loop l;
  auto s = pipe_for(&l.loop, "cat");
  pipe_message m;
  pipe_listener r;
  delivery* d = s->begin(m.env, r);
  d->write("half a message\n");
  uv_run(&l.loop, UV_RUN_NOWAIT);
  d->abort();
  uv_run(&l.loop, UV_RUN_DEFAULT);  // Returns: the child is gone, its handles closed.
  CHECK(r.commits == 0);
}

TEST_CASE("pipe sink: a delivery outlives its sink (a reload)") {
  pipe_loop l;
  auto s = pipe_for(&l.loop, "sh -c 'cat >/dev/null'");
  pipe_message m;
  pipe_listener r;
  delivery* d = s->begin(m.env, r);
  s.reset();
  d->write("x\n");
  d->commit();
  uv_run(&l.loop, UV_RUN_DEFAULT);
  CHECK(r.results == std::vector{store_result::stored, store_result::stored});
}

TEST_CASE("pipe sink: past --pipe-max a message waits, its client paused past a chunk") {
  pipe_loop l;
  second_waits_for_first(l, pipe_for(&l.loop, "sh -c 'cat >/dev/null'", 1), nullptr);
}

TEST_CASE("pipe sink: a bad command is refused when the sink is opened") {
  pipe_loop l;
  std::string error;
  CHECK_FALSE(open_pipe_sink(&l.loop, {.command = "sh -c 'open"}, error));
  CHECK(error == "pipe-command: the command has an unterminated '");
}

TEST_CASE("pipe sink: sinks that share their slots (a reload) share --pipe-max") {
  pipe_loop l;
  auto slots = make_pipe_slots();
  second_waits_for_first(l, pipe_for(&l.loop, "sh -c 'cat >/dev/null'", 1, slots),
                         pipe_for(&l.loop, "sh -c 'cat >/dev/null'", 1, slots));
}
