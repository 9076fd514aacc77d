"""Lingering close: when the server ends a session while the client still has
unread input on its way (the 421 of a connection limit, the 554 to an early
talker, the 421 after too many errors, QUIT with more after it), the client
still reads its last reply and then a clean end of stream, not a reset.

Closing a socket whose receive queue holds unread bytes makes the kernel send
a TCP reset (RFC 1122 4.2.2.13): the client's send fails, and a client that
stops at that error never reads the reply. As nginx's lingering close does,
inboxd shuts its write side after the last reply and reads and discards what
still comes for a short, bounded time. Each test sends a burst of 1 MiB before
reading: without the lingering close, the reset is near certain."""
import re
import socket
import time

import harness
from harness import CRLF, HELO, HOSTNAME, Client, InboxdTestCase

harness.raise_nofile_limit()

BURST = 1024 * 1024
TOO_MANY_ERRORS = b"421 4.7.0 Too many errors, closing connection\r\n"
REFUSED_RE = re.compile(rb"^421 4\.7\.0 " + re.escape(HOSTNAME.encode()) + rb" .+\r\n$")
PREGREET_RE = re.compile(rb"^554 5\.5\.1 [^\r\n]*\r\n$")


class LingerCase(InboxdTestCase):
    def client(self):
        c = Client(self.server.port)
        self.clients.append(c)
        return c

    def burst_then_read(self, c, head=b"", fill=b"NOOP\r\n"):
        """Sends head and BURST bytes of fill before reading anything, then reads
        to the end of the stream. Fails if the send is cut off; returns
        (bytes read, how the stream ended)."""
        data = head + fill * (BURST // len(fill))
        try:
            c.sock.sendall(data)
        except OSError as e:
            self.fail(f"the server cut the connection while the client was sending: {e!r}")
        return c.read_to_eof(timeout=5)

    def assertCleanEnd(self, how, data):
        self.assertEqual(how, "eof", f"expected the last reply then a clean end, got {how}: "
                                     f"{data[:300]!r}")


class OverLimitTest(LingerCase):
    server_args = ("--limit-loopback", "--max-connections-per-ip", "1")

    def test_refused_client_reads_421(self):
        held = self.client()
        self.assertEqual(held.reply().code, 220)
        c = self.client()
        data, how = self.burst_then_read(c, b"EHLO " + HELO.encode() + CRLF)
        self.assertRegex(data, REFUSED_RE, f"expected one 421 4.7.0 line, got {data[:300]!r}")
        self.assertCleanEnd(how, data)
        # The held client is served as ever.
        self.assertReply(held.cmd("NOOP"), "250")

    def test_lingering_is_bounded(self):
        """A refused client that keeps talking and never closes is closed in a
        bounded time; the lingering connection is no client (nothing it sends
        is answered)."""
        held = self.client()
        self.assertEqual(held.reply().code, 220)
        c = self.client()
        c.send(b"NOOP\r\n")
        self.assertRegex(c.reply().lines[0].encode() + CRLF, REFUSED_RE)
        deadline = time.monotonic() + 6
        closed = False
        while time.monotonic() < deadline and not closed:
            try:
                c.send(b"NOOP\r\n")
            except OSError:
                break
            closed = bool(re.search(r"conn=2 disconnect", self.server.log()))
            time.sleep(0.1)
        self.assertTrue(self.server.wait_log(r"conn=2 disconnect", timeout=1),
                        "a refused client that keeps sending was not closed within 6 s")
        self.assertNotRegex(self.server.log(), r"conn=2 .*(?:errors|NOOP)")
        self.assertReply(held.cmd("NOOP"), "250")


class ErrorLimitTest(LingerCase):
    server_args = ("--max-errors", "2")

    def test_error_limit_421_read(self):
        c = self.client()
        self.assertEqual(c.reply().code, 220)
        data, how = self.burst_then_read(c, fill=b"FOO\r\n")
        lines = data.split(CRLF)
        self.assertGreaterEqual(len(lines), 3, data[:300])
        self.assertEqual(lines[-1], b"", f"unterminated: {data[-300:]!r}")
        self.assertEqual(lines[-2] + CRLF, TOO_MANY_ERRORS, f"no 421 at the end: {data[-300:]!r}")
        self.assertTrue(all(line.startswith(b"500 5.5.2 ") for line in lines[:-2]), data[:300])
        self.assertCleanEnd(how, data)


class PregreetTest(LingerCase):
    server_args = ("--greeting-delay", "1")

    def test_early_talker_reads_554(self):
        c = self.client()
        data, how = self.burst_then_read(c, b"EHLO " + HELO.encode() + CRLF)
        self.assertRegex(data, PREGREET_RE, f"expected one 554 line, got {data[:300]!r}")
        self.assertCleanEnd(how, data)


class TooSlowTest(LingerCase):
    """A time limit: the minimum data rate (a window of 1 s at 100 MB/s, which
    no client meets after a pause). The burst that comes after the pause is
    what the 421 leaves unread."""
    server_args = ("--min-data-rate", "100000000", "--min-data-rate-window", "1")

    def test_too_slow_421_read(self):
        c = self.client()
        self.assertEqual(c.reply().code, 220)
        self.assertReply(c.cmd("EHLO " + HELO), "250")
        self.assertReply(c.cmd("MAIL FROM:<s@example.com>"), "250")
        self.assertReply(c.cmd("RCPT TO:<r@example.org>"), "250")
        self.assertReply(c.cmd("DATA"), "354")
        c.send(b"Subject: slow\r\n")      # The rate is measured from here.
        time.sleep(1.2)
        data, how = self.burst_then_read(c, fill=b"x" * 62 + CRLF)
        self.assertRegex(data, rb"^421 4\.4\.2 [^\r\n]*\r\n$", f"got {data[:300]!r}")
        self.assertCleanEnd(how, data)
        self.assertEqual(self.stored(), [])


class QuitTest(LingerCase):
    server_args = ("--max-connections", "1")

    def test_quit_then_junk(self):
        c = self.client()
        self.assertEqual(c.reply().code, 220)
        data, how = self.burst_then_read(c, b"QUIT\r\n", fill=b"MAIL FROM:<x@example.com>\r\n")
        self.assertRegex(data, rb"^221 2\.0\.0 [^\r\n]*\r\n$", f"got {data[:300]!r}")
        self.assertCleanEnd(how, data)

    def test_lingering_connection_is_not_counted(self):
        """With one connection allowed, a client that said QUIT and lingers on
        (it has not closed its socket) does not keep the next one out."""
        a = self.client()
        self.assertEqual(a.reply().code, 220)
        a.send(b"QUIT\r\n")
        self.assertReply(a.reply(), "221")
        b = self.client()
        self.assertEqual(b.reply().lines, [f"220 {HOSTNAME} ESMTP inboxd"])
        self.assertReply(b.cmd("NOOP"), "250")


if __name__ == "__main__":
    harness.main()
