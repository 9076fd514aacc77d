// inboxd/sinks.hpp: the sinks that come with inboxd.
//
// Each completes on the loop it was made with; file work runs on libuv's
// thread pool, never on the loop thread (docs/DESIGN.md, rule 3).
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "inboxd/owner.hpp"
#include "inboxd/sink.hpp"

typedef struct uv_loop_s uv_loop_t;

namespace inboxd {

// Message bytes that file-backed deliveries hold in memory, counted for all
// of them together (loop thread only). Past the limit a delivery writes to
// disk sooner, or the session stops reading: memory stays bounded however
// many clients send at once. Share one budget between every sink of a
// server, and across reloads (a reload may change the limit).
struct memory_budget {
  std::size_t limit = 64 * 1024 * 1024;
  std::size_t used = 0;
};

class null_delivery;

// Counts and discards: the reference for throughput. Its deliveries are
// reused (no allocation per message); it must outlive them.
class null_sink final : public sink {
 public:
  null_sink() = default;
  null_sink(const null_sink&) = delete;
  null_sink& operator=(const null_sink&) = delete;
  ~null_sink() override;
  delivery* begin(const envelope& env, delivery_listener& listener) override;
  [[nodiscard]] std::uint64_t messages() const noexcept { return messages_; }
  [[nodiscard]] std::uint64_t bytes() const noexcept { return bytes_; }

 private:
  friend class null_delivery;
  std::uint64_t messages_ = 0;
  std::uint64_t bytes_ = 0;
  std::vector<null_delivery*> spare_;  // finished deliveries, for the next begin()
};

// How the Maildir sink makes a message durable before its 250.
enum class maildir_sync : unsigned char {
  // fdatasync of the file, then fsync of new/ after the link (one for the
  // links made into that new/ meanwhile: the sync stage, DESIGN.md).
  fsync,
  // syncfs(2) of the Maildir's filesystem, once after the file is written
  // and once after its link, each shared by every delivery waiting on that
  // filesystem meanwhile. syncfs writes everything dirty there, other
  // programs' files too: for a mail store on a filesystem of its own.
  syncfs,
};

struct maildir_options {
  // One Maildir for everyone, or a template such as "var/mail/{domain}/{user}":
  // tmp/, new/ and cur/ are made when missing. A message for several
  // recipients is written once and hard-linked into each new/.
  std::string path;
  std::string hostname;                   // for unique file names
  std::shared_ptr<memory_budget> memory;  // null: one of its own, with the default limit
  // What start-up creates (the Maildir, or a template's fixed leading
  // folders) is given to this owner; see owner.hpp.
  file_owner owner;
  maildir_sync sync = maildir_sync::fsync;
};

// Opens the Maildir sink; a single Maildir is created now. Returns null and
// sets error on failure. This blocks: call it at start-up or on the pool.
std::unique_ptr<sink> open_maildir_sink(uv_loop_t* loop, const maildir_options& options,
                                        std::string& error);

struct mbox_options {
  std::string path;  // a template, e.g. "/var/mail/{user}" or "{domain}/{user}.mbox"
  // Where a message larger than the in-memory batch waits until it is
  // appended (an unnamed file, removed at once).
  std::string spool_dir = "var/spool";
  std::shared_ptr<memory_budget> memory;  // null: one of its own, with the default limit
  // The spool and a template's fixed leading folders, made at start-up, are
  // given to this owner; see owner.hpp.
  file_owner owner;
};

std::unique_ptr<sink> open_mbox_sink(uv_loop_t* loop, const mbox_options& options,
                                     std::string& error);

// The hand-off sinks: each message goes to the next hop by LMTP or SMTP
// while the client waits, and the client's reply is the hop's (no queue,
// as Postfix's smtpd_proxy_filter). Timeouts and the pool follow Postfix's
// smtp(8) parameters, named beside each.
struct handoff_options {
  bool lmtp = false;                                   // LMTP (RFC 2033) or SMTP towards the hop
  std::string to;                                      // "HOST:PORT", "[IPv6]:PORT" or "unix:PATH"
  std::string helo = "localhost";                      // our name in EHLO/LHLO
  std::chrono::milliseconds connect_timeout{30'000};   // smtp_connect_timeout
  std::chrono::milliseconds command_timeout{300'000};  // smtp_helo/mail/rcpt_timeout
  std::chrono::milliseconds data_timeout{180'000};     // smtp_data_xfer_timeout
  // How long a connection waits in the pool for the next message
  // (smtp_connection_cache_time_limit); 0: one session per message.
  std::chrono::milliseconds max_idle{2'000};
  std::size_t max_pool = 8;  // idle connections kept
  // The hop takes the DSN parameters on: carries_dsn(). When false, one
  // EHLO when the sink is opened asks the hop.
  bool dsn = false;
  enum class tls : std::uint8_t { none, may, require } starttls = tls::none;
  std::string tls_ca;                     // PEM CAs for require (default: the system's)
  std::string auth_file;                  // a "user:password" line: AUTH PLAIN towards the hop
  std::shared_ptr<memory_budget> memory;  // null: one of its own
};

// Resolves the hop's address, reads the CA and AUTH files and asks the hop
// whether it offers DSN: this blocks
// (call it at start-up or on the pool). Returns null with error on failure.
std::unique_ptr<sink> open_handoff_sink(uv_loop_t* loop, const handoff_options& options,
                                        std::string& error);
// The running pipe programs and the messages that wait for one. Share one
// between the pipe sinks of a program across reloads, as the memory budget,
// so that --pipe-max holds while an old sink's programs still run (each
// counts against the limit of the sink it came from).
struct pipe_slots;
std::shared_ptr<pipe_slots> make_pipe_slots();

// The pipe sink: a program per message, the message on its standard input
// (Postfix's pipe(8)). docs/DESIGN.md, "Sinks", says how it runs.
struct pipe_options {
  // The command line, split into words as sh(1) would but never run
  // through a shell (one that wants a shell names it: sh -c '...').
  std::string command;
  std::size_t max_running = 100;  // children at once (Postfix's default_process_limit)
  // Messages waiting for a child beyond those; past this one more gets 451.
  std::size_t max_waiting = 100;
  // A child still running this long after it started (or a message still
  // waiting this long for one) is killed with its process group: 451.
  // Postfix's smtpd_proxy_timeout: the client waits for the answer.
  std::chrono::milliseconds timeout{100'000};
  bool from_line = false;                      // an mbox "From " line first (pipe(8)'s flag F)
  std::shared_ptr<memory_budget> memory = {};  // null: one of its own, with the default limit
  std::shared_ptr<pipe_slots> slots = {};      // null: its own
};

// Checks the command and returns the sink, or null with error set. It runs
// nothing yet. The program inherits the process's user (after --user, that
// one) and must not need SIGPIPE: the process ignores it (a child that
// does not read its input is a write error here, not a signal).
std::unique_ptr<sink> open_pipe_sink(uv_loop_t* loop, const pipe_options& options,
                                     std::string& error);

// Two sinks as one: each message goes to both (write() pauses while either
// does), then the first commits and the second only when every recipient
// of the first was stored, so a local copy (second) is kept only of what
// the hand-off (first) took. Each recipient gets the worse of the two
// outcomes, and the first's reply where it is not the worse. Where the
// first stored only some recipients (independent outcomes, LMTP), the
// second copy is dropped whole: the first's outcomes are the answer. It
// offers DSN when the first does.
std::unique_ptr<sink> make_tee_sink(std::shared_ptr<sink> first, std::shared_ptr<sink> second);

}  // namespace inboxd
