#include "store/files.hpp"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <unordered_map>

#include "proto/utf8.hpp"
#include "store/pooled_delivery.hpp"

namespace inboxd::store {
namespace {

// One value as one path component, reversibly: '%' itself, '/', a leading
// '.' (so neither "." nor ".." nor a hidden name), NUL and the other control
// octets (C1 too), and every octet that is not part of well-formed UTF-8 become %XX.
// Well-formed UTF-8 (an SMTPUTF8 local part) stays as it is: a readable
// file name. So whatever octets a local part holds, the name stays one
// component below the template's folder.
void append_component(std::string& out, std::string_view value) {
  static constexpr char hex[] = "0123456789ABCDEF";
  auto escape = [&](unsigned char c) {
    out += '%';
    out += hex[c >> 4];
    out += hex[c & 15];
  };
  for (std::size_t i = 0; i < value.size();) {
    auto c = static_cast<unsigned char>(value[i]);
    if (c >= 0x80) {
      std::size_t n = proto::utf8_sequence(value.substr(i));
      // A C1 control (U+0080-U+009F) is escaped like the C0 ones.
      bool c1 = n == 2 && c == 0xC2 && static_cast<unsigned char>(value[i + 1]) < 0xA0;
      if (n == 0 || c1) {
        escape(c);
        ++i;
      } else {
        out.append(value.substr(i, n));
        i += n;
      }
      continue;
    }
    if (c == '/' || c == '%' || c < 0x20 || c == 0x7F || (c == '.' && i == 0))
      escape(c);
    else
      out += static_cast<char>(c);
    ++i;
  }
  if (value.empty()) out += "%00";
}

}  // namespace

std::string expand_path(std::string_view tpl, const recipient& r) {
  std::string out;
  out.reserve(tpl.size() + r.user.size() + r.domain.size());
  for (std::size_t i = 0; i < tpl.size();) {
    if (tpl.compare(i, 6, "{user}") == 0) {
      append_component(out, r.user);
      i += 6;
    } else if (tpl.compare(i, 8, "{domain}") == 0) {
      append_component(out, r.domain);
      i += 8;
    } else {
      out += tpl[i++];
    }
  }
  return out;
}

mailbox_places::mailbox_places(std::string_view path_template,
                               std::span<const recipient> recipients) {
  // A hash map from path to index keeps this linear in the recipients: a
  // search of paths for each would be quadratic for 1000 of them.
  std::unordered_map<std::string, std::size_t> index;
  index.reserve(recipients.size());
  of.reserve(recipients.size());
  for (const recipient& r : recipients) {
    std::string path = expand_path(path_template, r);
    auto [it, added] = index.try_emplace(path, paths.size());
    if (added) paths.push_back(std::move(path));
    of.push_back(it->second);
  }
}

void mailbox_places::fill(std::span<store_outcome> outcomes, const std::vector<int>& errors) const {
  for (std::size_t r = 0; r < outcomes.size(); ++r) outcomes[r] = outcome_of(errors[of[r]]);
}

bool is_template(std::string_view path) noexcept {
  return path.find("{user}") != path.npos || path.find("{domain}") != path.npos;
}

int make_dirs(const std::string& path, file_owner owner, std::vector<std::string>* made) noexcept {
  try {
    std::vector<std::string> ours;
    if (!made) made = &ours;
    for (std::size_t i = 1; i <= path.size(); ++i) {
      if (i < path.size() && path[i] != '/') continue;
      if (path[i - 1] == '/') continue;  // "a//b" or a trailing '/'
      std::string part = path.substr(0, i);
      if (::mkdir(part.c_str(), 0700) != 0) {
        if (errno != EEXIST) return errno;
        continue;
      }
      // Only what this call made is handed over: a folder that was there
      // already keeps its owner (chowning an existing /var/mail to the
      // server's user would give that user more than the operator meant).
      made->push_back(part);
      // The new entry is in its parent folder, which must reach the disk
      // too, or a crash may forget the folder and every message in it. A
      // parent we may write but not read (mode 0733, say) cannot be opened
      // to fsync: the folder is still made, as durable as that allows.
      if (int e = fsync_dir(parent_of(part)); e && e != EACCES) return e;
    }
    return made == &ours ? give_all(ours, owner) : 0;
  } catch (...) {
    return ENOMEM;
  }
}

int give_all(const std::vector<std::string>& made, file_owner owner) noexcept {
  for (auto it = made.rbegin(); it != made.rend(); ++it)
    if (int e = chown_to(*it, owner)) return e;
  return 0;
}

int chown_to(const std::string& path, file_owner owner) noexcept {
  if (!owner.set()) return 0;
  int fd = ::open(path.c_str(), O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC);
  if (fd < 0) return errno;
  int rc = ::fchown(fd, owner.uid, owner.gid) == 0 ? 0 : errno;
  ::close(fd);
  return rc;
}

std::string fixed_prefix(std::string_view tpl) {
  auto brace = tpl.find('{');
  if (brace == tpl.npos) {
    while (tpl.size() > 1 && tpl.back() == '/') tpl.remove_suffix(1);
    return std::string(tpl);
  }
  // The component holding the brace starts after the last '/' before it.
  auto slash = tpl.rfind('/', brace);
  if (slash == tpl.npos) return {};
  std::string_view prefix = tpl.substr(0, slash);
  while (!prefix.empty() && prefix.back() == '/') prefix.remove_suffix(1);
  if (prefix.empty()) return "/";
  return std::string(prefix);
}

int write_all(int fd, std::string_view data) noexcept {
  while (!data.empty()) {
    ssize_t n = ::write(fd, data.data(), data.size());
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return errno;
    data.remove_prefix(static_cast<std::size_t>(n));
  }
  return 0;
}

int fsync_dir(const std::string& path) noexcept {
  int fd = ::open(path.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) return errno;
  int rc = ::fsync(fd) == 0 ? 0 : errno;
  ::close(fd);
  return rc;
}

std::string parent_of(const std::string& path) {
  auto slash = path.rfind('/');
  if (slash == std::string::npos) return ".";
  if (slash == 0) return "/";
  return path.substr(0, slash);
}

}  // namespace inboxd::store
