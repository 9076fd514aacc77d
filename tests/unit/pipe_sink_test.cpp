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

std::unique_ptr<sink> pipe_for(uv_loop_t* loop, std::string command, std::size_t max = 100) {
  std::string error;
  auto s = open_pipe_sink(loop, {.command = std::move(command), .max_running = max}, error);
  REQUIRE_MESSAGE(s, error);
  return s;
}

}  // namespace

TEST_CASE("pipe sink: exit 0 is stored for every recipient, and the loop ends empty") {
  pipe_loop l;
  auto s = pipe_for(&l.loop, "sh -c 'test \"$(cat)\" = \"$(printf \"Subject: x\\n\\nhi\")\"'");
  pipe_message m;
  pipe_listener r;
  delivery* d = s->begin(m.env, r);
  CHECK(d->write("Subject: x\n\n"));
  CHECK(d->write("hi\n"));
  d->commit();
  uv_run(&l.loop, UV_RUN_DEFAULT);
  CHECK(r.commits == 1);
  CHECK(r.results == std::vector{store_result::stored, store_result::stored});
  CHECK(r.replies[0] == "pipe: sh exit status 0");
}

TEST_CASE("pipe sink: exit 75 is temporary, another status permanent, with stderr's line") {
  pipe_loop l;
  for (auto [status, want] : {std::pair{"75", store_result::temporary_fail},
                              std::pair{"1", store_result::permanent_fail}}) {
    std::string error;
    auto one = open_pipe_sink(
        &l.loop,
        {.command = std::string("sh -c 'cat >/dev/null; echo oops >&2; exit ") + status + "'"},
        error);
    REQUIRE(one);
    pipe_message m;
    pipe_listener r;
    delivery* d = one->begin(m.env, r);
    d->write("x\n");
    d->commit();
    uv_run(&l.loop, UV_RUN_DEFAULT);
    REQUIRE(r.commits == 1);
    CHECK(r.results[0] == want);
    CHECK(r.replies[0] == std::string("pipe: sh exit status ") + status + ": oops");
  }
}

TEST_CASE("pipe sink: a program that cannot run is a temporary failure with its errno") {
  pipe_loop l;
  auto s = pipe_for(&l.loop, "/nonexistent/program");
  pipe_message m;
  pipe_listener r;
  delivery* d = s->begin(m.env, r);
  CHECK(d->write("x\n"));
  d->commit();
  uv_run(&l.loop, UV_RUN_DEFAULT);
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
  auto s = pipe_for(&l.loop, "sh -c 'cat >/dev/null'", 1);
  pipe_message m;
  pipe_listener first, second;
  delivery* a = s->begin(m.env, first);
  delivery* b = s->begin(m.env, second);
  std::string chunk(64 * 1024, 'x');
  CHECK_FALSE(b->write(chunk));  // No child yet: it holds one chunk, then pauses.
  a->write("x\n");
  a->commit();
  uv_run(&l.loop, UV_RUN_ONCE);
  while (second.writables == 0 && uv_run(&l.loop, UV_RUN_ONCE) != 0) {
  }
  CHECK(first.commits == 1);
  CHECK(second.writables == 1);  // Its child started and took the chunk.
  b->commit();
  uv_run(&l.loop, UV_RUN_DEFAULT);
  CHECK(second.results[0] == store_result::stored);
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
  std::string error;
  auto old_sink = open_pipe_sink(
      &l.loop, {.command = "sh -c 'cat >/dev/null'", .max_running = 1, .slots = slots}, error);
  auto new_sink = open_pipe_sink(
      &l.loop, {.command = "sh -c 'cat >/dev/null'", .max_running = 1, .slots = slots}, error);
  REQUIRE(old_sink);
  REQUIRE(new_sink);
  pipe_message m;
  pipe_listener first, second;
  delivery* a = old_sink->begin(m.env, first);
  old_sink.reset();
  delivery* b = new_sink->begin(m.env, second);
  CHECK_FALSE(b->write(std::string(64 * 1024, 'x')));  // It waits for the old one's child.
  a->write("x\n");
  a->commit();
  while (second.writables == 0 && uv_run(&l.loop, UV_RUN_ONCE) != 0) {
  }
  CHECK(first.commits == 1);
  CHECK(second.writables == 1);
  b->commit();
  uv_run(&l.loop, UV_RUN_DEFAULT);
  CHECK(second.results[0] == store_result::stored);
}
