"""A full disk (ENOSPC) gives 452 4.3.1 and leaves nothing partial, in Maildir
and in mbox. The test mounts a 1 MiB tmpfs (needs root and a kernel that lets
it mount: skips with the reason otherwise) and always unmounts it."""
import mailbox
import os
import re
import shutil
import subprocess
import tempfile
import unittest

import harness
from harness import InboxdTestCase

SIZE = "1m"


def mount_tmpfs(test):
    """Mounts a small tmpfs in a temp dir, or skips the test with the reason.
    The unmount is registered as a cleanup. Returns the mount point."""
    if os.geteuid() != 0:
        raise unittest.SkipTest("disk-full tests need root to mount a small tmpfs")
    if not shutil.which("mount") or not shutil.which("umount"):
        raise unittest.SkipTest("mount/umount not found")
    top = tempfile.mkdtemp(prefix="inboxd-full-")
    test.addCleanup(shutil.rmtree, top, True)
    mnt = os.path.join(top, "mnt")
    os.mkdir(mnt)
    try:
        r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={SIZE},mode=0700", "tmpfs", mnt],
                           capture_output=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise unittest.SkipTest(f"cannot mount a tmpfs: {e}")
    if r.returncode != 0:
        raise unittest.SkipTest("cannot mount a tmpfs here (a container without CAP_SYS_ADMIN?): "
                                + r.stderr.decode(errors="replace").strip())

    def umount():
        r = subprocess.run(["umount", mnt], capture_output=True, timeout=10)
        if r.returncode != 0:   # still busy: detach it, so that nothing stays mounted
            subprocess.run(["umount", "-l", mnt], capture_output=True, timeout=10)
    test.addCleanup(umount)
    return mnt


def message(tag, size):
    """A message of about `size` bytes whose Subject is `tag` (bytes)."""
    head = b"Subject: " + tag + b"\r\n\r\n"
    line = tag + b" " + b"z" * 60 + b"\r\n"
    return head + line * max(1, (size - len(head)) // len(line))


class DiskFullBase(InboxdTestCase):
    sink = None

    def setUp(self):
        self.mnt = mount_tmpfs(self)      # unmounted after the server is stopped
        self.server_args = self.sink_args()
        super().setUp()

    def send_until_full(self, c, size, limit=30):
        """Sends messages of `size` bytes on `c` until one is refused. Returns
        ({tag: body} of those stored, the refusing reply, its body)."""
        stored = {}
        for i in range(limit):
            tag = b"m%02d" % i
            body = message(tag, size)
            self.assertReply(c.cmd("MAIL FROM:<a@example.com>"), "250")
            self.assertReply(c.cmd("RCPT TO:<alice@example.com>"), "250")
            self.assertReply(c.cmd("DATA"), "354")
            c.send(body + b".\r\n")
            r = c.reply()
            if r.code != 250:
                return stored, r, body
            stored[tag] = body
        self.fail(f"{limit} messages of {size} bytes fit in a {SIZE} tmpfs?")

    def assertNoSpace(self, reply):
        self.assertReply(reply, "452 4.3.1", f"want '452 4.3.1' on a full disk, got {reply!r}")

    def ballast(self, size):
        """A file that takes `size` bytes of the tmpfs; returns its path."""
        path = os.path.join(self.mnt, "ballast")
        with open(path, "wb") as f:
            f.write(b"\0" * size)
        return path


class MaildirDiskFullTest(DiskFullBase):
    server_kwargs = {"maildir": False}

    def sink_args(self):
        return ("--maildir", os.path.join(self.mnt, "maildir"))

    def maildir(self):
        return os.path.join(self.mnt, "maildir")

    def check_maildir(self, expected):
        """new/ holds exactly the whole messages `expected` ({tag: body}); tmp/ is empty."""
        files = self.stored(self.maildir())     # also: nothing in tmp/ or cur/
        self.assertEqual(len(files), len(expected))
        for data in files:
            p = harness.parse_stored(data)
            self.assertIsNotNone(p, data[:200])
            tag = re.match(rb"Subject: (\S+)", p["body"]).group(1)
            self.assertStored(data, "a@example.com", expected[tag], rcpt="alice@example.com")

    def test_full_disk_452_and_nothing_partial(self):
        c = self.ehlo()
        stored, reply, _ = self.send_until_full(c, 150 * 1024)
        self.assertNoSpace(reply)
        self.assertGreaterEqual(len(stored), 3)
        self.check_maildir(stored)
        self.assertIsNotNone(self.server.wait_log(r"status=deferred \(452 4\.3\.1"), self.server.log())

    def test_big_staged_message_fails_whole(self):
        """Past 256 KiB the message is staged in several writes; the one that
        fills the disk fails, and its tmp/ file is removed."""
        c = self.ehlo()
        stored, reply, _ = self.send_until_full(c, 400 * 1024)
        self.assertNoSpace(reply)
        self.check_maildir(stored)

    def test_message_larger_than_the_disk(self):
        c = self.ehlo()
        self.assertReply(c.cmd("MAIL FROM:<a@example.com>"), "250")
        self.assertReply(c.cmd("RCPT TO:<alice@example.com>"), "250")
        self.assertReply(c.cmd("DATA"), "354")
        c.send(message(b"huge", 1536 * 1024) + b".\r\n")
        self.assertNoSpace(c.reply())
        self.check_maildir({})

    def test_smaller_message_works_after_deleting(self):
        c = self.ehlo()
        stored, reply, _ = self.send_until_full(c, 150 * 1024)
        self.assertNoSpace(reply)
        new = os.path.join(self.maildir(), "new")
        victim = sorted(os.listdir(new))[0]
        with open(os.path.join(new, victim), "rb") as f:
            tag = re.search(rb"(?m)^Subject: (\S+)", f.read()).group(1)
        os.unlink(os.path.join(new, victim))
        del stored[tag]
        small = message(b"small", 20 * 1024)
        # On the same connection: the session goes on after a 452.
        self.deliver(c, "a@example.com", ["alice@example.com"], small)
        stored[b"small"] = small
        self.check_maildir(stored)


class MboxDiskFullTest(DiskFullBase):
    """The spool for big messages is off the tmpfs (var/spool in the server's dir)."""

    def sink_args(self):
        return ("--mbox", os.path.join(self.mnt, "mail", "{user}"))

    def mbox_path(self):
        return os.path.join(self.mnt, "mail", "alice")

    def check_mbox(self, expected):
        """The mbox holds exactly the messages `expected`, in order, each whole."""
        mb = mailbox.mbox(self.mbox_path(), create=False)
        try:
            msgs = [mb.get_bytes(k) for k in mb.iterkeys()]
        finally:
            mb.close()
        self.assertEqual(len(msgs), len(expected))
        for data, body in zip(msgs, expected.values()):
            self.assertStored(data, "a@example.com", body, rcpt="alice@example.com")
        self.assertFalse(os.path.exists(self.mbox_path() + ".lock"), "dotlock left behind")

    def fill(self, size):
        """Sends messages of `size` bytes until one is refused. Returns the client,
        {tag: body} of those stored, the refusing reply, the mbox size before it."""
        c = self.ehlo()
        stored = {}
        for i in range(30):
            tag = b"m%02d" % i
            body = message(tag, size)
            before = os.path.getsize(self.mbox_path()) if os.path.exists(self.mbox_path()) else 0
            self.assertReply(c.cmd("MAIL FROM:<a@example.com>"), "250")
            self.assertReply(c.cmd("RCPT TO:<alice@example.com>"), "250")
            self.assertReply(c.cmd("DATA"), "354")
            c.send(body + b".\r\n")
            r = c.reply()
            if r.code != 250:
                return c, stored, r, before
            stored[tag] = body
        self.fail(f"30 messages of {size} bytes fit in a {SIZE} tmpfs?")

    def test_full_disk_452_mbox_keeps_its_size(self):
        c, stored, reply, before = self.fill(150 * 1024)
        self.assertNoSpace(reply)
        self.assertGreaterEqual(len(stored), 3)
        self.assertEqual(os.path.getsize(self.mbox_path()), before,
                         "the mbox did not go back to its old size")
        self.check_mbox(stored)

    def test_spooled_message_fails_whole(self):
        """Messages past 256 KiB are copied from the spool file at commit."""
        c, stored, reply, before = self.fill(300 * 1024)
        self.assertNoSpace(reply)
        self.assertEqual(os.path.getsize(self.mbox_path()), before)
        self.check_mbox(stored)

    def test_smaller_message_works_after_freeing_space(self):
        ballast = self.ballast(200 * 1024)
        c, stored, reply, before = self.fill(150 * 1024)
        self.assertNoSpace(reply)
        os.unlink(ballast)
        small = message(b"small", 20 * 1024)
        self.deliver(c, "a@example.com", ["alice@example.com"], small)
        stored[b"small"] = small
        self.check_mbox(stored)


del DiskFullBase   # not a test of its own

if __name__ == "__main__":
    harness.main()
