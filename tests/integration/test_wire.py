"""inboxd on the wire, with raw sockets: exact reply codes, pipelining, limits,
SMTP smuggling, bare newlines, the command line and signals."""
import shutil
import signal
import socket
import time
import unittest

import harness
from harness import CRLF, HELO, HOSTNAME, Client, InboxdTestCase

BODY = b"Subject: wire\r\n\r\nbody line\r\n"
HIDDEN = b"MAIL FROM:<evil@example.com>\r\nRCPT TO:<victim@example.org>\r\nDATA\r\nsmuggled\r\n"
TRANSACTION = (b"EHLO " + HELO.encode() + b"\r\nMAIL FROM:<a@example.com>\r\n"
               b"RCPT TO:<b@example.org>\r\nRCPT TO:<bad..x@example.org>\r\n"
               b"RCPT TO:<c@example.org>\r\nDATA\r\n" + BODY + b".\r\nQUIT\r\n")


class Commands(InboxdTestCase):
    def test_ehlo_keywords(self):
        r = self.connect().cmd("EHLO " + HELO)
        self.assertTrue(r.lines[0].startswith(f"250-{HOSTNAME}"), r)
        keywords = {line[4:] for line in r.lines[1:]}
        self.assertLessEqual({"PIPELINING", "SIZE 10240000", "8BITMIME", "ENHANCEDSTATUSCODES"},
                             keywords, r)

    def test_helo(self):
        self.assertEqual(self.connect().cmd("HELO " + HELO).lines, [f"250 {HOSTNAME}"])

    def test_helo_received_says_smtp(self):
        c = self.connect()
        c.cmd("HELO " + HELO)
        qid = self.deliver(c, "a@example.com", ["b@example.org"], BODY)
        [data] = self.stored()
        self.assertStored(data, "a@example.com", BODY, "b@example.org", qid, proto="SMTP")

    def test_quit(self):
        c = self.connect()
        self.assertReply(c.cmd("QUIT"), "221 2.0.0")
        self.assertTrue(c.at_eof(), "connection not closed after QUIT")

    def test_mail_from_with_space_after_colon(self):
        c = self.ehlo()
        self.assertReply(c.cmd("MAIL FROM: <a@example.com>"), "250 2.1.0")

    def test_mail_before_helo(self):
        self.assertReply(self.connect().cmd("MAIL FROM:<a@example.com>"), "503 5.5.1")

    def test_rcpt_before_mail(self):
        self.assertReply(self.ehlo().cmd("RCPT TO:<b@example.org>"), "503 5.5.1")

    def test_data_before_mail(self):
        self.assertReply(self.ehlo().cmd("DATA"), "503 5.5.1")

    def test_data_before_rcpt(self):
        # Contract: "bad sequence (... DATA before RCPT ...) 503 5.5.1".
        c = self.ehlo()
        c.cmd("MAIL FROM:<a@example.com>")
        self.assertReply(c.cmd("DATA"), "503 5.5.1")

    def test_data_when_all_rcpts_rejected(self):
        c = self.ehlo()
        c.cmd("MAIL FROM:<a@example.com>")
        self.assertReply(c.cmd("RCPT TO:<bad..x@example.org>"), "501 5.1.3")
        r = c.cmd("DATA")
        self.assertTrue(r.last.startswith(("554 5.5.1", "503 5.5.1")), r)

    def test_nested_mail(self):
        c = self.ehlo()
        c.cmd("MAIL FROM:<a@example.com>")
        self.assertReply(c.cmd("MAIL FROM:<a@example.com>"), "503 5.5.1")

    def test_unknown_command(self):
        c = self.ehlo()
        for line in ("FOOBAR", "MAILX FROM:<a@example.com>", "X"):
            with self.subTest(line=line):
                self.assertReply(c.cmd(line), "500 5.5.2")

    def test_argument_syntax(self):
        c = self.connect()
        for line in ("HELO", "EHLO"):
            with self.subTest(line=line):
                self.assertReply(c.cmd(line), "501 5.5.4")
        self.ehlo(c)
        for line in ("MAIL", "MAIL FROM", "MAIL TO:<a@example.com>"):
            with self.subTest(line=line):
                self.assertReply(c.cmd(line), "501 5.5.4")
        c.cmd("MAIL FROM:<a@example.com>")
        for line in ("RCPT", "RCPT TO", "RCPT FROM:<b@example.org>"):
            with self.subTest(line=line):
                self.assertReply(c.cmd(line), "501 5.5.4")

    BAD = ["<a..b@example.com>", "<.a@example.com>", "<a.@example.com>", "<user@>",
           "<@example.com>", "<a@b@example.com>", "<a@-bad.example>", "<a@bad-.example>",
           "<a@ex..ample>", "<a@[300.1.1.1]>", "<a@[IPv6:zz::1]>", '<"unterminated@example.com>']

    def test_bad_sender_syntax(self):
        c = self.ehlo()
        for addr in self.BAD + ["<postmaster>"]:
            with self.subTest(addr=addr):
                self.assertReply(c.cmd("MAIL FROM:" + addr), "501 5.1.7")

    def test_bad_recipient_syntax(self):
        c = self.ehlo()
        c.cmd("MAIL FROM:<a@example.com>")
        for addr in self.BAD + ["<user>"]:
            with self.subTest(addr=addr):
                self.assertReply(c.cmd("RCPT TO:" + addr), "501 5.1.3")

    def test_unknown_esmtp_parameter(self):
        c = self.ehlo()
        self.assertReply(c.cmd("MAIL FROM:<a@example.com> FOO=bar"), "555 5.5.4")
        self.assertReply(c.cmd("MAIL FROM:<a@example.com>"), "250 2.1.0")
        self.assertReply(c.cmd("RCPT TO:<b@example.org> FOO=bar"), "555 5.5.4")

    def test_size_parameter_over_limit(self):
        c = self.ehlo()
        self.assertReply(c.cmd("MAIL FROM:<a@example.com> SIZE=10240001"), "552 5.3.4")
        self.assertReply(c.cmd("MAIL FROM:<a@example.com> SIZE=10240000"), "250 2.1.0")

    def test_command_line_over_512_octets(self):
        c = self.ehlo()
        c.send(b"NOOP " + b"x" * 600 + b"MAIL FROM:<a@example.com>\r\nNOOP\r\n")
        self.assertReply(c.reply(), "500 5.5.2")
        self.assertReply(c.reply(), "250 2.0.0")   # the stream is still in sync

    def test_command_line_of_512_octets(self):
        line = b"NOOP " + b"x" * (512 - 7) + CRLF
        self.assertEqual(len(line), 512)
        c = self.ehlo()
        c.send(line)
        self.assertReply(c.reply(), "250 2.0.0")

    def transaction_replies(self, c):
        replies = c.replies(8)
        self.assertReply(replies[0], "250")
        self.assertGreater(len(replies[0].lines), 1, "EHLO reply is not multi-line")
        for r, want in zip(replies[1:6], ["250 2.1.0", "250 2.1.5", "501 5.1.3", "250 2.1.5", "354"]):
            self.assertReply(r, want)
        qid = self.assertQueued(replies[6])
        self.assertReply(replies[7], "221 2.0.0")
        self.assertTrue(c.at_eof(), "connection not closed after QUIT")
        [data] = set(self.stored())
        self.assertStored(data, "a@example.com", BODY, queue_id=qid)

    def test_pipelined_transaction_in_one_send(self):
        c = self.connect()
        c.send(TRANSACTION)
        self.transaction_replies(c)

    def test_byte_by_byte_client(self):
        c = self.connect()
        c.send_bytewise(TRANSACTION)
        self.transaction_replies(c)

    def test_dot_unstuffing_on_the_wire(self):
        c = self.ehlo()
        self.deliver(c, "a@example.com", ["b@example.org"], b"Subject: d\r\n\r\n..foo\r\n...\r\n.. \r\n")
        [data] = self.stored()
        self.assertStored(data, "a@example.com", b"Subject: d\r\n\r\n.foo\r\n..\r\n. \r\n", "b@example.org")

    def test_two_messages_one_connection(self):
        c = self.ehlo()
        ids = {self.deliver(c, "a@example.com", ["b@example.org"], BODY) for _ in range(2)}
        self.assertEqual(len(ids), 2, "queue ids not unique")
        self.assertEqual(len(self.stored()), 2)


class SinkFailure(InboxdTestCase):
    def test_unwritable_maildir_gives_451(self):
        shutil.rmtree(self.server.maildir, ignore_errors=True)
        with open(self.server.maildir, "wb"):     # a file where the Maildir should be
            pass
        c = self.ehlo()
        c.cmd("MAIL FROM:<a@example.com>")
        c.cmd("RCPT TO:<b@example.org>")
        self.assertReply(c.cmd("DATA"), "354")
        c.send(BODY + b".\r\n")
        self.assertReply(c.reply(), "451 4.3.0")
        self.assertReply(c.cmd("NOOP"), "250 2.0.0")


class TwoListeners(InboxdTestCase):
    server_args = ("--listen", "127.0.0.1:0")

    def test_both_listeners_serve(self):
        self.server.wait_log(r"listening on[\s\S]*listening on")
        ports = {int(p) for p in harness.LISTEN_RE.findall(self.server.log())}
        self.assertEqual(len(ports), 2, self.server.log())
        for port in ports:
            self.assertReply(self.connect(port).cmd("NOOP"), "250 2.0.0")


class MessageSizeLimit(InboxdTestCase):
    server_args = ("--max-message-size", "1000")

    def test_body_over_limit_then_next_message(self):
        c = self.ehlo()
        c.cmd("MAIL FROM:<a@example.com>")
        c.cmd("RCPT TO:<b@example.org>")
        self.assertReply(c.cmd("DATA"), "354")
        c.send(b"Subject: big\r\n\r\n" + (b"z" * 70 + CRLF) * 60 + HIDDEN)
        self.assertTrue(c.quiet(), "replied before the end of the data")
        c.send(b".\r\n")
        self.assertReply(c.reply(), "552 5.3.4")
        qid = self.deliver(c, "a@example.com", ["b@example.org"], BODY)
        [data] = self.stored()
        self.assertStored(data, "a@example.com", BODY, "b@example.org", qid)

    def test_ehlo_advertises_configured_size(self):
        r = self.connect().cmd("EHLO " + HELO)
        self.assertIn("SIZE 1000", [line[4:] for line in r.lines[1:]], r)


class RecipientLimit(InboxdTestCase):
    server_args = ("--max-recipients", "3")

    def test_fourth_recipient_refused(self):
        c = self.ehlo()
        c.cmd("MAIL FROM:<a@example.com>")
        for i in range(3):
            self.assertReply(c.cmd(f"RCPT TO:<r{i}@example.org>"), "250 2.1.5")
        self.assertReply(c.cmd("RCPT TO:<r3@example.org>"), "452 4.5.3")
        self.assertReply(c.cmd("DATA"), "354")          # the 3 accepted still get it
        c.send(BODY + b".\r\n")
        self.assertQueued(c.reply())


class Smuggling(InboxdTestCase):
    """End of data is only CRLF.CRLF: the hidden MAIL stays in the one stored body."""

    def smuggle(self, seq):
        c = self.ehlo()
        c.cmd("MAIL FROM:<a@example.com>")
        c.cmd("RCPT TO:<b@example.org>")
        self.assertReply(c.cmd("DATA"), "354")
        c.send(b"Subject: smuggle\r\n\r\nhello" + seq + HIDDEN + b".\r\nQUIT\r\n")
        self.assertQueued(c.reply())
        self.assertReply(c.reply(), "221 2.0.0")
        [data] = self.stored()
        self.assertEqual(harness.parse_stored(data)["return_path"], "<a@example.com>")
        self.assertIn(b"MAIL FROM:<evil@example.com>", data)

    def test_lf_dot_lf(self):
        self.smuggle(b"\n.\n")

    def test_cr_dot_cr(self):
        self.smuggle(b"\r.\r")

    def test_lf_dot_crlf(self):
        self.smuggle(b"\n.\r\n")

    def test_crlf_dot_lf(self):
        self.smuggle(b"\r\n.\n")


class BareNewline(InboxdTestCase):
    def test_bare_lf_normalized(self):
        body = b"Subject: lf\r\n\r\nline1\nline2\r\n"
        self.deliver(self.ehlo(), "a@example.com", ["b@example.org"], body)
        [data] = self.stored()
        self.assertStored(data, "a@example.com", body, "b@example.org")


class BareNewlineReject(InboxdTestCase):
    server_args = ("--bare-newline", "reject")

    def refused(self, body):
        c = self.ehlo()
        c.cmd("MAIL FROM:<a@example.com>")
        c.cmd("RCPT TO:<b@example.org>")
        self.assertReply(c.cmd("DATA"), "354")
        c.send(body + b".\r\n")
        self.assertReply(c.reply(), "550 5.5.2")
        self.assertEqual(self.stored(), [])

    def test_bare_lf_rejected(self):
        self.refused(b"Subject: lf\r\n\r\nline1\nline2\r\n")

    def test_bare_cr_rejected(self):
        self.refused(b"Subject: cr\r\n\r\nline1\rline2\r\n")

    def test_clean_message_accepted(self):
        self.deliver(self.ehlo(), "a@example.com", ["b@example.org"], BODY)
        self.assertEqual(len(self.stored()), 1)


class CommandLine(unittest.TestCase):
    def test_help(self):
        p = harness.run_cli("--help")
        self.assertEqual(p.returncode, 0, p)
        self.assertIn(b"--listen", p.stdout + p.stderr)

    def test_version(self):
        p = harness.run_cli("--version")
        self.assertEqual(p.returncode, 0, p)
        self.assertTrue((p.stdout + p.stderr).strip(), "no version printed")

    def test_bad_flags_exit_2_with_one_line(self):
        for args in (["--bogus"], ["--max-recipients", "abc"], ["--max-message-size", "-5"],
                     ["--sink", "bogus"], ["--bare-newline", "maybe"], ["--listen", "nonsense"],
                     ["--listen"]):
            with self.subTest(args=args):
                p = harness.run_cli(*args)
                self.assertEqual(p.returncode, 2, p)
                self.assertEqual(len(p.stderr.strip().splitlines()), 1, p.stderr)


class Signals(InboxdTestCase):
    def test_sigterm_exits_0(self):
        self.assertEqual(self.server.stop(), 0, self.server.log())

    def test_sigterm_closes_idle_connection(self):
        c = self.ehlo()
        self.assertEqual(self.server.stop(), 0, self.server.log())
        try:
            self.assertReply(c.reply(), "421")
        except ConnectionError:
            pass                       # closed without a reply is fine too

    def start_transaction_then_sigterm(self):
        c = self.ehlo()
        c.cmd("MAIL FROM:<a@example.com>")
        c.cmd("RCPT TO:<b@example.org>")
        self.assertReply(c.cmd("DATA"), "354")
        c.send(b"Subject: in flight\r\n\r\nfirst half\r\n")
        self.server.stopped = True
        self.server.proc.send_signal(signal.SIGTERM)
        time.sleep(0.3)
        self.assertTrue(self.server.alive(), "exited with a transaction in flight")
        return c

    def test_sigterm_lets_transaction_finish(self):
        c = self.start_transaction_then_sigterm()
        c.send(b"second half\r\n.\r\n")
        self.assertQueued(c.reply())
        c.close()
        self.assertEqual(self.server.proc.wait(harness.TIMEOUT), 0)
        [data] = self.stored()
        self.assertStored(data, "a@example.com", b"Subject: in flight\r\n\r\nfirst half\r\nsecond half\r\n",
                          "b@example.org")

    def test_sigterm_stops_accepting(self):
        self.start_transaction_then_sigterm()
        try:
            c = Client(self.server.port, timeout=1)
        except ConnectionRefusedError:
            return
        self.clients.append(c)
        try:
            self.fail(f"new connection after SIGTERM got {c.reply()!r}")
        except (ConnectionError, TimeoutError, socket.timeout):
            pass


if __name__ == "__main__":
    harness.main()
