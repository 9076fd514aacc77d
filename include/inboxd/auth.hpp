// inboxd/auth.hpp: checking SMTP AUTH credentials.
//
// The session asks an authenticator whether a user name and password go
// together. The answer may take a while (a deliberate slow hash), so it comes
// back through auth_listener, on the loop thread, exactly once: later, or
// already inside check() (as a sink's committed() may come inside commit()).
// A check belongs to its authenticator: after the answer it is freed, and the
// pointer check() returned must not be used (it may be null then); after
// cancel() no answer comes. This header includes no libuv or mbedTLS type.
#pragma once

#include <memory>
#include <string>
#include <string_view>

typedef struct uv_loop_s uv_loop_t;

namespace inboxd {

enum class auth_result : unsigned char {
  ok,      // 235 2.7.0
  failed,  // 535 5.7.8: wrong user or password
  busy,    // 454 4.7.0 (RFC 4954 6): cannot check now, try again later
};

class auth_listener {
 public:
  virtual void auth_checked(auth_result result) noexcept = 0;

 protected:
  ~auth_listener() = default;
};

class auth_check {
 public:
  // The session no longer wants the answer (the client went away).
  virtual void cancel() noexcept = 0;

 protected:
  ~auth_check() = default;
};

class authenticator {
 public:
  virtual ~authenticator() = default;
  // Starts a check; the strings are borrowed for the call only. Returns null
  // only when the answer came inside the call.
  virtual auth_check* check(std::string_view user, std::string_view password,
                            auth_listener& listener) const = 0;
};

// An authenticator over a file of "user:hash" lines, with crypt(3) hashes
// (yescrypt "$y$", sha512-crypt "$6$", ... as libcrypt knows them). Hashes
// are checked on libuv's thread pool, a few at a time, so that an AUTH flood
// leaves the pool to deliveries; past a bounded queue of waiting checks the
// answer is busy at once. Reading the file blocks: call this at
// start-up or on the pool. Returns null with "FILE:LINE: why" in error.
std::shared_ptr<const authenticator> load_password_file(uv_loop_t* loop, const std::string& path,
                                                        std::string& error);

// A new hash of password, for a line of the password file ("$y$" yescrypt).
// Returns an empty string when libcrypt fails.
std::string hash_password(std::string_view password);

}  // namespace inboxd
