// store/files.hpp: small file-system helpers for the sinks, and mailbox path
// templates. Everything here that touches the file system blocks: call it on
// the thread pool (or at start-up), never on the loop.
#pragma once

#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "inboxd/owner.hpp"
#include "inboxd/sink.hpp"

namespace inboxd::store {

// Expands {user} and {domain} in a path template for one recipient. The
// values are made safe as one path component each: '%', '/', a leading '.',
// control octets (NUL included) and octets outside well-formed UTF-8 are
// escaped as %XX (%2F, %2E, %00...), so no address can point outside the
// template, whatever octets it holds; UTF-8 names stay readable.
[[nodiscard]] std::string expand_path(std::string_view path_template, const recipient& r);

// The distinct mailboxes (files or folders) a message goes to, from a path
// template, and which of them is each recipient's: a message for two
// recipients of one mailbox is stored there once.
struct mailbox_places {
  mailbox_places(std::string_view path_template, std::span<const recipient> recipients);
  // One outcome per recipient from one errno value (0: stored) per place.
  void fill(std::span<store_outcome> outcomes, const std::vector<int>& errors) const;

  std::vector<std::string> paths;
  std::vector<std::size_t> of;  // recipient -> index in paths
};

// Whether a template names a different place per recipient.
[[nodiscard]] bool is_template(std::string_view path) noexcept;

// mkdir -p with mode 0700 for what it creates. Each folder it creates is
// handed to owner (when owner.set()), and the parent of each is fsynced, so
// that the new entry survives a crash: a message acknowledged into a new
// Maildir must not vanish with the folder it is in. Returns 0 or an errno
// value. With made, the folders it creates are appended there instead of
// being handed over: the caller hands them over itself (give_all), once it
// has made all it needs.
[[nodiscard]] int make_dirs(const std::string& path, file_owner owner = {},
                            std::vector<std::string>* made = nullptr) noexcept;

// Hands what a start-up as root made to owner, deepest first: while a
// folder is handed over, every folder above it made by us is still root's,
// so the user cannot swap a symlink in above it. Returns 0 or an errno value.
[[nodiscard]] int give_all(const std::vector<std::string>& made, file_owner owner) noexcept;

// Hands one file or folder to owner, by descriptor: it is opened with
// O_NOFOLLOW, so a symlink put in its place is refused (ELOOP), never
// followed. A no-op (0) when !owner.set(). Returns 0 or an errno value.
[[nodiscard]] int chown_to(const std::string& path, file_owner owner) noexcept;

// The leading folders of a path template before its first component that
// holds '{': "var/mail/{domain}/{user}" gives "var/mail", "/m/{user}.mbox"
// gives "/m", "{user}" gives "" (nothing to make). Start-up makes this part
// and hands it to the server's user, who makes the rest per recipient.
[[nodiscard]] std::string fixed_prefix(std::string_view path_template);

// Writes all of data, retrying short writes. Returns 0 or an errno value.
[[nodiscard]] int write_all(int fd, std::string_view data) noexcept;

// fsyncs a directory, so that a rename or link in it is durable.
[[nodiscard]] int fsync_dir(const std::string& path) noexcept;

// The directory part of a path ("." when there is none).
[[nodiscard]] std::string parent_of(const std::string& path);

}  // namespace inboxd::store
