"""The mbox sink (--mbox 'DIR/{user}'): what Python's mailbox.mbox reads back is,
after undoing mboxrd quoting, byte for byte what was sent plus Return-Path and
Received; From lines are quoted; file mode, From separator, locking."""
import mailbox
import os
import re
import select
import smtplib
import subprocess
import sys
import threading
import time

import harness
from harness import HELO, Client, InboxdTestCase

FROM_LINE_RE = re.compile(
    r"^(?P<sender>\S+) (?P<wday>Mon|Tue|Wed|Thu|Fri|Sat|Sun) "
    r"(?P<mon>Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec) (?P<day>[ 123]\d) "
    r"(?P<time>\d\d:\d\d:\d\d) (?P<year>\d{4})$")

FROM_BODY = (b"From: Alice <a@example.com>\r\nSubject: quoting\r\n\r\n"
             b"From the start of a line\r\n"
             b">From once quoted\r\n"
             b">>From twice quoted\r\n"
             b">>>>From four times\r\n"
             b" From with a space before\r\n"
             b"From\r\n"
             b"From:not a separator\r\n"
             b"Fromage\r\n"
             b">\r\n"
             b">>From\r\n"
             b"From the end\r\n")

# Holds an fcntl write lock on argv[1] (as mutt or Dovecot would) for argv[2]
# seconds; says "locked" once it has it.
LOCK_HELPER = r"""
import fcntl, sys, time
with open(sys.argv[1], "ab") as f:
    fcntl.lockf(f, fcntl.LOCK_EX)
    print("locked", flush=True)
    time.sleep(float(sys.argv[2]))
"""


def unquote(data):
    """Undo mboxrd quoting: one '>' less on lines matching ^>+From ."""
    return re.sub(rb"(?m)^>(>*From )", rb"\1", data)


def quote(data):
    return re.sub(rb"(?m)^(>*From )", rb">\1", data)


class MboxTest(InboxdTestCase):
    sink = None
    server_args = ("--mbox", "mail/{user}")

    def mbox_path(self, user="alice"):
        return os.path.join(self.server.dir, "mail", user)

    def read_mbox(self, user="alice"):
        """[(from line without 'From ', unquoted message bytes)] as mailbox.mbox sees them."""
        mb = mailbox.mbox(self.mbox_path(user), create=False)
        try:
            mb.lock()     # also proves no lock is left behind
            out = []
            for key in mb.iterkeys():
                out.append((mb.get_message(key).get_from(), unquote(mb.get_bytes(key))))
            mb.unlock()
            return out
        finally:
            mb.close()

    def assertFromLine(self, from_line, sender):
        m = FROM_LINE_RE.match(from_line)
        self.assertTrue(m, f"bad From line: {from_line!r}")
        self.assertEqual(m.group("sender"), sender)
        when = time.strptime(from_line.split(" ", 1)[1], "%a %b %d %H:%M:%S %Y")
        self.assertLess(abs(time.mktime(when) - time.mktime(time.gmtime())), 300,
                        f"From line date is not now (UTC): {from_line!r}")

    def assertWholeFile(self, user="alice"):
        """The file is exactly: for each message, 'From ' line, quoted message, blank line."""
        with open(self.mbox_path(user), "rb") as f:
            raw = f.read()
        expected = b"".join(b"From " + frm.encode() + b"\n" + quote(msg) + b"\n"
                            for frm, msg in self.read_mbox(user))
        self.assertEqual(raw, expected)
        return raw

    def raw_send(self, data, rcpt="alice@example.com", sender="a@example.com", bytewise=False):
        """Sends wire bytes `data` (already dot-stuffed, up to but not including the
        final '.CRLF') as one message; returns the final reply."""
        c = self.ehlo()
        self.assertReply(c.cmd(f"MAIL FROM:<{sender}>"), "250")
        self.assertReply(c.cmd(f"RCPT TO:<{rcpt}>"), "250")
        self.assertReply(c.cmd("DATA"), "354")
        (c.send_bytewise if bytewise else c.send)(data)
        c.send(b".\r\n")
        return c.reply()

    def smtp_send(self, body, rcpts=("alice@example.com",), sender="a@example.com"):
        s = smtplib.SMTP("127.0.0.1", self.server.port, local_hostname=HELO,
                         timeout=harness.TIMEOUT)
        self.addCleanup(s.close)
        self.assertEqual(s.sendmail(sender, list(rcpts), body), {})
        s.quit()

    # ---- content ----
    def test_round_trip_exact(self):
        body = b"Subject: hi\r\n\r\nline 1\r\n\r\n  line 3\r\n.leading dot\r\n"
        self.smtp_send(body)
        [(frm, msg)] = self.read_mbox()
        self.assertFromLine(frm, "a@example.com")
        self.assertStored(msg, "a@example.com", body, rcpt="alice@example.com")
        self.assertWholeFile()

    def test_from_lines_quoted_and_round_trip(self):
        self.smtp_send(FROM_BODY)
        [(_, msg)] = self.read_mbox()
        self.assertStored(msg, "a@example.com", FROM_BODY, rcpt="alice@example.com")
        with open(self.mbox_path(), "rb") as f:
            raw = f.read()
        for line in (b"\n>From the start", b"\n>>From once", b"\n>>>From twice",
                     b"\n>>>>>From four", b"\n From with", b"\nFrom\n", b"\nFrom:not",
                     b"\nFromage\n", b"\n>>From\n", b"\n>From the end\n"):
            self.assertIn(line, raw)
        # Exactly one unquoted separator line.
        self.assertEqual(len(re.findall(rb"(?m)^From ", raw)), 1, raw)
        self.assertWholeFile()

    def test_from_lines_sent_byte_by_byte(self):
        """The quoter decides on 'From ' across reads of one byte each."""
        self.assertQueued(self.raw_send(FROM_BODY, bytewise=True))
        [(_, msg)] = self.read_mbox()
        self.assertStored(msg, "a@example.com", FROM_BODY, rcpt="alice@example.com")
        self.assertWholeFile()

    def test_from_line_as_first_body_line_and_dot_stuffed(self):
        body = b"Subject: x\r\n\r\nFrom here\r\n..From dot\r\n"   # wire: dot-stuffed
        self.assertQueued(self.raw_send(body))
        [(_, msg)] = self.read_mbox()
        self.assertStored(msg, "a@example.com", b"Subject: x\r\n\r\nFrom here\r\n.From dot\r\n",
                          rcpt="alice@example.com")

    def test_body_without_final_newline_smtplib(self):
        """smtplib ends 'no newline' with CRLF before the dot: stored with one LF."""
        self.smtp_send(b"Subject: x\r\n\r\nno newline")
        self.smtp_send(b"Subject: y\r\n\r\nsecond")
        [(_, m1), (_, m2)] = self.read_mbox()
        self.assertStored(m1, "a@example.com", b"Subject: x\r\n\r\nno newline\r\n",
                          rcpt="alice@example.com")
        self.assertStored(m2, "a@example.com", b"Subject: y\r\n\r\nsecond\r\n",
                          rcpt="alice@example.com")
        self.assertWholeFile()

    def test_last_line_ends_in_the_terminator(self):
        """On the wire 'text<CRLF>.<CRLF>': RFC 5321 gives that CRLF to the
        terminator; the stored message ends 'text\\n', then the blank line."""
        self.assertQueued(self.raw_send(b"Subject: x\r\n\r\nFrom last line"
                                        b"\r\n"))
        self.assertQueued(self.raw_send(b"Subject: y\r\n\r\nnext\r\n"))
        raw = self.assertWholeFile()
        self.assertIn(b"\n>From last line\n\nFrom a@example.com ", raw)
        [(_, m1), _] = self.read_mbox()
        self.assertTrue(m1.endswith(b"\n\nFrom last line\n"), m1)

    def test_empty_body(self):
        """DATA then '.' at once: the message is the trace headers alone."""
        self.assertQueued(self.raw_send(b""))
        self.assertQueued(self.raw_send(b"Subject: y\r\n\r\nnext\r\n"))
        [(_, m1), (_, m2)] = self.read_mbox()
        p = harness.parse_stored(m1)
        self.assertIsNotNone(p, m1)
        self.assertEqual(p["body"], b"")
        self.assertStored(m2, "a@example.com", b"Subject: y\r\n\r\nnext\r\n",
                          rcpt="alice@example.com")
        self.assertWholeFile()

    def test_trailing_blank_lines_kept(self):
        body = b"Subject: x\r\n\r\nbody\r\n\r\n\r\n"
        self.assertQueued(self.raw_send(body))
        self.assertQueued(self.raw_send(body))
        for _, msg in self.read_mbox():
            self.assertStored(msg, "a@example.com", body, rcpt="alice@example.com")
        self.assertWholeFile()

    def test_large_message_through_spool(self):
        """Past 256 KiB the message waits in the spool file; same bytes come out."""
        lines = [b"Subject: big\r\n\r\n"]
        for i in range(12000):
            lines.append(b"From line %d with some padding to make it longer\r\n" % i
                         if i % 3 == 0 else b">From %d quoted padding padding padding\r\n" % i)
        body = b"".join(lines)
        self.assertGreater(len(body), 400 * 1024)
        self.smtp_send(body)
        [(_, msg)] = self.read_mbox()
        self.assertStored(msg, "a@example.com", body, rcpt="alice@example.com")
        self.assertWholeFile()
        spool = os.path.join(self.server.dir, "var", "spool")
        self.assertEqual(os.listdir(spool) if os.path.isdir(spool) else [], [],
                         "spool file left behind")

    # ---- the file ----
    def test_from_separator_line(self):
        self.smtp_send(b"Subject: x\r\n\r\nx\r\n", sender="Someone.Else@example.net")
        with open(self.mbox_path(), "rb") as f:
            first = f.readline()
        self.assertTrue(first.endswith(b"\n") and not first.endswith(b"\r\n"), first)
        self.assertTrue(first.startswith(b"From "), first)
        self.assertFromLine(first[5:-1].decode(), "Someone.Else@example.net")

    def test_null_sender_from_line(self):
        self.smtp_send(b"Subject: bounce\r\n\r\nx\r\n", sender="<>")
        [(frm, msg)] = self.read_mbox()
        self.assertFromLine(frm, "MAILER-DAEMON")
        self.assertStored(msg, "", b"Subject: bounce\r\n\r\nx\r\n", rcpt="alice@example.com")

    def test_new_mbox_mode_0600(self):
        self.smtp_send(b"Subject: x\r\n\r\nx\r\n")
        mode = os.stat(self.mbox_path()).st_mode
        self.assertEqual(mode & 0o7777, 0o600, oct(mode))

    def test_no_dotlock_left_behind(self):
        self.smtp_send(b"Subject: x\r\n\r\nx\r\n")
        self.smtp_send(b"Subject: y\r\n\r\ny\r\n")
        self.assertFalse(os.path.exists(self.mbox_path() + ".lock"))
        self.assertEqual(sorted(os.listdir(os.path.dirname(self.mbox_path()))), ["alice"])

    def test_one_mbox_per_user(self):
        self.smtp_send(b"Subject: x\r\n\r\nx\r\n", rcpts=("alice@example.com", "bob@example.org",
                                                          "alice@example.net"))
        self.assertEqual(sorted(os.listdir(os.path.dirname(self.mbox_path()))), ["alice", "bob"])
        # Two RCPTs resolve to user alice: one copy for each (or one in all)?
        # Each recipient address is a separate delivery for the MTA, but one
        # mbox file gets it once: inboxd dedups per mailbox path.
        self.assertEqual(len(self.read_mbox("alice")), 1)
        self.assertEqual(len(self.read_mbox("bob")), 1)

    def test_appends_to_existing_mbox_written_by_others(self):
        """An mbox whose last message lacks the blank line (or even the newline)."""
        for user, old in (("alice", b"From x@y Mon Jan  1 00:00:00 2024\nSubject: old\n\nold body\n"),
                          ("bob", b"From x@y Mon Jan  1 00:00:00 2024\nSubject: old\n\nno newline")):
            os.makedirs(os.path.dirname(self.mbox_path(user)), exist_ok=True)
            with open(self.mbox_path(user), "wb") as f:
                f.write(old)
            self.smtp_send(b"Subject: new\r\n\r\nnew\r\n", rcpts=(f"{user}@example.com",))
            msgs = self.read_mbox(user)
            self.assertEqual(len(msgs), 2, msgs)
            self.assertTrue(msgs[0][1].startswith(b"Subject: old\n\n"), msgs[0])
            self.assertIn(msgs[0][1], (b"Subject: old\n\nold body\n",
                                       b"Subject: old\n\nno newline\n"))
            self.assertStored(msgs[1][1], "a@example.com", b"Subject: new\r\n\r\nnew\r\n",
                              rcpt=f"{user}@example.com")
            with open(self.mbox_path(user), "rb") as f:
                self.assertTrue(f.read().startswith(old), "old content changed")

    # ---- concurrency and locks ----
    def test_concurrent_clients_never_interleave(self):
        threads, per_thread = 4, 5
        bodies = {}
        for t in range(threads):
            for i in range(per_thread):
                tag = b"t%di%d" % (t, i)
                size = 300 * 1024 if i == 2 else 2000 + 3000 * i   # some go through the spool
                line = b"From " + tag + b" " + b"x" * 70 + b"\r\n"
                bodies[tag] = (b"Subject: " + tag + b"\r\n\r\n" + line * (size // len(line)))
        errors = []

        def worker(t):
            try:
                c = Client(self.server.port, timeout=20)
                try:
                    c.reply()
                    c.cmd("EHLO " + HELO)
                    for i in range(per_thread):
                        tag = b"t%di%d" % (t, i)
                        for cmd, want in (("MAIL FROM:<a@example.com>", 250),
                                          ("RCPT TO:<alice@example.com>", 250), ("DATA", 354)):
                            r = c.cmd(cmd)
                            if r.code != want:
                                raise AssertionError(f"{cmd}: {r!r}")
                        c.send(bodies[tag] + b".\r\n")
                        r = c.reply()
                        if r.code != 250:
                            raise AssertionError(f"end of data {tag!r}: {r!r}")
                finally:
                    c.close()
            except Exception as e:   # noqa: BLE001 - reported below
                errors.append(f"thread {t}: {e!r}")

        ts = [threading.Thread(target=worker, args=(t,)) for t in range(threads)]
        for th in ts:
            th.start()
        for th in ts:
            th.join(45)
        self.assertFalse(any(th.is_alive() for th in ts), "client threads hung")
        self.assertEqual(errors, [])
        msgs = self.read_mbox()
        self.assertEqual(len(msgs), threads * per_thread)
        seen = set()
        for _, msg in msgs:
            p = harness.parse_stored(msg)
            self.assertIsNotNone(p, msg[:300])
            tag = p["body"].split(b"\n", 1)[0][len(b"Subject: "):]
            self.assertIn(tag, bodies)
            self.assertStored(msg, "a@example.com", bodies[tag], rcpt="alice@example.com")
            seen.add(tag)
        self.assertEqual(seen, set(bodies))
        self.assertWholeFile()

    def hold_lock(self, seconds):
        """Starts the helper holding an fcntl lock on alice's mbox; returns once it has it."""
        os.makedirs(os.path.dirname(self.mbox_path()), exist_ok=True)
        helper = subprocess.Popen([sys.executable, "-c", LOCK_HELPER, self.mbox_path(), str(seconds)],
                                  stdout=subprocess.PIPE)
        self.addCleanup(lambda: (helper.kill(), helper.wait(5), helper.stdout.close()))
        ready, _, _ = select.select([helper.stdout], [], [], harness.TIMEOUT)
        self.assertTrue(ready and helper.stdout.readline() == b"locked\n", "lock helper not ready")
        return helper

    def test_fcntl_locked_mbox_delays_delivery(self):
        helper = self.hold_lock(2.0)
        t0 = time.monotonic()
        body = b"Subject: waited\r\n\r\nwaited\r\n"
        c = self.ehlo()
        c.set_timeout(15)
        qid = self.deliver(c, "a@example.com", ["alice@example.com"], body)
        waited = time.monotonic() - t0
        self.assertGreater(waited, 1.2, "delivered while another process held the fcntl lock")
        self.assertEqual(helper.wait(5), 0)
        [(_, msg)] = self.read_mbox()
        self.assertStored(msg, "a@example.com", body, rcpt="alice@example.com", queue_id=qid)

    def test_dotlocked_mbox_delays_delivery(self):
        os.makedirs(os.path.dirname(self.mbox_path()), exist_ok=True)
        lock = self.mbox_path() + ".lock"
        with open(lock, "wb"):
            pass
        timer = threading.Timer(2.0, os.unlink, (lock,))
        timer.start()
        self.addCleanup(timer.cancel)
        t0 = time.monotonic()
        c = self.ehlo()
        c.set_timeout(15)
        self.deliver(c, "a@example.com", ["alice@example.com"], b"Subject: w\r\n\r\nw\r\n")
        self.assertGreater(time.monotonic() - t0, 1.2, "delivered while the dotlock was held")
        self.assertEqual(len(self.read_mbox()), 1)
        self.assertFalse(os.path.exists(lock))

    def test_lock_held_too_long_is_a_temporary_failure(self):
        self.smtp_send(b"Subject: before\r\n\r\nbefore\r\n")
        size = os.path.getsize(self.mbox_path())
        helper = self.hold_lock(14.0)
        c = self.ehlo()
        c.set_timeout(20)
        self.assertReply(c.cmd("MAIL FROM:<a@example.com>"), "250")
        self.assertReply(c.cmd("RCPT TO:<alice@example.com>"), "250")
        self.assertReply(c.cmd("DATA"), "354")
        c.send(b"Subject: late\r\n\r\nlate\r\n.\r\n")
        r = c.reply()
        self.assertEqual(r.code // 100, 4, f"want a 4xx after waiting for the lock, got {r!r}")
        helper.kill()
        helper.wait(5)
        now = os.path.getsize(self.mbox_path())
        self.assertEqual(now, size, f"the mbox went from {size} to {now} bytes after {r!r}: "
                                    "a message that was already stored was lost")
        self.assertEqual(len(self.read_mbox()), 1)

    # ---- a locked mbox does not hold the thread pool (issue 9, item 6) ----
    def start_senders(self, n, rcpt, timeout=25):
        """n clients, each sending one message to rcpt at once; returns (threads,
        results) where results gets (client number, final reply code or error)."""
        results = []

        def send(i):
            try:
                c = Client(self.server.port, timeout=timeout)
                try:
                    c.reply()
                    c.cmd("EHLO " + HELO)
                    for cmd in ("MAIL FROM:<a@example.com>", f"RCPT TO:<{rcpt}>", "DATA"):
                        c.cmd(cmd)
                    c.send(b"Subject: locked %d\r\n\r\nbody %d\r\n.\r\n" % (i, i))
                    results.append((i, c.reply().code))
                finally:
                    c.close()
            except Exception as e:   # noqa: BLE001 - reported by the caller
                results.append((i, repr(e)))

        threads = [threading.Thread(target=send, args=(i,), daemon=True) for i in range(n)]
        for t in threads:
            t.start()
        return threads, results

    def assertOthersFlow(self, held_until, deliveries=5, bound=1.5):
        """While alice's mbox is locked, deliveries to bob each take under `bound` s."""
        worst = 0
        for i in range(deliveries):
            t0 = time.monotonic()
            c = self.ehlo()
            c.set_timeout(15)   # Long enough to measure a stall, not just see one.
            self.deliver(c, "a@example.com", ["bob@example.com"],
                         b"Subject: bob %d\r\n\r\nbob\r\n" % i)
            c.close()
            took = time.monotonic() - t0
            worst = max(worst, took)
            self.assertLess(took, bound, f"delivery {i} to an unlocked mbox took {took:.2f} s "
                                         "while another mbox was locked: the pool is starved")
        self.assertLess(time.monotonic(), held_until,
                        "the lock was let go before the other deliveries were timed")
        print(f"\n  slowest of {deliveries} deliveries to an unlocked mbox: {worst * 1000:.0f} ms",
              file=sys.stderr)

    def check_locked_then_released(self, hold_for, release):
        """24 messages for locked alice (more than the 16 pool threads) do not stall
        bob; once the lock goes (`release` is called after `hold_for` s), they land."""
        t_lock = time.monotonic()
        threads, results = self.start_senders(24, "alice@example.com")
        time.sleep(0.5)   # Every alice message reaches its commit, and so the lock.
        self.assertOthersFlow(held_until=t_lock + hold_for)
        release()
        for t in threads:
            t.join(20)
        self.assertFalse(any(t.is_alive() for t in threads), "alice's senders hung")
        self.assertEqual(sorted(results), [(i, 250) for i in range(24)])
        self.assertEqual(len(self.read_mbox("alice")), 24)
        self.assertEqual(len(self.read_mbox("bob")), 5)
        self.assertWholeFile("alice")
        self.assertFalse(os.path.exists(self.mbox_path() + ".lock"), "dotlock left behind")

    def test_fcntl_locked_mbox_does_not_stall_other_mboxes(self):
        helper = self.hold_lock(60)
        self.check_locked_then_released(hold_for=60, release=lambda: (helper.kill(), helper.wait(5)))

    def test_dotlocked_mbox_does_not_stall_other_mboxes(self):
        os.makedirs(os.path.dirname(self.mbox_path()), exist_ok=True)
        lock = self.mbox_path() + ".lock"
        with open(lock, "wb"):
            pass
        self.addCleanup(lambda: os.path.exists(lock) and os.unlink(lock))
        self.check_locked_then_released(hold_for=60, release=lambda: os.unlink(lock))

    def test_stop_while_waiting_for_lock(self):
        """SIGTERM while a delivery waits for a lock: past the drain timeout the
        delivery is dropped (its retry timer closed), the loop ends at once and
        empty, and nothing is appended once the lock is free."""
        self.server.stop()
        self.server = self.start_server("--mbox", "mail/{user}", "--drain-timeout", "0.5",
                                        sink=None)
        helper = self.hold_lock(60)
        c = self.ehlo()
        self.assertReply(c.cmd("MAIL FROM:<a@example.com>"), "250")
        self.assertReply(c.cmd("RCPT TO:<alice@example.com>"), "250")
        self.assertReply(c.cmd("DATA"), "354")
        c.send(b"Subject: dropped\r\n\r\ndropped\r\n.\r\n")
        self.assertTrue(c.quiet(0.5), "a reply came while the mbox was locked")
        t0 = time.monotonic()
        self.assertEqual(self.server.stop(timeout=8), 0, self.server.log())
        took = time.monotonic() - t0
        self.assertLess(took, 3, f"stopping took {took:.1f} s: the delivery held the loop")
        log = self.server.log()
        self.assertIn("stopped", log)
        self.assertNotIn("loop not empty", log)
        helper.kill()
        helper.wait(5)
        self.assertEqual(os.path.getsize(self.mbox_path()), 0, "the dropped message was stored")

    # ---- several recipients: all or nothing (issue 9, item 4) ----
    def test_one_broken_mbox_stores_in_none(self):
        """Three recipients, zoe's mbox is a directory: 451, and neither alice's
        nor bob's mbox keeps the message (the sender retries all three)."""
        self.smtp_send(b"Subject: before\r\n\r\nbefore\r\n")
        alice_size = os.path.getsize(self.mbox_path("alice"))
        os.makedirs(self.mbox_path("zoe"))
        c = self.ehlo()
        self.assertReply(c.cmd("MAIL FROM:<a@example.com>"), "250")
        for r in ("alice@example.com", "bob@example.com", "zoe@example.com"):
            self.assertReply(c.cmd(f"RCPT TO:<{r}>"), "250")
        self.assertReply(c.cmd("DATA"), "354")
        c.send(b"Subject: all or none\r\n\r\nbody\r\n.\r\n")
        self.assertReply(c.reply(), "451 4.3.0")
        self.assertEqual(os.path.getsize(self.mbox_path("alice")), alice_size,
                         "alice got the message although the reply was 451")
        bob = self.mbox_path("bob")
        self.assertEqual(os.path.getsize(bob) if os.path.exists(bob) else 0, 0,
                         "bob got the message although the reply was 451")
        self.assertEqual(len(self.read_mbox("alice")), 1)
        self.assertWholeFile("alice")
        self.assertEqual(sorted(os.listdir(os.path.dirname(self.mbox_path()))),
                         sorted(["alice", "zoe"] + (["bob"] if os.path.exists(bob) else [])),
                         "dotlocks left behind")
        self.assertTrue(self.server.wait_log(r"mailbox=zoe@example\.com not stored: Is a directory"))
        # Once zoe's mbox is mended, the retry stores one copy in each.
        os.rmdir(self.mbox_path("zoe"))
        self.smtp_send(b"Subject: retry\r\n\r\nretry\r\n",
                       rcpts=("alice@example.com", "bob@example.com", "zoe@example.com"))
        self.assertEqual(len(self.read_mbox("alice")), 2)
        self.assertEqual(len(self.read_mbox("bob")), 1)
        self.assertEqual(len(self.read_mbox("zoe")), 1)

    # ---- a new mbox (issue 9, item 5) ----
    def test_new_mbox_in_new_folders(self):
        """A template whose folders do not exist yet: they and the mbox are made
        (and fsynced into their parents), and the message is there."""
        server = self.start_server("--mbox", "boxes/{domain}/{user}", sink=None)
        s = smtplib.SMTP("127.0.0.1", server.port, local_hostname=HELO, timeout=harness.TIMEOUT)
        self.addCleanup(s.close)
        body = b"Subject: new\r\n\r\nnew\r\n"
        self.assertEqual(s.sendmail("a@example.com", ["carol@new.example"], body), {})
        s.quit()
        path = os.path.join(server.dir, "boxes", "new.example", "carol")
        self.assertEqual(os.stat(path).st_mode & 0o7777, 0o600)
        mb = mailbox.mbox(path, create=False)
        [key] = list(mb.iterkeys())
        self.assertStored(unquote(mb.get_bytes(key)), "a@example.com", body,
                          rcpt="carol@new.example")
        mb.close()
        # Start-up made the template's fixed folder and the spool.
        self.assertTrue(os.path.isdir(os.path.join(server.dir, "var", "spool")))


if __name__ == "__main__":
    harness.main()
