"""Crash test: kill -9 the server under load; no acknowledged message is lost
and no partial message is ever visible in new/."""
import base64
import hashlib
import os
import random
import re
import threading
import time

import harness
from harness import CRLF, HELO, Client, InboxdTestCase

THREADS = 20
RUN_SECONDS = 1.5


def make_message(mid, rng):
    """Headers with a unique id and the sha256 of the body; 1 in 5 is a few hundred KB."""
    size = rng.randrange(200_000, 400_000) if rng.random() < 0.2 else rng.randrange(100, 4000)
    b64 = base64.b64encode(os.urandom(size * 3 // 4))
    lines = [b64[i:i + 76] for i in range(0, len(b64), 76)]
    body = CRLF.join(lines[:1] + [b".dot-stuffed line " + mid.encode()] + lines[1:]) + CRLF
    sha = hashlib.sha256(body).hexdigest()
    head = (f"Message-ID: <{mid}@crash.test>\r\nX-Test-Id: {mid}\r\n"
            f"X-Body-SHA256: {sha}\r\nSubject: crash test\r\n\r\n").encode()
    return head + body


class CrashTest(InboxdTestCase):
    def sender(self, tid, stop, attempted, acked):
        """Send messages on one connection until stopped or the server is gone."""
        rng = random.Random(tid)
        c = None
        try:
            c = Client(self.server.port)
            c.reply()
            c.cmd("EHLO " + HELO)
            n = 0
            while not stop.is_set():
                mid = f"t{tid}.m{n}"
                n += 1
                msg = attempted[mid] = make_message(mid, rng)
                replies = [c.cmd("MAIL FROM:<load@example.com>").code,
                           c.cmd(f"RCPT TO:<{mid}@example.org>").code, c.cmd("DATA").code]
                if replies != [250, 250, 354]:
                    break
                c.send(harness.stuff(msg) + b".\r\n")
                m = harness.QUEUED_RE.match(c.reply().last)
                if m:
                    acked[mid] = m.group(1)
        except (OSError, ValueError):   # the server was killed: ECONNRESET, EOF, timeout
            pass
        finally:
            if c:
                c.close()

    def test_kill_9_under_load(self):
        stop, attempted, acked = threading.Event(), {}, {}
        threads = [threading.Thread(target=self.sender, args=(t, stop, attempted, acked))
                   for t in range(THREADS)]
        for t in threads:
            t.start()
        time.sleep(RUN_SECONDS)
        self.server.stopped = True
        self.server.kill()                                   # SIGKILL
        stop.set()
        deadline = time.monotonic() + 2 * harness.TIMEOUT
        for t in threads:
            t.join(max(0, deadline - time.monotonic()))
        self.assertFalse(any(t.is_alive() for t in threads), "client threads hung")
        self.assertGreaterEqual(len(acked), THREADS, f"too few messages acknowledged: {len(acked)}")

        seen = {}
        for name, data in self.server.files("new").items():
            with self.subTest(file=name):
                self.assertMaildirName(name, data)
                p = harness.parse_stored(data)
                self.assertIsNotNone(p, f"no trace headers: {data[:200]!r}")
                m = re.search(rb"^X-Test-Id: (\S+)\n", p["body"], re.M)
                self.assertIsNotNone(m, "no X-Test-Id header")
                mid = m.group(1).decode()
                self.assertNotIn(mid, seen, "message stored twice")
                seen[mid] = p["id"]
                head, _, body = p["body"].partition(b"\n\n")
                sha = re.search(rb"^X-Body-SHA256: (\w+)$", head, re.M).group(1).decode()
                self.assertEqual(hashlib.sha256(body.replace(b"\n", CRLF)).hexdigest(), sha,
                                 "checksum mismatch (partial or corrupt file)")
                self.assertEqual(p["body"], attempted[mid].replace(CRLF, b"\n"))
        lost = sorted(set(acked) - set(seen))
        self.assertEqual(lost, [], f"{len(lost)} of {len(acked)} acknowledged messages missing")
        for mid, qid in acked.items():
            self.assertEqual(seen[mid], qid, f"{mid}: Received id differs from the 250 reply")


    def multi_sender(self, port, tid, stop, attempted, acked):
        """Like sender(), but each message goes to three Maildirs: one that every message
        goes to, one of four shared by some threads, and one of two picked per message."""
        rng = random.Random(1000 + tid)
        c = None
        try:
            c = Client(port)
            c.reply()
            c.cmd("EHLO " + HELO)
            n = 0
            while not stop.is_set():
                mid = f"t{tid}.m{n}"
                rcpts = ["all", f"g{tid % 4}", f"h{n % 2}"]
                n += 1
                msg = make_message(mid, rng)
                attempted[mid] = (msg, rcpts)
                replies = [c.cmd("MAIL FROM:<load@example.com>").code]
                replies += [c.cmd(f"RCPT TO:<{r}@example.org>").code for r in rcpts]
                replies.append(c.cmd("DATA").code)
                if replies != [250, 250, 250, 250, 354]:
                    break
                c.send(harness.stuff(msg) + b".\r\n")
                m = harness.QUEUED_RE.match(c.reply().last)
                if m:
                    acked[mid] = m.group(1)
        except (OSError, ValueError):   # the server was killed: ECONNRESET, EOF, timeout
            pass
        finally:
            if c:
                c.close()

    def test_kill_9_under_load_many_maildirs(self):
        """Many deliveries into the same new/ folders at once share their fsyncs (issue 10):
        a message acknowledged is still in every recipient's new/ after kill -9, whole."""
        root = os.path.join(self.server.dir, "mail")
        server = self.start_server("--maildir", os.path.join(root, "{user}"), *self.server_args,
                                   maildir=False)
        stop, attempted, acked = threading.Event(), {}, {}
        threads = [threading.Thread(target=self.multi_sender,
                                    args=(server.port, t, stop, attempted, acked))
                   for t in range(THREADS)]
        for t in threads:
            t.start()
        time.sleep(RUN_SECONDS)
        server.stopped = True
        server.kill()                                        # SIGKILL
        stop.set()
        deadline = time.monotonic() + 2 * harness.TIMEOUT
        for t in threads:
            t.join(max(0, deadline - time.monotonic()))
        self.assertFalse(any(t.is_alive() for t in threads), "client threads hung")
        self.assertGreaterEqual(len(acked), THREADS, f"too few messages acknowledged: {len(acked)}")

        found = {}  # mid -> the Maildirs it is in
        for user in sorted(os.listdir(root)):
            seen = set()
            for name, data in harness.read_files(os.path.join(root, user, "new")).items():
                with self.subTest(maildir=user, file=name):
                    self.assertMaildirName(name, data)
                    p = harness.parse_stored(data)
                    self.assertIsNotNone(p, f"no trace headers: {data[:200]!r}")
                    mid = re.search(rb"^X-Test-Id: (\S+)\n", p["body"], re.M).group(1).decode()
                    self.assertNotIn(mid, seen, "message stored twice in one Maildir")
                    seen.add(mid)
                    msg, rcpts = attempted[mid]
                    self.assertIn(user, rcpts, "message in a Maildir it was not for")
                    self.assertEqual(p["body"], msg.replace(CRLF, b"\n"),
                                     "partial or corrupt message")
                    if mid in acked:
                        self.assertEqual(p["id"], acked[mid], "Received id differs from the 250")
                    found.setdefault(mid, set()).add(user)
        lost = sorted(mid for mid in acked if found.get(mid) != set(attempted[mid][1]))
        self.assertEqual(lost, [], f"{len(lost)} of {len(acked)} acknowledged messages not in "
                                   f"every recipient's Maildir, e.g. {lost[:3]}")


class CrashSyncfsTest(CrashTest):
    """The same with --maildir-sync syncfs: one syncfs of the filesystem, shared by the
    deliveries waiting on it, takes the place of the fsyncs of the file and of new/."""
    server_args = ("--maildir-sync", "syncfs")


if __name__ == "__main__":
    harness.main()
