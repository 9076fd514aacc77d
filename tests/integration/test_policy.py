"""Policy delegation (Postfix's SMTPD_POLICY_README) with real policy servers.

postgrey (Debian's, started here on loopback with its own database) greylists:
the first attempt gets 450 4.2.0, a retry after the delay is accepted and
stored with postgrey's X-Greylist header. A policy server written here
answers each access(5) action, garbage, an oversize answer, silence (the
timeout, then the default action), or drops the connection (tried again on
a new one); an absent server gets the default action; one connection serves
many sessions; with --policy-at-data it is asked at END-OF-MESSAGE too."""
import os
import shutil
import socketserver
import tempfile
import threading
import time
import unittest

import harness
import peers
from harness import InboxdTestCase

BODY = b"From: a@example.net\r\nSubject: policy\r\n\r\nhello\r\n"


class PolicyServer:
    """A policy server on 127.0.0.1:<free port>, in a thread. answer(attrs, n)
    gives the bytes to send for the n-th request (from 0) as a dict; None sends
    nothing (silence); "drop" closes the connection unanswered."""

    def __init__(self, answer, unix_path=None):
        self.answer = answer
        self.requests = []
        self.connections = 0
        self.closed = 0  # connections the client closed
        outer = self

        class Handler(socketserver.StreamRequestHandler):
            def handle(self):
                outer.connections += 1
                try:
                    self.serve()
                finally:
                    outer.closed += 1

            def serve(self):
                while True:
                    attrs = {}
                    while True:
                        line = self.rfile.readline()
                        if not line:
                            return
                        line = line.rstrip(b"\n").decode("utf-8", "replace")
                        if not line:
                            break
                        k, _, v = line.partition("=")
                        attrs[k] = v
                    n = len(outer.requests)
                    outer.requests.append(attrs)
                    out = outer.answer(attrs, n)
                    if out == "drop":
                        return
                    if out is None:
                        time.sleep(5)
                        return
                    self.wfile.write(out if isinstance(out, bytes) else f"action={out}\n\n".encode())

        class Server(socketserver.ThreadingTCPServer):
            daemon_threads = True
            allow_reuse_address = True

        class UnixServer(socketserver.ThreadingUnixStreamServer):
            daemon_threads = True

        if unix_path:
            self.server = UnixServer(unix_path, Handler)
            self.port = None
        else:
            self.server = Server(("127.0.0.1", 0), Handler)
            self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def stop(self):
        self.server.shutdown()
        self.server.server_close()


class PolicyCase(InboxdTestCase):
    server_at_setup = False

    def with_policy(self, answer, *args):
        """A policy server answering by `answer`, and an inboxd asking it."""
        p = PolicyServer(answer)
        self.addCleanup(p.stop)
        self.server = self.start_server("--policy-service", f"127.0.0.1:{p.port}", *args)
        return p

    def rcpt_replies(self, rcpts, sender="a@example.net"):
        c = self.ehlo()
        self.assertReply(c.cmd(f"MAIL FROM:<{sender}>"), "250")
        return c, [c.cmd(f"RCPT TO:<{r}>").last for r in rcpts]


class ActionsTest(PolicyCase):
    def test_reject_is_per_recipient_and_the_request_has_the_attributes(self):
        p = self.with_policy(lambda a, n: "REJECT not here" if a["recipient"] == "no@example.com"
                             else "DUNNO")
        c, replies = self.rcpt_replies(["no@example.com", "yes@example.com"])
        self.assertEqual(replies[0], "554 5.7.1 <no@example.com>: Recipient address rejected: not here")
        self.assertTrue(replies[1].startswith("250 2.1.5"), replies)
        self.assertReply(c.cmd("DATA"), "354")
        c.send(BODY + b".\r\n")
        self.assertQueued(c.reply())
        stored = self.stored()
        self.assertEqual(len(stored), 1)
        self.assertIn(b"for <yes@example.com>", stored[0])
        a = p.requests[0]
        self.assertEqual(a["request"], "smtpd_access_policy")
        self.assertEqual(a["protocol_state"], "RCPT")
        self.assertEqual(a["client_address"], "127.0.0.1")
        self.assertEqual(a["helo_name"], harness.HELO)
        self.assertEqual(a["sender"], "a@example.net")
        self.assertEqual(a["recipient_count"], "0")
        self.assertTrue(a["queue_id"])
        self.assertEqual(a["instance"], p.requests[1]["instance"])  # one message, one instance
        m = self.server.wait_log(r"status=sent.*filters=\(([^)]*)\)")
        self.assertIsNotNone(m, self.server.log())
        self.assertIn(f"policy 127.0.0.1:{p.port}: RCPT <yes@example.com>: DUNNO", m.group(1))

    def test_defer_numeric_prepend_warn_discard_and_unknown(self):
        actions = {
            "defer@example.com": "DEFER try later",
            "dip@example.com": "DEFER_IF_PERMIT 4.7.5 not yet",
            "hold@example.com": "HOLD",
            "num@example.com": "550 5.1.1 no such user",
            "weird@example.com": "REDIRECT other@example.com",
            "warn@example.com": "WARN looks odd",
            "tag@example.com": "PREPEND X-Policy: tagged",
            "esc@example.com": "WARN \x1b[31mred",
        }
        self.with_policy(lambda a, n: actions[a["recipient"]])
        c, replies = self.rcpt_replies(list(actions))
        self.assertEqual(replies[:5], [
            "450 4.7.1 <defer@example.com>: Recipient address rejected: try later",
            "450 4.7.5 <dip@example.com>: Recipient address rejected: not yet",
            "450 4.7.1 <hold@example.com>: Recipient address rejected: Access denied",
            "550 5.1.1 <num@example.com>: Recipient address rejected: no such user",
            "451 4.3.5 Server configuration error",
        ])
        self.assertTrue(all(r.startswith("250 2.1.5") for r in replies[5:]), replies)
        self.assertReply(c.cmd("DATA"), "354")
        c.send(BODY + b".\r\n")
        self.assertQueued(c.reply())
        stored = self.stored()
        self.assertEqual(len(stored), 1)
        self.assertTrue(stored[0].startswith(b"Return-Path: <a@example.net>\nX-Policy: tagged\nReceived:"),
                        stored[0][:200])
        for logged in (r"RCPT <warn@example.com>: WARN looks odd", r"REDIRECT other@example.com",
                       r"WARN \\x1b\[31mred"):  # escaped for the log
            self.assertIsNotNone(self.server.wait_log(r"warning: id=\S+ policy .*" + logged))

    def test_discard_claims_delivery_and_stores_nothing(self):
        self.with_policy(lambda a, n: "DISCARD")
        c, replies = self.rcpt_replies(["b@example.com"])
        self.assertTrue(replies[0].startswith("250"), replies)
        self.assertReply(c.cmd("DATA"), "354")
        c.send(BODY + b".\r\n")
        self.assertQueued(c.reply())
        self.assertEqual(self.stored(), [])

    def test_garbage_and_oversize_answers_get_the_default_action(self):
        answers = [b"what?\n\n", b"action=" + b"x" * 5000 + b"\n\n"]
        p = self.with_policy(lambda a, n: answers[min(n, 1)], "--policy-try-limit", "1")
        _, replies = self.rcpt_replies(["b@example.com", "c@example.com"])
        for r, rcpt in zip(replies, ["b", "c"]):
            self.assertEqual(
                r, f"451 4.3.5 <{rcpt}@example.com>: Recipient address rejected: "
                "Server configuration problem")
        self.assertIsNotNone(self.server.wait_log("malformed answer"))
        self.assertIsNotNone(self.server.wait_log("answer too long"))
        self.assertEqual(p.connections, 2)  # A bad answer loses the connection.

    def test_silence_times_out_then_the_default_action(self):
        p = self.with_policy(lambda a, n: None, "--policy-timeout", "1",
                             "--policy-default-action", "450 4.7.1 policy down")
        start = time.monotonic()
        _, replies = self.rcpt_replies(["b@example.com"])
        took = time.monotonic() - start
        self.assertEqual(replies[0], "450 4.7.1 <b@example.com>: Recipient address rejected: policy down")
        self.assertEqual(len(p.requests), 2)  # try_limit 2: two attempts
        self.assertGreater(took, 2.5)  # 1 s, the 1 s retry delay, 1 s
        self.assertLess(took, 10)
        self.assertIn("timed out", self.server.log())

    def test_a_dropped_connection_is_tried_again(self):
        p = self.with_policy(lambda a, n: "drop" if n == 0 else "OK")
        _, replies = self.rcpt_replies(["b@example.com"])
        self.assertTrue(replies[0].startswith("250 2.1.5"), replies)
        self.assertEqual((p.connections, len(p.requests)), (2, 2))
        self.assertIn("connection closed before the answer", self.server.log())

    def test_an_absent_server_gets_the_default_action(self):
        port = peers.free_port()
        self.server = self.start_server("--policy-service", f"inet:127.0.0.1:{port}")
        _, replies = self.rcpt_replies(["b@example.com"])
        self.assertEqual(
            replies[0],
            "451 4.3.5 <b@example.com>: Recipient address rejected: Server configuration problem")
        self.assertIn("cannot connect", self.server.log())

    def test_one_connection_serves_many_sessions(self):
        p = self.with_policy(lambda a, n: "DUNNO")
        for _ in range(3):
            c = self.ehlo()
            self.deliver(c, "a@example.net", ["b@example.com", "c@example.com"], BODY)
            self.assertReply(c.cmd("QUIT"), "221")
        self.assertEqual(len(self.stored()), 3)
        self.assertEqual((p.connections, len(p.requests)), (1, 6))
        self.assertEqual(self.server.stop(), 0)  # The pooled connection does not hold the loop.

    def test_a_unix_socket_service(self):
        d = tempfile.mkdtemp(prefix="inboxd-policy-")
        self.addCleanup(shutil.rmtree, d, True)
        p = PolicyServer(lambda a, n: "REJECT 5.7.2 by unix socket", unix_path=f"{d}/policy")
        self.addCleanup(p.stop)
        self.server = self.start_server("--policy-service", f"unix:{d}/policy")
        _, replies = self.rcpt_replies(["b@example.com"])
        self.assertEqual(replies[0],
                         "554 5.7.2 <b@example.com>: Recipient address rejected: by unix socket")
        self.assertEqual(p.requests[0]["client_address"], "127.0.0.1")

    def test_request_limit_opens_a_new_connection(self):
        p = self.with_policy(lambda a, n: "DUNNO", "--policy-request-limit", "2")
        _, replies = self.rcpt_replies(["b@example.com", "c@example.com", "d@example.com"])
        self.assertTrue(all(r.startswith("250") for r in replies), replies)
        self.assertEqual(p.connections, 2)


class ConfigTest(PolicyCase):
    def test_toml_keys_and_a_reload_that_changes_the_service(self):
        a = PolicyServer(lambda attrs, n: "REJECT from a")
        b = PolicyServer(lambda attrs, n: "DUNNO")
        for p in (a, b):
            self.addCleanup(p.stop)
        conf = ('listen = ["127.0.0.1:0"]\npolicy-service = ["127.0.0.1:{}"]\n'
                'policy-timeout = 5\npolicy-try-limit = 1\npolicy-max-idle = 60\n'
                'policy-max-ttl = 600\npolicy-request-limit = 100\npolicy-at-data = false\n'
                'policy-default-action = "DUNNO"\n')
        self.server = self.start_server(config=conf.format(a.port))
        _, replies = self.rcpt_replies(["b@example.com"])
        self.assertEqual(replies[0], "554 5.7.1 <b@example.com>: Recipient address rejected: from a")
        self.server.write_config(conf.format(b.port))
        self.assertIn("reloaded", self.server.reload())
        _, replies = self.rcpt_replies(["b@example.com"])
        self.assertTrue(replies[0].startswith("250 2.1.5"), replies)
        # The old filter's pooled connection is closed once its sessions are over.
        for c in self.clients:
            c.close()
        deadline = time.monotonic() + 10
        while a.closed < 1 and time.monotonic() < deadline:
            time.sleep(0.05)
        self.assertEqual((a.connections, a.closed), (1, 1))
        self.assertEqual(b.connections, 1)

    def test_bad_settings_are_refused(self):
        for args, want in [
            (["--policy-service", "example.com:10023"], "want IP:PORT"),
            (["--policy-service", "unix:relative"], "want unix:/absolute/path"),
            (["--policy-try-limit", "0"], "policy-try-limit"),
            (["--policy-timeout", "0"], "policy-timeout"),
        ]:
            r = harness.run_cli("--check-config", *args)
            self.assertEqual(r.returncode, 2, (args, r.stderr))
            self.assertIn(want, r.stderr.decode(), args)

    def test_default_action_dunno_lets_mail_through_when_the_service_is_absent(self):
        self.server = self.start_server("--policy-service", f"127.0.0.1:{peers.free_port()}",
                                        "--policy-default-action", "DUNNO",
                                        "--policy-try-limit", "1")
        c = self.ehlo()
        self.deliver(c, "a@example.net", ["b@example.com"], BODY)
        self.assertEqual(len(self.stored()), 1)


class EndOfMessageTest(PolicyCase):
    def test_end_of_message_is_asked_with_size_and_count(self):
        def answer(a, n):
            if a["protocol_state"] != "END-OF-MESSAGE":
                return "DUNNO"
            return "REJECT 5.7.1 too big" if int(a["size"]) > 1000 else "OK"
        p = self.with_policy(answer, "--policy-at-data")
        c = self.ehlo()
        self.deliver(c, "a@example.net", ["b@example.com", "c@example.com"], BODY)
        eom = [a for a in p.requests if a["protocol_state"] == "END-OF-MESSAGE"]
        self.assertEqual(len(eom), 1)
        self.assertEqual(eom[0]["recipient_count"], "2")
        self.assertEqual(eom[0]["recipient"], "")
        self.assertGreater(int(eom[0]["size"]), len(BODY))
        self.assertEqual(len(self.stored()), 1)
        # Too big: refused at its end, stored nowhere.
        self.assertReply(c.cmd("MAIL FROM:<a@example.net>"), "250")
        self.assertReply(c.cmd("RCPT TO:<b@example.com>"), "250")
        self.assertReply(c.cmd("DATA"), "354")
        c.send(BODY + b"x" * 2000 + b"\r\n.\r\n")
        self.assertEqual(c.reply().last, "554 5.7.1 <END-OF-MESSAGE>: End-of-data rejected: too big")
        self.assertEqual(len(self.stored()), 1)
        eom = [a for a in p.requests if a["protocol_state"] == "END-OF-MESSAGE"]
        self.assertEqual(eom[1]["recipient"], "b@example.com")  # the one recipient
        self.assertIsNotNone(self.server.wait_log(r"status=bounced.*End-of-data rejected: too big"))
        self.assertIsNotNone(self.server.wait_log(
            rf"warning: id=\S+ policy 127.0.0.1:{p.port}: END-OF-MESSAGE: REJECT 5.7.1 too big"))


@unittest.skipUnless(shutil.which("postgrey") or os.path.exists("/usr/sbin/postgrey"),
                     "postgrey not installed (Debian package postgrey)")
class PostgreyTest(PolicyCase):
    def test_greylisting_first_450_then_accepted_after_the_delay(self):
        port = peers.start_postgrey(self, delay=2)
        self.server = self.start_server("--policy-service", f"127.0.0.1:{port}")
        c, replies = self.rcpt_replies(["b@example.com"])
        self.assertTrue(replies[0].startswith(
            "450 4.2.0 <b@example.com>: Recipient address rejected: Greylisted"), replies)
        self.assertReply(c.cmd("QUIT"), "221")
        self.assertEqual(self.stored(), [])
        time.sleep(3)
        c = self.ehlo()
        self.deliver(c, "a@example.net", ["b@example.com"], BODY)
        stored = self.stored()
        self.assertEqual(len(stored), 1)
        self.assertIn(b"\nX-Greylist: delayed ", stored[0])
        self.assertIn(b"by postgrey", stored[0])


if __name__ == "__main__":
    harness.main()
