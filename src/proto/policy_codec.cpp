// proto/policy_codec.cpp: see policy_codec.hpp.
#include "proto/policy_codec.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <cctype>

namespace inboxd::proto {

namespace {

// One "name=value" line, the value without the octets that would end it.
void attribute(std::string& out, std::string_view name, std::string_view value) {
  out.append(name);
  out += '=';
  for (char c : value)
    if (c != '\r' && c != '\n' && c != '\0') out += c;
  out += '\n';
}

void attribute(std::string& out, std::string_view name, std::size_t value) {
  fmt::format_to(std::back_inserter(out), FMT_STRING("{}={}\n"), name, value);
}

bool iequal(std::string_view a, std::string_view b) {
  return a.size() == b.size() && std::equal(a.begin(), a.end(), b.begin(), [](char x, char y) {
           return std::tolower(static_cast<unsigned char>(x)) ==
                  std::tolower(static_cast<unsigned char>(y));
         });
}

bool digits(std::string_view s) {
  return !s.empty() && std::all_of(s.begin(), s.end(), [](char c) { return c >= '0' && c <= '9'; });
}

// RFC 3463 2: "class.subject.detail", class 2, 4 or 5, each number of one
// to three digits (Postfix's dsn_valid()).
bool enhanced_code(std::string_view s) {
  if (s.size() < 5 || (s[0] != '2' && s[0] != '4' && s[0] != '5') || s[1] != '.') return false;
  std::string_view rest = s.substr(2);
  std::size_t dot = rest.find('.');
  if (dot == rest.npos) return false;
  std::string_view subject = rest.substr(0, dot), detail = rest.substr(dot + 1);
  return digits(subject) && subject.size() <= 3 && digits(detail) && detail.size() <= 3;
}

// A refusal as Postfix words it: "<code> <enhanced> <name>: <class>
// rejected: <text>". An enhanced code at the start of text replaces
// def_dsn (dsn_split()); its class is made the code's (smtpd_check_reject()
// will not send a 4.x.x with a 5xx). As smtpd_dsn_fix(), a mailbox status
// (x.1.y) fits a recipient, and becomes x.0.0 for the end of the message.
std::string refusal(unsigned code, std::string_view def_dsn, std::string_view text,
                    std::string_view def_text, policy_state state, std::string_view name) {
  std::string dsn(def_dsn);
  std::size_t sp = text.find(' ');
  if (enhanced_code(text.substr(0, sp))) {
    dsn.assign(text.substr(0, sp));
    text = sp == text.npos ? std::string_view() : text.substr(sp + 1);
    while (!text.empty() && (text.front() == ' ' || text.front() == '\t')) text.remove_prefix(1);
  }
  dsn[0] = static_cast<char>('0' + code / 100);
  if (state == policy_state::end_of_message && dsn.compare(1, 3, ".1.") == 0)
    dsn.replace(2, dsn.npos, "0.0");
  if (text.empty()) text = def_text;
  if (state == policy_state::rcpt)
    return fmt::format(FMT_STRING("{} {} <{}>: Recipient address rejected: {}"), code, dsn, name,
                       text);
  return fmt::format(FMT_STRING("{} {} <END-OF-MESSAGE>: End-of-data rejected: {}"), code, dsn,
                     text);
}

// An RFC 5322 2.2 header field on one line: a name of printable ASCII
// without a colon, then a colon (Postfix's is_header()).
bool header_field(std::string_view h) {
  std::size_t colon = h.find(':');
  if (colon == 0 || colon == h.npos) return false;
  return std::all_of(h.begin(), h.begin() + static_cast<std::ptrdiff_t>(colon), [](char c) {
    auto u = static_cast<unsigned char>(c);
    return u > 32 && u < 127;
  });
}

}  // namespace

void encode_policy_request(const policy_request& r, std::string& out) {
  // The TLS line is "<protocol> with cipher <cipher>" (net/connection.cpp).
  std::string_view protocol = r.tls, cipher;
  if (std::size_t with = r.tls.find(" with cipher "); with != r.tls.npos) {
    protocol = r.tls.substr(0, with);
    cipher = r.tls.substr(with + 13);
  }
  // In the order of SMTPD_POLICY_README's example.
  attribute(out, "request", "smtpd_access_policy");
  attribute(out, "protocol_state", r.protocol_state);
  attribute(out, "protocol_name", r.protocol_name);
  attribute(out, "helo_name", r.helo_name);
  attribute(out, "queue_id", r.queue_id);
  attribute(out, "sender", r.sender);
  attribute(out, "recipient", r.recipient);
  attribute(out, "recipient_count", r.recipient_count);
  attribute(out, "client_address", r.client_address);
  attribute(out, "client_name", r.client_name);
  attribute(out, "reverse_client_name", r.reverse_client_name);
  attribute(out, "instance", r.instance);
  attribute(out, "sasl_method", r.sasl_method);
  attribute(out, "sasl_username", r.sasl_username);
  attribute(out, "sasl_sender", "");
  attribute(out, "size", r.size);
  attribute(out, "ccert_subject", "");
  attribute(out, "ccert_issuer", "");
  attribute(out, "ccert_fingerprint", "");
  attribute(out, "ccert_pubkey_fingerprint", "");
  attribute(out, "encryption_protocol", protocol);
  attribute(out, "encryption_cipher", cipher);
  attribute(out, "encryption_keysize", std::size_t{0});  // not in the TLS line
  attribute(out, "etrn_domain", "");
  attribute(out, "stress", "");
  if (r.client_port != 0)
    attribute(out, "client_port", std::size_t{r.client_port});
  else
    attribute(out, "client_port", "");
  out += '\n';
}

void policy_answer_decoder::reset() noexcept {
  st_ = status::need_more;
  seen_ = 0;
  have_action_ = false;
  partial_.clear();
  action_.clear();
  error_ = {};
}

policy_answer_decoder::result policy_answer_decoder::feed(std::string_view bytes) {
  result r;
  while (st_ == status::need_more && r.consumed < bytes.size()) {
    std::string_view rest = bytes.substr(r.consumed);
    std::size_t nl = rest.find('\n');
    std::size_t take = nl == rest.npos ? rest.size() : nl + 1;
    if (seen_ + take > max_answer) {
      error_ = "answer too long";
      st_ = status::error;
      r.consumed += std::min(take, max_answer - seen_);
      break;
    }
    seen_ += take;
    r.consumed += take;
    if (nl == rest.npos) {
      partial_.append(rest);
      break;
    }
    partial_.append(rest.substr(0, nl));
    if (!partial_.empty() && partial_.back() == '\r') partial_.pop_back();
    st_ = line(partial_);
    partial_.clear();
  }
  r.st = st_;
  return r;
}

policy_answer_decoder::status policy_answer_decoder::line(std::string_view l) {
  if (l.empty()) {
    if (have_action_) return status::done;
    error_ = "no action in the answer";
    return status::error;
  }
  if (!l.starts_with("action=")) {
    error_ = l.find('=') == l.npos ? "malformed answer" : "unexpected attribute in the answer";
    return status::error;
  }
  if (have_action_) {
    error_ = "two actions in the answer";
    return status::error;
  }
  have_action_ = true;
  action_.assign(l.substr(7));
  return status::need_more;
}

policy_decision decide_policy(std::string_view action, policy_state state, std::string_view name) {
  // "ACTION text": the command up to the first space or tab, then the text.
  std::size_t end = action.find_first_of(" \t");
  std::string_view cmd = action.substr(0, end);
  std::string_view text = end == action.npos ? std::string_view() : action.substr(end);
  while (!text.empty() && (text.front() == ' ' || text.front() == '\t')) text.remove_prefix(1);
  policy_decision d;
  auto refuse = [&](filter_action a, unsigned code, std::string_view dsn, std::string_view def) {
    d.action = a;
    d.reply = refusal(code, dsn, text, def, state, name);
    return d;
  };
  if (iequal(cmd, "DUNNO") || iequal(cmd, "OK") || iequal(cmd, "RELAY") || digits(action)) return d;
  if (iequal(cmd, "REJECT")) return refuse(filter_action::reject, 554, "5.7.1", "Access denied");
  if (iequal(cmd, "DEFER") || iequal(cmd, "HOLD"))
    return refuse(filter_action::tempfail, 450, "4.7.1", "Access denied");
  if (iequal(cmd, "DEFER_IF_PERMIT"))
    return refuse(filter_action::tempfail, 450, "4.7.1", "Service unavailable");
  if (iequal(cmd, "DISCARD")) {
    d.action = filter_action::discard;
    return d;
  }
  if (iequal(cmd, "WARN") || iequal(cmd, "DEFER_IF_REJECT")) {
    d.warn = true;
    return d;
  }
  if (iequal(cmd, "PREPEND")) {
    // Postfix: "requires header: text", and "must be used before" the end.
    if (state == policy_state::rcpt && header_field(text))
      d.prepend.assign(text);
    else
      d.warn = true;
    return d;
  }
  if (cmd.size() == 3 && digits(cmd) && (cmd[0] == '4' || cmd[0] == '5') && !text.empty()) {
    unsigned code =
        static_cast<unsigned>((cmd[0] - '0') * 100 + (cmd[1] - '0') * 10 + cmd[2] - '0');
    return refuse(cmd[0] == '4' ? filter_action::tempfail : filter_action::reject, code,
                  cmd[0] == '4' ? "4.7.1" : "5.7.1", "Access denied");
  }
  // reject_server_error(): an action this server cannot carry out.
  d.action = filter_action::tempfail;
  d.reply = "451 4.3.5 Server configuration error";
  d.warn = true;
  return d;
}

}  // namespace inboxd::proto
