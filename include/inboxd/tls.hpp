// inboxd/tls.hpp: certificates for STARTTLS and implicit TLS.
//
// tls_credentials is opaque: it holds mbedTLS state that no public header
// shows. Loading reads files (and may write a new self-signed certificate),
// so it blocks: call it at start-up or on the thread pool, then hand the
// result to the server in server_config::tls. Connections keep the
// credentials they started with across a reload.
#pragma once

#include <memory>
#include <string>

#include "inboxd/owner.hpp"

namespace inboxd {

class tls_credentials;

struct tls_options {
  std::string cert_file;  // PEM chain, leaf first; empty: self-signed
  std::string key_file;   // PEM private key
  // Where a self-signed certificate is made (on first start) and kept.
  std::string state_dir = "var/state";
  std::string hostname = "localhost";  // the self-signed certificate's name
  // The state folder and a self-signed pair made here go to this owner.
  file_owner owner;
};

// Loads the certificate and key, or with no cert_file the self-signed pair in
// state_dir (made first when missing; note says so). Returns null with a
// one-line reason in error.
std::shared_ptr<const tls_credentials> load_tls_credentials(const tls_options& options,
                                                            std::string& error, std::string& note);

// "mbedTLS 2.28.3", for --version and the log.
std::string tls_library_version();

}  // namespace inboxd
