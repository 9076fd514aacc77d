"""One recipient's mailbox failing does not lose the others: the reply is
451 4.3.0 (so the sender retries), every other recipient has the message, and
the log names the mailbox that failed. A mailbox is made to fail by putting a
regular file where its Maildir folder (or a directory where its mbox) should be,
which fails for root too."""
import mailbox
import os

import harness
from harness import InboxdTestCase

BODY = b"From: a@example.net\r\nSubject: partial\r\n\r\nhello\r\n"


class MaildirPartialFailureTest(InboxdTestCase):
    sink = None
    server_args = ("--maildir", "mail/{user}")
    server_kwargs = {"maildir": False}

    def maildir(self, user):
        return os.path.join(self.server.dir, "mail", user)

    def break_mailbox(self, user):
        os.makedirs(os.path.join(self.server.dir, "mail"), exist_ok=True)
        with open(self.maildir(user), "wb") as f:
            f.write(b"not a Maildir\n")

    def send(self, rcpts):
        c = self.ehlo()
        self.assertReply(c.cmd("MAIL FROM:<a@example.net>"), "250")
        for r in rcpts:
            self.assertReply(c.cmd(f"RCPT TO:<{r}>"), "250 2.1.5")
        self.assertReply(c.cmd("DATA"), "354")
        c.send(BODY + b".\r\n")
        return c, c.reply()

    def check(self, rcpts, broken):
        """Sends to `rcpts` with user `broken`'s Maildir broken; checks reply,
        the others' copies and the log."""
        self.break_mailbox(broken)
        c, reply = self.send(rcpts)
        self.assertReply(reply, "451 4.3.0", f"want 451 4.3.0 when one mailbox fails, got {reply!r}")
        for r in rcpts:
            user = r.split("@")[0]
            if user == broken:
                continue
            files = self.stored(self.maildir(user))
            self.assertEqual(len(files), 1,
                             f"{user} did not get the message when {broken}'s mailbox failed")
            self.assertStored(files[0], "a@example.net", BODY)
        with open(self.maildir(broken), "rb") as f:
            self.assertEqual(f.read(), b"not a Maildir\n")
        self.assertIsNotNone(
            self.server.wait_log(rf"^.*\bmailbox={broken}@example\.com\b.*not stored.*$"),
            f"the log does not name the failing mailbox:\n{self.server.log()}")
        # No tmp/ file left behind in any Maildir.
        for r in rcpts:
            tmp = os.path.join(self.maildir(r.split("@")[0]), "tmp")
            if os.path.isdir(tmp):
                self.assertEqual(os.listdir(tmp), [], tmp)
        return c

    def test_failing_mailbox_last(self):
        self.check(["alice@example.com", "bob@example.com"], broken="bob")

    def test_failing_mailbox_first(self):
        """The first recipient's Maildir is where the message is staged: when it
        fails, the message must still reach the others."""
        self.check(["bob@example.com", "alice@example.com", "carol@example.com"], broken="bob")

    def test_only_failing_mailbox_logged(self):
        self.check(["alice@example.com", "bob@example.com"], broken="bob")
        self.assertNotRegex(self.server.log(), r"mailbox=alice@")

    def test_session_goes_on_after_partial_failure(self):
        c = self.check(["alice@example.com", "bob@example.com"], broken="bob")
        os.unlink(self.maildir("bob"))
        self.deliver(c, "a@example.net", ["alice@example.com", "bob@example.com"], BODY)
        self.assertEqual(len(self.stored(self.maildir("bob"))), 1)
        self.assertEqual(len(self.stored(self.maildir("alice"))), 2)


class MboxPartialFailureTest(InboxdTestCase):
    sink = None
    server_args = ("--mbox", "mail/{user}")

    def mbox(self, user):
        return os.path.join(self.server.dir, "mail", user)

    def test_failing_mbox(self):
        for rcpts in (["alice@example.com", "bob@example.com"],
                      ["bob@example.com", "carol@example.com"]):
            os.makedirs(self.mbox("bob"), exist_ok=True)     # a folder where the file goes
            c = self.ehlo()
            self.assertReply(c.cmd("MAIL FROM:<a@example.net>"), "250")
            for r in rcpts:
                self.assertReply(c.cmd(f"RCPT TO:<{r}>"), "250 2.1.5")
            self.assertReply(c.cmd("DATA"), "354")
            c.send(BODY + b".\r\n")
            reply = c.reply()
            self.assertReply(reply, "451 4.3.0", f"got {reply!r}")
        for user in ("alice", "carol"):
            mb = mailbox.mbox(self.mbox(user), create=False)
            try:
                [msg] = [mb.get_bytes(k) for k in mb.iterkeys()]
            finally:
                mb.close()
            self.assertStored(msg, "a@example.net", BODY)
        self.assertIsNotNone(self.server.wait_log(r"mailbox=bob@example\.com\b.*not stored"),
                             self.server.log())


if __name__ == "__main__":
    harness.main()
