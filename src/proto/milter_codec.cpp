#include "proto/milter_codec.hpp"

#include <algorithm>

#include "proto/utf8.hpp"

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

bool envelope_address(std::string_view text, bool utf8, bool empty_ok,
                      std::string_view& address) noexcept {
  if (text.size() >= 2 && text.front() == '<' && text.back() == '>')
    text = text.substr(1, text.size() - 2);
  if (text.size() > max_address || (text.empty() && !empty_ok)) return false;
  bool ascii = true;
  for (char ch : text) {
    auto c = static_cast<unsigned char>(ch);
    if (c <= 0x20 || c == 0x7f || c == '<' || c == '>') return false;
    if (c >= 0x80) ascii = false;
  }
  if (!ascii && (!utf8 || !is_utf8_text(text))) return false;
  address = text;
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

namespace inboxd::proto::milter {

namespace {

bool blank(char c) noexcept {
  return c == ' ' || c == '\t';
}

bool iequal(std::string_view a, std::string_view b) noexcept {
  return a.size() == b.size() && std::equal(a.begin(), a.end(), b.begin(), [](char x, char y) {
           return (x | 0x20) == (y | 0x20) &&
                  ((x >= 'A' && x <= 'Z') || (x >= 'a' && x <= 'z') || x == y);
         });
}

// The field name of a header line ("Subject" of "Subject : x"), or empty
// when the line is no header field (RFC 5322 2.2: printable, no colon).
std::string_view field_name(std::string_view l) noexcept {
  std::size_t colon = l.find(':');
  if (colon == 0 || colon == l.npos) return {};
  std::string_view name = l.substr(0, colon);
  while (!name.empty() && blank(name.back())) name.remove_suffix(1);
  for (char c : name)
    if (static_cast<unsigned char>(c) <= 32 || static_cast<unsigned char>(c) >= 127) return {};
  return name;
}

// A milter's value as we store it: LF line ends, no CR or NUL, every
// folded line starting with white space so that it stays in the field.
std::string clean_value(std::string_view v) {
  std::string out;
  for (std::size_t i = 0; i < v.size(); ++i) {
    char c = v[i];
    if (c == '\r' || c == '\0') continue;
    if (c == '\n') {
      std::size_t j = i + 1;
      if (j < v.size() && v[j] == '\r') ++j;
      if (j >= v.size()) break;    // A final line end is no line.
      if (v[j] == '\n') continue;  // Nor an empty one: it would end the header.
      out += '\n';
      if (!blank(v[j])) out += '\t';
      continue;
    }
    out += c;
  }
  return out;
}

std::string make_field(std::string_view name, std::string_view value, bool leadspc) {
  std::string f(name);
  f += ':';
  // Sendmail eats one space after the colon unless SMFIP_HDR_LEADSPC, and
  // gives it back when it writes a milter's header.
  if (!leadspc) f += ' ';
  f += clean_value(value);
  return f;
}

}  // namespace

// One complete line: false once the section ended.
bool header_section::line(std::string_view l) {
  if (l.empty()) {
    blank_ = true;
    return false;
  }
  if (blank(l[0]) && !fields_.empty()) {
    fields_.back().text.append("\n").append(l);
    return true;
  }
  std::string_view name = field_name(l);
  if (name.empty()) return false;
  bool ours = !seen_ours_ && iequal(name, "Received");
  seen_ours_ = seen_ours_ || ours;
  fields_.push_back({std::string(l), ours});
  return true;
}

bool header_section::feed(std::string_view& bytes, std::string& body) {
  while (!done_ && !bytes.empty()) {
    std::size_t lf = bytes.find('\n');
    std::size_t n = lf == bytes.npos ? bytes.size() : lf + 1;
    if (bytes_ + line_.size() + n > max_bytes) {
      done_ = true;  // Too much header: the rest is body, from this line on.
      body += line_;
      line_.clear();
      return true;
    }
    line_.append(bytes.substr(0, n));
    bytes.remove_prefix(n);
    if (lf == bytes.npos) break;
    std::string_view l = std::string_view(line_).substr(0, line_.size() - 1);
    if (!l.empty() && l.back() == '\r') l.remove_suffix(1);
    if (!line(l)) {
      done_ = true;
      if (!blank_) body += line_;  // Not a header field: the body begins with it.
    } else {
      bytes_ += line_.size();
    }
    line_.clear();
  }
  return done_;
}

void header_section::finish(std::string& body) {
  if (done_) return;
  done_ = true;
  if (!line_.empty() && !line(line_)) body += line_;
  line_.clear();
}

std::vector<header_section::field_view> header_section::visible(bool leadspc) const {
  std::vector<field_view> out;
  for (const field& f : fields_) {
    if (f.ours) continue;
    std::string_view t = f.text;
    std::string_view name = field_name(t);
    std::string_view value = t.substr(t.find(':') + 1);
    if (!leadspc && !value.empty() && value[0] == ' ') value.remove_prefix(1);
    out.push_back({name, value});
  }
  return out;
}

bool header_section::add(std::string_view name, std::string_view value, bool leadspc) {
  return insert(static_cast<std::uint32_t>(-1), name, value, leadspc);
}

bool header_section::insert(std::uint32_t index, std::string_view name, std::string_view value,
                            bool leadspc) {
  std::string f = make_field(name, value, leadspc);
  if (field_name(f) != name || !room(f.size())) return false;
  bytes_ += f.size() + 1;
  std::size_t at = std::min<std::size_t>(index, fields_.size());
  work_ += fields_.size() - at + 1;
  fields_.insert(fields_.begin() + static_cast<std::ptrdiff_t>(at), {std::move(f), false});
  return true;
}

bool header_section::change(std::uint32_t index, std::string_view name, std::string_view value,
                            bool leadspc) {
  if (index == 0) index = 1;  // Sendmail treats 0 as the first.
  std::uint32_t seen = 0;
  for (auto it = fields_.begin(); it != fields_.end(); ++it) {
    ++work_;
    if (it->ours || !iequal(field_name(it->text), name) || ++seen < index) continue;
    if (value.empty()) {
      work_ += static_cast<std::size_t>(fields_.end() - it);
      fields_.erase(it);
      return true;
    }
    std::string f = make_field(name, value, leadspc);
    if (!room(f.size())) return false;
    bytes_ += f.size();
    it->text = std::move(f);
    return true;
  }
  ++work_;
  return value.empty() || add(name, value, leadspc);
}

std::string header_section::render() const {
  std::string out;
  for (const field& f : fields_) out.append(f.text).append("\n");
  if (blank_) out += '\n';
  return out;
}

}  // namespace inboxd::proto::milter
