"""A multi-recipient message is stored for all its recipients or for none
(issue 9, item 4). When one recipient's mailbox fails, the reply is 451 4.3.0
(452 4.3.1 for a full disk) and no mailbox has the message, so the sender's
retry makes no duplicate; the log names the mailbox that failed. A mailbox is
made to fail in ways that stop root too (CI runs as root, and chmod does not
stop root): a regular file where its Maildir folder, or its tmp/ or new/,
should be; a folder where its mbox file should be."""
import mailbox
import os
import re
import shutil
import unittest

import harness
from harness import InboxdTestCase

BODY = b"From: a@example.net\r\nSubject: partial\r\n\r\nhello\r\n"
ENOTDIR = os.strerror(20)   # "Not a directory"


class MaildirPartialFailureTest(InboxdTestCase):
    sink = None
    server_args = ("--maildir", "mail/{user}")
    server_kwargs = {"maildir": False}

    def maildir(self, user):
        return os.path.join(self.server.dir, "mail", user)

    def make_maildir(self, user):
        for sub in ("tmp", "new", "cur"):
            os.makedirs(os.path.join(self.maildir(user), sub), exist_ok=True)

    def break_mailbox(self, user, where):
        """Puts a regular file where user's Maildir (where=""), or its tmp/ or
        new/ (where="tmp", "new"), should be."""
        if where:
            self.make_maildir(user)
            path = os.path.join(self.maildir(user), where)
            os.rmdir(path)
        else:
            os.makedirs(os.path.join(self.server.dir, "mail"), exist_ok=True)
            path = self.maildir(user)
        with open(path, "wb") as f:
            f.write(b"not a folder\n")
        return path

    def repair_mailbox(self, path):
        os.unlink(path)

    def send(self, c, rcpts, body=BODY):
        self.assertReply(c.cmd("MAIL FROM:<a@example.net>"), "250")
        for r in rcpts:
            self.assertReply(c.cmd(f"RCPT TO:<{r}>"), "250 2.1.5")
        self.assertReply(c.cmd("DATA"), "354")
        c.send(harness.stuff(body) + b".\r\n")
        return c.reply()

    def files_in(self, user, sub):
        path = os.path.join(self.maildir(user), sub)
        return harness.read_files(path) if os.path.isdir(path) else {}

    def assertNowhere(self, users):
        """No Maildir of `users` has anything in new/, tmp/ or cur/."""
        for user in users:
            for sub in ("new", "tmp", "cur"):
                self.assertEqual(self.files_in(user, sub), {},
                                 f"{user}'s {sub}/ has a copy of a message that was refused")

    def check(self, rcpts, broken, where=""):
        """Sends to `rcpts` with user `broken`'s Maildir broken at `where`:
        451 4.3.0, no copy anywhere, the broken mailbox untouched, and the log
        names it with its error. Returns the client and the broken path."""
        path = self.break_mailbox(broken, where)
        c = self.ehlo()
        reply = self.send(c, rcpts)
        self.assertReply(reply, "451 4.3.0",
                         f"want 451 4.3.0 when one mailbox fails, got {reply!r}")
        self.assertNowhere(r.split("@")[0] for r in rcpts)
        with open(path, "rb") as f:
            self.assertEqual(f.read(), b"not a folder\n")
        line = self.server.wait_log(rf"^.*\bmailbox={broken}@example\.com\b.*not stored.*$")
        self.assertIsNotNone(line, f"the log does not name the failing mailbox:\n{self.server.log()}")
        self.assertIn(ENOTDIR, line.group(0), "the failing mailbox's line does not give its error")
        # The others were not stored either, and their lines (if any) do not
        # blame them for the failure.
        for r in rcpts:
            user = r.split("@")[0]
            if user != broken:
                self.assertNotRegex(self.server.log(),
                                    rf"mailbox={user}@example\.com\b.*{ENOTDIR}")
        self.assertIsNotNone(self.server.wait_log(r"status=deferred \(451 4\.3\.0"),
                             self.server.log())
        return c, path

    def test_failing_maildir_last(self):
        self.check(["alice@example.com", "bob@example.com"], broken="bob")

    def test_failing_maildir_first(self):
        """The first recipient's Maildir is where the message is written: when
        it fails, nothing is stored anywhere."""
        self.check(["bob@example.com", "alice@example.com", "carol@example.com"], broken="bob")

    def test_failing_maildir_among_three(self):
        self.check(["alice@example.com", "bob@example.com", "carol@example.com"], broken="bob")

    def test_failing_tmp_folder(self):
        """Staging the copy in bob's tmp/ fails: alice's staged copy goes too."""
        self.check(["alice@example.com", "bob@example.com", "carol@example.com"],
                   broken="bob", where="tmp")

    def test_failing_new_folder_takes_back_published_copies(self):
        """Every copy is staged, then alice's is published into her new/ before
        bob's new/ fails: alice's copy is taken back."""
        self.check(["alice@example.com", "carol@example.com", "bob@example.com"],
                   broken="bob", where="new")

    def test_healthy_recipients_only(self):
        """With bob's mailbox broken, a message for the others alone is stored
        for each of them (250)."""
        self.break_mailbox("bob", "")
        c = self.ehlo()
        rcpts = ["alice@example.com", "carol@example.com", "dave@example.com"]
        self.assertQueued(self.send(c, rcpts))
        for r in rcpts:
            [data] = self.stored(self.maildir(r.split("@")[0]))
            self.assertStored(data, "a@example.net", BODY)

    def test_session_goes_on_after_failure(self):
        """After the 451, the same session delivers the retry once the mailbox
        is repaired, and every recipient has exactly one copy."""
        rcpts = ["alice@example.com", "bob@example.com", "carol@example.com"]
        c, path = self.check(rcpts, broken="bob", where="new")
        self.repair_mailbox(path)
        os.mkdir(path)
        self.assertQueued(self.send(c, rcpts))
        for r in rcpts:
            [data] = self.stored(self.maildir(r.split("@")[0]))
            self.assertStored(data, "a@example.net", BODY)

    def test_big_message_fails_whole(self):
        """A message past the in-memory batch is written to the first tmp/ in
        several steps before the copies are staged: still nothing anywhere."""
        big = b"Subject: big\r\n\r\n" + (b"y" * 70 + b"\r\n") * 8000
        self.break_mailbox("carol", "tmp")
        c = self.ehlo()
        rcpts = ["alice@example.com", "bob@example.com", "carol@example.com"]
        self.assertReply(self.send(c, rcpts, big), "451 4.3.0")
        self.assertNowhere(["alice", "bob", "carol"])

    def test_unique_names_do_not_repeat_after_reload(self):
        """The Q counter of Maildir unique names goes on across a reload (the
        sink is made anew): two messages in one microsecond must not clash."""
        c = self.ehlo()
        self.deliver(c, "a@example.net", ["alice@example.com"], BODY)
        c.close()
        self.server.reload()
        c = self.ehlo()
        self.deliver(c, "a@example.net", ["alice@example.com"], BODY)
        names = sorted(os.listdir(os.path.join(self.maildir("alice"), "new")))
        self.assertEqual(len(names), 2, names)
        qs = sorted(int(re.search(r"Q(\d+)", n).group(1)) for n in names)
        self.assertEqual(len(set(qs)), 2, f"the counter restarted on reload: {names}")


class MaildirOtherFileSystemTest(InboxdTestCase):
    """One recipient's Maildir on another file system (a small tmpfs, linked
    in by a symlink): the copy is made byte by byte (a hard link gives EXDEV),
    and a full disk there gives 452 4.3.1 with nothing stored anywhere. Needs
    root to mount; skips otherwise, like test_disk_full.py."""
    sink = None
    server_args = ("--maildir", "mail/{user}")
    server_kwargs = {"maildir": False}

    def setUp(self):
        from test_disk_full import mount_tmpfs
        self.mnt = mount_tmpfs(self)
        super().setUp()
        os.makedirs(os.path.join(self.server.dir, "mail"), exist_ok=True)
        os.mkdir(os.path.join(self.mnt, "bob"))
        os.symlink(os.path.join(self.mnt, "bob"), os.path.join(self.server.dir, "mail", "bob"))

    def maildir(self, user):
        return os.path.join(self.server.dir, "mail", user)

    def send(self, c, rcpts, body):
        self.assertReply(c.cmd("MAIL FROM:<a@example.net>"), "250")
        for r in rcpts:
            self.assertReply(c.cmd(f"RCPT TO:<{r}>"), "250 2.1.5")
        self.assertReply(c.cmd("DATA"), "354")
        c.send(harness.stuff(body) + b".\r\n")
        return c.reply()

    def test_copy_across_file_systems(self):
        c = self.ehlo()
        rcpts = ["alice@example.com", "bob@example.com", "carol@example.com"]
        self.assertQueued(self.send(c, rcpts, BODY))
        for r in rcpts:
            [data] = self.stored(self.maildir(r.split("@")[0]))
            self.assertStored(data, "a@example.net", BODY)

    def test_full_disk_for_one_recipient(self):
        body = b"Subject: big\r\n\r\n" + (b"z" * 70 + b"\r\n") * 4000   # about 290 KiB
        c = self.ehlo()
        # A first message makes bob's Maildir; then ballast fills his disk.
        self.assertQueued(self.send(c, ["bob@example.com"], BODY))
        with open(os.path.join(self.mnt, "ballast"), "wb") as f:
            f.write(b"\0" * (1024 * 1024 - 128 * 1024))
        for rcpts in (["alice@example.com", "bob@example.com", "carol@example.com"],
                      ["bob@example.com", "alice@example.com"]):
            reply = self.send(c, rcpts, body)
            self.assertReply(reply, "452 4.3.1", f"want 452 4.3.1 for a full disk, got {reply!r}")
            self.assertEqual(self.files_count("alice"), 0)
            self.assertEqual(self.files_count("carol"), 0)
            self.assertEqual(len(self.stored(self.maildir("bob"))), 1)
        self.assertIsNotNone(
            self.server.wait_log(rf"mailbox=bob@example\.com\b.*not stored: {os.strerror(28)}"),
            self.server.log())

    def files_count(self, user):
        n = 0
        for sub in ("new", "tmp", "cur"):
            path = os.path.join(self.maildir(user), sub)
            if os.path.isdir(path):
                n += len(os.listdir(path))
        return n


class MaildirDurabilityTest(InboxdTestCase):
    """A new Maildir's folders reach the disk before its first message is
    acknowledged (issue 9, item 5): each folder made is fsynced into its
    parent. Seen through strace attached to the running server (skips when
    strace is missing or may not attach); a crash cannot be had in a test."""
    sink = None
    server_args = ("--maildir", "mail/{user}")
    server_kwargs = {"maildir": False}

    def setUp(self):
        if not shutil.which("strace"):
            raise unittest.SkipTest("strace not found")
        super().setUp()
        self.trace = os.path.join(self.server.dir, "strace.log")
        self.stop_strace = harness.attach_strace(self, self.server.proc.pid, self.trace,
                              "-e", "trace=mkdir,mkdirat,fsync,link,linkat")

    def test_new_maildirs_are_fsynced_into_their_parents(self):
        c = self.ehlo()
        self.deliver(c, "a@example.net", ["alice@example.com", "bob@example.com"], BODY)
        self.stop_strace()
        with open(self.trace) as f:
            trace = f.read()
        top = os.path.realpath(self.server.dir)
        for user in ("alice", "bob"):
            for made, parent in ((f"mail/{user}", "mail"), (f"mail/{user}/new", f"mail/{user}")):
                m = re.search(rf'mkdir(?:at)?\((?:[^,]*, )?"(?:{re.escape(top)}/)?{made}", .*\)\s+= 0',
                              trace)
                self.assertIsNotNone(m, f"no mkdir of {made} in the trace:\n{trace}")
                fsync = re.compile(rf"fsync\(\d+<{re.escape(top)}/{parent}>")
                self.assertRegex(trace[m.end():], fsync,
                                 f"{made} was made but {parent} not fsynced after:\n{trace}")


class MboxPartialFailureTest(InboxdTestCase):
    sink = None
    server_args = ("--mbox", "mail/{user}")

    def mbox(self, user):
        return os.path.join(self.server.dir, "mail", user)

    def messages(self, user):
        if not os.path.exists(self.mbox(user)):
            return []
        mb = mailbox.mbox(self.mbox(user), create=False)
        try:
            return [mb.get_bytes(k) for k in mb.iterkeys()]
        finally:
            mb.close()

    def send(self, c, rcpts):
        self.assertReply(c.cmd("MAIL FROM:<a@example.net>"), "250")
        for r in rcpts:
            self.assertReply(c.cmd(f"RCPT TO:<{r}>"), "250 2.1.5")
        self.assertReply(c.cmd("DATA"), "354")
        c.send(BODY + b".\r\n")
        return c.reply()

    def test_failing_mbox(self):
        """A folder where bob's mbox file should be: 451, and no mbox has the
        message (alice's and carol's go back to what they were)."""
        c = self.ehlo()
        # Alice and carol already have one message each: the failed one must
        # not be appended after it, nor the file cut short.
        self.assertQueued(self.send(c, ["alice@example.com", "carol@example.com"]))
        sizes = {u: os.path.getsize(self.mbox(u)) for u in ("alice", "carol")}
        os.makedirs(self.mbox("bob"))     # a folder where the file goes
        for rcpts in (["alice@example.com", "bob@example.com"],
                      ["bob@example.com", "carol@example.com"],
                      ["alice@example.com", "bob@example.com", "carol@example.com"]):
            reply = self.send(c, rcpts)
            self.assertReply(reply, "451 4.3.0", f"got {reply!r}")
            for user in ("alice", "carol"):
                self.assertEqual(os.path.getsize(self.mbox(user)), sizes[user],
                                 f"{user}'s mbox changed for a message that was refused ({rcpts})")
        self.assertEqual(os.listdir(self.mbox("bob")), [], "the broken mailbox was written to")
        for user in ("alice", "carol"):
            [msg] = self.messages(user)
            self.assertStored(msg, "a@example.net", BODY)
        self.assertIsNotNone(self.server.wait_log(r"mailbox=bob@example\.com\b.*not stored"),
                             self.server.log())

    def test_healthy_mboxes_only(self):
        os.makedirs(self.mbox("bob"))
        c = self.ehlo()
        self.assertQueued(self.send(c, ["alice@example.com", "carol@example.com"]))
        for user in ("alice", "carol"):
            [msg] = self.messages(user)
            self.assertStored(msg, "a@example.net", BODY)


if __name__ == "__main__":
    harness.main()
