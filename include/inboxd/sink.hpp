// inboxd/sink.hpp: the contract between the SMTP session and a mailbox store.
//
// A sink is what an embedder implements to receive mail. For each message the
// session calls sink::begin() with the envelope, then delivery::write() with the
// body in order, then exactly one of delivery::commit() or delivery::abort().
//
// Ownership: a delivery belongs to its sink. After commit() the sink calls
// delivery_listener::committed() exactly once, on the loop thread, and may free
// the delivery right after that call returns. After abort() the sink calls no
// listener method any more; it frees the delivery when its own work is done.
// abort() may also follow commit() (the client went away): the message may or
// may not be stored, and no callback follows. The sink itself may be
// destroyed (after a reload) while aborted deliveries still finish their
// work, so a delivery must not use its sink after abort().
//
// This header includes no libuv or mbedTLS type: the sans-I/O session uses it.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace inboxd {

// One local mailbox a message goes to. An RCPT address resolves to one or
// more of them through the recipient policy (aliases).
struct recipient {
  std::string address;  // the RCPT forward-path as given, without brackets
  std::string user;     // the local mailbox name ({user} in path templates)
  std::string domain;   // lower case; {domain} in path templates
  // DSN (RFC 3461) of the RCPT this mailbox came from; each mailbox an
  // alias gives gets that RCPT's. Set only where EHLO offered DSN.
  std::uint8_t notify = 0;      // NOTIFY as dsn_notify bits; 0: none given
  std::string orcpt_type = {};  // ORCPT's addr-type, lower case ("rfc822"); empty: none
  std::string orcpt = {};       // ORCPT's address, xtext-decoded (printable ASCII)
};

// The bits of recipient::notify (RFC 3461 4.1).
struct dsn_notify {
  static constexpr std::uint8_t never = 1, success = 2, failure = 4, delay = 8;
};

// RET (RFC 3461 4.3): what a notice returns of the message.
enum class dsn_ret : std::uint8_t { none, full, hdrs };

// The envelope of one message. Every view is borrowed for the duration of
// sink::begin() only: a sink copies what it needs.
struct envelope {
  std::string_view queue_id;
  std::string_view client_address;        // "127.0.0.1" or "::1"; empty on a unix socket
  std::string_view helo;                  // as the client sent it in HELO/EHLO
  std::string_view reverse_path;          // without angle brackets; empty for <>
  std::span<const recipient> recipients;  // distinct mailboxes, in RCPT order
  bool esmtp = false;
  bool body_8bit = false;  // BODY=8BITMIME was given
  // MAIL had SMTPUTF8 (RFC 6531): addresses and headers may be UTF-8. A sink
  // that hands the message on needs a next hop that offers SMTPUTF8.
  bool smtputf8 = false;
  // BODY=BINARYMIME (RFC 3030), sent with BDAT: the header section comes
  // with LF line ends as usual, but after the empty line that ends it the
  // body is written exactly as sent, its CR and LF bytes included (a sink
  // that changes line ends must leave it alone).
  bool body_binary = false;
  // REQUIRETLS (RFC 8689) was given, inside TLS: a sink that hands the
  // message on must do so only over TLS to a server offering REQUIRETLS.
  bool requiretls = false;
  // DSN (RFC 3461 4.3, 4.4), where EHLO offered it; per recipient in recipient.
  dsn_ret ret = dsn_ret::none;
  std::string_view envid;  // ENVID, xtext-decoded (printable ASCII); empty: none
  // LMTP: each mailbox's outcome is reported to its own client, so a sink
  // may store the message in some mailboxes while others fail. When false
  // (SMTP, one reply for all) a failure anywhere must leave it stored nowhere.
  bool independent_outcomes = false;
};

// A copy of an envelope that owns what it points to, for a sink or filter
// that needs it after begin() (an envelope's views are borrowed), or
// changes it (a milter's new sender and recipients). view() points into it.
struct owned_envelope {
  std::string queue_id, client_address, helo, reverse_path, envid;
  std::vector<recipient> recipients;

  explicit owned_envelope(const envelope& e)
      : queue_id(e.queue_id),
        client_address(e.client_address),
        helo(e.helo),
        reverse_path(e.reverse_path),
        envid(e.envid),
        recipients(e.recipients.begin(), e.recipients.end()),
        rest_(e) {}

  // Valid while this lives and its vector is not resized.
  [[nodiscard]] envelope view() const noexcept {
    envelope v = rest_;
    v.queue_id = queue_id;
    v.client_address = client_address;
    v.helo = helo;
    v.reverse_path = reverse_path;
    v.envid = envid;
    v.recipients = recipients;
    return v;
  }

 private:
  envelope rest_;  // the flags; view() replaces each of its views
};

// The X-Original-To: address a sink that stores the message writes: the
// rfc822 ORCPT of its recipients when they all came from one RCPT and it
// differs from that RCPT's address; otherwise empty. One file serves every
// mailbox of a message, so a message for several RCPTs gets none: one
// recipient's original address is not shown to the others (as the
// Received header's "for" clause is given for one recipient only).
[[nodiscard]] inline std::string_view original_recipient(const envelope& env) noexcept {
  if (env.recipients.empty()) return {};
  const recipient& first = env.recipients.front();
  if (first.orcpt_type != "rfc822" || first.orcpt == first.address) return {};
  for (const recipient& r : env.recipients)
    if (r.address != first.address || r.orcpt != first.orcpt || r.orcpt_type != first.orcpt_type)
      return {};
  return first.orcpt;
}

// The outcome for one recipient (mailbox), in envelope order.
enum class store_result : std::uint8_t {
  stored,          // durable: fsynced and in place
  temporary_fail,  // 451 4.3.0: the sender retries
  no_space,        // 452 4.3.1: disk or quota full
  permanent_fail,  // 554 5.3.0: do not retry
};

// The outcome for one mailbox, with the errno behind a failure for the log.
struct store_outcome {
  store_result result = store_result::stored;
  int error = 0;  // an errno value, or 0
  // What another program answered for this mailbox, for a sink that hands
  // the message on (the next hop's "550 5.1.1 <a@b>: unknown user"), a
  // pipe's first line of standard error, or a filter's refusal; empty for
  // a local store. Borrowed for the committed() call. On a failure whose
  // text is a reply line (three digits of the class result says, then an
  // optional enhanced code and text), the client gets that reply, escaped
  // to printable ASCII, instead of the session's own (the truth travels
  // back, as with Postfix's smtpd_proxy_filter); any other text goes only
  // to the log.
  std::string_view reply = {};
};

// Implemented by the session; called by the sink on the loop thread.
class delivery_listener {
 public:
  // The sink can take body bytes again after write() returned false.
  virtual void writable() noexcept = 0;
  // The message is durable (or failed). The span is borrowed for the call.
  virtual void committed(std::span<const store_outcome> per_recipient) noexcept = 0;

 protected:
  ~delivery_listener() = default;
};

class delivery {
 public:
  // Appends message bytes: the trace header first, then the body, with LF
  // line ends and dot-unstuffing already done (a BINARYMIME body, see
  // envelope::body_binary, is as sent). The bytes are borrowed for the
  // call only, and no listener (this one or another delivery's) may be called
  // from inside it. Returns false when the caller should pause until
  // listener.writable(); the bytes of this call are taken either way.
  virtual bool write(std::string_view bytes) = 0;
  // Makes the message durable for every recipient, then calls committed().
  // The callback may run before commit() returns.
  virtual void commit() = 0;
  // Drops the message; see the contract at the top of this file.
  virtual void abort() noexcept = 0;

 protected:
  ~delivery() = default;
};

class sink {
 public:
  virtual ~sink() = default;
  // Starts one message. Never returns null: a sink that cannot store reports
  // that through committed().
  virtual delivery* begin(const envelope& env, delivery_listener& listener) = 0;
  // True for a sink that hands messages on to an MTA that takes the DSN
  // parameters on (RFC 3461 5.2): then EHLO offers DSN. A sink that stores
  // messages itself cannot send the notices DSN promises (inboxd sends no
  // mail), so the default is false.
  [[nodiscard]] virtual bool carries_dsn() const noexcept { return false; }
  // The server drains (SIGTERM): the sink lets go of what only waits for
  // more work, such as idle connections to a next hop, so that the loop can
  // end. Messages in progress finish as usual; begin() may still be called.
  virtual void drain() noexcept {}
};

}  // namespace inboxd
