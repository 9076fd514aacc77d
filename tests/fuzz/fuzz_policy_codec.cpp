// tests/fuzz/fuzz_policy_codec.cpp: proto/policy_codec under hostile
// answers and hostile request values.
//
// Input: eight bytes of split seed, then the bytes. As an answer they are
// fed whole and in random pieces: the split never changes what the decoder
// says or how much it takes, it never takes more than max_answer octets,
// and a decoded action holds no line end. Each action is then mapped for
// RCPT and END-OF-MESSAGE: a refusal is one reply line of the verdict's
// class; a PREPEND comes only at RCPT, as a header field. As request values
// (split at NUL) the bytes are encoded and parsed back: one "name=value"
// line per attribute, the values as given without CR, LF or NUL, then the
// empty line.
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "fuzz_util.hpp"
#include "proto/policy_codec.hpp"

namespace {

using inboxd::proto::policy_answer_decoder;
using status = policy_answer_decoder::status;

struct outcome {
  status st = status::need_more;
  std::size_t taken = 0;
  std::string action;
  bool operator==(const outcome&) const = default;
};

outcome decode(std::string_view wire, inboxd::fuzz::rng* rng) {
  policy_answer_decoder d;
  outcome o;
  std::size_t at = 0;
  while (at < wire.size()) {
    std::size_t n = rng ? 1 + rng->below(wire.size() - at) : wire.size() - at;
    auto r = d.feed(wire.substr(at, n));
    INBOXD_FUZZ_CHECK(r.consumed <= n);
    // While it needs more it takes every octet it is given.
    INBOXD_FUZZ_CHECK(r.st != status::need_more || r.consumed == n);
    o.taken += r.consumed;
    o.st = r.st;
    at += n;
    if (r.st != status::need_more) break;
  }
  INBOXD_FUZZ_CHECK(o.taken <= policy_answer_decoder::max_answer);
  if (o.st == status::done) o.action.assign(d.action());
  INBOXD_FUZZ_CHECK(o.action.find('\n') == std::string::npos);
  return o;
}

void check_decision(std::string_view action, inboxd::proto::policy_state state) {
  auto d = inboxd::proto::decide_policy(action, state, "b@example.com");
  using inboxd::filter_action;
  if (d.action == filter_action::reject || d.action == filter_action::tempfail) {
    char kind = d.action == filter_action::reject ? '5' : '4';
    INBOXD_FUZZ_CHECK(d.reply.size() >= 9 && d.reply[0] == kind && d.reply[3] == ' ');
    INBOXD_FUZZ_CHECK(d.reply[4] == kind && d.reply[5] == '.');
    INBOXD_FUZZ_CHECK(d.reply.find('\n') == std::string::npos);
  } else {
    INBOXD_FUZZ_CHECK(d.reply.empty());
  }
  if (!d.prepend.empty()) {
    INBOXD_FUZZ_CHECK(state == inboxd::proto::policy_state::rcpt);
    INBOXD_FUZZ_CHECK(d.action == filter_action::proceed);
    INBOXD_FUZZ_CHECK(d.prepend.find(':') != std::string::npos);
  }
}

std::string clean(std::string_view v) {
  std::string out;
  for (char c : v)
    if (c != '\r' && c != '\n' && c != '\0') out += c;
  return out;
}

void check_request(std::string_view bytes) {
  std::vector<std::string_view> f;
  while (f.size() < 8) {
    std::size_t nul = bytes.find('\0');
    f.push_back(bytes.substr(0, nul));
    bytes = nul == bytes.npos ? std::string_view() : bytes.substr(nul + 1);
  }
  std::string out;
  inboxd::proto::encode_policy_request({.protocol_state = "RCPT",
                                        .protocol_name = "ESMTP",
                                        .helo_name = f[0],
                                        .queue_id = f[1],
                                        .sender = f[2],
                                        .recipient = f[3],
                                        .client_address = f[4],
                                        .client_name = f[5],
                                        .sasl_username = f[6],
                                        .tls = f[7]},
                                       out);
  INBOXD_FUZZ_CHECK(out.size() >= 2 && out.ends_with("\n\n"));
  std::vector<std::pair<std::string_view, std::string_view>> attrs;
  std::string_view rest(out.data(), out.size() - 1);
  while (!rest.empty()) {
    std::size_t nl = rest.find('\n');
    INBOXD_FUZZ_CHECK(nl != rest.npos);
    std::string_view line = rest.substr(0, nl);
    std::size_t eq = line.find('=');
    INBOXD_FUZZ_CHECK(eq != line.npos && eq > 0);
    attrs.emplace_back(line.substr(0, eq), line.substr(eq + 1));
    rest.remove_prefix(nl + 1);
  }
  auto value = [&](std::string_view name) {
    std::size_t found = 0;
    std::string_view v;
    for (auto& [n, x] : attrs)
      if (n == name) {
        ++found;
        v = x;
      }
    INBOXD_FUZZ_CHECK(found == 1);
    return std::string(v);
  };
  INBOXD_FUZZ_CHECK(value("request") == "smtpd_access_policy");
  INBOXD_FUZZ_CHECK(value("helo_name") == clean(f[0]));
  INBOXD_FUZZ_CHECK(value("queue_id") == clean(f[1]));
  INBOXD_FUZZ_CHECK(value("sender") == clean(f[2]));
  INBOXD_FUZZ_CHECK(value("recipient") == clean(f[3]));
  INBOXD_FUZZ_CHECK(value("client_address") == clean(f[4]));
  INBOXD_FUZZ_CHECK(value("client_name") == clean(f[5]));
  INBOXD_FUZZ_CHECK(value("sasl_username") == clean(f[6]));
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  inboxd::fuzz::input_reader in(data, size);
  inboxd::fuzz::rng rng(in.u64());
  std::string_view wire = in.rest();
  outcome whole = decode(wire, nullptr);
  for (int i = 0; i < 4; ++i) INBOXD_FUZZ_CHECK(decode(wire, &rng) == whole);
  if (whole.st == status::done) {
    check_decision(whole.action, inboxd::proto::policy_state::rcpt);
    check_decision(whole.action, inboxd::proto::policy_state::end_of_message);
  }
  // Every line of the input as an action too, so that the mapping sees
  // what an answer could never carry whole.
  std::string_view lines = wire;
  for (int i = 0; i < 16 && !lines.empty(); ++i) {
    std::size_t nl = lines.find('\n');
    std::string_view l = lines.substr(0, nl);
    if (l.starts_with("action=")) l.remove_prefix(7);
    check_decision(l, inboxd::proto::policy_state::rcpt);
    check_decision(l, inboxd::proto::policy_state::end_of_message);
    lines = nl == lines.npos ? std::string_view() : lines.substr(nl + 1);
  }
  check_request(wire);
  return 0;
}
