#include "net/connection.hpp"

#include <algorithm>
#include <cstring>
#include <new>

#include "net/listener.hpp"

namespace inboxd::net {

namespace {
// A client that starts TLS and stops halfway costs one connection, not more.
constexpr std::uint64_t handshake_timeout_ms = 30'000;
// A client that sends commands but never reads its replies is not read any
// further once this much waits for it: memory per connection stays bounded.
constexpr std::size_t max_unsent = 256 * 1024;
// The minimum data rate is judged once DATA has run this long.
constexpr std::uint64_t data_rate_window_ms = 60'000;
// Lingering close: after the last reply, what the client still sends is
// read and dropped for this long at most, and this much at most. Enough
// for what a pipelining client has in flight when the reply comes (the
// socket buffers on both sides); a client that keeps sending past it gets
// the reset it asked for.
constexpr std::uint64_t linger_ms = 2'000;
constexpr std::size_t linger_max_bytes = 4 * 1024 * 1024;

bool is_loopback(std::string_view ip) {
  return ip.starts_with("127.") || ip == "::1" || ip.starts_with("::ffff:127.");
}
}  // namespace

connection::connection(server::state& srv, std::string peer)
    : srv_(srv),
      session_(srv.settings, *this, srv.ids, std::string{}),
      peer_(std::move(peer)),
      id_(++srv.next_connection_id) {}

std::string_view connection::ip() const noexcept {
  std::string_view p = peer_;
  if (p.empty()) return "unknown";
  // format_address() writes "[v6]:port" or "v4:port".
  if (p.front() == '[') return p.substr(1, p.rfind(']') - 1);
  return p.substr(0, p.rfind(':'));
}

void connection::accept(server::state& srv, uv_stream_t* listening, bool implicit_tls, bool lmtp,
                        bool proxy, bool unix_socket) noexcept {
  connection* c = nullptr;
  try {
    c = new connection(srv, {});
  } catch (...) {
    // Out of memory. The client is still accepted, and closed at once:
    // libuv stops watching a listener whose pending client is not accepted.
    srv.logf(log_level::error, "accept: out of memory for a new connection, closing it");
    union any_stream {
      uv_tcp_t tcp;
      uv_pipe_t pipe;
    };
    auto* spare = new (std::nothrow) any_stream;
    if (!spare) return;
    if (unix_socket)
      uv_pipe_init(srv.loop, &spare->pipe, 0);
    else
      uv_tcp_init(srv.loop, &spare->tcp);
    (void)uv_accept(listening, reinterpret_cast<uv_stream_t*>(spare));
    uv_close(reinterpret_cast<uv_handle_t*>(spare),
             [](uv_handle_t* h) { delete reinterpret_cast<any_stream*>(h); });
    return;
  }
  c->unix_ = unix_socket;
  if (unix_socket)
    uv_pipe_init(srv.loop, &c->pipe_, 0);
  else
    uv_tcp_init(srv.loop, &c->tcp_);
  uv_timer_init(srv.loop, &c->timer_);
  c->tcp_.data = c->timer_.data = c;
  c->open_handles_ = 2;
  if (int rc = uv_accept(listening, c->stream()); rc != 0) {
    srv.logf(log_level::warning, "accept failed: {} ({})", uv_strerror(rc), uv_err_name(rc));
    c->close();
    return;
  }
  // Link first, so that close_cb always finds it in the list.
  c->next = srv.connections;
  if (srv.connections) srv.connections->prev = c;
  srv.connections = c;
  ++srv.connection_count;
  ++srv.metrics.connections;
  c->guard([&] { c->start(implicit_tls, lmtp, proxy); });
}

void connection::start(bool implicit_tls, bool lmtp, bool proxy) {
  server::state& srv = srv_;
  sockaddr_storage addr{};
  int len = sizeof addr;
  key_ = "unknown";
  session_.set_lmtp(lmtp);
  bool known = false;
  if (unix_) {
    // A local client has no address: the session names it "unix socket",
    // and all such clients share one key (the per-address limits skip them).
    peer_ = "unix socket";
    key_ = peer_;
    session_.set_client_address({});
  } else {
    if (uv_tcp_getpeername(&tcp_, reinterpret_cast<sockaddr*>(&addr), &len) == 0) {
      const auto* sa = reinterpret_cast<const sockaddr*>(&addr);
      peer_ = format_address(sa);
      key_ = limit_key(sa, srv.config.ipv6_prefix_length);
      known = true;
    }
    session_.set_client_address(std::string(ip()));
    // Replies are small and pipelined batches go out in one write: no Nagle delay.
    uv_tcp_nodelay(&tcp_, 1);
  }
  srv.logf(log_level::info, "conn={} connect from {}{}{}{}", id_, peer_,
           implicit_tls ? " (implicit TLS)" : "", lmtp ? " (LMTP)" : "",
           proxy ? " (PROXY protocol)" : "");
  // XCLIENT is for the networks of xclient_from; behind a PROXY header, the
  // client it names is the one judged (use_proxy_header).
  if (known)
    session_.set_xclient_allowed(in_networks(srv.xclient_from, reinterpret_cast<sockaddr*>(&addr)));
  if (proxy) {
    // Only a trusted proxy may name the client: anyone else could pose as
    // any address, and so past every per-address limit.
    if (!unix_ && !(known && in_networks(srv.proxy_from, reinterpret_cast<sockaddr*>(&addr)))) {
      srv.logf(log_level::warning, "conn={} refused: {} may not send a PROXY header (proxy-from)",
               id_, ip());
      return close();
    }
    // Until the header names the client, only the total limit can apply:
    // the per-address ones count the client, not the proxy. A client that
    // never sends it holds one slot of the total, and its few header bytes,
    // for proxy_timeout at most.
    implicit_tls_ = implicit_tls;
    if (srv.admitted >= srv.max_connections) {
      (void)over_limits();
      return;
    }
    admit_total();
    proxy_ = std::make_unique<proto::proxy_header_parser>();
    start_timer(timer_use::proxy_header,
                static_cast<std::uint64_t>(srv.config.proxy_timeout.count()));
    update_reading();
    return;
  }
  begin(implicit_tls);
}

// What follows the PROXY header, or the accept: the limits, then the
// greeting or the TLS handshake.
void connection::begin(bool implicit_tls) {
  server::state& srv = srv_;
  if (over_limits()) return;
  admit();
  if (srv.config.greeting_delay.count() > 0 && !implicit_tls && !srv.shutting_down) {
    // Bytes after a PROXY header, before the greeting: an early talker.
    if (in_len_ > 0) {
      session_.refuse_pregreet();
      in_len_ = 0;
      return run();
    }
    // The greeting waits; a client that talks meanwhile is an early talker.
    start_timer(timer_use::greeting, static_cast<std::uint64_t>(srv.config.greeting_delay.count()));
    update_reading();
    return;
  }
  if (implicit_tls) {
    // reconfigure() refuses to take the credentials away from an
    // implicit-TLS listener; should they be missing all the same, this
    // client is closed, not the process.
    if (!srv.settings->tls) {
      srv.logf(log_level::error, "conn={} no TLS credentials for an implicit-TLS listener", id_);
      return close();
    }
    // RFC 8314: TLS first; the greeting comes once the handshake is done.
    implicit_tls_ = true;
    tls_ = std::make_unique<tls_stream>(srv.settings->tls);
    // What came after a PROXY header is the start of the handshake.
    if (in_len_ > 0) {
      tls_->feed({in_, in_len_});
      in_len_ = 0;
    }
    start_timer(timer_use::handshake, handshake_timeout_ms);
  } else if (srv.shutting_down) {
    session_.shutdown();
  } else {
    session_.start();
  }
  run();
}

// Takes what was read into the PROXY header; once it is complete, what is
// left in the buffer is the stream after it (SMTP, or a TLS handshake).
void connection::read_proxy_header() {
  auto r = proxy_->feed({in_, in_len_});
  if (r.st == proto::proxy_header_parser::status::error) {
    srv_.logf(log_level::warning, "conn={} refused: bad PROXY header from {}: {}", id_, ip(),
              proxy_->error());
    return close();
  }
  if (r.consumed > 0 && r.consumed < in_len_)
    std::memmove(in_, in_ + r.consumed, in_len_ - r.consumed);
  in_len_ -= r.consumed;
  if (r.st == proto::proxy_header_parser::status::need_more) {
    if (eof_) {
      srv_.logf(log_level::info, "conn={} closed by {} before its PROXY header was complete", id_,
                ip());
      return close();
    }
    if (in_len_ == 0) release_buffer();
    return;
  }
  timer_use_ = timer_use::none;
  uv_timer_stop(&timer_);
  use_proxy_header();
  proxy_.reset();
  begin(implicit_tls_);
}

// The client the header names is the client from now on: its address is
// the log's peer, the Received header's, and the per-address limits' key.
void connection::use_proxy_header() {
  const proto::proxy_info& h = proxy_->info();
  std::string via = peer_;
  if (!h.local) {
    const auto* sa = reinterpret_cast<const sockaddr*>(&h.source);
    peer_ = format_address(sa);
    key_ = limit_key(sa, srv_.config.ipv6_prefix_length);
    carried_ = true;
    session_.set_client_address(std::string(ip()));
    session_.set_xclient_allowed(in_networks(srv_.xclient_from, sa));
  }
  std::string tls;
  if (h.ssl)
    tls = fmt::format(FMT_STRING(", TLS at the proxy: {} {}{}"), proto::printable(h.ssl_version),
                      proto::printable(h.ssl_cipher),
                      h.ssl_verified ? ", client certificate verified" : "");
  if (h.local)
    srv_.logf(log_level::info,
              "conn={} PROXY v{} from {}: no client address (LOCAL), the proxy's own is used{}",
              id_, h.version, via, tls);
  else
    srv_.logf(log_level::info, "conn={} PROXY v{} from {}: client {} to {}{}", id_, h.version, via,
              peer_, format_address(reinterpret_cast<const sockaddr*>(&h.destination)), tls);
}

// Runs the work of a libuv callback. An exception from it (std::bad_alloc
// from a string, in practice: the sink, the policy and the authenticator
// are guarded inside the session, and the logger inside logf) must not
// reach libuv, whose callbacks are noexcept: it closes this connection, and
// the others are served on.
// (The text of an exception is logged inside its catch block: the exception,
// and its what(), end with the block.)
template <typename F>
void connection::guard(F&& work) noexcept {
  try {
    work();
    return;
  } catch (const std::exception& e) {
    srv_.logf(log_level::error, "conn={} closed after an exception: {}", id_, e.what());
  } catch (...) {
    srv_.logf(log_level::error, "conn={} closed after an exception", id_);
  }
  close();
}

// Refuses a client over a connection limit: one 421 line, written without
// reading anything from it, then the lingering close (the client may have
// pipelined commands already). Returns true when refused.
//
// Tables: per_ip is only looked up here (an entry is made by admit()), and
// the rate table gets an entry only for a client within the other limits,
// so a refused client leaves no entry behind.
bool connection::over_limits() {
  server::state& srv = srv_;
  const server_config& cfg = srv.config;
  std::string_view why;
  bool per_ip = (!unix_ || carried_) && (cfg.limit_loopback || !is_loopback(ip()));
  refusal kind = refusal::total;  // for the metrics: which limit refused
  // A PROXY connection was counted in the total before its header.
  if (!admitted_ && srv.admitted >= srv.max_connections) why = "too many connections";
  if (why.empty() && per_ip && cfg.max_connections_per_ip) {
    auto it = srv.per_ip.find(key_);
    if (it != srv.per_ip.end() && it->second >= cfg.max_connections_per_ip)
      why = "too many connections from this address", kind = refusal::per_ip;
  }
  if (why.empty() && per_ip && cfg.connection_rate_per_ip) {
    std::uint64_t now = uv_now(srv.loop);
    // Addresses seen once would pile up under a scan: drop the minutes that
    // are over, once the table has doubled since the last sweep (so that a
    // full table is not swept again at every connection).
    if (srv.rates.size() >= srv.rates_sweep_at) {
      std::erase_if(srv.rates, [now](const auto& e) { return now - e.second.start >= 60'000; });
      srv.rates_sweep_at = std::max<std::size_t>(10'000, 2 * srv.rates.size());
    }
    auto& w = srv.rates[key_];
    if (now - w.start >= 60'000) w = {now, 0};
    if (++w.count > cfg.connection_rate_per_ip)
      why = "too many connections per minute from this address", kind = refusal::rate;
  }
  if (why.empty()) return false;
  ++srv.metrics.refused[static_cast<std::size_t>(kind)];
  bool grouped = key_ != ip();
  srv.logf(log_level::warning, "conn={} refused: {} ({}{}{})", id_, why, ip(),
           grouped ? " in " : "", grouped ? std::string_view(key_) : "");
  out_ = fmt::format(FMT_STRING("421 4.7.0 {} Error: {}, try again later\r\n"),
                     srv.settings->limits.hostname, why);
  finish();
  return true;
}

void connection::admit_total() {
  if (std::exchange(admitted_, true)) return;
  ++srv_.admitted;
}

void connection::admit() {
  admit_total();
  ++srv_.per_ip[key_];
  keyed_ = true;
}

// A connection stops counting against the limits when it closes, or when it
// starts to linger (its client is done with).
void connection::unadmit() noexcept {
  if (std::exchange(keyed_, false))
    if (auto it = srv_.per_ip.find(key_); it != srv_.per_ip.end() && --it->second == 0)
      srv_.per_ip.erase(it);
  if (std::exchange(admitted_, false)) --srv_.admitted;
}

void connection::shutdown() noexcept {
  if (closing_ || finishing_) return;
  guard([&] {
    session_.shutdown();
    run();
  });
}

// Feeds what was read, sends what the session answered, and decides whether
// to read on. Called after every read, write, timer and sink completion.
void connection::run() {
  if (closing_ || lingering_) return;
  if (finishing_) return finish();
  for (;;) {
    if (tls_ && !advance_tls()) return;
    std::size_t pulled = tls_ ? pull_plaintext() : 0;
    if (closing_) return;
    std::size_t used = 0;
    if (in_len_ > 0 && !session_.waiting() && !session_.closing() && unsent() < max_unsent) {
      used = session_.feed({in_, in_len_});
      // Compact between commands only: what is left is a partial command line.
      if (used > 0 && used < in_len_) std::memmove(in_, in_ + used, in_len_ - used);
      in_len_ -= used;
    }
    if (session_.starttls_requested() && !tls_) {
      begin_starttls();
      continue;
    }
    // Replies leave as they are made, once per pass: feed() stops at a
    // bound, so a long pipelined batch takes several passes.
    flush();
    if (closing_) return;
    bool more_input = in_len_ > 0 || (tls_ && tls_->established() && tls_->has_pending_input());
    if ((used == 0 && pulled == 0) || !more_input || session_.waiting() || session_.closing() ||
        unsent() >= max_unsent)
      break;
  }
  if (in_len_ == 0) release_buffer();
  stash_partial();
  if (session_.closing() && tls_ && tls_->established() && !closing_) {
    // After the last reply, a close_notify alert (RFC 8446 6.1).
    tls_->close_notify();
    flush();
  }
  if (closing_) return;
  // At EOF, what is left is run first, unless it is a partial line.
  bool input_left = in_len_ > 0 && unsent() >= max_unsent;
  // A client gone mid-handshake is gone: nothing more can come.
  bool handshake_over = eof_ && tls_ && !tls_->established();
  bool client_gone = (eof_ && !session_.waiting() && !input_left) || handshake_over;
  if (client_gone && !write_) return close();
  if (session_.closing() || client_gone) return finish();
  update_reading();
  // The command timeout runs from the last complete command; in DATA, from
  // the last bytes (the minimum rate deals with trickling).
  bool progress = session_.in_data() ? got_bytes_ : session_.commands() != commands_seen_;
  got_bytes_ = false;
  commands_seen_ = session_.commands();
  if (timer_use_ == timer_use::none || (timer_use_ == timer_use::idle && progress)) arm_idle();
}

// RFC 5321 4.5.3.2: the client has this long for its next command, or for
// more DATA. While the session waits for the sink, the wait is ours.
void connection::arm_idle() {
  if (session_.closing() || closing_) return;
  auto ms = session_.in_data() ? srv_.config.data_timeout : srv_.config.command_timeout;
  start_timer(timer_use::idle, static_cast<std::uint64_t>(ms.count()));
}

// Cuts off a client that trickles its DATA below the minimum rate.
void connection::note_data_rate(std::size_t bytes) {
  if (!session_.in_data()) {
    data_start_ = 0;
    return;
  }
  std::uint64_t now = uv_now(srv_.loop);
  if (data_start_ == 0) {
    data_start_ = now;
    data_bytes_ = 0;
  }
  data_bytes_ += bytes;
  std::uint64_t elapsed = now - data_start_;
  std::size_t min_rate = srv_.config.min_data_rate;
  auto window = static_cast<std::uint64_t>(srv_.config.min_data_rate_window.count());
  if (min_rate && elapsed >= window && elapsed > 0 && data_bytes_ * 1000 / elapsed < min_rate)
    session_.time_out(proto::reply_id::too_slow);
}

// Drives the handshake; false when the connection is done for.
bool connection::advance_tls() {
  if (tls_->established()) return true;
  auto st = tls_->handshake();
  if (st == tls_stream::status::failed) {
    ++srv_.metrics.tls_failed;
    srv_.logf(log_level::info, "conn={} TLS handshake failed: {}", id_,
              tls_error_text(tls_->error()));
    flush();  // The alert, if mbedTLS made one.
    finish();
    return false;
  }
  if (st == tls_stream::status::ok) {
    ++(tls_->resumed() ? srv_.metrics.tls_resumed : srv_.metrics.tls_full);
    timer_use_ = timer_use::none;
    uv_timer_stop(&timer_);
    session_.tls_started(
        fmt::format(FMT_STRING("{} with cipher {}"), tls_->version(), tls_->cipher()));
    if (implicit_tls_) {
      if (srv_.shutting_down)
        session_.shutdown();
      else
        session_.start();
    }
  }
  return true;
}

// Decrypts into the session's input buffer while it has room; returns how
// many bytes came out.
std::size_t connection::pull_plaintext() {
  std::size_t pulled = 0;
  while (tls_->established() && !eof_ && !session_.waiting() && !session_.closing()) {
    take_buffer();
    if (in_len_ == buffer_pool::buffer_size) break;
    std::size_t n = 0;
    auto st = tls_->read(in_ + in_len_, buffer_pool::buffer_size - in_len_, n);
    in_len_ += n;
    pulled += n;
    if (st == tls_stream::status::want_read) break;
    if (st == tls_stream::status::closed) eof_ = true;
    if (st == tls_stream::status::failed) {
      srv_.logf(log_level::info, "conn={} TLS read failed: {}", id_, tls_error_text(tls_->error()));
      close();
      break;
    }
  }
  return pulled;
}

void connection::begin_starttls() {
  // The session offers STARTTLS only with credentials, and takes up the
  // server's settings before each command outside a transaction, so they
  // are there; should they not be, this client is closed, not the process.
  if (!srv_.settings->tls) {
    srv_.logf(log_level::error, "conn={} STARTTLS without TLS credentials", id_);
    return close();
  }
  // The 220 goes out in plaintext, ahead of everything encrypted.
  flush();
  // RFC 3207 / CVE-2011-0411: what the client sent after STARTTLS, before
  // the handshake, is not trusted: drop it.
  if (in_len_ > 0) {
    srv_.logf(log_level::warning, "conn={} dropped {} byte(s) sent after STARTTLS before TLS", id_,
              in_len_);
    in_len_ = 0;
  }
  tls_ = std::make_unique<tls_stream>(srv_.settings->tls);
  start_timer(timer_use::handshake, handshake_timeout_ms);
}

void connection::flush() {
  std::string& plain = session_.output();
  if (!plain.empty()) {
    if (!tls_) {
      if (out_.empty())
        out_.swap(plain);
      else
        out_.append(plain);
      plain.clear();
    } else if (tls_->established()) {
      tls_->write(plain);
      plain.clear();
    }
  }
  if (tls_ && !tls_->output().empty()) {
    out_.append(tls_->output());
    tls_->output().clear();
  }
  send();
}

void connection::send() {
  if (out_.empty() || write_ || closing_) return;
  uv_buf_t buf = uv_buf_init(out_.data(), static_cast<unsigned>(out_.size()));
  int n = uv_try_write(stream(), &buf, 1);
  if (n == static_cast<int>(out_.size())) {
    out_.clear();
    return;
  }
  if (n < 0 && n != UV_EAGAIN) {
    srv_.logf(log_level::info, "conn={} write failed: {}", id_, uv_err_name(n));
    return close();
  }
  // The socket is full: hand the rest to libuv and keep it alive until
  // write_cb. (libuv tries the write once more at once, as uv_write always
  // does on an empty queue: one extra write() when a socket fills up, which
  // happens only to a client that does not keep up with its replies.)
  auto w = std::make_unique<pending_write>();
  w->bytes.assign(out_, n > 0 ? static_cast<std::size_t>(n) : 0);
  out_.clear();
  buf = uv_buf_init(w->bytes.data(), static_cast<unsigned>(w->bytes.size()));
  w->req.data = this;
  write_ = std::move(w);
  if (int rc = uv_write(&write_->req, stream(), &buf, 1, write_cb); rc != 0) {
    write_.reset();
    srv_.logf(log_level::info, "conn={} write failed: {}", id_, uv_err_name(rc));
    close();
  }
}

void connection::update_reading() {
  if (finishing_) return;
  // During a handshake the session waits (for TLS), but the handshake reads.
  bool handshaking = tls_ && !tls_->established();
  // While the session waits (a commit, a credentials check, a delay), a
  // plaintext connection reads on into its input buffer, which is bounded:
  // once it is full alloc_cb gives libuv no room, read_cb gets UV_ENOBUFS,
  // and reading stops here until the session is fed again. Stopping at every
  // wait instead would cost two epoll_ctl per message. Under TLS, ciphertext
  // read meanwhile would pile up in the TLS stream unbounded: it stops.
  // So it does in a tarpit's delay: a client kept waiting on purpose is
  // not read ahead (its bytes wait in the kernel, not in a buffer of ours).
  // In DATA a wait is the sink's backpressure (or the memory budget): reading
  // ahead then would fill 64 KiB per connection and defeat it.
  bool room = !tls_ && in_len_ < buffer_pool::buffer_size && timer_use_ != timer_use::sleep &&
              !session_.in_data();
  bool want = !eof_ && !session_.closing() && unsent() < max_unsent &&
              (handshaking || room || !session_.waiting());
  if (want == reading_) return;
  reading_ = want;
  if (want) {
    if (int rc = uv_read_start(stream(), alloc_cb, read_cb); rc != 0) {
      srv_.logf(log_level::warning, "conn={} read failed: {}", id_, uv_err_name(rc));
      close();
    }
  } else {
    uv_read_stop(stream());
  }
}

// A client that dribbles a command keeps a partial line between reads. Held
// in the 64 KiB read buffer, 10,000 such clients would pin 640 MB; held
// apart, each pins its few bytes, and the buffer goes back to the pool.
void connection::stash_partial() {
  // Held back by unread replies, the input is whole commands still to run,
  // not a partial line: it stays in the buffer, where run() finds it.
  if (!in_ || in_len_ == 0 || in_len_ > 4096 || session_.waiting() || unsent() >= max_unsent)
    return;
  partial_.assign(in_, in_len_);
  give_back(std::exchange(in_, nullptr));
  in_len_ = 0;
}

// The read buffer, with a stashed partial line back at its start.
void connection::take_buffer() {
  if (in_) return;
  in_ = srv_.buffers.take();
  std::memcpy(in_, partial_.data(), partial_.size());
  in_len_ = partial_.size();
  partial_.clear();
}

void connection::release_buffer() {
  if (!in_) return;
  give_back(in_);
  in_ = nullptr;
  in_len_ = 0;
}

// The pool's free list may have to grow to take a buffer back; if it cannot,
// the buffer is freed instead. close() uses this, so it cannot throw.
void connection::give_back(char* buffer) noexcept {
  try {
    srv_.buffers.give_back(buffer);
  } catch (...) {
    delete[] buffer;
  }
}

void connection::start_timer(timer_use use, std::uint64_t ms) {
  timer_use_ = use;
  uv_timer_start(&timer_, timer_cb, ms, 0);
}

// The server is done with this client: the session is closing (its last
// replies are in out_), or the client was refused, or the TLS handshake
// failed. Once everything is written, the lingering close follows; a client
// that does not read its last replies has the command timeout to do so, as
// it has for any reply (RFC 5321 4.5.3.2).
void connection::finish() {
  finishing_ = true;
  if (reading_) {
    reading_ = false;
    uv_read_stop(stream());
  }
  send();
  if (closing_) return;
  if (!write_) return linger();
  if (timer_use_ != timer_use::last_write)
    start_timer(timer_use::last_write,
                static_cast<std::uint64_t>(srv_.config.command_timeout.count()));
}

// nginx's lingering close: shut the write side (the client reads the last
// reply, then the end of the stream), read and drop what it still sends
// until it closes, for linger_ms and linger_max_bytes at most, then close.
// Closing over unread input instead would make the kernel send a reset
// (RFC 1122 4.2.2.13), and a client that stops at its failed send, or whose
// stack drops what it had not read, never sees the reply.
//
// A lingering connection no longer counts against the connection limits; it
// is no client any more, and what it reads goes to no session. At most
// srv_.max_lingering connections linger at once; past that they close at
// once, so that lingering cannot run the server out of descriptors.
void connection::linger() {
  if (closing_ || lingering_) return;
  if (eof_ || srv_.lingering >= srv_.max_lingering) return close();
  lingering_ = true;
  ++srv_.lingering;
  unadmit();
  session_.disconnect();
  partial_ = {};
  release_buffer();
  if (raw_) give_back(std::exchange(raw_, nullptr));
  // Allocated only now, so that no connection carries one it may never
  // use; shutdown_cb frees it (libuv calls it even on close).
  auto* req = new (std::nothrow) uv_shutdown_t;
  if (!req) return close();
  req->data = this;
  if (uv_shutdown(req, stream(), shutdown_cb) != 0) {
    delete req;
    return close();
  }
  start_timer(timer_use::linger, linger_ms);
  reading_ = true;
  if (uv_read_start(stream(), alloc_cb, read_cb) != 0) return close();
  // A shutdown may now be left with lingering connections only.
  if (srv_.shutting_down) srv_.maybe_done();
}

void connection::close() noexcept {
  if (closing_) return;
  closing_ = true;
  if (lingering_) --srv_.lingering;
  partial_ = {};
  session_.disconnect();
  release_buffer();
  if (raw_) give_back(std::exchange(raw_, nullptr));
  uv_close(reinterpret_cast<uv_handle_t*>(&tcp_), close_cb);
  uv_close(reinterpret_cast<uv_handle_t*>(&timer_), close_cb);
}

void connection::session_ready() noexcept {
  guard([&] { run(); });
}

void connection::session_log(log_level level, std::string_view line) noexcept {
  srv_.log_conn(level, id_, line);
}

void connection::session_sleep(std::uint32_t milliseconds) noexcept {
  if (finishing_) return;
  start_timer(timer_use::sleep, milliseconds);
}

void connection::timer_cb(uv_timer_t* timer) noexcept {
  auto* self = static_cast<connection*>(timer->data);
  self->guard([self] { self->on_timer(); });
}

void connection::on_timer() {
  timer_use use = std::exchange(timer_use_, timer_use::none);
  switch (use) {
    case timer_use::handshake:
      ++srv_.metrics.tls_failed;
      srv_.logf(log_level::info, "conn={} TLS handshake timed out", id_);
      return close();
    case timer_use::proxy_header:
      srv_.logf(log_level::warning, "conn={} refused: no PROXY header from {} within {} ms", id_,
                ip(), srv_.config.proxy_timeout.count());
      return close();
    case timer_use::last_write:
      srv_.logf(log_level::info, "conn={} last replies not read in time", id_);
      return close();
    case timer_use::linger: return close();
    case timer_use::greeting:
      if (srv_.shutting_down)
        session_.shutdown();
      else
        session_.start();
      break;
    case timer_use::sleep: session_.wake(); break;
    case timer_use::idle:
      if (session_.waiting()) break;  // Waiting for the sink: our delay, not theirs.
      session_.time_out(proto::reply_id::timeout);
      break;
    case timer_use::none: break;
  }
  run();
}

void connection::alloc_cb(uv_handle_t* handle, size_t, uv_buf_t* buf) noexcept {
  auto* self = static_cast<connection*>(handle->data);
  *buf = uv_buf_init(nullptr, 0);
  if (self->lingering_) {
    *buf = uv_buf_init(self->srv_.discard, sizeof self->srv_.discard);
    return;
  }
  try {
    if (self->tls_) {
      if (!self->raw_) self->raw_ = self->srv_.buffers.take();
      *buf = uv_buf_init(self->raw_, static_cast<unsigned>(buffer_pool::buffer_size));
      return;
    }
    self->take_buffer();
  } catch (...) {
    // No memory for a buffer: read_cb gets UV_ENOBUFS and closes.
    self->alloc_failed_ = true;
    return;
  }
  // A full buffer gives libuv no room: the read fails with UV_ENOBUFS.
  *buf = uv_buf_init(self->in_ + self->in_len_,
                     static_cast<unsigned>(buffer_pool::buffer_size - self->in_len_));
}

void connection::read_cb(uv_stream_t* stream, ssize_t nread, const uv_buf_t* buf) noexcept {
  auto* self = static_cast<connection*>(stream->data);
  if (self->lingering_) {
    // Dropped unread. The client's end of stream, an error or the cap ends it.
    if (nread > 0) self->lingered_ += static_cast<std::size_t>(nread);
    if ((nread < 0 && nread != UV_ENOBUFS) || self->lingered_ > linger_max_bytes) self->close();
    return;
  }
  if (std::exchange(self->alloc_failed_, false)) {
    self->srv_.logf(log_level::error, "conn={} out of memory for a read buffer", self->id_);
    return self->close();
  }
  self->guard([&] { self->on_read(nread, buf); });
}

void connection::on_read(ssize_t nread, const uv_buf_t* buf) {
  if (nread > 0 && timer_use_ == timer_use::greeting) {
    // RFC 5321 4.3.1: the client waits for the greeting. One that does not
    // is a spam engine or a misconfigured program (Postfix's postscreen).
    session_.refuse_pregreet();
    ++srv_.metrics.refused[static_cast<std::size_t>(refusal::early_talker)];
    timer_use_ = timer_use::none;
    uv_timer_stop(&timer_);
    in_len_ = 0;
    return run();
  }
  if (nread > 0) {
    got_bytes_ = true;
    note_data_rate(static_cast<std::size_t>(nread));
    if (raw_ && buf->base == raw_)
      tls_->feed({raw_, static_cast<std::size_t>(nread)});
    else
      in_len_ += static_cast<std::size_t>(nread);
  } else if (nread == UV_EOF) {
    eof_ = true;
  } else if (nread < 0 && nread != UV_ENOBUFS) {
    srv_.logf(log_level::info, "conn={} read failed: {}", id_,
              uv_err_name(static_cast<int>(nread)));
    return close();
  }
  if (raw_) give_back(std::exchange(raw_, nullptr));
  if (proxy_) return read_proxy_header();
  run();
}

void connection::write_cb(uv_write_t* req, int status) noexcept {
  auto* self = static_cast<connection*>(req->data);
  self->write_.reset();
  if (self->closing_) return;
  if (status < 0) {
    self->srv_.logf(log_level::info, "conn={} write failed: {}", self->id_, uv_err_name(status));
    return self->close();
  }
  self->guard([self] { self->run(); });
}

void connection::shutdown_cb(uv_shutdown_t* req, int status) noexcept {
  auto* self = static_cast<connection*>(req->data);
  delete req;
  // UV_ECANCELED: closed meanwhile (the handle is still there until close_cb).
  if (self->closing_) return;
  if (status < 0) self->close();
}

void connection::close_cb(uv_handle_t* handle) noexcept {
  auto* self = static_cast<connection*>(handle->data);
  if (--self->open_handles_ > 0) return;
  server::state& srv = self->srv_;
  bool linked = self->prev || self->next || srv.connections == self;
  if (linked) {
    if (self->prev)
      self->prev->next = self->next;
    else
      srv.connections = self->next;
    if (self->next) self->next->prev = self->prev;
    --srv.connection_count;
    self->unadmit();
    srv.logf(log_level::info, "conn={} disconnect from {}", self->id_, self->peer_);
  }
  delete self;
  srv.maybe_done();
}

}  // namespace inboxd::net
