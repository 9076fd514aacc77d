// The password-file authenticator: "user:hash" lines, crypt(3) hashes.
//
// A hash is deliberately slow (yescrypt takes tens of milliseconds), so each
// check runs on libuv's thread pool and answers on the loop. An unknown user
// costs the same hash as a known one, so timing does not tell them apart.
#include <crypt.h>
#include <uv.h>

#include <fmt/format.h>
#include <algorithm>
#include <cstring>
#include <fstream>
#include <string>
#include <unordered_map>

#include "inboxd/auth.hpp"

namespace inboxd {
namespace {

bool constant_time_equal(std::string_view a, std::string_view b) {
  if (a.size() != b.size()) return false;
  unsigned char diff = 0;
  for (std::size_t i = 0; i < a.size(); ++i) diff |= static_cast<unsigned char>(a[i] ^ b[i]);
  return diff == 0;
}

class password_file;

class crypt_check final : public auth_check {
 public:
  crypt_check(uv_loop_t* loop, std::string hash, std::string_view password, auth_listener& listener,
              bool known)
      : hash_(std::move(hash)), password_(password), listener_(&listener), known_(known) {
    req_.data = this;
    uv_queue_work(loop, &req_, work_cb, after_cb);
  }

  void cancel() noexcept override { listener_ = nullptr; }

 private:
  ~crypt_check() {
    // The password does not outlive the check in memory we free.
    std::fill(password_.begin(), password_.end(), '\0');
  }

  static void work_cb(uv_work_t* req) noexcept {
    auto* self = static_cast<crypt_check*>(req->data);
    crypt_data data{};
    const char* out = crypt_r(self->password_.c_str(), self->hash_.c_str(), &data);
    self->ok_ = self->known_ && out && out[0] != '*' && constant_time_equal(out, self->hash_);
    std::memset(&data, 0, sizeof data);
  }

  static void after_cb(uv_work_t* req, int) noexcept {
    auto* self = static_cast<crypt_check*>(req->data);
    if (self->listener_) self->listener_->auth_checked(self->ok_ ? auth_result::ok : auth_result::failed);
    delete self;
  }

  uv_work_t req_{};
  std::string hash_;
  std::string password_;
  auth_listener* listener_;
  bool known_;
  bool ok_ = false;
};

class password_file final : public authenticator {
 public:
  password_file(uv_loop_t* loop, std::unordered_map<std::string, std::string> users)
      : loop_(loop), users_(std::move(users)), decoy_(hash_password("inboxd decoy")) {}

  auth_check* check(std::string_view user, std::string_view password,
                    auth_listener& listener) const override {
    auto it = users_.find(std::string(user));
    bool known = it != users_.end();
    return new crypt_check(loop_, known ? it->second : decoy_, password, listener, known);
  }

 private:
  uv_loop_t* loop_;
  std::unordered_map<std::string, std::string> users_;
  // A hash of a password nobody has, checked for unknown users.
  std::string decoy_;
};

}  // namespace

std::shared_ptr<const authenticator> load_password_file(uv_loop_t* loop, const std::string& path,
                                                        std::string& error) {
  std::ifstream in(path);
  if (!in) {
    error = fmt::format(FMT_STRING("{}: cannot read: {}"), path, std::strerror(errno));
    return nullptr;
  }
  std::unordered_map<std::string, std::string> users;
  std::string line;
  for (int n = 1; std::getline(in, line); ++n) {
    if (!line.empty() && line.back() == '\r') line.pop_back();
    if (line.empty() || line[0] == '#') continue;
    auto colon = line.find(':');
    if (colon == 0 || colon == std::string::npos || colon + 1 == line.size()) {
      error = fmt::format(FMT_STRING("{}:{}: want user:hash"), path, n);
      return nullptr;
    }
    // Dovecot's passwd-file lines carry more fields after the hash: drop them.
    std::string hash = line.substr(colon + 1);
    hash = hash.substr(0, hash.find(':'));
    if (hash.size() < 3 || hash[0] != '$') {
      error = fmt::format(FMT_STRING("{}:{}: the hash is not a crypt(3) hash such as $y$ or $6$"),
                          path, n);
      return nullptr;
    }
    users[line.substr(0, colon)] = std::move(hash);
  }
  return std::make_shared<password_file>(loop, std::move(users));
}

std::string hash_password(std::string_view password) {
  char salt[CRYPT_GENSALT_OUTPUT_SIZE];
  if (!crypt_gensalt_rn("$y$", 0, nullptr, 0, salt, sizeof salt)) return {};
  crypt_data data{};
  std::string pw(password);
  const char* out = crypt_r(pw.c_str(), salt, &data);
  std::string hash = out && out[0] != '*' ? out : "";
  std::fill(pw.begin(), pw.end(), '\0');
  std::memset(&data, 0, sizeof data);
  return hash;
}

}  // namespace inboxd
