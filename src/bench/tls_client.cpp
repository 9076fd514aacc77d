#include "bench/tls_client.hpp"

#include <mbedtls/ecp.h>
#include <mbedtls/error.h>
#include <mbedtls/version.h>
#if MBEDTLS_VERSION_MAJOR >= 3
#include <psa/crypto.h>
#endif

#include <fmt/format.h>
#include <algorithm>
#include <cstdint>
#include <cstring>

namespace inboxd::bench {

std::string tls_error_text(int code) {
  char buf[200] = {};
  mbedtls_strerror(code, buf, sizeof buf);
  return fmt::format("{} (-0x{:04X})", buf, -code);
}

tls_client_config::tls_client_config() {
#if MBEDTLS_VERSION_MAJOR >= 3
  psa_crypto_init();
#endif
  mbedtls_entropy_init(&entropy_);
  mbedtls_ctr_drbg_init(&drbg_);
  mbedtls_ssl_config_init(&conf_);
}

tls_client_config::~tls_client_config() {
  mbedtls_ssl_config_free(&conf_);
  mbedtls_ctr_drbg_free(&drbg_);
  mbedtls_entropy_free(&entropy_);
}

int tls_client_config::setup(std::string& error) {
  static constexpr unsigned char personal[] = "inboxd-bench";
  int rc =
      mbedtls_ctr_drbg_seed(&drbg_, mbedtls_entropy_func, &entropy_, personal, sizeof personal);
  if (rc != 0) {
    error = "cannot seed the random generator: " + tls_error_text(rc);
    return rc;
  }
  rc = mbedtls_ssl_config_defaults(&conf_, MBEDTLS_SSL_IS_CLIENT, MBEDTLS_SSL_TRANSPORT_STREAM,
                                   MBEDTLS_SSL_PRESET_DEFAULT);
  if (rc != 0) {
    error = "cannot set up the TLS configuration: " + tls_error_text(rc);
    return rc;
  }
  mbedtls_ssl_conf_rng(&conf_, mbedtls_ctr_drbg_random, &drbg_);
  // A benchmark against self-signed test certificates: nothing is verified.
  mbedtls_ssl_conf_authmode(&conf_, MBEDTLS_SSL_VERIFY_NONE);
  // TLS 1.2 at least (Debian's 2.28 would allow 1.0). With 3.x, TLS 1.2 at
  // most too: resumed() and the saved ticket follow TLS 1.2's handshake
  // (in 1.3 tickets arrive after the handshake, and resumption is a PSK).
#if MBEDTLS_VERSION_MAJOR >= 3
  mbedtls_ssl_conf_min_tls_version(&conf_, MBEDTLS_SSL_VERSION_TLS1_2);
  mbedtls_ssl_conf_max_tls_version(&conf_, MBEDTLS_SSL_VERSION_TLS1_2);
#else
  mbedtls_ssl_conf_min_version(&conf_, MBEDTLS_SSL_MAJOR_VERSION_3, MBEDTLS_SSL_MINOR_VERSION_3);
#endif
  // Ask for tickets (RFC 5077) even with --tls-resume off: the server then
  // pays for issuing them, as it does for real clients.
  mbedtls_ssl_conf_session_tickets(&conf_, MBEDTLS_SSL_SESSION_TICKETS_ENABLED);
  // X25519 first, like the server.
#if MBEDTLS_VERSION_NUMBER >= 0x03010000
  static constexpr std::uint16_t groups[] = {MBEDTLS_SSL_IANA_TLS_GROUP_X25519,
                                             MBEDTLS_SSL_IANA_TLS_GROUP_SECP256R1,
                                             MBEDTLS_SSL_IANA_TLS_GROUP_SECP384R1, 0};
  mbedtls_ssl_conf_groups(&conf_, groups);
#else
  static constexpr mbedtls_ecp_group_id curves[] = {MBEDTLS_ECP_DP_CURVE25519,
                                                    MBEDTLS_ECP_DP_SECP256R1,
                                                    MBEDTLS_ECP_DP_SECP384R1, MBEDTLS_ECP_DP_NONE};
  mbedtls_ssl_conf_curves(&conf_, curves);
#endif
  return 0;
}

tls_client_stream::tls_client_stream(const tls_client_config& config) {
  mbedtls_ssl_init(&ssl_);
  mbedtls_ssl_session_init(&saved_);
  // The record buffers are allocated here, once per slot for the whole run.
  setup_error_ = error_ = mbedtls_ssl_setup(&ssl_, config.config());
  mbedtls_ssl_set_bio(&ssl_, this, send_cb, recv_cb, nullptr);
  // Room for a pipelined batch and a message of a few KiB, so that
  // encrypting never allocates once the run is warm.
  out_.reserve(2 * cin_capacity);
}

tls_client_stream::~tls_client_stream() {
  mbedtls_ssl_session_free(&saved_);
  mbedtls_ssl_free(&ssl_);
}

int tls_client_stream::start(bool resume) {
  cin_off_ = cin_len_ = 0;
  plain_len_ = 0;
  out_.clear();
  resumed_ = false;
  // A failed connection leaves its error in error_; only a failed setup stays.
  if (setup_error_) return error_ = setup_error_;
  error_ = mbedtls_ssl_session_reset(&ssl_);
  if (error_ == 0 && resume && have_saved_) {
    // A session that cannot be offered is no reason to fail: the handshake
    // is then a full one.
    if (mbedtls_ssl_set_session(&ssl_, &saved_) != 0) have_saved_ = false;
  }
  return error_;
}

int tls_client_stream::send_cb(void* ctx, const unsigned char* buf, size_t len) noexcept {
  auto* self = static_cast<tls_client_stream*>(ctx);
  self->out_.append(reinterpret_cast<const char*>(buf), len);
  return static_cast<int>(len);
}

int tls_client_stream::recv_cb(void* ctx, unsigned char* buf, size_t len) noexcept {
  auto* self = static_cast<tls_client_stream*>(ctx);
  std::size_t avail = self->cin_len_ - self->cin_off_;
  if (avail == 0) return MBEDTLS_ERR_SSL_WANT_READ;
  std::size_t n = len < avail ? len : avail;
  std::memcpy(buf, self->cin_.data() + self->cin_off_, n);
  self->cin_off_ += n;
  if (self->cin_off_ == self->cin_len_) self->cin_off_ = self->cin_len_ = 0;
  return static_cast<int>(n);
}

std::span<char> tls_client_stream::read_space() noexcept {
  // Normally empty here (see cin_); else keep what is left at the front.
  if (cin_off_ > 0) {
    std::memmove(cin_.data(), cin_.data() + cin_off_, cin_len_ - cin_off_);
    cin_len_ -= cin_off_;
    cin_off_ = 0;
  }
  return {cin_.data() + cin_len_, cin_capacity - cin_len_};
}

tls_client_stream::status tls_client_stream::fail(int code) noexcept {
  error_ = code;
  return status::failed;
}

tls_client_stream::status tls_client_stream::handshake() {
  if (error_) return status::failed;
  std::size_t before = out_.size();
  int rc = mbedtls_ssl_handshake(&ssl_);
  if (rc == MBEDTLS_ERR_SSL_WANT_READ || rc == MBEDTLS_ERR_SSL_WANT_WRITE) return status::want_read;
  if (rc != 0) return fail(rc);
  // RFC 5246 7.3: only in an abbreviated handshake does the client's
  // Finished come last, written by the call that completes it.
  resumed_ = out_.size() > before;
  if (!resumed_) {
    // The new session and its ticket, for the slot's next connection. A
    // copy (it allocates): once per full handshake, not per message.
    have_saved_ = mbedtls_ssl_get_session(&ssl_, &saved_) == 0;
  }
  return status::ok;
}

tls_client_stream::status tls_client_stream::read(char* buf, std::size_t cap, std::size_t& n) {
  n = 0;
  if (error_) return status::failed;
  int rc = mbedtls_ssl_read(&ssl_, reinterpret_cast<unsigned char*>(buf), cap);
  if (rc > 0) {
    n = static_cast<std::size_t>(rc);
    return status::ok;
  }
  if (rc == MBEDTLS_ERR_SSL_WANT_READ || rc == MBEDTLS_ERR_SSL_WANT_WRITE) return status::want_read;
#ifdef MBEDTLS_ERR_SSL_RECEIVED_NEW_SESSION_TICKET
  if (rc == MBEDTLS_ERR_SSL_RECEIVED_NEW_SESSION_TICKET) return status::want_read;
#endif
  if (rc == 0 || rc == MBEDTLS_ERR_SSL_PEER_CLOSE_NOTIFY) return status::closed;
  return fail(rc);
}

tls_client_stream::status tls_client_stream::add(std::string_view plain) {
  while (!plain.empty()) {
    std::size_t n = std::min(plain.size(), record_plain - plain_len_);
    std::memcpy(plain_.data() + plain_len_, plain.data(), n);
    plain_len_ += n;
    plain.remove_prefix(n);
    if (plain_len_ == record_plain) {
      if (auto st = flush(); st != status::ok) return st;
    }
  }
  return status::ok;
}

tls_client_stream::status tls_client_stream::flush() {
  std::size_t done = 0;
  while (done < plain_len_) {
    if (error_) return status::failed;
    // mbedtls_ssl_write takes at most one record's payload per call.
    int rc = mbedtls_ssl_write(&ssl_, reinterpret_cast<const unsigned char*>(plain_.data()) + done,
                               plain_len_ - done);
    // send_cb takes everything, so WANT_WRITE cannot happen; anything else is an error.
    if (rc < 0) return fail(rc);
    done += static_cast<std::size_t>(rc);
  }
  plain_len_ = 0;
  return status::ok;
}

const char* tls_client_stream::version() const noexcept {
  return mbedtls_ssl_get_version(&ssl_);
}

const char* tls_client_stream::cipher() const noexcept {
  return mbedtls_ssl_get_ciphersuite(&ssl_);
}

}  // namespace inboxd::bench
