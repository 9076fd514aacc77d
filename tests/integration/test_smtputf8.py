"""SMTPUTF8 (RFC 6531): Python's smtplib delivers to UTF-8 local parts at
U-label and A-label domains; the messages are read back with Python's
mailbox module; raw sockets check the refusals (553 5.6.7, malformed UTF-8,
bad IDNA names) and that {user} paths never leave their folder."""
import email
import email.policy
import mailbox
import os
import smtplib
import time
from email.message import EmailMessage

import harness
import postfix
from harness import HELO, InboxdTestCase
from test_dovecot import DovecotTestBase

# münchen.example is configured as a U-label, bücher.example as its A-label:
# both forms must match both forms on the wire.
CONFIG = """
maildir = "mail/{domain}/{user}"

[[domain]]
name = "münchen.example"
users = ["jörg", "用户", "alice"]

[[domain]]
name = "xn--bcher-kva.example"

[[domain]]
name = "any.test"
"""

MUNICH = "xn--mnchen-3ya.example"
BUCHER = "xn--bcher-kva.example"

BODY = ("From: Jörg <jörg@münchen.example>\r\nTo: 用户@münchen.example\r\n"
        "Subject: Grüße aus München\r\nMessage-ID: <1@münchen.example>\r\n\r\n"
        "你好, Grüße\r\n").encode()


class Smtputf8Test(InboxdTestCase):
    sink = None
    server_kwargs = {"maildir": False, "config": CONFIG}

    def smtp(self):
        s = smtplib.SMTP("127.0.0.1", self.server.port, local_hostname=HELO,
                         timeout=harness.TIMEOUT)
        self.addCleanup(s.close)
        return s

    def maildir(self, domain, user):
        return os.path.join(self.server.dir, "mail", domain, user)

    def read_back(self, domain, user):
        """The one message of that Maildir, through Python's mailbox module."""
        self.stored(self.maildir(domain, user))  # the Maildir invariants
        box = mailbox.Maildir(self.maildir(domain, user), factory=None, create=False)
        keys = box.keys()
        self.assertEqual(len(keys), 1)
        raw = box.get_bytes(keys[0])
        return raw, email.message_from_bytes(raw, policy=email.policy.SMTPUTF8)

    def received(self, raw):
        """The Received header, unfolded, as text."""
        msg = email.message_from_bytes(raw, policy=email.policy.SMTPUTF8)
        return " ".join(str(msg["Received"]).split())

    def test_ehlo_advertises_smtputf8_and_8bitmime(self):
        s = self.smtp()
        s.ehlo()
        self.assertTrue(s.has_extn("smtputf8"))
        self.assertTrue(s.has_extn("8bitmime"))

    def test_sendmail_to_a_utf8_local_part_at_a_u_label(self):
        s = self.smtp()
        refused = s.sendmail("jörg@münchen.example", ["用户@münchen.example"], BODY,
                             mail_options=["SMTPUTF8", "BODY=8BITMIME"])
        self.assertEqual(refused, {})
        raw, msg = self.read_back(MUNICH, "用户")
        # The stored bytes are the sent ones after the trace fields, UTF-8 intact.
        self.assertTrue(raw.endswith(BODY.replace(b"\r\n", b"\n")), raw)
        self.assertTrue(raw.startswith("Return-Path: <jörg@münchen.example>\n".encode()), raw)
        trace = self.received(raw)
        self.assertIn(f"by {harness.HOSTNAME} (inboxd) with UTF8SMTP id ", trace)
        self.assertIn("for <用户@münchen.example>", trace)
        self.assertEqual(msg["Subject"], "Grüße aus München")
        # The log escapes what is not printable ASCII (no raw UTF-8 in it).
        line = self.server.wait_log(r"^.*status=sent.*$").group(0)
        self.assertIn(r"from=<j\xc3\xb6rg@m\xc3\xbcnchen.example>", line)
        self.assertNotIn("ö", self.server.log())

    def test_send_message_with_the_smtputf8_policy_at_an_a_label_domain(self):
        msg = EmailMessage(policy=email.policy.SMTPUTF8)
        msg["From"] = "Jörg <jörg@münchen.example>"
        msg["To"] = "Zoë <zoë@bücher.example>"
        msg["Subject"] = "Bücher"
        msg.set_content("Ein Buch für dich.\n")
        s = self.smtp()
        # Non-ASCII addresses: send_message itself adds SMTPUTF8 to MAIL.
        self.assertEqual(s.send_message(msg), {})
        raw, stored = self.read_back(BUCHER, "zoë")
        self.assertIn(" with UTF8SMTP id ", self.received(raw))
        self.assertEqual(stored["To"], "Zoë <zoë@bücher.example>")
        self.assertEqual(stored.get_payload(decode=True).decode(), "Ein Buch für dich.\n")

    def test_both_domain_forms_reach_one_mailbox(self):
        s = self.smtp()
        for rcpt in ("jörg@münchen.example", f"jörg@{MUNICH}"):
            self.assertEqual(s.sendmail("a@example.net", [rcpt], b"Subject: x\r\n\r\nx\r\n",
                                        mail_options=["SMTPUTF8"]), {})
        box = mailbox.Maildir(self.maildir(MUNICH, "jörg"), factory=None, create=False)
        self.assertEqual(len(box.keys()), 2)
        # An ASCII local part at the A-label needs no SMTPUTF8 at all.
        c = self.ehlo()
        self.deliver(c, "a@example.net", [f"alice@{MUNICH}"], b"Subject: y\r\n\r\ny\r\n")
        raw, _ = self.read_back(MUNICH, "alice")
        self.assertIn(" with ESMTP id ", self.received(raw))

    def test_case_folding_is_ascii_only(self):
        c = self.ehlo()
        self.assertReply(c.cmd("MAIL FROM:<a@example.net> SMTPUTF8"), "250")
        self.assertReply(c.cmd("RCPT TO:<JöRG@münchen.example>"), "250 2.1.5")
        self.assertReply(c.cmd("RCPT TO:<jÖrg@münchen.example>"), "550 5.1.1")

    def test_non_ascii_without_smtputf8_is_553_5_6_7(self):
        c = self.ehlo()
        r = c.cmd("MAIL FROM:<jörg@münchen.example>")
        self.assertEqual(r.last,
                         "553 5.6.7 Non-ASCII addresses not permitted for that sender/recipient")
        self.assertReply(c.cmd("MAIL FROM:<a@example.net>"), "250")
        self.assertReply(c.cmd("RCPT TO:<jörg@münchen.example>"), "553 5.6.7")
        self.assertReply(c.cmd(f"RCPT TO:<alice@{MUNICH}>"), "250")
        # Split at every byte, the replies stay the same.
        c2 = self.ehlo()
        c2.send_bytewise("MAIL FROM:<jörg@münchen.example>\r\n".encode())
        self.assertReply(c2.reply(), "553 5.6.7")

    def test_parameter_errors(self):
        c = self.ehlo()
        self.assertReply(c.cmd("MAIL FROM:<a@example.net> SMTPUTF8=yes"), "501 5.5.4")
        self.assertReply(c.cmd("MAIL FROM:<a@example.net> SMTPUTF8 SMTPUTF8"), "501 5.5.4")
        c2 = self.connect()
        self.assertReply(c2.cmd("HELO " + HELO), "250")
        self.assertReply(c2.cmd("MAIL FROM:<a@example.net> SMTPUTF8"), "555 5.5.4")

    def test_malformed_utf8_is_refused(self):
        c = self.ehlo()
        for bad in (b"j\xc0\xafrg", b"j\xc3rg", b"\xed\xa0\x80", b"\xf4\x90\x80\x80", b"a\xc2\x85",
                    b"\xff"):
            c.send(b"MAIL FROM:<" + bad + b"@example.net> SMTPUTF8\r\n")
            self.assertReply(c.reply(), "501 5.1.7", f"sender {bad!r}")
        self.assertReply(c.cmd("MAIL FROM:<a@example.net> SMTPUTF8"), "250")
        c.send(b"RCPT TO:<j\xc3\xb6rg@m\xfcnchen.example>\r\n")  # Latin-1, not UTF-8
        self.assertReply(c.reply(), "501 5.1.3")

    def test_a_domain_that_is_no_idna_name_is_550_5_1_2(self):
        c = self.ehlo()
        self.assertReply(c.cmd("MAIL FROM:<a@example.net> SMTPUTF8"), "250")
        self.assertReply(c.cmd("RCPT TO:<a@☃.example>"), "550 5.1.2")
        self.assertReply(c.cmd("RCPT TO:<a@xn--n3h.example>"), "550 5.1.2")
        self.assertReply(c.cmd("RCPT TO:<a@xn--a.example>"), "550 5.1.2")
        self.assertReply(c.cmd("RCPT TO:<a@muenchen.example>"), "550 5.7.1")
        self.assertReply(c.cmd("RCPT TO:<alice@münchen.example>"), "250")
        self.assertTrue(self.server.alive())

    def test_user_paths_never_leave_their_folder(self):
        """any.test has no user list: any local part is a mailbox of its own name."""
        hostile = ['"../../../escape"', '"..\\/..\\/x"', '".."', '"."', '".hidden"', '"a/b"',
                   '"..ö/.."', "%2E%2E", '"a..b"', "用户"]
        c = self.ehlo()
        self.assertReply(c.cmd("MAIL FROM:<a@example.net> SMTPUTF8"), "250")
        for local in hostile:
            self.assertReply(c.cmd(f"RCPT TO:<{local}@any.test>"), "250", local)
        self.assertReply(c.cmd("DATA"), "354")
        c.send(b"Subject: paths\r\n\r\nx\r\n.\r\n")
        self.assertQueued(c.reply())
        root = os.path.join(self.server.dir, "mail", "any.test")
        names = sorted(os.listdir(root))
        self.assertEqual(len(names), len(hostile), names)  # one Maildir each, all distinct
        for name in names:
            self.assertNotIn(name, (".", ".."))
            self.assertFalse(name.startswith("."), name)
            self.assertEqual(len(self.stored(os.path.join(root, name))), 1, name)
        self.assertIn("用户", names)
        # Nothing was made outside mail/ (the server's own files aside).
        self.assertEqual(os.listdir(os.path.join(self.server.dir, "mail")), ["any.test"])
        outside = set(os.listdir(self.server.dir)) - {"mail", "inboxd.toml", "stderr.log",
                                                      "var"}
        self.assertEqual(outside, set())


class Smtputf8DovecotTest(DovecotTestBase):
    """Dovecot's IMAP reads a message stored for a UTF-8 local part at a U-label."""
    server_kwargs = {"maildir": False, "config": CONFIG}

    def test_dovecot_reads_the_utf8_message(self):
        body = BODY.replace(b"Subject: ", b"Subject: m0 ")
        s = smtplib.SMTP("127.0.0.1", self.server.port, local_hostname=HELO,
                         timeout=harness.TIMEOUT)
        try:
            self.assertEqual(s.sendmail("jörg@münchen.example", ["用户@münchen.example"], body,
                                        mail_options=["SMTPUTF8", "BODY=8BITMIME"]), {})
            s.quit()
        finally:
            s.close()
        folder = os.path.join(self.server.dir, "mail", MUNICH, "用户")
        got = self.fetch_all(self.imap(f"maildir:{folder}"))
        self.assertEqual(list(got), [b"m0"])
        fetched, size = got[b"m0"]
        self.assertEqual(size, len(fetched))
        self.assertEqual(fetched.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n"), fetched)
        self.assertTrue(fetched.startswith("Return-Path: <jörg@münchen.example>\r\n".encode()),
                        fetched[:200])
        self.assertIn(b" (inboxd) with UTF8SMTP id ", fetched)
        self.assertTrue(fetched.endswith(body), fetched[-200:])
        self.assertDovecotQuiet()


class Smtputf8PostfixTest(InboxdTestCase):
    """Postfix with smtputf8_enable = yes relays a UTF-8 message to inboxd: a
    private instance (postfix.py) whose relay is inboxd, without DNS."""
    sink = None
    server_kwargs = {"maildir": False, "config": CONFIG}

    def setUp(self):
        super().setUp()
        self.pf = postfix.Postfix(f"smtp:[127.0.0.1]:{self.server.port}",
                                  "smtputf8_enable = yes\nsmtp_dns_support_level = disabled\n"
                                  "smtp_tls_security_level = none\n")
        self.addCleanup(self.pf.stop)
        self.pf.start()

    def test_postfix_relays_smtputf8_to_a_utf8_local_part(self):
        s = smtplib.SMTP("127.0.0.1", self.pf.port, local_hostname=HELO,
                         timeout=harness.TIMEOUT)
        try:
            self.assertEqual(s.sendmail("jörg@münchen.example", ["用户@münchen.example"], BODY,
                                        mail_options=["SMTPUTF8", "BODY=8BITMIME"]), {})
            s.quit()
        finally:
            s.close()
        new = os.path.join(self.server.dir, "mail", MUNICH, "用户", "new")
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not (os.path.isdir(new) and os.listdir(new)):
            time.sleep(0.1)
        self.assertTrue(os.path.isdir(new) and os.listdir(new),
                        f"nothing delivered; Postfix log:\n{self.pf.tail()}\n"
                        f"inboxd log:\n{self.server.log()}")
        box = mailbox.Maildir(os.path.dirname(new), factory=None, create=False)
        [key] = box.keys()
        raw = box.get_bytes(key)
        msg = email.message_from_bytes(raw, policy=email.policy.SMTPUTF8)
        # Our trace is on top: Postfix said SMTPUTF8 on MAIL (else: ESMTP).
        first = " ".join(str(msg.get_all("Received")[0]).split())
        self.assertIn("from postfix.test ", first)
        self.assertIn(" with UTF8SMTP id ", first)
        self.assertIn("for <用户@münchen.example>", first)
        self.assertEqual(msg["Return-Path"], "<jörg@münchen.example>")
        self.assertEqual(msg["Subject"], "Grüße aus München")
        self.assertTrue(raw.endswith("\n\n你好, Grüße\n".encode()), raw[-200:])
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and "status=sent" not in self.pf.maillog():
            time.sleep(0.1)
        self.assertRegex(self.pf.maillog(), r"relay=127\.0\.0\.1\[127\.0\.0\.1\]:\d+.*status=sent")


if __name__ == "__main__":
    harness.main()
