// tests/fuzz/fuzz_smtp_reply.cpp: proto::smtp_client (and its reply parser)
// against a hostile next hop.
//
// Input: one byte of options (bit 0 LMTP, bit 1 LMTP on our side, bits 2-3
// STARTTLS none/may/require, bit 4 AUTH, bits 5-6 the message's needs:
// SMTPUTF8, BINARYMIME), eight bytes of split seed, then the hop's bytes. The
// client is driven as the hand-off sink drives it: a message of three
// mailboxes (two for one address) whenever it is ready, its body as soon as it
// started, the TLS handshake taken as done, take() after each outcome. What
// it writes and each message's outcomes are checked against their contracts,
// and must be the same whether the hop's bytes come whole or in pieces.
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "fuzz_util.hpp"
#include "proto/smtp_client.hpp"

namespace {

using inboxd::store_result;
using inboxd::proto::smtp_client;
using inboxd::proto::smtp_client_options;
using state = smtp_client::state;

struct driver {
  smtp_client client;
  std::vector<inboxd::recipient> rcpts;
  inboxd::envelope env;
  std::string transcript;
  bool in_message = false;
  int messages = 0;

  driver(std::uint8_t o)
      : client({.lmtp = (o & 1) != 0,
                .helo = "fuzz.example",
                .starttls = static_cast<smtp_client_options::tls>((o >> 2 & 3) % 3),
                .auth_user = (o & 16) ? "u" : "",
                .auth_password = "p"}) {
    rcpts = {{.address = "a@x", .user = "a", .domain = "x"},
             {.address = "a@x", .user = "a2", .domain = "x"},
             {.address = "b@x", .user = "b", .domain = "x"}};
    env.reverse_path = "s@y";
    env.recipients = rcpts;
    env.independent_outcomes = (o & 2) != 0;
    env.smtputf8 = (o & 32) != 0;
    env.body_binary = (o & 64) != 0;
  }

  // Checks one message's outcomes: one per mailbox, each a reply line, a
  // stored one only with a positive reply.
  void outcomes() {
    INBOXD_FUZZ_CHECK(client.outcomes().size() == 2);
    for (std::size_t i = 0; i < rcpts.size(); ++i) {
      const auto& o = client.outcome_of(i);
      INBOXD_FUZZ_CHECK(o.reply.size() >= 3 && o.reply.size() <= 1100);
      if (o.result == store_result::stored) INBOXD_FUZZ_CHECK(o.reply[0] == '2');
      transcript += "outcome " + std::to_string(static_cast<int>(o.result)) + " " + o.reply + "\n";
    }
  }

  // What the client wrote: commands are whole CRLF lines.
  void take_output() {
    std::string& out = client.output();
    if (!out.empty()) INBOXD_FUZZ_CHECK(in_message || out.ends_with("\r\n"));
    transcript += out;
    out.clear();
  }

  void step() {
    for (int guard = 0; guard < 8; ++guard) {
      take_output();
      switch (client.current()) {
        case state::handshake: client.tls_started(); continue;
        case state::ready:
          if (messages++ >= 4) {
            client.quit();
            continue;
          }
          if (!client.start(env, false)) {
            outcomes();
            continue;
          }
          in_message = true;
          client.body("Subject: x\n\n.a\nline\n");
          client.body(std::string(20000, 'b'));
          client.finish();
          continue;
        case state::done:
          outcomes();
          in_message = false;
          client.take();
          continue;
        default: return;
      }
    }
  }

  void feed(std::string_view bytes) {
    do {
      if (!client.feed(bytes)) {
        take_output();
        if (in_message) outcomes();
        in_message = false;
        transcript += "failed " + client.error() + "\n";
        return;
      }
      step();
    } while (!bytes.empty());
  }
};

std::string run(std::uint8_t options, std::string_view wire, std::uint64_t seed, bool whole) {
  driver d(options);
  inboxd::fuzz::rng r(seed);
  while (!wire.empty() && d.client.current() != state::failed) {
    std::size_t n = whole ? wire.size() : r.piece(wire.size());
    d.feed(wire.substr(0, n));
    wire.remove_prefix(n);
  }
  return d.transcript;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  inboxd::fuzz::input_reader in(data, size);
  std::uint8_t options = in.byte();
  std::uint64_t seed = in.u64();
  std::string whole = run(options, in.rest(), seed, true);
  std::string split = run(options, in.rest(), seed, false);
  // Bytes in the same read as the 220 to STARTTLS are refused (an injection,
  // CVE-2011-0411); split after it they are the hop's first words over TLS.
  // That one difference depends on the split by design.
  if (whole.find("after its STARTTLS reply") == whole.npos &&
      split.find("after its STARTTLS reply") == split.npos)
    INBOXD_FUZZ_CHECK(whole == split);
  return 0;
}
