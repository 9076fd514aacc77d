"""The README's worked example, end to end: inboxd as the inbound MX in
front of Dovecot, asking postgrey (a policy service) at each RCPT and
opendkim (a milter) about each message, and handing it over LMTP to
Dovecot, whose IMAP server then reads it back.

The first attempt is greylisted with postgrey's own 450 4.2.0 and nothing
is stored; after the delay the retry is accepted, and the 250 is Dovecot's
(there is no queue between): the message Dovecot serves over IMAP carries
postgrey's X-Greylist header and opendkim's DKIM-Signature, which verifies.
A mailbox Dovecot does not know passes postgrey and gets Dovecot's own 550
5.1.1 back at the end of the data. Needs root (Dovecot, postgrey's user)."""
import os
import shutil
import time
import unittest

import harness
import peers
from harness import InboxdTestCase

BODY = (b"From: Alice <alice@example.com>\r\nTo: bob@inboxd.test\r\nSubject: the chain\r\n"
        b"Date: Wed, 2 Dec 2026 12:00:00 +0000\r\n\r\nhello through the chain\r\n"
        b".a line with a dot\r\n")


@unittest.skipUnless(shutil.which("opendkim") and os.path.exists("/usr/sbin/postgrey"),
                     "needs opendkim, opendkim-tools and postgrey (./dev installs them)")
class WorkedExampleTest(InboxdTestCase):
    server_at_setup = False

    def setUp(self):
        super().setUp()
        self.dovecot = peers.Dovecot()
        self.addCleanup(self.dovecot.stop)
        grey = peers.start_postgrey(self, delay=2)
        dkim, self.public, self.dkim_dir = peers.start_opendkim(self, mode="sv")
        self.server = self.start_server(
            "--domain", "inboxd.test",
            "--policy-service", f"inet:127.0.0.1:{grey}",
            "--milter", f"inet:127.0.0.1:{dkim}",
            "--lmtp-to", f"unix:{self.dovecot.lmtp_socket}",
            sink="lmtp", maildir=False)

    def send(self, rcpt):
        """One message to rcpt, the RCPT accepted; returns the reply to the data."""
        c = self.ehlo()
        self.assertReply(c.cmd("MAIL FROM:<alice@example.com>"), "250")
        self.assertReply(c.cmd(f"RCPT TO:<{rcpt}>"), "250")
        self.assertReply(c.cmd("DATA"), "354")
        c.send(harness.stuff(BODY) + b".\r\n")
        r = c.reply()
        self.assertReply(c.cmd("QUIT"), "221")
        return r.last

    def test_greylisted_then_signed_and_stored_by_dovecot(self):
        c = self.ehlo()
        self.assertReply(c.cmd("MAIL FROM:<alice@example.com>"), "250")
        for rcpt in ("bob@inboxd.test", "carol@inboxd.test"):
            r = c.cmd(f"RCPT TO:<{rcpt}>")
            self.assertTrue(r.last.startswith(
                f"450 4.2.0 <{rcpt}>: Recipient address rejected: Greylisted"), r.last)
        self.assertReply(c.cmd("QUIT"), "221")
        self.assertEqual(self.dovecot.imap_messages("bob"), [])

        time.sleep(3)  # postgrey's --delay
        reply = self.send("bob@inboxd.test")
        self.assertRegex(reply, r"^250 2\.0\.0 ", self.server.log())
        msgs = self.dovecot.imap_messages("bob")
        self.assertEqual(len(msgs), 1, self.dovecot.log())
        stored = msgs[0]
        self.assertIn(b"\r\nX-Greylist: delayed ", stored)
        self.assertIn(b"DKIM-Signature:", stored)
        self.assertIsNone(peers.dkim_verify(stored, self.public, self.dkim_dir))
        self.assertTrue(stored.endswith(b"\r\n\r\nhello through the chain\r\n.a line with a dot\r\n"),
                        stored[-120:])

        # carol passed postgrey too, but Dovecot has no such user: its reply comes back.
        reply = self.send("carol@inboxd.test")
        self.assertRegex(reply, r"^550 5\.1\.1 .*carol@inboxd\.test", self.server.log())
        log = self.server.log()
        self.assertRegex(log, r"filters=\(.*policy")
        self.assertRegex(log, r"hop=\(.*carol@inboxd\.test")


if __name__ == "__main__":
    harness.main()
