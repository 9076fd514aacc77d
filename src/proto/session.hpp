// proto/session.hpp: the RFC 5321 server state machine, sans I/O.
//
// The connection feeds the session the bytes it has read; the session runs
// every complete command in them (RFC 2920 PIPELINING), appends every reply to
// output(), and streams message bodies to the sink. The connection then writes
// output() once. feed() stops early only where the session must wait: for the
// sink to take more body bytes or to commit a message, and after QUIT.
// When the wait ends, events.session_ready() asks the connection to feed again.
//
// Session and transaction are apart (OpenSMTPD's smtp_tx): MAIL creates a
// transaction, RSET or the end of data drops it.
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "inboxd/auth.hpp"
#include "inboxd/config.hpp"
#include "inboxd/filter.hpp"
#include "inboxd/log.hpp"
#include "inboxd/sink.hpp"
#include "proto/command.hpp"
#include "proto/data_decoder.hpp"
#include "proto/line_reader.hpp"
#include "proto/mailbox_index.hpp"
#include "proto/reply.hpp"
#include "proto/settings.hpp"

namespace inboxd::proto {

// Implemented by the connection.
class session_events {
 public:
  // The session stopped waiting: write output() and feed the buffered input.
  virtual void session_ready() noexcept = 0;
  virtual void session_log(log_level level, std::string_view line) noexcept = 0;
  // Call session::wake() after this long; the session waits meanwhile (a
  // delay before a reply, never a sleep).
  virtual void session_sleep(std::uint32_t milliseconds) noexcept = 0;

 protected:
  ~session_events() = default;
};

// Unique queue ids: a prefix from the process start time and pid, then a
// counter. Owned by the server, shared by its sessions.
class queue_id_source {
 public:
  // counter is the last id's counter: tests start near a digit boundary.
  queue_id_source(std::uint64_t start_time, std::uint32_t pid, std::uint64_t counter = 0);
  [[nodiscard]] std::string next();
  // The same, into out's own buffer (no allocation once it has room).
  void next(std::string& out);

 private:
  std::string prefix_;
  std::uint64_t counter_ = 0;
};

// Text safe for a log line or a header: bytes outside printable ASCII (and
// the backslash) become \xHH.
[[nodiscard]] std::string printable(std::string_view s);
// The same, appended to out.
void append_printable(std::string& out, std::string_view s);

// The date of a trace header, RFC 5322 3.3, in UTC.
[[nodiscard]] std::string rfc5322_date(std::int64_t unix_time);
void append_rfc5322_date(std::string& out, std::int64_t unix_time);

class session final : delivery_listener, auth_listener, filter_listener {
 public:
  // current, events and ids must outlive the session. current is the
  // server's latest settings; the session takes a copy between transactions.
  session(const settings_ptr& current, session_events& events, queue_id_source& ids,
          std::string client_address);
  ~session();
  session(const session&) = delete;
  session& operator=(const session&) = delete;

  // The client's IP address, for the trace header and the log.
  // An empty address is a client on a unix socket, which has none.
  void set_client_address(std::string address) { client_address_ = std::move(address); }
  // Whether this client may use XCLIENT (server_config::xclient_from):
  // EHLO offers it and the command is taken only then.
  void set_xclient_allowed(bool on) noexcept { xclient_allowed_ = on; }
  // RFC 2033 LMTP: LHLO instead of HELO/EHLO, and one reply per accepted
  // recipient after the data, each the truth for that recipient's
  // mailboxes. Call before start().
  void set_lmtp(bool on) noexcept { lmtp_ = on; }

  // Appends the 220 greeting.
  void start();

  // Runs every complete command in input and returns how many bytes were
  // used; the rest (a partial line) must be passed again, with more bytes
  // after it. Body bytes are unstuffed in place, so input is modified.
  std::size_t feed(std::span<char> input);

  // Replies not yet sent. The connection takes them (clear or swap).
  std::string& output() noexcept { return out_; }

  // Waiting for the sink, a credentials check, a delay or STARTTLS: do not
  // feed until session_ready() (or tls_started()).
  [[nodiscard]] bool waiting() const noexcept {
    return paused_ || committing_ || (x_ && x_->checking) || sleeping_ || starttls_ ||
           (f_ && f_->asking);
  }
  // STARTTLS was answered with 220: send the output in plaintext, drop any
  // input after the command (CVE-2011-0411), and start the handshake.
  [[nodiscard]] bool starttls_requested() const noexcept { return starttls_; }
  // The TLS handshake is done: the session starts over (RFC 3207 4.2) inside
  // it. `description` goes into the Received header, e.g. "TLSv1.3 with
  // cipher TLS-AES-256-GCM-SHA384". For implicit TLS, call before start().
  void tls_started(std::string description);
  // The delay asked for with session_sleep() is over.
  void wake();
  // The client kept us waiting too long (reply: timeout or too_slow): 421, close.
  void time_out(reply_id why);
  // The client talked before the greeting: 554, close.
  void refuse_pregreet();
  // How many command lines (and ends of data) the session has handled: the
  // command timeout restarts when this moves, not on every byte (RFC 5321
  // 4.5.3.2).
  [[nodiscard]] std::uint64_t commands() const noexcept { return commands_; }
  // In DATA or inside a BDAT chunk: the connection applies the data timeout
  // and minimum rate.
  [[nodiscard]] bool in_data() const noexcept { return mode_ != mode::command; }
  // Send the output, then close.
  [[nodiscard]] bool closing() const noexcept { return closing_; }
  // No transaction open and not waiting: safe to close on shutdown.
  [[nodiscard]] bool idle() const noexcept { return !tx_ && !waiting(); }

  // Server shutdown: 421 now when idle, else at the end of the transaction.
  void shutdown();
  // The client is gone: drop any message in progress.
  void disconnect() noexcept;

 private:
  struct transaction {
    std::string queue_id;
    std::string reverse_path;
    // Distinct mailboxes. Like found, a recycled list: its strings keep
    // their room from one transaction to the next (no allocation per RCPT).
    recipient_list recipients;
    std::size_t rcpt_accepted = 0;       // RCPT commands accepted
    std::size_t rcpt_overshoot = 0;      // RCPTs past max_recipients
    std::size_t mailboxes_resolved = 0;  // by the policy, repeats included
    // Finds a repeated mailbox once there are more than linear_dedup of
    // them (below that a scan is cheaper); do_rcpt and LMTP share it.
    mailbox_index mailboxes;
    recipient_list found;           // what the policy gave for this RCPT
    std::string orcpt_type, orcpt;  // this RCPT's ORCPT (RFC 3461 4.2), parsed here
    bool rcpt_seen = false;         // any RCPT, accepted or not
    bool body_8bit = false;
    bool smtputf8 = false;        // MAIL had SMTPUTF8 (RFC 6531)
    bool requiretls = false;      // RFC 8689, given inside TLS
    dsn_ret ret = dsn_ret::none;  // RFC 3461 RET
    std::string envid;            // RFC 3461 ENVID, decoded
    delivery* sink_delivery = nullptr;
    std::size_t size = 0;  // body octets as sent, CRLF counted as two (RFC 1870)
    bool too_big = false;
    bool sink_failed = false;  // the sink threw: the rest is discarded, then 451
    bool body_binary = false;  // BODY=BINARYMIME: BDAT only, stored as sent
    bool chunked = false;      // a BDAT began the message (DATA is refused now)
    // A BDAT was refused: so are the rest, until RSET or the LAST chunk.
    bool chunk_failed = false;
    bool data_started = false;  // 354 sent: LMTP answers once per recipient from now on
    // When commit() was called, for the commit latency metric.
    std::chrono::steady_clock::time_point commit_start{};
    // LMTP: for each accepted RCPT, its address and the indices (into
    // recipients) of its mailboxes, repeats included: lmtp_boxes holds them
    // all, RCPT k's end at lmtp_ends[k].
    std::vector<std::string> lmtp_rcpts;
    std::vector<std::uint32_t> lmtp_boxes;
    std::vector<std::uint32_t> lmtp_ends;
    // Filters (filter.hpp): header fields they asked to prepend, each with
    // its LF; what they said, for the message's log line; a discard.
    std::string prepend;
    std::string filter_notes;
    bool discard = false;
    bool data_asked = false;        // the filters were asked at DATA or the first BDAT
    std::size_t declared_size = 0;  // MAIL's SIZE=, for the filters
    // The next hop's (or a filter's) reply to the message, as given, for
    // its log line.
    std::string hop_reply;

    // As new, but keeping what the strings and containers have allocated.
    // Every field above is reset here.
    void clear() {
      queue_id.clear();
      reverse_path.clear();
      envid.clear();
      ret = dsn_ret::none;
      // What one big transaction grew is not kept for every later one.
      if (recipients.capacity() > 64 || found.capacity() > 64) {
        recipients.release();
        found.release();
        mailboxes.release();
      } else {
        recipients.clear();
        found.clear();
        mailboxes.clear();
      }
      orcpt_type.clear();
      orcpt.clear();
      rcpt_accepted = rcpt_overshoot = mailboxes_resolved = size = 0;
      rcpt_seen = body_8bit = too_big = sink_failed = false;
      smtputf8 = false;
      body_binary = chunked = chunk_failed = false;
      requiretls = false;
      data_started = false;
      commit_start = {};
      lmtp_rcpts.clear();
      lmtp_boxes.clear();
      lmtp_ends.clear();
      prepend.clear();
      filter_notes.clear();
      hop_reply.clear();
      discard = data_asked = false;
      declared_size = 0;
      sink_delivery = nullptr;
    }
  };

  // The session's transaction: made at the first MAIL and reused for every
  // later one (no allocation per message for what it holds, and nothing
  // held by a session that never sent MAIL); open from MAIL to RSET or the
  // end of data. It reads like std::optional<transaction>.
  class transaction_slot {
   public:
    explicit operator bool() const noexcept { return open_; }
    transaction* operator->() noexcept { return tx_.get(); }
    const transaction* operator->() const noexcept { return tx_.get(); }
    transaction& operator*() noexcept { return *tx_; }
    const transaction& operator*() const noexcept { return *tx_; }
    // A cleared transaction to fill in; open() then makes it the session's.
    transaction& fresh() {
      if (tx_)
        tx_->clear();
      else
        tx_ = std::make_unique<transaction>();
      return *tx_;
    }
    void open() noexcept { open_ = true; }
    void reset() noexcept { open_ = false; }

   private:
    std::unique_ptr<transaction> tx_;
    bool open_ = false;
  };
  enum class mode : std::uint8_t { command, data, chunk };

  void handle_line(std::string_view line, bool bare_lf);
  std::size_t feed_data(std::span<char> input);
  void end_of_data();
  void write_body(std::string_view bytes, std::size_t line_ends);
  void write_to_sink(std::string_view bytes);
  // BDAT (RFC 3030): the command, its chunk's octets, the chunk's end, and
  // the end of the message at the LAST chunk.
  void do_bdat(std::string_view arg);
  void begin_chunks();
  std::size_t feed_chunk(std::span<char> input);
  void write_chunk(std::string_view bytes);
  void end_of_chunk();
  void end_of_chunks();
  template <typename F>
  bool guard_sink(F&& call) noexcept;
  void sink_failed(const char* what) noexcept;
  void drop_delivery() noexcept;

  void greet();
  void do_helo(std::string_view arg, bool esmtp);
  void helo_reply();
  void do_mail(std::string_view arg);
  void mail_accepted();
  void do_rcpt(std::string_view arg);
  void rcpt_accepted(std::string_view mailbox);
  void too_many_recipients();
  // EHLO offers DSN (RFC 3461): the sink carries it on, or the operator
  // lets local delivery take the parameters (session_config::accept_dsn).
  [[nodiscard]] bool dsn_offered() const noexcept {
    return limits().accept_dsn || cfg_->store->carries_dsn();
  }
  [[nodiscard]] envelope make_envelope() const;
  void lmtp_committed(std::span<const store_outcome> per_recipient);
  void do_data(std::string_view arg, bool bare_lf);
  void data_accepted(bool bare_lf);
  void bdat_accepted();
  void start_message();
  delivery* begin_delivery(const envelope& env);
  void do_rset(std::string_view arg);
  void do_quit(std::string_view arg);
  void do_starttls(std::string_view arg);
  void do_auth(std::string_view arg);
  void do_xclient(std::string_view arg);
  static void append_safe_reply(std::string& out, reply_id id, std::string_view detail);
  void sasl_response(std::string_view line);
  void sasl_plain(std::string_view response);
  void check_credentials(std::string user, std::string_view password);

  void reply(reply_id id, std::string_view detail = {});
  void reply_after(std::uint32_t milliseconds, reply_id id, std::string_view detail = {});
  void refuse(reply_id id, std::string_view detail = {});
  void finish_transaction(reply_id id, std::string_view detail, std::string_view status,
                          std::string_view foreign = {});
  void refuse_line(std::string_view line);
  static bool foreign_for(std::string_view text, reply_id id, std::string& out);
  void close_with(reply_id id);
  void append_received_header(std::string& out) const;
  static void append_dsn_fields(std::string& line, const transaction& tx);
  static void append_filter_fields(std::string& line, std::string_view hop, std::string_view notes);
  static reply_id worse(reply_id id, store_result result, reply_id ok) noexcept;

  // delivery_listener
  void writable() noexcept override;
  void committed(std::span<const store_outcome> per_recipient) noexcept override;
  // auth_listener
  void auth_checked(auth_result result) noexcept override;
  // filter_listener, and the filters' side of the session (filter.hpp)
  void filtered(const filter_verdict& verdict) noexcept override;
  void open_filters();
  void close_filters() noexcept;
  void filters_tx_over() noexcept;
  // The transaction is over: closed, and the filters told.
  void end_transaction() noexcept {
    tx_.reset();
    filters_tx_over();
  }
  enum class then : std::uint8_t { greet, helo, mail, rcpt, data, bdat };
  void ask_filters(filter_stage stage, then next);
  void run_filters();
  bool take_answer();
  void filters_passed();
  void filters_refused();
  delivery* message_from(std::size_t k, const envelope& env, delivery_listener& listener);
  void on_committed(std::span<const store_outcome> per_recipient);
  void on_auth_checked(auth_result result);
  void lost_memory() noexcept;

  const session_config& limits() const noexcept { return cfg_->limits; }

  // Counting (inboxd/metrics.hpp): each is an increment or two into the
  // server's counters, nothing when the settings carry none.
  [[nodiscard]] server_metrics* metrics() const noexcept { return cfg_->metrics; }
  void rcpt_counted(std::string_view arg);
  void count_messages(reply_id id, std::size_t n) noexcept;
  void count_commit_start() noexcept;
  void count_committed(std::span<const store_outcome> per_recipient) noexcept;
  void count_auth(auth_result result, bool known_user) noexcept;

  const settings_ptr& current_;
  settings_ptr cfg_;  // the settings of this session until its next transaction
  session_events& events_;
  queue_id_source& ids_;
  std::string client_address_;
  std::string helo_;  // copied once; empty until HELO/EHLO
  bool esmtp_ = false;
  bool lmtp_ = false;
  bool xclient_allowed_ = false;
  transaction_slot tx_;
  mode mode_ = mode::command;
  // RFC 4954 4: SASL lines may run to 12288 octets; the session holds every
  // other command to RFC 5321's 512 (4.5.3.1.4).
  line_reader reader_{12288};
  data_decoder decoder_;
  std::string out_;
  bool in_feed_ = false;
  bool paused_ = false;      // the sink asked us to stop writing
  bool committing_ = false;  // waiting for committed()
  bool closing_ = false;
  bool draining_ = false;
  bool starttls_ = false;

  std::size_t errors_ = 0;  // protocol errors in this session
  std::uint64_t commands_ = 0;
  bool sleeping_ = false;
  // What few sessions use (TLS, AUTH, a delayed reply) lives apart, made
  // on first use, so that an idle plaintext session stays small (issue 10).
  enum class sasl : std::uint8_t { none, plain, login_user, login_password };
  struct extras {
    std::string tls;   // empty, or how TLS was negotiated
    std::string user;  // the authenticated identity, or empty
    // SASL (RFC 4954): what the next line answers, if a challenge is open.
    sasl step = sasl::none;
    std::string sasl_user;        // LOGIN's user name, between its two challenges
    std::string pending_user;     // the user whose password is being checked
    auth_check* check = nullptr;  // null while the answer came inside check()
    bool checking = false;        // between check() and auth_checked()
    std::size_t auth_failures = 0;
    std::string held;  // a reply waiting for the end of a delay
    // What XCLIENT said of the client (Postfix's XCLIENT_README): its name
    // and, kept through the HELO/EHLO that follows, its HELO name and
    // protocol ("SMTP" or "ESMTP"), for the Received header. Empty: not said.
    std::string xclient_name, xclient_helo, xclient_proto;
    // The BDAT chunk being read (RFC 3030), from do_bdat() to its last octet.
    struct {
      chunk_decoder decoder;
      std::uint64_t left = 0;  // octets still to come
      std::uint64_t size = 0;  // the chunk's size, for its reply
      bool last = false;       // BDAT ... LAST
      bool refused = false;    // its octets are read and dropped, then refusal
      reply_id refusal = reply_id::ok;
      std::string refusal_line;  // a filter's refusal, instead of refusal
    } chunk;
    const char* sasl_method = "";  // the mechanism of the AUTH that succeeded
  };
  std::unique_ptr<extras> x_;
  // The filters of this session, made at start() when any are configured
  // (a session without stays small: issue 10).
  class discard_delivery final : public delivery {
   public:
    delivery_listener* listener = nullptr;
    std::size_t mailboxes = 0;
    std::vector<store_outcome> outcomes;
    bool write(std::string_view) override { return true; }
    void commit() override;
    void abort() noexcept override { listener = nullptr; }
  };
  class filter_hop final : public sink {
   public:
    filter_hop(session& s, std::size_t k) : s_(s), k_(k) {}
    delivery* begin(const envelope& env, delivery_listener& listener) override {
      return s_.message_from(k_, env, listener);
    }

   private:
    session& s_;
    std::size_t k_;
  };
  struct filter_run {
    settings_ptr cfg;  // the filters came from these settings: they live while it does
    std::vector<filter_session*> sessions;
    std::vector<std::unique_ptr<filter_hop>> hops;  // hops[k]: what filter k - 1 hands on to
    discard_delivery discarded;
    filter_stage stage = filter_stage::connect;
    then next_step = then::greet;
    std::size_t next = 0;  // the filter asked now
    bool asking = false;   // a question is open: the session waits
    bool in_ask = false;   // inside filter_session::ask()
    bool answered = false;
    bool tx_known = false;  // the filters were told of a transaction: reset() at its end
    bool refused_at_connect = false;
    bool discard_all = false;  // discarded at connect or HELO: every message of the session
    bool bare_lf = false;      // the DATA line ended in a bare LF (the decoder's start)
    // The last answer, copied out of the borrowed verdict.
    filter_action action = filter_action::proceed;
    std::string reply, prepend, note;
    // What the command being asked about said, kept over the wait.
    std::string rcpt, rcpt_params, mail_params;
  };
  std::unique_ptr<filter_run> f_;
  extras& x() {
    if (!x_) x_ = std::make_unique<extras>();
    return *x_;
  }
  [[nodiscard]] const std::string& tls() const noexcept { return x_ ? x_->tls : no_text_; }
  [[nodiscard]] const std::string& user() const noexcept { return x_ ? x_->user : no_text_; }
  static inline const std::string no_text_;
};

}  // namespace inboxd::proto
