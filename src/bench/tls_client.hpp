// bench/tls_client.hpp: the client side of TLS for inboxd-bench, mbedTLS over
// memory buffers.
//
// tls_client_config is what every connection shares: the random generator
// and the mbedtls_ssl_config (client, TLS 1.2 at least, no certificate
// verification: a load generator talks to self-signed test servers). The
// run owns it and outlives every stream.
//
// tls_client_stream is one connection slot's TLS state, kept for the whole
// run: the mbedtls_ssl_context (its record buffers are allocated once, by
// mbedtls_ssl_setup; each session starts with mbedtls_ssl_session_reset,
// which keeps them), the fixed buffer the socket reads ciphertext into, the
// plaintext staging buffer and the ciphertext to send. The saved session
// (with its RFC 5077 ticket) lets the slot's next connection resume.
//
// The stream never touches a socket. The client reads into read_space() and
// says how much came with received(); handshake() and read() consume that;
// add() and flush() encrypt into output(), which the client writes and
// clears. Views returned by read_space() live until the next received().
//
// The code keeps to calls that exist in mbedTLS 2.28 (Debian) and 3.6; where
// the API changed, a version guard picks the right one (as the server does).
#pragma once

#include <mbedtls/ctr_drbg.h>
#include <mbedtls/entropy.h>
#include <mbedtls/ssl.h>

#include <array>
#include <cstddef>
#include <span>
#include <string>
#include <string_view>

namespace inboxd::bench {

// The text of an mbedTLS error code: "SSL - ... (-0x7780)".
[[nodiscard]] std::string tls_error_text(int code);

class tls_client_config {
 public:
  tls_client_config();
  ~tls_client_config();
  tls_client_config(const tls_client_config&) = delete;
  tls_client_config& operator=(const tls_client_config&) = delete;

  // Returns 0, or an mbedTLS error code with what failed in error.
  [[nodiscard]] int setup(std::string& error);
  [[nodiscard]] const mbedtls_ssl_config* config() const noexcept { return &conf_; }

 private:
  mbedtls_entropy_context entropy_;
  mbedtls_ctr_drbg_context drbg_;
  mbedtls_ssl_config conf_;
};

class tls_client_stream {
 public:
  enum class status {
    ok,         // progress: the handshake is over, or plaintext was read
    want_read,  // mbedTLS has taken every byte of ciphertext and needs more
    closed,     // the peer sent close_notify
    failed,     // a TLS error; see error()
  };

  explicit tls_client_stream(const tls_client_config& config);
  ~tls_client_stream();
  tls_client_stream(const tls_client_stream&) = delete;
  tls_client_stream& operator=(const tls_client_stream&) = delete;

  // Forgets the previous connection (keeping every buffer) and prepares a
  // new handshake, offering the saved session when resume is true and there
  // is one. Returns 0 or an mbedTLS error code.
  [[nodiscard]] int start(bool resume);
  // Advances the handshake as far as the ciphertext received allows; its
  // messages collect in output(). On ok, the session is saved for the next
  // start(true) when it was a full handshake.
  [[nodiscard]] status handshake();
  // Whether the handshake that just ended was abbreviated (resumed). In TLS
  // 1.2 (RFC 5246 7.3) the client sends the last Finished exactly when the
  // session is resumed: in a full handshake the server's Finished comes last.
  [[nodiscard]] bool resumed() const noexcept { return resumed_; }

  // Ciphertext from the socket: read into read_space(), then received(n).
  [[nodiscard]] std::span<char> read_space() noexcept;
  void received(std::size_t n) noexcept { cin_len_ += n; }

  // Decrypts into buf, at most cap bytes; n is how many came.
  [[nodiscard]] status read(char* buf, std::size_t cap, std::size_t& n);

  // Plaintext to send: gathered into records of up to 16 KiB, so that a
  // batch of commands and a message text become one record where they fit.
  [[nodiscard]] status add(std::string_view plain);
  // Encrypts what add() has gathered.
  [[nodiscard]] status flush();
  // Ciphertext to send; the client takes it (swap or clear; capacity is kept).
  [[nodiscard]] std::string& output() noexcept { return out_; }

  [[nodiscard]] int error() const noexcept { return error_; }
  // Static strings of mbedTLS: "TLSv1.2", "TLS-ECDHE-ECDSA-WITH-AES-256-GCM-SHA384".
  [[nodiscard]] const char* version() const noexcept;
  [[nodiscard]] const char* cipher() const noexcept;

 private:
  static int send_cb(void* ctx, const unsigned char* buf, size_t len) noexcept;
  static int recv_cb(void* ctx, unsigned char* buf, size_t len) noexcept;
  status fail(int code) noexcept;

  mbedtls_ssl_context ssl_;
  mbedtls_ssl_session saved_;
  bool have_saved_ = false;
  bool resumed_ = false;
  int error_ = 0;
  int setup_error_ = 0;  // mbedtls_ssl_setup's: the stream is unusable

  // Ciphertext read from the socket and not yet taken by mbedTLS: bytes
  // [cin_off_, cin_len_). mbedTLS takes all of it before it answers
  // want_read, so the buffer is empty again between reads.
  static constexpr std::size_t cin_capacity = 16 * 1024 + 512;
  std::size_t cin_off_ = 0;
  std::size_t cin_len_ = 0;
  std::array<char, cin_capacity> cin_;

  // Plaintext waiting to be encrypted: at most one record's worth.
  static constexpr std::size_t record_plain = 16 * 1024;
  std::size_t plain_len_ = 0;
  std::array<char, record_plain> plain_;

  std::string out_;
};

}  // namespace inboxd::bench
