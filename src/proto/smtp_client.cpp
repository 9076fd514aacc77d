#include "proto/smtp_client.hpp"

#include <fmt/format.h>

#include "proto/base64.hpp"
#include "proto/command.hpp"

namespace inboxd::proto {

namespace {

bool digit(char c) noexcept {
  return c >= '0' && c <= '9';
}

// The class of a failure reply: 5xx is permanent, anything else temporary
// (a hop that answers 3xx or 2xx where it should refuse is not believed).
store_result failure_of(int code) noexcept {
  return code >= 500 ? store_result::permanent_fail : store_result::temporary_fail;
}

bool positive(int code) noexcept {
  return code >= 200 && code < 300;
}

}  // namespace

reply_parser::status reply_parser::parse(std::string_view& in, smtp_reply& out) {
  if (!error_.empty()) return status::error;
  while (!in.empty()) {
    std::size_t nl = in.find('\n');
    std::size_t take = nl == in.npos ? in.size() : nl;
    if (partial_.size() + take > max_line) {
      error_ = "reply line too long";
      return status::error;
    }
    partial_.append(in.substr(0, take));
    if (nl == in.npos) {
      in = {};
      return status::need_more;
    }
    in.remove_prefix(nl + 1);
    std::string_view text = partial_;
    if (!text.empty() && text.back() == '\r') text.remove_suffix(1);
    status s = line(text, out);
    partial_.clear();
    if (s != status::need_more) return s;
  }
  return status::need_more;
}

// One line of a reply: "ddd-text" goes on, "ddd text" (or "ddd") ends it.
reply_parser::status reply_parser::line(std::string_view text, smtp_reply& out) {
  bool shaped = text.size() >= 3 && digit(text[0]) && digit(text[1]) && digit(text[2]) &&
                (text.size() == 3 || text[3] == ' ' || text[3] == '-');
  int code = shaped ? (text[0] - '0') * 100 + (text[1] - '0') * 10 + (text[2] - '0') : 0;
  if (!shaped || code < 200 || code > 599 || (lines_ > 0 && code != code_)) {
    error_ = shaped ? "reply code out of place" : "not a reply line";
    return status::error;
  }
  if (++lines_ > max_lines) {
    error_ = "reply of too many lines";
    return status::error;
  }
  code_ = code;
  std::string_view rest = text.size() > 4 ? text.substr(4) : std::string_view{};
  kept_.emplace_back(rest);
  if (!text_.empty() && text_.size() < max_text) text_ += ' ';
  text_.append(rest.substr(0, max_text > text_.size() ? max_text - text_.size() : 0));
  if (text.size() > 3 && text[3] == '-') return status::need_more;
  out.code = code_;
  out.line = fmt::format(FMT_STRING("{}{}{}"), code_, text_.empty() ? "" : " ", text_);
  out.lines.swap(kept_);
  kept_.clear();
  text_.clear();
  lines_ = 0;
  return status::reply;
}

void parse_extension(std::string_view line, hop_extensions& ext) {
  std::size_t sp = line.find(' ');
  std::string_view keyword = line.substr(0, sp);
  std::string_view params = sp == line.npos ? std::string_view{} : line.substr(sp + 1);
  if (iequals(keyword, "PIPELINING")) ext.pipelining = true;
  if (iequals(keyword, "8BITMIME")) ext.eightbitmime = true;
  if (iequals(keyword, "SMTPUTF8")) ext.smtputf8 = true;
  if (iequals(keyword, "CHUNKING")) ext.chunking = true;
  if (iequals(keyword, "BINARYMIME")) ext.binarymime = true;
  if (iequals(keyword, "DSN")) ext.dsn = true;
  if (iequals(keyword, "STARTTLS")) ext.starttls = true;
  if (iequals(keyword, "REQUIRETLS")) ext.requiretls = true;
  if (iequals(keyword, "SIZE")) {
    ext.size = true;
    std::uint64_t n = 0;
    for (char c : params) {
      if (!digit(c) || n > (UINT64_MAX - 9) / 10) break;
      n = n * 10 + static_cast<unsigned>(c - '0');
    }
    ext.max_size = n;
  }
  if (iequals(keyword, "AUTH")) {
    while (!params.empty()) {
      std::size_t end = params.find(' ');
      if (iequals(params.substr(0, end), "PLAIN")) ext.auth_plain = true;
      params = end == params.npos ? std::string_view{} : params.substr(end + 1);
    }
  }
}

void smtp_client::send(std::string_view command) {
  out_ += command;
  out_ += "\r\n";
}

bool smtp_client::feed(std::string_view& bytes) {
  while (state_ != state::failed && !bytes.empty()) {
    smtp_reply r;
    reply_parser::status s = parser_.parse(bytes, r);
    if (s == reply_parser::status::error)
      give_up("451 4.4.2 next hop sent garbage: " + parser_.error());
    if (s != reply_parser::status::reply) break;
    on_reply(r);
    // Bytes after the 220 to STARTTLS would be read as if they came over
    // TLS: a hop (or someone on the path) injecting commands (CVE-2011-0411).
    if (state_ == state::handshake && !bytes.empty())
      give_up("451 4.7.0 next hop sent bytes after its STARTTLS reply");
    // The driver acts before the next reply is read: it starts a message
    // or takes the outcomes.
    if (state_ == state::ready || state_ == state::done || state_ == state::handshake) break;
  }
  return state_ != state::failed;
}

void smtp_client::on_reply(const smtp_reply& r) {
  using enum state;
  switch (state_) {
    case greeting: return on_greeting(r);
    case helo: return on_helo(r);
    case starttls:
      if (r.code == 220) {
        state_ = handshake;
        return;
      }
      if (options_.starttls == smtp_client_options::tls::require)
        return give_up("451 4.7.4 TLS is required, but the next hop refused STARTTLS: " + r.line);
      helo_again_ = true;  // TLS was tried: go on without it (Postfix's "may").
      return after_helo();
    case auth:
      if (r.code == 235) {
        state_ = ready;
        return;
      }
      return give_up(r.line);
    case envelope: return on_envelope(r);
    case data: return on_data(r);
    case body:
      if (bdat_ && chunks_ > 0) return on_result(r);
      return give_up("451 4.4.2 next hop replied during the data: " + r.line);
    case result: return on_result(r);
    case reset:
      if (positive(r.code)) {
        state_ = ready;
        return;
      }
      return give_up(r.line);
    case quit: return;
    // An unexpected reply: a hop closing an idle connection says 421 first.
    case ready:
    case done:
    case handshake:
    case failed: return give_up(r.line);
  }
}

void smtp_client::on_greeting(const smtp_reply& r) {
  if (!positive(r.code)) return give_up(r.line);
  send(fmt::format(FMT_STRING("{} {}"), options_.lmtp ? "LHLO" : "EHLO", options_.helo));
  state_ = state::helo;
}

void smtp_client::on_helo(const smtp_reply& r) {
  if (!positive(r.code)) return give_up(r.line);
  ext_ = {};
  for (std::size_t i = 1; i < r.lines.size(); ++i) parse_extension(r.lines[i], ext_);
  after_helo();
}

void smtp_client::tls_started() {
  if (state_ != state::handshake) return;
  helo_again_ = true;
  tls_ = true;
  // RFC 3207 4.2: forget what the hop said before TLS and ask again.
  send(fmt::format(FMT_STRING("{} {}"), options_.lmtp ? "LHLO" : "EHLO", options_.helo));
  state_ = state::helo;
}

void smtp_client::after_helo() {
  using tls = smtp_client_options::tls;
  if (!helo_again_ && options_.starttls != tls::none) {
    if (ext_.starttls) {
      send("STARTTLS");
      state_ = state::starttls;
      return;
    }
    if (options_.starttls == tls::require)
      return give_up("451 4.7.4 TLS is required, but was not offered by the next hop");
  }
  // As Postfix's smtp_sasl_auth_enable: a hop that offers no AUTH gets the
  // mail without it.
  if (!options_.auth_user.empty() && ext_.auth_plain) {
    // The password never goes in cleartext (Postfix's noplaintext).
    if (!tls_)
      return give_up(
          "451 4.7.0 AUTH needs TLS: the next hop offers AUTH PLAIN without TLS, and the password "
          "is not sent in cleartext");
    std::string token;
    token += '\0';
    token += options_.auth_user;
    token += '\0';
    token += options_.auth_password;
    send("AUTH PLAIN " + base64_encode(token));
    state_ = state::auth;
    return;
  }
  state_ = state::ready;
}

bool smtp_client::start(const inboxd::envelope& env, bool tls) {
  outcomes_.clear();
  rcpt_of_.clear();
  rcpt_cmds_.clear();
  final_.clear();
  held_.clear();
  sent_ = answered_ = accepted_ = chunks_ = 0;
  mail_refused_ = finished_ = skip_ = go_ = false;
  line_start_ = in_header_ = true;
  bdat_ = ext_.chunking;
  binary_ = env.body_binary;
  all_or_nothing_ = !env.independent_outcomes;
  bool dsn = ext_.dsn;
  for (const recipient& r : env.recipients) {
    if (rcpt_cmds_.empty() || r.address != env.recipients[rcpt_of_.back()].address) {
      std::string cmd = fmt::format(FMT_STRING("RCPT TO:<{}>"), r.address);
      if (dsn && r.notify) {
        cmd += " NOTIFY=";
        if (r.notify & dsn_notify::never) cmd += "NEVER";
        if (r.notify & dsn_notify::success) cmd += "SUCCESS,";
        if (r.notify & dsn_notify::failure) cmd += "FAILURE,";
        if (r.notify & dsn_notify::delay) cmd += "DELAY,";
        if (cmd.back() == ',') cmd.pop_back();
      }
      if (dsn && !r.orcpt_type.empty()) {
        cmd += " ORCPT=" + r.orcpt_type + ";";
        xtext_encode(r.orcpt, cmd);
      }
      rcpt_cmds_.push_back(std::move(cmd));
      outcomes_.push_back({store_result::temporary_fail, "451 4.4.2 no reply from the next hop"});
      final_.push_back(0);
    }
    rcpt_of_.push_back(rcpt_cmds_.size() - 1);
  }
  // What the hop must offer for this message (RFC 6531 3.4, RFC 8689 4.2.1,
  // RFC 3030 3), said with the enhanced codes Postfix uses.
  std::string_view refusal;
  if (env.smtputf8 && !ext_.smtputf8)
    refusal = "554 5.6.7 SMTPUTF8 is required, but was not offered by the next hop";
  else if (env.requiretls && !(tls && ext_.requiretls))
    refusal = "554 5.7.30 REQUIRETLS support required, but not offered by the next hop";
  else if (env.body_binary && !(ext_.chunking && ext_.binarymime))
    refusal = "554 5.6.3 BINARYMIME is required, but was not offered by the next hop";
  else if (rcpt_cmds_.empty())
    refusal = "554 5.5.1 no recipients";
  if (!refusal.empty()) {
    all_fail(store_result::permanent_fail, refusal);
    return false;
  }
  std::string mail = fmt::format(FMT_STRING("MAIL FROM:<{}>"), env.reverse_path);
  if (env.body_binary)
    mail += " BODY=BINARYMIME";
  else if (env.body_8bit && ext_.eightbitmime)
    mail += " BODY=8BITMIME";
  if (env.smtputf8) mail += " SMTPUTF8";
  if (env.requiretls) mail += " REQUIRETLS";
  if (dsn && env.ret != dsn_ret::none) mail += env.ret == dsn_ret::full ? " RET=FULL" : " RET=HDRS";
  if (dsn && !env.envid.empty()) {
    mail += " ENVID=";
    xtext_encode(env.envid, mail);
  }
  send(mail);
  transacted_ = true;
  // RFC 2920 3.1: MAIL and RCPT may go in one group; DATA waits for their
  // replies here, so that a message is never sent when a RCPT was refused
  // and the outcome must be all or nothing.
  if (ext_.pipelining)
    while (sent_ < rcpt_cmds_.size()) send(rcpt_cmds_[sent_++]);
  state_ = state::envelope;
  return true;
}

void smtp_client::all_fail(store_result result, std::string_view reply) {
  for (std::size_t i = 0; i < outcomes_.size(); ++i) {
    if (final_[i] && outcomes_[i].result != store_result::stored) continue;
    outcomes_[i] = {result, std::string(reply)};
    final_[i] = 1;
  }
}

// The replies to MAIL and to each RCPT, in order (RFC 2920 3.1). Without
// PIPELINING each RCPT goes when the reply before it has come.
void smtp_client::on_envelope(const smtp_reply& r) {
  std::size_t n = answered_++;  // 0: MAIL's reply; then RCPT n - 1's
  if (n == 0 && !positive(r.code)) {
    mail_refused_ = true;
    all_fail(failure_of(r.code), r.line);
  } else if (n > 0 && !mail_refused_) {
    if (positive(r.code)) {
      ++accepted_;
    } else {
      outcomes_[n - 1] = {failure_of(r.code), r.line};
      final_[n - 1] = 1;
    }
  }
  if (!mail_refused_ && sent_ < rcpt_cmds_.size() && !ext_.pipelining) {
    send(rcpt_cmds_[sent_++]);
    return;
  }
  if (answered_ < 1 + sent_) return;
  if (mail_refused_ || accepted_ == 0) return drop_message();
  if (all_or_nothing_ && accepted_ < rcpt_cmds_.size()) {
    // One reply for all (SMTP on our side): the refusal is everyone's, and
    // the message goes nowhere, so a retry stores it once.
    const rcpt_outcome* worst = nullptr;
    for (std::size_t i = 0; i < outcomes_.size(); ++i)
      if (final_[i] && (!worst || outcomes_[i].result == store_result::permanent_fail))
        worst = &outcomes_[i];
    rcpt_outcome copy = *worst;
    all_fail(copy.result, copy.reply);
    return drop_message();
  }
  if (bdat_) {
    state_ = state::body;
    go_ = true;
    return release();
  }
  send("DATA");
  state_ = state::data;
}

// The message does not go: its body is dropped as it comes.
void smtp_client::drop_message() {
  skip_ = true;
  held_.clear();
  state_ = finished_ && chunks_ == 0 ? state::done : state::body;
}

void smtp_client::on_data(const smtp_reply& r) {
  if (r.code != 354) {
    all_fail(positive(r.code) ? store_result::temporary_fail : failure_of(r.code), r.line);
    return drop_message();
  }
  state_ = state::body;
  go_ = true;
  release();
}

void smtp_client::body(std::string_view bytes) {
  if (skip_ || finished_) return;
  held_.reserve(held_.size() + bytes.size() + bytes.size() / 16 + 2);
  for (char c : bytes) {
    if (bdat_ && binary_ && !in_header_) {
      held_ += c;
      continue;
    }
    if (c == '\n') {
      // The empty line that ends the header section (RFC 5322 2.1).
      if (line_start_) in_header_ = false;
      held_ += "\r\n";
      line_start_ = true;
      continue;
    }
    // RFC 5321 4.5.2: a line that starts with a period gets one more.
    if (line_start_ && c == '.' && !bdat_) held_ += '.';
    held_ += c;
    line_start_ = false;
  }
  release();
}

void smtp_client::finish() {
  finished_ = true;
  if (skip_) {
    if (state_ == state::body && chunks_ == 0) state_ = state::done;
    return;
  }
  if (!bdat_ && !line_start_) held_ += "\r\n";  // The end of data starts a line.
  release();
}

// Moves held body bytes into the output where the hop may have them: after
// 354 for DATA; for BDAT, a chunk at a time, or pipelined where offered.
void smtp_client::release() {
  if (skip_ || !go_ || state_ != state::body) return;
  if (!bdat_) {
    out_ += held_;
    held_.clear();
    if (finished_) {
      out_ += ".\r\n";
      state_ = state::result;
    }
    return;
  }
  if (chunks_ > 0 && !ext_.pipelining) return;
  if (finished_) {
    out_ += fmt::format(FMT_STRING("BDAT {} LAST\r\n"), held_.size());
    out_ += held_;
    held_.clear();
    state_ = state::result;
    return;
  }
  // Small writes wait for more, so that chunks are not a few bytes each.
  if (held_.size() < 16 * 1024) return;
  out_ += fmt::format(FMT_STRING("BDAT {}\r\n"), held_.size());
  out_ += held_;
  held_.clear();
  ++chunks_;
}

// The replies after the data: BDAT chunks' first, then one (SMTP) or one per
// accepted RCPT in their order (LMTP, RFC 2033 4.2).
void smtp_client::on_result(const smtp_reply& r) {
  if (chunks_ > 0) {
    --chunks_;
    if (!positive(r.code) && !skip_) {
      // The hop refused a chunk: the rest of the message goes nowhere.
      all_fail(failure_of(r.code), r.line);
      skip_ = true;
      held_.clear();
    }
    if (skip_ && state_ == state::body && finished_ && chunks_ == 0) state_ = state::done;
    return release();
  }
  if (skip_) {
    state_ = state::done;  // The LAST of a refused message: its outcome is said.
    return;
  }
  store_result result = positive(r.code) ? store_result::stored : failure_of(r.code);
  if (!options_.lmtp) {
    for (std::size_t i = 0; i < outcomes_.size(); ++i) {
      if (final_[i]) continue;
      outcomes_[i] = {result, r.line};
      final_[i] = 1;
    }
  } else {
    for (std::size_t i = 0; i < outcomes_.size(); ++i) {
      if (final_[i]) continue;
      outcomes_[i] = {result, r.line};
      final_[i] = 1;
      break;
    }
  }
  for (std::uint8_t f : final_)
    if (!f) return;
  transacted_ = false;  // The end of data ends the transaction, whatever its outcome.
  state_ = state::done;
}

void smtp_client::take() {
  if (state_ != state::done && state_ != state::ready) return;
  if (state_ == state::done && transacted_) {
    send("RSET");
    transacted_ = false;
    state_ = state::reset;
    return;
  }
  state_ = state::ready;
}

void smtp_client::quit() {
  if (state_ == state::failed || state_ == state::quit) return;
  send("QUIT");
  state_ = state::quit;
}

void smtp_client::fail(std::string_view reply) {
  give_up(std::string(reply));
}

void smtp_client::give_up(std::string why) {
  if (state_ == state::failed) return;
  // After the end of data, an answer that did not come may still mean the
  // message was taken: temporary, so that the sender retries (RFC 5321
  // 4.1.1.4 warns of duplicates; losing mail is worse).
  for (std::size_t i = 0; i < outcomes_.size(); ++i) {
    if (final_[i]) continue;
    outcomes_[i] = {store_result::temporary_fail, why};
    final_[i] = 1;
  }
  error_ = std::move(why);
  state_ = state::failed;
}

}  // namespace inboxd::proto
