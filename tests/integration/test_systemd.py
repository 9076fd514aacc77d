"""inboxd under systemd, without a running systemd (issue 12).

systemd-socket-activate (Debian package systemd) holds the listening
sockets and starts inboxd on the first connection, passing them with
LISTEN_FDS/LISTEN_FDNAMES; a NOTIFY_SOCKET the test binds (an AF_UNIX
datagram socket, SO_PASSCRED so each message says who sent it) receives
what inboxd tells its service manager. `systemd-analyze verify` checks the
unit files of dist/systemd.
"""
import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import tempfile
import time
import unittest

import harness
from harness import BIN, HOSTNAME, TIMEOUT, Client

ACTIVATE = shutil.which("systemd-socket-activate")
ANALYZE = shutil.which("systemd-analyze")
UNITS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "dist", "systemd")
BODY = b"Subject: activated\r\n\r\nhello\r\n"


def free_port():
    """A loopback port nobody listens on now (systemd-socket-activate wants a number)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class NotifySocket:
    """The service manager's end: datagrams, each with its sender's pid."""

    def __init__(self, path):
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        self.sock.bind(path)
        self.messages = []   # (pid, {field: value}, text)

    def poll(self, timeout):
        """Reads what arrives within `timeout` s."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return
            self.sock.settimeout(left)
            try:
                data, anc, _, _ = self.sock.recvmsg(4096, socket.CMSG_SPACE(12))
            except socket.timeout:
                return
            pid = None
            for level, kind, payload in anc:
                if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
                    pid = struct.unpack("iII", payload[:12])[0]
            text = data.decode()
            fields = dict(line.split("=", 1) for line in text.split("\n") if "=" in line)
            self.messages.append((pid, fields, text))

    def wait_for(self, key, value=None, timeout=TIMEOUT, after=0):
        """The index of the first message from `after` on with key (= value); None if none came."""
        deadline = time.monotonic() + timeout
        while True:
            for i, (_, fields, _) in enumerate(self.messages[after:], after):
                if key in fields and (value is None or fields[key] == value):
                    return i
            if time.monotonic() > deadline:
                return None
            self.poll(0.05)

    def states(self):
        """The lifecycle messages in order, watchdog pings and bare STATUS left out."""
        out = []
        for _, fields, _ in self.messages:
            for key in ("READY", "RELOADING", "STOPPING"):
                if key in fields:
                    out.append(key)
        return out

    def close(self):
        self.sock.close()


@unittest.skipUnless(ACTIVATE, "systemd-socket-activate is not installed (Debian package systemd)")
class SocketActivationTest(harness.InboxdTestCase):
    def setUp(self):
        self.clients = []
        self.dir = tempfile.mkdtemp(prefix="inboxd-sd-")
        self.addCleanup(shutil.rmtree, self.dir, True)
        self.maildir = os.path.join(self.dir, "maildir")
        self.log_path = os.path.join(self.dir, "stderr.log")
        self.notify = NotifySocket(os.path.join(self.dir, "notify"))
        self.addCleanup(self.notify.close)
        self.proc = None

    def tearDown(self):
        for c in self.clients:
            c.close()

    def activate(self, sockets, *args, env=None):
        """systemd-socket-activate with `sockets` [(port, name or None)], then inboxd with args.
        inboxd replaces it (exec), so self.proc.pid is inboxd's pid once it runs."""
        cmd = [ACTIVATE]
        names = []
        for port, name in sockets:
            cmd += ["-l", f"127.0.0.1:{port}"]
            names.append(name or "")
        if any(names):
            cmd.append("--fdname=" + ":".join(names))
        extra = {"NOTIFY_SOCKET": self.notify.path, **(env or {})}
        for k, v in extra.items():
            cmd += ["-E", f"{k}={v}"]
        cmd += [BIN, "--hostname", HOSTNAME, "--maildir", self.maildir, *args]
        if os.geteuid() == 0:
            cmd.append("--allow-root")
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(cmd, cwd=self.dir, stdin=subprocess.DEVNULL,
                                         stdout=subprocess.DEVNULL, stderr=log)

        def stop():
            if self.proc.poll() is None:
                self.proc.kill()
            self.proc.wait(TIMEOUT)
        self.addCleanup(stop)
        # It listens (its socket is bound) before it starts inboxd: wait for that.
        deadline = time.monotonic() + TIMEOUT
        while not all(f"Listening on 127.0.0.1:{p}" in self.log() for p, _ in sockets):
            self.assertLess(time.monotonic(), deadline, f"not listening; log:\n{self.log()}")
            time.sleep(0.02)

    def log(self):
        return harness.read_log(self.log_path)

    def wait_log(self, pattern, timeout=TIMEOUT):
        return harness.wait_log(self.log_path, pattern, timeout)

    def client(self, port, tls=None):
        # The first connection is what makes systemd-socket-activate start inboxd.
        c = Client(port, tls=tls)
        self.clients.append(c)
        self.assertEqual(c.reply().lines, [f"220 {HOSTNAME} ESMTP inboxd"])
        self.assertReply(c.cmd("EHLO client.test"), "250")
        return c

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        self.assertEqual(self.proc.wait(TIMEOUT), 0, self.log())

    def test_delivers_on_passed_sockets_sorted_by_name(self):
        plain, tls = free_port(), free_port()
        self.activate([(plain, "smtp"), (tls, "smtps")])
        self.deliver(self.client(plain), "a@example.org", ["b@example.net"], BODY)
        self.deliver(self.client(tls, tls=harness.client_tls_context()), "a@example.org",
                     ["b@example.net"], BODY)
        log = self.log()
        self.assertRegex(log, rf"listening on 127\.0\.0\.1:{plain}\n")
        self.assertRegex(log, rf"listening on 127\.0\.0\.1:{tls} \(implicit TLS\)")
        # The passed sockets replace the listen list: the default 2525 is not bound.
        self.assertNotIn(":2525", log)
        self.stop()
        self.assertEqual(len(self.stored(self.maildir)), 2)

    def test_unnamed_socket_is_sorted_by_its_address(self):
        lmtp = free_port()
        self.activate([(lmtp, None)], "--listen-lmtp", f"127.0.0.1:{lmtp}")
        c = Client(lmtp)
        self.clients.append(c)
        self.assertRegex(c.reply().last, r"^220 ")
        self.assertReply(c.cmd("LHLO client.test"), "250")
        self.assertIsNotNone(self.wait_log(rf"listening on 127\.0\.0\.1:{lmtp} \(LMTP\)"))
        self.stop()

    def test_ready_reloading_ready_stopping_in_order(self):
        port = free_port()
        self.activate([(port, "smtp")])
        c = self.client(port)
        ready = self.notify.wait_for("READY", "1")
        self.assertIsNotNone(ready, f"no READY=1; got {self.notify.messages}; log:\n{self.log()}")
        pid, fields, _ = self.notify.messages[ready]
        self.assertEqual(pid, self.proc.pid)
        self.assertRegex(fields.get("STATUS", ""), r"^\d+ connections, 0 messages accepted$")
        self.deliver(c, "a@example.org", ["b@example.net"], BODY)
        # STATUS= follows the counts, at most every few seconds.
        status = self.notify.wait_for("STATUS", "1 connections, 1 messages accepted", timeout=8)
        self.assertIsNotNone(status, f"no STATUS with the message; got {self.notify.messages}")

        before = time.monotonic()
        self.proc.send_signal(signal.SIGHUP)
        reloading = self.notify.wait_for("RELOADING", "1", after=status)
        self.assertIsNotNone(reloading, f"no RELOADING=1; got {self.notify.messages}")
        usec = int(self.notify.messages[reloading][1]["MONOTONIC_USEC"])
        # CLOCK_MONOTONIC, as Python's time.monotonic() on Linux.
        self.assertLess(abs(usec / 1e6 - before), 5, "MONOTONIC_USEC is not CLOCK_MONOTONIC")
        again = self.notify.wait_for("READY", "1", after=reloading)
        self.assertIsNotNone(again, f"no READY=1 after the reload; got {self.notify.messages}")
        self.assertRegex(self.notify.messages[again][1].get("STATUS", ""), r"^reloaded")

        self.proc.send_signal(signal.SIGTERM)
        self.assertIsNotNone(self.notify.wait_for("STOPPING", "1", after=again))
        c.close()
        self.assertEqual(self.proc.wait(TIMEOUT), 0, self.log())
        self.notify.poll(0.1)
        self.assertEqual(self.notify.states(), ["READY", "RELOADING", "READY", "STOPPING"])
        self.assertTrue(all(pid == self.proc.pid for pid, _, _ in self.notify.messages))

    def test_failed_reload_says_so_in_status(self):
        port = free_port()
        config = os.path.join(self.dir, "inboxd.toml")
        with open(config, "w") as f:
            f.write("max-errors = 5\n")
        self.activate([(port, "smtp")], "-c", config)
        self.client(port)
        self.assertIsNotNone(self.notify.wait_for("READY", "1"), self.log())
        with open(config, "w") as f:
            f.write("max-errors = \"many\"\n")
        self.proc.send_signal(signal.SIGHUP)
        reloading = self.notify.wait_for("RELOADING", "1")
        self.assertIsNotNone(reloading)
        ready = self.notify.wait_for("READY", "1", after=reloading)
        self.assertIsNotNone(ready, f"no READY=1 after a failed reload: {self.notify.messages}")
        status = self.notify.messages[ready][1].get("STATUS", "")
        self.assertRegex(status, r"^reload failed, the old config stays: .*max-errors")
        self.stop()

    def test_watchdog_pings_at_half_the_interval(self):
        port = free_port()
        self.activate([(port, "smtp")], env={"WATCHDOG_USEC": "200000"})
        self.client(port)
        self.assertIsNotNone(self.notify.wait_for("READY", "1"), self.log())
        self.notify.poll(1.5)
        pings = sum(1 for _, f, _ in self.notify.messages if f.get("WATCHDOG") == "1")
        # Every 100 ms: 15 in 1.5 s; a loaded (or ASan) machine is allowed to be late.
        self.assertGreaterEqual(pings, 5, self.notify.messages)
        # A stalled loop stops the pings: they come from the loop, not a thread.
        os.kill(self.proc.pid, signal.SIGSTOP)
        try:
            self.notify.poll(0.3)
            n = len(self.notify.messages)
            self.notify.poll(0.5)
            self.assertEqual(self.notify.messages[n:], [], "pings while the process is stopped")
        finally:
            os.kill(self.proc.pid, signal.SIGCONT)
        self.stop()

    def test_no_watchdog_pings_unless_asked(self):
        port = free_port()
        self.activate([(port, "smtp")])
        self.client(port)
        self.assertIsNotNone(self.notify.wait_for("READY", "1"), self.log())
        self.notify.poll(0.5)
        self.assertFalse(any("WATCHDOG" in f for _, f, _ in self.notify.messages))
        self.stop()

    def test_workers_share_passed_sockets_and_supervisor_speaks(self):
        port = free_port()
        self.activate([(port, "smtp")], "--workers", "2")
        c = self.client(port)
        self.deliver(c, "a@example.org", ["b@example.net"], BODY)
        ready = self.notify.wait_for("READY", "1")
        self.assertIsNotNone(ready, f"no READY=1; log:\n{self.log()}")
        self.assertIn("supervisor: all 2 workers ready", self.log())
        workers = set(map(int, re.findall(r"worker \d started \(pid (\d+)\)", self.log())))
        self.assertEqual(len(workers), 2)
        # Both workers serve the one passed socket.
        self.assertEqual(len(re.findall(rf"inboxd\[(\d+)\]: info: listening on 127\.0\.0\.1:{port}",
                                        self.log())), 2)
        self.proc.send_signal(signal.SIGHUP)
        reloading = self.notify.wait_for("RELOADING", "1")
        self.assertIsNotNone(reloading)
        self.assertIsNotNone(self.notify.wait_for("READY", "1", after=reloading), self.log())
        c.close()
        self.stop()
        self.notify.poll(0.1)
        self.assertEqual(self.notify.states(), ["READY", "RELOADING", "READY", "STOPPING"])
        # NotifyAccess=main: only the supervisor (the main pid) talks to systemd.
        self.assertEqual({pid for pid, _, _ in self.notify.messages}, {self.proc.pid})


@unittest.skipUnless(ANALYZE, "systemd-analyze is not installed (Debian package systemd)")
class UnitFilesTest(unittest.TestCase):
    def test_units_verify(self):
        """systemd-analyze verify of copies whose ExecStart is the built binary
        (verify wants the program to exist; meson puts the installed path
        where inboxd.service.in says @sbindir@)."""
        d = tempfile.mkdtemp(prefix="inboxd-units-")
        self.addCleanup(shutil.rmtree, d, True)
        sources = sorted(n for n in os.listdir(UNITS) if n.endswith((".service.in", ".socket")))
        self.assertEqual(sources, ["inboxd-submissions.socket", "inboxd.service.in",
                                   "inboxd.socket"])
        names = []
        for n in sources:
            with open(os.path.join(UNITS, n)) as f:
                text = f.read()
            if n.endswith(".in"):
                self.assertIn("\nExecStart=@sbindir@/inboxd -c /etc/inboxd/inboxd.toml\n", text)
                text = text.replace("@sbindir@/inboxd", os.path.abspath(BIN))
                n = n[:-3]
            self.assertNotIn("@sbindir@", text, f"{n}: a placeholder is left")
            with open(os.path.join(d, n), "w") as f:
                f.write(text)
            names.append(n)
        r = subprocess.run([ANALYZE, "verify", "--man=no", *[os.path.join(d, n) for n in names]],
                           capture_output=True, text=True, timeout=60, cwd=d)
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        self.assertEqual(r.stderr.strip(), "", r.stderr)
        with open(os.path.join(d, "inboxd.service")) as f:
            service = f.read()
        for line in ("Type=notify", "NotifyAccess=main", "KillMode=mixed",
                     "ExecReload=/bin/kill -HUP $MAINPID", "ProtectSystem=strict",
                     "NoNewPrivileges=yes", "CapabilityBoundingSet=CAP_NET_BIND_SERVICE"):
            self.assertIn("\n" + line + "\n", service)
        for unit, name in (("inboxd.socket", "smtp"), ("inboxd-submissions.socket", "smtps")):
            with open(os.path.join(d, unit)) as f:
                text = f.read()
            self.assertIn(f"\nFileDescriptorName={name}\n", text)
            self.assertIn("\nService=inboxd.service\n", text)


if __name__ == "__main__":
    harness.main()
