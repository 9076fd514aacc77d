"""LIMITS (RFC 9422), REQUIRETLS (RFC 8689) and the DSN parameters (RFC 3461)
with Python's smtplib, its mail_options and rcpt_options: what EHLO offers,
that the server keeps to it, what the log line and the stored message say."""
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


if __name__ == "__main__":
    harness.main()
