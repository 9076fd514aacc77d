"""inboxd against Python's smtplib: what a normal client sends is stored exactly."""
import smtplib

import harness
from harness import HELO, InboxdTestCase

BODY = (b"From: Alice <a@example.com>\r\nTo: b@example.org\r\nSubject: hello\r\n"
        b"Message-ID: <1@example.com>\r\n\r\nHello,\r\n  indented line\r\n\r\nbye\r\n")


class SmtplibTest(InboxdTestCase):
    def smtp(self):
        s = smtplib.SMTP("127.0.0.1", self.server.port, local_hostname=HELO,
                         timeout=harness.TIMEOUT)
        self.addCleanup(s.close)
        return s

    def send(self, sender, rcpts, body, mail_options=()):
        """MAIL/RCPT/DATA through smtplib; returns the queue id from the final reply."""
        s = self.smtp()
        s.ehlo()
        self.assertEqual(s.mail(sender, list(mail_options)), (250, b"2.1.0 Ok"))
        for r in rcpts:
            self.assertEqual(s.rcpt(r), (250, b"2.1.5 Ok"))
        code, msg = s.data(body)
        return self.assertQueued(harness.Reply([f"{code} {msg.decode()}"]))

    def test_ehlo_advertises_extensions(self):
        s = self.smtp()
        code, msg = s.ehlo()
        self.assertEqual(code, 250)
        self.assertTrue(msg.startswith(harness.HOSTNAME.encode()), msg)
        for ext in ("pipelining", "8bitmime", "enhancedstatuscodes"):
            self.assertTrue(s.has_extn(ext), f"{ext} not advertised: {msg!r}")
        self.assertEqual(s.esmtp_features.get("size"), "10240000")

    def test_stored_bytes_exact(self):
        qid = self.send("a@example.com", ["b@example.org"], BODY)
        [data] = self.stored()
        self.assertStored(data, "a@example.com", BODY, rcpt="b@example.org", queue_id=qid)

    def test_sendmail_high_level(self):
        s = self.smtp()
        self.assertEqual(s.sendmail("a@example.com", ["b@example.org"], BODY), {})
        [data] = self.stored()
        self.assertStored(data, "a@example.com", BODY, rcpt="b@example.org")

    def test_multiple_recipients(self):
        rcpts = ["b@example.org", "c@example.net", "d@example.com"]
        qid = self.send("a@example.com", rcpts, BODY)
        files = self.stored()
        # One Maildir for everybody: one copy, or one identical copy per recipient.
        self.assertIn(len(files), (1, len(rcpts)))
        self.assertEqual(len(set(files)), 1, "copies differ")
        self.assertStored(files[0], "a@example.com", BODY, queue_id=qid)

    def test_null_sender(self):
        self.send("<>", ["b@example.org"], BODY)
        [data] = self.stored()
        self.assertStored(data, "", BODY, rcpt="b@example.org")

    def test_quoted_local_part_and_literals(self):
        rcpts = ['"john doe"@example.com', "user@[127.0.0.1]", "user@[IPv6:::1]", "postmaster"]
        self.send('"x y"@example.com', rcpts, BODY)
        [data] = set(self.stored())
        self.assertStored(data, '"x y"@example.com', BODY)

    def test_quoted_recipient_in_received_for(self):
        self.send("a@example.com", ['"john doe"@example.com'], BODY)
        [data] = self.stored()
        self.assertStored(data, "a@example.com", BODY, rcpt='"john doe"@example.com')

    def test_dot_lines_round_trip(self):
        body = b"Subject: dots\r\n\r\n.foo\r\n..bar\r\n.\r\nx.\r\n. \r\n"
        self.send("a@example.com", ["b@example.org"], body)   # smtplib dot-stuffs
        [data] = self.stored()
        self.assertStored(data, "a@example.com", body, rcpt="b@example.org")

    def test_body_without_final_newline(self):
        self.send("a@example.com", ["b@example.org"], b"Subject: x\r\n\r\nno newline")
        [data] = self.stored()
        self.assertStored(data, "a@example.com", b"Subject: x\r\n\r\nno newline\r\n",
                          rcpt="b@example.org")

    def test_8bitmime_body(self):
        body = ("Subject: =?utf-8?q?caf=C3=A9?=\r\nContent-Type: text/plain; charset=utf-8\r\n"
                "Content-Transfer-Encoding: 8bit\r\n\r\ncafé ünïcödé ✓\r\n").encode() + \
            b"latin1 \xe9\xff\x80\r\n"
        self.send("a@example.com", ["b@example.org"], body, mail_options=["BODY=8BITMIME"])
        [data] = self.stored()
        self.assertStored(data, "a@example.com", body, rcpt="b@example.org")

    def test_vrfy(self):
        code, msg = self.smtp().verify("b@example.org")
        self.assertEqual(code, 252)
        self.assertTrue(msg.startswith(b"2.5.2"), msg)

    def test_help(self):
        s = self.smtp()
        s.ehlo()
        code, msg = s.docmd("HELP")
        self.assertEqual(code, 214)
        self.assertTrue(msg.startswith(b"2.0.0"), msg)

    def test_noop(self):
        s = self.smtp()
        s.ehlo()
        self.assertEqual(s.noop(), (250, b"2.0.0 Ok"))

    def test_rset_clears_transaction(self):
        s = self.smtp()
        s.ehlo()
        s.mail("a@example.com")
        self.assertEqual(s.rset(), (250, b"2.0.0 Ok"))
        code, msg = s.rcpt("b@example.org")          # no MAIL any more
        self.assertEqual(code, 503)
        self.assertTrue(msg.startswith(b"5.5.1"), msg)

    def test_log_line(self):
        qid = self.send("a@example.com", ["b@example.org"], BODY)
        line = self.server.wait_log(rf"^.*id={qid}\b.*$")
        self.assertIsNotNone(line, f"no log line with id={qid}:\n{self.server.log()}")
        self.assertRegex(line.group(0), r"from=<?a@example\.com>?.*to=<?b@example\.org>?"
                                        r".*size=\d+.*status=")

    def test_mailbox_module_reads_it(self):
        self.send("a@example.com", ["b@example.org"], BODY)
        md = self.server.mailbox()
        [msg] = md.values()
        self.assertEqual(msg["Subject"], "hello")
        self.assertEqual(msg["Return-Path"], "<a@example.com>")
        self.assertEqual(msg.get_subdir(), "new")


if __name__ == "__main__":
    harness.main()
