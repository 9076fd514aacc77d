#include "proto/milter_codec.hpp"

#include <algorithm>

namespace inboxd::proto::milter {

namespace {

void put32(std::string& out, std::uint32_t v) {
  out += static_cast<char>(v >> 24);
  out += static_cast<char>(v >> 16);
  out += static_cast<char>(v >> 8);
  out += static_cast<char>(v);
}

std::uint32_t get32(std::string_view s) noexcept {
  auto b = [&](std::size_t i) {
    return static_cast<std::uint32_t>(static_cast<unsigned char>(s[i]));
  };
  return b(0) << 24 | b(1) << 16 | b(2) << 8 | b(3);
}

// Starts a packet whose data will be `size` octets.
void start(std::string& out, command cmd, std::size_t size) {
  put32(out, static_cast<std::uint32_t>(size + 1));
  out += static_cast<char>(cmd);
}

void put_string(std::string& out, std::string_view s) {
  // A NUL inside would end the string early on the other side.
  out.append(s.substr(0, s.find('\0')));
  out += '\0';
}

// Takes one NUL-terminated string from the front of data.
bool take_string(std::string_view& data, std::string_view& out) noexcept {
  std::size_t nul = data.find('\0');
  if (nul == data.npos) return false;
  out = data.substr(0, nul);
  data.remove_prefix(nul + 1);
  return true;
}

}  // namespace

void encode(std::string& out, command cmd, std::string_view data) {
  start(out, cmd, data.size());
  out.append(data);
}

void encode_optneg(std::string& out, std::uint32_t actions, std::uint32_t steps) {
  start(out, command::optneg, 12);
  put32(out, version);
  put32(out, actions);
  put32(out, steps);
}

void encode_macros(std::string& out, command for_cmd, std::span<const macro> macros) {
  std::string data(1, static_cast<char>(for_cmd));
  for (const macro& m : macros) {
    put_string(data, m.name);
    put_string(data, m.value);
  }
  encode(out, command::macro, data);
}

void encode_connect(std::string& out, std::string_view host, char family, std::uint16_t port,
                    std::string_view address) {
  std::string data;
  put_string(data, host);
  data += family;
  if (family != 'U') {
    data += static_cast<char>(port >> 8);
    data += static_cast<char>(port);
    put_string(data, address);
  }
  encode(out, command::connect, data);
}

void encode_args(std::string& out, command cmd, std::string_view address, std::string_view params) {
  std::string data = "<";
  data.append(address.substr(0, address.find('\0')));
  data += ">";
  data += '\0';
  // ESMTP parameters are separated by spaces (RFC 5321 4.1.2).
  while (!params.empty()) {
    std::size_t sp = params.find(' ');
    std::string_view p = params.substr(0, sp);
    if (!p.empty()) put_string(data, p);
    params = sp == params.npos ? std::string_view() : params.substr(sp + 1);
  }
  encode(out, cmd, data);
}

void encode_header(std::string& out, std::string_view name, std::string_view value) {
  std::string data;
  put_string(data, name);
  put_string(data, value);
  encode(out, command::header, data);
}

std::size_t decoder::feed(std::string_view input) {
  if (st_ != status::need_more) return 0;
  std::size_t taken = 0;
  while (taken < input.size()) {
    std::size_t n = std::min(want_ - buf_.size(), input.size() - taken);
    buf_.append(input.substr(taken, n));
    taken += n;
    if (buf_.size() < want_) continue;
    if (want_ == 4) {
      std::uint32_t len = get32(buf_);
      if (len == 0) return fail("empty packet"), taken;
      if (len > max_packet) return fail("packet too long"), taken;
      want_ = 4 + len;
      continue;
    }
    if (parse()) st_ = status::ready;
    return taken;
  }
  return taken;
}

void decoder::next() noexcept {
  if (st_ != status::ready) return;
  buf_.clear();
  want_ = 4;
  reply_ = reply{};
  st_ = status::need_more;
}

bool decoder::parse() noexcept {
  std::string_view data = std::string_view(buf_).substr(5);
  reply r{.code = static_cast<reply_code>(buf_[4])};
  using enum reply_code;
  switch (r.code) {
    case accept:
    case continue_:
    case discard:
    case reject:
    case tempfail:
    case progress:
    case skip:
    case shutdown:
    case conn_fail: break;  // Any data is ignored, as libmilter sends none.
    case optneg:
      if (data.size() < 12) return fail("short OPTNEG");
      r.version = get32(data);
      r.actions = get32(data.substr(4));
      r.steps = get32(data.substr(8));
      data.remove_prefix(12);
      while (!data.empty()) {
        std::string_view list;
        if (data.size() < 5) return fail("bad OPTNEG symbol list");
        std::uint32_t stage = get32(data);
        data.remove_prefix(4);
        if (stage >= macro_stages || !take_string(data, list))
          return fail("bad OPTNEG symbol list");
        r.symlists[stage] = list;
      }
      break;
    case replycode:
      if (!take_string(data, r.text) || !data.empty()) return fail("bad REPLYCODE");
      break;
    case insheader:
    case chgheader:
      if (data.size() < 4) return fail("short header index");
      r.index = get32(data);
      data.remove_prefix(4);
      [[fallthrough]];
    case addheader:
      if (!take_string(data, r.text) || !take_string(data, r.value) || !data.empty() ||
          r.text.empty())
        return fail("bad header change");
      break;
    case chgfrom:
    case addrcpt_par:
      if (!take_string(data, r.text) || (!data.empty() && !take_string(data, r.value)) ||
          !data.empty())
        return fail("bad address change");
      break;
    case addrcpt:
    case delrcpt:
    case quarantine:
      if (!take_string(data, r.text) || !data.empty()) return fail("bad argument");
      break;
    case setsymlist:
      if (data.size() < 4) return fail("short SETSYMLIST");
      r.index = get32(data);
      data.remove_prefix(4);
      if (!take_string(data, r.text) || !data.empty()) return fail("bad SETSYMLIST");
      break;
    case replbody: r.text = data; break;
    default: return fail("unknown reply");
  }
  reply_ = r;
  return true;
}

std::string_view name(reply_code code) noexcept {
  using enum reply_code;
  switch (code) {
    case addrcpt: return "addrcpt";
    case delrcpt: return "delrcpt";
    case addrcpt_par: return "addrcpt_par";
    case shutdown: return "shutdown";
    case accept: return "accept";
    case replbody: return "replbody";
    case continue_: return "continue";
    case discard: return "discard";
    case chgfrom: return "chgfrom";
    case conn_fail: return "conn_fail";
    case addheader: return "addheader";
    case insheader: return "insheader";
    case setsymlist: return "setsymlist";
    case chgheader: return "chgheader";
    case optneg: return "optneg";
    case progress: return "progress";
    case quarantine: return "quarantine";
    case reject: return "reject";
    case skip: return "skip";
    case tempfail: return "tempfail";
    case replycode: return "replycode";
  }
  return "?";
}

}  // namespace inboxd::proto::milter
