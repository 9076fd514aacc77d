// inboxd/auth.hpp: checking SMTP AUTH credentials.
//
// The session asks an authenticator whether a user name and password go
// together. The answer may take a while (a deliberate slow hash), so it comes
// back later through auth_listener, on the loop thread. A check belongs to
// its authenticator: after the answer it is freed; after cancel() no answer
// comes. This header includes no libuv or mbedTLS type.
#pragma once

#include <memory>
#include <string>
#include <string_view>

typedef struct uv_loop_s uv_loop_t;

namespace inboxd {

class auth_listener {
 public:
  virtual void auth_checked(bool ok) noexcept = 0;

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
  // Starts a check; the strings are borrowed for the call only. Never null.
  virtual auth_check* check(std::string_view user, std::string_view password,
                            auth_listener& listener) const = 0;
};

// An authenticator over a file of "user:hash" lines, with crypt(3) hashes
// (yescrypt "$y$", sha512-crypt "$6$", ... as libcrypt knows them). Hashes
// are checked on libuv's thread pool. Reading the file blocks: call this at
// start-up or on the pool. Returns null with "FILE:LINE: why" in error.
std::shared_ptr<const authenticator> load_password_file(uv_loop_t* loop, const std::string& path,
                                                        std::string& error);

// A new hash of password, for a line of the password file ("$y$" yescrypt).
// Returns an empty string when libcrypt fails.
std::string hash_password(std::string_view password);

}  // namespace inboxd
