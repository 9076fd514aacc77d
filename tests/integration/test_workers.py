"""--workers N: a supervisor and N worker processes (issue 12).

Both workers serve (queue ids carry the pid of the process that took the
message), SIGHUP reaches each of them, a worker killed with SIGKILL is
restarted and the log says so, SIGTERM drains them all (a message in
flight is still stored), a worker dies with its supervisor, and a worker
whose loop stalls is killed by the supervisor's watchdog.
"""
import os
import pwd
import re
import shutil
import signal
import socket
import tempfile
import time
import unittest
import urllib.request

import harness
from harness import TIMEOUT, Client

BODY = b"Subject: worker\r\n\r\nhello\r\n"
STARTED_RE = r"worker (\d) started \(pid (\d+)\)"


def queue_id_pid(queue_id):
    """Queue ids are 8 hex digits of the start time, 6 of the pid, then a counter."""
    return int(queue_id[8:14], 16)


def alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie (exited, not yet reaped) counts as gone.
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


class WorkersTest(harness.InboxdTestCase):
    server_args = ("--workers", "2")

    def setUp(self):
        super().setUp()
        self.assertIsNotNone(self.server.wait_log(r"supervisor: all 2 workers ready"),
                             self.server.log())

    def workers(self):
        """{index: pid} of the workers started last."""
        return {int(i): int(p) for i, p in re.findall(STARTED_RE, self.server.log())}

    def test_both_workers_serve(self):
        pids = set(self.workers().values())
        self.assertEqual(len(pids), 2)
        self.assertNotIn(self.server.proc.pid, pids)
        served = []
        # SO_REUSEPORT spreads connections by their addresses: 40 clients,
        # each from its own port, all on one worker has odds of 2^-39.
        for _ in range(40):
            c = self.ehlo()
            served.append(self.deliver(c, "a@example.org", ["b@example.net"], BODY))
            c.cmd("QUIT")
            c.close()
        self.clients.clear()
        self.assertEqual({queue_id_pid(q) for q in served}, pids)
        # Queue ids and Maildir names (P<pid>) stay unique across workers.
        self.assertEqual(len(set(served)), 40)
        names = os.listdir(os.path.join(self.server.maildir, "new"))
        self.assertEqual(len(set(names)), 40)
        self.assertEqual({int(re.search(r"P(\d+)", n).group(1)) for n in names}, pids)
        self.assertEqual(self.server.stop(), 0)

    def test_sighup_reaches_every_worker(self):
        pids = set(self.workers().values())
        self.server.proc.send_signal(signal.SIGHUP)
        self.assertIsNotNone(self.server.wait_log(r"supervisor: every worker reloaded"),
                             self.server.log())
        reloaded = set(map(int, re.findall(r"inboxd\[(\d+)\]: info: reloaded", self.server.log())))
        self.assertEqual(reloaded, pids)

    def test_killed_worker_is_restarted_and_logged(self):
        before = self.workers()
        os.kill(before[1], signal.SIGKILL)
        m = self.server.wait_log(rf"worker 1 \(pid {before[1]}\) was killed by signal 9 \(Killed\); "
                                 r"restarting it in [\d.]+ s")
        self.assertIsNotNone(m, self.server.log())
        deadline = time.monotonic() + TIMEOUT
        while self.workers()[1] == before[1]:
            self.assertLess(time.monotonic(), deadline, self.server.log())
            time.sleep(0.02)
        after = self.workers()
        self.assertEqual(after[2], before[2])
        self.assertIsNotNone(
            self.server.wait_log(rf"inboxd\[{after[1]}\]: info: listening on"), self.server.log())
        # The new worker serves: connections land on both again.
        pids = set()
        for _ in range(40):
            c = self.ehlo()
            pids.add(queue_id_pid(self.deliver(c, "a@example.org", ["b@example.net"], BODY)))
            c.close()
            if pids == set(after.values()):
                break
        self.assertEqual(pids, set(after.values()))
        self.assertEqual(self.server.stop(), 0)

    def test_sigterm_drains_every_worker_and_stores_the_message_in_flight(self):
        c = self.ehlo()
        self.assertReply(c.cmd("MAIL FROM:<a@example.org>"), "250")
        self.assertReply(c.cmd("RCPT TO:<b@example.net>"), "250")
        self.assertReply(c.cmd("DATA"), "354")
        c.send(b"Subject: in flight\r\n\r\nfirst half\r\n")
        pids = set(self.workers().values())
        self.server.stopped = True
        self.server.proc.send_signal(signal.SIGTERM)
        self.assertIsNotNone(self.server.wait_log(r"SIGTERM: stopping the workers"))
        self.assertEqual(len(re.findall(r"SIGTERM: draining", self.server.wait_log(
            r"(?s).*SIGTERM: draining.*SIGTERM: draining").group(0))), 2)
        c.send(b"second half\r\n.\r\n")
        self.assertQueued(c.reply())
        self.assertReply(c.reply(), "421")   # then the drain closes the session
        self.assertEqual(self.server.proc.wait(TIMEOUT), 0, self.server.log())
        self.assertIn("supervisor: every worker has exited", self.server.log())
        self.assertFalse(any(alive(p) for p in pids))
        [stored] = self.stored()
        self.assertIn(b"second half", stored)

    def test_workers_die_with_their_supervisor(self):
        pids = set(self.workers().values())
        self.server.stopped = True
        self.server.proc.kill()
        self.server.proc.wait(TIMEOUT)
        deadline = time.monotonic() + TIMEOUT
        while any(alive(p) for p in pids):
            self.assertLess(time.monotonic(), deadline, "a worker outlived its supervisor")
            time.sleep(0.02)


@unittest.skipUnless(os.geteuid() == 0, "needs root")
class WorkersAsUserTest(harness.InboxdTestCase):
    """Started as root with --user: the supervisor binds, then it and every
    worker run as the user; what start-up made is the user's."""

    def setUp(self):
        self.clients = []
        self.nobody = pwd.getpwnam("nobody")
        self.top = tempfile.mkdtemp(prefix="inboxd-it-workers-")
        self.addCleanup(shutil.rmtree, self.top, True)
        os.chmod(self.top, 0o755)
        self.maildir = os.path.join(self.top, "maildir")
        self.server = self.start_server(
            "--workers", "2", "--user", "nobody", "--state-dir", os.path.join(self.top, "state"),
            "--maildir", self.maildir, maildir=False, allow_root=False)
        self.assertIsNotNone(self.server.wait_log(r"supervisor: all 2 workers ready"),
                             self.server.log())

    def test_supervisor_and_workers_run_as_the_user(self):
        uid = self.nobody.pw_uid
        self.assertIn(f"supervisor running as uid {uid} ", self.server.log())
        self.assertEqual(self.server.status("Uid").split()[:2], [str(uid)] * 2)
        pids = [int(p) for _, p in re.findall(STARTED_RE, self.server.log())]
        for pid in pids:
            with open(f"/proc/{pid}/status") as f:
                self.assertRegex(f.read(), rf"\nUid:\t{uid}\t{uid}\t{uid}\t{uid}\n")
        c = self.ehlo()
        self.deliver(c, "a@example.org", ["b@example.net"], BODY)
        self.assertEqual(os.stat(self.maildir).st_uid, uid)
        self.assertEqual(len(self.stored(self.maildir)), 1)
        self.server.proc.send_signal(signal.SIGHUP)
        self.assertIsNotNone(self.server.wait_log(r"supervisor: every worker reloaded"),
                             self.server.log())
        self.assertEqual(self.server.stop(), 0)


class WorkerWatchdogTest(harness.InboxdTestCase):
    """With WATCHDOG_USEC the supervisor pings systemd and kills a worker
    whose loop stops pinging it (here: a stopped process)."""

    def setUp(self):
        self.clients = []
        self.notify_path = os.path.join(tempfile.mkdtemp(prefix="inboxd-wd-"), "notify")
        self.notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.notify.bind(self.notify_path)
        self.addCleanup(self.notify.close)
        os.environ["NOTIFY_SOCKET"] = self.notify_path
        os.environ["WATCHDOG_USEC"] = "1000000"
        try:
            self.server = self.start_server("--workers", "2")
        finally:
            del os.environ["NOTIFY_SOCKET"], os.environ["WATCHDOG_USEC"]
        self.assertIsNotNone(self.server.wait_log(r"supervisor: all 2 workers ready"))

    def test_stalled_worker_is_killed_and_restarted(self):
        pids = {int(i): int(p) for i, p in re.findall(STARTED_RE, self.server.log())}
        os.kill(pids[2], signal.SIGSTOP)
        m = self.server.wait_log(rf"worker 2 \(pid {pids[2]}\) sent no watchdog ping for \d+ ms: "
                                 r"killing it")
        self.assertIsNotNone(m, self.server.log())
        self.assertIsNotNone(self.server.wait_log(r"worker 2 started \(pid (?!%d)\d+\)" % pids[2]))
        # The supervisor itself kept pinging.
        self.notify.settimeout(TIMEOUT)
        self.assertIn(b"WATCHDOG=1", self.notify.recv(4096) + self.notify.recv(4096))
        self.assertEqual(self.server.stop(), 0)


def two_free_ports():
    """A port P with P and P+1 free, below the ephemeral range (32768 and up
    on Linux), where a client's outgoing connection could take one meanwhile."""
    import random
    for _ in range(100):
        port = random.randrange(20000, 32000)
        try:
            with socket.socket() as a, socket.socket() as b:
                a.bind(("127.0.0.1", port))
                b.bind(("127.0.0.1", port + 1))
            return port
        except OSError:
            continue
    raise RuntimeError("no two free ports in 20000-32000")


class WorkersWithProxyAndMetricsTest(harness.InboxdTestCase):
    """Every kind of listener reaches the workers (a PROXY listener too), and
    each worker serves its own metrics on the configured port + its index - 1,
    since a scrape of one shared port would reach one worker at random."""

    def setUp(self):
        self.metrics_port = two_free_ports()
        self.server_args = ("--workers", "2", "--listen-proxy", "127.0.0.1:0",
                            "--metrics", f"127.0.0.1:{self.metrics_port}")
        super().setUp()
        self.assertIsNotNone(self.server.wait_log(r"supervisor: all 2 workers ready"),
                             self.server.log())

    def test_proxy_listener_and_one_metrics_port_per_worker(self):
        log = self.server.log()
        ports = set(re.findall(r"listening on 127\.0\.0\.1:(\d+) \(PROXY protocol\)", log))
        self.assertEqual(len(ports), 1, log)  # both workers, one port (SO_REUSEPORT)
        port = int(ports.pop())
        metrics = sorted(int(p) for p in re.findall(r"metrics on http://127\.0\.0\.1:(\d+)/", log))
        self.assertEqual(metrics, [self.metrics_port, self.metrics_port + 1], log)
        # A client behind the proxy: the header names 203.0.113.9, and the
        # Received header says so, whichever worker took it.
        with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as s:
            s.sendall(b"PROXY TCP4 203.0.113.9 127.0.0.1 40000 25\r\n")
            f = s.makefile("rb")
            self.assertTrue(f.readline().startswith(b"220 "))
            for cmd in (b"EHLO client.test", b"MAIL FROM:<a@example.org>",
                        b"RCPT TO:<b@example.net>", b"DATA"):
                s.sendall(cmd + b"\r\n")
                line = f.readline()
                while line[3:4] == b"-":
                    line = f.readline()
                self.assertIn(line[:1], (b"2", b"3"), (cmd, line))
            s.sendall(BODY + b".\r\n")
            self.assertTrue(f.readline().startswith(b"250 "))
            s.sendall(b"QUIT\r\n")
        new = os.path.join(self.server.maildir, "new")
        deadline = time.monotonic() + TIMEOUT
        while not os.listdir(new) and time.monotonic() < deadline:
            time.sleep(0.05)
        (name,) = os.listdir(new)
        with open(os.path.join(new, name), "rb") as f:
            self.assertIn(b"[203.0.113.9]", f.read())
        # Both metrics ports answer, and between them they count the message.
        total = 0.0
        for p in metrics:
            with urllib.request.urlopen(f"http://127.0.0.1:{p}/metrics", timeout=TIMEOUT) as r:
                text = r.read().decode()
            m = re.search(r'^inboxd_messages_total\{status="accepted"\} (\S+)$', text, re.M)
            total += float(m.group(1)) if m else 0.0
        self.assertEqual(total, 1.0)
        self.assertEqual(self.server.stop(), 0)


if __name__ == "__main__":
    harness.main()
