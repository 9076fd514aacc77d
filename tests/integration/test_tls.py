"""TLS: STARTTLS (RFC 3207) and implicit TLS (RFC 8314) against real clients
(openssl s_client, swaks, smtplib, curl), the STARTTLS injection of
CVE-2011-0411, TLS 1.2 as the minimum, bad handshakes, the self-signed
certificate of a fresh state folder, --tls-cert/--tls-key and SIGHUP.

The certificates are self-signed: no client verifies."""
import os
import re
import shutil
import smtplib
import socket
import ssl
import stat
import subprocess
import tempfile
import time
import unittest
import warnings

import harness
from harness import CRLF, HELO, HOSTNAME, Client, InboxdTestCase, client_tls_context, run_cli

TLS_ARGS = ("--listen-tls", "127.0.0.1:0")
SENDER, RCPT = "a@example.com", "b@example.org"
# A body with a line that starts with a dot (stuffed on the wire).
BODY = (b"From: Alice <a@example.com>\r\nTo: b@example.org\r\nSubject: over tls\r\n"
        b"\r\nHello over TLS,\r\n.a line with a leading dot\r\n\r\nbye\r\n")
USING_RE = re.compile(r"^(TLSv1\.[23]) with cipher (\S+)$")


def cipher_key(name):
    """OpenSSL's and mbedTLS's names of one cipher suite, made comparable:
    ECDHE-ECDSA-AES256-GCM-SHA384 == TLS-ECDHE-ECDSA-WITH-AES-256-GCM-SHA384,
    TLS_AES_256_GCM_SHA384 == TLS1-3-AES-256-GCM-SHA384."""
    n = name.upper()
    n = re.sub(r"^(TLS1-3-|TLS-|TLS_)", "", n)
    n = re.sub(r"[-_]", "", n.replace("WITH", ""))
    # OpenSSL leaves out the hash of the ChaCha20-Poly1305 suites.
    return re.sub(r"CHACHA20POLY1305SHA256$", "CHACHA20POLY1305", n)


def make_cert(folder, name, kind="ec"):
    """A self-signed certificate and key made by openssl; returns (cert, key) paths."""
    cert = os.path.join(folder, name + "-cert.pem")
    key = os.path.join(folder, name + "-key.pem")
    newkey = (["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256"] if kind == "ec"
              else ["-newkey", "rsa:2048"])
    subprocess.run(["openssl", "req", "-x509", *newkey, "-nodes", "-keyout", key, "-out", cert,
                    "-days", "2", "-subj", f"/CN={HOSTNAME}"],
                   check=True, capture_output=True, timeout=30)
    return cert, key


def cert_der(path):
    with open(path) as f:
        return ssl.PEM_cert_to_DER_cert(f.read())


def client_hello():
    """The bytes of a TLS ClientHello, as Python's ssl would send them."""
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = client_tls_context().wrap_bio(incoming, outgoing)
    try:
        obj.do_handshake()
    except ssl.SSLWantReadError:
        pass
    hello = outgoing.read()
    assert hello[:1] == b"\x16" and len(hello) > 100, hello[:20]
    return hello


def read_to_eof(sock, timeout=harness.TIMEOUT):
    """Everything the peer sends until it closes (bounded); raises on timeout."""
    sock.settimeout(timeout)
    data = b""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            chunk = sock.recv(65536)
        except (ConnectionResetError, ssl.SSLError, ssl.SSLEOFError):
            return data
        if not chunk:
            return data
        data += chunk
    raise TimeoutError(f"the server did not close; got {data!r}")


class TlsCase(InboxdTestCase):
    """A server with a plain listener (STARTTLS) and an implicit-TLS one; the
    certificate is the self-signed one of its state folder."""
    server_args = TLS_ARGS

    def tls_connect(self):
        """A client after STARTTLS (not yet EHLO'd inside TLS)."""
        c = self.ehlo()
        c.starttls()
        return c

    def assertTlsStored(self, body=BODY, sender=SENDER, rcpt=RCPT):
        """One message stored, = body; Received says ESMTPS and names the
        cipher the server logged. Returns (version, cipher) of the header."""
        [data] = self.stored()
        p = self.assertStored(data, sender, body, rcpt=rcpt, proto="ESMTPS")
        self.assertIsNotNone(p["tls"], f"no '(using ...)' in Received:\n{data[:400]!r}")
        m = USING_RE.match(p["tls"])
        self.assertTrue(m, f"'(using {p['tls']})' does not name a version and cipher")
        self.assertIn(f"tls: {p['tls']}", self.server.log())
        return m.group(1), m.group(2)

    def assertCustomStored(self, needles):
        """One message stored over TLS, with ESMTPS, containing these body bytes."""
        [data] = self.stored()
        p = harness.parse_stored(data)
        self.assertIsNotNone(p, data[:400])
        self.assertEqual(p["proto"], "ESMTPS", data[:400])
        self.assertRegex(p["tls"] or "", USING_RE)
        for n in needles:
            self.assertIn(n, p["body"])
        self.assertNotIn(b"\r", p["body"])
        return p


class RealClients(TlsCase):
    """Each real client sends one message over TLS, and it lands intact."""

    def swaks(self, *extra, port=None):
        body = "first line\n.starts with a dot\nlast line"
        cmd = ["swaks", "--server", "127.0.0.1", "--port", str(port or self.server.port),
               "--helo", HELO, "--from", SENDER, "--to", RCPT,
               "--header", "Subject: swaks tls", "--body", body, "--timeout", "5", *extra]
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=20)
        self.assertEqual(p.returncode, 0, f"swaks failed:\n{p.stdout}\n{p.stderr}")
        self.assertRegex(p.stdout, r"<~\s+250 2\.0\.0 Ok: queued as \S+", p.stdout)
        self.assertCustomStored([b"\nSubject: swaks tls\n", b"\n\n" + body.encode() + b"\n"])
        return p.stdout

    def test_openssl_s_client_starttls(self):
        wire = (f"EHLO {HELO}\r\nMAIL FROM:<{SENDER}>\r\nRCPT TO:<{RCPT}>\r\nDATA\r\n".encode()
                + harness.stuff(BODY) + b".\r\nQUIT\r\n")
        p = subprocess.run(["openssl", "s_client", "-starttls", "smtp", "-quiet", "-name", HELO,
                            "-connect", f"127.0.0.1:{self.server.port}"],
                           input=wire, capture_output=True, timeout=20)
        out = p.stdout.decode("utf-8", "replace")
        self.assertRegex(out, r"250 2\.0\.0 Ok: queued as \S+", f"{out}\n{p.stderr!r}")
        self.assertRegex(out, r"221 2\.0\.0")
        self.assertTlsStored()

    def test_swaks_starttls(self):
        out = self.swaks("--tls")
        self.assertIn("STARTTLS", out)

    def test_swaks_implicit_tls(self):
        self.swaks("--tlsc", port=self.server.tls_port)

    def test_smtplib_starttls(self):
        s = smtplib.SMTP("127.0.0.1", self.server.port, local_hostname=HELO,
                         timeout=harness.TIMEOUT)
        self.addCleanup(s.close)
        s.ehlo()
        self.assertTrue(s.has_extn("starttls"))
        self.assertEqual(s.starttls(context=client_tls_context())[0], 220)
        version, cipher = s.sock.version(), s.sock.cipher()[0]
        s.ehlo()
        self.assertEqual(s.sendmail(SENDER, [RCPT], BODY), {})
        s.quit()
        v, c = self.assertTlsStored()
        self.assertEqual(v, version)
        self.assertEqual(cipher_key(c), cipher_key(cipher), f"header {c!r}, client {cipher!r}")

    def test_smtplib_smtp_ssl(self):
        s = smtplib.SMTP_SSL("127.0.0.1", self.server.tls_port, local_hostname=HELO,
                             timeout=harness.TIMEOUT, context=client_tls_context())
        self.addCleanup(s.close)
        s.ehlo()
        self.assertFalse(s.has_extn("starttls"), "STARTTLS offered inside implicit TLS")
        self.assertEqual(s.sendmail(SENDER, [RCPT], BODY), {})
        s.quit()
        self.assertTlsStored()

    def curl(self, url):
        path = os.path.join(self.server.dir, "curl-body.eml")
        with open(path, "wb") as f:
            f.write(BODY)
        p = subprocess.run(["curl", "--silent", "--show-error", "--insecure", "--max-time", "15",
                            "--url", url, "--mail-from", SENDER, "--mail-rcpt", RCPT,
                            "--upload-file", path, *(["--ssl-reqd"] if url.startswith("smtp:")
                                                     else [])],
                           capture_output=True, timeout=20)
        self.assertEqual(p.returncode, 0, p.stderr)
        self.assertTlsStored()

    def test_curl_starttls(self):
        self.curl(f"smtp://127.0.0.1:{self.server.port}/{HELO}")

    def test_curl_implicit_tls(self):
        self.curl(f"smtps://127.0.0.1:{self.server.tls_port}/{HELO}")


class StartTls(TlsCase):
    """STARTTLS on the wire (RFC 3207)."""

    def test_injection_after_starttls_dropped(self):
        # CVE-2011-0411: RSET comes in the same packet as STARTTLS.
        c = Client(self.server.port)
        self.clients.append(c)
        self.assertReply(c.reply(), "220")
        c.send(b"EHLO x\r\nSTARTTLS\r\nRSET\r\n")
        self.assertReply(c.reply(), "250")            # EHLO
        r = c.reply()
        self.assertEqual(r.code, 220, r)             # exactly one reply to STARTTLS
        self.assertEqual(len(r.lines), 1, r)
        # Nothing more in plaintext: no reply to RSET.
        self.assertTrue(c.quiet(0.3), f"plaintext after the 220: {c.buf!r}")
        c.start_tls()
        c.send(b"EHLO " + HELO.encode() + CRLF)
        first = c.reply()
        self.assertEqual(first.lines[0], f"250-{HOSTNAME}",
                         f"first reply inside TLS is not the EHLO's: {first!r}")
        # And RSET's reply does not come later either: the next one is NOOP's.
        self.assertTrue(c.quiet(0.3), f"extra bytes inside TLS: {c.buf!r}")
        self.assertEqual(c.cmd("NOOP").last, "250 2.0.0 Ok")
        self.assertIsNotNone(
            self.server.wait_log(r"dropped 6 byte\(s\) sent after STARTTLS"), self.server.log())

    def test_starttls_inside_tls_503(self):
        c = self.tls_connect()
        self.ehlo(c)
        self.assertReply(c.cmd("STARTTLS"), "503 5.5.1")
        self.assertEqual(c.cmd("NOOP").code, 250)   # and the session goes on

    def test_starttls_inside_implicit_tls_503(self):
        c = self.connect(self.server.tls_port, tls=client_tls_context())
        self.ehlo(c)
        self.assertReply(c.cmd("STARTTLS"), "503 5.5.1")

    def test_starttls_with_argument_501(self):
        c = self.ehlo()
        self.assertReply(c.cmd("STARTTLS now"), "501")
        # Still plaintext: a plain NOOP works.
        self.assertEqual(c.cmd("NOOP").last, "250 2.0.0 Ok")

    def test_session_forgets_ehlo_after_starttls(self):
        c = self.tls_connect()
        self.assertReply(c.cmd(f"MAIL FROM:<{SENDER}>"), "503 5.5.1")
        self.ehlo(c)
        self.deliver(c, SENDER, [RCPT], harness.stuff(BODY))
        self.assertTlsStored()

    def test_ehlo_inside_tls_no_starttls(self):
        c = self.ehlo()
        before = c.cmd("EHLO " + HELO)
        self.assertIn("250-STARTTLS", before.lines)
        c.starttls()
        after = c.cmd("EHLO " + HELO)
        self.assertReply(after, "250")
        self.assertFalse([l for l in after.lines if "STARTTLS" in l.upper()], after)

    def test_ehlo_inside_implicit_tls_no_starttls(self):
        c = self.connect(self.server.tls_port, tls=client_tls_context())
        r = c.cmd("EHLO " + HELO)
        self.assertReply(r, "250")
        self.assertFalse([l for l in r.lines if "STARTTLS" in l.upper()], r)

    def test_implicit_tls_message_stored(self):
        c = self.connect(self.server.tls_port, tls=client_tls_context())
        self.ehlo(c)
        self.deliver(c, SENDER, [RCPT], harness.stuff(BODY))
        self.assertTlsStored()

    def test_large_message_over_tls(self):
        # More than the read buffer holds: plaintext waits inside the TLS stream.
        body = b"Subject: big\r\n\r\n" + b"".join(
            b"%06d " % i + b"x" * 990 + b"\r\n" for i in range(2000))
        s = smtplib.SMTP("127.0.0.1", self.server.port, local_hostname=HELO, timeout=10)
        self.addCleanup(s.close)
        s.starttls(context=client_tls_context())
        s.ehlo()
        self.assertEqual(s.sendmail(SENDER, [RCPT], body), {})
        s.quit()
        self.assertTlsStored(body)

    def test_starttls_during_transaction_refused(self):
        c = self.ehlo()
        self.assertReply(c.cmd(f"MAIL FROM:<{SENDER}>"), "250")
        self.assertEqual(c.cmd("STARTTLS").code // 100, 5)


class RequireTls(TlsCase):
    server_args = TLS_ARGS + ("--require-tls",)

    def test_mail_before_starttls_530(self):
        c = self.ehlo()
        self.assertReply(c.cmd(f"MAIL FROM:<{SENDER}>"), "530 5.7.0")

    def test_mail_after_starttls_250(self):
        c = self.tls_connect()
        self.ehlo(c)
        self.assertReply(c.cmd(f"MAIL FROM:<{SENDER}>"), "250 2.1.0")


class BadHandshakes(TlsCase):
    """A bad handshake costs its own connection only, and the log says why."""

    def send_ok(self):
        """Another client sends a message over STARTTLS while the bad one is open."""
        s = smtplib.SMTP("127.0.0.1", self.server.port, local_hostname=HELO,
                         timeout=harness.TIMEOUT)
        self.addCleanup(s.close)
        s.starttls(context=client_tls_context())
        s.ehlo()
        self.assertEqual(s.sendmail(SENDER, [RCPT], BODY), {})
        s.quit()

    def test_tls_1_1_client_refused(self):
        ctx = client_tls_context()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            ctx.minimum_version = ssl.TLSVersion.TLSv1
            ctx.maximum_version = ssl.TLSVersion.TLSv1_1
        ctx.set_ciphers("DEFAULT:@SECLEVEL=0")
        c = self.ehlo()
        with self.assertRaises((ssl.SSLError, ConnectionError, OSError)) as cm:
            c.starttls(ctx)
        self.assertNotIn("no protocols available", str(cm.exception),
                         "this Python cannot offer TLS 1.1: the test says nothing")
        # The server saw the hello, refused it, and said so.
        self.assertIsNotNone(self.server.wait_log(r"conn=1 TLS handshake failed: \S"),
                             self.server.log())
        self.send_ok()
        self.assertEqual(len(self.stored()), 1)

    def test_openssl_tls_1_1_refused(self):
        p = subprocess.run(["openssl", "s_client", "-starttls", "smtp", "-tls1_1",
                            "-cipher", "DEFAULT@SECLEVEL=0", "-connect",
                            f"127.0.0.1:{self.server.port}"],
                           input=b"", capture_output=True, timeout=20)
        self.assertNotEqual(p.returncode, 0, p.stdout)
        self.assertIsNotNone(self.server.wait_log(r"conn=1 TLS handshake failed: \S"),
                             self.server.log())
        self.send_ok()

    def test_garbage_after_starttls(self):
        c = self.ehlo()
        self.assertReply(c.cmd("STARTTLS"), "220")
        c.send(b"this is not a TLS record\r\n" * 4)
        read_to_eof(c.sock)     # an alert perhaps, then the close
        self.assertIsNotNone(self.server.wait_log(r"conn=1 TLS handshake failed: \S"),
                             self.server.log())
        self.send_ok()

    def test_garbage_on_implicit_tls(self):
        c = Client(self.server.tls_port)
        self.clients.append(c)
        c.send(b"EHLO client.test\r\n")
        read_to_eof(c.sock)
        self.assertIsNotNone(self.server.wait_log(r"conn=1 TLS handshake failed: \S"),
                             self.server.log())
        self.send_ok()

    def test_client_closes_halfway_after_starttls(self):
        # A client that sends half a ClientHello and closes: the server sees
        # the end of the stream and lets the connection go at once (as it does
        # on the implicit-TLS port), rather than holding it for the handshake
        # timeout.
        hello = client_hello()
        c = self.ehlo()
        self.assertReply(c.cmd("STARTTLS"), "220")
        c.send(hello[:len(hello) // 2])
        time.sleep(0.1)
        c.sock.shutdown(socket.SHUT_WR)
        self.assertIsNotNone(self.server.wait_log(r"conn=1 disconnect", timeout=3),
                             "the connection is still open 3 s after the client closed; log:\n"
                             + self.server.log())

    def test_client_closes_halfway_implicit_tls(self):
        hello = client_hello()
        c = Client(self.server.tls_port)
        self.clients.append(c)
        c.send(hello[:len(hello) // 2])
        time.sleep(0.1)
        c.sock.shutdown(socket.SHUT_WR)
        self.assertIsNotNone(self.server.wait_log(r"conn=1 disconnect", timeout=3),
                             self.server.log())

    def test_client_stops_halfway(self):
        hello = client_hello()
        c = self.ehlo()
        self.assertReply(c.cmd("STARTTLS"), "220")
        c.send(hello[:len(hello) // 2])
        # While it hangs, another client sends a message fine.
        t0 = time.monotonic()
        self.send_ok()
        self.assertLess(time.monotonic() - t0, 3.0, "the other client was slowed down")
        self.assertEqual(len(self.stored()), 1)
        self.assertTrue(c.quiet(0.2), c.buf)       # the half one is still waiting
        # The server gives up on it after its handshake timeout, and says so.
        m = self.server.wait_log(r"conn=1 TLS handshake timed out", timeout=40)
        self.assertIsNotNone(m, self.server.log())
        self.assertEqual(read_to_eof(c.sock), b"")
        self.assertIsNotNone(self.server.wait_log(r"conn=1 disconnect"), self.server.log())


class SelfSigned(unittest.TestCase):
    """No certificate configured: one is made in the state folder on first start."""

    def setUp(self):
        self.dir = tempfile.mkdtemp(prefix="inboxd-state-")
        self.addCleanup(shutil.rmtree, self.dir, True)
        self.state = os.path.join(self.dir, "state", "sub")   # does not exist yet

    def start(self):
        server = harness.Server("--state-dir", self.state)
        self.addCleanup(server.cleanup)
        return server

    def presented(self, server):
        c = Client(server.port)
        try:
            c.reply()
            c.cmd("EHLO " + HELO)
            c.starttls()
            self.assertEqual(c.cmd("EHLO " + HELO).code, 250)
            return c.sock.getpeercert(binary_form=True)
        finally:
            c.close()

    def test_fresh_state_dir(self):
        server = self.start()
        cert = os.path.join(self.state, "self-signed-cert.pem")
        key = os.path.join(self.state, "self-signed-key.pem")
        self.assertIsNotNone(
            server.wait_log(r"made a self-signed certificate for " + re.escape(HOSTNAME)),
            server.log())
        self.assertTrue(os.path.isfile(cert), os.listdir(self.dir))
        self.assertEqual(stat.S_IMODE(os.stat(key).st_mode), 0o600)
        self.assertEqual(self.presented(server), cert_der(cert))

    def test_second_start_reuses_cert(self):
        first = self.start()
        der = self.presented(first)
        cert = os.path.join(self.state, "self-signed-cert.pem")
        with open(cert, "rb") as f:
            pem = f.read()
        self.assertEqual(first.stop(), 0)
        second = self.start()
        self.assertIsNotNone(second.wait_log(r"using the self-signed certificate"),
                             second.log())
        self.assertNotIn("made a self-signed", second.log())
        with open(cert, "rb") as f:
            self.assertEqual(f.read(), pem)
        self.assertEqual(self.presented(second), der)


class ConfiguredCert(unittest.TestCase):
    """--tls-cert/--tls-key: the server presents that certificate."""

    def setUp(self):
        self.dir = tempfile.mkdtemp(prefix="inboxd-certs-")
        self.addCleanup(shutil.rmtree, self.dir, True)

    def start(self, cert, key, *args):
        server = harness.Server("--tls-cert", cert, "--tls-key", key, *args)
        self.addCleanup(server.cleanup)
        return server

    def peer_cert(self, port, implicit=False):
        c = Client(port, tls=client_tls_context() if implicit else None)
        try:
            self.assertEqual(c.reply().code, 220)
            if not implicit:
                c.cmd("EHLO " + HELO)
                c.starttls()
            self.assertEqual(c.cmd("EHLO " + HELO).code, 250)
            return c.sock.getpeercert(binary_form=True)
        finally:
            c.close()

    def test_ec_p256_cert(self):
        cert, key = make_cert(self.dir, "ec", "ec")
        server = self.start(cert, key, *TLS_ARGS)
        self.assertEqual(self.peer_cert(server.port), cert_der(cert))
        self.assertEqual(self.peer_cert(server.tls_port, implicit=True), cert_der(cert))
        self.assertNotIn("self-signed", server.log())

    def test_rsa_2048_cert(self):
        cert, key = make_cert(self.dir, "rsa", "rsa")
        server = self.start(cert, key)
        self.assertEqual(self.peer_cert(server.port), cert_der(cert))

    def assertStartupError(self, result, mentions):
        self.assertEqual(result.returncode, 2, result)
        lines = result.stderr.decode("utf-8", "replace").splitlines()
        self.assertEqual(len(lines), 1, f"want one line on stderr, got {result.stderr!r}")
        self.assertIn(mentions, lines[0])

    def test_garbage_key_exit_2(self):
        cert, _ = make_cert(self.dir, "ec", "ec")
        key = os.path.join(self.dir, "garbage-key.pem")
        with open(key, "w") as f:
            f.write("-----BEGIN PRIVATE KEY-----\nnot a key at all\n-----END PRIVATE KEY-----\n")
        r = run_cli("--listen", "127.0.0.1:0", "--maildir", os.path.join(self.dir, "md"),
                    "--tls-cert", cert, "--tls-key", key)
        self.assertStartupError(r, key)

    def test_missing_key_exit_2(self):
        cert, _ = make_cert(self.dir, "ec", "ec")
        key = os.path.join(self.dir, "no-such-key.pem")
        r = run_cli("--listen", "127.0.0.1:0", "--maildir", os.path.join(self.dir, "md"),
                    "--tls-cert", cert, "--tls-key", key)
        self.assertStartupError(r, key)

    def test_unreadable_key_exit_2(self):
        cert, key = make_cert(self.dir, "ec", "ec")
        os.chmod(key, 0o000)
        cmd = [harness.BIN, "--listen", "127.0.0.1:0", "--maildir", os.path.join(self.dir, "md"),
               "--tls-cert", cert, "--tls-key", key]
        if os.geteuid() == 0:
            # root reads any file: run as nobody instead, who cannot read it.
            os.chmod(self.dir, 0o755)
            os.chmod(cert, 0o644)
            cmd = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", *cmd]
        r = subprocess.run(cmd, capture_output=True, timeout=harness.TIMEOUT,
                           stdin=subprocess.DEVNULL)
        self.assertStartupError(r, key)

    def test_key_of_other_cert_exit_2(self):
        # A key that does not belong to the certificate: every handshake would
        # fail (the client sees a bad signature), so it is a startup error.
        cert, _ = make_cert(self.dir, "one", "ec")
        _, key = make_cert(self.dir, "two", "ec")
        proc = subprocess.Popen([harness.BIN, "--listen", "127.0.0.1:0", "--maildir",
                                 os.path.join(self.dir, "md"), "--tls-cert", cert,
                                 "--tls-key", key], cwd=self.dir, stdin=subprocess.DEVNULL,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        running = False
        try:
            _, err = proc.communicate(timeout=3)
        except subprocess.TimeoutExpired:
            running = True
            proc.kill()
            _, err = proc.communicate(timeout=harness.TIMEOUT)
        self.assertFalse(running, "inboxd started with a key that is not the certificate's "
                         "(every handshake then fails); log:\n" + err.decode("utf-8", "replace"))
        self.assertEqual(proc.returncode, 2, err)
        lines = err.decode("utf-8", "replace").splitlines()
        self.assertEqual(len(lines), 1, err)
        self.assertTrue(key in lines[0] or cert in lines[0], f"names neither file: {lines[0]!r}")

    def test_sighup_loads_new_cert(self):
        old_cert, old_key = make_cert(self.dir, "old", "ec")
        new_cert, new_key = make_cert(self.dir, "new", "rsa")
        cert = os.path.join(self.dir, "cert.pem")
        key = os.path.join(self.dir, "key.pem")
        shutil.copy(old_cert, cert)
        shutil.copy(old_key, key)
        server = self.start(cert, key)
        # A connection open across the reload, already inside TLS.
        c = Client(server.port)
        self.addCleanup(c.close)
        c.reply()
        c.cmd("EHLO " + HELO)
        c.starttls()
        self.assertEqual(c.sock.getpeercert(binary_form=True), cert_der(old_cert))
        self.assertEqual(c.cmd("EHLO " + HELO).code, 250)
        # New files in place (key first, then cert), then SIGHUP.
        shutil.copy(new_key, key + ".new")
        os.replace(key + ".new", key)
        shutil.copy(new_cert, cert + ".new")
        os.replace(cert + ".new", cert)
        line = server.reload()
        self.assertIsNotNone(line, server.log())
        self.assertRegex(line, r"\breloaded\b", server.log())
        self.assertEqual(self.peer_cert(server.port), cert_der(new_cert))
        # The old connection still works: a whole message over it.
        self.assertEqual(c.cmd(f"MAIL FROM:<{SENDER}>").code, 250)
        self.assertEqual(c.cmd(f"RCPT TO:<{RCPT}>").code, 250)
        self.assertEqual(c.cmd("DATA").code, 354)
        c.send(harness.stuff(BODY) + b".\r\n")
        self.assertRegex(c.reply().last, harness.QUEUED_RE)
        self.assertEqual(c.cmd("QUIT").code, 221)
        new = harness.read_files(os.path.join(server.maildir, "new"))
        self.assertEqual(len(new), 1)
        self.assertTrue(server.alive())

    def test_sighup_with_garbage_key_keeps_old_cert(self):
        old_cert, old_key = make_cert(self.dir, "old", "ec")
        cert = os.path.join(self.dir, "cert.pem")
        key = os.path.join(self.dir, "key.pem")
        shutil.copy(old_cert, cert)
        shutil.copy(old_key, key)
        server = self.start(cert, key)
        with open(key + ".new", "w") as f:
            f.write("-----BEGIN PRIVATE KEY-----\ngarbage\n-----END PRIVATE KEY-----\n")
        os.replace(key + ".new", key)
        line = server.reload()
        self.assertIsNotNone(line, server.log())
        self.assertRegex(line, r"reload failed.*" + re.escape(key), server.log())
        self.assertEqual(self.peer_cert(server.port), cert_der(old_cert))
        self.assertTrue(server.alive())


if __name__ == "__main__":
    harness.main()
