"""Milters (--milter), against real ones: opendkim signing (the stored message
carries a DKIM-Signature that verifies with the public key, checked with
openssl), a Perl milter written with Sendmail::PMilter (rejects a RCPT and a
body, adds and changes headers, changes a recipient), and scripted milters in
this file: one that never answers, one that stalls at the end of the message,
one that sends garbage, one that is absent; both default actions; and a 20 MB
message held under a 1 MiB memory budget that reaches the store intact."""
import hashlib
import os
import shutil
import socketserver
import struct
import subprocess
import tempfile
import threading
import time
import unittest

import harness
import peers
from harness import InboxdTestCase

HERE = os.path.dirname(os.path.abspath(__file__))
PMILTER = os.path.join(HERE, "milters", "pmilter.pl")
MSG = b"From: a@example.com\r\nTo: ok@example.com\r\nSubject: hello\r\n\r\nbody line\r\n"


class ScriptedMilter(socketserver.ThreadingTCPServer):
    """A milter in Python: 'silent' never answers; 'stall' answers everything
    but the end of the message; 'discard' discards the message; 'garbage' answers the end of the message with
    bytes that are no packet; 'count' counts the body and adds X-Body: with
    its size and SHA-256."""
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, mode):
        self.mode = mode
        super().__init__(("127.0.0.1", 0), ScriptedHandler)
        self.port = self.server_address[1]
        threading.Thread(target=self.serve_forever, daemon=True).start()


def packet(code, data=b""):
    return struct.pack(">I", len(data) + 1) + code + data


class ScriptedHandler(socketserver.BaseRequestHandler):
    def read(self, n):
        out = b""
        while len(out) < n:
            got = self.request.recv(n - len(out))
            if not got:
                raise EOFError
            out += got
        return out

    def handle(self):
        mode = self.server.mode
        body = hashlib.sha256()
        size = 0
        try:
            while True:
                (length,) = struct.unpack(">I", self.read(4))
                data = self.read(length)
                cmd, data = data[:1], data[1:]
                if mode == "silent" or cmd in (b"D", b"A"):
                    continue
                if cmd == b"Q":
                    return
                if cmd == b"O":
                    self.request.sendall(packet(b"O", struct.pack(">III", 6, 0x1ff, 0)))
                elif cmd == b"B":
                    body.update(data)
                    size += len(data)
                    self.request.sendall(packet(b"c"))
                elif cmd == b"E":
                    if mode == "stall":
                        continue
                    if mode == "discard":
                        self.request.sendall(packet(b"d"))
                        continue
                    if mode == "garbage":
                        self.request.sendall(b"HTTP/1.1 400 Bad Request\r\n\r\n")
                        continue
                    value = f"{size} {body.hexdigest()}".encode()
                    self.request.sendall(packet(b"h", b"X-Body\0" + value + b"\0") + packet(b"c"))
                    body, size = hashlib.sha256(), 0
                else:
                    self.request.sendall(packet(b"c"))
        except (EOFError, OSError):
            pass


class MilterCase(InboxdTestCase):
    server_at_setup = False

    def serve(self, *milter_args, maildir="{user}"):
        self.server = self.start_server(*milter_args, "--maildir", "mail/" + maildir, maildir=False)
        return self.server

    def mailbox(self, user):
        new = os.path.join(self.server.dir, "mail", user, "new")
        return self.stored(os.path.join(self.server.dir, "mail", user)) if os.path.isdir(new) else []

    def send_one(self, rcpts=("ok@example.com",), data=MSG):
        c = self.ehlo()
        self.assertReply(c.cmd("MAIL FROM:<a@example.com>"), "250")
        for r in rcpts:
            self.assertReply(c.cmd(f"RCPT TO:<{r}>"), "250")
        self.assertReply(c.cmd("DATA"), "354")
        c.send(harness.stuff(data) + b".\r\n")
        return c, c.reply()


class PerlMilterTest(MilterCase):
    def setUp(self):
        super().setUp()
        self.mport = peers.free_port()
        peers.start_process(self, ["perl", PMILTER, str(self.mport)], self.mport)
        self.serve("--milter", f"inet:127.0.0.1:{self.mport}")

    def test_rcpt_refusals_are_the_milters_replies(self):
        c = self.ehlo()
        self.assertReply(c.cmd("MAIL FROM:<a@example.com>"), "250 2.1.0")
        r = c.cmd("RCPT TO:<reject@example.com>")
        self.assertEqual(r.last, "550 5.7.1 pmilter refuses this recipient")
        self.assertReply(c.cmd("RCPT TO:<tempfail@example.com>"), "451 4.7.1")
        self.assertReply(c.cmd("RCPT TO:<ok@example.com>"), "250 2.1.5")
        self.assertReply(c.cmd("DATA"), "354")
        c.send(MSG + b".\r\n")
        self.assertQueued(c.reply())
        self.assertEqual(len(self.mailbox("ok")), 1)
        self.assertEqual(self.mailbox("reject"), [])
        self.assertIsNotNone(self.server.wait_log(
            r"status=sent .* filters=\(milter inet:127\.0\.0\.1:\d+: replycode 550"))

    def test_headers_added_and_changed_and_recipient_changed(self):
        c, r = self.send_one(("change-me@example.com", "ok@example.com"))
        qid = self.assertQueued(r)
        self.assertEqual(self.mailbox("change-me"), [])
        for user in ("ok", "changed"):
            msgs = self.mailbox(user)
            self.assertEqual(len(msgs), 1, user)
            head, _, body = msgs[0].partition(b"\n\n")
            self.assertIn(b"\nSubject: changed by pmilter\n", head + b"\n")
            self.assertNotIn(b"Subject: hello", head)
            # The milter saw the body with CRLF line ends and the queue id.
            self.assertIn(f"X-PMilter: seen; body=crlf; queue={qid}".encode(), head)
            self.assertEqual(body, b"body line\n")
        self.assertIn("delrcpt change-me@example.com; addrcpt changed@example.com",
                      self.server.log())

    def test_two_milters_in_order(self):
        m = ScriptedMilter("count")
        self.addCleanup(m.server_close)
        self.addCleanup(m.shutdown)
        self.server.stop()
        self.serve("--milter", f"127.0.0.1:{self.mport}", "--milter", f"127.0.0.1:{m.port}")
        c, r = self.send_one()
        self.assertQueued(r)
        head = self.mailbox("ok")[0].partition(b"\n\n")[0]
        # The second saw the message as the first changed it, and added below.
        self.assertRegex(head, rb"Subject: changed by pmilter\nX-PMilter: seen.*\nX-Body: 11 ")

    def test_body_refused_at_the_end_of_the_message(self):
        c, r = self.send_one(data=b"Subject: x\r\n\r\nplease REJECT-BODY now\r\n")
        self.assertEqual(r.last, "554 5.7.1 pmilter refuses this body")
        self.assertEqual(self.mailbox("ok"), [])
        # The session goes on: the next message is accepted.
        self.assertReply(c.cmd("MAIL FROM:<a@example.com>"), "250")


@unittest.skipUnless(shutil.which("opendkim") and shutil.which("opendkim-genkey"),
                     "opendkim and opendkim-tools are not installed")
class OpendkimTest(MilterCase):
    def setUp(self):
        super().setUp()
        self.mport, self.public, self.kdir = peers.start_opendkim(self)
        self.serve("--milter", f"127.0.0.1:{self.mport}")

    def test_stored_message_carries_a_signature_that_verifies(self):
        data = (b"From: Alice <a@example.com>\r\nTo: ok@example.com\r\nSubject:  signed\r\n"
                b"  folded\r\nDate: Wed, 2 Dec 2026 12:00:00 +0000\r\n\r\nhello  \r\n\r\n"
                b"second paragraph\r\n\r\n\r\n")
        c, r = self.send_one(data=data)
        self.assertQueued(r)
        msgs = self.mailbox("ok")
        self.assertEqual(len(msgs), 1)
        stored = msgs[0]
        self.assertIn(b"DKIM-Signature:", stored)
        self.assertIn(b"d=example.com", stored)
        self.assertIsNone(peers.dkim_verify(stored.replace(b"\n", b"\r\n"), self.public, self.kdir))
        # A changed body no longer verifies: the check can fail.
        forged = stored.replace(b"second paragraph", b"forged paragraph")
        self.assertIsNotNone(peers.dkim_verify(forged.replace(b"\n", b"\r\n"), self.public, self.kdir))
        self.assertIn("insheader DKIM-Signature", self.server.log())


class FailingMilterTest(MilterCase):
    def scripted(self, mode):
        m = ScriptedMilter(mode)
        self.addCleanup(m.server_close)
        self.addCleanup(m.shutdown)
        return m.port

    def absent(self):
        return peers.free_port()

    def test_silent_milter_times_out_tempfail(self):
        port = self.scripted("silent")
        self.serve("--milter", f"127.0.0.1:{port}", "--milter-command-timeout", "1")
        c = harness.Client(self.server.port)
        self.clients.append(c)
        t = time.time()
        self.assertReply(c.reply(), "421")
        self.assertLess(time.time() - t, 10)
        self.server.wait_log(r"timeout; default action tempfail")

    def test_silent_milter_times_out_accept(self):
        port = self.scripted("silent")
        self.serve("--milter", f"127.0.0.1:{port}", "--milter-command-timeout", "1",
                   "--milter-default-action", "accept")
        c, r = self.send_one()
        self.assertQueued(r)
        self.assertEqual(len(self.mailbox("ok")), 1)

    def test_stall_at_end_of_message_is_tempfail(self):
        port = self.scripted("stall")
        self.serve("--milter", f"127.0.0.1:{port}", "--milter-content-timeout", "1")
        c, r = self.send_one()
        self.assertReply(r, "451 4.7.1")
        self.assertEqual(self.mailbox("ok"), [])
        # Later commands get the default action too.
        self.assertReply(c.cmd("MAIL FROM:<a@example.com>"), "451 4.7.1")

    def test_stall_at_end_of_message_accept_stores_it_unchanged(self):
        port = self.scripted("stall")
        self.serve("--milter", f"127.0.0.1:{port}", "--milter-content-timeout", "1",
                   "--milter-default-action", "accept")
        c, r = self.send_one()
        self.assertQueued(r)
        msgs = self.mailbox("ok")
        self.assertEqual(len(msgs), 1)
        self.assertTrue(msgs[0].endswith(b"Subject: hello\n\nbody line\n"))

    def test_client_gone_while_the_milter_holds_the_message(self):
        port = self.scripted("stall")
        self.serve("--milter", f"127.0.0.1:{port}", "--milter-content-timeout", "2")
        c = self.ehlo()
        self.assertReply(c.cmd("MAIL FROM:<a@example.com>"), "250")
        self.assertReply(c.cmd("RCPT TO:<ok@example.com>"), "250")
        self.assertReply(c.cmd("DATA"), "354")
        c.send(MSG + b".\r\n")
        time.sleep(0.3)
        c.close()
        self.server.wait_log(r"disconnect from")
        time.sleep(2.5)  # Past the content timeout: nothing is stored, nothing breaks.
        self.assertEqual(self.mailbox("ok"), [])
        c2, r = self.send_one()
        self.assertReply(r, "451 4.7.1")

    def test_discard_at_the_end_is_250_and_nothing_stored(self):
        port = self.scripted("discard")
        self.serve("--milter", f"127.0.0.1:{port}")
        c, r = self.send_one()
        self.assertQueued(r)
        self.assertEqual(self.mailbox("ok"), [])
        self.assertIsNotNone(self.server.wait_log(r"milter 127\.0\.0\.1:\d+: discard"))

    def test_garbage_is_tempfail_and_logged(self):
        port = self.scripted("garbage")
        self.serve("--milter", f"127.0.0.1:{port}")
        c, r = self.send_one()
        self.assertReply(r, "451 4.7.1")
        self.assertEqual(self.mailbox("ok"), [])
        self.assertIsNotNone(self.server.wait_log(r"bad packet: packet too long; default action"))

    def test_absent_milter_tempfail(self):
        self.serve("--milter", f"127.0.0.1:{self.absent()}")
        c = harness.Client(self.server.port)
        self.clients.append(c)
        self.assertReply(c.reply(), "421")
        self.assertIsNotNone(self.server.wait_log(r"cannot connect: connection refused"))

    def test_absent_milter_accept(self):
        self.serve("--milter", f"unix:{tempfile.gettempdir()}/inboxd-no-such-milter.sock",
                   "--milter-default-action", "accept")
        c, r = self.send_one()
        self.assertQueued(r)
        self.assertEqual(len(self.mailbox("ok")), 1)


class ReloadTest(MilterCase):
    def test_reload_gives_new_connections_new_milters(self):
        port = peers.free_port()
        conf = f'milter = ["127.0.0.1:{port}"]\nmilter-default-action = "accept"\n'
        self.server = self.start_server("--maildir", "mail/{user}", maildir=False, config=conf)
        old = self.ehlo()  # Began with the old milters, it keeps them.
        c, r = self.send_one()
        self.assertQueued(r)
        self.server.write_config(conf.replace("accept", "tempfail"))
        self.assertIn("reloaded", self.server.reload())
        c = harness.Client(self.server.port)
        self.clients.append(c)
        self.assertReply(c.reply(), "421")
        self.assertReply(old.cmd("MAIL FROM:<a@example.com>"), "250")


class ConfigTest(unittest.TestCase):
    def check(self, *args):
        return subprocess.run([harness.BIN, "--check-config", "--listen", "127.0.0.1:0", *args],
                              capture_output=True, text=True, timeout=30)

    def test_addresses_and_default_action_are_checked(self):
        self.assertEqual(self.check("--milter", "127.0.0.1:8891").returncode, 0)
        self.assertEqual(self.check("--milter", "unix:/run/opendkim.sock").returncode, 0)
        r = self.check("--milter", "127.0.0.1")
        self.assertNotEqual(r.returncode, 0)
        self.assertIn("is not HOST:PORT or unix:PATH", r.stderr)
        self.assertNotEqual(self.check("--milter", "h:99999").returncode, 0)
        self.assertNotEqual(self.check("--milter-default-action", "reject").returncode, 0)

    def test_toml_keys(self):
        d = tempfile.mkdtemp(prefix="inboxd-milter-conf-")
        self.addCleanup(shutil.rmtree, d, True)
        path = os.path.join(d, "inboxd.toml")
        with open(path, "w") as f:
            f.write('milter = ["inet:127.0.0.1:8891", "unix:/run/x.sock"]\n'
                    'milter-default-action = "accept"\nmilter-connect-timeout = 5\n'
                    'milter-command-timeout = 5\nmilter-content-timeout = 60\n')
        self.assertEqual(self.check("-c", path).returncode, 0, self.check("-c", path).stderr)
        with open(path, "w") as f:
            f.write('milter-default-action = "discard"\n')
        r = self.check("-c", path)
        self.assertNotEqual(r.returncode, 0)
        self.assertIn("milter-default-action must be tempfail or accept", r.stderr)


class LargeMessageTest(MilterCase):
    def test_20mb_message_under_1mib_budget_passes_intact(self):
        m = ScriptedMilter("count")
        self.addCleanup(m.server_close)
        self.addCleanup(m.shutdown)
        self.serve("--milter", f"127.0.0.1:{m.port}", "--memory-budget", "1048576",
                   "--max-message-size", "30000000")
        line = b"0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ" * 2 + b"\r\n"
        body = line * (20 * 1024 * 1024 // len(line))
        data = b"Subject: big\r\n\r\n" + body
        c = self.ehlo()
        c.set_timeout(120)
        self.assertReply(c.cmd("MAIL FROM:<a@example.com>"), "250")
        self.assertReply(c.cmd("RCPT TO:<ok@example.com>"), "250")
        self.assertReply(c.cmd("DATA"), "354")
        c.send(data + b".\r\n")
        self.assertQueued(c.reply())
        msgs = self.mailbox("ok")
        self.assertEqual(len(msgs), 1)
        head, _, stored_body = msgs[0].partition(b"\n\n")
        self.assertEqual(stored_body, body.replace(b"\r\n", b"\n"))
        # The milter saw every byte of it, with CRLF line ends.
        want = f"X-Body: {len(body)} {hashlib.sha256(body).hexdigest()}".encode()
        self.assertIn(want, head)

    def test_spool_that_fails_is_451_and_logged(self):
        m = ScriptedMilter("count")
        self.addCleanup(m.server_close)
        self.addCleanup(m.shutdown)
        old = os.environ.get("TMPDIR")
        os.environ["TMPDIR"] = "/nonexistent-inboxd-spool"
        try:
            self.serve("--milter", f"127.0.0.1:{m.port}", "--memory-budget", "1048576")
        finally:
            if old is None:
                del os.environ["TMPDIR"]
            else:
                os.environ["TMPDIR"] = old
        c, r = self.send_one(data=b"Subject: big\r\n\r\n" + (b"x" * 998 + b"\r\n") * 2100)
        self.assertReply(r, "451")
        self.assertEqual(self.mailbox("ok"), [])
        self.assertIsNotNone(self.server.wait_log(r"cannot hold the message in /nonexistent"))

if __name__ == "__main__":
    unittest.main()
