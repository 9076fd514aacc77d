#include <dirent.h>
#include <fcntl.h>
#include <ftw.h>
#include <sys/stat.h>
#include <unistd.h>
#include <uv.h>

#include <doctest/doctest.h>

#include <algorithm>
#include <cerrno>
#include <set>
#include <string>
#include <vector>

#include "../fuzz/reference_mboxrd.hpp"
#include "harness.hpp"
#include "inboxd/sinks.hpp"
#include "store/files.hpp"
#include "store/mboxrd.hpp"
#include "store/pooled_delivery.hpp"

using inboxd::recipient;
using inboxd::store::expand_path;
using inboxd::store::mboxrd_quoter;
using inboxd::test::same_when_dribbled;

namespace {

std::string quoted(std::string_view message) {
  return same_when_dribbled(message, [](const auto& pieces) {
    mboxrd_quoter q;
    std::string out;
    for (auto piece : pieces) q.append(out, piece);
    q.flush(out);
    return out;
  });
}

}  // namespace

TEST_CASE("mboxrd quotes every >*From line with one more >") {
  CHECK(quoted("From a\nx From b\n>From c\n>>From d\nFromage\n") ==
        ">From a\nx From b\n>>From c\n>>>From d\nFromage\n");
}

TEST_CASE("mboxrd leaves other lines alone, even ones that start like From") {
  CHECK(quoted(">Fro\nFrom\n>\n\nFrom") == ">Fro\nFrom\n>\n\nFrom");
}

TEST_CASE("mboxrd quotes a From line at the very end without a newline") {
  CHECK(quoted("a\nFrom x") == "a\n>From x");
}

TEST_CASE("path templates put each recipient's names in as one safe component") {
  recipient r{"a@b", "alice", "example.com"};
  CHECK(expand_path("var/{domain}/{user}/Maildir", r) == "var/example.com/alice/Maildir");
  recipient evil{"x", "../../etc/passwd", "a/b"};
  CHECK(expand_path("var/{domain}/{user}", evil) == "var/a%2Fb/%2E.%2F..%2Fetc%2Fpasswd");
  recipient dot{"x", ".", ""};
  CHECK(expand_path("{domain}/{user}", dot) == "%00/%2E");
}

TEST_CASE("path templates stay below their folder whatever octets a local part holds") {
  auto user = [](std::string name) {
    return expand_path("root/{domain}/{user}/Maildir", recipient{"x", std::move(name), "d"});
  };
  // Each shape: .., /, NUL, a leading dot, controls, malformed and C1 UTF-8.
  CHECK(user("..") == "root/d/%2E./Maildir");
  CHECK(user("../..") == "root/d/%2E.%2F../Maildir");
  CHECK(user("/etc") == "root/d/%2Fetc/Maildir");
  CHECK(user("a/../../b") == "root/d/a%2F..%2F..%2Fb/Maildir");
  CHECK(user(std::string("a\0/../x", 7)) == "root/d/a%00%2F..%2Fx/Maildir");
  CHECK(user(std::string(1, '\0')) == "root/d/%00/Maildir");
  CHECK(user(".hidden") == "root/d/%2Ehidden/Maildir");
  CHECK(user("a.b") == "root/d/a.b/Maildir");
  CHECK(user("a\nb\r\x7F") == "root/d/a%0Ab%0D%7F/Maildir");
  CHECK(user("100%") == "root/d/100%25/Maildir");
  // Well-formed UTF-8 stays readable; what is not is escaped octet by octet.
  CHECK(user("j\xC3\xB6rg") == "root/d/j\xC3\xB6rg/Maildir");
  CHECK(user("\xE7\x94\xA8\xE6\x88\xB7") == "root/d/\xE7\x94\xA8\xE6\x88\xB7/Maildir");
  CHECK(user("j\xC3rg") == "root/d/j%C3rg/Maildir");                 // truncated
  CHECK(user("\xC0\xAE\xC0\xAE") == "root/d/%C0%AE%C0%AE/Maildir");  // overlong ".."
  CHECK(user("\xED\xA0\x80") == "root/d/%ED%A0%80/Maildir");         // a surrogate
  CHECK(user("a\xC2\x85") == "root/d/a%C2%85/Maildir");              // C1 NEL
  CHECK(user("\xEF\xBC\x8F") == "root/d/\xEF\xBC\x8F/Maildir");      // U+FF0F, not a '/'
  // The domain too.
  CHECK(expand_path("r/{domain}", recipient{"x", "u", "../.."}) == "r/%2E.%2F..");
  // Distinct names stay distinct (the escaping is reversible): no two users share a mailbox.
  CHECK(user("%2F") != user("/"));
  CHECK(user("%2E.") != user(".."));
}

TEST_CASE("every short local part over a hostile alphabet expands below the root") {
  // Every string of up to 3 octets over '.', '/', NUL, '%', 'a' and a few
  // UTF-8 and non-UTF-8 octets: one component, never "." or "..", no NUL.
  const std::string alphabet{'.', '/', '\0', '%', 'a', '\xC3', '\xB6', '\xFF', '\n'};
  std::vector<std::string> names{""};
  for (int len = 1; len <= 3; ++len) {
    std::vector<std::string> longer;
    for (const auto& n : names)
      if (n.size() == static_cast<std::size_t>(len - 1))
        for (char c : alphabet) longer.push_back(n + c);
    names.insert(names.end(), longer.begin(), longer.end());
  }
  std::set<std::string> seen;
  for (const auto& n : names) {
    std::string path = expand_path("root/{user}", recipient{"x", n, "d"});
    INFO(inboxd::test::printable(n));
    REQUIRE(path.starts_with("root/"));
    std::string_view component = std::string_view(path).substr(5);
    CHECK(component.find('/') == std::string_view::npos);
    CHECK(component.find('\0') == std::string_view::npos);
    CHECK(component != ".");
    CHECK(component != "..");
    CHECK_FALSE(component.starts_with("."));
    if (!n.empty()) CHECK(seen.insert(path).second);
  }
}

// ---- mboxrd: linear cost and exact quoting at any split (issue 9, item 1) ----

using inboxd::fuzz::reference_mboxrd;

TEST_CASE("mboxrd quotes a From line after a long run of > at every split") {
  std::string run(300, '>');
  std::string in = "x\n" + run + "From a\n" + run + "Fro\n" + run + "\nFrom";
  std::string want = "x\n>" + run + "From a\n" + run + "Fro\n" + run + "\nFrom";
  CHECK(quoted(in) == want);
  CHECK(reference_mboxrd(in) == want);
}

TEST_CASE("mboxrd quotes >From lines repeated and leaves near misses alone") {
  for (std::string_view in :
       {">From x\n>From x\n>>From y\n", "From \nFrom\n From x\nFFrom x\n>F>From x\n",
        "From From x\n>>From>From x\r\nFrom\rFrom x\n", "\n\n>\n>>\n>>>From\n>>>From \n", ">From",
        ">>>Fr", "F", ">", "", "\rFrom x\n.From x\n"}) {
    INFO("input: ", inboxd::test::printable(in));
    CHECK(quoted(in) == reference_mboxrd(in));
  }
}

TEST_CASE("mboxrd matches the reference on every short input over its alphabet") {
  // Every string of up to 6 octets over the octets that matter, fed whole,
  // split in two at each boundary and one octet at a time.
  constexpr std::string_view alphabet = ">From \nx";
  std::size_t mismatches = 0;
  std::string first_bad;
  std::string in;
  auto check = [&](std::string_view s) {
    std::string want = reference_mboxrd(s);
    for (const auto& pieces : inboxd::test::dribbles(s)) {
      mboxrd_quoter q;
      std::string got;
      for (auto p : pieces) q.append(got, p);
      q.flush(got);
      if (got != want && mismatches++ == 0) first_bad.assign(s);
    }
    mboxrd_quoter q;
    std::string whole;
    q.append(whole, s);
    q.flush(whole);
    if (whole != want && mismatches++ == 0) first_bad.assign(s);
  };
  auto walk = [&](auto& self, std::size_t depth) -> void {
    check(in);
    if (depth == 0) return;
    for (char c : alphabet) {
      in.push_back(c);
      self(self, depth - 1);
      in.pop_back();
    }
  };
  walk(walk, 6);
  INFO("first mismatch: ", inboxd::test::printable(first_bad));
  CHECK(mismatches == 0);
}

TEST_CASE("mboxrd writes a run of > as it arrives instead of holding it") {
  // A client may send one line of megabytes of '>': none of it may be held
  // back (memory), nor looked at twice (time).
  mboxrd_quoter q;
  std::string out;
  for (int i = 0; i < 100'000; ++i) {
    q.append(out, ">");
    REQUIRE(out.size() == static_cast<std::size_t>(i) + 1);
  }
  q.append(out, "Fro");
  CHECK(out.size() == 100'000);  // "Fro" may still start "From "
  q.append(out, "m x\n");
  CHECK(out == ">" + std::string(100'000, '>') + "From x\n");
}

TEST_CASE("mboxrd quotes a million > fed one octet at a time in linear time") {
  // The quadratic quoter took hours for this; a linear one takes milliseconds.
  constexpr std::size_t n = 1 << 20;
  mboxrd_quoter q;
  std::string out;
  out.reserve(n + 16);
  for (std::size_t i = 0; i < n; ++i) q.append(out, ">");
  q.append(out, "From x");
  q.flush(out);
  CHECK(out.size() == n + 7);
  CHECK(out.find_first_not_of('>') == n + 1);
}

TEST_CASE("mboxrd flush writes a held From prefix and starts a new message") {
  mboxrd_quoter q;
  std::string out;
  q.append(out, "x\n>>Fro");
  q.flush(out);
  CHECK(out == "x\n>>Fro");
  // The next message starts at a line start.
  q.append(out, "From y\n");
  CHECK(out == "x\n>>Fro>From y\n");
}

// ---- files and the Maildir sink (issue 9, items 3, 4 and 5) ----

namespace {

using inboxd::file_owner;
using inboxd::store_outcome;
using inboxd::store_result;

// A fresh folder under /tmp, removed with all it holds at the end of the test.
// (POSIX calls rather than <filesystem> and <fstream>: those bring
// std::quoted in, which argument-dependent lookup then prefers to quoted()
// above.)
struct temp_dir {
  temp_dir() {
    char tpl[] = "/tmp/inboxd-store-test-XXXXXX";
    const char* made = ::mkdtemp(tpl);
    REQUIRE(made != nullptr);
    path = made;
  }
  ~temp_dir() {
    ::nftw(
        path.c_str(), [](const char* p, const struct stat*, int, FTW*) { return ::remove(p); }, 16,
        FTW_DEPTH | FTW_PHYS);
  }
  std::string path;
};

// Whom start-up hands its folders to in these tests: another user when run as
// root (as CI does), else oneself (chown to oneself works unprivileged).
file_owner test_owner() {
  if (::geteuid() == 0) return {65534, 65534};
  return {::getuid(), ::getgid()};
}

uid_t owner_of(const std::string& path) {
  struct stat st {};
  REQUIRE(::stat(path.c_str(), &st) == 0);
  return st.st_uid;
}

bool is_dir(const std::string& path) {
  struct stat st {};
  return ::stat(path.c_str(), &st) == 0 && S_ISDIR(st.st_mode);
}

// The names in a folder (empty when it is missing).
std::vector<std::string> names_in(const std::string& path) {
  std::vector<std::string> out;
  DIR* d = ::opendir(path.c_str());
  if (!d) return out;
  while (const dirent* e = ::readdir(d)) {
    std::string_view n = e->d_name;
    if (n != "." && n != "..") out.emplace_back(n);
  }
  ::closedir(d);
  std::sort(out.begin(), out.end());
  return out;
}

std::string read_file(const std::string& path) {
  std::string out;
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return out;
  char buf[4096];
  for (ssize_t n; (n = ::read(fd, buf, sizeof buf)) > 0;) out.append(buf, n);
  ::close(fd);
  return out;
}

void write_file(const std::string& path, std::string_view data) {
  int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  REQUIRE(fd >= 0);
  CHECK(::write(fd, data.data(), data.size()) == static_cast<ssize_t>(data.size()));
  ::close(fd);
}

// Delivers one message through a sink on a real libuv loop, as the session
// does, and returns the outcome per recipient.
struct recorder final : inboxd::delivery_listener {
  void writable() noexcept override {}
  void committed(std::span<const store_outcome> o) noexcept override {
    got.assign(o.begin(), o.end());
    done = true;
  }
  std::vector<store_outcome> got;
  bool done = false;
};

std::vector<store_outcome> deliver(inboxd::sink& s, uv_loop_t* loop,
                                   const std::vector<recipient>& rcpts, std::string_view body) {
  inboxd::envelope env;
  env.queue_id = "TESTID";
  env.client_address = "127.0.0.1";
  env.helo = "client.test";
  env.reverse_path = "a@example.net";
  env.recipients = rcpts;
  recorder r;
  inboxd::delivery* d = s.begin(env, r);
  d->write(body);
  d->commit();
  uv_run(loop, UV_RUN_DEFAULT);
  CHECK(r.done);
  return r.got;
}

std::vector<recipient> users(std::initializer_list<const char*> names) {
  std::vector<recipient> out;
  for (const char* n : names) out.push_back({std::string(n) + "@example.com", n, "example.com"});
  return out;
}

// A libuv loop for one test, checked empty and closed at the end (libuv's rule).
struct test_loop {
  test_loop() { uv_loop_init(&loop); }
  ~test_loop() { CHECK(uv_loop_close(&loop) == 0); }
  uv_loop_t loop{};
};

// Runs the test once per way of making a message durable.
inboxd::maildir_sync each_sync_mode() {
  inboxd::maildir_sync m = inboxd::maildir_sync::fsync;
  SUBCASE("fsync") {}
  SUBCASE("syncfs") {
    m = inboxd::maildir_sync::syncfs;
  }
  return m;
}

std::unique_ptr<inboxd::sink> open_maildirs(
    uv_loop_t* loop, const std::string& path, file_owner owner = {},
    inboxd::maildir_sync sync = inboxd::maildir_sync::fsync) {
  inboxd::maildir_options o;
  o.path = path;
  o.hostname = "mx.test";
  o.owner = owner;
  o.sync = sync;
  std::string error;
  auto s = inboxd::open_maildir_sink(loop, o, error);
  INFO(error);
  REQUIRE(s != nullptr);
  return s;
}

}  // namespace

TEST_CASE("fixed_prefix is the folders of a template before its first {...} component") {
  using inboxd::store::fixed_prefix;
  CHECK(fixed_prefix("var/mail/{domain}/{user}") == "var/mail");
  CHECK(fixed_prefix("/m/{user}.mbox") == "/m");
  CHECK(fixed_prefix("{user}") == "");
  CHECK(fixed_prefix("{domain}/{user}") == "");
  CHECK(fixed_prefix("/{user}") == "/");
  CHECK(fixed_prefix("a/b/x{user}/Maildir") == "a/b");
  CHECK(fixed_prefix("a//b/{user}") == "a//b");
  CHECK(fixed_prefix("plain/Maildir/") == "plain/Maildir");
}

TEST_CASE("mailbox_places stores a message once per mailbox, for many recipients") {
  std::vector<recipient> rcpts;
  for (int i = 0; i < 1000; ++i)
    rcpts.push_back({"x", "u" + std::to_string(i % 10), i % 2 ? "a.test" : "b.test"});
  inboxd::store::mailbox_places places("m/{domain}/{user}", rcpts);
  // u0..u9 alternate between a.test and b.test in step with i: ten mailboxes.
  REQUIRE(places.paths.size() == 10);
  REQUIRE(places.of.size() == rcpts.size());
  for (std::size_t i = 0; i < rcpts.size(); ++i)
    CHECK(places.paths[places.of[i]] == "m/" + rcpts[i].domain + "/" + rcpts[i].user);
  CHECK(places.of[0] == 0);
  CHECK(places.of[1] == 1);
  CHECK(places.of[10] == 0);
  std::vector<store_outcome> out(rcpts.size());
  std::vector<int> errors(places.paths.size(), 0);
  errors[1] = ENOSPC;
  places.fill(out, errors);
  CHECK(out[0].result == store_result::stored);
  CHECK(out[11].result == store_result::no_space);
  CHECK(out[11].error == ENOSPC);
}

TEST_CASE("make_dirs makes every missing folder 0700 and hands only those to the owner") {
  temp_dir t;
  file_owner owner = test_owner();
  std::string have = t.path + "/have";
  REQUIRE(::mkdir(have.c_str(), 0755) == 0);
  std::string deep = have + "/a/b//c/";
  CHECK(inboxd::store::make_dirs(deep, owner) == 0);
  for (const char* sub : {"/a", "/a/b", "/a/b/c"}) {
    std::string p = have + sub;
    CHECK(is_dir(p));
    CHECK(owner_of(p) == owner.uid);
    struct stat st {};
    REQUIRE(::stat(p.c_str(), &st) == 0);
    CHECK((st.st_mode & 0777) == 0700);
  }
  // A folder that was there keeps its owner.
  CHECK(owner_of(have) == ::geteuid());
  CHECK(inboxd::store::make_dirs(deep, owner) == 0);  // all there: nothing to do
  write_file(have + "/file", "x");
  CHECK(inboxd::store::make_dirs(have + "/file/d") == ENOTDIR);
  CHECK(inboxd::store::chown_to(have, file_owner{}) == 0);  // no owner: a no-op
}

TEST_CASE("a Maildir made at start-up, and a template's fixed folders, go to the owner") {
  temp_dir t;
  test_loop l;
  file_owner owner = test_owner();
  std::string single = t.path + "/one/Maildir";
  open_maildirs(&l.loop, single, owner);
  for (const char* sub :
       {"/one", "/one/Maildir", "/one/Maildir/tmp", "/one/Maildir/new", "/one/Maildir/cur"}) {
    INFO(sub);
    CHECK(is_dir(t.path + sub));
    CHECK(owner_of(t.path + sub) == owner.uid);
  }
  CHECK(owner_of(t.path) == ::geteuid());
  open_maildirs(&l.loop, t.path + "/var/mail/{domain}/{user}", owner);
  CHECK(is_dir(t.path + "/var/mail"));
  CHECK(owner_of(t.path + "/var") == owner.uid);
  CHECK(owner_of(t.path + "/var/mail") == owner.uid);
  CHECK_FALSE(is_dir(t.path + "/var/mail/{domain}"));
}

TEST_CASE("a Maildir message for several recipients is in every new/") {
  temp_dir t;
  test_loop l;
  auto s = open_maildirs(&l.loop, t.path + "/mail/{user}", {}, each_sync_mode());
  auto got = deliver(*s, &l.loop, users({"alice", "bob", "carol"}), "Subject: x\n\nhello\n");
  REQUIRE(got.size() == 3);
  std::string first;
  for (const char* u : {"alice", "bob", "carol"}) {
    INFO(u);
    std::string dir = t.path + "/mail/" + u;
    auto names = names_in(dir + "/new");
    REQUIRE(names.size() == 1);
    CHECK(names_in(dir + "/tmp").empty());
    std::string data = read_file(dir + "/new/" + names[0]);
    // Four LF line ends, each one more octet as POP3 sends it.
    CHECK(names[0].ends_with(",S=" + std::to_string(data.size()) +
                             ",W=" + std::to_string(data.size() + 4)));
    CHECK(data == "Return-Path: <a@example.net>\nSubject: x\n\nhello\n");
    if (first.empty()) first = names[0];
    CHECK(names[0] == first);  // one unique name, hard-linked
  }
  for (const auto& o : got) CHECK(o.result == store_result::stored);
}

TEST_CASE("a Maildir message is in no new/ when one recipient's Maildir fails") {
  temp_dir t;
  test_loop l;
  auto s = open_maildirs(&l.loop, t.path + "/mail/{user}", {}, each_sync_mode());
  // Carol's Maildir exists with a regular file where new/ should be: every
  // copy is staged, alice's and bob's are published, then carol's fails.
  // (The sink made mail/ itself: a template's fixed folders.)
  for (const char* sub : {"/mail/carol", "/mail/carol/tmp", "/mail/carol/cur"})
    REQUIRE(::mkdir((t.path + sub).c_str(), 0700) == 0);
  write_file(t.path + "/mail/carol/new", "not a folder");
  auto got = deliver(*s, &l.loop, users({"alice", "bob", "carol", "alice"}), "hello\n");
  REQUIRE(got.size() == 4);
  for (const auto& o : got) CHECK(o.result == store_result::temporary_fail);
  CHECK(got[2].error == ENOTDIR);  // the one that failed says why
  CHECK(got[0].error == ECANCELED);
  CHECK(got[1].error == ECANCELED);
  CHECK(got[3].error == ECANCELED);
  for (const char* u : {"alice", "bob", "carol"}) {
    INFO(u);
    CHECK(names_in(t.path + "/mail/" + u + "/tmp").empty());
    if (is_dir(t.path + "/mail/" + u + "/new"))
      CHECK(names_in(t.path + "/mail/" + u + "/new").empty());
  }
  CHECK(read_file(t.path + "/mail/carol/new") == "not a folder");

  // Repaired, the retry lands once in each.
  REQUIRE(::unlink((t.path + "/mail/carol/new").c_str()) == 0);
  got = deliver(*s, &l.loop, users({"alice", "bob", "carol"}), "hello\n");
  for (const auto& o : got) CHECK(o.result == store_result::stored);
  for (const char* u : {"alice", "bob", "carol"})
    CHECK(names_in(t.path + "/mail/" + u + "/new").size() == 1);
}

TEST_CASE("a full disk in the first Maildir fails every recipient as no space") {
  // ENOSPC cannot be made here without a small file system: this checks the
  // classification that the 452 depends on (tests/integration covers the rest).
  CHECK(inboxd::store::outcome_of(ENOSPC).result == store_result::no_space);
  CHECK(inboxd::store::outcome_of(EDQUOT).result == store_result::no_space);
  CHECK(inboxd::store::outcome_of(ECANCELED).result == store_result::temporary_fail);
}

TEST_CASE("Maildir unique names go on counting when the sink is made anew (reload)") {
  temp_dir t;
  test_loop l;
  std::vector<std::string> all;
  for (int reload = 0; reload < 3; ++reload) {
    auto s = open_maildirs(&l.loop, t.path + "/Maildir");
    deliver(*s, &l.loop, users({"alice"}), "hello\n");
  }
  auto names = names_in(t.path + "/Maildir/new");
  REQUIRE(names.size() == 3);
  std::vector<std::string> qs;
  for (const auto& n : names) {
    auto q = n.find('Q');
    REQUIRE(q != n.npos);
    qs.push_back(n.substr(q, n.find('.', q) - q));
  }
  std::sort(qs.begin(), qs.end());
  CHECK(std::unique(qs.begin(), qs.end()) == qs.end());
}

TEST_CASE("two mailboxes that are one Maildir (a symlink) get the message once") {
  temp_dir t;
  test_loop l;
  auto s = open_maildirs(&l.loop, t.path + "/mail/{user}", {}, each_sync_mode());
  for (const char* sub : {"/mail/admin", "/mail/admin/tmp", "/mail/admin/new", "/mail/admin/cur"})
    REQUIRE(::mkdir((t.path + sub).c_str(), 0700) == 0);
  REQUIRE(::symlink("admin", (t.path + "/mail/postmaster").c_str()) == 0);
  auto got = deliver(*s, &l.loop, users({"postmaster", "bob", "admin"}), "hello\n");
  REQUIRE(got.size() == 3);
  for (const auto& o : got) CHECK(o.result == store_result::stored);
  CHECK(names_in(t.path + "/mail/admin/new").size() == 1);
  CHECK(names_in(t.path + "/mail/admin/tmp").empty());
  CHECK(names_in(t.path + "/mail/bob/new").size() == 1);
}

// ---- the sync stage: group commit of new/ fsyncs and syncfs (issue 10) ----

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <map>
#include <mutex>
#include <thread>

#include "store/dir_sync.hpp"

namespace {

using inboxd::store::sync_kind;

// A sync hook that holds every sync at a gate until the test lets it
// through, so that the test sees who waits for which sync without timing.
struct gated_sync {
  static int hook(sync_kind kind, const std::string& path, void* arg) noexcept {
    auto* self = static_cast<gated_sync*>(arg);
    std::unique_lock<std::mutex> lock(self->m);
    int n = ++self->started;
    self->kinds.push_back(kind);
    self->paths.push_back(path);
    self->cv.notify_all();
    self->cv.wait(lock, [&] { return self->released >= n; });
    return self->fail_path.empty() || path.find(self->fail_path) == std::string::npos ? 0 : EIO;
  }
  int started_now() {
    std::lock_guard<std::mutex> lock(m);
    return started;
  }
  void release(int n) {
    {
      std::lock_guard<std::mutex> lock(m);
      released = n;
    }
    cv.notify_all();
  }
  std::mutex m;
  std::condition_variable cv;
  int started = 0;   // syncs entered
  int released = 0;  // syncs let through (the first `released` ones)
  std::vector<sync_kind> kinds;
  std::vector<std::string> paths;
  std::string fail_path;  // a sync of a path holding this fails with EIO
};

// Installs a sync hook for one test and takes it away at the end, after
// letting every held sync through (also when a REQUIRE fails half-way) and
// running the loop until the deliveries are done.
struct hooked {
  hooked(gated_sync& g, uv_loop_t* loop) : g(g), loop(loop) {
    inboxd::store::set_sync_hook(gated_sync::hook, &g);
  }
  ~hooked() {
    g.release(1'000'000);
    uv_run(loop, UV_RUN_DEFAULT);
    inboxd::store::set_sync_hook(nullptr, nullptr);
  }
  gated_sync& g;
  uv_loop_t* loop;
};

// Runs the loop without blocking until pred() holds; false after 10 s.
template <class Pred>
bool run_until(uv_loop_t* loop, Pred pred) {
  for (int i = 0; i < 10'000; ++i) {
    uv_run(loop, UV_RUN_NOWAIT);
    if (pred()) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  return false;
}

// A delivery begun and committed, its outcome recorded by r.
struct pending_delivery {
  pending_delivery(inboxd::sink& s, const std::vector<recipient>& rcpts, std::string_view body) {
    env.queue_id = "TESTID";
    env.client_address = "127.0.0.1";
    env.helo = "client.test";
    env.reverse_path = "a@example.net";
    env.recipients = rcpts;
    d = s.begin(env, r);
    d->write(body);
    d->commit();
  }
  inboxd::envelope env;
  recorder r;
  inboxd::delivery* d;
};

}  // namespace

TEST_CASE(
    "sync stage: links made while new/'s fsync runs share the next one, and no thread waits") {
  temp_dir t;
  test_loop l;
  auto s = open_maildirs(&l.loop, t.path + "/Maildir");
  gated_sync g;
  hooked h(g, &l.loop);
  // A's link is made; A's fsync of new/ (number 1) starts and is held.
  pending_delivery a(*s, users({"alice"}), "a\n");
  REQUIRE(run_until(&l.loop, [&] { return g.started_now() == 1; }));
  CHECK(g.paths[0] == t.path + "/Maildir/new");
  CHECK(names_in(t.path + "/Maildir/new").size() == 1);
  // B and C link after fsync 1 started: it must not count for them. Their
  // pool jobs end (so the pool is free): they wait in the stage.
  pending_delivery b(*s, users({"alice"}), "b\n");
  pending_delivery c(*s, users({"alice"}), "c\n");
  REQUIRE(run_until(&l.loop, [&] { return names_in(t.path + "/Maildir/new").size() == 3; }));
  REQUIRE(run_until(&l.loop, [&] {
    return inboxd::store::pooled_delivery::in_sync_stage(sync_kind::dir, 0,
                                                         t.path + "/Maildir/new") == 3;
  }));
  CHECK(g.started_now() == 1);  // they wait rather than start an fsync of their own
  CHECK_FALSE(a.r.done);
  // Fsync 1 ends: A is done; one fsync (number 2) starts for B and C both.
  g.release(1);
  REQUIRE(run_until(&l.loop, [&] { return a.r.done && g.started_now() == 2; }));
  CHECK_FALSE(b.r.done);  // fsync 2 is held: neither may be done
  CHECK_FALSE(c.r.done);
  g.release(2);
  REQUIRE(run_until(&l.loop, [&] { return b.r.done && c.r.done; }));
  CHECK(g.started_now() == 2);  // three links, two fsyncs
  for (auto* r : {&a.r, &b.r, &c.r}) {
    REQUIRE(r->got.size() == 1);
    CHECK(r->got[0].result == store_result::stored);
  }
  CHECK(inboxd::store::pooled_delivery::sync_groups() == 0);  // forgotten once done
  CHECK(names_in(t.path + "/Maildir/tmp").empty());
}

TEST_CASE("sync stage: with syncfs, one syncfs covers one cohort's links and the next one's data") {
  temp_dir t;
  test_loop l;
  auto s = open_maildirs(&l.loop, t.path + "/Maildir", {}, inboxd::maildir_sync::syncfs);
  gated_sync g;
  hooked h(g, &l.loop);
  // A's data syncfs (1) is held: A is not linked yet.
  pending_delivery a(*s, users({"alice"}), "a\n");
  REQUIRE(run_until(&l.loop, [&] { return g.started_now() == 1; }));
  CHECK(names_in(t.path + "/Maildir/new").empty());
  pending_delivery b(*s, users({"alice"}), "b\n");
  pending_delivery c(*s, users({"alice"}), "c\n");
  REQUIRE(run_until(&l.loop, [&] { return names_in(t.path + "/Maildir/tmp").size() == 3; }));
  // B and C were written after syncfs 1 began: they wait for syncfs 2.
  g.release(1);
  REQUIRE(run_until(&l.loop, [&] { return g.started_now() == 2; }));
  // A was linked (after syncfs 1, before syncfs 2 began) and waits for 2,
  // which is also the data syncfs of B and C.
  CHECK(names_in(t.path + "/Maildir/new").size() == 1);
  CHECK_FALSE(a.r.done);
  g.release(2);
  REQUIRE(run_until(&l.loop, [&] { return a.r.done && g.started_now() == 3; }));
  CHECK(names_in(t.path + "/Maildir/new").size() == 3);
  CHECK_FALSE(b.r.done);
  g.release(3);
  REQUIRE(run_until(&l.loop, [&] { return b.r.done && c.r.done; }));
  CHECK(g.started_now() == 3);  // three messages, three syncfs (not six)
  for (sync_kind k : g.kinds) CHECK(k == sync_kind::fs);
  for (auto* r : {&a.r, &b.r, &c.r}) {
    REQUIRE(r->got.size() == 1);
    CHECK(r->got[0].result == store_result::stored);
  }
  CHECK(names_in(t.path + "/Maildir/tmp").empty());
  CHECK(inboxd::store::pooled_delivery::sync_groups() == 0);
}

TEST_CASE("sync stage: a failed sync of new/ takes the message back from every new/") {
  temp_dir t;
  test_loop l;
  inboxd::maildir_sync mode = each_sync_mode();
  auto s = open_maildirs(&l.loop, t.path + "/mail/{user}", {}, mode);
  gated_sync g;
  g.fail_path = mode == inboxd::maildir_sync::fsync ? "/bob/new" : "/mail/";
  g.released = 1'000'000;
  hooked h(g, &l.loop);
  auto got = deliver(*s, &l.loop, users({"alice", "bob", "carol"}), "hello\n");
  REQUIRE(got.size() == 3);
  for (const auto& o : got) CHECK(o.result == store_result::temporary_fail);
  if (mode == inboxd::maildir_sync::fsync) {
    CHECK(got[1].error == EIO);  // bob's new/ failed, and the log says so
    CHECK(got[0].error == ECANCELED);
    CHECK(got[2].error == ECANCELED);
  }
  for (const char* u : {"alice", "bob", "carol"}) {
    INFO(u);
    CHECK(names_in(t.path + "/mail/" + u + "/tmp").empty());
    CHECK(names_in(t.path + "/mail/" + u + "/new").empty());
  }
}

TEST_CASE("sync stage: over LMTP a failed fsync of one new/ fails that mailbox alone") {
  temp_dir t;
  test_loop l;
  auto s = open_maildirs(&l.loop, t.path + "/mail/{user}", {}, each_sync_mode());
  gated_sync g;
  g.fail_path = "/bob/new";
  g.released = 1'000'000;
  hooked h(g, &l.loop);
  inboxd::envelope env;
  env.queue_id = "TESTID";
  env.reverse_path = "a@example.net";
  auto rcpts = users({"alice", "bob"});  // the envelope's span points into it
  env.recipients = rcpts;
  env.independent_outcomes = true;
  recorder r;
  inboxd::delivery* d = s->begin(env, r);
  d->write("hello\n");
  d->commit();
  uv_run(&l.loop, UV_RUN_DEFAULT);
  REQUIRE(r.got.size() == 2);
  CHECK(r.got[0].result == store_result::stored);
  CHECK(r.got[1].result == store_result::temporary_fail);
  CHECK(r.got[1].error == EIO);
  CHECK(names_in(t.path + "/mail/alice/new").size() == 1);
  CHECK(names_in(t.path + "/mail/bob/new").empty());
  CHECK(names_in(t.path + "/mail/bob/tmp").empty());
}

TEST_CASE("sync stage: a delivery aborted while its sync runs ends with the stage, unanswered") {
  temp_dir t;
  test_loop l;
  auto s = open_maildirs(&l.loop, t.path + "/Maildir", {}, each_sync_mode());
  gated_sync g;
  hooked h(g, &l.loop);
  pending_delivery a(*s, users({"alice"}), "a\n");
  REQUIRE(run_until(&l.loop, [&] { return g.started_now() == 1; }));
  a.d->abort();  // the session went away: no committed() may come
  g.release(1'000'000);
  uv_run(&l.loop, UV_RUN_DEFAULT);  // returns: nothing is left in the loop
  CHECK_FALSE(a.r.done);
  CHECK(names_in(t.path + "/Maildir/tmp").empty());
  CHECK(inboxd::store::pooled_delivery::sync_groups() == 0);
}

namespace {

// A hook that checks the group commit's promise from outside: each sync of
// new/ lists the names in it when it starts, and once it ends those names
// are durable. A delivery's committed() must find its own message among
// them.
struct covering_sync {
  static int hook(sync_kind, const std::string& path, void* arg) noexcept {
    auto* self = static_cast<covering_sync*>(arg);
    std::vector<std::string> seen = names_in(path);
    self->syncs.fetch_add(1);
    std::this_thread::sleep_for(std::chrono::microseconds(300));
    std::lock_guard<std::mutex> lock(self->m);
    for (auto& n : seen) self->durable.insert(path + "/" + n);
    return 0;
  }
  std::mutex m;
  std::set<std::string> durable;
  std::atomic<int> syncs{0};
};

// Records, at committed(), whether a durable file holds this message's body.
struct checking_recorder final : inboxd::delivery_listener {
  void writable() noexcept override {}
  void committed(std::span<const store_outcome> o) noexcept override {
    done = true;
    stored = o.size() == 1 && o[0].result == store_result::stored;
    std::lock_guard<std::mutex> lock(probe->m);
    for (const auto& f : probe->durable)
      if (read_file(f).ends_with(body)) covered = true;
  }
  covering_sync* probe = nullptr;
  std::string body;
  bool done = false, stored = false, covered = false;
};

}  // namespace

TEST_CASE("sync stage: many deliveries at once, each answered after a sync begun after its link") {
  temp_dir t;
  test_loop l;
  auto s = open_maildirs(&l.loop, t.path + "/Maildir");
  covering_sync probe;
  inboxd::store::set_sync_hook(covering_sync::hook, &probe);
  constexpr int n = 60;
  std::vector<checking_recorder> r(n);
  std::vector<inboxd::envelope> env(n);
  const auto alice = users({"alice"});  // every envelope's span points into it
  for (int i = 0; i < n; ++i) {
    r[i].probe = &probe;
    r[i].body = "message " + std::to_string(i) + "\n";
    env[i].reverse_path = "a@example.net";
    env[i].recipients = alice;
    inboxd::delivery* d = s->begin(env[i], r[i]);
    d->write(r[i].body);
    d->commit();
  }
  uv_run(&l.loop, UV_RUN_DEFAULT);
  inboxd::store::set_sync_hook(nullptr, nullptr);
  for (int i = 0; i < n; ++i) {
    INFO(i);
    CHECK(r[i].done);
    CHECK(r[i].stored);
    CHECK(r[i].covered);
  }
  CHECK(names_in(t.path + "/Maildir/new").size() == n);
  // Shared: fewer fsyncs of new/ than messages (4 pool threads link at once).
  MESSAGE("fsyncs of new/ for ", n, " messages: ", probe.syncs.load());
  CHECK(probe.syncs.load() < n);
}

namespace {

// An fs_syncer hook that counts syncs per path and fails those of "bad".
struct fs_probe {
  static int hook(const std::string& path, void* arg) noexcept {
    auto* self = static_cast<fs_probe*>(arg);
    self->syncs.fetch_add(1);
    return path == "bad" ? EIO : 0;
  }
  std::atomic<int> syncs{0};
};

}  // namespace

TEST_CASE("fs_syncer: a syncfs that failed while a message was written fails it too") {
  fs_probe probe;
  inboxd::store::fs_syncer syncer(fs_probe::hook, &probe);
  std::uint64_t before = syncer.failures();
  CHECK(syncer.sync(7, "good") == 0);
  CHECK(syncer.failed_since(before) == 0);
  // Someone else's syncfs of the filesystem reports a writeback error: it may
  // have been this message's pages, and the error is reported only once.
  CHECK(syncer.sync(7, "bad") == EIO);
  CHECK(syncer.failed_since(before) == EIO);
  // A message begun after that failure is not failed by it.
  std::uint64_t after = syncer.failures();
  CHECK(syncer.sync(7, "good") == 0);
  CHECK(syncer.failed_since(after) == 0);
  CHECK(probe.syncs.load() == 3);
}

TEST_CASE("fs_syncer: the default runs syncfs on a folder of the filesystem") {
  inboxd::store::fs_syncer syncer;
  struct stat st {};
  REQUIRE(::stat(".", &st) == 0);
  CHECK(syncer.sync(st.st_dev, ".") == 0);
  CHECK(syncer.sync(st.st_dev, ".") == 0);  // its descriptor, kept
  CHECK(syncer.sync(st.st_dev + 1000, "/nonexistent/x") == ENOENT);
}
