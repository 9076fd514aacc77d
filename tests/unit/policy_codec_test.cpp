// proto/policy_codec: Postfix's policy delegation requests, the answer
// decoder (whole and dribbled) and the access(5) actions as replies.
#include "proto/policy_codec.hpp"

#include <doctest/doctest.h>

#include <string>

#include "harness.hpp"

using namespace inboxd;
using inboxd::proto::decide_policy;
using inboxd::proto::policy_answer_decoder;
using inboxd::proto::policy_state;

namespace {

// Feeds the pieces; "done ACTION", "error WHAT" or "more", with the octets taken.
std::string decode(const std::vector<std::string_view>& pieces) {
  policy_answer_decoder d;
  std::size_t taken = 0;
  policy_answer_decoder::result r;
  for (auto p : pieces) {
    r = d.feed(p);
    taken += r.consumed;
    if (r.st != policy_answer_decoder::status::need_more) break;
  }
  std::string out;
  switch (r.st) {
    case policy_answer_decoder::status::done: out = "done " + std::string(d.action()); break;
    case policy_answer_decoder::status::error: out = "error " + std::string(d.error()); break;
    case policy_answer_decoder::status::need_more: out = "more"; break;
  }
  return out + " " + std::to_string(taken);
}

std::string decode(std::string_view wire) {
  return test::same_when_dribbled(wire, [](const auto& p) { return decode(p); });
}

std::string reply_at_rcpt(std::string_view action) {
  return decide_policy(action, policy_state::rcpt, "b@example.com").reply;
}

}  // namespace

TEST_CASE("policy request: every attribute, values without line ends, an empty line last") {
  std::string out;
  proto::encode_policy_request({.protocol_state = "RCPT",
                                .protocol_name = "ESMTP",
                                .helo_name = "client.example",
                                .queue_id = "4F9D1A2B3C",
                                .sender = "a@example.com",
                                .recipient = "b@example.com\r\naction=OK",
                                .client_address = "192.0.2.1",
                                .client_port = 4711,
                                .client_name = "unknown",
                                .reverse_client_name = "unknown",
                                .instance = "1.2",
                                .sasl_method = "PLAIN",
                                .sasl_username = "you",
                                .size = 12345,
                                .tls = "TLSv1.3 with cipher TLS-AES-256-GCM-SHA384"},
                               out);
  CHECK(out.starts_with(
      "request=smtpd_access_policy\nprotocol_state=RCPT\nprotocol_name=ESMTP\n"
      "helo_name=client.example\nqueue_id=4F9D1A2B3C\nsender=a@example.com\n"
      "recipient=b@example.comaction=OK\nrecipient_count=0\nclient_address=192.0.2.1\n"
      "client_name=unknown\nreverse_client_name=unknown\ninstance=1.2\nsasl_method=PLAIN\n"
      "sasl_username=you\nsasl_sender=\nsize=12345\n"));
  CHECK(out.find("\nencryption_protocol=TLSv1.3\nencryption_cipher=TLS-AES-256-GCM-SHA384\n") !=
        out.npos);
  CHECK(out.find("\netrn_domain=\n") != out.npos);  // postgrey then answers 4.2.0
  CHECK(out.ends_with("\nclient_port=4711\n\n"));
  CHECK(out.find("\n\n") == out.size() - 2);
}

TEST_CASE("policy answer: action then an empty line, whole or dribbled") {
  CHECK(decode("action=DUNNO\n\n") == "done DUNNO 14");
  CHECK(decode("action=REJECT no thanks\r\n\r\n") == "done REJECT no thanks 27");
  CHECK(decode("action=DUNNO\n\naction=OK\n\n") == "done DUNNO 14");  // The rest is not taken.
  CHECK(decode("action=DEFER_IF_PERMIT Greylisted\n") == "more 34");
}

TEST_CASE("policy answer: malformed, repeated, missing or oversize is an error") {
  CHECK(decode("\n") == "error no action in the answer 1");
  CHECK(decode("garbage\n\n") == "error malformed answer 8");
  CHECK(decode("reason=x\naction=OK\n\n") == "error unexpected attribute in the answer 9");
  CHECK(decode("action=OK\naction=REJECT\n\n") == "error two actions in the answer 24");
  std::string big = "action=" + std::string(5000, 'x');
  CHECK(decode(big).starts_with("error answer too long 4096"));
  std::string many;
  while (many.size() < 5000) many += "action=OK\n";
  CHECK(decode(many).starts_with("error two actions"));
}

TEST_CASE("policy actions: OK, DUNNO and digits proceed; REJECT and DEFER as Postfix words them") {
  for (auto a : {"OK", "dunno", "DUNNO whatever", "RELAY", "20260101", "450"}) {
    auto d = decide_policy(a, policy_state::rcpt, "b@example.com");
    CHECK(d.action == filter_action::proceed);
    CHECK(d.reply.empty());
  }
  CHECK(reply_at_rcpt("REJECT") ==
        "554 5.7.1 <b@example.com>: Recipient address rejected: Access denied");
  CHECK(reply_at_rcpt("REJECT go away") ==
        "554 5.7.1 <b@example.com>: Recipient address rejected: go away");
  CHECK(reply_at_rcpt("DEFER") ==
        "450 4.7.1 <b@example.com>: Recipient address rejected: Access denied");
  CHECK(reply_at_rcpt("DEFER_IF_PERMIT") ==
        "450 4.7.1 <b@example.com>: Recipient address rejected: Service unavailable");
  CHECK(reply_at_rcpt("HOLD held") ==
        "450 4.7.1 <b@example.com>: Recipient address rejected: held");
  CHECK(decide_policy("DEFER_IF_PERMIT x", policy_state::rcpt, "b").action ==
        filter_action::tempfail);
  CHECK(decide_policy("REJECT", policy_state::rcpt, "b").action == filter_action::reject);
}

TEST_CASE("policy actions: an enhanced code in the text is used, of the reply's class") {
  // postgrey's greylisting.
  CHECK(reply_at_rcpt("DEFER_IF_PERMIT 4.2.0 Greylisted, see http://x/help/example.com.html") ==
        "450 4.2.0 <b@example.com>: Recipient address rejected: Greylisted, see "
        "http://x/help/example.com.html");
  CHECK(reply_at_rcpt("REJECT 4.7.0 wrong class") ==
        "554 5.7.0 <b@example.com>: Recipient address rejected: wrong class");
  CHECK(reply_at_rcpt("REJECT 5.7 not a code") ==
        "554 5.7.1 <b@example.com>: Recipient address rejected: 5.7 not a code");
}

TEST_CASE("policy actions: 4NN and 5NN text refuse with that code") {
  CHECK(reply_at_rcpt("551 5.1.1 no such user") ==
        "551 5.1.1 <b@example.com>: Recipient address rejected: no such user");
  CHECK(reply_at_rcpt("452 slow down") ==
        "452 4.7.1 <b@example.com>: Recipient address rejected: slow down");
  CHECK(decide_policy("452 slow down", policy_state::rcpt, "b").action == filter_action::tempfail);
  CHECK(decide_policy("550 x", policy_state::rcpt, "b").action == filter_action::reject);
  CHECK(reply_at_rcpt("650 six") == "451 4.3.5 Server configuration error");
}

TEST_CASE("policy actions: at the end of the message the reply names it") {
  auto d = decide_policy("REJECT 5.1.1 spam", policy_state::end_of_message, "");
  CHECK(d.reply == "554 5.0.0 <END-OF-MESSAGE>: End-of-data rejected: spam");
  auto p = decide_policy("PREPEND X-Late: yes", policy_state::end_of_message, "");
  CHECK(p.action == filter_action::proceed);
  CHECK(p.prepend.empty());  // Postfix: PREPEND must be used before the end of the message.
  CHECK(p.warn);
}

TEST_CASE("policy actions: PREPEND, WARN, DISCARD; anything else is a configuration error") {
  auto p = decide_policy("PREPEND X-Greylist: delayed 60 seconds", policy_state::rcpt, "b");
  CHECK(p.action == filter_action::proceed);
  CHECK(p.prepend == "X-Greylist: delayed 60 seconds");
  CHECK(decide_policy("PREPEND not a header", policy_state::rcpt, "b").prepend.empty());
  auto w = decide_policy("WARN looks odd", policy_state::rcpt, "b");
  CHECK(w.action == filter_action::proceed);
  CHECK(w.warn);
  CHECK(decide_policy("DISCARD", policy_state::rcpt, "b").action == filter_action::discard);
  for (auto a : {"", "FROBNICATE", "FILTER smtp:[127.0.0.1]:10025", "REDIRECT x@y", "BCC x@y"}) {
    auto d = decide_policy(a, policy_state::rcpt, "b");
    CHECK(d.action == filter_action::tempfail);
    CHECK(d.reply == "451 4.3.5 Server configuration error");
  }
}
