"""Dovecot IMAP reads what inboxd stores, in Maildir and in mbox.

inboxd runs as an unprivileged user (setpriv), so that what it stores is owned
by the user Dovecot runs as; Dovecot's one-shot `imap` binary serves one
pre-authenticated session on stdin/stdout (no daemon), driven by Python's
imaplib.IMAP4_stream. Each message fetched with BODY.PEEK[] must be exactly
what was sent plus our Return-Path and Received headers, with CRLF line ends.
Needs root (to switch users) and Debian's dovecot-imapd; skips otherwise.
"""
import imaplib
import os
import pwd
import re
import shlex
import shutil
import smtplib
import tempfile
import unittest

import harness
from harness import HELO, InboxdTestCase

DOVECOT_IMAP = "/usr/lib/dovecot/imap"
RUN_AS = "nobody"

BODIES = [
    b"From: Alice <a@example.com>\r\nSubject: m0 plain\r\n\r\nHello,\r\n\r\n  indented\r\nbye\r\n",
    b"Subject: m1 dots\r\n\r\n.leading dot\r\n..two dots\r\n.\r\nend\r\n",
    b"Subject: m2 no final newline\r\n\r\nno newline",
    ("Subject: m3 8bit\r\nContent-Type: text/plain; charset=utf-8\r\n"
     "Content-Transfer-Encoding: 8bit\r\n\r\ncaf\u00e9 \u2713\r\n").encode(),
    b"Subject: m4 long line\r\n\r\n" + b"x" * 990 + b"\r\nshort\r\n",
    b"Subject: m5 big\r\n\r\n" + b"0123456789abcdef" * 4 + b"\r\n" * 1 +
    (b"line of a big message, padding padding padding padding\r\n" * 6000),
    b"Subject: m6 blank tail\r\n\r\nbody\r\n\r\n\r\n",
]
FROM_BODY = b"Subject: m7 from lines\r\n\r\nFrom the start\r\n>From quoted\r\n>>From twice\r\nend\r\n"


def quote(data):
    return re.sub(rb"(?m)^(>*From )", rb">\1", data)


def skip_reason():
    if os.geteuid() != 0:
        return "needs root: inboxd and Dovecot run as the user 'nobody' through setpriv"
    if not os.access(DOVECOT_IMAP, os.X_OK):
        return (f"Dovecot's imap binary {DOVECOT_IMAP} not found: "
                "install Debian's dovecot-imapd (./dev installs it)")
    if not shutil.which("setpriv"):
        return "setpriv (util-linux) not found"
    try:
        pwd.getpwnam(RUN_AS)
    except KeyError:
        return f"no user {RUN_AS!r} to run Dovecot as"
    return None


@unittest.skipIf(skip_reason(), skip_reason() or "")
class DovecotTestBase(InboxdTestCase):
    sink = None

    def setUp(self):
        pw = pwd.getpwnam(RUN_AS)
        self.uid, self.gid = pw.pw_uid, pw.pw_gid
        self.server_kwargs = dict(self.server_kwargs, run_as=(self.uid, self.gid))
        super().setUp()
        self.dovecot_dir = tempfile.mkdtemp(prefix="inboxd-dovecot-")
        self.addCleanup(shutil.rmtree, self.dovecot_dir, True)
        os.chmod(self.dovecot_dir, 0o755)
        os.chown(self.dovecot_dir, self.uid, self.gid)
        self.dovecot_log = os.path.join(self.dovecot_dir, "imap.log")

    def send(self, body, rcpts=("alice@example.com",), sender="a@example.com"):
        s = smtplib.SMTP("127.0.0.1", self.server.port, local_hostname=HELO,
                         timeout=harness.TIMEOUT)
        try:
            self.assertEqual(s.sendmail(sender, list(rcpts), body), {})
            s.quit()
        finally:
            s.close()

    def imap(self, mail_location, user="alice"):
        """A pre-authenticated IMAP session with Dovecot as RUN_AS, USER=user."""
        conf = os.path.join(self.dovecot_dir, "dovecot.conf")
        with open(conf, "w") as f:
            f.write(f"mail_location = {mail_location}\nssl = no\n"
                    f"base_dir = {self.dovecot_dir}/run\nstate_dir = {self.dovecot_dir}/state\n")
        os.chmod(conf, 0o644)
        home = os.path.join(self.dovecot_dir, "home")
        cmd = ["timeout", "30", "setpriv", f"--reuid={self.uid}", f"--regid={self.gid}",
               "--clear-groups", "env", "-i", f"USER={user}", f"HOME={home}",
               "PATH=/usr/bin:/bin", DOVECOT_IMAP, "-c", conf]
        im = imaplib.IMAP4_stream(shlex.join(cmd) + " 2>>" + shlex.quote(self.dovecot_log))
        self.addCleanup(self._close_imap, im)
        self.assertEqual(im.state, "AUTH", "Dovecot did not start a pre-authenticated session")
        return im

    @staticmethod
    def _close_imap(im):
        try:
            im.logout()
        except Exception:   # noqa: BLE001 - already gone
            pass
        try:
            im.process.kill()
            im.process.wait(5)
        except Exception:   # noqa: BLE001
            pass

    def fetch_all(self, im):
        """{subject token: (bytes of BODY[], RFC822.SIZE)} of every message in INBOX."""
        typ, data = im.select("INBOX", readonly=True)
        self.assertEqual(typ, "OK", data)
        count = int(data[0])
        if count == 0:
            return {}
        typ, data = im.fetch(f"1:{count}", "(RFC822.SIZE BODY.PEEK[])")
        self.assertEqual(typ, "OK", data)
        out = {}
        for item in data:
            if not isinstance(item, tuple):
                continue
            meta, body = item
            size = int(re.search(rb"RFC822\.SIZE (\d+)", meta).group(1))
            m = re.search(rb"(?m)^Subject: (m\d+)", body)
            self.assertIsNotNone(m, body[:300])
            self.assertNotIn(m.group(1), out, "message seen twice")
            out[m.group(1)] = (body, size)
        self.assertEqual(len(out), count)
        return out

    def assertImapMessage(self, fetched, size, sent, rcpt="alice@example.com"):
        """BODY[] = Return-Path + Received + what was sent, all with CRLF line ends."""
        lf = fetched.replace(b"\r\n", b"\n")
        self.assertEqual(lf.replace(b"\n", b"\r\n"), fetched, "a line end that is not CRLF")
        if not sent.endswith(b"\r\n"):
            sent += b"\r\n"     # smtplib ends the last line before the dot
        self.assertStored(lf, "a@example.com", sent, rcpt=rcpt)
        self.assertEqual(size, len(fetched), "RFC822.SIZE is not the size of BODY[]")

    def assertDovecotQuiet(self):
        log = ""
        if os.path.exists(self.dovecot_log):
            with open(self.dovecot_log, errors="replace") as f:
                log = f.read()
        self.assertNotRegex(log, r"(?i)\b(error|panic|fatal|corrupt)", log)


class DovecotMaildirTest(DovecotTestBase):
    server_args = ("--maildir", "mail/{user}")
    server_kwargs = {"maildir": False}

    def location(self):
        return f"maildir:{self.server.dir}/mail/%u"

    def test_files_owned_by_the_user(self):
        self.send(BODIES[0])
        new = os.path.join(self.server.dir, "mail", "alice", "new")
        for p in (new, *(os.path.join(new, n) for n in os.listdir(new))):
            self.assertEqual(os.stat(p).st_uid, self.uid, p)

    def test_every_message_byte_for_byte(self):
        for body in BODIES + [FROM_BODY]:
            self.send(body)
        got = self.fetch_all(self.imap(self.location()))
        self.assertEqual(len(got), len(BODIES) + 1)
        for body in BODIES + [FROM_BODY]:
            token = re.search(rb"Subject: (m\d+)", body).group(1)
            fetched, size = got[token]
            self.assertImapMessage(fetched, size, body)
        self.assertDovecotQuiet()

    def test_hard_linked_copies_for_two_users(self):
        self.send(BODIES[0], rcpts=("alice@example.com", "bob@example.com"))
        for user in ("alice", "bob"):
            got = self.fetch_all(self.imap(self.location(), user=user))
            self.assertEqual(list(got), [b"m0"], user)
            fetched, size = got[b"m0"]
            self.assertImapMessage(fetched, size, BODIES[0], rcpt=None)
        self.assertDovecotQuiet()

    def test_new_mail_after_dovecot_indexed_the_folder(self):
        self.send(BODIES[0])
        self.assertEqual(list(self.fetch_all(self.imap(self.location()))), [b"m0"])
        self.send(BODIES[1])
        got = self.fetch_all(self.imap(self.location()))
        self.assertEqual(sorted(got), [b"m0", b"m1"])
        self.assertImapMessage(*got[b"m1"], BODIES[1])
        self.assertDovecotQuiet()


class DovecotMboxTest(DovecotTestBase):
    server_args = ("--mbox", "mail/{user}")

    def location(self):
        return f"mbox:{self.dovecot_dir}/mailroot:INBOX={self.server.dir}/mail/alice"

    def test_every_message_byte_for_byte(self):
        for body in BODIES:
            self.send(body)
        got = self.fetch_all(self.imap(self.location()))
        self.assertEqual(len(got), len(BODIES))
        for body in BODIES:
            token = re.search(rb"Subject: (m\d+)", body).group(1)
            self.assertImapMessage(*got[token], body)
        self.assertDovecotQuiet()

    def test_from_lines_message_is_one_message(self):
        """Quoted From lines do not split the message for Dovecot. Dovecot (2.3)
        does not undo mboxrd quoting, so it may show the '>From' lines as
        stored; any other difference is a failure."""
        self.send(BODIES[0])
        self.send(FROM_BODY)
        self.send(BODIES[1])
        got = self.fetch_all(self.imap(self.location()))
        self.assertEqual(sorted(got), [b"m0", b"m1", b"m7"])
        fetched, size = got[b"m7"]
        lf = fetched.replace(b"\r\n", b"\n")
        p = harness.parse_stored(lf)
        self.assertIsNotNone(p, fetched[:300])
        sent = FROM_BODY.replace(b"\r\n", b"\n")
        self.assertIn(p["body"], (sent, quote(sent)), "From lines neither as sent nor as mboxrd")
        self.assertEqual(size, len(fetched))
        self.assertImapMessage(*got[b"m1"], BODIES[1])
        self.assertDovecotQuiet()

    def test_appended_after_dovecot_read_it(self):
        self.send(BODIES[0])
        self.assertEqual(list(self.fetch_all(self.imap(self.location()))), [b"m0"])
        self.send(BODIES[2])
        got = self.fetch_all(self.imap(self.location()))
        self.assertEqual(sorted(got), [b"m0", b"m2"])
        self.assertImapMessage(*got[b"m2"], BODIES[2])
        self.assertDovecotQuiet()



if __name__ == "__main__":
    harness.main()
