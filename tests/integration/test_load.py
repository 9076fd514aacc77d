"""Load under abuse: 1,000 idle connections (greeted, then silent) and 200
byte-at-a-time clients, while 20 normal clients send several messages each.
Every normal message lands whole, each normal transaction finishes within a
bound, the slow clients are served too, and the server's memory stays bounded."""
import hashlib
import os
import random
import re
import selectors
import socket
import threading
import time

import harness
from harness import CRLF, HELO, HOSTNAME, Client, InboxdTestCase

IDLE = 1000
BYTEWISE = 200
NORMAL = 20
NOFILE = harness.raise_nofile_limit(want=4096)
PER_NORMAL = 10
NORMAL_PAUSE = 0.1              # seconds between a normal client's messages
TX_BOUND = 3.0                  # seconds, for one normal transaction (MAIL to 250)
BYTE_TICK = 0.01                # a byte-at-a-time client sends one byte per tick
BYTEWISE_MAX_TX = 3             # transactions per byte-at-a-time client, at most
RSS_PER_CONNECTION_LIMIT = 64 * 1024   # bytes of server memory per open connection, at most
GREETING = f"220 {HOSTNAME} ESMTP inboxd".encode() + CRLF


def read_line(sock, deadline):
    buf = b""
    while not buf.endswith(CRLF):
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        chunk = sock.recv(1)
        if not chunk:
            raise ConnectionError(f"closed; got {buf!r}")
        buf += chunk
    return buf


class ByteClient:
    """Sends a whole SMTP dialogue one byte per send (one byte per tick), waiting
    for each reply before the next command, and checks every reply's code."""

    def __init__(self, port, n):
        self.n = n
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        self.sock.setblocking(False)
        self.inbuf = b""
        self.steps = [(None, "220")]            # (bytes to send or None, expected code)
        self.add(f"EHLO bw{n}.test\r\n".encode(), "250")
        self.tx = 0                               # transactions started
        self.acked = {}                           # rcpt -> (queue id, body)
        self.add_transaction()
        self.out = b""
        self.error = None
        self.done = False
        self.expect = None
        self.next_step()

    def add(self, data, code):
        self.steps.append((data, code))

    def add_transaction(self):
        rcpt = f"bw{self.n}.{self.tx}@example.org"
        body = (f"Subject: byte at a time {self.n}.{self.tx}\r\nX-Test-Id: {rcpt}\r\n\r\n"
                f"one byte per send, client {self.n}\r\n..dot line\r\n").encode()
        self.add(b"MAIL FROM:<bytewise@example.com>\r\n", "250")
        self.add(f"RCPT TO:<{rcpt}>\r\n".encode(), "250")
        self.add(b"DATA\r\n", "354")
        self.add(body + b".\r\n", "250 2.0.0")
        self.pending_rcpt, self.pending_body = rcpt, body
        self.tx += 1

    def next_step(self):
        if not self.steps:
            self.done = True
            return
        data, self.expect = self.steps.pop(0)
        self.out = data or b""

    def tick(self):
        """Sends one byte if a command is being sent."""
        if self.done or self.error or not self.out:
            return
        try:
            n = self.sock.send(self.out[:1])
        except BlockingIOError:
            return
        except OSError as e:
            self.error = f"send: {e!r}"
            return
        self.out = self.out[n:]

    def readable(self, more_transactions):
        try:
            chunk = self.sock.recv(4096)
        except BlockingIOError:
            return
        except OSError as e:
            self.error = f"recv: {e!r}"
            return
        if not chunk:
            if not self.done:
                self.error = f"closed by the server; expecting {self.expect}, have {self.inbuf!r}"
            return
        self.inbuf += chunk
        while CRLF in self.inbuf:
            line, self.inbuf = self.inbuf.split(CRLF, 1)
            text = line.decode("utf-8", "replace")
            if text[3:4] == "-":
                continue
            if self.out or not text.startswith(self.expect):
                self.error = f"expected {self.expect!r}, got {text!r} (unsent {self.out!r})"
                return
            if self.expect == "250 2.0.0":
                m = harness.QUEUED_RE.match(text)
                self.acked[self.pending_rcpt] = (m.group(1) if m else None, self.pending_body)
                if more_transactions and self.tx < BYTEWISE_MAX_TX:
                    self.add_transaction()
                else:
                    self.add(b"QUIT\r\n", "221")
            self.next_step()

    def close(self):
        self.sock.close()


class LoadUnderAbuseTest(InboxdTestCase):
    def setUp(self):
        self.assertGreater(NOFILE, IDLE + BYTEWISE + NORMAL + 100, "RLIMIT_NOFILE too low for this test")
        super().setUp()

    def drive_bytewise(self, clients, normal_done, result):
        """One thread drives every byte-at-a-time client: a byte each per tick."""
        sel = selectors.DefaultSelector()
        for c in clients:
            sel.register(c.sock, selectors.EVENT_READ, c)
        deadline = time.monotonic() + 60
        ticks = 0
        while time.monotonic() < deadline:
            tick_end = time.monotonic() + BYTE_TICK
            for c in clients:
                c.tick()
            while True:
                left = tick_end - time.monotonic()
                for key, _ in sel.select(max(0, left)):
                    key.data.readable(not normal_done.is_set())
                if left <= 0:
                    break
            ticks += 1
            if all(c.done or c.error for c in clients):
                break
        result["ticks"] = ticks
        result["seconds"] = time.monotonic() - (deadline - 60)
        sel.close()

    def normal_client(self, tid, results):
        rng = random.Random(tid)
        lat = []
        sent = {}
        try:
            c = Client(self.server.port, timeout=10)
            self.assertEqual(c.reply().code, 220)
            self.assertReply(c.cmd("EHLO " + HELO), "250")
            for n in range(PER_NORMAL):
                mid = f"n{tid}.{n}"
                body = (f"Subject: normal {mid}\r\nX-Test-Id: <{mid}@example.org>\r\n\r\n").encode() + \
                    b"".join(b"%s %d\r\n" % (os.urandom(30).hex().encode(), i)
                             for i in range(rng.randrange(30, 300)))
                t0 = time.monotonic()
                qid = self.deliver(c, "normal@example.com", [f"{mid}@example.org"], body)
                lat.append(time.monotonic() - t0)
                sent[f"<{mid}@example.org>"] = (qid, body)
                time.sleep(NORMAL_PAUSE)
            self.assertReply(c.cmd("QUIT"), "221")
            c.close()
            results[tid] = (lat, sent, None)
        except Exception as e:          # reported by the main thread
            results[tid] = (lat, sent, repr(e))

    def test_normal_clients_served_under_abuse(self):
        srv = self.server
        base = srv.rss()
        # 1,000 idle connections: connected, greeted, then silent.
        t0 = time.monotonic()
        idle = []
        self.addCleanup(lambda: [s.close() for s in idle])
        for i in range(IDLE):
            idle.append(socket.create_connection(("127.0.0.1", srv.port), timeout=5))
        deadline = time.monotonic() + 30
        for s in idle:
            self.assertEqual(read_line(s, deadline), GREETING)
        connect_s = time.monotonic() - t0
        time.sleep(0.3)
        rss_idle = srv.rss()

        # 200 byte-at-a-time clients, driven by one thread.
        bytewise = [ByteClient(srv.port, n) for n in range(BYTEWISE)]
        self.addCleanup(lambda: [c.close() for c in bytewise])
        normal_done = threading.Event()
        bw_result = {}
        driver = threading.Thread(target=self.drive_bytewise, args=(bytewise, normal_done, bw_result))
        driver.start()
        time.sleep(1.0)             # the slow clients are well into their dialogues

        # RSS sampled while the normal clients send.
        samples = []
        sampling = threading.Event()

        def sample():
            for _ in range(600):
                if sampling.is_set() or not srv.alive():
                    break
                try:
                    samples.append(srv.rss())
                except AssertionError:
                    break
                time.sleep(0.1)

        sampler = threading.Thread(target=sample)
        sampler.start()

        results = {}
        t_normal = time.monotonic()
        normal = [threading.Thread(target=self.normal_client, args=(t, results)) for t in range(NORMAL)]
        for t in normal:
            t.start()
        for t in normal:
            t.join(60)
        normal_s = time.monotonic() - t_normal
        bw_busy = sum(1 for c in bytewise if not c.done and not c.error)
        normal_done.set()
        driver.join(60)
        sampling.set()
        sampler.join(5)
        self.assertFalse(any(t.is_alive() for t in normal), "normal clients hung")
        self.assertFalse(driver.is_alive(), "the byte-at-a-time driver hung")
        rss_peak = max(samples + [srv.rss()])
        hwm = srv.rss("VmHWM")

        # The normal clients: every transaction done, within the bound.
        errors = {t: r[2] for t, r in results.items() if r[2]}
        self.assertEqual(errors, {}, "normal clients that failed")
        self.assertEqual(len(results), NORMAL)
        lat = sorted(x for r in results.values() for x in r[0])
        self.assertEqual(len(lat), NORMAL * PER_NORMAL)
        self.assertLess(lat[-1], TX_BOUND, f"slowest normal transaction {lat[-1]:.2f} s")

        # The byte-at-a-time clients were served too (and were still at it).
        bw_errors = {c.n: c.error for c in bytewise if c.error}
        self.assertEqual(bw_errors, {}, "byte-at-a-time clients that failed")
        self.assertTrue(all(c.done for c in bytewise), "byte-at-a-time clients unfinished")
        bw_acked = sum(len(c.acked) for c in bytewise)
        self.assertGreater(bw_busy, BYTEWISE // 2,
                           "the byte-at-a-time clients were done before the normal clients were")

        # The idle connections are all still open and answer at once.
        t_idle = time.monotonic()
        for s in idle:
            s.sendall(b"NOOP\r\n")
        deadline = time.monotonic() + 20
        for s in idle:
            self.assertEqual(read_line(s, deadline), b"250 2.0.0 Ok\r\n")
        idle_noop_s = time.monotonic() - t_idle

        # Every message that got 250 is in new/, whole, once.
        stored = {}
        for data in self.stored():
            p = harness.parse_stored(data)
            self.assertIsNotNone(p, f"no trace headers: {data[:200]!r}")
            self.assertNotIn(p["for"], stored, "stored twice")
            stored[p["for"]] = p
        expected = {}
        for r in results.values():
            expected.update(r[1])
        for c in bytewise:
            expected.update({f"<{k}>": v for k, v in c.acked.items()})
        for rcpt, (qid, body) in expected.items():
            self.assertIn(rcpt, stored, f"acknowledged message for {rcpt} missing")
            self.assertEqual(stored[rcpt]["id"], qid)
            self.assertEqual(stored[rcpt]["body"], body.replace(b"\r\n..", b"\r\n.").replace(CRLF, b"\n"))
        self.assertEqual(set(stored), set(expected), "stored messages nobody was told about")

        conns = IDLE + BYTEWISE + NORMAL
        per_idle = (rss_idle - base) / IDLE
        per_conn = (rss_peak - base) / conns
        print(f"\nload: {IDLE} idle connected+greeted in {connect_s:.2f} s; "
              f"{NORMAL}x{PER_NORMAL} normal transactions in {normal_s:.2f} s "
              f"(median {lat[len(lat) // 2] * 1000:.0f} ms, max {lat[-1] * 1000:.0f} ms); "
              f"{bw_busy} byte-at-a-time clients still busy at the end, "
              f"{bw_acked} byte-at-a-time messages in {bw_result.get('seconds', 0):.1f} s; "
              f"{IDLE} idle NOOPs answered in {idle_noop_s:.2f} s\n"
              f"RSS: base {base / 1e6:.1f} MB, with {IDLE} idle {rss_idle / 1e6:.1f} MB "
              f"({per_idle:.0f} B per idle connection), peak with {conns} open "
              f"{rss_peak / 1e6:.1f} MB ({per_conn:.0f} B per connection), VmHWM {hwm / 1e6:.1f} MB",
              flush=True)
        self.assertLess(per_idle, RSS_PER_CONNECTION_LIMIT, "memory per idle connection")
        self.assertLess(per_conn, RSS_PER_CONNECTION_LIMIT, "memory per connection under load")


if __name__ == "__main__":
    harness.main()
