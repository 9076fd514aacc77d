"""The order of a Maildir delivery, seen through strace on the running server
(issue 10), for --maildir-sync fsync and syncfs: for every message, its bytes
are written, then a sync begins and ends, then its link into new/ is made, then
a sync that began after that link ends, and only then is its 250 written. A
crash cannot be had in a test; this shows the order that makes one harmless.
The syncs of new/ run in the sync stage (pooled_delivery.hpp), shared by the
messages that linked meanwhile; with two Maildirs per message, each 250 waits
for a sync of each new/. Skips when strace is missing or may not attach."""
import os
import re
import shutil
import threading
import unittest

import harness
from harness import InboxdTestCase

THREADS = 4
MESSAGES = 5  # per thread: concurrent deliveries share their syncs
BODY = b"Subject: sync order\r\n\r\nhello\r\n"

# "PID call(args) = ret", split by strace -f into "call(args <unfinished ...>"
# and "<... call resumed>rest) = ret". The order of the lines is the order of
# the events, so no time stamps are needed.
LINE_RE = re.compile(r"^(\d+)\s+(?:<\.\.\. (\w+) resumed>|(\w+)\()(.*)$")


def parse(trace):
    """[(call, text, start, end)]: each call with its arguments and result, and the
    indexes of the lines where it began and ended (strace prints them in order)."""
    calls, open_calls = [], {}
    for i, line in enumerate(trace.splitlines()):
        m = LINE_RE.match(line)
        if not m:
            continue
        pid, resumed, name, rest = m.groups()
        if resumed:
            name, text, start = open_calls.pop(pid)
            calls.append((name, text + rest, start, i))
        elif rest.endswith("<unfinished ...>"):
            open_calls[pid] = (name, rest[: -len("<unfinished ...>")].rstrip(), i)
        else:
            calls.append((name, rest, i, i))
    return calls


class SyncOrderTest(InboxdTestCase):
    mode = "fsync"
    users = None  # None: one Maildir for all; else each message goes to each user's

    def setUp(self):
        if not shutil.which("strace"):
            raise unittest.SkipTest("strace not found")
        self.server_args = ("--maildir-sync", self.mode)
        if self.users:
            self.server_args += ("--maildir", "mail/{user}")
            self.server_kwargs = {"maildir": False}
        super().setUp()
        if self.users:
            self.boxes = [os.path.realpath(os.path.join(self.server.dir, "mail", u))
                          for u in self.users]
            self.named = [f"mail/{u}" for u in self.users]  # as the server names them
        else:
            self.boxes = [os.path.realpath(self.server.maildir)]
            self.named = self.boxes
        self.trace = os.path.join(self.server.dir, "strace.log")
        self.stop_strace = harness.attach_strace(
            self, self.server.proc.pid, self.trace, "-s", "200", "-e",
            "trace=write,writev,fsync,fdatasync,syncfs,link,linkat,rename,renameat,renameat2")

    def is_sync(self, call, path):
        """Whether call is a sync that covers path (a file, or the folder new/)."""
        name, text = call[0], call[1]
        if self.mode == "syncfs":
            return name == "syncfs" and text.rstrip().endswith("= 0")
        # The file's data may be synced with fdatasync, a folder with fsync.
        return name in ("fsync", "fdatasync") and \
            re.match(rf"\d+<{re.escape(path)}>\)\s+= 0$", text) is not None

    def test_every_250_follows_a_sync_begun_after_its_link(self):
        errors = []

        def send(tid):
            try:
                c = self.ehlo()
                rcpts = [f"{u}@example.com" for u in self.users] if self.users \
                    else [f"t{tid}@example.com"]
                for _ in range(MESSAGES):
                    self.deliver(c, "a@example.net", rcpts, BODY)
            except Exception as e:   # reported below, from the main thread
                errors.append(e)

        threads = [threading.Thread(target=send, args=(t,)) for t in range(THREADS)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(2 * harness.TIMEOUT)
        self.assertEqual(errors, [])
        self.stop_strace()
        with open(self.trace) as f:
            calls = parse(f.read())
        # (A Maildir made for its first message has its folders fsynced in
        # their parents in either mode: only messages and new/ count here.)
        others = ("fsync", "fdatasync") if self.mode == "syncfs" else ("syncfs",)
        def of_message(text):
            return any(f"<{box}/new>" in text or f"<{box}/tmp/" in text for box in self.boxes)
        self.assertFalse([c for c in calls if c[0] in others
                          and (self.mode == "fsync" or of_message(c[1]))],
                         f"{others} used in mode {self.mode}")
        syncs = [c for c in calls if c[0] in ("fsync", "fdatasync", "syncfs")]

        # The message is written once, in the first Maildir's tmp/.
        stored = harness.read_files(os.path.join(self.boxes[0], "new"))
        self.assertEqual(len(stored), THREADS * MESSAGES)
        for name, data in stored.items():
            with self.subTest(file=name):
                qid = harness.parse_stored(data)["id"]
                tmp = f"{self.boxes[0]}/tmp/{name.split(',S=')[0]}"
                # Its last write, and the write of its 250.
                of_tmp = re.compile(rf"\d+<{re.escape(tmp)}>")
                written = max(c[3] for c in calls if c[0] == "write" and of_tmp.match(c[1]))
                replied = [c[2] for c in calls if c[0] in ("write", "writev")
                           and f"queued as {qid}\\r\\n" in c[1]]
                self.assertEqual(len(replied), 1, f"not one 250 for {qid}")
                replied = replied[0]
                # The data's sync ends before the first link begins.
                links = []
                for box in self.named:
                    new = f"{box}/new/{name}"
                    linked = [c for c in calls if c[0] in ("link", "linkat", "rename", "renameat",
                                                           "renameat2") and f'"{new}"' in c[1]
                              and c[1].rstrip().endswith("= 0")]
                    self.assertEqual(len(linked), 1, f"not one link into {box}/new/: {linked}")
                    links.append(linked[0])
                first_link = min(c[2] for c in links)
                self.assertLess(written, first_link)
                self.assertTrue(any(self.is_sync(s, tmp) and written < s[2] and s[3] < first_link
                                    for s in syncs),
                                f"{name}: no {self.mode} of its data between its write and link")
                # Each new/ is synced by a sync begun after its link, ended before the 250.
                for box, linked in zip(self.boxes, links):
                    self.assertTrue(any(self.is_sync(s, f"{box}/new") and linked[3] < s[2]
                                        and s[3] < replied for s in syncs),
                                    f"{name}: no {self.mode} of {box}/new begun after its link "
                                    f"ended before its 250")


class SyncfsOrderTest(SyncOrderTest):
    mode = "syncfs"


class TwoMaildirsSyncOrderTest(SyncOrderTest):
    """Each message to two Maildirs: staged in both tmp/, linked into both new/,
    and answered only after an fsync of each new/ begun after its link."""
    users = ("alice", "bob")


class TwoMaildirsSyncfsOrderTest(TwoMaildirsSyncOrderTest):
    mode = "syncfs"


if __name__ == "__main__":
    harness.main()
