"""Connection limits: --max-connections, --max-connections-per-ip,
--connection-rate-per-ip (with and without --limit-loopback). A connection over
a limit gets one `421 4.7.0` line, unread input or not, and is closed; the
clients already in are still served promptly."""
import re
import socket
import threading
import time

import harness
from harness import CRLF, HOSTNAME, Client, InboxdTestCase

harness.raise_nofile_limit()

REFUSED_RE = re.compile(rf"^421 4\.7\.0 {re.escape(HOSTNAME)} .+\r\n$".encode())


class LimitCase(InboxdTestCase):
    def refused(self, talk_first=False, source=None, why=None):
        """Connects (optionally sending EHLO before reading anything); asserts that
        the whole of what comes back is one 421 4.7.0 line, then the close."""
        c = Client(self.server.port, source=source)
        self.clients.append(c)
        if talk_first:
            c.send(b"EHLO " + harness.HELO.encode() + CRLF)
        data, how = c.read_to_eof(timeout=3)
        self.assertRegex(data, REFUSED_RE, f"expected one '421 4.7.0' line then close; got {data!r} ({how})")
        self.assertIn(how, ("eof", "reset"), f"not closed after the 421: {data!r}")
        if why:
            self.assertIn(why.encode(), data)
        return data

    def admitted(self, source=None):
        c = Client(self.server.port, source=source)
        self.clients.append(c)
        r = c.reply()
        self.assertEqual(r.lines, [f"220 {HOSTNAME} ESMTP inboxd"])
        return c

    def eventually_admitted(self, source=None, within=3.0):
        """A slot freed by a close is free once the server has seen the close."""
        deadline = time.monotonic() + within
        while True:
            c = Client(self.server.port, source=source)
            first = c.reply()
            if first.code == 220:
                self.clients.append(c)
                return c
            c.close()
            if time.monotonic() > deadline:
                self.fail(f"slot not freed within {within} s: {first!r}")
            time.sleep(0.05)


class MaxConnectionsTest(LimitCase):
    N = 5
    server_args = ("--max-connections", str(N))

    def test_over_limit_gets_421_and_close(self):
        held = [self.admitted() for _ in range(self.N)]
        self.refused(why="too many connections")
        self.assertTrue(self.server.wait_log(r"refused: too many connections \(127\.0\.0\.1\)"))
        # The ones in are not disturbed.
        for c in held:
            self.assertReply(c.cmd("NOOP"), "250")

    def test_over_limit_talker_gets_421_input_unread(self):
        held = [self.admitted() for _ in range(self.N)]
        for _ in range(3):
            self.refused(talk_first=True)
        # Its EHLO was never read: no session log line answers it, nothing but the 421 came.
        self.assertNotRegex(self.server.log(), r"pregreet|refused: 5\d\d")
        self.assertReply(held[0].cmd("NOOP"), "250")

    def test_slot_freed_after_close(self):
        held = [self.admitted() for _ in range(self.N)]
        self.refused()
        held[0].cmd("QUIT")
        held[0].close()
        c = self.eventually_admitted()
        self.ehlo(c)
        self.refused()

    def test_limit_applies_to_loopback(self):
        # The total is not a per-address limit: loopback counts, and so does 127.0.0.2.
        for i in range(self.N):
            self.admitted(source="127.0.0.2" if i % 2 else None)
        self.refused(source="127.0.0.2")
        self.refused()


class FullTableTest(LimitCase):
    """An established client gets prompt replies while the table is full and
    connection attempts keep being refused."""
    N = 300
    server_args = ("--max-connections", str(N))

    def test_established_client_prompt_under_full_table(self):
        worker = self.ehlo(self.admitted())
        idle = [self.admitted() for _ in range(self.N - 1)]
        self.assertEqual(len(idle), self.N - 1)
        stop = threading.Event()
        refused = [0, 0]    # refused, other

        def hammer():
            deadline = time.monotonic() + 20
            for _ in range(2000):
                if stop.is_set() or time.monotonic() > deadline:
                    break
                try:
                    s = socket.create_connection(("127.0.0.1", self.server.port), timeout=3)
                    s.sendall(b"EHLO flood.test\r\n")
                    data = s.recv(512)
                    refused[0 if data.startswith(b"421 4.7.0") else 1] += 1
                    s.close()
                except OSError:
                    refused[1] += 1

        threads = [threading.Thread(target=hammer) for _ in range(2)]
        for t in threads:
            t.start()
        try:
            time.sleep(0.2)
            worst = 0.0
            for i in range(10):
                t0 = time.monotonic()
                self.deliver(worker, "sender@example.com", [f"full{i}@example.org"],
                             b"Subject: full table\r\n\r\nstill served\r\n")
                self.assertReply(worker.cmd("NOOP"), "250")
                worst = max(worst, time.monotonic() - t0)
            self.assertLess(worst, 1.0, f"a transaction took {worst:.3f} s under a full table")
        finally:
            stop.set()
            for t in threads:
                t.join(25)
        self.assertGreater(refused[0], 10, f"too few refusals seen: {refused}")
        self.assertEqual(refused[1], 0, f"attempts that did not get 421 4.7.0: {refused}")
        self.assertEqual(len(self.stored()), 10)
        for c in idle[:20]:
            self.assertReply(c.cmd("NOOP"), "250")


class PerIpLimitTest(LimitCase):
    server_args = ("--max-connections-per-ip", "3", "--limit-loopback")

    def test_per_ip_limit(self):
        held = [self.admitted() for _ in range(3)]
        self.refused(why="too many connections from this address")
        self.refused(talk_first=True, why="too many connections from this address")
        # Another address has its own count.
        other = [self.admitted(source="127.0.0.2") for _ in range(3)]
        self.refused(source="127.0.0.2")
        # A close frees one slot of that address only.
        held[0].cmd("QUIT")
        held[0].close()
        self.eventually_admitted()
        self.refused()
        self.assertReply(other[0].cmd("NOOP"), "250")


class PerIpLoopbackExemptTest(LimitCase):
    server_args = ("--max-connections-per-ip", "3", "--connection-rate-per-ip", "3")

    def test_loopback_exempt_without_limit_loopback(self):
        held = [self.admitted() for _ in range(10)]
        for _ in range(5):
            c = self.admitted()
            c.cmd("QUIT")
        for c in held:
            self.assertReply(c.cmd("NOOP"), "250")
        self.assertNotIn("refused: too many", self.server.log())


class RateLimitTest(LimitCase):
    server_args = ("--connection-rate-per-ip", "3", "--limit-loopback")

    def test_rate_per_ip(self):
        for _ in range(3):
            c = self.admitted()
            self.assertReply(c.cmd("QUIT"), "221")
            c.close()
        self.refused(why="too many connections per minute from this address")
        self.refused(talk_first=True)
        # The rate is per address.
        c = self.admitted(source="127.0.0.2")
        self.ehlo(c)


class FdExhaustionTest(LimitCase):
    """Running out of descriptors is survived: the connection limit is kept
    under the open-files limit, clients past it get 421 and a log line says
    why, the clients already in are served, and accepting resumes once
    descriptors are free again."""
    NOFILE = 64
    server_kwargs = {"nofile": NOFILE}

    def test_emfile_survived(self):
        srv = self.server
        self.assertTrue(srv.wait_log(rf"open files limit: {self.NOFILE}\b"))
        first = self.ehlo(self.admitted())
        greeted, shed = [], 0
        for _ in range(self.NOFILE + 20):
            try:
                c = Client(srv.port, timeout=2)
            except OSError:
                shed += 1
                continue
            self.clients.append(c)
            try:
                r = c.reply()
                if r.code == 421:       # over the limit that fits the descriptors
                    self.assertIn("4.7.0", r.last)
                    shed += 1
                    c.close()
                    continue
                self.assertEqual(r.code, 220, r)
                greeted.append(c)
            except (ConnectionError, TimeoutError, OSError):
                shed += 1
                c.close()
        self.assertGreater(shed, 0, "every connection was greeted: no EMFILE happened")
        self.assertLess(len(greeted), self.NOFILE)
        # The clients in are still served (a NOOP needs no descriptor).
        self.assertReply(first.cmd("NOOP"), "250")
        for c in greeted[:5]:
            self.assertReply(c.cmd("NOOP"), "250")
        # Free the descriptors: accepting resumes and mail is stored again.
        for c in greeted:
            c.close()     # closed again at tearDown: harmless
        deadline = time.monotonic() + 5
        while True:
            try:
                c = Client(srv.port, timeout=2)
                r = c.reply()
                if r.code == 220:
                    self.clients.append(c)
                    break
                c.close()
            except (ConnectionError, TimeoutError, OSError):
                c.close()
            self.assertLess(time.monotonic(), deadline, "accepting did not resume")
            time.sleep(0.1)
        self.ehlo(c)
        self.deliver(c, "s@example.com", ["r@example.org"], b"Subject: after EMFILE\r\n\r\nok\r\n")
        self.deliver(first, "s@example.com", ["r@example.org"], b"Subject: first\r\n\r\nok\r\n")
        self.assertEqual(len(self.stored()), 2)
        # Issue 6: "a log line says why". inboxd keeps its connection limit
        # under the open-files limit, so a client past it gets a 421 and a
        # log line instead of an EMFILE that libuv would shed without a word.
        self.assertTrue(srv.wait_log(r"max-connections lowered to \d+ to fit the open files limit",
                                     timeout=1), srv.log())
        self.assertTrue(srv.wait_log(r"refused: too many connections", timeout=1), srv.log())

if __name__ == "__main__":
    harness.main()
