"""Timeouts: --command-timeout, --data-timeout, and the minimum data rate
(--min-data-rate over --min-data-rate-window). A client that keeps the server
waiting gets `421 4.4.2` and is closed; a message cut off is never stored."""
import os
import select
import time

import harness
from harness import CRLF, HOSTNAME, InboxdTestCase

TIMEOUT_REPLY = "421 4.4.2 Timeout exceeded, closing connection"
TOO_SLOW_REPLY = "421 4.4.2 Data arrives too slowly, closing connection"


class TimeoutCase(InboxdTestCase):
    def expect_cut_off(self, c, reply, after, lo, hi):
        """The next thing from the server is `reply`, between lo and hi s after
        `after`, then the close."""
        c.set_timeout(hi + 1)
        data, how = c.read_to_eof(timeout=hi + 1)
        waited = time.monotonic() - after
        self.assertEqual(data, reply.encode() + CRLF, f"after {waited:.2f} s ({how})")
        self.assertIn(how, ("eof", "reset"), "not closed after the 421")
        self.assertGreaterEqual(waited, lo)
        self.assertLess(waited, hi)

    def assertNothingStored(self):
        # The sink's abort runs on the thread pool: give it a moment.
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline and os.listdir(os.path.join(self.server.maildir, "tmp")):
            time.sleep(0.05)
        self.assertEqual(self.stored(), [])


class CommandTimeoutTest(TimeoutCase):
    server_args = ("--command-timeout", "1")

    def test_idle_after_greeting(self):
        c = self.connect()
        self.expect_cut_off(c, TIMEOUT_REPLY, time.monotonic(), 0.9, 2.5)
        self.assertTrue(self.server.wait_log(r"timeout waiting for a command"))

    def test_idle_after_ehlo(self):
        c = self.ehlo()
        self.expect_cut_off(c, TIMEOUT_REPLY, time.monotonic(), 0.9, 2.5)

    def test_idle_in_transaction(self):
        c = self.ehlo()
        self.assertReply(c.cmd("MAIL FROM:<s@example.com>"), "250")
        self.assertReply(c.cmd("RCPT TO:<r@example.org>"), "250")
        self.expect_cut_off(c, TIMEOUT_REPLY, time.monotonic(), 0.9, 2.5)
        self.assertNothingStored()

    def test_activity_resets_the_timer(self):
        c = self.ehlo()
        t0 = time.monotonic()
        for _ in range(6):          # 2.4 s in all, more than the timeout
            time.sleep(0.4)
            self.assertReply(c.cmd("NOOP"), "250")
        self.assertGreater(time.monotonic() - t0, 2.0)
        self.deliver(c, "s@example.com", ["r@example.org"], b"Subject: t\r\n\r\nbody\r\n")
        self.expect_cut_off(c, TIMEOUT_REPLY, time.monotonic(), 0.9, 2.5)
        self.assertEqual(len(self.stored()), 1)

    def test_others_unaffected(self):
        """One client timing out does not disturb another that is busy."""
        idle = self.connect()
        busy = self.ehlo()
        t0 = time.monotonic()
        for i in range(6):
            time.sleep(0.3)
            self.deliver(busy, "s@example.com", [f"r{i}@example.org"], b"Subject: t\r\n\r\nx\r\n")
        self.expect_cut_off(idle, TIMEOUT_REPLY, t0, 0.9, 2.5)
        self.assertReply(busy.cmd("NOOP"), "250")


class DataTimeoutTest(TimeoutCase):
    server_args = ("--data-timeout", "1", "--command-timeout", "30")

    def test_stalled_data(self):
        c = self.ehlo()
        self.assertReply(c.cmd("MAIL FROM:<s@example.com>"), "250")
        self.assertReply(c.cmd("RCPT TO:<r@example.org>"), "250")
        self.assertReply(c.cmd("DATA"), "354")
        c.send(b"Subject: stalled\r\n\r\nfirst half of the body")
        t0 = time.monotonic()
        self.expect_cut_off(c, TIMEOUT_REPLY, t0, 0.9, 2.5)
        self.assertTrue(self.server.wait_log(r"timeout in DATA"))
        self.assertTrue(self.server.wait_log(r"status=dropped"))
        self.assertNothingStored()

    def test_stalled_right_after_354(self):
        c = self.ehlo()
        self.assertReply(c.cmd("MAIL FROM:<s@example.com>"), "250")
        self.assertReply(c.cmd("RCPT TO:<r@example.org>"), "250")
        self.assertReply(c.cmd("DATA"), "354")
        self.expect_cut_off(c, TIMEOUT_REPLY, time.monotonic(), 0.9, 2.5)
        self.assertNothingStored()

    def test_command_wait_uses_command_timeout(self):
        """The short DATA timeout does not apply between commands."""
        c = self.ehlo()
        time.sleep(1.6)
        self.deliver(c, "s@example.com", ["r@example.org"], b"Subject: t\r\n\r\nok\r\n")
        time.sleep(1.6)
        self.assertReply(c.cmd("NOOP"), "250")
        self.assertEqual(len(self.stored()), 1)

    def test_slow_but_steady_data_survives(self):
        """Each pause is under the DATA timeout: the message gets through."""
        c = self.ehlo()
        self.assertReply(c.cmd("MAIL FROM:<s@example.com>"), "250")
        self.assertReply(c.cmd("RCPT TO:<r@example.org>"), "250")
        self.assertReply(c.cmd("DATA"), "354")
        body = b"Subject: steady\r\n\r\n" + b"".join(b"line %d\r\n" % i for i in range(4))
        for i in range(0, len(body), 12):
            c.send(body[i:i + 12])
            time.sleep(0.5)
        c.send(b".\r\n")
        self.assertQueued(c.reply())
        self.assertStored(self.stored()[0], "s@example.com", body, rcpt="r@example.org")


class MinDataRateTest(TimeoutCase):
    server_args = ("--min-data-rate", "1000", "--min-data-rate-window", "1")

    def start_data(self):
        c = self.ehlo()
        self.assertReply(c.cmd("MAIL FROM:<s@example.com>"), "250")
        self.assertReply(c.cmd("RCPT TO:<r@example.org>"), "250")
        self.assertReply(c.cmd("DATA"), "354")
        return c

    def test_trickle_cut_off(self):
        c = self.start_data()
        t0 = time.monotonic()
        # 10 bytes every 0.2 s (50 B/s) for at most 5 s, until the server speaks.
        for i in range(25):
            try:
                c.send(b"trickle%02d " % i)
            except (BrokenPipeError, ConnectionResetError):
                break
            r, _, _ = select.select([c.sock], [], [], 0.2)
            if r:
                break
        self.expect_cut_off(c, TOO_SLOW_REPLY, t0, 0.9, 3.0)
        self.assertTrue(self.server.wait_log(r"data too slow in DATA"))
        self.assertNothingStored()

    def test_fast_client_fine(self):
        c = self.start_data()
        body = b"Subject: fast\r\n\r\n" + b"".join(b"%06d %s\r\n" % (i, b"x" * 70) for i in range(3000))
        c.send(harness.stuff(body) + b".\r\n")
        self.assertQueued(c.reply())
        # A second message on the same connection, after an idle pause: the rate
        # is per DATA, and the wait between commands does not count.
        time.sleep(1.2)
        qid = self.deliver(c, "s@example.com", ["r@example.org"], b"Subject: again\r\n\r\nok\r\n")
        self.assertTrue(qid)
        self.assertEqual(len(self.stored()), 2)

    def test_steady_above_minimum_fine(self):
        """About 2,400 B/s for 2 s: slow, but above the minimum."""
        c = self.start_data()
        line = b"y" * 48 + CRLF
        for _ in range(100):
            c.send(line)
            time.sleep(0.02)
        c.send(b".\r\n")
        self.assertQueued(c.reply())
        self.assertEqual(len(self.stored()), 1)

    def test_slow_before_window_fine(self):
        """A small message sent slowly but inside the window is not judged."""
        c = self.start_data()
        for part in (b"Subject: s\r\n", b"\r\n", b"short\r\n", b".\r\n"):
            c.send(part)
            time.sleep(0.15)
        self.assertQueued(c.reply())


if __name__ == "__main__":
    harness.main()
