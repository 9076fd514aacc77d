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
queue_id_source::queue_id_source(std::uint64_t start_time, std::uint32_t pid,
                                 std::uint64_t counter)
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
  for (char c : s) {
    auto u = static_cast<unsigned char>(c);
    if (u >= 32 && u < 127 && c != '\\') {
      out += c;
    } else {
      const char escaped[4] = {'\\', 'x', hex[u >> 4], hex[u & 15]};
      out.append(escaped, 4);
    }
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
  out_ += fmt::format(FMT_STRING("220 {} ESMTP inboxd\r\n"), limits().hostname);
}

void session::reply(reply_id id, std::string_view detail) {
  append_reply(out_, id, detail);
}

// A refusal is a reply and a log line that says why (docs/DESIGN.md, rule 6).
// Too many of them end the session; with a tarpit, each waits a little more.
void session::refuse(reply_id id, std::string_view detail) {
  const reply_entry& e = reply_of(id);
  events_.session_log(log_level::info, fmt::format(FMT_STRING("refused: {} {} {}{}"), e.code,
                                                   e.enhanced, e.text, printable(detail)));
  if (++errors_ >= limits().max_errors) {
    reply(id, detail);
    events_.session_log(log_level::warning, fmt::format(FMT_STRING("{} errors: closing"), errors_));
    return close_with(reply_id::too_many_errors);
  }
  std::uint32_t delay = limits().error_delay_ms;
  if (delay == 0 || errors_ < 2) return reply(id, detail);
  reply_after(std::min<std::uint32_t>(delay * static_cast<std::uint32_t>(errors_ - 1), 10'000), id,
              detail);
}

// Holds a reply back for a while; feed() stops meanwhile, so replies keep
// their order. A timer of the connection, never a sleep.
void session::reply_after(std::uint32_t milliseconds, reply_id id, std::string_view detail) {
  append_reply(x().held, id, detail);
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
  switch (cmd.v) {
    case verb::helo: return do_helo(cmd.arg, false);
    case verb::ehlo: return do_helo(cmd.arg, true);
    case verb::mail: return do_mail(cmd.arg);
    case verb::rcpt: return do_rcpt(cmd.arg);
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
    case verb::unknown: return refuse(reply_id::unknown_command);
  }
}

void session::do_helo(std::string_view arg, bool esmtp) {
  std::string_view name = arg.substr(0, arg.find(' '));
  if (name.empty()) return refuse(reply_id::bad_syntax, esmtp ? "EHLO hostname" : "HELO hostname");
  // RFC 5321 4.1.4: HELO/EHLO also clears any transaction.
  tx_.reset();
  // The name goes into the Received header: keep it to printable ASCII.
  helo_.assign(name.substr(0, 255));
  for (char& c : helo_)
    if (c < 33 || c > 126) c = '?';
  esmtp_ = esmtp;
  if (!esmtp) {
    out_ += fmt::format(FMT_STRING("250 {}\r\n"), limits().hostname);
    return;
  }
  auto out = std::back_inserter(out_);
  fmt::format_to(out, FMT_STRING("250-{}\r\n250-PIPELINING\r\n250-SIZE {}\r\n250-8BITMIME\r\n"),
                 limits().hostname, limits().max_message_size);
  out_ += "250-SMTPUTF8\r\n";  // RFC 6531
  if (cfg_->tls && tls().empty()) out_ += "250-STARTTLS\r\n";
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
    } else if (iequals(param->keyword, "BODY")) {
      // RFC 6152: BODY=7BIT or BODY=8BITMIME.
      if (iequals(param->value, "8BITMIME"))
        tx.body_8bit = true;
      else if (!iequals(param->value, "7BIT"))
        return refuse(reply_id::bad_body_type);
    } else if (iequals(param->keyword, "SMTPUTF8")) {
      // RFC 6531 3.4: a parameter without a value, given once.
      if (param->has_value) return refuse(reply_id::bad_syntax, "SMTPUTF8 takes no value");
      if (tx.smtputf8) return refuse(reply_id::bad_syntax, "SMTPUTF8 given twice");
      tx.smtputf8 = true;
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
  param_reader params(p.value.params);
  if (auto param = params.next()) return refuse(reply_id::bad_param, param->keyword);
  if (params.error()) return refuse(reply_id::bad_syntax, "RCPT TO:<address>");
  // Aliases multiply the mailboxes an RCPT costs: their total is bounded
  // too (Postfix bounds alias expansion), so that the work of a transaction
  // stays linear in max_recipients whatever the aliases hold.
  const std::size_t mailbox_limit = 10 * limits().max_recipients;
  if (tx_->rcpt_accepted >= limits().max_recipients || tx_->mailboxes_resolved >= mailbox_limit)
    return too_many_recipients();
  std::vector<recipient>& found = tx_->found;
  found.clear();
  rcpt_verdict verdict = rcpt_verdict::accept;
  // An embedder's policy may throw: the RCPT gets a temporary failure.
  try {
    verdict = cfg_->policy->resolve(p.value.mailbox, found);
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
  // A mailbox named twice (an alias and its user) gets one copy. Few
  // recipients are scanned; past linear_dedup a set of "user NUL domain"
  // keys finds repeats in O(1), so that the work stays linear in them.
  auto& kept = tx_->recipients;
  auto key_of = [](const recipient& r) {
    std::string key = r.user;
    key += '\0';
    key += r.domain;
    return key;
  };
  for (auto& r : found) {
    bool fresh;
    if (kept.size() < linear_dedup) {
      fresh = std::none_of(kept.begin(), kept.end(), [&](const recipient& k) {
        return k.user == r.user && k.domain == r.domain;
      });
    } else {
      if (tx_->mailbox_keys.empty())
        for (const recipient& k : kept) tx_->mailbox_keys.insert(key_of(k));
      fresh = tx_->mailbox_keys.insert(key_of(r)).second;
    }
    if (fresh) kept.push_back(std::move(r));
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

void session::do_data(std::string_view arg, bool bare_lf) {
  if (!tx_) return refuse(reply_id::need_mail);
  // RFC 5321 3.3 allows 503 or 554; as Postfix: 503 when no RCPT came at
  // all, 554 when every RCPT was refused (RFC 2920 3.1, pipelined clients).
  if (!tx_->rcpt_seen) return refuse(reply_id::need_rcpt);
  if (tx_->recipients.empty()) return refuse(reply_id::no_valid_rcpts);
  if (!arg.empty()) return refuse(reply_id::bad_syntax, "DATA");
  envelope env{
      .queue_id = tx_->queue_id,
      .client_address = client_address_,
      .helo = helo_,
      .reverse_path = tx_->reverse_path,
      .recipients = tx_->recipients,
      .esmtp = esmtp_,
      .body_8bit = tx_->body_8bit,
      .smtputf8 = tx_->smtputf8,
  };
  if (!guard_sink([&] { tx_->sink_delivery = cfg_->store->begin(env, *this); }))
    return finish_transaction(reply_id::store_failed, {}, "deferred");
  reply(reply_id::start_data);
  mode_ = mode::data;
  decoder_.reset(!bare_lf);
  // The trace header goes first (RFC 5321 4.4); it is not counted in the size.
  // One buffer for every session of the thread: the header leaves at once.
  thread_local std::string header;
  header.clear();
  append_received_header(header);
  write_to_sink(header);
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
}

void session::write_to_sink(std::string_view bytes) {
  guard_sink([&] {
    if (!tx_->sink_delivery->write(bytes)) paused_ = true;
  });
}

void session::do_rset(std::string_view arg) {
  if (!arg.empty()) return refuse(reply_id::bad_syntax, "RSET");
  tx_.reset();  // Never inside DATA, so no delivery is open.
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
  tx_.reset();
  reader_.reset();
  events_.session_log(log_level::info, fmt::format(FMT_STRING("tls: {}"), tls()));
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
    if (initial.empty()) {
      x().step = sasl::plain;
      out_ += "334 \r\n";
      return;
    }
    return sasl_plain(initial == "=" ? "" : initial);
  }
  if (iequals(mechanism, "LOGIN")) {
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
  if (tx.too_big || tx.sink_failed) return;
  if (tx.size > limits().max_message_size) {
    // Read the rest and discard it; the reply comes at the end of data.
    tx.too_big = true;
    drop_delivery();
    return;
  }
  write_to_sink(bytes);
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
  if (tx_) tx_.reset();
  if (x_) x_->checking = false;
  closing_ = true;
}

void session::on_committed(std::span<const store_outcome> per_recipient) {
  ++commands_;  // The reply leaves now: the client's time runs from here.
  committing_ = false;
  tx_->sink_delivery = nullptr;
  // One failed mailbox fails the message, so the sender retries it whole.
  reply_id id = reply_id::queued;
  for (std::size_t i = 0; i < per_recipient.size(); ++i) {
    store_outcome o = per_recipient[i];
    if (o.result == store_result::stored) continue;
    if (o.result == store_result::permanent_fail) id = reply_id::store_rejected;
    if (o.result == store_result::no_space && id == reply_id::queued) id = reply_id::no_space;
    if (o.result == store_result::temporary_fail && id != reply_id::store_rejected)
      id = reply_id::store_failed;
    const recipient* r = i < tx_->recipients.size() ? &tx_->recipients[i] : nullptr;
    events_.session_log(log_level::warning,
                        fmt::format(FMT_STRING("id={} mailbox={}@{} not stored: {}"), tx_->queue_id,
                                    r ? r->user : "?", r ? r->domain : "?",
                                    o.error ? std::strerror(o.error) : "sink failure"));
  }
  if (id == reply_id::queued)
    finish_transaction(id, tx_->queue_id, "sent");
  else
    finish_transaction(id, {}, id == reply_id::store_rejected ? "bounced" : "deferred");
}

void session::writable() noexcept {
  paused_ = false;
  if (!in_feed_) events_.session_ready();
}

void session::finish_transaction(reply_id id, std::string_view detail, std::string_view status) {
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
  char size[24];
  auto [end, ec] = std::to_chars(size, size + sizeof size, tx.size);
  line += " size=";
  line.append(size, end);
  line += " status=";
  line += status;
  line += " (";
  line += reply_line(id);
  line += detail;
  line += ')';
  events_.session_log(log_level::info, line);
  reply(id, detail);
  tx_.reset();
  if (draining_) close_with(reply_id::shutting_down);
}

// Written with appends, not a format: it is made for every message.
void session::append_received_header(std::string& h) const {
  const transaction& tx = *tx_;
  bool v6 = client_address_.find(':') != std::string::npos;
  h += "Received: from ";
  h += helo_;
  h += v6 ? " ([IPv6:" : " ([";
  h += client_address_;
  h += "])\n";
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
  // RFC 3848: ESMTP, plus S with TLS and A with AUTH; RFC 6531 4.3:
  // UTF8SMTP for SMTPUTF8, with the same S and A.
  h += !esmtp_       ? " (inboxd) with SMTP"
       : tx.smtputf8 ? " (inboxd) with UTF8SMTP"
                     : " (inboxd) with ESMTP";
  if (esmtp_ && !tls().empty()) h += 'S';
  if (esmtp_ && !user().empty()) h += 'A';
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
}

}  // namespace inboxd::proto
