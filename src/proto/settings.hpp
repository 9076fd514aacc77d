// proto/settings.hpp: one snapshot of what a session works with.
//
// A reload (SIGHUP) makes a new snapshot; the server hands sessions the
// current one. A session takes it between transactions only, so a message in
// flight finishes under the settings it started with. Snapshots are shared
// and immutable; the last session to let go of an old one frees it, with its
// policy and sink.
#pragma once

#include <memory>

#include "inboxd/auth.hpp"
#include "inboxd/config.hpp"
#include "inboxd/filter.hpp"
#include "inboxd/maildrop.hpp"
#include "inboxd/metrics.hpp"
#include "inboxd/policy.hpp"
#include "inboxd/sink.hpp"

namespace inboxd::proto {

struct settings {
  session_config limits;
  std::shared_ptr<const recipient_policy> policy;  // never null
  std::shared_ptr<sink> store;                     // never null
  std::shared_ptr<const authenticator> auth;       // null: no AUTH
  std::shared_ptr<const tls_credentials> tls;      // null: no STARTTLS
  std::vector<std::shared_ptr<filter>> filters;    // asked in order (filter.hpp)
  std::shared_ptr<const maildrop_source> maildrops;  // POP3's; null: no POP3
  // The server's counters, which outlive every snapshot (a reload keeps
  // them); null: nothing is counted (tests that run a bare session).
  server_metrics* metrics = nullptr;
};

using settings_ptr = std::shared_ptr<const settings>;

}  // namespace inboxd::proto
