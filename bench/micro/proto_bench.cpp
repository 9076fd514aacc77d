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
// --json prints one JSON object. A benchmark, never a timed test (STYLE.md).
#include <fmt/format.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "inboxd/config.hpp"
#include "inboxd/policy.hpp"
#include "inboxd/sink.hpp"
#include "proto/data_decoder.hpp"
#include "proto/session.hpp"
#include "proto/settings.hpp"

namespace {

using namespace inboxd;
using clock_type = std::chrono::steady_clock;

constexpr std::size_t read_buffer_size = 64 * 1024;

// Counts and discards, committing at once (the sink of `inboxd --sink null`
// does the same, but lives in libinboxd, which links libuv).
class null_sink final : public sink {
 public:
  std::uint64_t messages = 0;
  std::uint64_t bytes = 0;

  delivery* begin(const envelope& env, delivery_listener& listener) override {
    open_.emplace(*this, listener, env.recipients.size());
    return &*open_;
  }

 private:
  class null_delivery final : public delivery {
   public:
    null_delivery(null_sink& s, delivery_listener& l, std::size_t recipients)
        : sink_(s), listener_(l), results_(recipients) {}
    bool write(std::string_view b) override {
      sink_.bytes += b.size();
      return true;
    }
    void commit() override {
      ++sink_.messages;
      listener_.committed(results_);
    }
    void abort() noexcept override {}

   private:
    null_sink& sink_;
    delivery_listener& listener_;
    std::vector<store_outcome> results_;
  };
  // One delivery at a time: a session holds at most one open transaction.
  std::optional<null_delivery> open_;
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

// One pass of the session over the transcript; fails loudly if a message is
// lost (a benchmark of a broken parser measures nothing).
pass_result session_pass(const workload& w, const proto::settings_ptr& settings, null_sink& sink,
                         std::vector<char>& buf) {
  null_events events;
  proto::queue_id_source ids{0x12345678, 0x4242};
  std::uint64_t before = sink.messages;
  std::size_t reply_bytes = 0;
  auto t0 = clock_type::now();
  {
    proto::session s(settings, events, ids, "192.0.2.1");
    s.start();
    std::size_t pos = 0, held = 0;
    while (pos < w.transcript.size() || held > 0) {
      std::size_t n = std::min(buf.size() - held, w.transcript.size() - pos);
      std::memcpy(buf.data() + held, w.transcript.data() + pos, n);  // recv()
      pos += n;
      held += n;
      if (s.waiting() || s.closing()) break;
      std::size_t used = s.feed(std::span<char>(buf.data(), held));
      reply_bytes += s.output().size();
      s.output().clear();
      if (used == 0 && n == 0) break;  // stuck: checked below
      std::memmove(buf.data(), buf.data() + used, held - used);
      held -= used;
    }
  }
  double secs = std::chrono::duration<double>(clock_type::now() - t0).count();
  std::uint64_t done = sink.messages - before;
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

}  // namespace

int main(int argc, char** argv) {
  bool json = false;
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
    } else {
      std::fprintf(stderr,
                   "usage: proto-bench [--json] [--seconds S (0.5)] [--reps N (3)]\n"
                   "Throughput of the sans-I/O session and the data decoder over a fixed\n"
                   "pipelined transcript (1 KiB and 64 KiB bodies); best of N runs of S s.\n");
      return a == "--help" || a == "-h" ? 0 : 2;
    }
  }
  if (seconds <= 0 || reps < 1) {
    std::fprintf(stderr, "proto-bench: --seconds and --reps must be positive\n");
    return 2;
  }

  auto sink = std::make_shared<null_sink>();
  auto s = std::make_shared<proto::settings>();
  s->limits.hostname = "inboxd.example";
  s->policy = make_rules_policy({});
  s->store = sink;
  proto::settings_ptr settings = s;

  std::vector<workload> loads;
  loads.push_back(make_workload("1k", 1024, 4096));
  loads.push_back(make_workload("64k", 64 * 1024, 128));
  std::vector<char> buf(read_buffer_size);

  std::string out = json ? "{\"tool\":\"proto-bench\"" : "";
  if (!json)
    fmt::print("{:<8}{:>14}{:>12}{:>16}{:>16}{:>14}\n", "body", "transcript", "session",
               "session", "decoder", "decoder");
  if (!json)
    fmt::print("{:<8}{:>14}{:>12}{:>16}{:>16}{:>14}\n", "", "MB", "MB/s", "transactions/s",
               "MB/s", "messages/s");
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
  if (json) {
    out += fmt::format(",\"seconds\":{},\"reps\":{}}}", seconds, reps);
    fmt::print("{}\n", out);
  } else {
    fmt::print("MB = 10^6 bytes of wire text; best of {} runs of >= {} s each\n", reps, seconds);
  }
  return 0;
}
