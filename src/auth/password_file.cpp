// The password-file authenticator: "user:hash" lines, crypt(3) hashes.
//
// A hash is deliberately slow (yescrypt takes tens of milliseconds), so each
// check runs on libuv's thread pool and answers on the loop. An unknown user
// costs the same hash as a known one, so timing does not tell them apart.
//
// The pool is shared with every file operation of every delivery, so checks
// do not go to it as they come: a check_queue lets at most max_running of
// them onto the pool at once and keeps at most max_waiting more in a FIFO on
// the loop thread; past that a check answers busy inside check() (454 4.7.0,
// RFC 4954 6). An AUTH flood then costs the pool max_running threads, never
// all of them, and a Maildir or mbox commit keeps its latency.
//
// Lifetime: there is one check_queue per loop, shared by every password_file
// made for that loop and by every check in flight (each holds a shared_ptr).
// A reload makes a new password_file while checks of the old one still wait
// or run; the new one finds the same queue through a small registry of weak
// pointers keyed by the loop, so the bound holds across reloads (two queues
// side by side would let twice as many checks onto the pool), and the queue
// lives exactly as long as someone still uses it. The registry is locked
// because load_password_file runs on the pool during a reload; the queue
// itself is touched only on the loop thread (check(), cancel() and the
// after-work callback all run there).
#include <crypt.h>
#include <uv.h>

#include <fmt/format.h>
#include <algorithm>
#include <cstring>
#include <fstream>
#include <memory>
#include <mutex>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

#include "inboxd/auth.hpp"

namespace inboxd {
namespace {

// Checks on the pool at once, per loop. The program's pool has 16 threads
// (UV_THREADPOOL_SIZE in main.cpp); two leave fourteen to deliveries, and at
// tens of milliseconds per yescrypt hash they still check dozens of logins a
// second, plenty for the submission traffic of a small site.
constexpr std::size_t max_running = 2;
// Checks waiting for the pool, per loop. 64 waiting on 2 threads is about a
// second of wait; a client that would wait longer is told 454 to try later,
// and every waiting check holds its password in memory, so the bound is
// also a bound on that.
constexpr std::size_t max_waiting = 64;

bool constant_time_equal(std::string_view a, std::string_view b) {
  if (a.size() != b.size()) return false;
  unsigned char diff = 0;
  for (std::size_t i = 0; i < a.size(); ++i) diff |= static_cast<unsigned char>(a[i] ^ b[i]);
  return diff == 0;
}

class crypt_check;

// The running count and the FIFO of waiting checks of one loop.
class check_queue {
 public:
  explicit check_queue(uv_loop_t* loop) : loop_(loop) {}
  check_queue(const check_queue&) = delete;
  check_queue& operator=(const check_queue&) = delete;

  uv_loop_t* loop() const { return loop_; }
  // Whether admit() would take one more check now.
  bool has_room() const { return running_ < max_running || waiting_ < max_waiting; }
  // Starts the check on the pool, or queues it behind the others.
  void admit(crypt_check* check);
  // A waiting check leaves the queue (cancelled); O(1).
  void remove(crypt_check* check);
  // A running check's hash is done: the next waiting one starts.
  void finished();

 private:
  void start(crypt_check* check);

  uv_loop_t* loop_;
  std::size_t running_ = 0;
  std::size_t waiting_ = 0;
  crypt_check* head_ = nullptr;  // the oldest waiting check
  crypt_check* tail_ = nullptr;  // the newest
};

class crypt_check final : public auth_check {
 public:
  crypt_check(std::shared_ptr<check_queue> queue, std::string hash, std::string_view password,
              auth_listener& listener, bool known)
      : queue_(std::move(queue)),
        hash_(std::move(hash)),
        password_(password),
        listener_(&listener),
        known_(known) {
    req_.data = this;
  }

  void cancel() noexcept override {
    listener_ = nullptr;
    // A waiting check never reaches the pool; a running one cannot be taken
    // back from a pool thread, so its answer is dropped when it comes.
    if (!running_) {
      queue_->remove(this);
      delete this;
    }
  }

 private:
  friend class check_queue;

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
    auth_listener* listener = self->listener_;
    auth_result result = self->ok_ ? auth_result::ok : auth_result::failed;
    // The queue may be kept alive by this check alone (its authenticator was
    // replaced by a reload): hold it until the next check has started.
    std::shared_ptr<check_queue> queue = std::move(self->queue_);
    // The password is wiped before anyone hears the answer, and the next
    // waiting check starts before this answer can start a new one (FIFO).
    delete self;
    queue->finished();
    if (listener) listener->auth_checked(result);
  }

  uv_work_t req_{};
  std::shared_ptr<check_queue> queue_;
  std::string hash_;
  std::string password_;
  auth_listener* listener_;
  crypt_check* prev_ = nullptr;  // in the queue's FIFO, while waiting
  crypt_check* next_ = nullptr;
  bool known_;
  bool running_ = false;  // handed to the pool; from then on only after_cb frees it
  bool ok_ = false;
};

void check_queue::admit(crypt_check* check) {
  if (running_ < max_running && !head_) return start(check);
  check->prev_ = tail_;
  (tail_ ? tail_->next_ : head_) = check;
  tail_ = check;
  ++waiting_;
}

void check_queue::remove(crypt_check* check) {
  (check->prev_ ? check->prev_->next_ : head_) = check->next_;
  (check->next_ ? check->next_->prev_ : tail_) = check->prev_;
  check->prev_ = check->next_ = nullptr;
  --waiting_;
}

void check_queue::finished() {
  --running_;
  if (crypt_check* next = head_) {
    remove(next);
    start(next);
  }
}

void check_queue::start(crypt_check* check) {
  ++running_;
  check->running_ = true;
  // uv_queue_work fails only without a work callback (UV_EINVAL), and ours
  // is always there.
  uv_queue_work(loop_, &check->req_, crypt_check::work_cb, crypt_check::after_cb);
}

// The queue of a loop, shared with every other authenticator on it; made on
// first use. Called on the loop thread or, during a reload, on the pool.
std::shared_ptr<check_queue> queue_for(uv_loop_t* loop) {
  static std::mutex mutex;
  static std::vector<std::pair<uv_loop_t*, std::weak_ptr<check_queue>>> queues;
  std::lock_guard lock(mutex);
  // Queues nobody uses any more go, so that a loop made later at the same
  // address starts afresh and the list stays as short as the live loops.
  std::erase_if(queues, [](const auto& entry) { return entry.second.expired(); });
  for (auto& [l, weak] : queues) {
    if (l != loop) continue;
    if (auto queue = weak.lock()) return queue;
  }
  auto queue = std::make_shared<check_queue>(loop);
  queues.emplace_back(loop, queue);
  return queue;
}

class password_file final : public authenticator {
 public:
  password_file(std::shared_ptr<check_queue> queue,
                std::unordered_map<std::string, std::string> users)
      : queue_(std::move(queue)), users_(std::move(users)), decoy_(hash_password("inboxd decoy")) {}

  auth_check* check(std::string_view user, std::string_view password,
                    auth_listener& listener) const override {
    // Refused before the user is looked up, so that a busy answer says
    // nothing about who exists.
    if (!queue_->has_room()) {
      listener.auth_checked(auth_result::busy);
      return nullptr;
    }
    auto it = users_.find(std::string(user));
    bool known = it != users_.end();
    auto* check = new crypt_check(queue_, known ? it->second : decoy_, password, listener, known);
    queue_->admit(check);
    return check;
  }

 private:
  std::shared_ptr<check_queue> queue_;
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
  return std::make_shared<password_file>(queue_for(loop), std::move(users));
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
