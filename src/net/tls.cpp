#include "net/tls.hpp"

#include <mbedtls/ecp.h>
#include <mbedtls/error.h>
#include <mbedtls/platform_util.h>
#include <mbedtls/version.h>
#if MBEDTLS_VERSION_MAJOR >= 3
#include <psa/crypto.h>
#endif

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <fmt/format.h>
#include <cerrno>
#include <cstring>
#include <ctime>

#include "store/files.hpp"

namespace inboxd {

namespace {

// Session tickets parsed on this thread. mbedTLS says nothing public about
// whether a handshake resumed; a ticket it parsed is a resumption, and the
// parse runs inside the mbedtls_ssl_handshake() call of that very
// connection, on the loop thread: tls_stream::handshake() compares the
// count before and after.
thread_local std::uint64_t tickets_parsed = 0;

int counted_ticket_parse(void* p_ticket, mbedtls_ssl_session* session, unsigned char* buf,
                         size_t len) noexcept {
  int rc = mbedtls_ssl_ticket_parse(p_ticket, session, buf, len);
  if (rc == 0) ++tickets_parsed;
  return rc;
}

// TLS 1.2 at least (Debian's 2.28 would allow 1.0); 1.3 where the library
// has it. For the server side and the hand-off's client side alike.
void min_tls12(mbedtls_ssl_config* conf) {
#if MBEDTLS_VERSION_MAJOR >= 3
  mbedtls_ssl_conf_min_tls_version(conf, MBEDTLS_SSL_VERSION_TLS1_2);
#else
  mbedtls_ssl_conf_min_version(conf, MBEDTLS_SSL_MAJOR_VERSION_3, MBEDTLS_SSL_MINOR_VERSION_3);
#endif
}

}  // namespace

std::string tls_error_text(int code) {
  char buf[200] = {};
  mbedtls_strerror(code, buf, sizeof buf);
  return fmt::format(FMT_STRING("{} (-0x{:04X})"), buf, -code);
}

std::string tls_library_version() {
  return "mbedTLS " MBEDTLS_VERSION_STRING;
}

tls_credentials::tls_credentials() {
#if MBEDTLS_VERSION_MAJOR >= 3
  psa_crypto_init();
#endif
  mbedtls_entropy_init(&entropy_);
  mbedtls_ctr_drbg_init(&drbg_);
  mbedtls_x509_crt_init(&chain_);
  mbedtls_pk_init(&key_);
  mbedtls_ssl_ticket_init(&tickets_);
  mbedtls_ssl_config_init(&conf_);
}

tls_credentials::~tls_credentials() {
  mbedtls_ssl_config_free(&conf_);
  mbedtls_ssl_ticket_free(&tickets_);
  mbedtls_pk_free(&key_);
  mbedtls_x509_crt_free(&chain_);
  mbedtls_ctr_drbg_free(&drbg_);
  mbedtls_entropy_free(&entropy_);
}

int tls_credentials::load(const std::string& cert_file, const std::string& key_file,
                          std::string& error) {
  static constexpr unsigned char personal[] = "inboxd";
  int rc =
      mbedtls_ctr_drbg_seed(&drbg_, mbedtls_entropy_func, &entropy_, personal, sizeof personal);
  if (rc != 0) {
    error = "cannot seed the random generator: " + tls_error_text(rc);
    return rc;
  }
  if ((rc = mbedtls_x509_crt_parse_file(&chain_, cert_file.c_str())) != 0) {
    error =
        fmt::format(FMT_STRING("cannot load certificate {}: {}"), cert_file, tls_error_text(rc));
    return rc;
  }
#if MBEDTLS_VERSION_MAJOR >= 3
  rc = mbedtls_pk_parse_keyfile(&key_, key_file.c_str(), nullptr, mbedtls_ctr_drbg_random, &drbg_);
#else
  rc = mbedtls_pk_parse_keyfile(&key_, key_file.c_str(), nullptr);
#endif
  if (rc != 0) {
    error = fmt::format(FMT_STRING("cannot load key {}: {}"), key_file, tls_error_text(rc));
    return rc;
  }
  // mbedtls_ssl_conf_own_cert takes any pair: check that the key is the certificate's.
#if MBEDTLS_VERSION_MAJOR >= 3
  rc = mbedtls_pk_check_pair(&chain_.pk, &key_, mbedtls_ctr_drbg_random, &drbg_);
#else
  rc = mbedtls_pk_check_pair(&chain_.pk, &key_);
#endif
  if (rc != 0) {
    error = fmt::format(FMT_STRING("the key {} is not the key of certificate {}: {}"), key_file,
                        cert_file, tls_error_text(rc));
    return rc;
  }
  rc = mbedtls_ssl_config_defaults(&conf_, MBEDTLS_SSL_IS_SERVER, MBEDTLS_SSL_TRANSPORT_STREAM,
                                   MBEDTLS_SSL_PRESET_DEFAULT);
  if (rc == 0) rc = mbedtls_ssl_conf_own_cert(&conf_, &chain_, &key_);
  if (rc != 0) {
    error = fmt::format(FMT_STRING("certificate {} and key {} do not go together: {}"), cert_file,
                        key_file, tls_error_text(rc));
    return rc;
  }
  mbedtls_ssl_conf_rng(&conf_, mbedtls_ctr_drbg_random, &drbg_);
  min_tls12(&conf_);
  // Mail clients present no certificate to an MX.
  mbedtls_ssl_conf_authmode(&conf_, MBEDTLS_SSL_VERIFY_NONE);
  // Session tickets (RFC 5077) let a returning client skip the full
  // handshake, the most expensive thing the loop does.
  if (mbedtls_ssl_ticket_setup(&tickets_, mbedtls_ctr_drbg_random, &drbg_,
                               MBEDTLS_CIPHER_AES_256_GCM, 86400) == 0)
    mbedtls_ssl_conf_session_tickets_cb(&conf_, mbedtls_ssl_ticket_write, counted_ticket_parse,
                                        &tickets_);
    // Key exchange on X25519 first: the cheapest for the loop, and what most
    // clients offer first.
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

int tls_credentials::load_client(const std::string& ca_file, bool verify, std::string& error) {
  static constexpr unsigned char personal[] = "inboxd-client";
  int rc =
      mbedtls_ctr_drbg_seed(&drbg_, mbedtls_entropy_func, &entropy_, personal, sizeof personal);
  if (rc != 0) {
    error = "cannot seed the random generator: " + tls_error_text(rc);
    return rc;
  }
  if (!ca_file.empty() && (rc = mbedtls_x509_crt_parse_file(&chain_, ca_file.c_str())) != 0) {
    error = fmt::format(FMT_STRING("cannot load CA file {}: {}"), ca_file, tls_error_text(rc));
    return rc;
  }
  rc = mbedtls_ssl_config_defaults(&conf_, MBEDTLS_SSL_IS_CLIENT, MBEDTLS_SSL_TRANSPORT_STREAM,
                                   MBEDTLS_SSL_PRESET_DEFAULT);
  if (rc != 0) {
    error = "cannot set up TLS: " + tls_error_text(rc);
    return rc;
  }
  mbedtls_ssl_conf_rng(&conf_, mbedtls_ctr_drbg_random, &drbg_);
  min_tls12(&conf_);
  mbedtls_ssl_conf_ca_chain(&conf_, &chain_, nullptr);
  mbedtls_ssl_conf_authmode(&conf_, verify ? MBEDTLS_SSL_VERIFY_REQUIRED : MBEDTLS_SSL_VERIFY_NONE);
  return 0;
}

namespace {

// Writes a file whole, then renames it into place, so a crash leaves either
// no file or a complete one. The file is given to owner before anything is
// in it: a key is never readable by anyone but its owner, even for a moment.
int write_file(const std::string& path, const std::string& text, mode_t mode, file_owner owner) {
  std::string tmp = path + ".tmp";
  // A new file of our own, never one that was put there (a link to another).
  ::unlink(tmp.c_str());
  int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, mode);
  if (fd < 0) return errno;
  int e = 0;
  if (owner.set() && ::fchown(fd, owner.uid, owner.gid) != 0) e = errno;
  if (!e) e = store::write_all(fd, text);
  if (!e && ::fsync(fd) != 0) e = errno;
  ::close(fd);
  if (!e && ::rename(tmp.c_str(), path.c_str()) != 0) e = errno;
  if (e) ::unlink(tmp.c_str());
  return e;
}

std::string validity_time(std::time_t t) {
  std::tm tm{};
  gmtime_r(&t, &tm);
  return fmt::format(FMT_STRING("{:04}{:02}{:02}{:02}{:02}{:02}"), tm.tm_year + 1900, tm.tm_mon + 1,
                     tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec);
}

// Makes an ECDSA P-256 key (cheap to sign with: handshakes cost the loop
// little) and a certificate for it, signed by itself, valid for ten years.
bool make_self_signed(const std::string& hostname, std::string& cert_pem, std::string& key_pem,
                      std::string& error) {
  mbedtls_entropy_context entropy;
  mbedtls_ctr_drbg_context drbg;
  mbedtls_pk_context key;
  mbedtls_x509write_cert crt;
  mbedtls_entropy_init(&entropy);
  mbedtls_ctr_drbg_init(&drbg);
  mbedtls_pk_init(&key);
  mbedtls_x509write_crt_init(&crt);
  std::string subject = "CN=" + hostname;
  unsigned char serial[16];
  unsigned char buf[4096];
  std::time_t now = std::time(nullptr);
  int rc = mbedtls_ctr_drbg_seed(&drbg, mbedtls_entropy_func, &entropy, nullptr, 0);
  if (rc == 0) rc = mbedtls_pk_setup(&key, mbedtls_pk_info_from_type(MBEDTLS_PK_ECKEY));
  if (rc == 0)
    rc = mbedtls_ecp_gen_key(MBEDTLS_ECP_DP_SECP256R1, mbedtls_pk_ec(key), mbedtls_ctr_drbg_random,
                             &drbg);
  if (rc == 0) rc = mbedtls_ctr_drbg_random(&drbg, serial, sizeof serial);
  serial[0] &= 0x7f;  // A positive serial number.
  if (rc == 0) {
    mbedtls_x509write_crt_set_version(&crt, MBEDTLS_X509_CRT_VERSION_3);
    mbedtls_x509write_crt_set_md_alg(&crt, MBEDTLS_MD_SHA256);
    mbedtls_x509write_crt_set_subject_key(&crt, &key);
    mbedtls_x509write_crt_set_issuer_key(&crt, &key);
    rc = mbedtls_x509write_crt_set_subject_name(&crt, subject.c_str());
  }
  if (rc == 0) rc = mbedtls_x509write_crt_set_issuer_name(&crt, subject.c_str());
#if MBEDTLS_VERSION_NUMBER >= 0x03040000
  if (rc == 0) rc = mbedtls_x509write_crt_set_serial_raw(&crt, serial, sizeof serial);
#else
  if (rc == 0) {
    mbedtls_mpi mpi;
    mbedtls_mpi_init(&mpi);
    rc = mbedtls_mpi_read_binary(&mpi, serial, sizeof serial);
    if (rc == 0) rc = mbedtls_x509write_crt_set_serial(&crt, &mpi);
    mbedtls_mpi_free(&mpi);
  }
#endif
  if (rc == 0)
    rc = mbedtls_x509write_crt_set_validity(&crt, validity_time(now - 86400).c_str(),
                                            validity_time(now + 3650L * 86400).c_str());
  if (rc == 0) rc = mbedtls_x509write_crt_set_basic_constraints(&crt, 0, -1);
  if (rc == 0)
    rc = mbedtls_x509write_crt_pem(&crt, buf, sizeof buf, mbedtls_ctr_drbg_random, &drbg);
  if (rc == 0) cert_pem = reinterpret_cast<const char*>(buf);
  if (rc == 0) rc = mbedtls_pk_write_key_pem(&key, buf, sizeof buf);
  if (rc == 0) key_pem = reinterpret_cast<const char*>(buf);
  mbedtls_platform_zeroize(buf, sizeof buf);
  mbedtls_x509write_crt_free(&crt);
  mbedtls_pk_free(&key);
  mbedtls_ctr_drbg_free(&drbg);
  mbedtls_entropy_free(&entropy);
  if (rc != 0) error = "cannot make a self-signed certificate: " + tls_error_text(rc);
  return rc == 0;
}

}  // namespace

std::shared_ptr<const tls_credentials> load_tls_credentials(const tls_options& options,
                                                            std::string& error, std::string& note) {
  std::string cert = options.cert_file, key = options.key_file;
  if (cert.empty() != key.empty()) {
    error = "a TLS certificate needs its key, and a key its certificate";
    return nullptr;
  }
  if (cert.empty()) {
    cert = options.state_dir + "/self-signed-cert.pem";
    key = options.state_dir + "/self-signed-key.pem";
    if (::access(cert.c_str(), F_OK) != 0 || ::access(key.c_str(), F_OK) != 0) {
      std::string cert_pem, key_pem;
      if (!make_self_signed(options.hostname, cert_pem, key_pem, error)) return nullptr;
      // Started as root with --user, the server rereads the pair as that
      // user on SIGHUP: the folder it makes and the pair are the user's.
      int e = store::make_dirs(options.state_dir, options.owner);
      if (!e) e = write_file(key, key_pem, 0600, options.owner);
      if (!e) e = write_file(cert, cert_pem, 0644, options.owner);
      // The renames reach the disk, or a crash may leave no pair (and the
      // next start a new certificate that clients who pinned it refuse).
      if (!e) e = store::fsync_dir(options.state_dir);
      if (e) {
        error = fmt::format(FMT_STRING("cannot write a self-signed certificate into {}: {}"),
                            options.state_dir, std::strerror(e));
        return nullptr;
      }
      note = fmt::format(FMT_STRING("made a self-signed certificate for {} in {}"),
                         options.hostname, cert);
    } else {
      note = fmt::format(FMT_STRING("using the self-signed certificate {}"), cert);
    }
  }
  auto creds = std::make_shared<tls_credentials>();
  if (creds->load(cert, key, error) != 0) return nullptr;
  return creds;
}

}  // namespace inboxd

namespace inboxd::net {

tls_stream::tls_stream(std::shared_ptr<const tls_credentials> credentials)
    : credentials_(std::move(credentials)) {
  mbedtls_ssl_init(&ssl_);
  error_ = mbedtls_ssl_setup(&ssl_, credentials_->config());
  mbedtls_ssl_set_bio(&ssl_, this, send_cb, recv_cb, nullptr);
}

tls_stream::~tls_stream() {
  mbedtls_ssl_free(&ssl_);
}

int tls_stream::send_cb(void* ctx, const unsigned char* buf, size_t len) noexcept {
  auto* self = static_cast<tls_stream*>(ctx);
  // No exception may leave this mbedTLS callback: no memory fails the write.
  try {
    self->out_.append(reinterpret_cast<const char*>(buf), len);
  } catch (...) {
    return MBEDTLS_ERR_SSL_ALLOC_FAILED;
  }
  return static_cast<int>(len);
}

int tls_stream::recv_cb(void* ctx, unsigned char* buf, size_t len) noexcept {
  auto* self = static_cast<tls_stream*>(ctx);
  std::size_t avail = self->in_.size() - self->in_off_;
  if (avail == 0) return MBEDTLS_ERR_SSL_WANT_READ;
  std::size_t n = len < avail ? len : avail;
  std::memcpy(buf, self->in_.data() + self->in_off_, n);
  self->in_off_ += n;
  if (self->in_off_ == self->in_.size()) {
    self->in_.clear();
    self->in_off_ = 0;
  }
  return static_cast<int>(n);
}

tls_stream::status tls_stream::fail(int code) {
  error_ = code;
  return status::failed;
}

int tls_stream::set_hostname(const std::string& name) {
  return mbedtls_ssl_set_hostname(&ssl_, name.c_str());
}

tls_stream::status tls_stream::handshake() {
  if (error_) return status::failed;
  std::uint64_t parsed = tickets_parsed;
  int rc = mbedtls_ssl_handshake(&ssl_);
  // A ticket that parsed inside this call was this handshake's: the
  // server then resumes its session (RFC 5077 3.1).
  if (tickets_parsed != parsed) resumed_ = true;
  if (rc == 0) {
    established_ = true;
    return status::ok;
  }
  if (rc == MBEDTLS_ERR_SSL_WANT_READ || rc == MBEDTLS_ERR_SSL_WANT_WRITE) return status::want_read;
  return fail(rc);
}

tls_stream::status tls_stream::read(char* buf, std::size_t cap, std::size_t& n) {
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

tls_stream::status tls_stream::write(std::string_view plain) {
  while (!plain.empty()) {
    if (error_) return status::failed;
    int rc = mbedtls_ssl_write(&ssl_, reinterpret_cast<const unsigned char*>(plain.data()),
                               plain.size());
    if (rc < 0) return fail(rc);
    plain.remove_prefix(static_cast<std::size_t>(rc));
  }
  return status::ok;
}

void tls_stream::close_notify() {
  if (established_ && !error_ && !notified_) mbedtls_ssl_close_notify(&ssl_);
  notified_ = true;
}

bool tls_stream::has_pending_input() const noexcept {
  return in_.size() > in_off_ || mbedtls_ssl_get_bytes_avail(&ssl_) > 0;
}

std::string tls_stream::version() const {
  return mbedtls_ssl_get_version(&ssl_);
}
std::string tls_stream::cipher() const {
  return mbedtls_ssl_get_ciphersuite(&ssl_);
}

}  // namespace inboxd::net
