// The milter codec (proto/milter_codec.hpp): the packets we send, byte for
// byte, and the decoder fed the milter's replies whole and split at every
// byte, refusing what is malformed or too long.
#include <doctest/doctest.h>

#include <string>
#include <vector>

#include "proto/milter_codec.hpp"

using namespace inboxd::proto::milter;
using namespace std::string_literals;

namespace {

std::string packet(char code, std::string_view data) {
  std::string out;
  auto len = static_cast<std::uint32_t>(data.size() + 1);
  out += static_cast<char>(len >> 24);
  out += static_cast<char>(len >> 16);
  out += static_cast<char>(len >> 8);
  out += static_cast<char>(len);
  out += code;
  out.append(data);
  return out;
}

// Decodes every reply in wire, fed in pieces of at most `piece` octets;
// each as "code text|value|index", or "error: why".
std::vector<std::string> decode(std::string_view wire, std::size_t piece) {
  decoder d;
  std::vector<std::string> out;
  while (!wire.empty()) {
    std::size_t n = d.feed(wire.substr(0, piece));
    wire.remove_prefix(n);
    if (d.state() == decoder::status::error) {
      out.push_back("error: " + std::string(d.error()));
      return out;
    }
    if (d.state() == decoder::status::ready) {
      const reply& r = d.get();
      out.push_back(std::string(name(r.code)) + " " + std::string(r.text) + "|" +
                    std::string(r.value) + "|" + std::to_string(r.index));
      d.next();
    }
  }
  return out;
}

}  // namespace

TEST_CASE("milter codec: the commands we send, byte for byte") {
  std::string out;
  encode_optneg(out, action::addhdrs | action::chghdrs, step::noconnect);
  CHECK(out == "\0\0\0\x0dO\0\0\0\x06\0\0\0\x11\0\0\0\x01"s);
  out.clear();
  encode_connect(out, "client.example", '4', 25, "192.0.2.1");
  CHECK(out == packet('C',
                      "client.example\0"
                      "4\0\x19"
                      "192.0.2.1\0"s));
  out.clear();
  encode_connect(out, "unknown", 'U', 0, "");
  CHECK(out == packet('C', "unknown\0U"s));
  out.clear();
  encode_args(out, command::mail, "a@example.com", "SIZE=100  BODY=8BITMIME");
  CHECK(out == packet('M', "<a@example.com>\0SIZE=100\0BODY=8BITMIME\0"s));
  out.clear();
  encode_args(out, command::rcpt, "", "");
  CHECK(out == packet('R', "<>\0"s));
  out.clear();
  macro m[] = {{"j", "mx.example"}, {"{daemon_name}", "inboxd"}};
  encode_macros(out, command::connect, m);
  CHECK(out == packet('D', "Cj\0mx.example\0{daemon_name}\0inboxd\0"s));
  out.clear();
  encode_header(out, "Subject", "hi\n\tthere");
  CHECK(out == packet('L', "Subject\0hi\n\tthere\0"s));
  out.clear();
  encode(out, command::eob);
  CHECK(out ==
        "\0\0\0\x01"
        "E"s);
}

TEST_CASE("milter codec: replies, whole or split at every byte, give the same") {
  std::string wire = packet('O', "\0\0\0\x06\0\0\0\x01\0\0\0\x80"s) + packet('c', "") +
                     packet('y', "550 5.7.1 go away\0"s) + packet('h', "X-Spam\0yes\0"s) +
                     packet('i', "\0\0\0\x02X-Top\0 t\0"s) + packet('m', "\0\0\0\x01Subject\0\0"s) +
                     packet('e', "<s@example.com>\0"s) +
                     packet('2', "<r@example.com>\0NOTIFY=NEVER\0"s) +
                     packet('-', "<old@example.com>\0"s) + packet('q', "suspicious\0"s) +
                     packet('p', "") + packet('a', "");
  std::vector<std::string> want = {"optneg ||0",
                                   "continue ||0",
                                   "replycode 550 5.7.1 go away||0",
                                   "addheader X-Spam|yes|0",
                                   "insheader X-Top| t|2",
                                   "chgheader Subject||1",
                                   "chgfrom <s@example.com>||0",
                                   "addrcpt_par <r@example.com>|NOTIFY=NEVER|0",
                                   "delrcpt <old@example.com>||0",
                                   "quarantine suspicious||0",
                                   "progress ||0",
                                   "accept ||0"};
  for (std::size_t piece = 1; piece <= wire.size(); ++piece) CHECK(decode(wire, piece) == want);
}

TEST_CASE("milter codec: OPTNEG's version, actions, steps and symbol lists") {
  decoder d;
  std::string wire = packet('O', "\0\0\0\x06\0\0\0\x15\0\x10\0\x01\0\0\0\x02{mail_addr} i\0"s);
  CHECK(d.feed(wire) == wire.size());
  REQUIRE(d.state() == decoder::status::ready);
  CHECK(d.get().version == 6);
  CHECK(d.get().actions == 0x15);
  CHECK(d.get().steps == 0x100001);
  CHECK(d.get().symlists[2] == "{mail_addr} i");
  CHECK(d.get().symlists[0].empty());
}

TEST_CASE("milter codec: the decoder takes one packet at a time") {
  decoder d;
  std::string wire = packet('c', "") + packet('a', "");
  CHECK(d.feed(wire) == 5);
  CHECK(d.feed(wire.substr(5)) == 0);  // Not before next().
  d.next();
  CHECK(d.feed(wire.substr(5)) == 5);
  CHECK(d.get().code == reply_code::accept);
}

TEST_CASE("milter codec: malformed or oversize packets are refused") {
  auto err = [](std::string wire) {
    auto r = decode(wire, wire.size());
    return r.empty() ? std::string("none") : r.back();
  };
  CHECK(err("\0\0\0\0"s) == "error: empty packet");
  CHECK(err("\x7f\0\0\0c"s) == "error: packet too long");
  CHECK(err(packet('Z', "")) == "error: unknown reply");
  CHECK(err(packet('y', "550 no nul")) == "error: bad REPLYCODE");
  CHECK(err(packet('h', "X-Only-Name\0"s)) == "error: bad header change");
  CHECK(err(packet('h', "\0value\0"s)) == "error: bad header change");
  CHECK(err(packet('i', "\0\0"s)) == "error: short header index");
  CHECK(err(packet('O', "\0\0\0\x06"s)) == "error: short OPTNEG");
  CHECK(err(packet('O', "\0\0\0\x06\0\0\0\0\0\0\0\0\0\0\0\x09x\0"s)) ==
        "error: bad OPTNEG symbol list");
  CHECK(err(packet('+', "a\0b\0"s)) == "error: bad argument");
  // The largest packet is accepted; one octet more is not.
  CHECK(err(packet('b', std::string(max_packet - 1, 'x'))) ==
        "replbody " + std::string(max_packet - 1, 'x') + "||0");
  CHECK(err(packet('b', std::string(max_packet, 'x'))) == "error: packet too long");
}

namespace {

// Feeds msg to a header_section in pieces of `piece`; returns the header
// section and the body as they would be written out.
std::pair<header_section, std::string> split(std::string_view msg, std::size_t piece) {
  header_section h;
  std::string body;
  while (!msg.empty()) {
    std::string_view p = msg.substr(0, piece);
    msg.remove_prefix(p.size());
    if (h.feed(p, body)) {
      body.append(p);
      body.append(msg);
      break;
    }
  }
  h.finish(body);
  return {std::move(h), body};
}

}  // namespace

TEST_CASE("milter headers: the fields the milter sees, split anywhere, and the body") {
  std::string msg =
      "Received: from x by y\n\tfor z\nSubject: hi\n  there\nFrom:<a@b>\n\nbody\nline\n";
  for (std::size_t piece = 1; piece <= msg.size(); ++piece) {
    auto [h, body] = split(msg, piece);
    CHECK(body == "body\nline\n");
    auto v = h.visible(false);
    REQUIRE(v.size() == 2);
    CHECK(v[0].name == "Subject");
    CHECK(v[0].value == "hi\n  there");
    CHECK(v[1].name == "From");
    CHECK(v[1].value == "<a@b>");
    CHECK(h.visible(true)[0].value == " hi\n  there");
    CHECK(h.render() + body == msg);
  }
  // A line that is no header field starts the body.
  auto [h, body] = split("Received: r\nSubject: s\nnot a header\nmore\n", 5);
  CHECK(h.visible(false).size() == 1);
  CHECK(body == "not a header\nmore\n");
}

TEST_CASE("milter headers: add, insert and change with Postfix's index semantics") {
  auto [h, body] = split("Received: ours\nSubject: one\nX-A: 1\nX-a: 2\n\nbody\n", 1000);
  CHECK(h.add("X-Added", "yes", false));
  CHECK(h.insert(0, "DKIM-Signature", "v=1;\r\n b=x", false));  // Above our Received.
  CHECK(h.insert(2, "X-Two", " two", true));
  CHECK(h.change(2, "x-a", "changed", false));  // The second X-A, counted without ours.
  CHECK(h.change(1, "Subject", "", false));     // Deleted.
  CHECK(h.change(3, "X-A", "missing", false));  // No third: added.
  CHECK(h.change(1, "Received", "", false));    // Ours is not the milter's to delete...
  CHECK(h.render() ==
        "DKIM-Signature: v=1;\n b=x\nReceived: ours\nX-Two: two\nX-A: 1\nx-a: changed\n"
        "X-Added: yes\nX-A: missing\n\n");
  CHECK_FALSE(h.add("Bad Name", "x", false));
  CHECK_FALSE(h.add("Bad:Name", "x", false));
  CHECK(h.add("X-Fold", "a\nb\n\nc", false));  // Unfolded lines are folded again.
  CHECK(h.render().find("X-Fold: a\n\tb\n\tc\n") != std::string::npos);
}

TEST_CASE("milter codec: envelope addresses from a milter") {
  auto take = [](std::string_view text, bool utf8 = false, bool empty_ok = false) {
    std::string_view a = "unchanged";
    bool ok = envelope_address(text, utf8, empty_ok, a);
    return ok ? "ok " + std::string(a) : "refused " + std::string(a);
  };
  CHECK(take("<a@example.com>") == "ok a@example.com");
  CHECK(take("a@example.com") == "ok a@example.com");
  CHECK(take("<>", false, true) == "ok ");
  CHECK(take("<>") == "refused unchanged");
  CHECK(take("") == "refused unchanged");
  CHECK(take("<a@example.com>\r\nRCPT TO:<b@example.com>") == "refused unchanged");
  CHECK(take("a\n@example.com") == "refused unchanged");
  CHECK(take("a b@example.com") == "refused unchanged");
  CHECK(take("<<a@example.com>>") == "refused unchanged");
  CHECK(take("a\x7f@example.com") == "refused unchanged");
  CHECK(take("\xc3\xbc@example.com") == "refused unchanged");
  CHECK(take("\xc3\xbc@example.com", true) == "ok \xc3\xbc@example.com");
  CHECK(take("\xc3@example.com", true) == "refused unchanged");
  CHECK(take("\xc2\x85@example.com", true) == "refused unchanged");  // C1 control
  std::string longest = std::string(max_address - 12, 'a') + "@example.com";
  CHECK(take("<" + longest + ">") == "ok " + longest);
  CHECK(take("<a" + longest + ">") == "refused unchanged");
}
