"""Hostile bodies do not stall the loop (issue 9, item 1; DESIGN.md principle 5).

One connection streams a body shaped to hit a slow per-byte path (a long run
of '>' then "From ", ">From " lines, a run of bare CRs, one huge line, many
dot-stuffed lines, many tiny lines, many partial "From" prefixes), 2 MiB
each, while a second session sends NOOPs: each NOOP must be answered within
a second, and the message must then be stored byte for byte. For each sink:
Maildir, mbox with a {user} template (the mboxrd quoter runs on the loop
thread), and null.

Before the fix, one 256 KiB line of '>' held the loop for 29 s with the mbox
sink (the quoter re-scanned the held run for every byte): the '>' shapes
then fail here at their first NOOP.
"""
import mailbox
import os
import re
import socket
import threading
import time

from harness import CRLF, InboxdTestCase, main, parse_stored, stuff

SIZE = 2 * 1024 * 1024          # bytes of text per shape
NOOP_LIMIT = 1.0                # seconds: "the loop did not stall"
CHUNK = 128 * 1024              # the sender streams its body in pieces...
PAUSE = 0.005                   # ...with a short pause between them
END_TIMEOUT = 20.0              # seconds for the reply after the end of data

# The text of each shape as it is stored (LF line ends, no dot-stuffing).
SHAPES = {
    "gt_run_from": b">" * SIZE + b"From x\n",
    "gt_from_lines": b">From x\n" * (SIZE // 8),
    "from_prefixes": b">>>Fro\n>>>>From\n" * (SIZE // 16),
    "bare_cr": b"\r" * SIZE + b"\n",
    "huge_line": b"a" * SIZE + b"\n",
    "dot_stuffed": b".\n" * (SIZE // 2),
    "tiny_lines": b"\n" * SIZE,
}


def wire_form(text):
    """The DATA wire form of a stored text: CRLF line ends, dot-stuffed."""
    return stuff(text.replace(b"\n", CRLF))


def mboxrd_quote(text):
    """What an mboxrd mbox holds for `text`: one more '>' before ^>*From ."""
    return re.sub(rb"(?m)^(>*From )", rb">\1", text)


def mboxrd_unquote(text):
    return re.sub(rb"(?m)^>(>*From )", rb"\1", text)


class HostileBase:
    """Mixed into an InboxdTestCase per sink; test_<shape> methods are added below."""
    sink = "maildir"
    server_args = ("--max-message-size", str(64 * 1024 * 1024))

    def stream_and_ping(self, name, text):
        """Streams `text` on one session while another sends NOOPs; returns
        the final reply to the DATA and the slowest NOOP's seconds."""
        sender = self.ehlo()
        pinger = self.ehlo()
        pinger.set_timeout(NOOP_LIMIT + 0.5)
        rcpt = f"{name.replace('_', '')}@example.com"
        self.assertReply(sender.cmd("MAIL FROM:<hostile@client.test>"), "250")
        self.assertReply(sender.cmd(f"RCPT TO:<{rcpt}>"), "250")
        self.assertReply(sender.cmd("DATA"), "354")
        wire = wire_form(text) + b".\r\n"
        failure = []

        def send():
            try:
                for i in range(0, len(wire), CHUNK):
                    sender.send(wire[i:i + CHUNK])
                    time.sleep(PAUSE)
            except OSError as e:   # the server stalled (socket timeout) or was stopped
                failure.append(e)

        thread = threading.Thread(target=send, daemon=True)
        thread.start()
        slowest = 0.0
        noops = 0
        try:
            # NOOPs while the body streams, and a few more after it: the
            # server may still be working through what it has read.
            while thread.is_alive() or noops < 3:
                t0 = time.monotonic()
                try:
                    r = pinger.cmd("NOOP")
                except (TimeoutError, OSError) as e:
                    self.fail(f"{name}: NOOP {noops + 1} not answered within "
                              f"{NOOP_LIMIT + 0.5} s while the body streams ({e})")
                took = time.monotonic() - t0
                self.assertReply(r, "250")
                self.assertLess(took, NOOP_LIMIT,
                                f"{name}: NOOP {noops + 1} took {took:.2f} s while the body streams")
                slowest = max(slowest, took)
                noops += 1
                time.sleep(0.02)
        except BaseException:
            # A stalled server never reads the rest: unblock the sender now.
            try:
                sender.sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            raise
        finally:
            thread.join(END_TIMEOUT)
        self.assertFalse(failure, f"{name}: sending the body failed: {failure}")
        sender.set_timeout(END_TIMEOUT)
        reply = sender.reply()
        # One figure per shape, for the record of the issue.
        print(f"  {self.sink} {name}: {noops} NOOPs, slowest {slowest * 1000:.1f} ms",
              flush=True)
        return reply, rcpt, slowest

    def check_stored(self, rcpt, text):
        pass


class MaildirHostile(HostileBase, InboxdTestCase):
    sink = "maildir"

    def check_stored(self, rcpt, text):
        msgs = self.stored()
        self.assertEqual(len(msgs), 1)
        self.assertStored(msgs[0], "hostile@client.test", text.replace(b"\n", CRLF), rcpt=rcpt)


class MboxHostile(HostileBase, InboxdTestCase):
    sink = "mbox"
    server_args = HostileBase.server_args + ("--mbox", "mail/{user}")

    def check_stored(self, rcpt, text):
        path = os.path.join(self.server.dir, "mail", rcpt.split("@")[0])
        box = mailbox.mbox(path, create=False)
        try:
            keys = box.keys()
            self.assertEqual(len(keys), 1, f"{path} holds {len(keys)} messages, not 1")
            self.assertTrue(box.get_message(keys[0]).get_from().startswith("hostile@client.test "))
            data = box.get_bytes(keys[0])
        finally:
            box.close()
        p = parse_stored(data)
        self.assertIsNotNone(p, f"no Return-Path/Received prefix: {data[:200]!r}")
        self.assertEqual(p["return_path"], "<hostile@client.test>")
        # Python's mbox reader does not unquote: the stored body is mboxrd-quoted.
        body = p["body"]
        self.assertEqual(len(body), len(mboxrd_quote(text)), "stored body has the wrong length")
        self.assertTrue(body == mboxrd_quote(text), "stored body is not the mboxrd form of the text")
        self.assertTrue(mboxrd_unquote(body) == text, "unquoted body differs from what was sent")


class NullHostile(HostileBase, InboxdTestCase):
    sink = "null"


def make_test(name, text):
    def test(self):
        reply, rcpt, _ = self.stream_and_ping(name, text)
        self.assertQueued(reply)
        self.check_stored(rcpt, text)
    test.__name__ = f"test_{name}"
    test.__doc__ = f"NOOPs stay under {NOOP_LIMIT} s while a {name} body streams; it is stored."
    return test


for _cls in (MaildirHostile, MboxHostile, NullHostile):
    for _name, _text in SHAPES.items():
        setattr(_cls, f"test_{_name}", make_test(_name, _text))
del _cls, _name, _text   # or the loader would find NullHostile twice


if __name__ == "__main__":
    main()
