// net/tls.hpp: mbedTLS over memory buffers, for one connection at a time.
//
// tls_credentials holds what all connections share: the certificate chain,
// the key, the random generator and the mbedtls_ssl_config. tls_stream is one
// connection's TLS state. The connection moves bytes: ciphertext it read goes
// in with feed(); handshake() and read() turn it into progress and
// plaintext; write() encrypts; ciphertext to send collects in output(). No
// call blocks and none touches a socket, so the loop stays free.
//
// The code keeps to calls that exist in mbedTLS 2.28 and 3.6; where the API
// changed, a version guard picks the right one.
#pragma once

#include <mbedtls/ctr_drbg.h>
#include <mbedtls/entropy.h>
#include <mbedtls/pk.h>
#include <mbedtls/ssl.h>
#include <mbedtls/ssl_ticket.h>
#include <mbedtls/x509_crt.h>

#include <memory>
#include <string>
#include <string_view>

#include "inboxd/tls.hpp"

namespace inboxd {

class tls_credentials {
 public:
  tls_credentials();
  ~tls_credentials();
  tls_credentials(const tls_credentials&) = delete;
  tls_credentials& operator=(const tls_credentials&) = delete;

  // Sets up the config from PEM files. Returns 0 or an mbedTLS error code,
  // with what failed in error.
  int load(const std::string& cert_file, const std::string& key_file, std::string& error);

  // Sets up a client's config instead (a hand-off sink's STARTTLS towards
  // its next hop): with verify, the hop's chain must lead to a CA in
  // ca_file and name the host tls_stream::set_hostname() gives; without, any
  // certificate goes (Postfix's smtp_tls_security_level may).
  int load_client(const std::string& ca_file, bool verify, std::string& error);

  const mbedtls_ssl_config* config() const noexcept { return &conf_; }

 private:
  mbedtls_entropy_context entropy_;
  mbedtls_ctr_drbg_context drbg_;
  mbedtls_x509_crt chain_;
  mbedtls_pk_context key_;
  mbedtls_ssl_ticket_context tickets_;
  mbedtls_ssl_config conf_;
};

// The text of an mbedTLS error code, for the log.
std::string tls_error_text(int code);

}  // namespace inboxd

namespace inboxd::net {

class tls_stream {
 public:
  enum class status {
    ok,         // progress made (handshake done, bytes read)
    want_read,  // needs more ciphertext
    closed,     // the peer sent close_notify or closed
    failed,     // a TLS error; see error()
  };

  explicit tls_stream(std::shared_ptr<const tls_credentials> credentials);
  ~tls_stream();
  tls_stream(const tls_stream&) = delete;
  tls_stream& operator=(const tls_stream&) = delete;

  // Ciphertext read from the socket; copied.
  void feed(std::string_view ciphertext) { in_.append(ciphertext); }
  // The name the server's certificate must have (a client's stream).
  int set_hostname(const std::string& name);
  // Advances the handshake as far as the ciphertext allows.
  status handshake();
  [[nodiscard]] bool established() const noexcept { return established_; }
  // The handshake resumed a session from a ticket (RFC 5077) instead of a full one.
  [[nodiscard]] bool resumed() const noexcept { return resumed_; }
  // Decrypts into buf; n is how many bytes were written.
  status read(char* buf, std::size_t cap, std::size_t& n);
  // Encrypts all of plain into output().
  status write(std::string_view plain);
  // Queues a close_notify alert.
  void close_notify();

  // Ciphertext to send; the connection takes it and clears it.
  std::string& output() noexcept { return out_; }
  // Whether ciphertext or plaintext waits inside (call read() again).
  [[nodiscard]] bool has_pending_input() const noexcept;

  [[nodiscard]] int error() const noexcept { return error_; }
  [[nodiscard]] std::string version() const;  // "TLSv1.3"
  [[nodiscard]] std::string cipher() const;   // "TLS-AES-256-GCM-SHA384"

 private:
  static int send_cb(void* ctx, const unsigned char* buf, size_t len) noexcept;
  static int recv_cb(void* ctx, unsigned char* buf, size_t len) noexcept;
  status fail(int code);

  std::shared_ptr<const tls_credentials> credentials_;
  mbedtls_ssl_context ssl_;
  std::string in_;          // ciphertext not yet taken by mbedTLS
  std::size_t in_off_ = 0;  // taken so far
  std::string out_;
  int error_ = 0;
  bool established_ = false;
  bool resumed_ = false;
  bool notified_ = false;  // close_notify sent
};

}  // namespace inboxd::net
