"""LIMITS (RFC 9422), REQUIRETLS (RFC 8689) and the DSN parameters (RFC 3461)
with Python's smtplib, its mail_options and rcpt_options: what EHLO offers,
that the server keeps to it, what the log line and the stored message say."""
import mailbox
import os
import re
import smtplib
import unittest

import harness
from harness import HELO, InboxdTestCase, client_tls_context

SENDER, RCPT = "a@example.com", "b@example.org"
BODY = b"From: a@example.com\r\nTo: b@example.org\r\nSubject: params\r\n\r\nhello\r\n"
TLS_ARGS = ("--listen-tls", "127.0.0.1:0")


class Smtp(InboxdTestCase):
    def smtp(self, port=None, tls=False):
        if tls:
            s = smtplib.SMTP_SSL("127.0.0.1", port or self.server.tls_port, local_hostname=HELO,
                                 timeout=harness.TIMEOUT, context=client_tls_context())
        else:
            s = smtplib.SMTP("127.0.0.1", port or self.server.port, local_hostname=HELO,
                             timeout=harness.TIMEOUT)
        self.addCleanup(s.close)
        self.assertEqual(s.ehlo()[0], 250)
        return s

    def message_line(self, queue_id=None):
        """The log line of the last message (of `queue_id`), waiting for it."""
        pattern = r"^.*\bid=" + (re.escape(queue_id) if queue_id else r"\S+") + r" from=.*$"
        self.assertIsNotNone(self.server.wait_log(pattern), self.server.log())
        return re.findall(pattern, self.server.log(), re.M)[-1]


class Limits(Smtp):
    server_args = ("--max-recipients", "3")

    def test_rcptmax_is_what_the_server_keeps_to(self):
        s = self.smtp()
        self.assertTrue(s.has_extn("limits"))
        limits = dict(item.split("=", 1) for item in s.esmtp_features["limits"].split())
        self.assertEqual(limits, {"RCPTMAX": "3"}, "RCPTMAX only: there is no MAILMAX")
        rcptmax = int(limits["RCPTMAX"])
        self.assertEqual(s.mail(SENDER)[0], 250)
        for i in range(rcptmax):
            self.assertEqual(s.rcpt(f"r{i}@example.org")[0], 250)
        code, msg = s.rcpt("one-too-many@example.org")
        self.assertEqual((code, msg[:5]), (452, b"4.5.3"))
        self.assertEqual(s.data(BODY)[0], 250)
        self.assertEqual(len(self.stored()), 1)


class RequireTls(Smtp):
    server_args = TLS_ARGS

    def test_not_offered_in_plaintext_and_refused_there(self):
        s = self.smtp()
        self.assertFalse(s.has_extn("requiretls"))
        with self.assertRaises(smtplib.SMTPSenderRefused) as e:
            s.sendmail(SENDER, [RCPT], BODY, mail_options=["REQUIRETLS"])
        self.assertEqual(e.exception.smtp_code, 530)
        self.assertTrue(e.exception.smtp_error.startswith(b"5.7.10"), e.exception.smtp_error)
        self.assertEqual(self.stored(), [])

    def test_after_starttls(self):
        s = self.smtp()
        self.assertEqual(s.starttls(context=client_tls_context())[0], 220)
        s.ehlo()
        self.assertTrue(s.has_extn("requiretls"))
        self.assertEqual(s.sendmail(SENDER, [RCPT], BODY, mail_options=["REQUIRETLS"]), {})
        s.quit()
        self.assertIn(" requiretls=yes ", self.message_line())
        self.assertEqual(len(self.stored()), 1)

    def test_on_implicit_tls_and_repeated(self):
        s = self.smtp(tls=True)
        self.assertTrue(s.has_extn("requiretls"))
        code, msg = s.mail(SENDER, ["REQUIRETLS", "REQUIRETLS"])
        self.assertEqual((code, msg[:5]), (501, b"5.5.4"))
        self.assertEqual(s.sendmail(SENDER, [RCPT], BODY), {})
        s.quit()
        self.assertNotIn("requiretls", self.message_line())


class DsnOff(Smtp):
    """Maildir carries no DSN on: EHLO does not offer it, its parameters are unknown."""

    def test_not_offered(self):
        s = self.smtp()
        self.assertFalse(s.has_extn("dsn"))
        with self.assertRaises(smtplib.SMTPSenderRefused) as e:
            s.sendmail(SENDER, [RCPT], BODY, mail_options=["RET=HDRS"])
        self.assertEqual(e.exception.smtp_code, 555)
        s.rset()
        with self.assertRaises(smtplib.SMTPRecipientsRefused) as e:
            s.sendmail(SENDER, [RCPT], BODY, rcpt_options=["NOTIFY=NEVER"])
        self.assertEqual(e.exception.recipients[RCPT][0], 555)


def strip_original_to(data):
    """(the X-Original-To value or None, the message without that line)."""
    m = re.match(rb"(Return-Path: [^\n]*\n)X-Original-To: ([^\n]*)\n", data)
    if not m:
        return None, data
    return m.group(2).decode(), m.group(1) + data[m.end():]


class DsnAccepted(Smtp):
    """--accept-dsn: local delivery takes the DSN parameters (README, "DSN")."""
    server_args = ("--accept-dsn",)

    def send(self, rcpts, mail_options=(), rcpt_options=()):
        s = self.smtp()
        self.assertTrue(s.has_extn("dsn"))
        self.assertEqual(s.sendmail(SENDER, rcpts, BODY, mail_options=list(mail_options),
                                    rcpt_options=list(rcpt_options)), {})
        s.quit()

    def test_parameters_kept_logged_and_orcpt_stored(self):
        self.send([RCPT], ["RET=HDRS", "ENVID=QQ+2B314159"],
                  ["NOTIFY=SUCCESS,FAILURE", "ORCPT=rfc822;Old+2Balias@Example.NET"])
        [data] = self.stored()
        original, rest = strip_original_to(data)
        self.assertEqual(original, "Old+alias@Example.NET")
        self.assertStored(rest, SENDER, BODY, rcpt=RCPT)
        line = self.message_line()
        for field in (" ret=HDRS", " envid=QQ+2B314159", f" notify=<{RCPT}>:SUCCESS,FAILURE",
                      f" orcpt=<{RCPT}>:rfc822;Old+2Balias@Example.NET"):
            self.assertIn(field, line)
        # Python's mailbox reads the header like any other.
        [msg] = list(mailbox.Maildir(self.server.maildir, factory=None, create=False))
        self.assertEqual(msg["X-Original-To"], "Old+alias@Example.NET")

    def test_orcpt_same_as_rcpt_writes_nothing(self):
        self.send([RCPT], rcpt_options=[f"ORCPT=rfc822;{RCPT}"])
        [data] = self.stored()
        self.assertEqual(strip_original_to(data)[0], None)
        self.assertStored(data, SENDER, BODY, rcpt=RCPT)

    def test_several_rcpts_get_no_header(self):
        # One file serves every mailbox: no recipient sees another's original address.
        self.send([RCPT, "c@example.org"], rcpt_options=["ORCPT=rfc822;old@example.net"])
        [data] = self.stored()
        self.assertEqual(strip_original_to(data)[0], None)

    def test_bad_values_501(self):
        s = self.smtp()
        for options in (["RET=ALL"], ["ENVID=a+2x"], ["ENVID=" + "x" * 101], ["RET=FULL", "RET=HDRS"]):
            code, msg = s.mail(SENDER, options)
            self.assertEqual((code, msg[:5]), (501, b"5.5.4"), options)
        self.assertEqual(s.mail(SENDER, ["RET=FULL"])[0], 250)
        for options in (["NOTIFY=NEVER,DELAY"], ["ORCPT=rfc822;a+0Ab@x.example"],
                        ["ORCPT=rfc822"], ["NOTIFY=DELAY", "NOTIFY=DELAY"]):
            code, msg = s.rcpt(RCPT, options)
            self.assertEqual((code, msg[:5]), (501, b"5.5.4"), options)


class DsnAcceptedMbox(Smtp):
    sink = None
    server_args = ("--mbox", "mail/{user}", "--accept-dsn")

    def test_orcpt_stored_in_mbox(self):
        s = self.smtp()
        self.assertEqual(s.sendmail(SENDER, ["alice@example.com"], BODY,
                                    rcpt_options=["ORCPT=rfc822;alias@example.com"]), {})
        s.quit()
        mb = mailbox.mbox(os.path.join(self.server.dir, "mail", "alice"), create=False)
        self.addCleanup(mb.close)
        [msg] = list(mb)
        self.assertEqual(msg["X-Original-To"], "alias@example.com")
        self.assertTrue(mb.get_bytes(0).startswith(
            b"Return-Path: <a@example.com>\nX-Original-To: alias@example.com\nReceived: "))


if __name__ == "__main__":
    harness.main()
