#include "bench/client.hpp"

#include <cstdio>
#include <cstring>

#include "bench/run.hpp"

namespace inboxd::bench {

namespace {

conn_error classify(int uv_code, bool connecting) noexcept {
  switch (uv_code) {
    case UV_ECONNREFUSED:
    case UV_ENETUNREACH:
    case UV_EHOSTUNREACH:
    case UV_EADDRNOTAVAIL: return conn_error::refused;
    case UV_ECONNRESET:
    case UV_EPIPE:
    case UV_ECONNABORTED: return conn_error::reset;
    case UV_ETIMEDOUT: return conn_error::timeout;
    case UV_EOF: return conn_error::closed;
    default: return connecting ? conn_error::refused : conn_error::other;
  }
}

constexpr std::string_view crlf = "\r\n";

}  // namespace

client::client(run& r, unsigned index) : run_(r), index_(r.opt().connection_base + index) {
  // Room for a whole pipelined batch, so that appending never allocates.
  std::size_t batch = 64 + (r.opt().recipients + 1) * 96;
  out_.reserve(batch);
  sending_.reserve(batch);
  if (!r.from().uses_message() && !r.to().uses_message()) {
    append_group(0);
    group_.swap(out_);
    out_.reserve(batch + group_.size());
  }
  if (r.opt().tls != tls_mode::none) tls_ = std::make_unique<tls_client_stream>(*r.tls_config());
}

void client::connect() {
  reconnect_at_ns = 0;
  state_ = state::connecting;
  in_len_ = 0;
  out_.clear();
  writing_ = text_queued_ = false;
  pipelining_ = ehlo_pipelining_ = finishing_ = false;
  bdat_ = ehlo_chunking_ = false;
  chained_ = quit_chained_ = false;
  session_failed_ = session_ok_ = false;
  session_messages_ = 0;
  tx_ = next_tx_ = {};
  tls_on_ = false;
  cipher_sending_.clear();
  uv_tcp_init(run_.loop(), &tcp_);
  tcp_.data = this;
  connect_req_.data = this;
  write_req_.data = this;
  connect_ns_ = uv_hrtime();
  expect_reply();
  if (int rc = uv_tcp_connect(&connect_req_, &tcp_, run_.address(), connect_cb); rc != 0)
    fail(classify(rc, true), rc);
}

void client::connect_cb(uv_connect_t* req, int status) noexcept {
  auto* c = static_cast<client*>(req->data);
  // A close() while connecting cancels the request; close_cb follows.
  if (status == UV_ECANCELED || c->state_ != state::connecting) return;
  c->on_connected(status);
}

void client::on_connected(int status) {
  if (status < 0) return fail(classify(status, true), status);
  // Commands are batched by hand: Nagle would only delay the last one.
  uv_tcp_nodelay(&tcp_, 1);
  if (int rc = uv_read_start(stream(), alloc_cb, read_cb); rc != 0)
    return fail(classify(rc, false), rc);
  // RFC 8314 3.3: with implicit TLS the handshake comes first, the greeting inside.
  if (run_.opt().tls == tls_mode::implicit) return begin_tls();
  state_ = state::greeting;
  expect_reply();
}

void client::alloc_cb(uv_handle_t* handle, size_t, uv_buf_t* buf) noexcept {
  auto* c = static_cast<client*>(handle->data);
  if (c->tls_on_) {
    // Ciphertext goes to the stream's fixed buffer, empty between reads.
    auto space = c->tls_->read_space();
    *buf = uv_buf_init(space.data(), static_cast<unsigned>(space.size()));
    return;
  }
  // on_read() fails the connection before the buffer is ever full.
  *buf = uv_buf_init(c->in_.data() + c->in_len_, static_cast<unsigned>(in_capacity - c->in_len_));
}

void client::read_cb(uv_stream_t* stream, ssize_t nread, const uv_buf_t*) noexcept {
  auto* c = static_cast<client*>(stream->data);
  if (c->state_ == state::closing) return;
  c->on_read(nread);
}

void client::on_read(ssize_t nread) {
  if (nread == 0) return;
  if (nread < 0) {
    // After QUIT, the server's close is the expected end.
    if (state_ == state::quit) return close();
    return fail(classify(static_cast<int>(nread), false), static_cast<int>(nread));
  }
  if (!tls_on_) {
    in_len_ += static_cast<std::size_t>(nread);
    process_lines();
    return;
  }
  tls_->received(static_cast<std::size_t>(nread));
  if (state_ == state::handshake && !advance_handshake()) return;
  if (state_ == state::handshake) return;
  // Decrypt into in_ and handle whole lines, until mbedTLS has taken every
  // byte of ciphertext (it keeps a partial record itself).
  while (state_ != state::closing) {
    std::size_t n = 0;
    auto st = tls_->read(in_.data() + in_len_, in_capacity - in_len_, n);
    if (st == tls_client_stream::status::want_read) break;
    if (st == tls_client_stream::status::closed) return fail(conn_error::closed);
    if (st == tls_client_stream::status::failed) return fail_tls(tls_->error());
    in_len_ += n;
    if (!process_lines()) return;
  }
}

bool client::process_lines() {
  const bool was_tls = tls_on_;
  std::size_t pos = 0;
  while (pos < in_len_) {
    reply_line line;
    std::size_t used = 0;
    auto status = parse_reply_line({in_.data() + pos, in_len_ - pos}, line, used);
    if (status == reply_status::incomplete) break;
    if (status == reply_status::malformed) {
      fail(conn_error::protocol);
      return false;
    }
    pos += used;
    // The line's text is borrowed from in_; on_reply_line() uses it before returning.
    if (!on_reply_line(line)) return false;
    if (tls_on_ != was_tls) {
      // RFC 3207 4: the 220 to STARTTLS is the last plaintext. Anything after
      // it was not protected by TLS (a man in the middle could have put it
      // there), so it is not taken as a reply.
      if (pos != in_len_) {
        fail(conn_error::protocol);
        return false;
      }
      in_len_ = 0;
      return true;
    }
  }
  // Compact between lines only: what is left is the start of a line.
  if (pos > 0) {
    std::memmove(in_.data(), in_.data() + pos, in_len_ - pos);
    in_len_ -= pos;
  }
  // A reply line longer than the whole buffer is not SMTP (RFC 5321 4.5.3.1.5: 512).
  if (in_len_ == in_capacity) {
    fail(conn_error::protocol);
    return false;
  }
  return true;
}

bool client::on_reply_line(const reply_line& line) {
  if (state_ == state::ehlo && line.code == 250 && ehlo_keyword_is(line.text, "PIPELINING"))
    ehlo_pipelining_ = true;
  if (state_ == state::ehlo && line.code == 250 && ehlo_keyword_is(line.text, "CHUNKING"))
    ehlo_chunking_ = true;
  if (!line.last) return true;
  return on_reply(line.code);
}

// One whole reply, in the order the commands went out (RFC 2920 3.1).
bool client::on_reply(int code) {
  const bool ok = code >= 200 && code < 300;
  const unsigned k = run_.opt().recipients;
  switch (state_) {
    case state::closed:
    case state::connecting:
    case state::closing: fail(conn_error::protocol); break;
    case state::greeting:
      if (!ok) {
        run_.session_refused(code, "the session");
        fail(conn_error::rejected);
        break;
      }
      send_ehlo();
      break;
    case state::ehlo:
      if (ok) {
        pipelining_ = ehlo_pipelining_ && run_.opt().pipelining;
        bdat_ = ehlo_chunking_ && run_.opt().bdat;
        after_ehlo();
      } else if (code >= 500 && code <= 502) {
        // An old server: RFC 5321 4.1.4 lets the client fall back to HELO.
        out_.append("HELO ").append(run_.opt().helo).append(crlf);
        state_ = state::helo;
        expect_reply();
        flush();
      } else {
        run_.session_refused(code, "the session");
        fail(conn_error::rejected);
      }
      break;
    case state::helo:
      if (!ok) {
        run_.session_refused(code, "the session");
        fail(conn_error::rejected);
        break;
      }
      pipelining_ = bdat_ = false;
      after_ehlo();
      break;
    case state::starttls:
      if (code != 220) {
        run_.session_refused(code, "STARTTLS");
        fail(conn_error::tls);
        break;
      }
      begin_tls();
      break;
    case state::handshake:
      // Lines are parsed only from plaintext, so this is a reply that
      // arrived unasked in the clear before the handshake (see process_lines).
      fail(conn_error::protocol);
      break;
    case state::auth:
      if (code != 235) {
        // RFC 4954 6: 535 is bad credentials; every refusal counts by code.
        run_.session_refused(code, "AUTH");
        fail(conn_error::auth);
        break;
      }
      run_.auth_accepted();
      on_session_up();
      break;
    case state::ready:
      // Nothing was asked: a 421 is the server closing an idle session.
      fail(code == 421 ? conn_error::closed : conn_error::protocol);
      break;
    case state::mail:
      ++tx_.replies;
      if (!ok) {
        // No transaction was opened, so no RSET is needed.
        end_refused(code);
        transaction_finished();
        next_step();
        break;
      }
      tx_.mail_accepted = true;
      send_rcpt(1);
      break;
    case state::rcpt:
      ++tx_.replies;
      if (ok) {
        ++tx_.rcpt_accepted;
      } else {
        ++tx_.rcpt_refused;
        if (!tx_.refusal) tx_.refusal = code;
      }
      if (tx_.replies - 1 < k) {
        send_rcpt(tx_.replies);
      } else if (tx_.rcpt_accepted > 0) {
        if (bdat_) {
          state_ = state::text;
          send_bdat();
        } else {
          send_data();
        }
      } else {
        end_refused(tx_.refusal);
        send_rset();
      }
      break;
    case state::data:
      ++tx_.replies;
      if (code == 354) {
        send_text();
      } else {
        end_refused(code);
        send_rset();
      }
      break;
    case state::pipelined: {
      unsigned index = tx_.replies++;  // 0: MAIL, 1..k: RCPT, k + 1: DATA
      expect_reply();
      if (index == 0) {
        tx_.mail_accepted = ok;
        if (!ok) tx_.refusal = code;
      } else if (index <= k) {
        if (ok) {
          ++tx_.rcpt_accepted;
        } else {
          ++tx_.rcpt_refused;
          if (!tx_.refusal) tx_.refusal = code;
        }
        // With BDAT the next reply is the message's own: no 354 comes.
        if (bdat_ && index == k) state_ = state::text;
      } else if (code == 354) {
        // A server should refuse DATA when no recipient was accepted (RFC
        // 2920 3.1); when it does not, an empty message ends the data.
        if (tx_.mail_accepted && tx_.rcpt_accepted > 0) {
          send_text();
        } else {
          out_.append(".\r\n");
          state_ = state::text;
          flush();
        }
      } else {
        end_refused(tx_.refusal ? tx_.refusal : code);
        if (tx_.mail_accepted) {
          send_rset();
        } else {
          transaction_finished();
          next_step();
        }
      }
      break;
    }
    case state::text:
      ++tx_.replies;
      if (ok && tx_.mail_accepted && tx_.rcpt_accepted > 0) {
        run_.message_accepted(tx_.measured, tx_.start_ns, code, tx_.size_index, tx_.rcpt_refused);
        tx_.active = false;
      } else {
        // A refused BDAT LAST ends the transaction (RFC 3030 2: the client
        // sends no more chunks of it); inboxd and Postfix then take a MAIL.
        end_refused(ok || (bdat_ && tx_.refusal) ? tx_.refusal : code);
      }
      transaction_finished();
      if (quit_chained_) {
        quit_chained_ = false;
        state_ = state::quit;
        expect_reply();
      } else if (chained_) {
        // The next transaction's replies follow this one (RFC 2920 3.1).
        chained_ = false;
        tx_ = next_tx_;
        next_tx_ = {};
        state_ = state::pipelined;
        expect_reply();
      } else {
        next_step();
      }
      break;
    case state::rset:
      transaction_finished();
      next_step();
      break;
    case state::quit: close(); break;
  }
  return state_ != state::closing;
}

void client::end_refused(int code) {
  run_.message_refused(tx_.measured, code);
  tx_.active = false;
}

void client::send_ehlo() {
  out_.append("EHLO ").append(run_.opt().helo).append(crlf);
  ehlo_pipelining_ = false;
  state_ = state::ehlo;
  expect_reply();
  flush();
}

// After EHLO (or HELO): STARTTLS first when asked for and not done yet,
// then AUTH, each one round trip (RFC 3207 4: STARTTLS ends a pipelined
// group; nothing goes with it).
void client::after_ehlo() {
  if (run_.opt().tls == tls_mode::starttls && !tls_on_) {
    out_.append("STARTTLS\r\n");
    state_ = state::starttls;
    expect_reply();
    flush();
    return;
  }
  if (!run_.opt().auth_user.empty()) {
    out_.append(run_.auth_line());
    state_ = state::auth;
    expect_reply();
    flush();
    return;
  }
  on_session_up();
}

// The ClientHello leaves now; reads go to the stream from here on.
void client::begin_tls() {
  if (int rc = tls_->start(run_.opt().tls_resume); rc != 0) return fail_tls(rc);
  tls_on_ = true;
  state_ = state::handshake;
  handshake_ns_ = uv_hrtime();
  expect_reply();
  advance_handshake();
}

// Returns false when the client is closing.
bool client::advance_handshake() {
  auto st = tls_->handshake();
  send_cipher();
  if (state_ == state::closing) return false;
  switch (st) {
    case tls_client_stream::status::want_read: return true;
    case tls_client_stream::status::closed: fail(conn_error::closed); return false;
    case tls_client_stream::status::failed: fail_tls(tls_->error()); return false;
    case tls_client_stream::status::ok: break;
  }
  run_.handshake_done(handshake_ns_, tls_->resumed(), tls_->version(), tls_->cipher());
  if (run_.opt().tls == tls_mode::implicit) {
    state_ = state::greeting;
    expect_reply();
  } else {
    // RFC 3207 4.2: the server forgot everything; EHLO again.
    send_ehlo();
  }
  return state_ != state::closing;
}

void client::fail_tls(int mbedtls_code) {
  run_.tls_failed(mbedtls_code);
  fail(conn_error::tls);
}

void client::on_session_up() {
  run_.session_up(connect_ns_, ehlo_pipelining_);
  state_ = state::ready;
  start_message();
}

void client::transaction_finished() {
  ++session_messages_;
  session_ok_ = true;
  run_.transaction_done();
}

// Between transactions: the next message, or QUIT.
void client::next_step() {
  std::uint64_t limit = run_.opt().messages_per_connection;
  if (finishing_ || (limit && session_messages_ >= limit)) return send_quit();
  state_ = state::ready;
  start_message();
}

void client::start_message() {
  deadline_ms_ = 0;
  message_plan plan;
  switch (run_.next_message(plan)) {
    case run::next::stop: return send_quit();
    case run::next::wait:
      state_ = state::ready;
      run_.park(*this);
      return;
    case run::next::start: break;
  }
  tx_ = {.number = plan.number,
         .start_ns = plan.start_ns,
         .size_index = plan.size_index,
         .measured = plan.measured,
         .active = true};
  if (!pipelining_) return send_mail();
  if (bdat_) {
    // RFC 3030 4.2: MAIL, RCPT and BDAT with its chunk in one go.
    append_mail(tx_.number);
    for (unsigned r = 1; r <= run_.opt().recipients; ++r) append_rcpt(tx_.number, r);
    state_ = state::pipelined;
    return send_bdat();
  }
  append_group(tx_.number);
  state_ = state::pipelined;
  expect_reply();
  flush();
}

void client::finish() {
  finishing_ = true;
  if (state_ == state::ready) send_quit();
}

// RFC 2920 3.1: MAIL and RCPT may be followed by more commands; DATA ends
// the group, since the text may go only after its 354.
void client::append_group(std::uint64_t number) {
  if (!group_.empty()) {
    out_.append(group_);
    return;
  }
  append_mail(number);
  for (unsigned r = 1; r <= run_.opt().recipients; ++r) append_rcpt(number, r);
  out_.append("DATA\r\n");
}

void client::append_mail(std::uint64_t number) {
  out_.append("MAIL FROM:<");
  run_.from().append(out_, number, index_, 0);
  out_.append(">\r\n");
}

void client::append_rcpt(std::uint64_t number, unsigned recipient) {
  out_.append("RCPT TO:<");
  run_.to().append(out_, number, index_, recipient);
  out_.append(">\r\n");
}

void client::send_mail() {
  append_mail(tx_.number);
  state_ = state::mail;
  expect_reply();
  flush();
}

void client::send_rcpt(unsigned number) {
  append_rcpt(tx_.number, number);
  state_ = state::rcpt;
  expect_reply();
  flush();
}

void client::send_data() {
  out_.append("DATA\r\n");
  state_ = state::data;
  expect_reply();
  flush();
}

// RFC 3030 2: the whole text as one chunk, BDAT <n> LAST, with nothing to
// wait for before it. The next transaction waits for this one's reply.
void client::send_bdat() {
  char line[48];
  int n = std::snprintf(line, sizeof line, "BDAT %zu LAST\r\n", run_.text().size(tx_.size_index));
  out_.append(line, static_cast<std::size_t>(n));
  expect_reply();
  // The previous write may still be in flight: then write_cb sends it all.
  if (writing_) {
    text_queued_ = true;
    return;
  }
  write_text();
}

void client::send_rset() {
  out_.append("RSET\r\n");
  state_ = state::rset;
  expect_reply();
  flush();
}

void client::send_quit() {
  out_.append("QUIT\r\n");
  state_ = state::quit;
  expect_reply();
  flush();
}

void client::send_text() {
  state_ = state::text;
  expect_reply();
  if (pipelining_ && run_.opt().chain) chain_next();
  // The previous write may still be in flight (its callback can come after
  // the reply it caused): then write_cb sends the text.
  if (writing_) {
    text_queued_ = true;
    return;
  }
  write_text();
}

// RFC 2920 3.1: "The actual transfer of message content is explicitly
// allowed to be the first 'command' in a group", so the next transaction's
// MAIL, RCPT and DATA, or the QUIT, go out in the same write as this text.
void client::chain_next() {
  std::uint64_t limit = run_.opt().messages_per_connection;
  bool last = finishing_ || (limit && session_messages_ + 1 >= limit);
  message_plan plan;
  if (!last) {
    switch (run_.next_message(plan)) {
      case run::next::stop: last = true; break;
      case run::next::wait: return;  // --rate: nothing due yet
      case run::next::start: break;
    }
  }
  if (last) {
    out_.append("QUIT\r\n");
    quit_chained_ = true;
    return;
  }
  next_tx_ = {.number = plan.number,
              .start_ns = plan.start_ns,
              .size_index = plan.size_index,
              .measured = plan.measured,
              .active = true};
  append_group(next_tx_.number);
  chained_ = true;
}

void client::write_text() {
  std::array<uv_buf_t, 4> bufs;
  unsigned count = 0;
  if (bdat_) {
    // The commands, BDAT last, then the text as it is (no dot-stuffing, no
    // final ".\r\n").
    auto slices = run_.text().chunk_slices(tx_.size_index);
    bdat_head_.swap(out_);
    out_.clear();
    bufs[count++] = uv_buf_init(bdat_head_.data(), static_cast<unsigned>(bdat_head_.size()));
    for (auto slice : slices)
      bufs[count++] =
          uv_buf_init(const_cast<char*>(slice.data()), static_cast<unsigned>(slice.size()));
    return write_bufs(bufs.data(), count, false);
  }
  auto slices = run_.text().slices(tx_.size_index);
  for (auto slice : slices)
    bufs[count++] =
        uv_buf_init(const_cast<char*>(slice.data()), static_cast<unsigned>(slice.size()));
  // The text lives in message_text for the whole run: it is never copied.
  // Chained commands in out_ ride along.
  bool with_out = !out_.empty();
  if (with_out) bufs[count++] = uv_buf_init(out_.data(), static_cast<unsigned>(out_.size()));
  write_bufs(bufs.data(), count, with_out);
  out_.clear();
}

void client::flush() {
  if (out_.empty() || writing_ || state_ == state::closing) return;
  uv_buf_t buf = uv_buf_init(out_.data(), static_cast<unsigned>(out_.size()));
  write_bufs(&buf, 1, true);
  out_.clear();
}

// Writes now what the socket takes, and hands the rest to uv_write. With
// last_is_out, the last buffer is out_, whose unwritten rest is copied into
// sending_ first (the caller clears out_ at once); that happens only when the
// socket buffer is full. Other buffers are static message text.
void client::write_bufs(uv_buf_t* bufs, unsigned count, bool last_is_out) {
  if (tls_on_) {
    // Encrypted at once (the stream copies), so out_ and the text are free
    // again on return, as below.
    for (unsigned i = 0; i < count; ++i) {
      if (tls_->add({bufs[i].base, bufs[i].len}) != tls_client_stream::status::ok)
        return fail_tls(tls_->error());
    }
    if (tls_->flush() != tls_client_stream::status::ok) return fail_tls(tls_->error());
    return send_cipher();
  }
  std::size_t total = 0;
  for (unsigned i = 0; i < count; ++i) total += bufs[i].len;
  run_.count_write(total);
  int n = uv_try_write(stream(), bufs, count);
  if (n == UV_EAGAIN) n = 0;
  if (n < 0) return fail(classify(n, false), n);
  std::size_t left = static_cast<std::size_t>(n);
  unsigned i = 0;
  while (i < count && left >= bufs[i].len) left -= bufs[i++].len;
  if (i == count) return;
  bufs[i].base += left;
  bufs[i].len -= left;
  if (last_is_out) {
    uv_buf_t& last = bufs[count - 1];
    sending_.assign(last.base, last.len);
    last = uv_buf_init(sending_.data(), static_cast<unsigned>(sending_.size()));
  }
  writing_ = true;
  if (int rc = uv_write(&write_req_, stream(), bufs + i, count - i, write_cb); rc != 0) {
    writing_ = false;
    fail(classify(rc, false), rc);
  }
}

// Writes the stream's ciphertext: what the socket takes now, the rest with
// uv_write from cipher_sending_ (swapped in, not copied), so that mbedTLS can
// go on appending to output() while it is out. Called again from write_cb
// for what collected meanwhile (handshake messages, records made while a
// write was out).
void client::send_cipher() {
  std::string& out = tls_->output();
  if (out.empty() || writing_ || state_ == state::closing) return;
  run_.count_write(out.size());
  uv_buf_t buf = uv_buf_init(out.data(), static_cast<unsigned>(out.size()));
  int n = uv_try_write(stream(), &buf, 1);
  if (n == UV_EAGAIN) n = 0;
  if (n < 0) return fail(classify(n, false), n);
  if (static_cast<std::size_t>(n) == out.size()) {
    out.clear();
    return;
  }
  cipher_sending_.swap(out);
  out.clear();
  buf = uv_buf_init(cipher_sending_.data() + n, static_cast<unsigned>(cipher_sending_.size() - n));
  writing_ = true;
  if (int rc = uv_write(&write_req_, stream(), &buf, 1, write_cb); rc != 0) {
    writing_ = false;
    fail(classify(rc, false), rc);
  }
}

void client::write_cb(uv_write_t* req, int status) noexcept {
  auto* c = static_cast<client*>(req->data);
  c->writing_ = false;
  if (c->state_ == state::closing) return;
  if (status < 0) return c->fail(classify(status, false), status);
  // The server has everything now; its reply is due within the timeout.
  if (c->deadline_ms_) c->expect_reply();
  // Ciphertext made while the write was out goes first: records must leave
  // in the order they were made.
  if (c->tls_on_) c->send_cipher();
  if (c->text_queued_) {
    c->text_queued_ = false;
    c->write_text();
    return;
  }
  c->flush();
}

void client::expect_reply() noexcept {
  deadline_ms_ = run_.now_ms() + run_.timeout_ms();
}

void client::check_timeout(std::uint64_t now_ms) {
  if (deadline_ms_ && now_ms >= deadline_ms_ && state_ != state::closing && state_ != state::closed)
    fail(conn_error::timeout);
}

void client::abort(conn_error why) {
  if (state_ == state::closed || state_ == state::closing) return;
  fail(why);
}

void client::fail(conn_error why, int uv_code) {
  if (state_ == state::closing || state_ == state::closed) return;
  // A server that answers QUIT by closing without its 221 did no harm.
  if (state_ == state::quit && why == conn_error::closed) return close();
  run_.connection_error(why, uv_code);
  for (transaction* t : {&tx_, &next_tx_}) {
    if (t->active) run_.message_failed(t->measured);
    t->active = false;
  }
  if (!session_ok_) session_failed_ = true;
  close();
}

void client::close() {
  if (state_ == state::closing || state_ == state::closed) return;
  state_ = state::closing;
  deadline_ms_ = 0;
  uv_close(reinterpret_cast<uv_handle_t*>(&tcp_), close_cb);
}

void client::close_cb(uv_handle_t* handle) noexcept {
  auto* c = static_cast<client*>(handle->data);
  c->state_ = state::closed;
  bool failed = c->session_failed_;
  c->session_failed_ = false;
  c->run_.client_closed(*c, failed);
}

}  // namespace inboxd::bench
