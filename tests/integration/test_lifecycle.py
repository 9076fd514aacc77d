"""Lifecycle: SIGTERM drains (DATA in progress finishes, idle clients get
`421 4.3.2`, nothing acknowledged is lost, exit 0 within the drain bound), a
second SIGTERM exits at once; privileges: started as root, --user drops them,
and running as root needs --allow-root."""
import base64
import grp
import hashlib
import os
import pwd
import random
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import unittest

import harness
from harness import BIN, CRLF, HELO, HOSTNAME, Client, InboxdTestCase

SHUTTING_DOWN = "421 4.3.2 Service shutting down, closing transmission channel"
LOAD_THREADS = 10


def make_message(mid, rng, large=False):
    """Headers with a unique id and the sha256 of the body; `large`: ~0.5-1 MB."""
    size = rng.randrange(500_000, 1_000_000) if large else rng.randrange(100, 4000)
    b64 = base64.b64encode(os.urandom(size * 3 // 4))
    lines = [b64[i:i + 76] for i in range(0, len(b64), 76)]
    body = CRLF.join(lines[:1] + [b".dot-stuffed line " + mid.encode()] + lines[1:]) + CRLF
    head = (f"Message-ID: <{mid}@drain.test>\r\nX-Test-Id: {mid}\r\n"
            f"X-Body-SHA256: {hashlib.sha256(body).hexdigest()}\r\nSubject: drain\r\n\r\n").encode()
    return head + body


class DrainCase(InboxdTestCase):
    def start_data(self, rcpt="r@example.org"):
        c = self.ehlo()
        self.assertReply(c.cmd("MAIL FROM:<s@example.com>"), "250")
        self.assertReply(c.cmd(f"RCPT TO:<{rcpt}>"), "250")
        self.assertReply(c.cmd("DATA"), "354")
        return c

    def wait_exit(self, timeout):
        """Waits for the server to exit; returns (rc, seconds) or fails."""
        t0 = time.monotonic()
        try:
            rc = self.server.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.fail(f"server still running {timeout} s after the signal; log:\n{self.server.log()[-3000:]}")
        self.server.stopped = True
        return rc, time.monotonic() - t0

    def assertShutdown421(self, c, what):
        data, how = c.read_to_eof(timeout=3)
        self.assertEqual(data, SHUTTING_DOWN.encode() + CRLF, f"{what}: got {data!r} ({how})")
        self.assertIn(how, ("eof", "reset"), f"{what}: not closed after 421 4.3.2")


class SigtermUnderLoadTest(DrainCase):
    DRAIN = 10
    server_args = ("--drain-timeout", str(DRAIN))

    def sender(self, tid, acked, attempted, ends):
        """Sends messages on one connection until the server says 421 or goes away;
        ends[tid] is how it ended."""
        rng = random.Random(tid)
        c = None
        try:
            c = Client(self.server.port, timeout=15)
            c.reply()
            c.cmd("EHLO " + HELO)
            for n in range(10_000):
                mid = f"t{tid}.m{n}"
                msg = attempted[mid] = make_message(mid, rng, large=(tid % 3 == 0 and n % 2 == 0))
                for line, want in ((f"MAIL FROM:<load@example.com>", 250),
                                   (f"RCPT TO:<{mid}@example.org>", 250), ("DATA", 354)):
                    r = c.cmd(line)
                    if r.code != want:
                        ends[tid] = r.last
                        return
                c.send(harness.stuff(msg) + b".\r\n")
                r = c.reply()
                m = harness.QUEUED_RE.match(r.last)
                if not m:
                    ends[tid] = r.last
                    return
                acked[mid] = m.group(1)
            ends[tid] = "ran out of messages"
        except (OSError, ValueError, AssertionError) as e:
            ends[tid] = f"error: {e!r}"
        finally:
            if c:
                c.close()

    def test_sigterm_under_load(self):
        acked, attempted, ends = {}, {}, {}
        threads = [threading.Thread(target=self.sender, args=(t, acked, attempted, ends))
                   for t in range(LOAD_THREADS)]
        # A client between transactions, one in the middle of one (RCPT given),
        # and one whose DATA will be in progress across the signal.
        idle = self.ehlo()
        self.deliver(idle, "s@example.com", ["idle@example.org"], b"Subject: idle\r\n\r\nfirst\r\n")
        slow_body = b"Subject: across the signal\r\n\r\n" + b"".join(
            b"line %03d of the slow message\r\n" % i for i in range(50))
        slow = self.start_data("slow@example.org")
        half = len(slow_body) // 2
        for t in threads:
            t.start()
        time.sleep(1.5)
        slow.send(slow_body[:half])
        time.sleep(0.1)
        n_before = len(acked)
        self.server.proc.send_signal(signal.SIGTERM)
        t_sig = time.monotonic()

        # The idle client is told at once.
        self.assertShutdown421(idle, "client between transactions")
        self.assertLess(time.monotonic() - t_sig, 2.0)
        # New connections are no longer taken (or, if one raced in, refused with 421).
        time.sleep(0.2)
        try:
            late = Client(self.server.port, timeout=3)
            self.clients.append(late)
            self.assertShutdown421(late, "a connection made after SIGTERM")
        except ConnectionRefusedError:
            pass
        # The message in progress is finished, slowly, after the signal: 250, then 421.
        for i in range(half, len(slow_body), 200):
            slow.send(slow_body[i:i + 200])
            time.sleep(0.15)
        slow.send(b".\r\n")
        slow_id = self.assertQueued(slow.reply())
        self.assertShutdown421(slow, "client whose DATA finished after SIGTERM")

        rc, _ = self.wait_exit(self.DRAIN + 2)
        took = time.monotonic() - t_sig
        for t in threads:
            t.join(10)
        self.assertFalse(any(t.is_alive() for t in threads), "client threads hung")
        self.assertEqual(rc, 0, f"exit code after SIGTERM; log tail:\n{self.server.log()[-2000:]}")
        self.assertLess(took, self.DRAIN, "did not finish draining within --drain-timeout")
        self.assertRegex(self.server.log(), r"SIGTERM: draining")
        self.assertGreaterEqual(n_before, LOAD_THREADS, f"too little load before the signal: {n_before}")

        # How each load client ended: a 421 4.3.2, never another refusal.
        bad = {t: e for t, e in ends.items() if e != SHUTTING_DOWN}
        self.assertEqual(bad, {}, "load clients that did not end with 421 4.3.2")
        self.assertEqual(len(ends), LOAD_THREADS)

        # Every acknowledged message is in new/, whole; nothing else is.
        stored = self.stored()
        by_id = {}
        for data in stored:
            p = harness.parse_stored(data)
            self.assertIsNotNone(p, f"no trace headers: {data[:200]!r}")
            m = re.search(rb"^X-Test-Id: (\S+)\n", p["body"], re.M)
            key = m.group(1).decode() if m else p["for"]
            self.assertNotIn(key, by_id, "stored twice")
            by_id[key] = p
        for mid, qid in acked.items():
            self.assertIn(mid, by_id, f"acknowledged message {mid} ({qid}) lost")
            self.assertEqual(by_id[mid]["id"], qid)
            self.assertEqual(by_id[mid]["body"], attempted[mid].replace(CRLF, b"\n"),
                             f"{mid} not stored whole")
        self.assertEqual(by_id["<slow@example.org>"]["body"], slow_body.replace(CRLF, b"\n"))
        self.assertEqual(by_id["<slow@example.org>"]["id"], slow_id)
        unacked = set(by_id) - set(acked) - {"<slow@example.org>", "<idle@example.org>"}
        self.assertEqual(unacked, set(), "stored but never acknowledged")
        large = sum(1 for m in acked if len(attempted[m]) > 400_000)
        print(f"\nSIGTERM under load: {len(acked)} acknowledged ({large} large), "
              f"{len(acked) - n_before} after the signal; exit {rc} {took:.2f} s after SIGTERM",
              flush=True)


class SecondSigtermTest(DrainCase):
    server_args = ("--drain-timeout", "60")

    def test_second_sigterm_exits_at_once(self):
        idle = self.ehlo()
        stuck = self.start_data()
        stuck.send(b"Subject: stuck\r\n\r\nhalf a body")
        time.sleep(0.2)
        self.server.proc.send_signal(signal.SIGTERM)
        self.assertShutdown421(idle, "idle client")
        # The DATA in progress holds the drain open.
        self.assertTrue(stuck.quiet(1.0), "the client in DATA was told something")
        self.assertTrue(self.server.alive(), "exited while a DATA was in progress")
        t0 = time.monotonic()
        self.server.proc.send_signal(signal.SIGTERM)
        rc, took = self.wait_exit(2)
        self.assertLess(took, 2)
        self.assertEqual(rc, 0)
        self.assertTrue(self.server.wait_log(r"second signal"))
        data, how = stuck.read_to_eof(timeout=2)
        self.assertIn(how, ("eof", "reset"), f"stuck client not closed: {data!r}")
        self.assertNotRegex(data, rb"^2", "the cut-off message was acknowledged")
        self.assertEqual(self.server.files("new"), {}, "a cut-off message is in new/")


class DrainTimeoutTest(DrainCase):
    server_args = ("--drain-timeout", "1")

    def test_drain_timeout_bounds_exit(self):
        stuck = self.start_data()
        stuck.send(b"Subject: stuck\r\n\r\nhalf a body")
        time.sleep(0.2)
        t0 = time.monotonic()
        self.server.proc.send_signal(signal.SIGTERM)
        rc, _ = self.wait_exit(5)
        took = time.monotonic() - t0
        self.assertEqual(rc, 0)
        self.assertGreaterEqual(took, 0.9)
        self.assertLess(took, 3)
        self.assertTrue(self.server.wait_log(r"drain timeout: closing 1 connection"))
        data, how = stuck.read_to_eof(timeout=2)
        self.assertIn(how, ("eof", "reset"))
        self.assertNotRegex(data, rb"^2")
        self.assertEqual(self.server.files("new"), {})

    def test_sigterm_idle_server_exits_fast(self):
        c = self.ehlo()
        self.deliver(c, "s@example.com", ["r@example.org"], b"Subject: x\r\n\r\ny\r\n")
        t0 = time.monotonic()
        self.server.proc.send_signal(signal.SIGTERM)
        self.assertShutdown421(c, "idle client")
        rc, _ = self.wait_exit(3)
        self.assertEqual(rc, 0)
        self.assertLess(time.monotonic() - t0, 1.0)
        self.assertRegex(self.server.log(), r"stopped")
        self.assertEqual(len(self.stored()), 1)


def status_ids(server, field):
    """The ids on a /proc/PID/status line, once the server says it has dropped
    its privileges ("listening on" comes before the drop)."""
    if not server.wait_log(r"running as uid \d+ gid \d+"):
        raise AssertionError(f"no 'running as' line; log:\n{server.log()}")
    value = server.status(field)
    return [int(x) for x in value.split()] if value else None


@unittest.skipUnless(os.geteuid() == 0, "needs root")
class PrivilegesTest(InboxdTestCase):
    sink = "null"
    server_kwargs = {"allow_root": False, "maildir": False}
    server_args = ("--user", "nobody")

    def setUp(self):
        self.nobody = pwd.getpwnam("nobody")
        super().setUp()

    def test_runs_as_nobody_null_sink(self):
        self.assertTrue(self.server.wait_log(rf"running as uid {self.nobody.pw_uid} gid {self.nobody.pw_gid}"))
        self.assertEqual(status_ids(self.server, "Uid"), [self.nobody.pw_uid] * 4)
        self.assertEqual(status_ids(self.server, "Gid"), [self.nobody.pw_gid] * 4)
        self.assertNotIn(0, status_ids(self.server, "Groups"))
        c = self.ehlo()
        self.assertReply(c.cmd("MAIL FROM:<s@example.com>"), "250")
        self.assertReply(c.cmd("RCPT TO:<r@example.org>"), "250")
        self.assertReply(c.cmd("DATA"), "354")
        c.send(b"Subject: null\r\n\r\nx\r\n.\r\n")
        self.assertQueued(c.reply())

    def test_runs_as_nobody_maildir(self):
        top = tempfile.mkdtemp(prefix="inboxd-it-priv-")
        self.addCleanup(shutil.rmtree, top, True)
        os.chmod(top, 0o755)
        md = os.path.join(top, "maildir")
        for sub in ("", "tmp", "new", "cur"):
            os.makedirs(os.path.join(md, sub), exist_ok=True)
            os.chown(os.path.join(md, sub), self.nobody.pw_uid, self.nobody.pw_gid)
        server = self.start_server("--user", "nobody", "--maildir", md, sink="maildir",
                                   maildir=False, allow_root=False)
        self.assertEqual(status_ids(server, "Uid"), [self.nobody.pw_uid] * 4)
        c = Client(server.port)
        self.clients.append(c)
        self.assertEqual(c.reply().code, 220)
        self.assertReply(c.cmd("EHLO " + HELO), "250")
        qid = self.deliver(c, "s@example.com", ["r@example.org"], b"Subject: nobody\r\n\r\nok\r\n")
        stored = self.stored(md)
        self.assertEqual(len(stored), 1)
        self.assertStored(stored[0], "s@example.com", b"Subject: nobody\r\n\r\nok\r\n",
                          rcpt="r@example.org", queue_id=qid)
        name = os.listdir(os.path.join(md, "new"))[0]
        self.assertEqual(os.stat(os.path.join(md, "new", name)).st_uid, self.nobody.pw_uid)
        server.stop()

    def test_user_and_group(self):
        try:
            g = grp.getgrnam("nogroup")
        except KeyError:
            self.skipTest("no group 'nogroup'")
        server = self.start_server("--user", "nobody", "--group", "nogroup", sink="null",
                                   maildir=False, allow_root=False)
        self.assertEqual(status_ids(server, "Gid"), [g.gr_gid] * 4)
        self.assertEqual(status_ids(server, "Uid"), [self.nobody.pw_uid] * 4)

    def run_refused(self, *args):
        """Runs the binary as root expecting exit 2; returns its non-log stderr lines."""
        d = tempfile.mkdtemp(prefix="inboxd-it-")
        self.addCleanup(shutil.rmtree, d, True)
        p = subprocess.run([BIN, "--listen", "127.0.0.1:0", "--sink", "null", *args],
                           cwd=d, capture_output=True, timeout=10, stdin=subprocess.DEVNULL)
        err = p.stderr.decode("utf-8", "replace")
        self.assertEqual(p.returncode, 2, f"stderr:\n{err}")
        lines = [l for l in err.splitlines() if not re.match(r"^\d{4}-\d\d-\d\dT\S+ inboxd\[\d+\]: info: ", l)]
        self.assertEqual(len(lines), 1, f"expected one error line; stderr:\n{err}")
        return lines[0]

    def test_root_without_user_refused(self):
        line = self.run_refused()
        self.assertIn("root", line)
        self.assertIn("--user", line)

    def test_unknown_user_refused(self):
        line = self.run_refused("--user", "no-such-user-inboxd")
        self.assertIn("no-such-user-inboxd", line)

    def test_unknown_group_refused(self):
        line = self.run_refused("--user", "nobody", "--group", "no-such-group-inboxd")
        self.assertIn("no-such-group-inboxd", line)


if __name__ == "__main__":
    harness.main()
