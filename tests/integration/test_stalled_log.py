"""A log reader that stops reading must not stop SMTP (issue 9, item 8).

The server's stderr is a pipe (or a socket, as journald's stream is) that the
test stops reading once the server has said where it listens. Messages whose
log lines are long (50 recipients: about 3.6 KB each) then fill the pipe and
the server's 1 MiB log buffer: NOOPs on another connection must still be
answered in well under a second and every message must still get its 250.
Then the test reads again and must find whole log lines and one notice that
says how many lines were dropped, which accounts for every missing line.
Last, the reader stalls again and SIGTERM must still end the process within a
few seconds.

Before the fix the log left with a blocking write() on the loop thread: once
the pipe held 64 KiB the loop stopped, and the next reply timed out.

harness.Server logs to a file, so the server is started here; every wait is
bounded and the process is stopped by its PID.
"""
import os
import re
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import unittest

import harness
from harness import BIN, HELO, HOSTNAME, Client

LINE_RE = re.compile(rb"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z inboxd\[\d+\]: "
                     rb"(?:debug|info|warning|error): [^\n]*$")
DROPPED_RE = re.compile(rb"log: (\d+) line\(s\) dropped: the log was not read")
SENT_RE = re.compile(rb" status=sent ")
RECIPIENTS = 50        # a line of about 3.6 KB: under PIPE_BUF (4096), which a pipe takes whole
MESSAGES = 400          # about 1.4 MB of log lines: more than the pipe and the 1 MiB buffer
NOOP_EVERY = 20
NOOP_BOUND = 1.0        # seconds: the loop did not stall
TEST_BOUND = 60         # seconds for one test, whatever happens


class Timeout(Exception):
    pass


class StalledLogCase(unittest.TestCase):
    transport = "pipe"

    def setUp(self):
        signal.signal(signal.SIGALRM, self._alarm)
        signal.alarm(TEST_BOUND)
        self.addCleanup(signal.alarm, 0)
        self.dir = tempfile.mkdtemp(prefix="inboxd-it-log-")
        self.addCleanup(shutil.rmtree, self.dir, True)
        if self.transport == "pipe":
            self.reader, child = os.pipe()
        else:
            # A Unix stream socket, as systemd hands a service for journald.
            # Small buffers, so that the test does not depend on the host's
            # socket defaults.
            ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
            theirs.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 32768)
            ours.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 32768)
            self.reader, child = os.dup(ours.fileno()), os.dup(theirs.fileno())
            ours.close()
            theirs.close()
        self.addCleanup(os.close, self.reader)
        cmd = [BIN, "--listen", "127.0.0.1:0", "--hostname", HOSTNAME,
               "--maildir", os.path.join(self.dir, "maildir")]
        if os.geteuid() == 0:
            cmd.append("--allow-root")
        try:
            self.proc = subprocess.Popen(cmd, cwd=self.dir, stdin=subprocess.DEVNULL,
                                         stdout=subprocess.DEVNULL, stderr=child)
        finally:
            os.close(child)
        self.addCleanup(self._kill)
        self.out = b""
        m = self.read_until(harness.LISTEN_RE.pattern.encode(), harness.TIMEOUT)
        self.assertIsNotNone(m, f"no 'listening on' line; got {self.out!r}")
        self.port = int(m.group(1))
        self.clients = []
        self.addCleanup(lambda: [c.close() for c in self.clients])

    def _alarm(self, signum, frame):
        raise Timeout(f"the test took more than {TEST_BOUND} s")

    def _kill(self):
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(harness.TIMEOUT)

    # ---- the log ----
    def read_some(self, timeout):
        """Reads what the server wrote within `timeout` s; False at EOF or if nothing came."""
        ready, _, _ = select.select([self.reader], [], [], max(0.0, timeout))
        if not ready:
            return False
        chunk = os.read(self.reader, 1 << 20)
        self.out += chunk
        return bool(chunk)

    def read_until(self, pattern, timeout):
        """Reads until `pattern` matches the log read so far; the match or None."""
        deadline = time.monotonic() + timeout
        while True:
            m = re.search(pattern, self.out, re.M)
            if m or time.monotonic() > deadline:
                return m
            if not self.read_some(min(0.2, deadline - time.monotonic())) and \
                    self.proc.poll() is not None:
                return re.search(pattern, self.out, re.M)

    def read_while_coming(self, quiet=0.3, timeout=10.0):
        """Reads until the server writes nothing for `quiet` s (or EOF)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self.read_some(quiet):
            pass

    def assert_whole_lines(self, data):
        """Every line is one whole log line, and the data ends with a line's end."""
        lines = data.split(b"\n")
        self.assertEqual(lines.pop(), b"", "the log ends inside a line")
        for line in lines:
            self.assertRegex(line, LINE_RE, "a log line is not whole")

    # ---- SMTP ----
    def connect(self):
        c = Client(self.port)
        self.clients.append(c)
        self.assertEqual(c.reply().code, 220)
        self.assertEqual(c.cmd(f"EHLO {HELO}").code, 250)
        return c

    def send_message(self, c, i):
        """One message with RECIPIENTS recipients, pipelined (RFC 2920): each logs
        one long line with its to= list."""
        rcpts = [f"r{j:03d}-{'x' * 50}@example.test" for j in range(RECIPIENTS)]
        head = f"MAIL FROM:<sender{i}@example.org>\r\n" + \
            "".join(f"RCPT TO:<{r}>\r\n" for r in rcpts) + "DATA\r\n"
        c.send(head.encode())
        replies = c.replies(2 + RECIPIENTS)
        self.assertTrue(all(r.code == 250 for r in replies[:-1]), replies)
        self.assertEqual(replies[-1].code, 354)
        c.send(f"Subject: m{i}\r\n\r\nmessage {i}\r\n.\r\n".encode())
        r = c.reply()
        self.assertEqual(r.code, 250, f"message {i}: {r!r}")

    def noop_latency(self, c):
        t0 = time.monotonic()
        r = c.cmd("NOOP")
        elapsed = time.monotonic() - t0
        self.assertEqual(r.code, 250)
        return elapsed

    # ---- the test ----
    def test_stalled_reader_does_not_stall_smtp(self):
        sender, watcher = self.connect(), self.connect()
        self.read_while_coming(quiet=0.2)   # The connect lines; from now on nobody reads.
        start = len(self.out)
        worst = 0.0
        for i in range(MESSAGES):
            try:
                self.send_message(sender, i)
                if i % NOOP_EVERY == 0:
                    worst = max(worst, self.noop_latency(watcher))
            except TimeoutError as e:
                self.fail(f"message {i}: no reply within {harness.TIMEOUT} s, the loop "
                          f"stalled on the log ({len(self.out)} bytes read before): {e}")
        # By now the pipe and the buffer are full and lines are being dropped.
        worst = max(worst, self.noop_latency(watcher))
        self.assertLess(worst, NOOP_BOUND, "the loop stalled while the log was not read")
        print(f"\n{self.transport}: worst NOOP while the log was not read: {worst * 1000:.1f} ms",
              file=sys.stderr)
        late = self.connect()                      # A new session is served too.
        self.send_message(late, MESSAGES)
        self.assertLess(self.noop_latency(watcher), NOOP_BOUND)

        # The reader reads again: the backlog drains and the notice comes.
        m = self.read_until(DROPPED_RE.pattern, 15.0)
        self.assertIsNotNone(m, "no notice of dropped lines")
        self.read_while_coming()
        dropped = int(m.group(1))
        self.assertGreater(dropped, 0)
        self.assertEqual(len(DROPPED_RE.findall(self.out)), 1, "one notice for one gap")
        self.assert_whole_lines(self.out)
        # Every line since the reader stopped (one per message, and the late
        # session's connect line) was either written or counted as dropped.
        written = self.out[start:].count(b"\n") - 1     # Less the notice.
        self.assertEqual(written + dropped, MESSAGES + 2,
                         f"{written} lines written and {dropped} dropped of {MESSAGES + 2}")
        self.assertLess(self.noop_latency(watcher), NOOP_BOUND)

        # The writer has waited for the reader (a poll for writability),
        # and stderr's description is still blocking for its other holders.
        self.assertEqual(self.fd_flags(2) & os.O_NONBLOCK, 0, "O_NONBLOCK set on stderr")
        # The reader stalls again, for good: SIGTERM still ends the process.
        for i in range(30):
            self.send_message(sender, MESSAGES + 1 + i)
        for c in (sender, watcher, late):
            c.cmd("QUIT")
            c.close()
        # The reader takes a little (cutting a line: that is the reader's own
        # cut) and stalls once more: the server refills the pipe from its
        # backlog, and what it writes must not end inside a line.
        before = len(self.out)
        self.out += os.read(self.reader, 10000)
        time.sleep(0.3)
        t0 = time.monotonic()
        os.kill(self.proc.pid, signal.SIGTERM)
        try:
            rc = self.proc.wait(5.0)
        except subprocess.TimeoutExpired:
            self.fail("SIGTERM did not end the process while its log was not read")
        self.assertEqual(rc, 0)
        exit_s = time.monotonic() - t0
        self.read_while_coming()
        tail = len(self.out) - (self.out.rfind(b"\n") + 1)
        print(f"{self.transport}: {dropped} line(s) dropped; exit after SIGTERM with the reader "
              f"stalled: {exit_s:.2f} s; unfinished last line: {tail} bytes", file=sys.stderr)
        self.assert_whole_lines(self.out[:before])
        # The writes are whole lines under PIPE_BUF (4096) bytes once the
        # reader lags, which a pipe (and in practice a Unix socket) takes
        # whole or not at all: even a reader that stalled through the exit
        # finds no half line.
        self.assert_whole_lines(self.out)

    def fd_flags(self, fd):
        with open(f"/proc/{self.proc.pid}/fdinfo/{fd}") as f:
            for line in f:
                if line.startswith("flags:"):
                    return int(line.split()[1], 8)
        raise AssertionError(f"no flags for fd {fd}")

    def test_reader_that_keeps_up_gets_every_line(self):
        # The same pipe, read all along: nothing is dropped, and the lines
        # written during and after the shutdown are there too.
        c = self.connect()
        # stderr's description, which other writers may share, stays
        # blocking: the writer has a description of the pipe of its own, and
        # writes to a socket with send(MSG_DONTWAIT).
        self.assertEqual(self.fd_flags(2) & os.O_NONBLOCK, 0, "O_NONBLOCK set on stderr")
        for i in range(50):
            self.send_message(c, i)
            self.read_some(0)
        c.cmd("QUIT")
        os.kill(self.proc.pid, signal.SIGTERM)
        m = self.read_until(rb"info: stopped$", harness.TIMEOUT)
        self.assertIsNotNone(m, f"no 'stopped' line; log tail: {self.out[-500:]!r}")
        self.assertEqual(self.proc.wait(harness.TIMEOUT), 0)
        self.read_while_coming()
        self.assert_whole_lines(self.out)
        self.assertEqual(len(SENT_RE.findall(self.out)), 50)
        self.assertIn(b"SIGTERM: draining", self.out)
        self.assertIsNone(DROPPED_RE.search(self.out))


class StalledSocketLogCase(StalledLogCase):
    transport = "socket"


if __name__ == "__main__":
    harness.main()
