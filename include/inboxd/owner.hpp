// inboxd/owner.hpp: who owns what the server creates on disk.
//
// Started as root with --user, inboxd makes its folders and files (Maildirs,
// mbox files and their folders, the spool, the state folder, the self-signed
// certificate and key) before it gives up root, and then runs as that user:
// so everything it makes at start-up is handed to that user (chown), or the
// first delivery fails with "Permission denied".
#pragma once

#include <sys/types.h>

namespace inboxd {

struct file_owner {
  uid_t uid = static_cast<uid_t>(-1);  // -1: leave as created
  gid_t gid = static_cast<gid_t>(-1);
  [[nodiscard]] bool set() const noexcept {
    return uid != static_cast<uid_t>(-1) || gid != static_cast<gid_t>(-1);
  }
};

}  // namespace inboxd
