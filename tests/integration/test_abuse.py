"""Abusive clients: the error limit, the tarpit, early talkers (pregreet), and a
client that pipelines without ever reading its replies (output backpressure)."""
import re
import socket
import threading
import time

import harness
from harness import CRLF, HELO, HOSTNAME, Client, InboxdTestCase

harness.raise_nofile_limit()

TOO_MANY_ERRORS = "421 4.7.0 Too many errors, closing connection"
# libuv timers count from the loop's cached time, taken a little before the
# read that brought the command: a delay may look up to a few ms short.
SLACK = 0.01


class ErrorLimitTest(InboxdTestCase):
    server_args = ("--max-errors", "3")

    def test_third_error_then_421_and_close(self):
        c = self.ehlo()
        self.assertReply(c.cmd("FOO"), "500 5.5.2")
        self.assertReply(c.cmd("NOOP"), "250")          # not an error: not counted
        self.assertReply(c.cmd("MAIL FROM:<bad"), "501")
        self.assertReply(c.cmd("BAR"), "500 5.5.2")      # the 3rd error is still answered...
        self.assertEqual(c.reply().lines, [TOO_MANY_ERRORS])   # ...then 421
        self.assertTrue(c.at_eof(), "not closed after 421 4.7.0")
        self.assertTrue(self.server.wait_log(r"3 errors: closing"))

    def test_pipelined_errors(self):
        """Errors pipelined in one packet: three answers, the 421, and nothing for the rest."""
        c = self.connect()
        c.send(b"FOO\r\nBAR\r\nBAZ\r\nNOOP\r\nQUIT\r\n")
        data, how = c.read_to_eof(timeout=3)
        lines = data.split(CRLF)
        self.assertEqual(lines[-1], b"", f"unterminated line: {data!r}")
        self.assertEqual(len(lines), 5, f"expected 3 errors, 421 and close; got {data!r}")
        for line in lines[:3]:
            self.assertTrue(line.startswith(b"500 5.5.2 "), data)
        self.assertEqual(lines[3], TOO_MANY_ERRORS.encode())
        self.assertIn(how, ("eof", "reset"))

    def test_errors_counted_per_session(self):
        a, b = self.ehlo(), self.ehlo()
        for c in (a, b):
            self.assertReply(c.cmd("FOO"), "500")
            self.assertReply(c.cmd("FOO"), "500")
        self.deliver(a, "s@example.com", ["r@example.org"], b"Subject: x\r\n\r\nok\r\n")
        self.assertReply(b.cmd("NOOP"), "250")


class TarpitTest(InboxdTestCase):
    server_args = ("--max-errors", "10", "--error-delay-ms", "200")

    def timed(self, c, line):
        t0 = time.monotonic()
        r = c.cmd(line)
        return r, time.monotonic() - t0

    def test_growing_delay(self):
        c = self.ehlo()
        r1, t1 = self.timed(c, "FOO")
        r2, t2 = self.timed(c, "FOO")
        r3, t3 = self.timed(c, "FOO")
        for r in (r1, r2, r3):
            self.assertReply(r, "500 5.5.2")
        self.assertLess(t1, 0.18, "the first error is not delayed")
        self.assertGreaterEqual(t2, 0.2 - SLACK)
        self.assertLess(t2, 0.2 + 0.5)
        self.assertGreaterEqual(t3, 0.4 - SLACK)
        self.assertLess(t3, 0.4 + 0.5)
        # A good command is not delayed.
        r, t = self.timed(c, "NOOP")
        self.assertReply(r, "250")
        self.assertLess(t, 0.15)

    def test_pipelined_order_kept(self):
        c = self.ehlo()
        t0 = time.monotonic()
        c.send(b"FOO\r\nBAR\r\nNOOP\r\nBAZ\r\nRSET\r\nMAIL FROM:<s@example.com>\r\n")
        got = []
        for _ in range(6):
            r = c.reply()
            got.append((r.last[:3], round(time.monotonic() - t0, 3)))
        codes = [g[0] for g in got]
        self.assertEqual(codes, ["500", "500", "250", "500", "250", "250"], got)
        # 1st error at once; 2nd after 0.2 s; 3rd 0.4 s after that.
        self.assertLess(got[0][1], 0.15, got)
        self.assertGreaterEqual(got[1][1], 0.2 - SLACK, got)
        self.assertGreaterEqual(got[3][1], 0.6 - SLACK, got)
        self.assertLess(got[5][1], 0.6 + 0.6, got)
        # The session is intact: the transaction opened by the pipelined MAIL goes on.
        self.assertReply(c.cmd("RCPT TO:<r@example.org>"), "250")
        self.assertReply(c.cmd("DATA"), "354")
        c.send(b"Subject: tarpit\r\n\r\nbody\r\n.\r\n")
        self.assertQueued(c.reply())

    def test_others_not_slowed(self):
        slow = self.ehlo()
        # Errors 1..5: the 5th waits 0.8 s (4 x 200 ms).
        for _ in range(4):
            slow.cmd("FOO")
        t0 = time.monotonic()
        slow.send(b"FOO\r\n")
        other = self.ehlo()
        worst = 0.0
        for i in range(5):
            t = time.monotonic()
            self.assertReply(other.cmd("NOOP"), "250")
            worst = max(worst, time.monotonic() - t)
        self.deliver(other, "s@example.com", ["r@example.org"], b"Subject: x\r\n\r\nfast\r\n")
        during = time.monotonic() - t0
        self.assertLess(worst, 0.3, "another client waited on the tarpit")
        self.assertLess(during, 0.6, "another client's transaction waited on the tarpit")
        self.assertReply(slow.reply(), "500")
        self.assertGreaterEqual(time.monotonic() - t0, 0.8 - SLACK)

    def test_tarpit_then_limit(self):
        """With a tarpit the limit still holds: the 10th error gets its reply and 421."""
        c = self.connect()
        # Errors 2..9 wait 0.2+0.4+...+1.6 = 7.2 s in all; pipelined, bounded by the client timeout.
        c.set_timeout(15)
        c.send(b"FOO\r\n" * 12)
        data, how = c.read_to_eof(timeout=15)
        lines = data.split(CRLF)
        self.assertEqual(len(lines), 12, data)
        self.assertEqual(lines[10], TOO_MANY_ERRORS.encode())
        self.assertIn(how, ("eof", "reset"))


class PregreetTest(InboxdTestCase):
    server_args = ("--greeting-delay", "1")

    def test_early_talker_refused(self):
        c = Client(self.server.port)
        self.clients.append(c)
        t0 = time.monotonic()
        c.send(b"EHLO " + HELO.encode() + CRLF)
        data, how = c.read_to_eof(timeout=3)
        self.assertRegex(data, rb"^554 5\.5\.1 [^\r\n]*\r\n$", f"got {data!r}")
        self.assertNotIn(b"220", data)
        self.assertIn(how, ("eof", "reset"))
        self.assertLess(time.monotonic() - t0, 0.8, "the refusal waited for the greeting delay")
        self.assertTrue(self.server.wait_log(r"pregreet"))

    def test_early_talker_after_some_wait(self):
        """Talking half-way into the delay is still too early."""
        c = Client(self.server.port)
        self.clients.append(c)
        self.assertTrue(c.quiet(0.5), "something came before the greeting delay ended")
        c.send(b"EHLO " + HELO.encode() + CRLF + b"MAIL FROM:<s@example.com>\r\n")
        data, how = c.read_to_eof(timeout=3)
        self.assertRegex(data, rb"^554 5\.5\.1 [^\r\n]*\r\n$", f"got {data!r}")

    def test_patient_client_served(self):
        c = Client(self.server.port)
        self.clients.append(c)
        c.set_timeout(5)
        t0 = time.monotonic()
        r = c.reply()
        waited = time.monotonic() - t0
        self.assertEqual(r.lines, [f"220 {HOSTNAME} ESMTP inboxd"])
        self.assertGreaterEqual(waited, 0.9)
        self.assertLess(waited, 2.5)
        self.ehlo(c)
        qid = self.deliver(c, "s@example.com", ["r@example.org"], b"Subject: patient\r\n\r\nok\r\n")
        self.assertReply(c.cmd("QUIT"), "221")
        stored = self.stored()
        self.assertEqual(len(stored), 1)
        self.assertStored(stored[0], "s@example.com", b"Subject: patient\r\n\r\nok\r\n",
                          rcpt="r@example.org", queue_id=qid)

    def test_many_waiting_at_once(self):
        """The delay is a timer per connection, not a sleep: 50 clients all get
        their greeting about 1 s after connecting, not 50 s."""
        cs = [Client(self.server.port) for _ in range(50)]
        self.clients.extend(cs)
        t0 = time.monotonic()
        for c in cs:
            c.set_timeout(5)
            self.assertEqual(c.reply().code, 220)
        self.assertLess(time.monotonic() - t0, 2.5)


class BackpressureTest(InboxdTestCase):
    """A client pipelines NOOPs and never reads: the server stops reading it once
    its replies back up; memory stays bounded; others are served."""
    TARGET = 50 * 1024 * 1024      # what the abuser tries to send
    GROWTH_LIMIT = 64 * 1024 * 1024

    def test_noop_flood_without_reading(self):
        base = self.server.rss()
        abuser = socket.create_connection(("127.0.0.1", self.server.port), timeout=5)
        self.addCleanup(abuser.close)
        # A small receive buffer makes the replies back up sooner.
        abuser.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
        chunk = b"NOOP\r\n" * (64 * 1024 // 6)
        sent = 0
        stalled = False
        abuser.setblocking(False)
        deadline = time.monotonic() + 20
        last_progress = time.monotonic()
        peak = base
        while sent < self.TARGET and time.monotonic() < deadline:
            try:
                n = abuser.send(chunk)
                sent += n
                last_progress = time.monotonic()
            except BlockingIOError:
                if time.monotonic() - last_progress > 2.0:
                    stalled = True
                    break
                time.sleep(0.01)
                peak = max(peak, self.server.rss())
        peak = max(peak, self.server.rss(), self.server.rss("VmHWM"))   # VmHWM: the peak so far
        growth = peak - base
        print(f"\nbackpressure: sent {sent / 1e6:.1f} MB of NOOPs before the server stopped reading "
              f"(stalled={stalled}); RSS {base / 1e6:.1f} MB -> peak {peak / 1e6:.1f} MB "
              f"(growth {growth / 1e6:.1f} MB)", flush=True)
        self.assertTrue(stalled, f"the server kept reading: {sent} bytes taken")
        self.assertLess(growth, self.GROWTH_LIMIT)

        # Others are served meanwhile.
        c = self.ehlo()
        t0 = time.monotonic()
        qid = self.deliver(c, "s@example.com", ["r@example.org"], b"Subject: bp\r\n\r\nserved\r\n")
        self.assertLess(time.monotonic() - t0, 1.0)
        self.assertTrue(qid)
        self.assertLess(self.server.rss() - base, self.GROWTH_LIMIT)

        # The abuser's connection is closed and its memory goes with it.
        abuser.close()
        self.assertTrue(self.server.wait_log(r"conn=1 disconnect from"), "abuser never disconnected")
        self.assertReply(c.cmd("NOOP"), "250")
        self.assertReply(c.cmd("QUIT"), "221")
        self.assertEqual(len(self.stored()), 1)

    def test_ehlo_flood_many_clients(self):
        """Ten clients pipeline EHLO (8 bytes in, ~150 out) and never read: the
        unsent replies per connection stay bounded even with that amplification."""
        n = 10
        base = self.server.rss()
        socks = []
        self.addCleanup(lambda: [s.close() for s in socks])
        for _ in range(n):
            s = socket.create_connection(("127.0.0.1", self.server.port), timeout=5)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            s.setblocking(False)
            socks.append(s)
        chunk = b"EHLO flood.test\r\n" * 4096
        sent = [0] * n
        last = [time.monotonic()] * n
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            now = time.monotonic()
            if all(now - t > 1.5 for t in last):
                break
            for i, s in enumerate(socks):
                try:
                    sent[i] += s.send(chunk)
                    last[i] = time.monotonic()
                except BlockingIOError:
                    pass
            time.sleep(0.01)
        stalled = all(time.monotonic() - t > 1.5 for t in last)
        growth = max(self.server.rss(), self.server.rss("VmHWM")) - base
        print(f"\nEHLO flood: {n} clients sent {sum(sent) / 1e6:.1f} MB in all before the server "
              f"stopped reading them; RSS growth {growth / 1e6:.1f} MB "
              f"({growth / n / 1e6:.2f} MB per connection)", flush=True)
        self.assertTrue(stalled, f"the server kept reading: {sent}")
        self.assertLess(growth / n, 4 * 1024 * 1024, "memory per non-reading connection")
        c = self.ehlo()
        t0 = time.monotonic()
        self.deliver(c, "s@example.com", ["r@example.org"], b"Subject: bp\r\n\r\nserved\r\n")
        self.assertLess(time.monotonic() - t0, 1.0)

    def test_reader_resumes(self):
        """Once it reads, a backed-up client gets every reply, in order."""
        c = Client(self.server.port, timeout=10)
        self.clients.append(c)
        c.reply()
        n = 200_000    # 1.2 MB of commands, 2.8 MB of replies: more than the bound
        payload = b"NOOP\r\n" * n
        t = threading.Thread(target=c.sock.sendall, args=(payload,))
        t.start()
        time.sleep(1.0)
        got = 0
        buf = b""
        deadline = time.monotonic() + 20
        while got < n and time.monotonic() < deadline:
            chunk = c.sock.recv(1 << 20)
            if not chunk:
                break
            buf += chunk
            lines = buf.split(CRLF)
            buf = lines.pop()
            for line in lines:
                self.assertEqual(line, b"250 2.0.0 Ok", f"reply {got}")
                got += 1
        t.join(5)
        self.assertEqual(got, n)
        self.assertReply(c.cmd("QUIT"), "221")


if __name__ == "__main__":
    harness.main()
