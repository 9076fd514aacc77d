// bench/micro/proto_bench.cpp: throughput of src/proto alone, without sockets.
//
// Two workloads, each a fixed pipelined transcript built once: EHLO, then many
// transactions (MAIL, RCPT, DATA, the text, "."), then QUIT, all in one big
// buffer, with bodies of 1 KiB or 64 KiB (lines of 76 characters, one in 50
// dot-stuffed). Two measurements over each:
//
// - session: a proto::session with a null sink and null events is fed the
//   transcript through a 64 KiB read buffer, as net/connection feeds it (copy
//   the next bytes in, feed, keep what was not consumed, repeat). The copy
//   stands in for recv(); the replies are taken and dropped after each feed.
// - decoder: proto::data_decoder alone over the same bodies (wire form, up to
//   and including <CRLF>.<CRLF>), through the same 64 KiB buffer.
//
// Figures are MB/s (10^6 bytes of transcript or wire body per second) and
// transactions/s; the best of --reps runs of at least --seconds each.
//
// Then the hostile shapes (issue 9): bodies and lines shaped to hit slow
// paths (a long run of '>' then "From ", ">From " lines, a run of bare CRs,
// one huge line, many dot-stuffed lines, many tiny lines, a quoted local
// part full of escapes, a long address literal, many ESMTP parameters), each
// at 16 KiB, 64 KiB, 1 MiB and 8 MiB, through every per-byte path on the
// loop: the line reader, the data decoder, the mboxrd quoter, the command
// parser, base64 (SASL), printable() (log escaping) and the whole session.
// Each figure is MB/s of that path's input, timed in CPU time of the
// thread (the machine may be busy). Every path must cost O(input):
// a figure that falls as the size grows is a super-linear path, which one
// client can use to stall every other (DESIGN.md principle 5); the table
// marks it. A path is not run at the next size when, even linear, it
// would take over 5 s there (a quadratic one would take far longer).
// --no-hostile leaves this part out, --hostile-only runs it alone, --shape
// NAME runs one shape.
//
// Then heap allocations (issue 10): this program replaces the global
// operator new and delete (every form) with counting ones, and counts, after a
// warm-up pass, the allocations the session makes per message (the 1 KiB
// workload: MAIL, RCPT, DATA, the text, ".") and per command (NOOP, RSET,
// and a MAIL, RCPT, RSET cycle). Each figure is the difference between a
// pass of 2N and one of N units, over N: what the session costs to set up,
// greet and close is not in it. The goal: at most two per message, none per
// command, long names too (a std::string holds 15 bytes in place, and a
// cycle with longer names shows what short ones hide). The bench's own sink
// allocates nothing; the figure "with inboxd::null_sink" adds what `inboxd
// --sink null`'s sink does per message.
// Then the same counts on hostile shapes (issue 10): long, quoted and UTF-8
// recipients, U-label domains, aliases, 1-byte BDAT chunks, a dripped BDAT
// LAST, bodies of only CRLFs or only dot-stuffed lines, each with its CPU
// time per RCPT, chunk or byte at a small and a large size, so that a
// super-linear path shows. --check makes the counts a test (exit 1 past the
// goal); --callgrind N runs one session pass of N messages for callgrind.
// --alloc-trace N prints a backtrace (raw frames, backtrace_symbols_fd) of
// each of the first N allocations of a steady-state pass of each workload;
// `addr2line -Cfipe BUILD/bench/micro/proto-bench ADDR...` (a build with
// debug info: -Dbuildtype=debugoptimized) names the lines.
//
// --json prints one JSON object. A benchmark, never a timed test (STYLE.md).
#include <execinfo.h>
#include <fmt/format.h>

#include <algorithm>
#include <array>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <memory>
#include <new>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "inboxd/config.hpp"
#include "inboxd/policy.hpp"
#include "inboxd/sink.hpp"
#include "inboxd/sinks.hpp"
#include "proto/base64.hpp"
#include "proto/command.hpp"
#include "proto/data_decoder.hpp"
#include "proto/line_reader.hpp"
#include "proto/session.hpp"
#include "proto/settings.hpp"
#include "store/mboxrd.hpp"

// ---- The counting allocator (issue 10) ----
//
// Every operator new of this program counts here; the program is one
// thread, and thread_local keeps it right if that changes. malloc itself is
// not counted: src/proto allocates through operator new (strings, vectors,
// fmt's buffers), and glibc's own mallocs (stdio, backtrace) are not ours.
namespace alloc_count {
thread_local std::uint64_t count = 0;
thread_local std::uint64_t bytes = 0;
// --alloc-trace: how many more allocations get a backtrace, and a guard so
// that the trace's own work is never traced.
thread_local int trace_left = 0;
thread_local bool tracing = false;

void trace(std::size_t size) noexcept {
  tracing = true;
  void* frames[24];
  int n = backtrace(frames, 24);
  std::fprintf(stderr, "proto-bench: allocation of %zu bytes:\n", size);
  backtrace_symbols_fd(frames, n, 2);
  tracing = false;
}

void* allocate(std::size_t size, std::size_t align = 0) {
  ++count;
  bytes += size;
  if (trace_left > 0 && !tracing) {
    --trace_left;
    trace(size);
  }
  if (size == 0) size = 1;
  void* p = nullptr;
  if (align > alignof(std::max_align_t)) {
    // aligned_alloc wants a size that is a multiple of the alignment.
    p = std::aligned_alloc(align, (size + align - 1) / align * align);
  } else {
    p = std::malloc(size);
  }
  return p;
}

// Out of line, so that the compiler does not pair an inlined free() with
// an operator new and warn (-Wmismatched-new-delete).
[[gnu::noinline]] void release(void* p) noexcept {
  std::free(p);
}
}  // namespace alloc_count

void* operator new(std::size_t n) {
  if (void* p = alloc_count::allocate(n)) return p;
  throw std::bad_alloc();
}
void* operator new[](std::size_t n) {
  if (void* p = alloc_count::allocate(n)) return p;
  throw std::bad_alloc();
}
void* operator new(std::size_t n, const std::nothrow_t&) noexcept {
  return alloc_count::allocate(n);
}
void* operator new[](std::size_t n, const std::nothrow_t&) noexcept {
  return alloc_count::allocate(n);
}
void* operator new(std::size_t n, std::align_val_t a) {
  if (void* p = alloc_count::allocate(n, static_cast<std::size_t>(a))) return p;
  throw std::bad_alloc();
}
void* operator new[](std::size_t n, std::align_val_t a) {
  if (void* p = alloc_count::allocate(n, static_cast<std::size_t>(a))) return p;
  throw std::bad_alloc();
}
void* operator new(std::size_t n, std::align_val_t a, const std::nothrow_t&) noexcept {
  return alloc_count::allocate(n, static_cast<std::size_t>(a));
}
void* operator new[](std::size_t n, std::align_val_t a, const std::nothrow_t&) noexcept {
  return alloc_count::allocate(n, static_cast<std::size_t>(a));
}
void operator delete(void* p) noexcept {
  alloc_count::release(p);
}
void operator delete[](void* p) noexcept {
  alloc_count::release(p);
}
void operator delete(void* p, std::size_t) noexcept {
  alloc_count::release(p);
}
void operator delete[](void* p, std::size_t) noexcept {
  alloc_count::release(p);
}
void operator delete(void* p, const std::nothrow_t&) noexcept {
  alloc_count::release(p);
}
void operator delete[](void* p, const std::nothrow_t&) noexcept {
  alloc_count::release(p);
}
void operator delete(void* p, std::align_val_t) noexcept {
  alloc_count::release(p);
}
void operator delete[](void* p, std::align_val_t) noexcept {
  alloc_count::release(p);
}
void operator delete(void* p, std::size_t, std::align_val_t) noexcept {
  alloc_count::release(p);
}
void operator delete[](void* p, std::size_t, std::align_val_t) noexcept {
  alloc_count::release(p);
}
void operator delete(void* p, std::align_val_t, const std::nothrow_t&) noexcept {
  alloc_count::release(p);
}
void operator delete[](void* p, std::align_val_t, const std::nothrow_t&) noexcept {
  alloc_count::release(p);
}

namespace {

using namespace inboxd;
using clock_type = std::chrono::steady_clock;

// The CPU time of this thread: the hostile shapes are timed with it, so
// that a busy machine taking the CPU away mid-pass does not read as a path
// slowing down with size.
struct cpu_clock {
  using duration = std::chrono::nanoseconds;
  using rep = duration::rep;
  using period = duration::period;
  using time_point = std::chrono::time_point<cpu_clock>;
  [[maybe_unused]] static constexpr bool is_steady = true;
  static time_point now() noexcept {
    timespec ts{};
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return time_point(duration(std::int64_t{ts.tv_sec} * 1'000'000'000 + ts.tv_nsec));
  }
};

constexpr std::size_t read_buffer_size = 64 * 1024;

// Counts and discards, committing at once (the sink of `inboxd --sink null`
// does the same, but lives in libinboxd, which links libuv). It allocates
// nothing per message, so that the allocation counts are the session's own.
class bench_sink final : public sink {
 public:
  std::uint64_t messages = 0;
  std::uint64_t bytes = 0;

  delivery* begin(const envelope& env, delivery_listener& listener) override {
    results_.assign(env.recipients.size(), store_outcome{});  // room kept from the last one
    open_.emplace(*this, listener);
    return &*open_;
  }

 private:
  class bench_delivery final : public delivery {
   public:
    bench_delivery(bench_sink& s, delivery_listener& l) : sink_(s), listener_(l) {}
    bool write(std::string_view b) override {
      sink_.bytes += b.size();
      return true;
    }
    void commit() override {
      ++sink_.messages;
      listener_.committed(sink_.results_);
    }
    void abort() noexcept override {}

   private:
    bench_sink& sink_;
    delivery_listener& listener_;
  };
  std::vector<store_outcome> results_;
  // One delivery at a time: a session holds at most one open transaction.
  std::optional<bench_delivery> open_;
};

class null_events final : public proto::session_events {
 public:
  void session_ready() noexcept override {}
  void session_log(log_level, std::string_view) noexcept override {}
  void session_sleep(std::uint32_t) noexcept override {}
};

// Wire form of one body of about `size` bytes, ending with <CRLF>.<CRLF>.
std::string make_body(std::size_t size) {
  std::string b =
      "From: bench <bench@client.example>\r\n"
      "To: user1@inboxd.example\r\n"
      "Subject: proto micro benchmark\r\n"
      "Message-ID: <bench@client.example>\r\n"
      "\r\n";
  for (std::size_t line = 0; b.size() < size; ++line) {
    std::string l = line % 50 == 49 ? ".." : "";  // a dot-stuffed line now and then
    while (l.size() < 76) l += static_cast<char>('a' + (line + l.size()) % 26);
    b += l;
    b += "\r\n";
  }
  b += ".\r\n";
  return b;
}

struct workload {
  std::string name;
  std::size_t body_size;
  std::size_t transactions;
  std::string transcript;  // the whole pipelined session
  std::string bodies;      // the wire bodies alone, back to back
};

workload make_workload(std::string name, std::size_t body_size, std::size_t transactions) {
  workload w{std::move(name), body_size, transactions, {}, {}};
  std::string body = make_body(body_size);
  w.transcript = "EHLO client.example\r\n";
  for (std::size_t i = 0; i < transactions; ++i) {
    w.transcript += fmt::format("MAIL FROM:<sender{}@client.example> SIZE={}\r\n", i, body.size());
    w.transcript += "RCPT TO:<user1@inboxd.example>\r\nDATA\r\n";
    w.transcript += body;
    w.bodies += body;
  }
  w.transcript += "QUIT\r\n";
  return w;
}

struct pass_result {
  double seconds;
  std::uint64_t bytes;
  std::uint64_t transactions;
};

std::uint64_t sink_messages(const bench_sink& s) {
  return s.messages;
}
std::uint64_t sink_messages(const inboxd::null_sink& s) {
  return s.messages();
}

// --alloc-trace: how many allocations a tracing pass traces, once its first
// read buffer has been fed (the session is set up and greeted by then).
int trace_after_first_feed = 0;

// One pass of the session over the transcript; fails loudly if a message is
// lost (a benchmark of a broken parser measures nothing).
template <class Clock = clock_type, class Sink = bench_sink>
pass_result session_pass(const workload& w, const proto::settings_ptr& settings, Sink& sink,
                         std::vector<char>& buf, std::size_t read_size = read_buffer_size) {
  null_events events;
  proto::queue_id_source ids{0x12345678, 0x4242};
  std::uint64_t before = sink_messages(sink);
  bool first_feed = true;
  std::size_t reply_bytes = 0;
  auto t0 = Clock::now();
  {
    proto::session s(settings, events, ids, "192.0.2.1");
    s.start();
    std::size_t pos = 0, held = 0;
    while (pos < w.transcript.size() || held > 0) {
      std::size_t n = std::min({buf.size() - held, w.transcript.size() - pos, read_size});
      std::memcpy(buf.data() + held, w.transcript.data() + pos, n);  // recv()
      pos += n;
      held += n;
      if (s.waiting() || s.closing()) break;
      std::size_t used = s.feed(std::span<char>(buf.data(), held));
      reply_bytes += s.output().size();
      s.output().clear();
      if (first_feed && trace_after_first_feed > 0)
        alloc_count::trace_left = trace_after_first_feed;
      first_feed = false;
      if (used == 0 && n == 0) break;  // stuck: checked below
      std::memmove(buf.data(), buf.data() + used, held - used);
      held -= used;
    }
  }
  alloc_count::trace_left = 0;
  double secs = std::chrono::duration<double>(Clock::now() - t0).count();
  std::uint64_t done = sink_messages(sink) - before;
  if (done != w.transactions || reply_bytes == 0) {
    std::fprintf(stderr, "proto-bench: %s: session stored %llu of %zu messages\n", w.name.c_str(),
                 static_cast<unsigned long long>(done), w.transactions);
    std::exit(1);
  }
  return {secs, w.transcript.size(), done};
}

pass_result decoder_pass(const workload& w, std::vector<char>& buf) {
  proto::data_decoder d;
  d.reset();
  std::uint64_t messages = 0, out_bytes = 0;
  auto t0 = clock_type::now();
  std::size_t pos = 0, held = 0;
  while (pos < w.bodies.size() || held > 0) {
    std::size_t n = std::min(buf.size() - held, w.bodies.size() - pos);
    std::memcpy(buf.data() + held, w.bodies.data() + pos, n);  // recv()
    pos += n;
    held += n;
    std::size_t used = 0;
    while (used < held) {
      auto r = d.decode(std::span<char>(buf.data() + used, held - used));
      out_bytes += r.out.size();
      if (r.done) {
        ++messages;
        d.reset();
      } else if (r.consumed == 0) {
        break;  // an undecided tail: wait for more
      }
      used += r.consumed;
    }
    if (used == 0 && n == 0) break;
    std::memmove(buf.data(), buf.data() + used, held - used);
    held -= used;
  }
  double secs = std::chrono::duration<double>(clock_type::now() - t0).count();
  if (messages != w.transactions || out_bytes == 0) {
    std::fprintf(stderr, "proto-bench: %s: decoder ended %llu of %zu messages\n", w.name.c_str(),
                 static_cast<unsigned long long>(messages), w.transactions);
    std::exit(1);
  }
  return {secs, w.bodies.size(), messages};
}

struct figure {
  double mb_per_s = 0;
  double tx_per_s = 0;
};

// Repeats passes until at least `seconds` have gone by; that is one run.
// Returns the best run of `reps`.
template <class Pass>
figure measure(Pass pass, double seconds, int reps) {
  pass();  // warm caches and the allocator
  figure best;
  for (int r = 0; r < reps; ++r) {
    double t = 0;
    std::uint64_t bytes = 0, tx = 0;
    while (t < seconds) {
      pass_result p = pass();
      t += p.seconds;
      bytes += p.bytes;
      tx += p.transactions;
    }
    figure f{static_cast<double>(bytes) / t / 1e6, static_cast<double>(tx) / t};
    if (f.mb_per_s > best.mb_per_s) best = f;
  }
  return best;
}

// ---- Allocations per message and per command (issue 10) ----

// A pipelined session of `times` repeats of `unit` (commands only) between
// EHLO and QUIT.
workload make_command_workload(std::string name, std::string_view unit, std::size_t times) {
  workload w{std::move(name), 0, 0, "EHLO client.example\r\n", {}};
  w.transcript.reserve(w.transcript.size() + unit.size() * times + 8);
  for (std::size_t i = 0; i < times; ++i) w.transcript += unit;
  w.transcript += "QUIT\r\n";
  return w;
}

struct alloc_figure {
  std::string name;
  std::size_t commands_per_unit;  // 0 for a message
  double per_unit = 0;            // allocations
  double bytes_per_unit = 0;      // bytes asked for
  double per_session = 0;         // setting up, greeting, EHLO, QUIT
};

// Allocations of one unit (a message, a command, a cycle of commands) in
// steady state: after a warm-up pass, a pass of 2N units minus a pass of N,
// over N; what a session costs once is in neither difference. With
// --alloc-trace, the 2N pass traces its first allocations past its first
// read buffer.
template <class Pass>
alloc_figure count_allocations(std::string name, std::size_t commands_per_unit, std::size_t n,
                               const workload& once, const workload& twice, Pass pass, int trace) {
  pass(twice);  // warm-up: every string and vector at its steady size
  std::uint64_t c0 = alloc_count::count, b0 = alloc_count::bytes;
  pass(once);
  std::uint64_t c1 = alloc_count::count, b1 = alloc_count::bytes;
  if (trace > 0) std::fprintf(stderr, "proto-bench: --alloc-trace: %s\n", name.c_str());
  trace_after_first_feed = trace;
  pass(twice);
  trace_after_first_feed = 0;
  std::uint64_t c2 = alloc_count::count, b2 = alloc_count::bytes;
  alloc_figure f{std::move(name), commands_per_unit};
  double once_n = static_cast<double>(c1 - c0), twice_n = static_cast<double>(c2 - c1);
  f.per_unit = (twice_n - once_n) / static_cast<double>(n);
  f.bytes_per_unit =
      (static_cast<double>(b2 - b1) - static_cast<double>(b1 - b0)) / static_cast<double>(n);
  f.per_session = once_n - f.per_unit * static_cast<double>(n);
  return f;
}

struct alloc_report {
  std::vector<alloc_figure> rows;
  double per_message = 0;            // the session, with an allocation-free sink
  double per_message_null_sink = 0;  // the session with inboxd::null_sink
  double per_command = 0;            // over every command of the command workloads
};

alloc_report run_allocations(std::vector<char>& buf, int trace) {
  alloc_report rep;
  auto own = std::make_shared<bench_sink>();
  auto real = std::make_shared<inboxd::null_sink>();
  auto make_settings = [](std::shared_ptr<sink> store) {
    auto s = std::make_shared<proto::settings>();
    s->limits.hostname = "inboxd.example";
    s->policy = make_rules_policy({});
    s->store = std::move(store);
    return proto::settings_ptr(s);
  };
  proto::settings_ptr own_settings = make_settings(own), real_settings = make_settings(real);

  constexpr std::size_t messages = 1024;
  workload m1 = make_workload("message", 1024, messages);
  workload m2 = make_workload("message", 1024, 2 * messages);
  rep.rows.push_back(count_allocations(
      "message (1 KiB: MAIL, RCPT, DATA, text, '.')", 0, messages, m1, m2,
      [&](const workload& w) { return session_pass(w, own_settings, *own, buf); }, trace));
  rep.per_message = rep.rows.back().per_unit;
  rep.rows.push_back(count_allocations(
      "message, with inboxd::null_sink", 0, messages, m1, m2,
      [&](const workload& w) { return session_pass(w, real_settings, *real, buf); }, trace));
  rep.per_message_null_sink = rep.rows.back().per_unit;

  struct command_unit {
    const char* name;
    std::string_view text;
    std::size_t commands;
  };
  constexpr std::size_t times = 8192;
  const command_unit units[] = {
      {"NOOP", "NOOP\r\n", 1},
      {"RSET", "RSET\r\n", 1},
      {"MAIL+RCPT+RSET cycle",
       "MAIL FROM:<sender@client.example> SIZE=1000\r\nRCPT TO:<user1@inboxd.example>\r\n"
       "RSET\r\n",
       3},
      // Names past the 15 bytes a std::string holds in place: what short
      // names hide (each copy of one would allocate).
      {"MAIL+RCPT+RSET cycle, names > 15 bytes",
       "MAIL FROM:<a.long.sender.name@client.example.org>\r\n"
       "RCPT TO:<a.long.recipient.name@mail.inboxd-example.org>\r\nRSET\r\n",
       3},
  };
  double allocations = 0, commands = 0;
  for (const command_unit& u : units) {
    workload c1 = make_command_workload(u.name, u.text, times);
    workload c2 = make_command_workload(u.name, u.text, 2 * times);
    rep.rows.push_back(count_allocations(
        u.name, u.commands, times, c1, c2,
        [&](const workload& w) { return session_pass(w, own_settings, *own, buf); }, trace));
    allocations += rep.rows.back().per_unit;
    commands += static_cast<double>(u.commands);
  }
  rep.per_command = allocations / commands;
  return rep;
}

void print_allocations(const alloc_report& rep) {
  fmt::print(
      "\nheap allocations in steady state (operator new; a pass of 2N units minus one of N, "
      "over N)\n{:<48}{:>12}{:>12}{:>14}\n",
      "unit", "allocations", "bytes", "per session");
  for (const alloc_figure& f : rep.rows) {
    fmt::print("{:<48}{:>12.2f}{:>12.1f}{:>14.1f}\n", f.name, f.per_unit, f.bytes_per_unit,
               f.per_session);
  }
  fmt::print(
      "per message: {:.2f} (session alone), {:.2f} with inboxd::null_sink; per command: {:.2f}\n"
      "goal (issue 10): at most 2 per message, 0 per command\n",
      rep.per_message, rep.per_message_null_sink, rep.per_command);
}

std::string allocations_json(const alloc_report& rep) {
  std::string out = fmt::format(
      ",\"allocations_per_message\":{:.3f},\"allocations_per_message_null_sink\":{:.3f},"
      "\"allocations_per_command\":{:.3f},\"allocations\":[",
      rep.per_message, rep.per_message_null_sink, rep.per_command);
  bool first = true;
  for (const alloc_figure& f : rep.rows) {
    out += fmt::format(
        "{}{{\"unit\":\"{}\",\"commands\":{},\"allocations\":{:.3f},\"bytes\":{:.1f},"
        "\"per_session\":{:.1f}}}",
        first ? "" : ",", f.name, f.commands_per_unit, f.per_unit, f.bytes_per_unit, f.per_session);
    first = false;
  }
  out += "]";
  return out;
}

// ---- Hostile shapes (issue 9) ----

// One shape at one size: its wire body (CRLF line ends, without the final
// "."), and the command line it makes.
struct hostile_input {
  std::string body;
  std::string command;
};

struct hostile_shape {
  std::string_view name;
  std::string_view what;
  hostile_input (*make)(std::size_t size);
};

std::string repeat_to(std::string_view unit, std::size_t size) {
  std::string s;
  s.reserve(size + unit.size());
  while (s.size() < size) s += unit;
  return s;
}

// ---- Allocations and cost on hostile shapes (issue 10) ----
//
// Each shape is a message (MAIL, RCPTs, the text by DATA or BDAT, its end)
// made to find an allocation or a super-linear path that the friendly
// workload hides: many long recipients, quoted local parts full of escapes,
// UTF-8 local parts and U-label domains (SMTPUTF8), aliases, 1-byte BDAT
// chunks, one BDAT LAST with a huge declared size dripped in small reads, a
// body of only CRLFs, a body of only dot-stuffed lines. For each, at a small
// and at a large n (the RCPTs, chunks or bytes of one message): heap
// allocations per message and per command in steady state (as above: a
// pass of 2M messages minus one of M, over M), and the CPU time per unit
// (RCPT, chunk or byte). A cost per unit that grows with n is a
// super-linear path; the table marks a growth over 2x with '!'.

struct shape_message {
  std::string text;          // one message, MAIL to its end
  std::size_t commands = 0;  // command lines in it (BDAT chunks count)
  std::size_t units = 0;     // what n counts in it
};

struct alloc_shape {
  std::string_view name;
  std::string_view unit;  // "RCPT", "chunk", "byte"
  std::string_view what;
  std::size_t small, large;  // n
  std::size_t read_size;     // bytes per read: a dripping client reads few
  bool aliases;              // the alias policy instead of any-user
  shape_message (*make)(std::size_t n);
};

// A local part of 64 octets, distinct for each i.
std::string long_local(std::string_view stem, std::size_t i) {
  std::string l = fmt::format("{}{}", stem, i);
  while (l.size() < 64) l += static_cast<char>('a' + l.size() % 26);
  return l;
}

shape_message rcpt_message(std::size_t n, bool smtputf8, std::string (*address)(std::size_t i)) {
  shape_message m;
  m.text = smtputf8 ? "MAIL FROM:<j\xC3\xB6rg.sender@client.example> SMTPUTF8\r\n"
                    : "MAIL FROM:<a.long.sender.name@client.example.org>\r\n";
  for (std::size_t i = 0; i < n; ++i) m.text += "RCPT TO:<" + address(i) + ">\r\n";
  m.text += "DATA\r\nSubject: shape\r\n\r\nbody\r\n.\r\n";
  m.commands = n + 3;  // MAIL, the RCPTs, DATA, and the end of data
  m.units = n;
  return m;
}

shape_message data_message(std::string_view unit, std::size_t n) {
  shape_message m;
  m.text =
      "MAIL FROM:<a.long.sender.name@client.example.org>\r\n"
      "RCPT TO:<a.long.recipient.name@mail.inboxd-example.org>\r\nDATA\r\n";
  m.text += repeat_to(unit, n);
  m.text += ".\r\n";
  m.commands = 4;
  m.units = n;
  return m;
}

constexpr alloc_shape alloc_shapes[] = {
    {"rcpt-long", "RCPT", "RCPTs of 64-byte local parts", 50, 1000, read_buffer_size, false,
     [](std::size_t n) {
       return rcpt_message(n, false, [](std::size_t i) {
         return long_local("recipient.", i) + "@mail.inboxd-example.org";
       });
     }},
    {"rcpt-quoted", "RCPT", "quoted local parts full of escapes", 50, 1000, read_buffer_size, false,
     [](std::size_t n) {
       return rcpt_message(n, false, [](std::size_t i) {
         std::string q = fmt::format("\"q{}", i);
         while (q.size() < 56) q += "\\\"\\\\ x";
         return q + "\"@mail.inboxd-example.org";
       });
     }},
    {"rcpt-utf8", "RCPT", "UTF-8 local parts, ASCII domain (SMTPUTF8)", 50, 1000, read_buffer_size,
     false,
     [](std::size_t n) {
       return rcpt_message(n, true, [](std::size_t i) {
         return long_local("j\xC3\xB6rg.gr\xC3\xBC\xC3\x9F.", i) + "@mail.inboxd-example.org";
       });
     }},
    {"rcpt-ulabel", "RCPT", "UTF-8 local parts, U-label domain (SMTPUTF8; libidn2)", 50, 1000,
     read_buffer_size, false,
     [](std::size_t n) {
       return rcpt_message(n, true, [](std::size_t i) {
         return long_local("j\xC3\xB6rg.", i) + "@m\xC3\xBCnchen.inboxd-example.org";
       });
     }},
    {"rcpt-alias", "RCPT", "aliases of 3 long users each, mostly repeats", 20, 1000,
     read_buffer_size, true,
     [](std::size_t n) {
       return rcpt_message(n, false, [](std::size_t i) {
         return i % 2 ? fmt::format("a.long.user.name.number.{}@mail.inboxd-example.org", i % 24)
                      : fmt::format("team{}+tag{}@mail.inboxd-example.org", i / 2 % 8, i);
       });
     }},
    {"bdat-1", "chunk", "BDAT chunks of 1 octet", 1000, 16000, read_buffer_size, false,
     [](std::size_t n) {
       shape_message m;
       m.text =
           "MAIL FROM:<a.long.sender.name@client.example.org>\r\n"
           "RCPT TO:<a.long.recipient.name@mail.inboxd-example.org>\r\n";
       // Now and then a CRLF split over two chunks: the CR is held across.
       for (std::size_t i = 0; i < n; ++i)
         m.text += i % 40 == 38 ? "BDAT 1\r\n\r" : i % 40 == 39 ? "BDAT 1\r\n\n" : "BDAT 1\r\nx";
       m.text += "BDAT 0 LAST\r\n";
       m.commands = n + 3;
       m.units = n;
       return m;
     }},
    {"bdat-drip", "byte", "BDAT LAST of a huge size, read 16 bytes at a time", 64 * 1024,
     1024 * 1024, 16, false,
     [](std::size_t n) {
       shape_message m;
       std::string text = repeat_to("a line of text, dripped in\r\n", n);
       text.resize(n);
       m.text =
           "MAIL FROM:<a.long.sender.name@client.example.org>\r\n"
           "RCPT TO:<a.long.recipient.name@mail.inboxd-example.org>\r\n";
       m.text += fmt::format("BDAT {} LAST\r\n", n);
       m.text += text;
       m.commands = 3;
       m.units = n;
       return m;
     }},
    {"crlf-body", "byte", "a body of only CRLF pairs", 64 * 1024, 1024 * 1024, read_buffer_size,
     false, [](std::size_t n) { return data_message("\r\n", n); }},
    {"crlf-drip", "byte", "the same, read 1 byte at a time", 16 * 1024, 256 * 1024, 1, false,
     [](std::size_t n) { return data_message("\r\n", n); }},
    {"dot-body", "byte", "a body of only dot-stuffed lines (\"..\")", 64 * 1024, 1024 * 1024,
     read_buffer_size, false, [](std::size_t n) { return data_message("..\r\n", n); }},
    {"dot-drip", "byte", "the same, read 3 bytes at a time", 16 * 1024, 256 * 1024, 3, false,
     [](std::size_t n) { return data_message("..\r\n", n); }},
};

// The alias policy of the rcpt-alias shape: 24 users with long names,
// team0..team7 each naming three of them. Its RCPTs alternate between an
// alias and a user, so most mailboxes are repeats, and past linear_dedup of
// them the session's index finds them.
recipient_rules alias_rules() {
  recipient_rules rules;
  domain_rules d;
  d.name = "mail.inboxd-example.org";
  for (int u = 0; u < 24; ++u) d.users.push_back(fmt::format("a.long.user.name.number.{}", u));
  for (std::size_t a = 0; a < 8; ++a)
    d.aliases.emplace(
        fmt::format("team{}", a),
        std::vector<std::string>{d.users[3 * a], d.users[3 * a + 1], d.users[3 * a + 2]});
  rules.domains.push_back(std::move(d));
  return rules;
}

workload shape_workload(const alloc_shape& shape, std::size_t n, std::size_t messages) {
  shape_message m = shape.make(n);
  workload w{std::string(shape.name), n, messages, "EHLO client.example\r\n", {}};
  w.transcript.reserve(m.text.size() * messages + 32);
  for (std::size_t i = 0; i < messages; ++i) w.transcript += m.text;
  w.transcript += "QUIT\r\n";
  return w;
}

struct shape_figure {
  std::string_view name, unit;
  std::size_t commands_small = 0, commands_large = 0;
  double per_message_small = 0, per_message_large = 0;  // allocations
  double bytes_small = 0;
  double ns_small = 0, ns_large = 0;  // CPU per unit
};

std::vector<shape_figure> run_alloc_shapes(std::vector<char>& buf, std::string_view only,
                                           bool timed) {
  auto sink = std::make_shared<bench_sink>();
  auto make_settings = [&](recipient_rules rules) {
    auto s = std::make_shared<proto::settings>();
    s->limits.hostname = "inboxd.example";
    s->limits.max_message_size = 64 * 1024 * 1024;
    s->policy = make_rules_policy(std::move(rules));
    s->store = sink;
    return proto::settings_ptr(s);
  };
  proto::settings_ptr any = make_settings({}), aliases = make_settings(alias_rules());
  std::vector<shape_figure> out;
  for (const alloc_shape& shape : alloc_shapes) {
    if (!only.empty() && shape.name != only) continue;
    const proto::settings_ptr& settings = shape.aliases ? aliases : any;
    shape_figure f{shape.name, shape.unit};
    for (std::size_t n : {shape.small, shape.large}) {
      // About 2 MB of transcript per counting pass, and at least 2 messages.
      std::size_t bytes = shape.make(n).text.size();
      std::size_t m = std::max<std::size_t>(2, (2 << 20) / bytes);
      if (shape.read_size < 64) m = 2;  // a dripping client is slow to feed
      workload once = shape_workload(shape, n, m), twice = shape_workload(shape, n, 2 * m);
      auto pass = [&](const workload& w) {
        return session_pass(w, settings, *sink, buf, shape.read_size);
      };
      alloc_figure a = count_allocations(std::string(shape.name), 0, m, once, twice, pass, 0);
      // CPU time per unit: the best of a few passes of 2M messages.
      double best = 0;
      for (int r = 0; r < (timed ? 3 : 0); ++r) {
        pass_result p = session_pass<cpu_clock>(twice, settings, *sink, buf, shape.read_size);
        double ns = p.seconds * 1e9 / static_cast<double>(2 * m * n);
        if (r == 0 || ns < best) best = ns;
      }
      std::size_t commands = shape.make(n).commands;
      if (n == shape.small) {
        f.commands_small = commands;
        f.per_message_small = a.per_unit;
        f.bytes_small = a.bytes_per_unit;
        f.ns_small = best;
      } else {
        f.commands_large = commands;
        f.per_message_large = a.per_unit;
        f.ns_large = best;
      }
    }
    out.push_back(f);
  }
  return out;
}

void print_alloc_shapes(const std::vector<shape_figure>& figures) {
  fmt::print(
      "\nhostile shapes: heap allocations per message and per command in steady state, and CPU\n"
      "ns per unit at a small and a large n ('!': the cost per unit grew over 2x with n)\n"
      "{:<13}{:>6}{:>8}{:>11}{:>10}{:>10}{:>11}{:>9}{:>11}{:>10}\n",
      "shape", "unit", "n", "allocs/msg", "/command", "bytes/msg", "ns/unit", "n", "allocs/msg",
      "ns/unit");
  for (const shape_figure& f : figures) {
    const alloc_shape& s = *std::find_if(std::begin(alloc_shapes), std::end(alloc_shapes),
                                         [&](const alloc_shape& a) { return a.name == f.name; });
    bool grows = f.ns_small > 0 && f.ns_large > 2 * f.ns_small;
    // --check does not time: its ns columns are left out.
    auto ns = [](double v) { return v > 0 ? fmt::format("{:.2f}", v) : std::string("-"); };
    fmt::print("{:<13}{:>6}{:>8}{:>11.2f}{:>10.3f}{:>10.1f}{:>11}{:>9}{:>11.2f}{:>9}{}\n", f.name,
               f.unit, s.small, f.per_message_small,
               f.per_message_small / static_cast<double>(f.commands_small), f.bytes_small,
               ns(f.ns_small), s.large, f.per_message_large, ns(f.ns_large), grows ? '!' : ' ');
  }
  fmt::print("shapes:");
  for (const alloc_shape& s : alloc_shapes) fmt::print(" {}: {};", s.name, s.what);
  fmt::print("\n");
}

std::string alloc_shapes_json(const std::vector<shape_figure>& figures) {
  std::string out = ",\"allocation_shapes\":[";
  bool first = true;
  for (const shape_figure& f : figures) {
    const alloc_shape& s = *std::find_if(std::begin(alloc_shapes), std::end(alloc_shapes),
                                         [&](const alloc_shape& a) { return a.name == f.name; });
    out += fmt::format(
        "{}{{\"shape\":\"{}\",\"unit\":\"{}\",\"n_small\":{},\"commands_small\":{},"
        "\"allocations_per_message_small\":{:.3f},\"allocations_per_command_small\":{:.4f},"
        "\"ns_per_unit_small\":{:.2f},\"n_large\":{},\"commands_large\":{},"
        "\"allocations_per_message_large\":{:.3f},\"ns_per_unit_large\":{:.2f}}}",
        first ? "" : ",", f.name, f.unit, s.small, f.commands_small, f.per_message_small,
        f.per_message_small / static_cast<double>(f.commands_small), f.ns_small, s.large,
        f.commands_large, f.per_message_large, f.ns_large);
    first = false;
  }
  out += "]";
  return out;
}

// --check: issue 10's goal as a test (a count, never a speed). The friendly
// workload and its commands: at most 2 allocations per message, none per
// command, long names included. Each shape at its small n (no more
// mailboxes than a transaction keeps, see session.hpp): at most 2 per
// message, except where libidn2 converts a U-label domain at every RCPT.
bool check_allocations(const alloc_report& rep, const std::vector<shape_figure>& shapes) {
  bool ok = true;
  auto fail = [&](std::string_view what, double got, double limit) {
    std::fprintf(stderr, "proto-bench: --check: %.*s: %.3f allocations, over %.3f\n",
                 static_cast<int>(what.size()), what.data(), got, limit);
    ok = false;
  };
  // Counts are exact in steady state; the margin absorbs a stray
  // allocation of a pass's setup that does not cancel out.
  constexpr double margin = 0.01;
  if (rep.per_message > 2 + margin) fail("per message", rep.per_message, 2);
  for (const alloc_figure& f : rep.rows)
    if (f.commands_per_unit > 0 && f.per_unit > margin) fail(f.name, f.per_unit, 0);
  for (const shape_figure& f : shapes)
    if (f.name != "rcpt-ulabel" && f.per_message_small > 2 + margin)
      fail(f.name, f.per_message_small, 2);
  return ok;
}

// --callgrind: one pass, in a function callgrind can be told to count alone.
[[gnu::noinline]] void callgrind_pass(const workload& w, const proto::settings_ptr& settings,
                                      bench_sink& sink, std::vector<char>& buf,
                                      std::size_t read_size) {
  session_pass(w, settings, sink, buf, read_size);
}

// A MAIL command over the body's text without its line ends: a path that
// the parser must scan to its end, then a parameter.
std::string mail_command(std::string_view body) {
  std::string c = "MAIL FROM:<";
  // A command line keeps its bare CRs (the line reader passes them on).
  for (std::size_t i = 0; i < body.size(); ++i)
    if (body[i] != '\n' && !(body[i] == '\r' && i + 1 < body.size() && body[i + 1] == '\n'))
      c += body[i];
  c += "> SIZE=1";
  return c;
}

hostile_input with_command(std::string body) {
  std::string c = mail_command(body);
  return {std::move(body), std::move(c)};
}

constexpr hostile_shape hostile_shapes[] = {
    {"gt-run-from", "one line of '>' then \"From \"",
     [](std::size_t n) { return with_command(std::string(n - 8, '>') + "From x\r\n"); }},
    {"gt-from-lines", "\">From x\" lines",
     [](std::size_t n) { return with_command(repeat_to(">From x\r\n", n)); }},
    {"bare-cr", "one line of bare CRs",
     [](std::size_t n) { return with_command(std::string(n - 2, '\r') + "\r\n"); }},
    {"huge-line", "one line of text",
     [](std::size_t n) { return with_command(std::string(n - 2, 'a') + "\r\n"); }},
    {"dot-stuffed", "\"..\" lines",
     [](std::size_t n) { return with_command(repeat_to("..\r\n", n)); }},
    {"tiny-lines", "empty lines", [](std::size_t n) { return with_command(repeat_to("\r\n", n)); }},
    {"quoted-local", "a quoted local part of escapes",
     [](std::size_t n) {
       // Appends, not operator+: GCC 12 at -O3 warns (-Wrestrict) on "\"" + string.
       std::string local(1, '"');
       local += repeat_to("\\\"", n - 16);
       local += "\"@example.com\r\n";
       return with_command(std::move(local));
     }},
    {"addr-literal", "a long general address literal",
     [](std::size_t n) { return with_command("u@[x-tag:" + std::string(n - 12, 'y') + "]\r\n"); }},
    {"many-params", "many ESMTP parameters",
     [](std::size_t n) {
       std::string params = repeat_to(" A=1", n - 16);
       return hostile_input{"a@b.example>" + params + "\r\n", "MAIL FROM:<a@b.example>" + params};
     }},
};

constexpr std::size_t hostile_sizes[] = {16 * 1024, 64 * 1024, 1024 * 1024, 8 * 1024 * 1024};

// A path whose pass, scaled linearly to the next size, would take longer
// than this is not run at the next size: it already stalls the loop.
constexpr double hostile_stall_seconds = 5.0;

// Keeps a result alive so that the optimiser cannot drop the work.
std::uint64_t sink_hole = 0;

// The line reader over the body as command lines (limit 512: a huge line is
// answered once and skipped to its LF), fed through the read buffer as
// net/connection feeds it: a partial line stays at the buffer's front.
pass_result line_reader_pass(const std::string& wire, std::vector<char>& buf) {
  proto::line_reader reader(512);
  std::uint64_t lines = 0;
  auto t0 = cpu_clock::now();
  std::size_t pos = 0, held = 0;
  while (pos < wire.size()) {
    std::size_t n = std::min(buf.size() - held, wire.size() - pos);
    std::memcpy(buf.data() + held, wire.data() + pos, n);  // recv()
    pos += n;
    held += n;
    std::size_t used = 0;
    while (used < held) {
      auto r = reader.next({buf.data() + used, held - used});
      used += r.consumed;
      if (r.st == proto::line_reader::status::need_more && r.consumed == 0) break;
      ++lines;
    }
    std::memmove(buf.data(), buf.data() + used, held - used);
    held -= used;
  }
  sink_hole += lines;
  return {std::chrono::duration<double>(cpu_clock::now() - t0).count(), wire.size(), 1};
}

// The decoder over the body and its end, through the read buffer.
pass_result hostile_decoder_pass(const std::string& wire, std::vector<char>& buf) {
  proto::data_decoder d;
  d.reset();
  std::uint64_t out_bytes = 0;
  bool done = false;
  auto t0 = cpu_clock::now();
  std::size_t pos = 0, held = 0;
  while (!done && (pos < wire.size() || held > 0)) {
    std::size_t n = std::min(buf.size() - held, wire.size() - pos);
    std::memcpy(buf.data() + held, wire.data() + pos, n);  // recv()
    pos += n;
    held += n;
    std::size_t used = 0;
    while (used < held && !done) {
      auto r = d.decode(std::span<char>(buf.data() + used, held - used));
      out_bytes += r.out.size();
      done = r.done;
      if (!done && r.consumed == 0) break;
      used += r.consumed;
    }
    if (used == 0 && n == 0) break;
    std::memmove(buf.data(), buf.data() + used, held - used);
    held -= used;
  }
  double secs = std::chrono::duration<double>(cpu_clock::now() - t0).count();
  if (!done) {
    std::fprintf(stderr, "proto-bench: hostile decoder pass did not see the end of data\n");
    std::exit(1);
  }
  sink_hole += out_bytes;
  return {secs, wire.size(), 1};
}

// The quoter over the decoded body (LF line ends), in 64 KiB pieces as the
// mbox sink gets them; the output is dropped after each piece.
pass_result mboxrd_pass(const std::string& text) {
  store::mboxrd_quoter q;
  std::string out;
  out.reserve(read_buffer_size * 2);
  std::uint64_t out_bytes = 0;
  auto t0 = cpu_clock::now();
  for (std::size_t pos = 0; pos < text.size(); pos += read_buffer_size) {
    q.append(out, std::string_view(text).substr(pos, read_buffer_size));
    out_bytes += out.size();
    out.clear();
  }
  q.flush(out);
  out_bytes += out.size();
  double secs = std::chrono::duration<double>(cpu_clock::now() - t0).count();
  sink_hole += out_bytes;
  return {secs, text.size(), 1};
}

// What the session does with a MAIL line: the verb, the path, every parameter.
// A short line is parsed again until 1 MiB has gone through, so that the
// clock's resolution does not make the figure.
pass_result command_pass(const std::string& line) {
  std::size_t times = std::max<std::size_t>(1, (1 << 20) / (line.size() + 1));
  std::uint64_t params = 0;
  auto t0 = cpu_clock::now();
  for (std::size_t t = 0; t < times; ++t) {
    proto::command c = proto::parse_command(line);
    proto::path_parse p = proto::parse_mail_from(c.arg);
    params += static_cast<std::uint64_t>(p.error);
    if (p.error == proto::path_error::none) {
      proto::param_reader r(p.value.params);
      while (r.next()) ++params;
    }
  }
  double secs = std::chrono::duration<double>(cpu_clock::now() - t0).count();
  sink_hole += params;
  return {secs, line.size() * times, 1};
}

// A SASL response: the body, base64-encoded, decoded.
pass_result base64_pass(const std::string& encoded) {
  std::string decoded;
  auto t0 = cpu_clock::now();
  bool ok = proto::base64_decode(encoded, decoded);
  double secs = std::chrono::duration<double>(cpu_clock::now() - t0).count();
  sink_hole += decoded.size() + ok;
  return {secs, encoded.size(), 1};
}

// Log escaping of the body's bytes.
pass_result printable_pass(const std::string& body) {
  auto t0 = cpu_clock::now();
  std::string p = proto::printable(body);
  double secs = std::chrono::duration<double>(cpu_clock::now() - t0).count();
  sink_hole += p.size();
  return {secs, body.size(), 1};
}

// The body is decoded the simple way, for the quoter's input.
std::string decoded_text(std::string_view wire) {
  std::string out;
  out.reserve(wire.size());
  bool bol = true;
  for (std::size_t i = 0; i < wire.size(); ++i) {
    char c = wire[i];
    if (bol && c == '.') {
      bol = false;
      continue;
    }
    bol = false;
    if (c == '\r' && i + 1 < wire.size() && wire[i + 1] == '\n') continue;
    out += c;
    bol = c == '\n';
  }
  return out;
}

constexpr std::string_view hostile_paths[] = {"line_reader", "decoder",   "mboxrd", "command",
                                              "base64",      "printable", "session"};
constexpr std::size_t n_paths = std::size(hostile_paths);

// Repeats passes until `seconds` have gone by (at least one); the best pass.
template <class Pass>
double hostile_measure(Pass pass, double seconds, double& longest) {
  double total = 0, best = 0;
  longest = 0;
  do {
    pass_result p = pass();
    total += p.seconds;
    longest = std::max(longest, p.seconds);
    double mb = p.seconds > 0 ? static_cast<double>(p.bytes) / p.seconds / 1e6 : 0;
    best = std::max(best, mb);
  } while (total < seconds && longest < hostile_stall_seconds / 10);
  return best;
}

std::string size_name(std::size_t n) {
  return n >= 1024 * 1024 ? fmt::format("{}M", n / (1024 * 1024)) : fmt::format("{}K", n / 1024);
}

// Runs every path on every shape at every size; prints a table (or adds a
// "hostile" object to the JSON line).
void run_hostile(bool json, std::string& out, std::vector<char>& buf, std::string_view only) {
  auto sink = std::make_shared<bench_sink>();
  auto s = std::make_shared<proto::settings>();
  s->limits.hostname = "inboxd.example";
  s->limits.max_message_size = 64 * 1024 * 1024;  // the shapes are stored, not refused
  s->policy = make_rules_policy({});
  s->store = sink;
  proto::settings_ptr settings = s;
  constexpr double seconds = 0.02;  // per figure, at least one pass

  if (!json) {
    fmt::print(
        "\nhostile shapes: MB/s of each path's input (CPU time). '!' marks a figure that\n"
        "fell by more than half the size step from the size before (a quadratic path\n"
        "falls by the whole step: 4x, 16x, 8x; caches account for less than 2x).\n"
        "'-': not run, as even a linear cost would take over {} s at that size.\n"
        "A parser that refuses its input at the first bad byte shows a huge figure.\n",
        hostile_stall_seconds);
    fmt::print("{:<15}{:>5}", "shape", "size");
    for (auto p : hostile_paths) fmt::print("{:>12}", p);
    fmt::print("\n");
  } else {
    out += ",\"hostile\":{\"sizes\":[";
    for (std::size_t i = 0; i < std::size(hostile_sizes); ++i)
      out += fmt::format("{}{}", i ? "," : "", hostile_sizes[i]);
    out += "],\"shapes\":{";
  }
  bool first_shape = true;
  for (const hostile_shape& shape : hostile_shapes) {
    if (!only.empty() && shape.name != only) continue;
    std::array<bool, n_paths> stalled{};
    std::array<double, n_paths> before{};  // the figures at the size before
    std::size_t size_before = 0;
    if (json) {
      out += fmt::format("{}\"{}\":{{", first_shape ? "" : ",", shape.name);
      first_shape = false;
    }
    bool first_size = true;
    for (std::size_t size : hostile_sizes) {
      hostile_input in = shape.make(size);
      std::string decoded = decoded_text(in.body);
      std::string encoded = proto::base64_encode(in.body);
      std::string wire_end = in.body + ".\r\n";
      workload w{std::string(shape.name), size, 1, {}, {}};
      w.transcript =
          "EHLO client.example\r\nMAIL FROM:<a@client.example>\r\n"
          "RCPT TO:<user1@inboxd.example>\r\nDATA\r\n" +
          wire_end + "QUIT\r\n";
      std::array<double, n_paths> mbps{};
      for (std::size_t p = 0; p < n_paths; ++p) {
        if (stalled[p]) {
          mbps[p] = -1;
          continue;
        }
        double longest = 0;
        switch (p) {
          case 0:
            mbps[p] =
                hostile_measure([&] { return line_reader_pass(in.body, buf); }, seconds, longest);
            break;
          case 1:
            mbps[p] = hostile_measure([&] { return hostile_decoder_pass(wire_end, buf); }, seconds,
                                      longest);
            break;
          case 2:
            mbps[p] = hostile_measure([&] { return mboxrd_pass(decoded); }, seconds, longest);
            break;
          case 3:
            mbps[p] = hostile_measure([&] { return command_pass(in.command); }, seconds, longest);
            break;
          case 4:
            mbps[p] = hostile_measure([&] { return base64_pass(encoded); }, seconds, longest);
            break;
          case 5:
            mbps[p] = hostile_measure([&] { return printable_pass(in.body); }, seconds, longest);
            break;
          default:
            mbps[p] = hostile_measure(
                [&] { return session_pass<cpu_clock>(w, settings, *sink, buf); }, seconds, longest);
            break;
        }
        // The next size is larger by next / size: no more sizes for a path
        // that would stall even if it were linear.
        if (size != hostile_sizes[std::size(hostile_sizes) - 1]) {
          std::size_t next =
              *(std::find(std::begin(hostile_sizes), std::end(hostile_sizes), size) + 1);
          if (longest * static_cast<double>(next) / static_cast<double>(size) >
              hostile_stall_seconds)
            stalled[p] = true;
        }
      }
      if (json) {
        out += fmt::format("{}\"{}\":{{", first_size ? "" : ",", size);
        first_size = false;
        for (std::size_t p = 0; p < n_paths; ++p) {
          out += fmt::format("{}\"{}\":", p ? "," : "", hostile_paths[p]);
          out += mbps[p] < 0 ? std::string("null") : fmt::format("{:.1f}", mbps[p]);
        }
        out += "}";
      } else {
        fmt::print("{:<15}{:>5}", shape.name, size_name(size));
        for (std::size_t p = 0; p < n_paths; ++p) {
          if (mbps[p] < 0) {
            fmt::print("{:>12}", "-");
            continue;
          }
          double step = size_before ? static_cast<double>(size) / size_before : 1;
          bool falls = size_before && before[p] > 0 && mbps[p] < before[p] * 2 / step;
          fmt::print("{:>11.1f}{}", mbps[p], falls ? '!' : ' ');
        }
        fmt::print("\n");
      }
      before = mbps;
      size_before = size;
    }
    if (json) out += "}";
  }
  if (json) out += "}}";
  if (!json) {
    fmt::print("shapes:");
    for (const hostile_shape& shape : hostile_shapes)
      fmt::print(" {}: {};", shape.name, shape.what);
    fmt::print("\n");
  }
}

}  // namespace

int main(int argc, char** argv) {
  bool json = false;
  bool hostile = true, fixed = true, allocations = true;
  int alloc_trace = 0;
  bool check = false, failed = false;
  std::size_t callgrind_messages = 0;
  std::string_view only_shape;
  double seconds = 0.5;
  int reps = 3;
  for (int i = 1; i < argc; ++i) {
    std::string_view a = argv[i];
    if (a == "--json") {
      json = true;
    } else if (a == "--seconds" && i + 1 < argc) {
      seconds = std::atof(argv[++i]);
    } else if (a == "--reps" && i + 1 < argc) {
      reps = std::atoi(argv[++i]);
    } else if (a == "--no-hostile") {
      hostile = false;
    } else if (a == "--hostile-only") {
      fixed = allocations = false;
    } else if (a == "--shape" && i + 1 < argc) {
      only_shape = argv[++i];
    } else if (a == "--allocations-only") {
      fixed = hostile = false;
    } else if (a == "--no-allocations") {
      allocations = false;
    } else if (a == "--alloc-trace" && i + 1 < argc) {
      alloc_trace = std::atoi(argv[++i]);
    } else if (a == "--check") {
      check = true;
    } else if (a == "--callgrind" && i + 1 < argc) {
      callgrind_messages = static_cast<std::size_t>(std::atol(argv[++i]));
    } else {
      std::fprintf(stderr,
                   "usage: proto-bench [--json] [--seconds S (0.5)] [--reps N (3)]\n"
                   "                   [--no-hostile | --hostile-only] [--shape NAME]\n"
                   "                   [--allocations-only | --no-allocations] [--alloc-trace N]\n"
                   "                   [--check] [--callgrind N]\n"
                   "Throughput of the sans-I/O session and the data decoder over a fixed\n"
                   "pipelined transcript (1 KiB and 64 KiB bodies); best of N runs of S s.\n"
                   "Then heap allocations per message and per command in steady state\n"
                   "(--alloc-trace N: a backtrace of the first N of each workload's pass).\n"
                   "Then every per-byte path on hostile shapes at 64 KiB, 1 MiB and 8 MiB.\n"
                   "--check: exit 1 when the allocations miss issue 10's goal (a test).\n"
                   "--callgrind N: one session pass of N 1 KiB messages (with --shape, of\n"
                   "that allocation shape), nothing else; run it under valgrind\n"
                   "--tool=callgrind --toggle-collect='*callgrind_pass*'.\n");
      return a == "--help" || a == "-h" ? 0 : 2;
    }
  }
  if (seconds <= 0 || reps < 1) {
    std::fprintf(stderr, "proto-bench: --seconds and --reps must be positive\n");
    return 2;
  }

  auto sink = std::make_shared<bench_sink>();
  auto s = std::make_shared<proto::settings>();
  s->limits.hostname = "inboxd.example";
  s->policy = make_rules_policy({});
  s->store = sink;
  proto::settings_ptr settings = s;

  if (callgrind_messages > 0) {
    std::vector<char> buf(read_buffer_size);
    // With --shape NAME, messages of that allocation shape (at its small n).
    auto shape = std::find_if(std::begin(alloc_shapes), std::end(alloc_shapes),
                              [&](const alloc_shape& a) { return a.name == only_shape; });
    if (shape == std::end(alloc_shapes)) {
      callgrind_pass(make_workload("1k", 1024, callgrind_messages), settings, *sink, buf,
                     read_buffer_size);
      return 0;
    }
    auto own = std::make_shared<proto::settings>(*s);
    own->limits.max_message_size = 64 * 1024 * 1024;
    own->policy = make_rules_policy(shape->aliases ? alias_rules() : recipient_rules{});
    callgrind_pass(shape_workload(*shape, shape->small, callgrind_messages), own, *sink, buf,
                   shape->read_size);
    return 0;
  }

  std::vector<workload> loads;
  loads.push_back(make_workload("1k", 1024, 4096));
  loads.push_back(make_workload("64k", 64 * 1024, 128));
  std::vector<char> buf(read_buffer_size);

  std::string out = json ? "{\"tool\":\"proto-bench\"" : "";
  if (!fixed) loads.clear();
  if (!json && fixed)
    fmt::print("{:<8}{:>14}{:>12}{:>16}{:>16}{:>14}\n", "body", "transcript", "session", "session",
               "decoder", "decoder");
  if (!json && fixed)
    fmt::print("{:<8}{:>14}{:>12}{:>16}{:>16}{:>14}\n", "", "MB", "MB/s", "transactions/s", "MB/s",
               "messages/s");
  for (const workload& w : loads) {
    figure sess = measure([&] { return session_pass(w, settings, *sink, buf); }, seconds, reps);
    figure dec = measure([&] { return decoder_pass(w, buf); }, seconds, reps);
    if (json) {
      out += fmt::format(
          ",\"{}\":{{\"body_bytes\":{},\"transactions\":{},\"transcript_bytes\":{},"
          "\"session_mb_per_s\":{:.1f},\"session_transactions_per_s\":{:.0f},"
          "\"decoder_mb_per_s\":{:.1f},\"decoder_messages_per_s\":{:.0f}}}",
          w.name, w.body_size, w.transactions, w.transcript.size(), sess.mb_per_s, sess.tx_per_s,
          dec.mb_per_s, dec.tx_per_s);
    } else {
      fmt::print("{:<8}{:>14.1f}{:>12.1f}{:>16.0f}{:>16.1f}{:>14.0f}\n", w.name,
                 w.transcript.size() / 1e6, sess.mb_per_s, sess.tx_per_s, dec.mb_per_s,
                 dec.tx_per_s);
    }
  }
  if (!json && fixed)
    fmt::print("MB = 10^6 bytes of wire text; best of {} runs of >= {} s each\n", reps, seconds);
  if (allocations || alloc_trace > 0) {
    if (alloc_trace > 0) {
      void* frames[4];
      backtrace(frames, 4);  // loads libgcc_s now, not inside a traced allocation
    }
    alloc_report rep = run_allocations(buf, alloc_trace);
    // --check counts and does not time: it runs as a test.
    std::vector<shape_figure> shapes = run_alloc_shapes(buf, only_shape, !check);
    if (json) {
      out += allocations_json(rep);
      out += alloc_shapes_json(shapes);
    } else {
      print_allocations(rep);
      print_alloc_shapes(shapes);
    }
    if (check && !check_allocations(rep, shapes)) failed = true;
  }
  if (hostile) run_hostile(json, out, buf, only_shape);
  if (json) {
    out += fmt::format(",\"seconds\":{},\"reps\":{}}}", seconds, reps);
    fmt::print("{}\n", out);
  }
  return failed ? 1 : 0;
}
