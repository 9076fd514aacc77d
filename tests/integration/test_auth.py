"""AUTH (RFC 4954) with PLAIN (RFC 4616) and LOGIN, users from a file of
crypt(3) hashes made by `inboxd passwd`: success with smtplib and swaks, and
each failure path on raw sockets inside TLS."""
import base64
import os
import shutil
import smtplib
import subprocess
import tempfile
import time

import harness
from harness import HELO, InboxdTestCase, client_tls_context

PASSWORD = "correct horse: battery staple"
BOB_PASSWORD = "bob's old sha512 password"
SENDER, RCPT = "alice@example.com", "b@example.org"
BODY = b"From: alice@example.com\r\nTo: b@example.org\r\nSubject: auth\r\n\r\nhello\r\n"
USERS = None        # the users file, made once by setUpModule


def setUpModule():
    global USERS, _users_dir
    _users_dir = tempfile.mkdtemp(prefix="inboxd-users-")
    # alice: a yescrypt hash from `inboxd passwd` (password on stdin).
    p = subprocess.run([harness.BIN, "passwd"], input=PASSWORD + "\n", capture_output=True,
                       text=True, timeout=harness.TIMEOUT)
    assert p.returncode == 0, p
    alice = p.stdout.strip()
    assert alice.startswith("$") and "\n" not in alice and PASSWORD not in alice, p.stdout
    # bob: a sha512-crypt hash, as older Dovecot/Postfix files have them.
    bob = subprocess.run(["openssl", "passwd", "-6", "-stdin"], input=BOB_PASSWORD + "\n",
                         capture_output=True, text=True, timeout=harness.TIMEOUT,
                         check=True).stdout.strip()
    assert bob.startswith("$6$"), bob
    USERS = os.path.join(_users_dir, "users")
    with open(USERS, "w") as f:
        f.write(f"# test users\nalice:{alice}\nbob:{bob}\n")


def tearDownModule():
    shutil.rmtree(_users_dir, ignore_errors=True)


def b64(s):
    return base64.b64encode(s.encode() if isinstance(s, str) else s).decode()


def plain(user, password, authzid=""):
    return b64(f"{authzid}\0{user}\0{password}")


class AuthCase(InboxdTestCase):
    extra_args = ()

    @property
    def server_args(self):
        return ("--auth-users", USERS, *self.extra_args)

    def tls_client(self):
        """After EHLO, STARTTLS, EHLO inside TLS; returns (client, EHLO reply)."""
        c = self.ehlo()
        c.starttls()
        r = c.cmd("EHLO " + HELO)
        self.assertReply(r, "250")
        return c, r

    def smtp(self):
        s = smtplib.SMTP("127.0.0.1", self.server.port, local_hostname=HELO,
                         timeout=harness.TIMEOUT)
        self.addCleanup(s.close)
        s.ehlo()
        s.starttls(context=client_tls_context())
        s.ehlo()
        return s

    def assertAuthStored(self, user="alice", proto="ESMTPSA"):
        [data] = self.stored()
        p = self.assertStored(data, SENDER, BODY, rcpt=RCPT, proto=proto)
        self.assertEqual(p["auth"], user, data[:400])
        self.assertIn(f"auth: user={user} ok", self.server.log())
        return p

    def timed(self, c, line):
        """Sends a line, returns (reply, seconds until it came)."""
        t0 = time.monotonic()
        r = c.cmd(line)
        return r, time.monotonic() - t0


class AuthSuccess(AuthCase):
    def test_smtplib_login_plain(self):
        s = self.smtp()
        self.assertEqual(s.esmtp_features.get("auth", "").split(), ["PLAIN", "LOGIN"])
        self.assertEqual(s.login("alice", PASSWORD)[0], 235)
        self.assertEqual(s.sendmail(SENDER, [RCPT], BODY), {})
        s.quit()
        self.assertAuthStored()

    def test_smtplib_plain_continuation(self):
        s = self.smtp()
        s.user, s.password = "alice", PASSWORD
        code, _ = s.auth("PLAIN", s.auth_plain, initial_response_ok=False)
        self.assertEqual(code, 235)
        self.assertEqual(s.sendmail(SENDER, [RCPT], BODY), {})
        s.quit()
        self.assertAuthStored()

    def test_smtplib_login_mechanism(self):
        s = self.smtp()
        s.user, s.password = "alice", PASSWORD
        code, _ = s.auth("LOGIN", s.auth_login, initial_response_ok=False)
        self.assertEqual(code, 235)
        self.assertEqual(s.sendmail(SENDER, [RCPT], BODY), {})
        s.quit()
        self.assertAuthStored()

    def test_smtplib_sha512_crypt_user(self):
        s = self.smtp()
        self.assertEqual(s.login("bob", BOB_PASSWORD)[0], 235)
        self.assertEqual(s.sendmail(SENDER, [RCPT], BODY), {})
        s.quit()
        self.assertAuthStored("bob")

    def swaks(self, mechanism):
        body = "hello from swaks"
        cmd = ["swaks", "--server", "127.0.0.1", "--port", str(self.server.port),
               "--helo", HELO, "--from", SENDER, "--to", RCPT, "--tls",
               "--auth", mechanism, "--auth-user", "alice", "--auth-password", PASSWORD,
               "--header", "Subject: swaks auth", "--body", body, "--timeout", "5"]
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=20)
        self.assertEqual(p.returncode, 0, f"swaks failed:\n{p.stdout}\n{p.stderr}")
        self.assertRegex(p.stdout, r"<~\s+235 2\.7\.0")
        self.assertRegex(p.stdout, r"<~\s+250 2\.0\.0 Ok: queued as \S+")
        [data] = self.stored()
        parsed = harness.parse_stored(data)
        self.assertIsNotNone(parsed, data[:400])
        self.assertEqual((parsed["proto"], parsed["auth"]), ("ESMTPSA", "alice"), data[:400])
        self.assertIn(b"\n\n" + body.encode() + b"\n", parsed["body"])
        self.assertIn("auth: user=alice ok", self.server.log())

    def test_swaks_plain(self):
        self.swaks("PLAIN")

    def test_swaks_login(self):
        self.swaks("LOGIN")

    def test_raw_plain_initial_response(self):
        c, _ = self.tls_client()
        self.assertReply(c.cmd("AUTH PLAIN " + plain("alice", PASSWORD)), "235 2.7.0")
        self.deliver(c, SENDER, [RCPT], BODY)
        self.assertAuthStored()

    def test_raw_plain_continuation(self):
        c, _ = self.tls_client()
        r = c.cmd("AUTH PLAIN")
        self.assertEqual(r.lines, ["334 "])
        self.assertReply(c.cmd(plain("alice", PASSWORD)), "235 2.7.0")

    def test_raw_login(self):
        c, _ = self.tls_client()
        self.assertEqual(c.cmd("AUTH LOGIN").lines, ["334 VXNlcm5hbWU6"])
        self.assertEqual(c.cmd(b64("alice")).lines, ["334 UGFzc3dvcmQ6"])
        self.assertReply(c.cmd(b64(PASSWORD)), "235 2.7.0")

    def test_raw_login_initial_response(self):
        c, _ = self.tls_client()
        self.assertEqual(c.cmd("AUTH LOGIN " + b64("alice")).lines, ["334 UGFzc3dvcmQ6"])
        self.assertReply(c.cmd(b64(PASSWORD)), "235 2.7.0")

    def test_authzid_same_as_user(self):
        c, _ = self.tls_client()
        self.assertReply(c.cmd("AUTH PLAIN " + plain("alice", PASSWORD, "alice")), "235 2.7.0")

    def test_auth_in_ehlo_only_inside_tls(self):
        c = self.connect()
        before = c.cmd("EHLO " + HELO)
        self.assertFalse([l for l in before.lines if l[4:].upper().startswith("AUTH")], before)
        c.starttls()
        after = c.cmd("EHLO " + HELO)
        self.assertIn("250-AUTH PLAIN LOGIN", after.lines)

    def test_mail_auth_parameter_accepted(self):
        c, _ = self.tls_client()
        self.assertReply(c.cmd(f"MAIL FROM:<{SENDER}> AUTH=<>"), "250 2.1.0")
        self.assertReply(c.cmd("RSET"), "250")
        self.assertReply(c.cmd(f"MAIL FROM:<{SENDER}> AUTH=alice@example.com"), "250 2.1.0")

    def test_mail_auth_parameter_after_auth(self):
        c, _ = self.tls_client()
        self.assertReply(c.cmd("AUTH PLAIN " + plain("alice", PASSWORD)), "235")
        self.assertReply(c.cmd(f"MAIL FROM:<{SENDER}> AUTH=<{SENDER}>"), "250 2.1.0")


class AuthFailures(AuthCase):
    """Each failure inside TLS; the session goes on where it should."""

    def assertRefusedSlowly(self, c, line):
        r, took = self.timed(c, line)
        self.assertReply(r, "535 5.7.8")
        self.assertGreaterEqual(took, 0.4, "a wrong password is refused at once")
        return r

    def test_wrong_password_535_after_delay(self):
        c, _ = self.tls_client()
        self.assertRefusedSlowly(c, "AUTH PLAIN " + plain("alice", "wrong"))
        self.assertIsNotNone(self.server.wait_log(r"auth: user=alice failed"), self.server.log())
        self.assertNotIn("user=alice ok", self.server.log())

    def test_wrong_password_login_535(self):
        c, _ = self.tls_client()
        c.cmd("AUTH LOGIN")
        c.cmd(b64("alice"))
        self.assertRefusedSlowly(c, b64("wrong"))

    def test_unknown_user_fails_like_wrong_password(self):
        c, _ = self.tls_client()
        wrong = self.assertRefusedSlowly(c, "AUTH PLAIN " + plain("alice", "wrong"))
        c2, _ = self.tls_client()
        unknown = self.assertRefusedSlowly(c2, "AUTH PLAIN " + plain("mallory", PASSWORD))
        self.assertEqual(unknown.lines, wrong.lines)

    def test_other_authzid_refused(self):
        # Acting for someone else is not offered, even with alice's password.
        c, _ = self.tls_client()
        self.assertRefusedSlowly(c, "AUTH PLAIN " + plain("alice", PASSWORD, "bob"))

    def test_empty_password_refused(self):
        c, _ = self.tls_client()
        self.assertRefusedSlowly(c, "AUTH PLAIN " + plain("alice", ""))

    def test_cancel_plain_501(self):
        c, _ = self.tls_client()
        self.assertEqual(c.cmd("AUTH PLAIN").lines, ["334 "])
        self.assertReply(c.cmd("*"), "501")
        self.assertEqual(c.cmd("NOOP").code, 250)

    def test_cancel_login_501(self):
        c, _ = self.tls_client()
        c.cmd("AUTH LOGIN")
        self.assertReply(c.cmd("*"), "501")
        c.cmd("AUTH LOGIN")
        c.cmd(b64("alice"))
        self.assertReply(c.cmd("*"), "501")
        # A cancel is not a failed guess: a good AUTH still works.
        self.assertReply(c.cmd("AUTH PLAIN " + plain("alice", PASSWORD)), "235")

    def test_bad_base64_501(self):
        c, _ = self.tls_client()
        self.assertReply(c.cmd("AUTH PLAIN not@base64!"), "501 5.5.2")
        self.assertEqual(c.cmd("AUTH PLAIN").lines, ["334 "])
        self.assertReply(c.cmd("%%%"), "501 5.5.2")
        c.cmd("AUTH LOGIN")
        self.assertReply(c.cmd("!!"), "501 5.5.2")

    def test_plain_without_nuls_501(self):
        c, _ = self.tls_client()
        self.assertReply(c.cmd("AUTH PLAIN " + b64("alice " + PASSWORD)), "501 5.5.2")

    def test_long_response_line_accepted(self):
        # RFC 4954 4: a response to a 334 is not bound by the 512-octet command
        # line limit; servers must take what their mechanisms produce (12288
        # octets "is considered sufficient"). A 600-octet password is ~800
        # octets of base64: it is checked (and refused: it is wrong).
        c, _ = self.tls_client()
        self.assertEqual(c.cmd("AUTH PLAIN").lines, ["334 "])
        self.assertRefusedSlowly(c, plain("alice", "p" * 600))

    def test_too_long_response_ends_exchange(self):
        # A response longer than the server takes fails AUTH with 500
        # (RFC 4954 4), and the exchange is over: the next line is a command.
        c, _ = self.tls_client()
        self.assertEqual(c.cmd("AUTH PLAIN").lines, ["334 "])
        self.assertEqual(c.cmd("A" * 20000).code, 500)
        self.assertEqual(c.cmd("NOOP").last, "250 2.0.0 Ok")

    def test_unknown_mechanism_504(self):
        c, _ = self.tls_client()
        self.assertReply(c.cmd("AUTH CRAM-MD5"), "504")
        self.assertReply(c.cmd("AUTH GSSAPI " + b64("x")), "504")
        self.assertEqual(c.cmd("NOOP").code, 250)

    def test_auth_twice_503(self):
        c, _ = self.tls_client()
        self.assertReply(c.cmd("AUTH PLAIN " + plain("alice", PASSWORD)), "235")
        self.assertReply(c.cmd("AUTH PLAIN " + plain("alice", PASSWORD)), "503")

    def test_auth_in_transaction_503(self):
        c, _ = self.tls_client()
        self.assertReply(c.cmd(f"MAIL FROM:<{SENDER}>"), "250")
        self.assertReply(c.cmd("AUTH PLAIN " + plain("alice", PASSWORD)), "503")

    def test_auth_without_tls_538(self):
        c = self.ehlo()
        self.assertReply(c.cmd("AUTH PLAIN " + plain("alice", PASSWORD)), "538 5.7.11")
        self.assertReply(c.cmd("AUTH LOGIN"), "538 5.7.11")
        self.assertEqual(c.cmd("NOOP").code, 250)
        self.assertNotIn("user=alice", self.server.log())

    def test_third_failure_421_and_close(self):
        c, _ = self.tls_client()
        self.assertRefusedSlowly(c, "AUTH PLAIN " + plain("alice", "wrong1"))
        self.assertRefusedSlowly(c, "AUTH PLAIN " + plain("alice", "wrong2"))
        c.set_timeout(10)
        r = c.cmd("AUTH PLAIN " + plain("alice", "wrong3"))
        self.assertReply(r, "421 4.7.0")
        self.assertTrue(tls_at_eof(c), "the connection stays open after 421")
        self.assertIsNotNone(self.server.wait_log(r"conn=1 disconnect"), self.server.log())

    def test_delay_grows(self):
        c, _ = self.tls_client()
        _, first = self.timed(c, "AUTH PLAIN " + plain("alice", "wrong1"))
        c.set_timeout(10)
        _, second = self.timed(c, "AUTH PLAIN " + plain("alice", "wrong2"))
        self.assertGreater(second, first * 1.5, (first, second))

    def test_failed_auth_then_mail_is_unauthenticated(self):
        c, _ = self.tls_client()
        self.assertRefusedSlowly(c, "AUTH PLAIN " + plain("alice", "wrong"))
        self.deliver(c, SENDER, [RCPT], BODY)
        [data] = self.stored()
        p = self.assertStored(data, SENDER, BODY, rcpt=RCPT, proto="ESMTPS")
        self.assertIsNone(p["auth"], data[:400])

    def test_auth_before_ehlo_503(self):
        c = self.connect()
        c.starttls()
        self.assertReply(c.cmd("AUTH PLAIN " + plain("alice", PASSWORD)), "503")


def tls_at_eof(c, timeout=2.0):
    """True if the server closes the (TLS) connection within `timeout` s with no more data."""
    c.sock.settimeout(timeout)
    try:
        return c.buf == b"" and c.sock.recv(1) == b""
    except (ConnectionResetError, OSError) as e:
        return not isinstance(e, TimeoutError)


class RequireAuth(AuthCase):
    extra_args = ("--require-auth",)

    def test_mail_before_auth_530(self):
        c, _ = self.tls_client()
        self.assertReply(c.cmd(f"MAIL FROM:<{SENDER}>"), "530 5.7.0")

    def test_wrong_password_never_reaches_mail(self):
        c, _ = self.tls_client()
        r = c.cmd("AUTH PLAIN " + plain("alice", "wrong"))
        self.assertReply(r, "535 5.7.8")
        self.assertReply(c.cmd(f"MAIL FROM:<{SENDER}>"), "530 5.7.0")
        self.assertReply(c.cmd(f"RCPT TO:<{RCPT}>"), "503")
        self.assertEqual(self.stored(), [])

    def test_pipelined_wrong_password_never_reaches_mail(self):
        # AUTH then MAIL/RCPT/DATA in one packet: the MAIL is judged after
        # the (slow) check, so it must not pass.
        c, _ = self.tls_client()
        c.send(("AUTH PLAIN " + plain("alice", "wrong") + "\r\n"
                f"MAIL FROM:<{SENDER}>\r\nRCPT TO:<{RCPT}>\r\nDATA\r\n").encode())
        replies = c.replies(4)
        self.assertReply(replies[0], "535 5.7.8")
        self.assertReply(replies[1], "530 5.7.0")
        self.assertEqual(replies[2].code, 503, replies)
        self.assertEqual(replies[3].code, 503, replies)
        self.assertEqual(self.stored(), [])

    def test_pipelined_good_password_then_mail(self):
        c, _ = self.tls_client()
        c.send(("AUTH PLAIN " + plain("alice", PASSWORD) + "\r\n"
                f"MAIL FROM:<{SENDER}>\r\nRCPT TO:<{RCPT}>\r\nDATA\r\n").encode())
        r = c.replies(4)
        self.assertEqual([x.code for x in r], [235, 250, 250, 354], r)
        c.send(BODY + b".\r\n")
        self.assertQueued(c.reply())
        self.assertAuthStored()

    def test_mail_after_auth_250(self):
        s = self.smtp()
        s.login("alice", PASSWORD)
        self.assertEqual(s.sendmail(SENDER, [RCPT], BODY), {})
        s.quit()
        self.assertAuthStored()


class PlaintextAuth(AuthCase):
    extra_args = ("--allow-plaintext-auth",)

    def test_offered_before_tls(self):
        c = self.connect()
        r = c.cmd("EHLO " + HELO)
        self.assertIn("250-AUTH PLAIN LOGIN", r.lines)

    def test_works_in_plaintext(self):
        c = self.ehlo()
        self.assertReply(c.cmd("AUTH PLAIN " + plain("alice", PASSWORD)), "235 2.7.0")
        self.deliver(c, SENDER, [RCPT], BODY)
        p = self.assertAuthStored(proto="ESMTPA")
        self.assertIsNone(p["tls"])

    def test_smtplib_login_in_plaintext(self):
        s = smtplib.SMTP("127.0.0.1", self.server.port, local_hostname=HELO,
                         timeout=harness.TIMEOUT)
        self.addCleanup(s.close)
        s.ehlo()
        self.assertEqual(s.login("alice", PASSWORD)[0], 235)
        self.assertEqual(s.sendmail(SENDER, [RCPT], BODY), {})
        s.quit()
        self.assertAuthStored(proto="ESMTPA")

    def test_starttls_forgets_plaintext_auth(self):
        # RFC 3207 4.2: after STARTTLS the session starts over, identity too.
        c = self.ehlo()
        self.assertReply(c.cmd("AUTH PLAIN " + plain("alice", PASSWORD)), "235")
        c.starttls()
        self.ehlo(c)
        self.assertReply(c.cmd("AUTH PLAIN " + plain("alice", PASSWORD)), "235")


class NoAuthConfigured(InboxdTestCase):
    def test_auth_not_offered_and_refused(self):
        c = self.connect()
        c.cmd("EHLO " + HELO)
        c.starttls()
        r = c.cmd("EHLO " + HELO)
        self.assertFalse([l for l in r.lines if "AUTH" in l.upper()], r)
        self.assertReply(c.cmd("AUTH PLAIN " + plain("alice", PASSWORD)), "503")


FLOOD = 100     # more AUTHs at once than the checks that may run plus those that may wait


class AuthBusy(AuthCase):
    """Past its bounded queue the authenticator answers busy at once: 454 4.7.0
    (RFC 4954 6), a temporary failure that is neither a close nor a strike."""
    extra_args = ("--allow-plaintext-auth",)

    def flood(self):
        """FLOOD connections each send an AUTH at once (an unknown user: it costs
        the same hash); returns (those answered 454 at once, the others)."""
        import selectors
        clients = [self.ehlo() for _ in range(FLOOD)]
        for c in clients:
            c.send(("AUTH PLAIN " + plain("mallory", "guess") + "\r\n").encode())
        # Within half a second only a busy answer can come: a failure is
        # answered 0.5 s after its check.
        sel = selectors.DefaultSelector()
        for c in clients:
            sel.register(c.sock, selectors.EVENT_READ, c)
        answered = set()
        deadline = time.monotonic() + 0.45
        while (left := deadline - time.monotonic()) > 0:
            for key, _ in sel.select(left):
                sel.unregister(key.fileobj)
                answered.add(key.data)
        sel.close()
        busy = []
        for c in clients:
            if c in answered:
                self.assertReply(c.reply(), "454 4.7.0")
                busy.append(c)
        waiting = [c for c in clients if c not in answered]
        self.assertGreaterEqual(len(busy), 1, "no AUTH of the flood was refused as busy")
        # Most were taken (the queue is not tiny), the rest refused.
        self.assertGreaterEqual(len(waiting), FLOOD // 2, f"{len(busy)} of {FLOOD} refused")
        return busy, waiting

    def assertAllChecked(self, waiting):
        """Every queued check is answered in turn, as a wrong guess."""
        for c in waiting:
            c.set_timeout(30)
            self.assertReply(c.reply(), "535 5.7.8")

    def test_flood_beyond_the_queue_gets_454(self):
        busy, waiting = self.flood()
        self.assertIsNotNone(self.server.wait_log(r"auth: user=mallory not checked: busy"),
                             self.server.log())
        # Not a close: the session goes on.
        for c in busy:
            self.assertEqual(c.cmd("NOOP").last, "250 2.0.0 Ok")
        self.assertAllChecked(waiting)

    def test_busy_is_not_a_strike(self):
        busy, waiting = self.flood()
        self.assertAllChecked(waiting)
        # The queue is empty again: the refused client tries later and gets in.
        # With max_auth_failures 3, a 454 that counted would make the second
        # wrong password the third strike: 421 and a close.
        c = busy[0]
        c.set_timeout(10)
        self.assertReply(c.cmd("AUTH PLAIN " + plain("alice", "wrong1")), "535 5.7.8")
        self.assertReply(c.cmd("AUTH PLAIN " + plain("alice", "wrong2")), "535 5.7.8")
        self.assertReply(c.cmd("AUTH PLAIN " + plain("alice", PASSWORD)), "235 2.7.0")
        self.deliver(c, SENDER, [RCPT], BODY)
        self.assertAuthStored(proto="ESMTPA")
        self.assertRegex(self.server.log(), r"auth: user=alice failed \(2 of 3\)")
        self.assertNotRegex(self.server.log(), r"\(3 of 3\)")


if __name__ == "__main__":
    harness.main()
