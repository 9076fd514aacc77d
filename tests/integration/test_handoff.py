"""The LMTP and SMTP hand-off sinks (--sink lmtp, --sink smtp).

inboxd keeps no queue: each message goes to the next hop while the client
waits, and the client hears the hop's answer. The next hops are real
programs: Dovecot's LMTP server (its IMAP server then reads the Maildir it
stored into), a private Postfix instance (its log shows the message received
and relayed on), Postfix's smtp-sink for the failure paths (4xx, 5xx, a hop
that never answers, a dropped connection), and a hostile Python hop for the
rest (garbage, a refused RCPT, STARTTLS with verification, AUTH, BDAT, pool
reuse). Each test checks the client's reply and what the hop received: never
a 250 for something the hop did not accept, never a message twice."""
import base64
import os
import re
import shutil
import smtplib
import socket
import ssl
import subprocess
import tempfile
import threading
import time
import unittest

import harness
import peers
import postfix
from harness import InboxdTestCase

BODY = b"From: a@example.net\r\nSubject: hand-off\r\n\r\n.a line with a dot\r\nhello\r\n"
DOVECOT = "/usr/sbin/dovecot"
SMTP_SINK = "/usr/sbin/smtp-sink"


class Hop:
    """A scripted SMTP/LMTP next hop on 127.0.0.1: records what it was sent.

    ext: the EHLO keywords; rcpt(addr) gives a RCPT's reply; end gives the
    reply after the data ("drop" closes, "garbage" answers nonsense); tls: an
    ssl.SSLContext for STARTTLS; auth: the (user, password) AUTH PLAIN wants;
    greet_delay, rcpt_delay: seconds before the greeting, before each RCPT's reply."""

    def __init__(self, ext=("PIPELINING", "8BITMIME"), rcpt=None, end="250 2.0.0 Ok: taken",
                 tls=None, auth=None, slow=0, greet_delay=0, rcpt_delay=0):
        self.ext, self.rcpt, self.end, self.tls, self.auth = ext, rcpt, end, tls, auth
        self.slow = slow  # seconds the hop waits after 354 before it reads the data
        self.greet_delay, self.rcpt_delay = greet_delay, rcpt_delay
        self.connections = 0
        self.messages = []  # (sender, rcpts, data, verb)
        self.commands = []
        self.authenticated = False
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.stopping = False
        self.thread = threading.Thread(target=self.accept, daemon=True)
        self.thread.start()

    def stop(self):
        self.stopping = True
        self.thread.join(5)
        self.sock.close()

    def accept(self):
        while not self.stopping:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            self.connections += 1
            threading.Thread(target=self.serve, args=(conn,), daemon=True).start()

    def serve(self, conn):
        conn.settimeout(10)
        try:
            self.session(conn)
        except (OSError, ssl.SSLError, ValueError):
            pass
        finally:
            conn.close()

    def session(self, conn):
        f = conn.makefile("rwb")

        def say(line):
            f.write(line.encode() + b"\r\n")
            f.flush()
        time.sleep(self.greet_delay)
        say("220 hop.test ESMTP")
        mail, rcpts = None, []
        while True:
            line = f.readline()
            if not line:
                return
            cmd = line.rstrip(b"\r\n").decode("utf-8", "replace")
            self.commands.append(cmd)
            verb = cmd.split(" ")[0].upper()
            if verb in ("EHLO", "LHLO"):
                ext = [e for e in self.ext if e != "STARTTLS" or not isinstance(conn, ssl.SSLSocket)]
                lines = ["hop.test"] + list(ext)
                for i, e in enumerate(lines):
                    say(("250 " if i == len(lines) - 1 else "250-") + e)
            elif verb == "STARTTLS":
                say("220 2.0.0 go ahead")
                conn = self.tls.wrap_socket(conn, server_side=True)
                f = conn.makefile("rwb")
            elif verb == "AUTH":
                token = base64.b64decode(cmd.split(" ")[2])
                if token == b"\0" + self.auth[0].encode() + b"\0" + self.auth[1].encode():
                    self.authenticated = True
                    say("235 2.7.0 ok")
                else:
                    say("535 5.7.8 bad credentials")
            elif verb == "MAIL":
                if self.end == "garbage":
                    f.write(b"HTTP/1.1 400 Bad Request\r\n\r\n")
                    f.flush()
                    return
                mail, rcpts = cmd, []
                say("250 2.1.0 ok")
            elif verb == "RCPT":
                addr = re.search(r"<([^>]*)>", cmd).group(1)
                time.sleep(self.rcpt_delay)
                reply = self.rcpt(addr) if self.rcpt else "250 2.1.5 ok"
                if reply.startswith("2"):
                    rcpts.append(addr)
                say(reply)
            elif verb == "DATA":
                say("354 go")
                time.sleep(self.slow)
                parts = []
                while True:
                    part = f.readline()
                    if part in (b".\r\n", b""):
                        break
                    parts.append(part)
                if not self.finish(say, mail, rcpts, b"".join(parts), "DATA"):
                    return
            elif verb == "BDAT":
                args = cmd.split(" ")
                data = f.read(int(args[1]))
                if len(args) > 2:
                    self.bdat = getattr(self, "bdat", b"") + data
                    if not self.finish(say, mail, rcpts, self.bdat, "BDAT"):
                        return
                    self.bdat = b""
                else:
                    self.bdat = getattr(self, "bdat", b"") + data
                    say("250 2.0.0 chunk ok")
            elif verb == "RSET":
                mail, rcpts = None, []
                say("250 2.0.0 ok")
            elif verb == "QUIT":
                say("221 2.0.0 bye")
                return
            else:
                say("502 5.5.2 what?")

    def finish(self, say, mail, rcpts, data, verb):
        if self.end == "drop":
            return False
        if self.end.startswith("2"):
            self.messages.append((mail, rcpts, data, verb))
        say(self.end)
        return True


class SmtpSink:
    """Postfix's smtp-sink on a free port, with its options (-r ., -f ., ...)."""

    def __init__(self, *options):
        if not os.path.exists(SMTP_SINK):
            raise unittest.SkipTest("smtp-sink is not installed (postfix)")
        self.port = peers.free_port()
        user = ["-u", "nobody"] if os.geteuid() == 0 else []
        self.proc = subprocess.Popen([SMTP_SINK, *user, *options, f"127.0.0.1:{self.port}", "16"],
                                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        if not peers.wait_port(self.port):
            self.stop()
            raise RuntimeError("smtp-sink did not start")

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)


class HandoffTestCase(InboxdTestCase):
    server_at_setup = False
    sink = None
    server_kwargs = {"maildir": False}

    def hop(self, **kw):
        h = Hop(**kw)
        self.addCleanup(h.stop)
        return h

    def relay_to(self, port, *args, kind="smtp", command_timeout="2"):
        self.server = self.start_server(f"--{kind}-to", f"127.0.0.1:{port}",
                                        "--handoff-command-timeout", command_timeout, *args,
                                        sink=kind,
                                        maildir=False)
        return self.server

    def lmtp_send(self, rcpts, body=BODY):
        """Over our LMTP listener: the reply after the data for each recipient."""
        m = self.server.wait_log(r"listening on 127\.0\.0\.1:(\d+) \(LMTP\)")
        c = harness.Client(int(m.group(1)))
        self.clients.append(c)
        c.reply()
        self.assertReply(c.cmd("LHLO client.test"), "250")
        self.assertReply(c.cmd("MAIL FROM:<s@example.net>"), "250")
        for r in rcpts:
            self.assertReply(c.cmd(f"RCPT TO:<{r}>"), "250")
        self.assertReply(c.cmd("DATA"), "354")
        c.send(harness.stuff(body) + b".\r\n")
        return [r.last for r in c.replies(len(rcpts))]

    def send(self, rcpts, body=BODY):
        """The client's view: (code, text) of the end of data, or of a refused RCPT."""
        with smtplib.SMTP("127.0.0.1", self.server.port, timeout=20) as s:
            try:
                s.sendmail("sender@example.net", rcpts, body)
                return 250, ""
            except smtplib.SMTPRecipientsRefused as e:
                code, text = list(e.recipients.values())[0]
                return code, text.decode()
            except smtplib.SMTPDataError as e:
                return e.smtp_code, e.smtp_error.decode()


class HostileHopTest(HandoffTestCase):
    def test_accepted_message_reaches_the_hop_once_with_dot_stuffing(self):
        hop = self.hop()
        self.relay_to(hop.port)
        self.assertEqual(self.send(["u1@inboxd.test", "u2@inboxd.test"]), (250, ""))
        self.assertEqual(len(hop.messages), 1)
        mail, rcpts, data, verb = hop.messages[0]
        self.assertEqual(rcpts, ["u1@inboxd.test", "u2@inboxd.test"])
        self.assertEqual(verb, "DATA")
        self.assertTrue(data.endswith(b"..a line with a dot\r\nhello\r\n"), data)
        self.assertIn(b"Received: from", data)
        self.assertRegex(self.server.log(), r"status=sent .*hop=\(250 2\.0\.0 Ok: taken\)")

    def test_a_refused_rcpt_fails_the_message_and_nothing_is_sent(self):
        hop = self.hop(rcpt=lambda a: "550 5.1.1 no such user here" if a.startswith("u2") else
                       "250 2.1.5 ok")
        self.relay_to(hop.port)
        code, text = self.send(["u1@inboxd.test", "u2@inboxd.test"])
        self.assertEqual((code, text), (550, "5.1.1 no such user here"))
        self.assertEqual(hop.messages, [])
        self.assertNotIn("DATA", hop.commands)

    def test_garbage_from_the_hop_is_451(self):
        hop = self.hop(end="garbage")
        self.relay_to(hop.port)
        code, text = self.send(["u1@inboxd.test"])
        self.assertEqual(code, 451, text)
        self.server.wait_log(r"garbage")

    def test_bdat_towards_a_chunking_hop(self):
        hop = self.hop(ext=("PIPELINING", "CHUNKING", "8BITMIME"))
        self.relay_to(hop.port)
        big = BODY + b"x" * 100 + b"\r\n" + (b"y" * 70 + b"\r\n") * 20000
        self.assertEqual(self.send(["u1@inboxd.test"], big), (250, ""))
        self.assertEqual(len(hop.messages), 1)
        _, _, data, verb = hop.messages[0]
        self.assertEqual(verb, "BDAT")
        self.assertTrue(data.endswith(big[big.index(b"\r\n\r\n") + 4:]))  # no dot-stuffing
        self.assertGreater(sum(c.startswith("BDAT ") for c in hop.commands), 1)

    def test_pool_reuses_one_connection(self):
        hop = self.hop()
        self.relay_to(hop.port, "--handoff-max-idle", "20")
        before = hop.connections  # the EHLO that asked for DSN at start-up
        for _ in range(3):
            self.assertEqual(self.send(["u1@inboxd.test"]), (250, ""))
        self.assertEqual(len(hop.messages), 3)
        self.assertEqual(hop.connections - before, 1)
        self.assertEqual(hop.commands.count("RSET"), 0)
        # SIGTERM closes the idle connection: the stop does not wait 20 s.
        start = time.monotonic()
        self.assertEqual(self.server.stop(), 0)
        self.assertLess(time.monotonic() - start, 3)
        self.assertIn("stopped", self.server.log())

    def test_no_pool_with_max_idle_zero(self):
        hop = self.hop()
        self.relay_to(hop.port, "--handoff-max-idle", "0")
        before = hop.connections
        for _ in range(2):
            self.assertEqual(self.send(["u1@inboxd.test"]), (250, ""))
        self.assertEqual(hop.connections - before, 2)

    def test_dsn_offered_when_the_hop_offers_it_and_carried_on(self):
        hop = self.hop(ext=("PIPELINING", "DSN"))
        self.relay_to(hop.port)
        c = self.ehlo()
        r = c.cmd("EHLO client.test")
        self.assertIn("250-DSN", r.lines + [l.replace("250 ", "250-") for l in r.lines])
        self.assertReply(c.cmd("MAIL FROM:<s@example.net> RET=HDRS ENVID=e1"), "250")
        self.assertReply(c.cmd("RCPT TO:<u1@inboxd.test> NOTIFY=FAILURE ORCPT=rfc822;o@x.test"),
                         "250")
        self.assertReply(c.cmd("DATA"), "354")
        c.send(BODY + b".\r\n")
        self.assertReply(c.reply(), "250")
        self.assertIn("MAIL FROM:<s@example.net> RET=HDRS ENVID=e1", hop.commands)
        self.assertIn("RCPT TO:<u1@inboxd.test> NOTIFY=FAILURE ORCPT=rfc822;o@x.test", hop.commands)

    def test_smtputf8_only_to_a_hop_that_offers_it(self):
        for ext, want in ((("PIPELINING",), "554 5.6.7"), (("PIPELINING", "SMTPUTF8"), "250")):
            hop = self.hop(ext=ext)
            self.relay_to(hop.port)
            c = self.ehlo()
            self.assertReply(c.cmd("MAIL FROM:<s@example.net> SMTPUTF8"), "250")
            self.assertReply(c.cmd("RCPT TO:<u1@inboxd.test>"), "250")
            self.assertReply(c.cmd("DATA"), "354")
            c.send("Subject: caf\u00e9\r\n\r\nhi\r\n.\r\n".encode())
            self.assertReply(c.reply(), want)
            self.assertEqual(len(hop.messages), 1 if want == "250" else 0)
            if want == "250":
                self.assertTrue(hop.messages[0][0].endswith(" SMTPUTF8"), hop.messages[0])
            self.server.stop()

    def test_no_dsn_without_a_hop_that_offers_it(self):
        hop = self.hop()
        self.relay_to(hop.port)
        r = self.ehlo().cmd("EHLO client.test")
        self.assertFalse(any("DSN" in l for l in r.lines), r)

    def test_memory_stays_bounded_with_a_slow_hop(self):
        ldd = subprocess.run(["ldd", harness.BIN], capture_output=True, text=True).stdout
        if "libasan" in ldd:
            self.skipTest("ASan's quarantine keeps freed buffers in the RSS")
        hop = self.hop(slow=3)
        self.relay_to(hop.port, command_timeout="20")
        start = self.server.rss()
        body = BODY + (b"z" * 998 + b"\r\n") * 9000  # 9 MB
        self.assertEqual(self.send(["u1@inboxd.test"], body), (250, ""))
        self.assertTrue(hop.messages[0][2].endswith(body[len(BODY):]))
        grew = self.server.rss("VmHWM") - start
        self.assertLess(grew, 5 << 20, f"peak RSS grew by {grew >> 20} MiB for a 9 MB message")

    def test_unreachable_hop_is_451(self):
        self.relay_to(peers.free_port())
        code, _ = self.send(["u1@inboxd.test"])
        self.assertEqual(code, 451)
        self.server.wait_log(r"cannot connect to the next hop")

    def test_client_gone_while_the_hop_greets(self):
        # The delivery is aborted before its new connection has greeted: the
        # hop must not call it later (a use-after-free).
        hop = self.hop(greet_delay=1)
        self.relay_to(hop.port, "--handoff-max-idle", "0")
        c = self.ehlo()
        self.assertReply(c.cmd("MAIL FROM:<s@example.net>"), "250")
        self.assertReply(c.cmd("RCPT TO:<u1@inboxd.test>"), "250")
        self.assertReply(c.cmd("DATA"), "354")
        c.send(BODY[:20])
        time.sleep(0.2)
        c.close()
        time.sleep(1.5)  # the hop greets meanwhile
        self.assertTrue(self.server.alive(), self.server.log())
        self.assertEqual(self.send(["u1@inboxd.test"]), (250, ""))
        self.assertEqual(len(hop.messages), 1)
        self.assertEqual(self.server.stop(), 0, self.server.log())

    def test_a_connect_that_fails_at_once_is_451(self):
        # 255.255.255.255: connect() fails with ENETUNREACH before returning.
        self.server = self.start_server("--smtp-to", "255.255.255.255:25",
                                        "--handoff-command-timeout", "2", sink="smtp",
                                        maildir=False)
        start = time.monotonic()
        code, text = self.send(["u1@inboxd.test"])
        self.assertEqual(code, 451, text)
        self.assertLess(time.monotonic() - start, 5)
        self.server.wait_log(r"cannot connect to the next hop")
        self.assertTrue(self.server.alive())

    def test_a_refused_rcpt_resumes_a_paused_session(self):
        # The body passes the high-water mark while the RCPT reply is late;
        # the refusal drops what was held, and the session must go on at once
        # (not wait for the hop to time out).
        hop = self.hop(rcpt_delay=1, rcpt=lambda a: "550 5.1.1 no such user here")
        self.relay_to(hop.port, command_timeout="20")
        start = time.monotonic()
        code, text = self.send(["u1@inboxd.test"], BODY + (b"q" * 998 + b"\r\n") * 2100)
        self.assertEqual((code, text), (550, "5.1.1 no such user here"))
        self.assertLess(time.monotonic() - start, 5)
        self.assertEqual(hop.messages, [])
        self.assertNotIn("DATA", hop.commands)

    def test_lmtp_hop_and_lmtp_client_per_recipient(self):
        hop = self.hop(rcpt=lambda a: "550 5.1.1 unknown" if a.startswith("u2") else "250 ok")
        self.relay_to(hop.port, "--listen-lmtp", "127.0.0.1:0", kind="lmtp")
        replies = self.lmtp_send(["u1@inboxd.test", "u2@inboxd.test"])
        self.assertTrue(replies[0].startswith("250 "), replies)
        self.assertEqual(replies[1], "550 5.1.1 unknown")
        self.assertEqual(len(hop.messages), 1)
        self.assertEqual(hop.messages[0][1], ["u1@inboxd.test"])
        self.assertIn("LHLO", " ".join(hop.commands))


class ConfigTest(HandoffTestCase):
    def check(self, text):
        path = os.path.join(tempfile.mkdtemp(prefix="inboxd-handoff-cfg-"), "inboxd.toml")
        self.addCleanup(shutil.rmtree, os.path.dirname(path), True)
        with open(path, "w") as f:
            f.write(text)
        return harness.run_cli("--check-config", "-c", path)

    def test_keys_are_read_and_checked(self):
        ok = self.check('sink = "smtp"\nsmtp-to = "127.0.0.1:25"\nhandoff-connect-timeout = 5\n'
                        'handoff-command-timeout = 60\nhandoff-data-timeout = 60\n'
                        'handoff-max-idle = 0\nhandoff-dsn = true\nsmtp-tls = "require"\n'
                        'smtp-tls-ca = "/etc/ssl/certs/ca-certificates.crt"\n'
                        'smtp-auth-file = "/nonexistent"\nlmtp-to = "unix:/run/dovecot/lmtp"\n')
        self.assertEqual(ok.returncode, 0, ok.stderr)
        bad = self.check('sink = "smtp"\n')
        self.assertEqual(bad.returncode, 2)
        self.assertIn(b"needs smtp-to", bad.stderr)
        bad = self.check('sink = "lmtp"\nlmtp-to = "x:24"\nsmtp-tls = "maybe"\n')
        self.assertEqual(bad.returncode, 2)
        self.assertIn(b"smtp-tls must be none, may or require", bad.stderr)

    def test_config_file_selects_the_lmtp_sink(self):
        hop = self.hop(rcpt=lambda a: "250 ok")
        self.server = self.start_server(sink=None, maildir=False,
                                        config=f'sink = "lmtp"\nlmtp-to = "127.0.0.1:{hop.port}"\n')
        self.assertEqual(self.send(["u1@inboxd.test"]), (250, ""))
        self.assertIn("LHLO " + harness.HOSTNAME, hop.commands)


class TlsAuthTest(HandoffTestCase):
    def setUp(self):
        super().setUp()
        self.tmp = tempfile.mkdtemp(prefix="inboxd-handoff-tls-")
        self.addCleanup(shutil.rmtree, self.tmp, True)
        self.cert, self.key = os.path.join(self.tmp, "cert.pem"), os.path.join(self.tmp, "key.pem")
        subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                        "ec_paramgen_curve:prime256v1", "-nodes", "-days", "2", "-subj",
                        "/CN=localhost", "-addext", "subjectAltName=DNS:localhost",
                        "-keyout", self.key, "-out", self.cert], check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.ctx.load_cert_chain(self.cert, self.key)
        self.auth_file = os.path.join(self.tmp, "auth")
        with open(self.auth_file, "w") as f:
            f.write("relayuser:s3cret\n")

    def tls_relay(self, hop, ca, *args):
        self.server = self.start_server("--smtp-to", f"localhost:{hop.port}",
                                        "--smtp-tls", "require", "--smtp-tls-ca", ca,
                                        "--handoff-command-timeout", "5", *args, sink="smtp",
                                        maildir=False)

    def test_starttls_verified_and_auth(self):
        hop = self.hop(ext=("PIPELINING", "STARTTLS", "AUTH PLAIN"), tls=self.ctx,
                       auth=("relayuser", "s3cret"))
        self.tls_relay(hop, self.cert, "--smtp-auth-file", self.auth_file)
        self.assertEqual(self.send(["u1@inboxd.test"]), (250, ""))
        self.assertTrue(hop.authenticated)
        self.assertEqual(len(hop.messages), 1)
        mail = next(i for i, c in enumerate(hop.commands) if c.startswith("MAIL"))
        self.assertEqual(hop.commands[mail - 3:mail], ["STARTTLS", "EHLO " + harness.HOSTNAME,
                                                       "AUTH PLAIN " + base64.b64encode(
                                                           b"\0relayuser\0s3cret").decode()])

    def test_require_with_a_bad_ca_fails_and_sends_nothing(self):
        other = os.path.join(self.tmp, "other.pem")
        subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                        "ec_paramgen_curve:prime256v1", "-nodes", "-days", "2", "-subj",
                        "/CN=localhost", "-keyout", os.path.join(self.tmp, "k2"), "-out", other],
                       check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        hop = self.hop(ext=("PIPELINING", "STARTTLS"), tls=self.ctx)
        self.tls_relay(hop, other)
        code, _ = self.send(["u1@inboxd.test"])
        self.assertEqual(code, 451)
        self.assertEqual(hop.messages, [])
        self.assertFalse(any(c.startswith("MAIL") for c in hop.commands))
        self.server.wait_log(r"TLS handshake with the next hop failed")

    def test_require_without_starttls_offered_fails(self):
        hop = self.hop()
        self.tls_relay(hop, self.cert)
        self.assertEqual(self.send(["u1@inboxd.test"])[0], 451)
        self.assertEqual(hop.messages, [])

    def test_no_auth_in_cleartext(self):
        # The hop offers AUTH but no STARTTLS: the password is not sent.
        for tls in ("may", "none"):
            hop = self.hop(ext=("PIPELINING", "AUTH PLAIN"), auth=("relayuser", "s3cret"))
            self.server = self.start_server("--smtp-to", f"127.0.0.1:{hop.port}",
                                            "--smtp-tls", tls, "--smtp-auth-file", self.auth_file,
                                            "--handoff-command-timeout", "5", sink="smtp",
                                            maildir=False)
            code, _ = self.send(["u1@inboxd.test"])
            self.assertEqual(code, 451)
            self.assertEqual(hop.messages, [])
            self.assertFalse(any(c.startswith("AUTH") for c in hop.commands), hop.commands)
            self.assertTrue(self.server.wait_log(r"AUTH needs TLS"), self.server.log())
            self.server.stop()

    def test_bad_auth_is_a_temporary_failure(self):
        hop = self.hop(ext=("PIPELINING", "STARTTLS", "AUTH PLAIN"), tls=self.ctx,
                       auth=("relayuser", "other"))
        self.tls_relay(hop, self.cert, "--smtp-auth-file", self.auth_file)
        self.assertEqual(self.send(["u1@inboxd.test"])[0], 451)
        self.assertEqual(hop.messages, [])


class SmtpSinkTest(HandoffTestCase):
    """Postfix's smtp-sink as a hop that fails in each way it can."""

    def sink_hop(self, *options):
        s = SmtpSink(*options)
        self.addCleanup(s.stop)
        return s

    def test_4xx_after_data_is_the_hops_4xx(self):
        self.relay_to(self.sink_hop("-r", ".").port)
        code, text = self.send(["u1@inboxd.test"])
        self.assertEqual(code // 100, 4, text)
        self.assertRegex(self.server.log(), r"status=deferred")

    def test_5xx_after_data_is_a_5xx(self):
        self.relay_to(self.sink_hop("-f", ".").port)
        code, text = self.send(["u1@inboxd.test"])
        self.assertEqual(code // 100, 5, text)
        self.assertRegex(self.server.log(), r"status=bounced")

    def test_dropped_connection_is_451(self):
        self.relay_to(self.sink_hop("-q", ".").port)
        code, _ = self.send(["u1@inboxd.test"])
        self.assertEqual(code, 451)
        self.server.wait_log(r"next hop closed the connection")

    def test_silent_hop_times_out_with_451(self):
        self.relay_to(self.sink_hop("-w", "10").port)
        start = time.monotonic()
        code, _ = self.send(["u1@inboxd.test"])
        self.assertEqual(code, 451)
        self.assertLess(time.monotonic() - start, 8)
        self.server.wait_log(r"next hop timed out")

    def test_accepting_sink_gives_250(self):
        self.relay_to(self.sink_hop().port)
        self.assertEqual(self.send(["u1@inboxd.test", "u2@inboxd.test"]), (250, ""))


class DovecotTest(HandoffTestCase):
    def setUp(self):
        super().setUp()
        self.dovecot = peers.Dovecot()
        self.addCleanup(self.dovecot.stop)

    def test_lmtp_per_recipient_and_imap_reads_it(self):
        self.relay_to(self.dovecot.lmtp_port, "--listen-lmtp", "127.0.0.1:0", kind="lmtp")
        replies = self.lmtp_send(["alice@inboxd.test", "nobody@inboxd.test", "bob@inboxd.test"])
        self.assertTrue(replies[0].startswith("250 2.0.0 "), replies)
        self.assertTrue(replies[1].startswith("550 5.1.1 <nobody@inboxd.test>"), replies)
        self.assertTrue(replies[2].startswith("250 2.0.0 "), replies)
        for user in ("alice", "bob"):
            msgs = self.dovecot.imap_messages(user)
            self.assertEqual(len(msgs), 1, self.dovecot.log())
            self.assertIn(b"Subject: hand-off", msgs[0])
            self.assertIn(b"\r\n.a line with a dot\r\nhello\r\n", msgs[0])

    def test_smtp_client_unknown_user_stores_nothing(self):
        self.server = self.start_server("--lmtp-to", "unix:" + self.dovecot.lmtp_socket,
                                        sink="lmtp", maildir=False)
        code, text = self.send(["alice@inboxd.test", "nobody@inboxd.test"])
        self.assertEqual(code, 550, text)
        self.assertEqual(self.dovecot.imap_messages("alice"), [])
        self.assertEqual(self.send(["alice@inboxd.test"]), (250, ""))
        self.assertEqual(len(self.dovecot.imap_messages("alice")), 1)


class PostfixHopTest(HandoffTestCase):
    def test_postfix_receives_and_delivers(self):
        final = self.start_server(sink="maildir")
        with postfix.Postfix(f"smtp:[127.0.0.1]:{final.port}") as pf:
            self.relay_to(pf.port)
            self.assertEqual(self.send(["u1@inboxd.test"]), (250, ""))
            st = pf.wait_statuses(["u1@inboxd.test"], want="sent")
            self.assertEqual(st.get("u1@inboxd.test", ("?",))[0], "sent", pf.tail())
            self.assertRegex(pf.maillog(), r"postfix/smtpd\[\d+\]: connect from localhost\[127\.0\.0\.1\]")
        stored = self.stored(final.maildir)
        self.assertEqual(len(stored), 1)
        self.assertIn(b"\nSubject: hand-off\n", stored[0])
        self.assertTrue(stored[0].endswith(b"\n\n.a line with a dot\nhello\n"), stored[0][-200:])


if __name__ == "__main__":
    harness.main()
