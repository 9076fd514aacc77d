"""BDAT and BINARYMIME (RFC 3030) against the real binary.

Raw sockets: pipelined chunks and the next MAIL in one packet (RFC 3030 4.2),
chunks sent a byte at a time, BDAT 0 LAST, SIZE across chunks, BDAT without
MAIL. A binary body (every byte value, NULs, lone CRs and LFs, '.' and 'From '
lines) is read back exactly with Python's mailbox from Maildir and from mbox
(after undoing mboxrd quoting), and Dovecot reads the same message. A real
client: Perl's Net::SMTP (Debian's perl-modules), which sends BODY=BINARYMIME
and BDAT when the server offers CHUNKING and BINARYMIME; its debug output shows
the BDAT commands. (Postfix 3.7's smtp client has no BDAT: `strings` on it
finds none, so Postfix cannot be the client here.)
"""
import json
import mailbox
import os
import re
import shutil
import subprocess
import unittest

import harness
from harness import HELO, InboxdTestCase

HEADER = (b"From: a@example.com\r\nSubject: binary\r\nMIME-Version: 1.0\r\n"
          b"Content-Type: application/octet-stream\r\nContent-Transfer-Encoding: binary\r\n\r\n")
# Ends with LF: an mbox message always ends with a line end (the format adds
# one), so for mbox to give it back exactly the body must end with one.
BINARY = (bytes(range(256)) * 4 + b"\r\n.\r\n..\r\nFrom x\r\n>From y\n\r\r\n\n\n\r\0\0\r"
          b"\nFrom \n.\n\r.\r\n")


def bdat(data, last=False):
    return b"BDAT %d%s\r\n" % (len(data), b" LAST" if last else b"") + data


def chunks(data, size):
    return [data[i:i + size] for i in range(0, len(data), size)]


def unquote(data):
    """Undo mboxrd quoting: one '>' less on lines matching ^>+From ."""
    return re.sub(rb"(?m)^>(>*From )", rb"\1", data)


def stored_body(test, data, rcpt="alice@example.com"):
    p = harness.parse_stored(data)
    test.assertIsNotNone(p, data[:300])
    test.assertEqual(p["return_path"], "<a@example.com>")
    test.assertEqual(p["proto"], "ESMTP")
    test.assertIn(p["for"], (f"<{rcpt}>", rcpt))
    return p["body"]


class BdatMaildirTest(InboxdTestCase):
    def envelope(self, body="", rcpt="alice@example.com"):
        return f"MAIL FROM:<a@example.com>{body}\r\nRCPT TO:<{rcpt}>\r\n".encode()

    def test_ehlo_offers_chunking_and_binarymime(self):
        r = self.connect().cmd("EHLO " + HELO)
        self.assertIn("250-CHUNKING", r.lines)
        self.assertIn("250-BINARYMIME", r.lines)

    def test_pipelined_chunks_and_next_mail_in_one_packet(self):
        c = self.ehlo()
        one, two = b"Subject: one\r\n\r\n.a\r", b"\nb\r\n.\r\n"
        c.send(self.envelope() + bdat(one) + bdat(two) + bdat(b"", True) + self.envelope() +
               bdat(b"Subject: two\r\n\r\nx\r\n", True) + b"QUIT\r\n")
        r = c.replies(9)
        self.assertEqual([x.last for x in r[:4]],
                         ["250 2.1.0 Ok", "250 2.1.5 Ok", f"250 2.0.0 Ok: {len(one)} octets",
                          f"250 2.0.0 Ok: {len(two)} octets"])
        self.assertQueued(r[4])
        self.assertQueued(r[7])
        self.assertReply(r[8], "221")
        bodies = sorted(stored_body(self, m) for m in self.stored())
        self.assertEqual(bodies, [b"Subject: one\n\n.a\nb\n.\n", b"Subject: two\n\nx\n"])

    def test_chunks_sent_a_byte_at_a_time(self):
        c = self.ehlo()
        c.send_bytewise(self.envelope() + bdat(b"Subject: s\r") + bdat(b"\n\r\nbody\r\n", True))
        self.assertEqual([x.last for x in c.replies(3)],
                         ["250 2.1.0 Ok", "250 2.1.5 Ok", "250 2.0.0 Ok: 11 octets"])
        self.assertQueued(c.reply())
        [m] = self.stored()
        self.assertEqual(stored_body(self, m), b"Subject: s\n\nbody\n")

    def test_bdat_without_mail_keeps_the_stream_in_step(self):
        c = self.ehlo()
        c.send(bdat(b"MAIL FROM:<x@example.com>\r\n") + b"NOOP\r\n")
        self.assertEqual(c.reply().last, "503 5.5.1 Error: need MAIL command")
        self.assertEqual(c.reply().last, "250 2.0.0 Ok")
        c.send(self.envelope() + bdat(b"Subject: ok\r\n\r\n", True))
        c.replies(2)
        self.assertQueued(c.reply())
        self.assertEqual(len(self.stored()), 1)

    def test_binary_body_exact_in_maildir(self):
        c = self.ehlo()
        data = b"".join(bdat(x) for x in chunks(HEADER + BINARY, 97)) + bdat(b"", True)
        c.send(self.envelope(" BODY=BINARYMIME") + data)
        replies = c.replies(2 + len(chunks(HEADER + BINARY, 97)))
        self.assertTrue(all(r.code == 250 for r in replies), replies)
        self.assertQueued(c.reply())
        [m] = self.stored()
        self.assertEqual(stored_body(self, m), HEADER.replace(b"\r\n", b"\n") + BINARY)
        # Python's mailbox reads it: the header parsed, the body as sent.
        mb = mailbox.Maildir(self.server.maildir, factory=None, create=False)
        [key] = mb.keys()
        msg = mb.get_message(key)
        self.assertEqual(msg["Subject"], "binary")
        self.assertEqual(msg["Content-Transfer-Encoding"], "binary")
        raw = mb.get_bytes(key)
        self.assertTrue(raw.endswith(b"\n\n" + BINARY))


    def test_large_chunks_stream_through_the_store(self):
        """8 MiB in chunks of 3 MiB and less, binary, sent without waiting:
        the store stages and pauses the client as it needs (memory budget)."""
        body = (bytes(range(256)) * 4096 * 8)[:8 * 1024 * 1024 - 1] + b"\n"
        message = HEADER + body
        parts = chunks(message, 3 * 1024 * 1024 + 7)
        c = self.ehlo()
        c.send(self.envelope(" BODY=BINARYMIME") +
               b"".join(bdat(x, i + 1 == len(parts)) for i, x in enumerate(parts)))
        c.set_timeout(60)
        replies = c.replies(1 + len(parts))
        self.assertTrue(all(r.code == 250 for r in replies), replies)
        self.assertQueued(c.reply())
        [m] = self.stored()
        self.assertEqual(stored_body(self, m), HEADER.replace(b"\r\n", b"\n") + body)


class BdatSizeTest(InboxdTestCase):
    server_args = ("--max-message-size", "1000")

    def test_size_counted_across_chunks(self):
        c = self.ehlo()
        c.send(b"MAIL FROM:<a@example.com>\r\nRCPT TO:<alice@example.com>\r\n" +
               bdat(b"x" * 600) + bdat(b"y" * 600) + bdat(b"z" * 10) + bdat(b"\r\n", True) +
               b"NOOP\r\n")
        r = [x.last for x in c.replies(7)]
        self.assertEqual(r[2], "250 2.0.0 Ok: 600 octets")
        self.assertEqual(r[3:6], ["552 5.3.4 Message size exceeds fixed limit"] * 3)
        self.assertEqual(r[6], "250 2.0.0 Ok")
        self.assertEqual(self.stored(), [])
        self.server.wait_log(r"status=rejected")


class BdatMboxTest(InboxdTestCase):
    sink = None
    server_args = ("--mbox", "mail/{user}")

    def test_binary_body_exact_in_mbox(self):
        c = self.ehlo()
        c.send(b"MAIL FROM:<a@example.com> BODY=BINARYMIME\r\nRCPT TO:<alice@example.com>\r\n" +
               b"".join(bdat(x) for x in chunks(HEADER + BINARY, 300)) + bdat(b"", True))
        replies = c.replies(2 + len(chunks(HEADER + BINARY, 300)))
        self.assertTrue(all(r.code == 250 for r in replies), replies)
        self.assertQueued(c.reply())
        mb = mailbox.mbox(os.path.join(self.server.dir, "mail", "alice"), create=False)
        self.addCleanup(mb.close)
        [key] = mb.keys()
        self.assertEqual(mb.get_message(key)["Subject"], "binary")
        body = stored_body(self, unquote(mb.get_bytes(key)))
        self.assertEqual(body, HEADER.replace(b"\r\n", b"\n") + BINARY)


BENCH = os.path.join(os.path.dirname(os.path.abspath(harness.BIN)), "src", "bench", "inboxd-bench")


@unittest.skipIf(not os.access(BENCH, os.X_OK), f"inboxd-bench not built at {BENCH}")
class BenchBdatTest(InboxdTestCase):
    """inboxd-bench --bdat delivers whole messages (no timing is checked)."""

    def test_bench_bdat_delivers(self):
        for pipelining in ("on", "off"):
            p = subprocess.run([BENCH, "--port", str(self.server.port), "--messages", "20",
                                "--connections", "2", "--bdat", "--pipelining", pipelining,
                                "--size", "3000", "--json", "--progress", "off"],
                               capture_output=True, timeout=60)
            self.assertEqual(p.returncode, 0, p.stderr)
            result = json.loads(p.stdout)
            self.assertTrue(result["bdat"])
            self.assertEqual((result["accepted"], result["refused"], result["failed"]), (20, 0, 0))
        stored = self.stored()
        self.assertEqual(len(stored), 40)
        for m in stored:
            body = harness.parse_stored(m)["body"]
            # The text as the bench makes it, with LF line ends and no "." line.
            self.assertEqual(len(body), 3000 - body.count(b"\n"))
            self.assertTrue(body.endswith(b"\n") and not body.endswith(b"\n.\n"), body[-20:])


def net_smtp_reason():
    if not shutil.which("perl"):
        return "no perl"
    if subprocess.run(["perl", "-MNet::SMTP", "-e", "1"], capture_output=True).returncode != 0:
        return "Perl's Net::SMTP is missing (Debian's perl-modules)"
    return None


# Net::SMTP (3.14 in Debian 12) sends BODY=BINARYMIME and then only BDAT.
NET_SMTP = r"""
use strict;
use Net::SMTP;
binmode STDIN;
my ($port, $size) = @ARGV;
local $/;
my $message = <STDIN>;
my $smtp = Net::SMTP->new("127.0.0.1", Port => $port, Hello => "client.test",
                          Timeout => 10, Debug => 1) or die "connect: $@";
$smtp->mail('a@example.com', Bits => 'binary') or die "MAIL: " . $smtp->message;
$smtp->to('alice@example.com') or die "RCPT: " . $smtp->message;
my @chunks = unpack("(a$size)*", $message);
my $last = pop @chunks;
for my $c (@chunks) { $smtp->bdat($c) or die "BDAT: " . $smtp->message; }
$smtp->bdatlast($last) or die "BDAT LAST: " . $smtp->message;
print $smtp->message;
$smtp->quit;
"""


@unittest.skipIf(net_smtp_reason(), net_smtp_reason() or "")
class NetSmtpClientTest(InboxdTestCase):
    def test_net_smtp_sends_binary_with_bdat(self):
        message = HEADER + BINARY
        p = subprocess.run(["perl", "-e", NET_SMTP, str(self.server.port), "500"], input=message,
                           capture_output=True, timeout=30)
        err = p.stderr.decode(errors="replace")
        self.assertEqual(p.returncode, 0, err)
        self.assertIn(">>> MAIL FROM:<a@example.com> BODY=BINARYMIME", err)
        # Net::Cmd's debug lines show each command with its CR.
        self.assertEqual(len(re.findall(r">>> BDAT 500\r?\n", err)), len(message) // 500, err)
        self.assertIn(f">>> BDAT {len(message) % 500} LAST", err)
        self.assertIn("<<< 250 2.0.0 Ok: 500 octets", err)
        self.assertRegex(p.stdout.decode(), r"Ok: queued as \S+")
        [m] = self.stored()
        self.assertEqual(stored_body(self, m), HEADER.replace(b"\r\n", b"\n") + BINARY)


try:
    import test_dovecot
    DovecotBase = test_dovecot.DovecotTestBase
    dovecot_skip = test_dovecot.skip_reason()
except ImportError as e:   # pragma: no cover - the file is in the same folder
    DovecotBase, dovecot_skip = InboxdTestCase, str(e)


@unittest.skipIf(dovecot_skip, dovecot_skip or "")
class DovecotReadsBinaryTest(DovecotBase):
    """Dovecot's IMAP reads the binary message from the Maildir: the header
    parsed, the body part fetched with BINARY.PEEK[1] (RFC 3516, which carries
    NULs). Dovecot (2.3) takes a Maildir file's LFs as line ends, so it gives
    every lone LF of the body as CRLF: the one change, and Dovecot's (the
    file holds the body exactly, as the Maildir test shows)."""
    server_args = ("--maildir", "mail/{user}")
    server_kwargs = {"maildir": False}

    def test_dovecot_reads_the_binary_message(self):
        c = self.ehlo()
        c.send(b"MAIL FROM:<a@example.com> BODY=BINARYMIME\r\nRCPT TO:<alice@example.com>\r\n" +
               bdat(HEADER + BINARY, True))
        c.replies(2)
        self.assertQueued(c.reply())
        im = self.imap(f"maildir:{self.server.dir}/mail/%u")
        typ, data = im.select("INBOX", readonly=True)
        self.assertEqual((typ, data), ("OK", [b"1"]))
        typ, data = im.fetch("1", "(BODY.PEEK[HEADER.FIELDS (SUBJECT)] BINARY.PEEK[1])")
        self.assertEqual(typ, "OK", data)
        parts = [x for x in data if isinstance(x, tuple)]
        self.assertEqual(len(parts), 2, data)
        self.assertEqual(parts[0][1].strip(), b"Subject: binary")
        self.assertIn(b"BINARY[1]", parts[1][0])
        # Every byte, NULs and lone CRs included, but each lone LF as CRLF.
        self.assertEqual(parts[1][1], re.sub(rb"(?<!\r)\n", b"\r\n", BINARY))
        self.assertDovecotQuiet()


if __name__ == "__main__":
    harness.main()
