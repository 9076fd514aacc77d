#include "proto/session.hpp"

#include "proto/base64.hpp"
#include "proto/utf8.hpp"

#include <fmt/format.h>
#include <algorithm>
#include <charconv>
#include <cstring>
#include <ctime>
#include <optional>
#include <utility>

namespace inboxd::proto {

// RFC 5321 4.5.3.1.4: a command line is at most 512 octets with its CRLF.
constexpr std::size_t command_line_limit = 512;
// feed() stops running commands once this much output waits.
constexpr std::size_t max_output = 64 * 1024;
// Up to this many recipients, a repeat is found by a scan (see do_rcpt).
constexpr std::size_t linear_dedup = 16;

namespace {

// RFC 6531 3.6.2: an address with non-ASCII octets needs SMTPUTF8 on MAIL
// (553 5.6.7); with it, the address must be well-formed UTF-8 without
// control characters (RFC 6532 3.1), else malformed is the reply.
std::optional<reply_id> utf8_refusal(std::string_view mailbox, bool smtputf8, reply_id malformed) {
  if (is_ascii(mailbox)) return std::nullopt;
  if (!smtputf8) return reply_id::non_ascii_addr;
  if (!is_utf8_text(mailbox)) return malformed;
  return std::nullopt;
}

// "<mailbox>" for a reply. Replies stay ASCII (RFC 6531 leaves UTF-8 in
// reply text to a later extension): a UTF-8 address is shown escaped.
std::string quoted_path(std::string_view mailbox) {
  std::string out = "<";
  if (is_ascii(mailbox))
    out += mailbox;
  else
    append_printable(out, mailbox);
  out += '>';
  return out;
}

}  // namespace

// The prefix has a fixed width (8 hex digits of the start time, 6 of the
// pid: Linux pids stay below 2^22), so the counter after it, 6 hex digits or
// more, never wraps into another process's or another start's ids.
queue_id_source::queue_id_source(std::uint64_t start_time, std::uint32_t pid, std::uint64_t counter)
    : prefix_(fmt::format(FMT_STRING("{:08X}{:06X}"), start_time & 0xffffffffU, pid & 0xffffffU)),
      counter_(counter) {}

std::string queue_id_source::next() {
  std::string id;
  next(id);
  return id;
}

void queue_id_source::next(std::string& out) {
  // Upper-case hex, at least 6 digits: written by hand, as this runs per message.
  char digits[16];
  std::size_t n = 0;
  for (std::uint64_t v = ++counter_; v != 0 || n < 6; v >>= 4)
    digits[n++] = "0123456789ABCDEF"[v & 15];
  out.reserve(prefix_.size() + n);
  out = prefix_;
  while (n > 0) out += digits[--n];
}

std::string printable(std::string_view s) {
  std::string out;
  out.reserve(s.size());
  append_printable(out, s);
  return out;
}

void append_printable(std::string& out, std::string_view s) {
  static constexpr char hex[] = "0123456789abcdef";
  // Runs of printable octets are appended whole: addresses, logged for
  // every message, usually are one run.
  std::size_t i = 0;
  while (i < s.size()) {
    std::size_t run = i;
    while (run < s.size()) {
      auto u = static_cast<unsigned char>(s[run]);
      if (u < 32 || u >= 127 || u == '\\') break;
      ++run;
    }
    out.append(s.data() + i, run - i);
    if (run == s.size()) break;
    auto u = static_cast<unsigned char>(s[run]);
    const char escaped[4] = {'\\', 'x', hex[u >> 4], hex[u & 15]};
    out.append(escaped, 4);
    i = run + 1;
  }
}

std::string rfc5322_date(std::int64_t unix_time) {
  std::string out;
  append_rfc5322_date(out, unix_time);
  return out;
}

void append_rfc5322_date(std::string& out, std::int64_t unix_time) {
  // A busy server writes many trace headers in one second: format each second once.
  // (The session runs on one thread; the cache is per thread all the same.)
  thread_local std::int64_t cached_time = -1;
  thread_local std::string cached;
  if (unix_time != cached_time) {
    static constexpr std::string_view days[] = {"Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"};
    static constexpr std::string_view months[] = {"Jan", "Feb", "Mar", "Apr", "May", "Jun",
                                                  "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"};
    std::time_t t = static_cast<std::time_t>(unix_time);
    std::tm tm{};
    gmtime_r(&t, &tm);
    cached = fmt::format(FMT_STRING("{}, {} {} {} {:02}:{:02}:{:02} +0000"), days[tm.tm_wday],
                         tm.tm_mday, months[tm.tm_mon], tm.tm_year + 1900, tm.tm_hour, tm.tm_min,
                         tm.tm_sec);
    cached_time = unix_time;
  }
  out += cached;
}

session::session(const settings_ptr& current, session_events& events, queue_id_source& ids,
                 std::string client_address)
    : current_(current),
      cfg_(current),
      events_(events),
      ids_(ids),
      client_address_(std::move(client_address)) {}

session::~session() {
  disconnect();
}

void session::start() {
  if (auto* m = metrics()) ++m->sessions;
  // The filters hear of the connection first; the greeting waits for them.
  if (!cfg_->filters.empty()) {
    open_filters();
    return ask_filters(filter_stage::connect, then::greet);
  }
  greet();
}

void session::greet() {
  out_ +=
      fmt::format(FMT_STRING("220 {} {} inboxd\r\n"), limits().hostname, lmtp_ ? "LMTP" : "ESMTP");
}

// A reply is printable US-ASCII (RFC 5321 2.4, 4.2): a detail that echoes
// what the client sent (an XCLIENT attribute name, say) is escaped as the
// log escapes it. Clean details, such as the queue id, are appended as
// they are, with no copy.
void session::append_safe_reply(std::string& out, reply_id id, std::string_view detail) {
  bool clean = std::all_of(detail.begin(), detail.end(), [](char c) {
    auto u = static_cast<unsigned char>(c);
    return u >= 32 && u < 127;
  });
  if (clean) return append_reply(out, id, detail);
  std::string escaped;
  append_printable(escaped, detail);
  append_reply(out, id, escaped);
}

void session::reply(reply_id id, std::string_view detail) {
  append_safe_reply(out_, id, detail);
}

// A refusal is a reply and a log line that says why (docs/DESIGN.md, rule 6).
// Too many of them end the session; with a tarpit, each waits a little more.
void session::refuse(reply_id id, std::string_view detail) {
  std::string line;
  append_safe_reply(line, id, detail);
  line.resize(line.size() - 2);  // without its CRLF
  refuse_line(line);
}

// The same for a whole reply line (foreign_for(): a filter's).
void session::refuse_line(std::string_view line) {
  events_.session_log(log_level::info, fmt::format(FMT_STRING("refused: {}"), line));
  std::uint32_t delay = limits().error_delay_ms;
  std::string* to = &out_;
  if (++errors_ >= limits().max_errors) {
    out_ += line;
    out_ += "\r\n";
    events_.session_log(log_level::warning, fmt::format(FMT_STRING("{} errors: closing"), errors_));
    return close_with(reply_id::too_many_errors);
  }
  if (delay != 0 && errors_ >= 2) to = &x().held;
  *to += line;
  *to += "\r\n";
  if (to == &out_) return;
  sleeping_ = true;
  events_.session_sleep(
      std::min<std::uint32_t>(delay * static_cast<std::uint32_t>(errors_ - 1), 10'000));
}

// Holds a reply back for a while; feed() stops meanwhile, so replies keep
// their order. A timer of the connection, never a sleep.
void session::reply_after(std::uint32_t milliseconds, reply_id id, std::string_view detail) {
  append_safe_reply(x().held, id, detail);
  sleeping_ = true;
  events_.session_sleep(milliseconds);
}

void session::close_with(reply_id id) {
  reply(id);
  closing_ = true;
}

std::size_t session::feed(std::span<char> input) {
  in_feed_ = true;
  std::size_t pos = 0;
  // Replies are bounded too: a client that pipelines faster than it reads
  // gets the rest of its commands run once these have left.
  while (pos < input.size() && !closing_ && !waiting() && out_.size() < max_output) {
    if (mode_ == mode::data) {
      std::size_t used = feed_data(input.subspan(pos));
      pos += used;
      // The decoder left a CR it cannot decide yet: wait for what follows.
      if (mode_ == mode::data && pos < input.size() && used == 0) break;
      continue;
    }
    if (mode_ == mode::chunk) {
      // Each call takes bytes or gives out a held CR: it always moves on.
      pos += feed_chunk(input.subspan(pos));
      continue;
    }
    auto r = reader_.next({input.data() + pos, input.size() - pos});
    pos += r.consumed;
    switch (r.st) {
      case line_reader::status::need_more:
        if (r.consumed == 0) goto out;  // A partial line: wait for its end.
        break;
      case line_reader::status::too_long:
        if (x_) x_->step = sasl::none;  // RFC 4954 4: an error reply ends the exchange.
        refuse(reply_id::line_too_long);
        break;
      case line_reader::status::line: handle_line(r.line, r.bare_lf); break;
    }
  }
out:
  in_feed_ = false;
  return pos;
}

void session::handle_line(std::string_view line, bool bare_lf) {
  ++commands_;
  if (limits().bare_newline == bare_newline_policy::reject) {
    if (bare_lf) return refuse(reply_id::bare_lf);
    if (line.find('\r') != line.npos) return refuse(reply_id::bare_cr);
  }
  if (x_ && x_->step != sasl::none) return sasl_response(line);
  if (line.size() + 2 > command_line_limit &&
      !(line.size() >= 5 && iequals(line.substr(0, 5), "AUTH ")))
    return refuse(reply_id::line_too_long);
  // Between transactions, take up a reloaded configuration.
  if (!tx_ && cfg_ != current_) cfg_ = current_;
  command cmd = parse_command(line);
  if (draining_ && !tx_ && cmd.v != verb::quit) return close_with(reply_id::shutting_down);
  // RFC 5321 3.1: after a 554 greeting, 503 to all but QUIT. A BDAT is
  // refused by do_bdat(), which reads its octets (no MAIL can open).
  if (f_ && f_->refused_at_connect && cmd.v != verb::quit && cmd.v != verb::bdat)
    return refuse(reply_id::refused_at_connect);
  switch (cmd.v) {
    case verb::helo:
    case verb::ehlo:
      if (lmtp_) return refuse(reply_id::lhlo_needed);
      return do_helo(cmd.arg, cmd.v == verb::ehlo);
    case verb::lhlo:
      if (!lmtp_) return refuse(reply_id::unknown_command);
      return do_helo(cmd.arg, true);
    case verb::mail: return do_mail(cmd.arg);
    case verb::rcpt: return rcpt_counted(cmd.arg);
    case verb::data: return do_data(cmd.arg, bare_lf);
    case verb::rset: return do_rset(cmd.arg);
    case verb::noop: return reply(reply_id::ok);
    case verb::quit: return do_quit(cmd.arg);
    case verb::vrfy:
      if (cmd.arg.empty()) return refuse(reply_id::bad_syntax, "VRFY address");
      return reply(reply_id::cannot_vrfy);
    case verb::help: return reply(reply_id::help);
    case verb::starttls: return do_starttls(cmd.arg);
    case verb::auth: return do_auth(cmd.arg);
    case verb::bdat: return do_bdat(cmd.arg);
    case verb::xclient: return do_xclient(cmd.arg);
    case verb::unknown: return refuse(reply_id::unknown_command);
  }
}

void session::do_helo(std::string_view arg, bool esmtp) {
  std::string_view name = arg.substr(0, arg.find(' '));
  if (name.empty())
    return refuse(reply_id::bad_syntax, lmtp_   ? "LHLO hostname"
                                        : esmtp ? "EHLO hostname"
                                                : "HELO hostname");
  // RFC 5321 4.1.4: HELO/EHLO also clears any transaction.
  drop_delivery();  // Between BDAT chunks a message is open.
  end_transaction();
  // The name goes into the Received header: keep it to printable ASCII.
  helo_.assign(name.substr(0, 255));
  for (char& c : helo_)
    if (c < 33 || c > 126) c = '?';
  esmtp_ = esmtp;
  if (f_) return ask_filters(filter_stage::helo, then::helo);
  helo_reply();
}

void session::helo_reply() {
  if (!esmtp_) {
    out_ += fmt::format(FMT_STRING("250 {}\r\n"), limits().hostname);
    return;
  }
  auto out = std::back_inserter(out_);
  fmt::format_to(out, FMT_STRING("250-{}\r\n250-PIPELINING\r\n250-SIZE {}\r\n250-8BITMIME\r\n"),
                 limits().hostname, limits().max_message_size);
  out_ += "250-SMTPUTF8\r\n";                    // RFC 6531
  out_ += "250-BINARYMIME\r\n250-CHUNKING\r\n";  // RFC 3030
  // RFC 9422: the recipient limit do_rcpt() applies (452 past it). No
  // MAILMAX: a session may send any number of messages.
  fmt::format_to(out, FMT_STRING("250-LIMITS RCPTMAX={}\r\n"), limits().max_recipients);
  if (dsn_offered()) out_ += "250-DSN\r\n";
  if (xclient_allowed_) fmt::format_to(out, FMT_STRING("250-XCLIENT {}\r\n"), xclient_names);
  if (cfg_->tls && tls().empty()) out_ += "250-STARTTLS\r\n";
  if (!tls().empty()) out_ += "250-REQUIRETLS\r\n";  // RFC 8689 2: only inside TLS
  if (cfg_->auth && (!tls().empty() || limits().allow_plaintext_auth))
    out_ += "250-AUTH PLAIN LOGIN\r\n";
  out_ += "250 ENHANCEDSTATUSCODES\r\n";
}

void session::do_mail(std::string_view arg) {
  // RFC 5321 4.1.4: MAIL needs a HELO or EHLO first.
  if (helo_.empty()) return refuse(reply_id::need_helo);
  if (tx_) return refuse(reply_id::nested_mail);
  if (limits().require_tls && tls().empty()) return refuse(reply_id::need_tls);
  if (limits().require_auth && user().empty()) return refuse(reply_id::need_auth);
  path_parse p = parse_mail_from(arg, true);  // UTF-8 judged below (utf8_refusal)
  if (p.error == path_error::no_keyword) return refuse(reply_id::bad_syntax, "MAIL FROM:<address>");
  if (p.error == path_error::bad_path) return refuse(reply_id::bad_sender);
  transaction& tx = tx_.fresh();  // Not open until the command is accepted.
  param_reader params(p.value.params);
  while (auto param = params.next()) {
    // RFC 5321 4.1.1.11: parameters only after EHLO.
    if (!esmtp_) return refuse(reply_id::bad_param, param->keyword);
    if (iequals(param->keyword, "SIZE")) {
      // RFC 1870 6: SIZE=<n>; a declared size over the limit is 552 5.3.4.
      std::size_t size = 0;
      auto [end, ec] =
          std::from_chars(param->value.data(), param->value.data() + param->value.size(), size);
      if (!param->has_value || ec == std::errc::invalid_argument ||
          end != param->value.data() + param->value.size())
        return refuse(reply_id::bad_syntax, "SIZE=<number>");
      if (ec == std::errc::result_out_of_range || size > limits().max_message_size)
        return refuse(reply_id::size_declared);
      tx.declared_size = size;
    } else if (iequals(param->keyword, "BODY")) {
      // RFC 6152: BODY=7BIT or BODY=8BITMIME.
      if (iequals(param->value, "8BITMIME"))
        tx.body_8bit = true;
      else if (iequals(param->value, "BINARYMIME"))  // RFC 3030 3, with BDAT only
        tx.body_binary = true;
      else if (!iequals(param->value, "7BIT"))
        return refuse(reply_id::bad_body_type);
    } else if (iequals(param->keyword, "SMTPUTF8")) {
      // RFC 6531 3.4: a parameter without a value, given once.
      if (param->has_value) return refuse(reply_id::bad_syntax, "SMTPUTF8 takes no value");
      if (tx.smtputf8) return refuse(reply_id::bad_syntax, "SMTPUTF8 given twice");
      tx.smtputf8 = true;
    } else if (iequals(param->keyword, "REQUIRETLS")) {
      // RFC 8689 4.1: only on a session that is TLS already; it has no value.
      if (tls().empty()) return refuse(reply_id::requiretls_plain);
      if (param->has_value) return refuse(reply_id::bad_param_value, "REQUIRETLS");
      if (std::exchange(tx.requiretls, true)) return refuse(reply_id::param_repeated, "REQUIRETLS");
    } else if (iequals(param->keyword, "RET") && dsn_offered()) {
      // RFC 3461 4.3: RET=FULL or RET=HDRS.
      if (tx.ret != dsn_ret::none) return refuse(reply_id::param_repeated, "RET");
      if (iequals(param->value, "FULL"))
        tx.ret = dsn_ret::full;
      else if (iequals(param->value, "HDRS"))
        tx.ret = dsn_ret::hdrs;
      else
        return refuse(reply_id::bad_param_value, "RET");
    } else if (iequals(param->keyword, "ENVID") && dsn_offered()) {
      // RFC 3461 4.4: ENVID=xtext (never empty once decoded).
      if (!tx.envid.empty()) return refuse(reply_id::param_repeated, "ENVID");
      if (!parse_envid(param->value, tx.envid)) return refuse(reply_id::bad_param_value, "ENVID");
    } else if (iequals(param->keyword, "AUTH") && cfg_->auth) {
      // RFC 4954 5: AUTH=<mailbox> or <>; nothing we relay, so nothing to keep.
      if (!param->has_value) return refuse(reply_id::bad_syntax, "AUTH=<mailbox>");
    } else {
      return refuse(reply_id::bad_param, param->keyword);
    }
  }
  if (params.error()) return refuse(reply_id::bad_syntax, "MAIL FROM:<address> [parameters]");
  if (auto why = utf8_refusal(p.value.mailbox, tx.smtputf8, reply_id::bad_utf8_from))
    return refuse(*why);
  tx.reverse_path.assign(p.value.mailbox);
  ids_.next(tx.queue_id);
  if (f_) {
    f_->mail_params.assign(p.value.params);
    return ask_filters(filter_stage::mail, then::mail);
  }
  mail_accepted();
}

void session::mail_accepted() {
  if (f_ && f_->discard_all) tx_->discard = true;
  tx_.open();
  reply(reply_id::mail_ok);
}

void session::do_rcpt(std::string_view arg) {
  if (!tx_) return refuse(reply_id::need_mail);
  tx_->rcpt_seen = true;
  path_parse p = parse_rcpt_to(arg, true);
  if (p.error == path_error::no_keyword) return refuse(reply_id::bad_syntax, "RCPT TO:<address>");
  if (p.error == path_error::bad_path) return refuse(reply_id::bad_recipient);
  if (auto why = utf8_refusal(p.value.mailbox, tx_->smtputf8, reply_id::bad_utf8_rcpt))
    return refuse(*why);
  // RFC 3461 4.1, 4.2: NOTIFY and ORCPT, once each, where EHLO offered DSN.
  std::uint8_t notify = 0;
  std::string& orcpt_type = tx_->orcpt_type;  // the transaction's: they keep their room
  std::string& orcpt = tx_->orcpt;
  orcpt_type.clear();
  orcpt.clear();
  param_reader params(p.value.params);
  while (auto param = params.next()) {
    if (!esmtp_ || !dsn_offered()) return refuse(reply_id::bad_param, param->keyword);
    if (iequals(param->keyword, "NOTIFY")) {
      if (notify != 0) return refuse(reply_id::param_repeated, "NOTIFY");
      notify = parse_notify(param->value);
      if (notify == 0) return refuse(reply_id::bad_param_value, "NOTIFY");
    } else if (iequals(param->keyword, "ORCPT")) {
      if (!orcpt_type.empty()) return refuse(reply_id::param_repeated, "ORCPT");
      if (!parse_orcpt(param->value, orcpt_type, orcpt))
        return refuse(reply_id::bad_param_value, "ORCPT");
    } else {
      return refuse(reply_id::bad_param, param->keyword);
    }
  }
  if (params.error()) return refuse(reply_id::bad_syntax, "RCPT TO:<address>");
  // Aliases multiply the mailboxes an RCPT costs: their total is bounded
  // too (Postfix bounds alias expansion), so that the work of a transaction
  // stays linear in max_recipients whatever the aliases hold.
  const std::size_t mailbox_limit = 10 * limits().max_recipients;
  if (tx_->rcpt_accepted >= limits().max_recipients || tx_->mailboxes_resolved >= mailbox_limit)
    return too_many_recipients();
  recipient_list& found = tx_->found;
  found.clear();
  rcpt_verdict verdict = rcpt_verdict::accept;
  // An embedder's policy may throw: the RCPT gets a temporary failure.
  try {
    verdict = cfg_->policy->resolve_into(p.value.mailbox, found);
  } catch (const std::exception& e) {
    events_.session_log(log_level::error,
                        fmt::format(FMT_STRING("recipient policy failed for <{}>: {}"),
                                    printable(p.value.mailbox), printable(e.what())));
    return refuse(reply_id::lookup_failed);
  } catch (...) {
    events_.session_log(
        log_level::error,
        fmt::format(FMT_STRING("recipient policy failed for <{}>"), printable(p.value.mailbox)));
    return refuse(reply_id::lookup_failed);
  }
  switch (verdict) {
    case rcpt_verdict::accept: break;
    case rcpt_verdict::unknown_user:
      return refuse(reply_id::unknown_user, quoted_path(p.value.mailbox));
    case rcpt_verdict::relay_denied:
      return refuse(reply_id::relay_denied, quoted_path(p.value.mailbox));
    case rcpt_verdict::bad_domain:
      return refuse(reply_id::bad_domain, quoted_path(p.value.mailbox));
  }
  tx_->mailboxes_resolved += found.size();
  if (tx_->mailboxes_resolved > mailbox_limit) return too_many_recipients();
  // Every mailbox of this RCPT (aliases) gets its DSN parameters.
  if (notify != 0 || !orcpt_type.empty()) {
    for (auto& r : found) {
      r.notify = notify;
      r.orcpt_type = orcpt_type;
      r.orcpt = orcpt;
    }
  }
  if (f_) {
    f_->rcpt.assign(p.value.mailbox);
    f_->rcpt_params.assign(p.value.params);
    return ask_filters(filter_stage::rcpt, then::rcpt);
  }
  rcpt_accepted(p.value.mailbox);
}

// The RCPT passed every check (and every filter): its mailboxes join the
// transaction.
void session::rcpt_accepted(std::string_view mailbox) {
  recipient_list& found = tx_->found;
  // A mailbox named twice (an alias and its user) gets one copy. Few
  // recipients are scanned; past linear_dedup an index finds repeats in
  // O(1), so that the work stays linear in them. A fresh mailbox is moved
  // into kept by a swap of strings: nothing is copied or allocated.
  auto& kept = tx_->recipients;
  for (recipient& r : found) {
    std::size_t at = kept.size();
    if (at < linear_dedup) {
      auto same = std::find_if(kept.begin(), kept.end(), [&](const recipient& k) {
        return k.user == r.user && k.domain == r.domain;
      });
      at = static_cast<std::size_t>(same - kept.begin());
    } else {
      at = tx_->mailboxes.find_or_add(kept, r);
    }
    // LMTP: each RCPT's mailboxes by index, repeats included.
    if (lmtp_) tx_->lmtp_boxes.push_back(static_cast<std::uint32_t>(at));
    if (at == kept.size()) kept.adopt(r);
  }
  if (lmtp_) {
    tx_->lmtp_rcpts.emplace_back(mailbox);
    tx_->lmtp_ends.push_back(static_cast<std::uint32_t>(tx_->lmtp_boxes.size()));
  }
  ++tx_->rcpt_accepted;
  reply(reply_id::rcpt_ok);
}

// RFC 5321 4.5.3.1.10: 452 asks for the rest in another transaction, so it
// is no protocol error, up to the overshoot allowance (Postfix's
// smtpd_recipient_overshoot_limit); past it each one counts.
void session::too_many_recipients() {
  if (++tx_->rcpt_overshoot > limits().recipient_overshoot_limit)
    return refuse(reply_id::too_many_rcpts);
  if (tx_->rcpt_overshoot == 1)
    events_.session_log(log_level::info,
                        fmt::format(FMT_STRING("id={} more than {} recipients: 452 to the rest"),
                                    tx_->queue_id, limits().max_recipients));
  reply(reply_id::too_many_rcpts);
}

// What the sink is told of the open transaction, for DATA and BDAT alike.
envelope session::make_envelope() const {
  const transaction& tx = *tx_;
  return envelope{
      .queue_id = tx.queue_id,
      .client_address = client_address_,
      .helo = helo_,
      .reverse_path = tx.reverse_path,
      .recipients = tx.recipients,
      .esmtp = esmtp_,
      .body_8bit = tx.body_8bit,
      .smtputf8 = tx.smtputf8,
      .body_binary = tx.body_binary,
      .requiretls = tx.requiretls,
      .ret = tx.ret,
      .envid = tx.envid,
      .independent_outcomes = lmtp_,
  };
}

void session::do_data(std::string_view arg, bool bare_lf) {
  if (!tx_) return refuse(reply_id::need_mail);
  // RFC 3030 2: no DATA in a transaction BDAT began; the state is then
  // undefined, so the message is dropped and later BDATs refused until RSET.
  if (tx_->chunked || tx_->chunk_failed) {
    tx_->chunk_failed = true;
    drop_delivery();
    return refuse(reply_id::data_after_bdat);
  }
  if (tx_->body_binary) return refuse(reply_id::binary_not_data);
  // RFC 5321 3.3 allows 503 or 554; as Postfix: 503 when no RCPT came at
  // all, 554 when every RCPT was refused (RFC 2920 3.1, pipelined clients).
  if (!tx_->rcpt_seen) return refuse(reply_id::need_rcpt);
  if (tx_->recipients.empty()) return refuse(reply_id::no_valid_rcpts);
  if (!arg.empty()) return refuse(reply_id::bad_syntax, "DATA");
  if (f_ && !tx_->data_asked) {
    tx_->data_asked = true;
    f_->bare_lf = bare_lf;
    return ask_filters(filter_stage::data, then::data);
  }
  data_accepted(bare_lf);
}

void session::data_accepted(bool bare_lf) {
  envelope env = make_envelope();
  if (!guard_sink([&] { tx_->sink_delivery = begin_delivery(env); }))
    return finish_transaction(reply_id::store_failed, {}, "deferred");
  reply(reply_id::start_data);
  tx_->data_started = true;
  mode_ = mode::data;
  decoder_.reset(!bare_lf);
  start_message();
}

// The trace header goes first (RFC 5321 4.4), below what filters prepend
// (Postfix puts PREPEND "above our own Received: header"); neither is
// counted in the size. One buffer for every session of the thread: the
// header leaves at once.
void session::start_message() {
  thread_local std::string header;
  header.clear();
  header += tx_->prepend;
  append_received_header(header);
  write_to_sink(header);
}

// The delivery the message is written to: through every filter's
// message(), the first filter outermost, to the store.
delivery* session::begin_delivery(const envelope& env) {
  if (!f_) return cfg_->store->begin(env, *this);
  if (tx_->discard || f_->discard_all) {
    f_->discarded.listener = this;
    f_->discarded.mailboxes = env.recipients.size();
    return &f_->discarded;
  }
  return message_from(0, env, *this);
}

delivery* session::message_from(std::size_t k, const envelope& env, delivery_listener& listener) {
  for (; f_ && k < f_->sessions.size(); ++k)
    if (filter_session* fs = f_->sessions[k])
      if (delivery* d = fs->message(env, *f_->hops[k + 1], listener)) return d;
  return cfg_->store->begin(env, listener);
}

void session::discard_delivery::commit() {
  outcomes.assign(mailboxes, store_outcome{});
  if (delivery_listener* l = std::exchange(listener, nullptr)) l->committed(outcomes);
}

// An embedder's sink may throw. The exception stops here: the log says what,
// the message is dropped (the rest of its data is read and discarded) and
// the client gets 451 at its end, so the sender retries.
template <typename F>
bool session::guard_sink(F&& call) noexcept {
  try {
    call();
    return true;
  } catch (const std::exception& e) {
    sink_failed(e.what());  // While the exception, and so its text, still lives.
  } catch (...) {
    sink_failed("an unknown exception");
  }
  return false;
}

void session::sink_failed(const char* what) noexcept {
  try {
    events_.session_log(log_level::error,
                        fmt::format(FMT_STRING("id={} sink failed: {}"),
                                    tx_ ? std::string_view(tx_->queue_id) : "-", printable(what)));
  } catch (...) {
    // No memory even for the log line: the 451 below still tells the truth.
  }
  if (tx_) {
    tx_->sink_failed = true;
    drop_delivery();
  }
  if (auto* m = metrics()) ++m->sink_errors[static_cast<std::size_t>(sink_error::exception)];
}

void session::write_to_sink(std::string_view bytes) {
  guard_sink([&] {
    if (!tx_->sink_delivery->write(bytes)) paused_ = true;
  });
}

void session::do_rset(std::string_view arg) {
  if (!arg.empty()) return refuse(reply_id::bad_syntax, "RSET");
  drop_delivery();  // Between BDAT chunks a message is open: RSET drops it.
  end_transaction();
  reply(reply_id::ok);
}

void session::do_quit(std::string_view arg) {
  if (!arg.empty()) return refuse(reply_id::bad_syntax, "QUIT");
  close_with(reply_id::bye);
}

void session::do_starttls(std::string_view arg) {
  if (!cfg_->tls) return refuse(reply_id::tls_unavailable);
  if (!tls().empty()) return refuse(reply_id::tls_active);
  if (!arg.empty()) return refuse(reply_id::bad_syntax, "STARTTLS");
  if (tx_) return refuse(reply_id::bad_sequence);
  reply(reply_id::ready_for_tls);
  starttls_ = true;  // feed() stops here; the connection takes over.
}

void session::tls_started(std::string description) {
  // RFC 3207 4.2: forget everything learnt before TLS; a new EHLO is needed.
  starttls_ = false;
  x().tls = std::move(description);
  helo_.clear();
  esmtp_ = false;
  x().user.clear();
  end_transaction();
  reader_.reset();
  events_.session_log(log_level::info, fmt::format(FMT_STRING("tls: {}"), tls()));
}

// XCLIENT (Postfix's XCLIENT_README): a trusted proxy in front says who
// its client is. Only for clients in xclient_from (550 5.7.0 for others, as
// Postfix answers), never inside a transaction (503). Every attribute is
// checked before any is applied; then the session starts over as after the
// greeting: a new 220, and the client sends EHLO again. The connection's
// limits were counted for the address it came from; the new address is the
// client for the log, the Received header and what follows in the session.
void session::do_xclient(std::string_view arg) {
  if (!xclient_allowed_) return refuse(reply_id::xclient_denied);
  if (tx_) return refuse(reply_id::xclient_in_tx);
  xclient_attrs a;
  xclient_parse p = parse_xclient(arg, a);
  switch (p.error) {
    case xclient_error::none: break;
    case xclient_error::syntax: return refuse(reply_id::bad_syntax, "XCLIENT attribute=value ...");
    case xclient_error::bad_name: return refuse(reply_id::xclient_attr, p.what);
    case xclient_error::bad_value: return refuse(reply_id::xclient_value, p.what);
  }
  extras& e = x();
  // [UNAVAILABLE] for ADDR: no address is known; the Received header says "unknown".
  if (a.addr) client_address_ = a.addr->empty() ? "unknown" : *a.addr;
  if (a.name) e.xclient_name = *a.name;
  if (a.helo) e.xclient_helo = *a.helo;
  if (a.proto) e.xclient_proto = *a.proto;
  if (a.login) e.user = *a.login;  // As AUTH would: the authenticated sender, or none.
  // XCLIENT_README, "XCLIENT Server response": the state of the greeting
  // (TLS stays; the attributes just given stay too).
  helo_.clear();
  esmtp_ = false;
  e.step = sasl::none;
  std::string line = "xclient:";
  auto note = [&](std::string_view key, const std::optional<std::string>& v) {
    if (!v) return;
    line += ' ';
    line += key;
    line += '=';
    if (v->empty())
      line += "[UNAVAILABLE]";
    else
      append_printable(line, *v);
  };
  note("addr", a.addr);
  note("port", a.port);
  note("name", a.name);
  note("helo", a.helo);
  note("proto", a.proto);
  note("login", a.login);
  note("destaddr", a.destaddr);
  note("destport", a.destport);
  events_.session_log(log_level::info, line);
  start();
}

// RFC 4954 4: AUTH mechanism [initial-response].
void session::do_auth(std::string_view arg) {
  if (!cfg_->auth) return refuse(reply_id::auth_unavailable);
  if (tls().empty() && !limits().allow_plaintext_auth) return refuse(reply_id::auth_needs_tls);
  if (helo_.empty()) return refuse(reply_id::need_helo);
  if (!user().empty()) return refuse(reply_id::auth_done);
  if (tx_) return refuse(reply_id::auth_in_tx);
  std::string_view mechanism = arg.substr(0, arg.find(' '));
  std::string_view initial = mechanism.size() < arg.size() ? arg.substr(mechanism.size() + 1) : "";
  if (iequals(mechanism, "PLAIN")) {
    x().sasl_method = "PLAIN";
    if (initial.empty()) {
      x().step = sasl::plain;
      out_ += "334 \r\n";
      return;
    }
    return sasl_plain(initial == "=" ? "" : initial);
  }
  if (iequals(mechanism, "LOGIN")) {
    x().sasl_method = "LOGIN";
    if (initial.empty()) {
      x().step = sasl::login_user;
      out_ += "334 VXNlcm5hbWU6\r\n";  // "Username:"
      return;
    }
    x().step = sasl::login_user;
    return sasl_response(initial);
  }
  refuse(reply_id::auth_mechanism);
}

// A line answering an open SASL challenge.
void session::sasl_response(std::string_view line) {
  sasl step = std::exchange(x().step, sasl::none);
  if (line == "*") return refuse(reply_id::auth_cancelled);
  if (step == sasl::plain) return sasl_plain(line);
  std::string decoded;
  if (!base64_decode(line, decoded)) return refuse(reply_id::auth_bad_base64);
  if (step == sasl::login_user) {
    x().sasl_user = std::move(decoded);
    x().step = sasl::login_password;
    out_ += "334 UGFzc3dvcmQ6\r\n";  // "Password:"
    return;
  }
  check_credentials(std::exchange(x().sasl_user, {}), decoded);
}

// RFC 4616: authzid NUL authcid NUL passwd.
void session::sasl_plain(std::string_view response) {
  std::string decoded;
  if (!base64_decode(response, decoded)) return refuse(reply_id::auth_bad_base64);
  auto first = decoded.find('\0');
  auto second = first == std::string::npos ? first : decoded.find('\0', first + 1);
  if (second == std::string::npos) return refuse(reply_id::auth_bad_base64);
  std::string_view authzid = std::string_view(decoded).substr(0, first);
  std::string user = decoded.substr(first + 1, second - first - 1);
  // Acting for another identity is not offered: authzid must be empty or the user.
  if (!authzid.empty() && authzid != user) user.clear();
  check_credentials(std::move(user), std::string_view(decoded).substr(second + 1));
}

void session::check_credentials(std::string user, std::string_view password) {
  extras& a = x();
  a.pending_user = std::move(user);
  // A check answers later, on the loop, and feed() stops until then; or it
  // answers inside check() (auth.hpp), and then the pointer is not ours.
  a.checking = true;
  auth_check* check = nullptr;
  try {
    check = cfg_->auth->check(a.pending_user, password, *this);
  } catch (...) {
    events_.session_log(log_level::error, "authenticator failed: an exception");
    if (a.checking) auth_checked(auth_result::busy);
    return;
  }
  if (a.checking) a.check = check;
}

void session::auth_checked(auth_result result) noexcept {
  try {
    on_auth_checked(result);
  } catch (...) {
    lost_memory();
  }
  if (!in_feed_) events_.session_ready();
}

void session::on_auth_checked(auth_result result) {
  extras& a = *x_;  // check_credentials() made it.
  a.checking = false;
  a.check = nullptr;
  count_auth(result, !a.pending_user.empty());
  if (result == auth_result::busy) {
    // RFC 4954 6: a temporary failure; no strike against the client.
    events_.session_log(
        log_level::warning,
        fmt::format(FMT_STRING("auth: user={} not checked: busy"), printable(a.pending_user)));
    reply(reply_id::auth_busy);
  } else if (result == auth_result::ok && !a.pending_user.empty()) {
    a.user = std::move(a.pending_user);
    events_.session_log(log_level::info,
                        fmt::format(FMT_STRING("auth: user={} ok"), printable(a.user)));
    reply(reply_id::auth_ok);
  } else {
    ++a.auth_failures;
    events_.session_log(
        log_level::warning,
        fmt::format(FMT_STRING("auth: user={} failed ({} of {})"), printable(a.pending_user),
                    a.auth_failures, limits().max_auth_failures));
    if (a.auth_failures >= limits().max_auth_failures) {
      close_with(reply_id::auth_too_many);
    } else {
      // A growing delay before the refusal slows down guessing (0.5 s, 1 s, 2 s, ... 8 s).
      reply_after(500U << std::min<std::size_t>(a.auth_failures - 1, 4), reply_id::auth_failed);
    }
  }
}

void session::wake() {
  if (!sleeping_) return;
  sleeping_ = false;
  out_ += x_->held;  // reply_after() made it.
  x_->held.clear();
  events_.session_ready();
}

void session::time_out(reply_id why) {
  if (closing_) return;
  events_.session_log(
      log_level::info,
      fmt::format(FMT_STRING("{} {}"), why == reply_id::timeout ? "timeout" : "data too slow",
                  in_data() ? "in DATA" : "waiting for a command"));
  if (tx_ && in_data()) {
    drop_delivery();
    events_.session_log(
        log_level::info,
        fmt::format(FMT_STRING("id={} status=dropped (client too slow)"), tx_->queue_id));
  }
  sleeping_ = false;
  if (x_) x_->held.clear();
  close_with(why);
}

void session::refuse_pregreet() {
  events_.session_log(log_level::warning, "pregreet: the client talked before the greeting");
  out_.clear();
  close_with(reply_id::pregreet);
}

std::size_t session::feed_data(std::span<char> input) {
  auto r = decoder_.decode(input);
  write_body(r.out, r.line_ends);
  if (r.done) end_of_data();
  return r.consumed;
}

void session::write_body(std::string_view bytes, std::size_t line_ends) {
  if (bytes.empty()) return;
  transaction& tx = *tx_;
  // RFC 1870 counts the message as sent, each line end as CRLF.
  tx.size += bytes.size() + line_ends;
  if (auto* m = metrics()) m->message_bytes += bytes.size() + line_ends;
  if (tx.too_big || tx.sink_failed) return;
  if (tx.size > limits().max_message_size) {
    // Read the rest and discard it; the reply comes at the end of data.
    tx.too_big = true;
    drop_delivery();
    return;
  }
  write_to_sink(bytes);
}

// RFC 3030 2: BDAT chunk-size [LAST], followed by exactly chunk-size octets.
// A BDAT that cannot be taken (no MAIL, no recipient, after a refused one)
// still consumes its octets, so that the stream stays in step, and its
// refusal comes after them, in order.
void session::do_bdat(std::string_view arg) {
  auto b = parse_bdat(arg);
  // Without a size the octets cannot be skipped: whatever follows is read
  // as commands, as after any refused command.
  if (!b) return refuse(reply_id::bad_syntax, "BDAT <size> [LAST]");
  x();  // The chunk's state lives with the rarely used rest (x_->chunk).
  x_->chunk.left = x_->chunk.size = b->size;
  x_->chunk.last = b->last;
  x_->chunk.refused = true;
  if (!tx_) {
    x_->chunk.refusal = reply_id::need_mail;
  } else if (tx_->chunk_failed) {
    x_->chunk.refusal = reply_id::chunk_refused;
  } else if (!tx_->rcpt_seen) {
    x_->chunk.refusal = reply_id::need_rcpt;  // As DATA: 503, or 554 when every RCPT failed.
  } else if (tx_->recipients.empty()) {
    x_->chunk.refusal = reply_id::no_valid_rcpts;
  } else {
    x_->chunk.refused = false;
  }
  x_->chunk.refusal_line.clear();
  if (x_->chunk.refused) {
    // RFC 3030 2: the client sends no more chunks after a failed one; those
    // already pipelined are read and refused too.
    if (tx_) tx_->chunk_failed = true;
    mode_ = mode::chunk;
    if (x_->chunk.left == 0) end_of_chunk();
    return;
  }
  // The first BDAT stands for DATA: the filters are asked before its octets
  // are read (feed() stops meanwhile, leaving them unread).
  if (f_ && !tx_->chunked && !tx_->data_asked) {
    tx_->data_asked = true;
    return ask_filters(filter_stage::data, then::bdat);
  }
  bdat_accepted();
}

void session::bdat_accepted() {
  transaction& tx = *tx_;
  if (!tx.chunked) begin_chunks();
  // The message's size is the sum of its chunks, checked as they come:
  // past the limit the rest is read and dropped (RFC 1870 with RFC 3030).
  std::uint64_t room = SIZE_MAX - tx.size;
  std::uint64_t size = x_->chunk.size;
  tx.size = size > room ? SIZE_MAX : tx.size + static_cast<std::size_t>(size);
  if (!tx.too_big && tx.size > limits().max_message_size) {
    tx.too_big = true;
    drop_delivery();
  }
  mode_ = mode::chunk;
  if (x_->chunk.left == 0) end_of_chunk();
}

// The first BDAT of a message opens the delivery, as DATA does.
void session::begin_chunks() {
  transaction& tx = *tx_;
  tx.chunked = true;
  tx.data_started = true;  // LMTP: the LAST chunk is answered once per recipient
  x_->chunk.decoder.reset(tx.body_binary);
  envelope env = make_envelope();
  // A sink that throws marks the message failed: its chunks are read and
  // dropped, and the client hears 451.
  if (!guard_sink([&] { tx.sink_delivery = begin_delivery(env); })) return;
  start_message();
}

std::size_t session::feed_chunk(std::span<char> input) {
  auto n = static_cast<std::size_t>(std::min<std::uint64_t>(input.size(), x_->chunk.left));
  std::size_t used = n;
  if (!x_->chunk.refused && !tx_->too_big && !tx_->sink_failed) {
    // A write that pauses is the last of this call: end_of_chunks() must not
    // write after it, so the message's last bytes come out whole here.
    auto r = x_->chunk.decoder.decode(input.first(n), x_->chunk.last && n == x_->chunk.left);
    write_chunk(r.out);
    used = r.consumed;
  }
  x_->chunk.left -= used;
  if (auto* m = metrics()) m->message_bytes += used;
  if (x_->chunk.left == 0) end_of_chunk();
  return used;
}

void session::write_chunk(std::string_view bytes) {
  if (bytes.empty() || tx_->too_big || tx_->sink_failed || !tx_->sink_delivery) return;
  write_to_sink(bytes);
}

// Each chunk gets one reply, after its last octet (RFC 3030 2).
void session::end_of_chunk() {
  ++commands_;  // As the end of data: the wait for the next command starts.
  mode_ = mode::command;
  if (x_->chunk.refused) {
    x_->chunk.refused = false;
    // A refused LAST chunk still ends the message: the next MAIL starts anew.
    bool ended = x_->chunk.last && tx_;
    if (ended) {
      drop_delivery();
      end_transaction();
    }
    if (x_->chunk.refusal_line.empty())
      refuse(x_->chunk.refusal);
    else
      refuse_line(x_->chunk.refusal_line);
    if (ended && draining_ && !closing_) close_with(reply_id::shutting_down);
    return;
  }
  if (x_->chunk.last) return end_of_chunks();
  // A failed message says so at once; the client sends no more chunks of it.
  if (tx_->too_big) return reply(reply_id::size_exceeded);
  if (tx_->sink_failed) return reply(reply_id::store_failed);
  char text[32];
  auto [end, ec] = std::to_chars(text, text + 20, x_->chunk.size);
  std::memcpy(end, " octets", 7);
  reply(reply_id::chunk_ok, std::string_view(text, static_cast<std::size_t>(end - text) + 7));
}

// The LAST chunk ends the message, as <CRLF>.<CRLF> ends DATA's.
void session::end_of_chunks() {
  transaction& tx = *tx_;
  if (x_->chunk.decoder.finish()) write_chunk("\r");  // The last byte was a bare CR.
  // Whatever the sink still holds, it takes with commit(): no more writable().
  paused_ = false;
  if (tx.too_big) return finish_transaction(reply_id::size_exceeded, {}, "rejected");
  if (tx.sink_failed) return finish_transaction(reply_id::store_failed, {}, "deferred");
  // A BINARYMIME body's CRs and LFs are data: the policy is for text.
  bool strict = limits().bare_newline == bare_newline_policy::reject && !tx.body_binary;
  if (strict && (x_->chunk.decoder.saw_bare_lf() || x_->chunk.decoder.saw_bare_cr())) {
    drop_delivery();
    return finish_transaction(
        x_->chunk.decoder.saw_bare_lf() ? reply_id::bare_lf : reply_id::bare_cr, {}, "rejected");
  }
  committing_ = true;
  count_commit_start();
  if (!guard_sink([&] { tx.sink_delivery->commit(); }) && committing_) {
    committing_ = false;
    finish_transaction(reply_id::store_failed, {}, "deferred");
  }
}

void session::drop_delivery() noexcept {
  if (tx_ && tx_->sink_delivery) {
    tx_->sink_delivery->abort();
    tx_->sink_delivery = nullptr;
  }
  // An aborted delivery never calls writable(): stop waiting for it.
  paused_ = false;
}

void session::end_of_data() {
  ++commands_;  // The end of data counts as a command: the wait for the next starts.
  mode_ = mode::command;
  reader_.reset();
  // Whatever the sink still holds, it takes with commit(): no more writable().
  paused_ = false;
  transaction& tx = *tx_;
  if (tx.too_big) return finish_transaction(reply_id::size_exceeded, {}, "rejected");
  if (tx.sink_failed) return finish_transaction(reply_id::store_failed, {}, "deferred");
  bool strict = limits().bare_newline == bare_newline_policy::reject;
  if (strict && (decoder_.saw_bare_lf() || decoder_.saw_bare_cr())) {
    drop_delivery();
    return finish_transaction(decoder_.saw_bare_lf() ? reply_id::bare_lf : reply_id::bare_cr, {},
                              "rejected");
  }
  // A 250 only once every copy is durable: wait for committed().
  committing_ = true;
  count_commit_start();
  if (!guard_sink([&] { tx.sink_delivery->commit(); }) && committing_) {
    // The delivery threw without calling back: it is dropped, nothing stored.
    committing_ = false;
    finish_transaction(reply_id::store_failed, {}, "deferred");
  }
}

// The listener calls cannot throw: no memory for a reply or a log line
// closes this session (the sender retries what it did not hear about).
void session::committed(std::span<const store_outcome> per_recipient) noexcept {
  try {
    on_committed(per_recipient);
  } catch (...) {
    lost_memory();
  }
  if (!in_feed_) events_.session_ready();
}

void session::lost_memory() noexcept {
  committing_ = false;
  if (tx_) {
    tx_.reset();
    filters_tx_over();
  }
  if (f_) f_->asking = false;
  if (x_) x_->checking = false;
  closing_ = true;
}

void session::on_committed(std::span<const store_outcome> per_recipient) {
  ++commands_;  // The reply leaves now: the client's time runs from here.
  committing_ = false;
  tx_->sink_delivery = nullptr;
  count_committed(per_recipient);
  if (lmtp_) return lmtp_committed(per_recipient);
  // One failed mailbox fails the message, so the sender retries it whole.
  // The reply behind the worst outcome (a next hop's, a filter's) is the
  // client's when it is one (the truth travels back).
  reply_id id = reply_id::queued;
  std::string_view why, answer;
  for (std::size_t i = 0; i < per_recipient.size(); ++i) {
    store_outcome o = per_recipient[i];
    if (o.result == store_result::stored) {
      if (answer.empty()) answer = o.reply;
      continue;
    }
    reply_id was = id;
    id = worse(id, o.result, reply_id::queued);
    if (id != was || why.empty()) why = o.reply;
    const recipient* r = i < tx_->recipients.size() ? &tx_->recipients[i] : nullptr;
    events_.session_log(
        log_level::warning,
        fmt::format(FMT_STRING("id={} mailbox={}@{} not stored: {}{}{}"), tx_->queue_id,
                    r ? printable(r->user) : "?", r ? printable(r->domain) : "?",
                    o.error ? std::strerror(o.error) : "sink failure", o.reply.empty() ? "" : ": ",
                    printable(o.reply)));
  }
  // A mailbox without an outcome (a sink or filter out of memory reports
  // fewer) is not known to be stored: the message is not sent.
  if (per_recipient.size() < tx_->recipients.size()) {
    id = worse(id, store_result::temporary_fail, reply_id::queued);
    events_.session_log(log_level::warning,
                        fmt::format(FMT_STRING("id={} {} of {} mailboxes have no outcome: not "
                                               "stored"),
                                    tx_->queue_id, tx_->recipients.size() - per_recipient.size(),
                                    tx_->recipients.size()));
  }
  if (id == reply_id::queued) {
    tx_->hop_reply.assign(answer.substr(0, 400));
    bool discarded = tx_->discard || (f_ && f_->discard_all);
    return finish_transaction(id, tx_->queue_id, discarded ? "discarded" : "sent");
  }
  tx_->hop_reply.assign(why.substr(0, 400));
  std::string line;
  foreign_for(why, id, line);
  finish_transaction(id, {}, id == reply_id::store_rejected ? "bounced" : "deferred", line);
}

// The reply for a message so far (`id`, `ok` while every mailbox is
// stored) after one more mailbox's result: a permanent failure beats a
// temporary one, which beats a full disk.
reply_id session::worse(reply_id id, store_result result, reply_id ok) noexcept {
  if (result == store_result::permanent_fail) return reply_id::store_rejected;
  if (result == store_result::no_space && id == ok) return reply_id::no_space;
  if (result == store_result::temporary_fail && id != reply_id::store_rejected)
    return reply_id::store_failed;
  return id;
}

void session::writable() noexcept {
  paused_ = false;
  if (!in_feed_) events_.session_ready();
}

void session::finish_transaction(reply_id id, std::string_view detail, std::string_view status,
                                 std::string_view foreign) {
  const transaction& tx = *tx_;
  // The one log line of a message, written with appends into a buffer of
  // the thread (it is made for every message; a format cost 3k instructions):
  // id=... from=<...> to=<...>,<...> size=N status=... (<the reply>)
  thread_local std::string line;
  line.clear();
  line += "id=";
  line += tx.queue_id;
  line += " from=<";
  append_printable(line, tx.reverse_path);  // UTF-8 addresses (SMTPUTF8) too
  line += "> to=";
  // Aliases give one address several mailboxes: name each address once.
  // Mailboxes of one address are adjacent (do_rcpt appends them together),
  // so comparing with the previous one suffices and stays linear.
  std::string_view last;
  for (const auto& r : tx.recipients) {
    if (!last.empty() && r.address == last) continue;
    if (!last.empty()) line += ',';
    line += '<';
    append_printable(line, r.address);
    line += '>';
    last = r.address;
  }
  if (tx.requiretls) line += " requiretls=yes";
  append_dsn_fields(line, tx);
  char size[24];
  auto [end, ec] = std::to_chars(size, size + sizeof size, tx.size);
  line += " size=";
  line.append(size, end);
  line += " status=";
  line += status;
  line += " (";
  if (foreign.empty()) {
    line += reply_line(id);
    line += detail;
  } else {
    line += foreign;
  }
  line += ')';
  append_filter_fields(line, tx.hop_reply, tx.filter_notes);
  events_.session_log(log_level::info, line);
  auto answer = [&] {
    if (foreign.empty()) return reply(id, detail);
    out_ += foreign;
    out_ += "\r\n";
  };
  answer();
  count_messages(id, lmtp_ && tx.data_started ? std::max<std::size_t>(tx.rcpt_accepted, 1) : 1);
  // RFC 2033 4.2: after the data, LMTP answers once for each accepted RCPT.
  if (lmtp_ && tx.data_started)
    for (std::size_t i = 1; i < tx.rcpt_accepted; ++i) answer();
  end_transaction();
  if (draining_) close_with(reply_id::shutting_down);
}

// What filters and a next hop said of the message, for its log line:
// " hop=(<its reply>) filters=(<their notes>)", each where there is one.
void session::append_filter_fields(std::string& line, std::string_view hop,
                                   std::string_view notes) {
  if (!hop.empty()) {
    line += " hop=(";
    append_printable(line, hop.substr(0, 400));
    line += ')';
  }
  if (!notes.empty()) {
    line += " filters=(";
    line += notes;  // escaped as they were kept
    line += ')';
  }
}

// The DSN parameters of a message for its log line, where any came:
// " ret=HDRS envid=<xtext>" and per RCPT address " notify=<addr>:SUCCESS,FAILURE
// orcpt=<addr>:rfc822;<xtext>". ENVID and ORCPT are logged as xtext, which
// has no space, so the line stays one field per word.
void session::append_dsn_fields(std::string& line, const transaction& tx) {
  if (tx.ret != dsn_ret::none) line += tx.ret == dsn_ret::full ? " ret=FULL" : " ret=HDRS";
  if (!tx.envid.empty()) {
    line += " envid=";
    xtext_encode(tx.envid, line);
  }
  std::string_view last;
  for (const auto& r : tx.recipients) {
    if (r.address == last || (r.notify == 0 && r.orcpt_type.empty())) continue;
    last = r.address;
    if (r.notify != 0) {
      line += " notify=<";
      line += r.address;
      line += ">:";
      if (r.notify & dsn_notify::never) line += "NEVER,";
      if (r.notify & dsn_notify::success) line += "SUCCESS,";
      if (r.notify & dsn_notify::failure) line += "FAILURE,";
      if (r.notify & dsn_notify::delay) line += "DELAY,";
      line.pop_back();
    }
    if (!r.orcpt_type.empty()) {
      line += " orcpt=<";
      line += r.address;
      line += ">:";
      line += r.orcpt_type;
      line += ';';
      xtext_encode(r.orcpt, line);
    }
  }
}

// Written with appends, not a format: it is made for every message.
void session::append_received_header(std::string& h) const {
  const transaction& tx = *tx_;
  bool v6 = client_address_.find(':') != std::string::npos;
  h += "Received: from ";
  // XCLIENT's HELO name and client name, when it gave them.
  h += x_ && !x_->xclient_helo.empty() ? x_->xclient_helo : helo_;
  if (client_address_.empty()) {
    h += " (unix socket)\n";  // A local client: no address to name.
  } else {
    h += " (";
    if (x_ && !x_->xclient_name.empty()) {
      h += x_->xclient_name;
      h += ' ';
    }
    if (client_address_ == "unknown") {
      h += "unknown)\n";  // XCLIENT ADDR=[UNAVAILABLE]
    } else {
      h += v6 ? "[IPv6:" : "[";
      h += client_address_;
      h += "])\n";
    }
  }
  if (!tls().empty()) {
    h += "\t(using ";
    h += tls();
    h += ")\n";
  }
  if (!user().empty()) {
    h += "\t(Authenticated sender: ";
    h += printable(user());
    h += ")\n";
  }
  h += "\tby ";
  h += limits().hostname;
  // RFC 3848: ESMTP (or LMTP), plus S with TLS and A with AUTH; RFC 6531
  // 4.3: UTF8SMTP (UTF8LMTP) for SMTPUTF8, with the same S and A.
  // XCLIENT PROTO=SMTP or ESMTP stands for what the client itself said.
  bool esmtp = x_ && !x_->xclient_proto.empty() ? x_->xclient_proto == "ESMTP" : esmtp_;
  h += lmtp_         ? (tx.smtputf8 ? " (inboxd) with UTF8LMTP" : " (inboxd) with LMTP")
       : !esmtp      ? " (inboxd) with SMTP"
       : tx.smtputf8 ? " (inboxd) with UTF8SMTP"
                     : " (inboxd) with ESMTP";
  if (esmtp && !tls().empty()) h += 'S';
  if (esmtp && !user().empty()) h += 'A';
  h += " id ";
  h += tx.queue_id;
  if (tx.rcpt_accepted == 1) {
    h += "\n\tfor <";
    h += tx.recipients[0].address;
    h += ">; ";
  } else {
    h += ";\n\t";
  }
  append_rfc5322_date(h, std::time(nullptr));
  h += '\n';
}

// RFC 2033 4.2: one reply per accepted RCPT, in RCPT order; 250 only when
// every mailbox of that RCPT stored the message, else the worst failure
// among them (as on_committed ranks them), and a log line for each.
void session::lmtp_committed(std::span<const store_outcome> per_recipient) {
  const transaction& tx = *tx_;
  for (std::size_t i = 0; i < per_recipient.size(); ++i) {
    store_outcome o = per_recipient[i];
    if (o.result == store_result::stored) continue;
    const recipient* r = i < tx.recipients.size() ? &tx.recipients[i] : nullptr;
    events_.session_log(log_level::warning,
                        fmt::format(FMT_STRING("id={} mailbox={}@{} not stored: {}"), tx.queue_id,
                                    r ? printable(r->user) : "?", r ? printable(r->domain) : "?",
                                    o.error ? std::strerror(o.error) : "sink failure"));
  }
  std::uint32_t begin = 0;
  bool discarded = tx.discard || (f_ && f_->discard_all);
  for (std::size_t k = 0; k < tx.lmtp_rcpts.size(); ++k) {
    reply_id id = reply_id::lmtp_delivered;
    std::string_view why;
    for (std::uint32_t b = begin; b < tx.lmtp_ends[k]; ++b) {
      std::uint32_t box = tx.lmtp_boxes[b];
      // A sink that gave fewer outcomes than mailboxes stored nothing it did not report.
      store_outcome o = box < per_recipient.size()
                            ? per_recipient[box]
                            : store_outcome{.result = store_result::temporary_fail};
      if (o.result == store_result::stored) continue;
      reply_id was = id;
      id = worse(id, o.result, reply_id::lmtp_delivered);
      if (id != was || why.empty()) why = o.reply;
    }
    begin = tx.lmtp_ends[k];
    std::string detail, foreign;
    if (id == reply_id::lmtp_delivered)
      detail = fmt::format(FMT_STRING("<{}> as {}"), tx.lmtp_rcpts[k], tx.queue_id);
    else
      foreign_for(why, id, foreign);
    const char* status = id == reply_id::lmtp_delivered   ? (discarded ? "discarded" : "sent")
                         : id == reply_id::store_rejected ? "bounced"
                                                          : "deferred";
    std::string line =
        fmt::format(FMT_STRING("id={} from=<{}> to=<{}> size={} status={} ({})"), tx.queue_id,
                    printable(tx.reverse_path), printable(tx.lmtp_rcpts[k]), tx.size, status,
                    foreign.empty() ? std::string(reply_line(id)) + printable(detail) : foreign);
    append_filter_fields(line, why, tx.filter_notes);
    events_.session_log(log_level::info, line);
    if (foreign.empty()) {
      reply(id, detail);
    } else {
      out_ += foreign;
      out_ += "\r\n";
    }
    count_messages(id, 1);
  }
  end_transaction();
  if (draining_) close_with(reply_id::shutting_down);
}

// Counts the RCPT as accepted when it was (its transaction has one more),
// as refused otherwise: every other reply to it refuses it (452 too).
void session::rcpt_counted(std::string_view arg) {
  std::size_t before = tx_ ? tx_->rcpt_accepted : 0;
  do_rcpt(arg);
  if (auto* m = metrics()) {
    if (tx_ && tx_->rcpt_accepted > before)
      ++m->recipients_accepted;
    else
      ++m->recipients_refused;
  }
}

void session::count_messages(reply_id id, std::size_t n) noexcept {
  auto* m = metrics();
  if (!m) return;
  std::uint16_t code = reply_of(id).code;
  message_status st = code < 400   ? message_status::accepted
                      : code < 500 ? message_status::temp_failed
                                   : message_status::rejected;
  m->messages[static_cast<std::size_t>(st)] += n;
}

void session::count_commit_start() noexcept {
  if (metrics()) tx_->commit_start = std::chrono::steady_clock::now();
}

// The commit's latency, and the message's sink error: the kind of its first
// failed mailbox (the sinks fail every mailbox for one cause; over LMTP the
// first cause stands for the message all the same).
void session::count_committed(std::span<const store_outcome> per_recipient) noexcept {
  auto* m = metrics();
  if (!m) return;
  if (tx_->commit_start != std::chrono::steady_clock::time_point{})
    m->commit_seconds.observe(
        std::chrono::duration<double>(std::chrono::steady_clock::now() - tx_->commit_start)
            .count());
  for (const store_outcome& o : per_recipient) {
    if (o.result == store_result::stored) continue;
    ++m->sink_errors[static_cast<std::size_t>(sink_error_of(o.error))];
    break;
  }
}

void session::count_auth(auth_result result, bool known_user) noexcept {
  auto* m = metrics();
  if (!m) return;
  if (result == auth_result::busy)
    ++m->auth_busy;
  else if (result == auth_result::ok && known_user)
    ++m->auth_ok;
  else
    ++m->auth_failed;
}

void session::shutdown() {
  if (closing_) return;
  draining_ = true;
  if (idle() && mode_ == mode::command) close_with(reply_id::shutting_down);
}

void session::disconnect() noexcept {
  drop_delivery();
  if (x_) {
    if (x_->check) std::exchange(x_->check, nullptr)->cancel();
    x_->checking = false;
  }
  sleeping_ = false;
  committing_ = false;
  closing_ = true;
  close_filters();
}

// --- Filters (inboxd/filter.hpp) ---

void session::open_filters() {
  close_filters();
  auto f = std::make_unique<filter_run>();
  f->cfg = cfg_;
  const auto& filters = cfg_->filters;
  for (std::size_t k = 0; k <= filters.size(); ++k)
    f->hops.push_back(std::make_unique<filter_hop>(*this, k));
  std::string_view name =
      x_ && !x_->xclient_name.empty() ? std::string_view(x_->xclient_name) : "unknown";
  filter_client client{.address = client_address_,
                       .port = 0,
                       .name = name,
                       .server_name = limits().hostname,
                       .lmtp = lmtp_};
  for (const auto& filter : filters) {
    filter_session* fs = nullptr;
    // An embedder's filter may throw: it then answers every question with
    // a temporary failure (run_filters()).
    try {
      fs = filter->open(client);
    } catch (const std::exception& e) {
      events_.session_log(log_level::error, fmt::format(FMT_STRING("filter failed to open: {}"),
                                                        printable(e.what())));
    } catch (...) {
      events_.session_log(log_level::error, "filter failed to open");
    }
    f->sessions.push_back(fs);
  }
  f_ = std::move(f);
}

void session::close_filters() noexcept {
  if (!f_) return;
  for (filter_session* fs : f_->sessions)
    if (fs) fs->close();
  f_.reset();
}

void session::filters_tx_over() noexcept {
  if (!f_ || !f_->tx_known) return;
  f_->tx_known = false;
  for (filter_session* fs : f_->sessions)
    if (fs) fs->reset();
}

void session::ask_filters(filter_stage stage, then next) {
  filter_run& f = *f_;
  f.stage = stage;
  f.next_step = next;
  f.next = 0;
  if (stage >= filter_stage::mail) f.tx_known = true;
  run_filters();
}

// Asks each filter in turn; an answer inside ask() goes on in this loop,
// a later one from filtered().
void session::run_filters() {
  filter_run& f = *f_;
  while (f.next < f.sessions.size()) {
    filter_session* fs = f.sessions[f.next];
    f.asking = true;
    f.answered = false;
    f.action = filter_action::tempfail;
    f.reply.clear();
    f.prepend.clear();
    f.note.clear();
    if (!fs) {
      f.note = "filter unavailable";
      f.answered = true;
    } else {
      const transaction* tx = f.stage >= filter_stage::mail ? &*tx_ : nullptr;
      filter_state st{
          .helo = helo_,
          .tls = tls(),
          .sasl_method = user().empty() || !x_ ? "" : x_->sasl_method,
          .sasl_user = user(),
          .queue_id = tx ? std::string_view(tx->queue_id) : std::string_view(),
          .reverse_path = tx ? std::string_view(tx->reverse_path) : std::string_view(),
          .mail_params = tx ? std::string_view(f.mail_params) : std::string_view(),
          .recipient =
              f.stage == filter_stage::rcpt ? std::string_view(f.rcpt) : std::string_view(),
          .rcpt_params =
              f.stage == filter_stage::rcpt ? std::string_view(f.rcpt_params) : std::string_view(),
          .recipients = tx ? tx->rcpt_accepted : 0,
          .size = tx ? tx->declared_size : 0,
      };
      f.in_ask = true;
      try {
        fs->ask(f.stage, st, *this);
      } catch (const std::exception& e) {
        if (!f.answered) {
          f.note = fmt::format(FMT_STRING("filter failed: {}"), e.what());
          f.answered = true;
        }
      } catch (...) {
        if (!f.answered) {
          f.note = "filter failed";
          f.answered = true;
        }
      }
      f.in_ask = false;
    }
    if (!f.answered) return;  // filtered() goes on from here.
    if (!take_answer()) return;
  }
  f.asking = false;
  filters_passed();
}

void session::filtered(const filter_verdict& verdict) noexcept {
  // Exactly one answer per question (filter.hpp); a stray one is ignored.
  if (!f_ || !f_->asking || f_->answered) return;
  try {
    filter_run& f = *f_;
    f.action = verdict.action;
    f.reply.assign(verdict.reply.substr(0, 1024));
    f.prepend.assign(verdict.prepend.substr(0, 1024));
    f.note.assign(verdict.note.substr(0, 1024));
    f.answered = true;
    if (f.in_ask) return;
    if (take_answer()) run_filters();
  } catch (...) {
    lost_memory();
  }
  if (!in_feed_) events_.session_ready();
}

// A header field a filter prepends: "Name: value", one line of printable
// ASCII (tabs too), the name without a colon (RFC 5322 2.2).
static bool header_field(std::string_view h) {
  std::size_t colon = h.find(':');
  if (colon == 0 || colon == h.npos || h.size() > 998) return false;
  for (std::size_t i = 0; i < h.size(); ++i) {
    auto u = static_cast<unsigned char>(h[i]);
    bool ok = i < colon ? u > 32 && u < 127 : (u >= 32 && u < 127) || u == '\t';
    if (!ok) return false;
  }
  return true;
}

// Takes the answer in f_: true to ask the next filter.
bool session::take_answer() {
  filter_run& f = *f_;
  bool in_tx = tx_ && f.stage >= filter_stage::mail;
  if (!f.note.empty()) {
    events_.session_log(log_level::info, fmt::format(FMT_STRING("id={} filter: {}"),
                                                     in_tx ? std::string_view(tx_->queue_id) : "-",
                                                     printable(f.note)));
    // The message's log line names what the filters said, up to a bound.
    if (in_tx && tx_->filter_notes.size() < 512) {
      if (!tx_->filter_notes.empty()) tx_->filter_notes += "; ";
      append_printable(tx_->filter_notes, std::string_view(f.note).substr(0, 200));
    }
  }
  switch (f.action) {
    case filter_action::proceed:
      if (!f.prepend.empty()) {
        if (!in_tx || !header_field(f.prepend) || tx_->prepend.size() + f.prepend.size() > 8192) {
          events_.session_log(
              log_level::warning,
              fmt::format(FMT_STRING("filter: header not prepended: {}"), printable(f.prepend)));
        } else {
          tx_->prepend += f.prepend;
          tx_->prepend += '\n';
        }
      }
      ++f.next;
      return true;
    case filter_action::discard:
      if (in_tx)
        tx_->discard = true;
      else
        f.discard_all = true;
      events_.session_log(log_level::info,
                          fmt::format(FMT_STRING("id={} filter: discard"),
                                      in_tx ? std::string_view(tx_->queue_id) : "-"));
      f.next = f.sessions.size();  // Nothing more to ask: the message goes nowhere.
      return true;
    default:
      f.asking = false;
      filters_refused();
      return false;
  }
}

void session::filters_passed() {
  switch (f_->next_step) {
    case then::greet: return greet();
    case then::helo: return helo_reply();
    case then::mail: return mail_accepted();
    case then::rcpt: return rcpt_accepted(f_->rcpt);
    case then::data: return data_accepted(f_->bare_lf);
    case then::bdat: return bdat_accepted();
  }
}

// A reply another program gave (a next hop, a milter, a policy service)
// as we send it for `id`: one line "<code> <enhanced> <text>". It must
// start with three digits of id's class, then a space, a '-' or its end;
// an enhanced code of that class is kept (RFC 3463 2), else id's is put
// in; the text is cut at its first line and 400 octets and escaped as the
// log escapes it (replies are printable ASCII, RFC 5321 4.2). A 421 becomes
// 451: it closed the channel it came on (RFC 5321 3.8), not this one.
// Returns false, with out empty, for anything else: the caller sends its
// own reply.
bool session::foreign_for(std::string_view text, reply_id id, std::string& out) {
  out.clear();
  const reply_entry& e = reply_of(id);
  const char kind = static_cast<char>('0' + e.code / 100);
  auto digit = [](char c) { return c >= '0' && c <= '9'; };
  text = text.substr(0, text.find_first_of("\r\n"));
  if (text.size() < 3 || text[0] != kind || !digit(text[1]) || !digit(text[2])) return false;
  if (text.size() > 3 && text[3] != ' ' && text[3] != '-') return false;
  out.append(text.starts_with("421") ? "451" : text.substr(0, 3));
  out += ' ';
  std::string_view rest = text.size() > 4 ? text.substr(4) : std::string_view();
  std::size_t sp = rest.find(' ');
  std::string_view first = rest.substr(0, sp);
  bool has_enhanced =
      first.size() >= 5 && first.size() <= 11 && first[0] == kind && first[1] == '.' &&
      std::count(first.begin(), first.end(), '.') == 2 &&
      std::all_of(first.begin(), first.end(), [&](char c) { return c == '.' || digit(c); }) &&
      first.back() != '.' && first.find("..") == first.npos;
  if (has_enhanced) {
    out.append(first);
    rest = sp == rest.npos ? std::string_view() : rest.substr(sp + 1);
  } else {
    out.append(e.enhanced);
  }
  if (rest.empty()) rest = kind == '4' ? "Try again later" : "Rejected";
  out += ' ';
  append_printable(out, rest.substr(0, 400));
  return true;
}

void session::filters_refused() {
  filter_run& f = *f_;
  if (f.action == filter_action::disconnect) {
    events_.session_log(log_level::info, "filter: the session is ended");
    drop_delivery();
    if (tx_) end_transaction();
    filters_tx_over();  // MAIL was asked about before its transaction opened.
    return close_with(reply_id::filter_shutdown);
  }
  bool temporary = f.action != filter_action::reject;
  reply_id id = temporary ? reply_id::filter_tempfail : reply_id::filter_rejected;
  std::string line;
  if (!foreign_for(f.reply, id, line)) line = reply_line(id);
  switch (f.next_step) {
    case then::greet:
      // RFC 5321 3.1: a greeting is 220, or 554 (then 503 to all but QUIT);
      // a temporary refusal is 421 and the end.
      line.replace(0, 3, temporary ? "421" : "554");
      events_.session_log(log_level::info, fmt::format(FMT_STRING("refused at connect: {}"), line));
      out_ += line;
      out_ += "\r\n";
      if (temporary) {
        closing_ = true;
      } else {
        f.refused_at_connect = true;
      }
      return;
    case then::helo:
      helo_.clear();
      esmtp_ = false;
      return refuse_line(line);
    case then::mail:
      filters_tx_over();  // The transaction never opened.
      return refuse_line(line);
    case then::rcpt: return refuse_line(line);
    case then::data:
      tx_->data_asked = false;  // A DATA again asks again.
      return refuse_line(line);
    case then::bdat:
      // The chunk's octets are read and dropped, then its refusal; so are
      // later chunks' (RFC 3030 2), until RSET or LAST.
      x_->chunk.refused = true;
      x_->chunk.refusal_line = std::move(line);
      tx_->chunk_failed = true;
      mode_ = mode::chunk;
      if (x_->chunk.left == 0) end_of_chunk();
      return;
  }
}

}  // namespace inboxd::proto
