"""LMTP server mode (RFC 2033), with Postfix as a real LMTP client.

Postfix (tests/integration/postfix.py, a private instance, root only) hands
mail to inboxd over LMTP on TCP and on a unix socket, into Maildir and mbox;
when one recipient's mailbox fails, Postfix defers that recipient (451 4.3.0
in its log) and the other is delivered, and our store holds exactly that.
Python's smtplib.LMTP covers the unix socket on its own: LHLO, HELO refused,
one reply per accepted recipient after the data."""
import mailbox
import os
import re
import shutil
import smtplib
import stat
import unittest

import harness
import postfix
from harness import InboxdTestCase

BODY = b"From: a@example.net\r\nSubject: lmtp\r\n\r\nhello over LMTP\r\n"
LMTP_RE = re.compile(r"listening on 127\.0\.0\.1:(\d+) \(LMTP\)")


class LmtpTestCase(InboxdTestCase):
    sink = None
    server_kwargs = {"maildir": False}

    def lmtp_port(self):
        m = self.server.wait_log(LMTP_RE.pattern)
        self.assertIsNotNone(m, self.server.log())
        return int(m.group(1))

    def maildir_messages(self, user):
        new = os.path.join(self.server.dir, "mail", user, "new")
        if not os.path.isdir(new):
            return []
        return list(harness.read_files(new).values())

    def postfix_delivers(self, transport, rcpts, wait_for=None, want="sent", timeout=30):
        """Postfix takes one message for rcpts and hands it on by transport; waits
        until each of wait_for (default: rcpts) has status want in its log."""
        pf = postfix.Postfix(transport)
        pf.start()
        self.addCleanup(pf.stop)
        refused = pf.submit("sender@example.net", rcpts, BODY)
        self.assertEqual(refused, {})
        got = pf.wait_statuses(wait_for or rcpts, want=want, timeout=timeout)
        return pf, got


class PostfixMaildirTest(LmtpTestCase):
    server_args = ("--maildir", "mail/{user}", "--listen-lmtp", "127.0.0.1:0")

    def test_postfix_delivers_over_lmtp_inet(self):
        rcpts = ["u1@inboxd.test", "u2@inboxd.test"]
        pf, got = self.postfix_delivers(f"lmtp:inet:127.0.0.1:{self.lmtp_port()}", rcpts)
        for r in rcpts:
            self.assertEqual(got.get(r, ("none",))[0], "sent", pf.tail())
            self.assertIn("250 2.0.0 Ok: delivered to <" + r, got[r][1])
        for user in ("u1", "u2"):
            msgs = self.maildir_messages(user)
            self.assertEqual(len(msgs), 1, user)
            data = msgs[0]
            self.assertIn(b"with LMTP id", data)
            self.assertIn(b"hello over LMTP", data)
        self.assertIn("(LMTP)", self.server.log())
        self.assertTrue(pf.wait_drained(10), pf.tail())

    def test_failing_mailbox_is_deferred_and_the_other_delivered(self):
        # u1's Maildir is a regular file: the first mailbox fails (the message
        # is staged in the next one), u2 is delivered.
        os.makedirs(os.path.join(self.server.dir, "mail"), exist_ok=True)
        with open(os.path.join(self.server.dir, "mail", "u1"), "w") as f:
            f.write("not a Maildir\n")
        rcpts = ["u1@inboxd.test", "u2@inboxd.test"]
        pf, _ = self.postfix_delivers(f"lmtp:inet:127.0.0.1:{self.lmtp_port()}", rcpts,
                                      ["u2@inboxd.test"])
        got = pf.wait_statuses(["u1@inboxd.test"], want="deferred", timeout=30)
        self.assertEqual(got.get("u1@inboxd.test", ("none",))[0], "deferred", pf.tail())
        self.assertRegex(got["u1@inboxd.test"][1], r"451 4\.3\.0")
        self.assertEqual(got.get("u2@inboxd.test", ("none",))[0], "sent", pf.tail())
        self.assertEqual(len(self.maildir_messages("u2")), 1)
        self.assertIn("mailbox=u1@inboxd.test not stored", self.server.log())
        self.assertRegex(self.server.log(), r"to=<u1@inboxd.test> size=\d+ status=deferred")


class PostfixMboxUnixTest(LmtpTestCase):

    @classmethod
    def setUpClass(cls):
        if os.geteuid() != 0:
            raise unittest.SkipTest("a socket owned by postfix, and Postfix itself, need root")

    def setUp(self):
        self.clients = []  # Each test starts its server (start()): the socket's path comes first.

    def start(self, *extra):
        import tempfile
        d = tempfile.mkdtemp(prefix="inboxd-lmtp-")
        os.chmod(d, 0o711)
        self.sock = os.path.join(d, "lmtp.sock")
        self.addCleanup(shutil.rmtree, d, ignore_errors=True)
        self.server = self.start_server("--mbox", "mail/{user}", "--listen-lmtp",
                                        "unix:" + self.sock, "--unix-socket-owner", "postfix",
                                        *extra, sink=None, maildir=False)
        self.assertIsNotNone(self.server.wait_log(r"listening on unix:.* \(LMTP\)"))

    def mbox_messages(self, user):
        path = os.path.join(self.server.dir, "mail", user)
        if not os.path.exists(path):
            return []
        box = mailbox.mbox(path)
        try:
            return list(box)
        finally:
            box.close()

    def test_postfix_delivers_over_lmtp_unix_into_mbox(self):
        self.start()
        st = os.stat(self.sock)
        self.assertTrue(stat.S_ISSOCK(st.st_mode))
        self.assertEqual(stat.S_IMODE(st.st_mode), 0o660)
        import pwd
        self.assertEqual(st.st_uid, pwd.getpwnam("postfix").pw_uid)
        rcpts = ["u1@inboxd.test", "u2@inboxd.test"]
        pf, got = self.postfix_delivers("lmtp:unix:" + self.sock, rcpts)
        for r in rcpts:
            self.assertEqual(got.get(r, ("none",))[0], "sent", pf.tail())
        for user in ("u1", "u2"):
            msgs = self.mbox_messages(user)
            self.assertEqual(len(msgs), 1, user)
            self.assertIn("(unix socket)", msgs[0]["Received"])
            self.assertIn(b"hello over LMTP", msgs[0].as_bytes())
        self.server.stop()
        self.assertFalse(os.path.exists(self.sock), "the socket is removed at exit")

    def test_failing_mbox_is_deferred_and_the_other_delivered(self):
        self.start()
        os.makedirs(os.path.join(self.server.dir, "mail", "u2"))  # a folder, not an mbox
        rcpts = ["u1@inboxd.test", "u2@inboxd.test"]
        pf, _ = self.postfix_delivers("lmtp:unix:" + self.sock, rcpts, ["u1@inboxd.test"])
        got = pf.wait_statuses(["u2@inboxd.test"], want="deferred", timeout=30)
        self.assertEqual(got.get("u2@inboxd.test", ("none",))[0], "deferred", pf.tail())
        self.assertRegex(got["u2@inboxd.test"][1], r"4\.\d\.\d")
        self.assertEqual(got.get("u1@inboxd.test", ("none",))[0], "sent", pf.tail())
        self.assertEqual(len(self.mbox_messages("u1")), 1)


class SmtplibLmtpTest(LmtpTestCase):

    def setUp(self):
        self.clients = []
        import tempfile
        d = tempfile.mkdtemp(prefix="inboxd-lmtp-")
        self.sock = os.path.join(d, "lmtp.sock")
        self.addCleanup(shutil.rmtree, d, ignore_errors=True)
        self.server = self.start_server("--maildir", "mail/{user}", "--listen-lmtp",
                                        "unix:" + self.sock, sink=None, maildir=False)
        self.assertIsNotNone(self.server.wait_log(r"listening on unix:.* \(LMTP\)"))

    def test_smtplib_lmtp_over_the_unix_socket(self):
        os.makedirs(os.path.join(self.server.dir, "mail"), exist_ok=True)
        with open(os.path.join(self.server.dir, "mail", "bad"), "w") as f:
            f.write("not a Maildir\n")
        c = smtplib.LMTP(self.sock, timeout=harness.TIMEOUT)
        self.addCleanup(c.close)
        self.assertEqual(c.docmd("HELO", "client.test")[0], 500)
        self.assertEqual(c.docmd("EHLO", "client.test")[0], 500)
        code, _ = c.ehlo("client.test")  # smtplib.LMTP sends LHLO
        self.assertEqual(code, 250)
        self.assertTrue(c.has_extn("pipelining"))
        self.assertTrue(c.has_extn("enhancedstatuscodes"))
        self.assertEqual(c.mail("a@example.net")[0], 250)
        for r in ("ok1@inboxd.test", "bad@inboxd.test", "ok2@inboxd.test"):
            self.assertEqual(c.rcpt(r)[0], 250)
        self.assertEqual(c.docmd("DATA")[0], 354)
        c.send(BODY + b".\r\n")
        replies = [c.getreply() for _ in range(3)]
        self.assertEqual([r[0] for r in replies], [250, 451, 250], replies)
        self.assertIn(b"<ok1@inboxd.test>", replies[0][1])
        self.assertIn(b"<ok2@inboxd.test>", replies[2][1])
        self.assertEqual(c.docmd("QUIT")[0], 221)
        for user, n in (("ok1", 1), ("ok2", 1)):
            self.assertEqual(len(self.maildir_messages(user)), n)
        self.assertIn("connect from unix socket (LMTP)", self.server.log())
        self.server.stop()
        self.assertFalse(os.path.exists(self.sock))


class SmtplibLmtpMboxTest(LmtpTestCase):
    """mbox over LMTP without Postfix: the mbox that fails (a folder in its place)
    fails alone; the others keep the message, each told so in its own reply."""

    def setUp(self):
        self.clients = []
        import tempfile
        d = tempfile.mkdtemp(prefix="inboxd-lmtp-")
        self.sock = os.path.join(d, "lmtp.sock")
        self.addCleanup(shutil.rmtree, d, ignore_errors=True)
        self.server = self.start_server("--mbox", "mail/{user}", "--listen-lmtp",
                                        "unix:" + self.sock, sink=None, maildir=False)
        self.assertIsNotNone(self.server.wait_log(r"listening on unix:.* \(LMTP\)"))

    def test_one_failing_mbox_fails_alone(self):
        os.makedirs(os.path.join(self.server.dir, "mail", "bad"))
        c = smtplib.LMTP(self.sock, timeout=harness.TIMEOUT)
        self.addCleanup(c.close)
        self.assertEqual(c.ehlo("client.test")[0], 250)
        self.assertEqual(c.mail("a@example.net")[0], 250)
        for r in ("bad@inboxd.test", "ok1@inboxd.test", "ok2@inboxd.test"):
            self.assertEqual(c.rcpt(r)[0], 250)
        self.assertEqual(c.docmd("DATA")[0], 354)
        c.send(BODY + b".\r\n")
        codes = [c.getreply()[0] for _ in range(3)]
        self.assertEqual(codes[1:], [250, 250])
        self.assertIn(codes[0] // 100, (4, 5), codes)
        for user in ("ok1", "ok2"):
            box = mailbox.mbox(os.path.join(self.server.dir, "mail", user))
            try:
                self.assertEqual(len(box), 1)
            finally:
                box.close()
        self.assertEqual(c.docmd("QUIT")[0], 221)


class UnixSocketListenerTest(LmtpTestCase):
    """unix:/path on the plain SMTP listener; a stale socket is replaced, a live one
    or a file that is not a socket is refused."""

    def setUp(self):
        self.clients = []
        import tempfile
        self.d = tempfile.mkdtemp(prefix="inboxd-unix-")
        self.addCleanup(shutil.rmtree, self.d, ignore_errors=True)
        self.sock = os.path.join(self.d, "smtp.sock")
        self.server = None

    def start(self, *args):
        self.server = self.start_server("--listen", "unix:" + self.sock, *args)
        self.assertIsNotNone(self.server.wait_log(r"listening on unix:"), self.server.log())

    def converse(self, lines):
        import socket
        s = socket.socket(socket.AF_UNIX)
        s.settimeout(harness.TIMEOUT)
        s.connect(self.sock)
        f = s.makefile("rb")
        out = [f.readline()]
        for line in lines:
            s.sendall(line + b"\r\n")
            while True:
                reply = f.readline()
                out.append(reply)
                if reply[3:4] != b"-":
                    break
        s.close()
        return out

    def test_smtp_over_a_unix_socket_with_a_stale_socket_replaced(self):
        import socket
        stale = socket.socket(socket.AF_UNIX)
        stale.bind(self.sock)  # bound, never listening: what a crash leaves
        stale.close()
        self.start("--unix-socket-mode", "0600")
        self.assertIn("removed a stale socket", self.server.log())
        self.assertEqual(stat.S_IMODE(os.stat(self.sock).st_mode), 0o600)
        out = self.converse([b"EHLO client.test", b"MAIL FROM:<a@example.net>",
                             b"RCPT TO:<u@inboxd.test>", b"DATA",
                             BODY + b".", b"QUIT"])
        self.assertTrue(out[0].startswith(b"220 "), out)
        self.assertTrue(out[-2].startswith(b"250 2.0.0 Ok: queued as"), out)
        stored = self.stored()
        self.assertEqual(len(stored), 1)
        self.assertIn(b"Received: from client.test (unix socket)", stored[0])

    def test_a_live_socket_or_a_file_is_not_replaced(self):
        self.start()
        proc = harness.run_cli("--listen", "unix:" + self.sock, "--maildir",
                               os.path.join(self.d, "md"), "--allow-root")
        self.assertEqual(proc.returncode, 2)
        self.assertIn("another server listens on it", proc.stderr.decode())
        path = os.path.join(self.d, "file")
        with open(path, "w") as f:
            f.write("x")
        proc = harness.run_cli("--listen", "unix:" + path, "--maildir",
                               os.path.join(self.d, "md"), "--allow-root")
        self.assertEqual(proc.returncode, 2)
        self.assertIn("not a socket", proc.stderr.decode())
        with open(path) as f:
            self.assertEqual(f.read(), "x")


class PostfixSmtpRelayTest(LmtpTestCase):
    """postfix.py with an SMTP transport: Postfix relays to inboxd's SMTP listener."""
    server_args = ("--maildir", "mail/{user}")

    def test_postfix_relays_over_smtp(self):
        rcpts = ["u1@inboxd.test", "u2@inboxd.test"]
        pf, got = self.postfix_delivers(f"smtp:[127.0.0.1]:{self.server.port}", rcpts)
        for r in rcpts:
            self.assertEqual(got.get(r, ("none",))[0], "sent", pf.tail())
            self.assertIn("queued as", got[r][1])
        for user in ("u1", "u2"):
            self.assertEqual(len(self.maildir_messages(user)), 1)


if __name__ == "__main__":
    unittest.main()
