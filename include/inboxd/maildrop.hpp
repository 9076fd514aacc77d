// inboxd/maildrop.hpp: a user's mail as the POP3 server reads it back.
//
// A maildrop_source maps an authenticated login to that user's maildrop; a
// maildrop is one session's view of it (RFC 1939's "maildrop"): locked while
// the session holds it, a fixed list of messages taken when it was opened,
// read in pieces, and changed only by update() (the UPDATE state, after QUIT).
// Every request is answered once, on the loop thread, through drop_listener:
// later, or already inside the call (as a sink's committed()). The file work
// runs on libuv's thread pool; nothing here blocks the loop. This header
// includes no libuv or mbedTLS type, so the sans-I/O POP3 session uses it.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <string_view>

typedef struct uv_loop_s uv_loop_t;

namespace inboxd {

struct drop_message {
  // Octets as POP3 sends the message (RFC 1939 LIST): each LF that is not
  // already preceded by CR counted as CRLF; dot-stuffing and the final "."
  // not counted.
  std::uint64_t size = 0;
  // RFC 1939 UIDL: 1 to 70 octets in 0x21..0x7E, the same in every session
  // for the same message (Maildir: from its unique file name).
  std::string uid;
};

enum class drop_status : unsigned char {
  ok,      // messages() holds the list
  in_use,  // another session holds the lock (RFC 2449 [IN-USE])
  failed,  // the maildrop could not be opened (detail says why, for the log)
};

class drop_listener {
 public:
  // open() is done. detail is borrowed for the call.
  virtual void drop_opened(drop_status status, std::string_view detail) noexcept = 0;
  // read() is done: the next bytes of the stored message (as stored: LF line
  // ends), borrowed until the next request; eof when the message has no
  // more (bytes may be empty then). error is an errno value (0: none).
  virtual void drop_read(std::string_view bytes, bool eof, int error) noexcept = 0;
  // update() is done: removed of the messages asked are gone; error is the
  // errno value of the first that could not be removed (0: all are gone).
  virtual void drop_updated(std::size_t removed, int error) noexcept = 0;

 protected:
  ~drop_listener() = default;
};

class maildrop {
 public:
  // Locks the maildrop (another session of any process then gets in_use
  // until this one closes), moves what is in new/ to cur/, and lists the
  // messages, oldest first. One answer, to drop_opened.
  virtual void open(drop_listener& listener) = 0;
  // The list open() took; later deliveries are not in it. Valid after an ok
  // open, until close().
  [[nodiscard]] virtual std::span<const drop_message> messages() const noexcept = 0;
  // Reads at most max bytes of message index (0-based into messages()) from
  // offset on. One answer, to drop_read. One request at a time.
  virtual void read(std::size_t index, std::uint64_t offset, std::size_t max,
                    drop_listener& listener) = 0;
  // Removes the messages at these indices (RFC 1939 UPDATE). One answer, to
  // drop_updated.
  virtual void update(std::span<const std::size_t> indices, drop_listener& listener) = 0;
  // The session is done with it (QUIT, the client gone, a timeout): no
  // answer comes after this, the lock is let go once no request is still on
  // the pool, and the object frees itself. Deletes nothing.
  virtual void close() noexcept = 0;

 protected:
  virtual ~maildrop() = default;
};

class maildrop_source {
 public:
  virtual ~maildrop_source() = default;
  // The maildrop of an authenticated login (not opened yet), or null with a
  // reason in error, for the log (a {domain} template and a login without
  // '@'). Does no file work.
  [[nodiscard]] virtual maildrop* find(std::string_view login, std::string& error) const = 0;
};

struct maildir_drop_options {
  // The Maildir sink's path: one Maildir that every user reads, or a template
  // with {user} (the login is the user, "alice") or {domain} and {user} (the
  // login is "alice@example.org"), expanded as the sink expands it.
  std::string path;
  // A session lists at most this many messages, the oldest; the rest wait
  // for a later session (the list is held in memory: about 100 octets each).
  std::size_t max_messages = 100'000;
};

// The maildrops of the Maildir sink's folders. Does no file work: a Maildir
// that does not exist yet is made when a session opens it.
std::shared_ptr<const maildrop_source> open_maildir_drops(uv_loop_t* loop,
                                                          const maildir_drop_options& options);

}  // namespace inboxd
