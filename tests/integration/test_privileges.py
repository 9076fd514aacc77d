"""The production start (issue 9 item 3): started as root with --user nobody on
fresh paths, as a packaged MX on port 25 starts, everything inboxd creates
(Maildirs, a template's folders, mbox files, the spool, the state folder and
the self-signed certificate and key) belongs to nobody, so deliveries work
after the drop, a SIGHUP (which runs as nobody) reloads, and STARTTLS works
with the reread key. A Maildir left unusable by an earlier start as root makes
the start fail with one clear line instead of a 451 for every message.

Runs only as root (CI does)."""
import os
import pwd
import re
import shutil
import stat
import subprocess
import tempfile
import unittest

import harness
from harness import BIN, HELO, InboxdTestCase

BODY1 = b"Subject: first\r\n\r\nbefore the reload\r\n"
BODY2 = b"Subject: second\r\n\r\nafter the reload, inside TLS\r\n"
# Larger than what an mbox delivery holds in memory, so that it goes through
# the spool folder, which must be nobody's too.
BIG = b"Subject: big\r\n\r\n" + b"".join(b"line %07d of a spooled message\r\n" % i
                                        for i in range(40_000))


@unittest.skipUnless(os.geteuid() == 0, "needs root")
class FreshStartAsRootTest(InboxdTestCase):
    """Each test starts its own server as root with --user nobody; every path
    it is given lies under a root-owned folder (0755, so nobody can reach it)
    and does not exist yet."""

    def setUp(self):
        self.clients = []
        self.nobody = pwd.getpwnam("nobody")
        self.top = tempfile.mkdtemp(prefix="inboxd-it-priv-")
        self.addCleanup(shutil.rmtree, self.top, True)
        os.chmod(self.top, 0o755)
        self.state = os.path.join(self.top, "state")
        self.server = None

    def tearDown(self):
        for c in self.clients:
            c.close()
        if self.server is not None and not self.server.stopped and not self.server.alive():
            self.fail(f"server died during the test (rc={self.server.proc.returncode}); "
                      f"log:\n{self.server.log()}")

    def start(self, *args, sink="maildir"):
        self.server = self.start_server("--user", "nobody", "--state-dir", self.state, *args,
                                        sink=sink, maildir=False, allow_root=False)
        if not self.server.wait_log(rf"running as uid {self.nobody.pw_uid} "):
            self.fail(f"did not drop to nobody; log:\n{self.server.log()}")
        return self.server

    def assertNobodys(self, path, mode=None):
        """path exists, belongs to nobody (user and group), and has `mode` if given."""
        self.assertTrue(os.path.lexists(path), f"{path} was not made")
        st = os.lstat(path)
        self.assertEqual((st.st_uid, st.st_gid), (self.nobody.pw_uid, self.nobody.pw_gid),
                         f"{path} is not nobody's")
        if mode is not None:
            self.assertEqual(stat.S_IMODE(st.st_mode), mode, f"mode of {path}")

    def assertTlsPairNobodys(self):
        self.assertNobodys(self.state)
        self.assertNobodys(os.path.join(self.state, "self-signed-key.pem"), 0o600)
        self.assertNobodys(os.path.join(self.state, "self-signed-cert.pem"))

    def send(self, rcpt, body, tls=False):
        """One message on a new session (inside STARTTLS if `tls`): 250, or the test fails."""
        c = self.ehlo()
        if tls:
            c.starttls()
            self.assertReply(c.cmd("EHLO " + HELO), "250")
        r = None
        self.assertReply(c.cmd("MAIL FROM:<s@example.com>"), "250")
        self.assertReply(c.cmd(f"RCPT TO:<{rcpt}>"), "250")
        self.assertReply(c.cmd("DATA"), "354")
        c.send(harness.stuff(body) + b".\r\n")
        r = c.reply()
        self.assertTrue(harness.QUEUED_RE.match(r.last),
                        f"delivery as nobody refused: {r!r}; log:\n{self.server.log()[-2000:]}")
        return c

    def reload(self):
        line = self.server.reload()
        self.assertIsNotNone(line, "no reload line after SIGHUP")
        self.assertRegex(line, r"\breloaded\b", f"SIGHUP as nobody: {line}")

    def around_reload(self, rcpt, check):
        """Delivers, checks, reloads, delivers again inside STARTTLS, checks again.
        check(n) asserts that n messages are stored, and nobody's."""
        self.assertTlsPairNobodys()
        self.send(rcpt, BODY1)
        check(1)
        self.reload()
        self.send(rcpt, BODY2, tls=True)
        check(2)
        self.assertTlsPairNobodys()

    def maildir_check(self, md):
        def check(n):
            for sub in ("", "tmp", "new", "cur"):
                self.assertNobodys(os.path.join(md, sub))
            names = sorted(os.listdir(os.path.join(md, "new")))
            self.assertEqual(len(names), n, f"messages in {md}/new")
            for name in names:
                self.assertNobodys(os.path.join(md, "new", name))
        return check

    def test_one_maildir(self):
        md = os.path.join(self.top, "var", "maildir")
        self.start("--maildir", md)
        self.assertNobodys(os.path.join(self.top, "var"))
        self.around_reload("r@example.org", self.maildir_check(md))

    def test_maildir_per_user(self):
        tpl = os.path.join(self.top, "var", "mail", "{domain}", "{user}")
        self.start("--maildir", tpl)
        self.assertNobodys(os.path.join(self.top, "var", "mail"))
        self.around_reload("alice@example.org",
                           self.maildir_check(os.path.join(self.top, "var", "mail", "example.org",
                                                           "alice")))
        self.assertNobodys(os.path.join(self.top, "var", "mail", "example.org"))

    def test_mbox(self):
        spool = os.path.join(self.top, "var", "spool")
        mbox = os.path.join(self.top, "var", "mail", "alice")
        self.start("--mbox", os.path.join(self.top, "var", "mail", "{user}"), "--spool-dir", spool,
                   sink=None)
        self.assertNobodys(spool)
        self.assertNobodys(os.path.dirname(mbox))

        def check(n):
            self.assertNobodys(mbox)
            with open(mbox, "rb") as f:
                self.assertEqual(len(re.findall(rb"^From ", f.read(), re.M)), n, "messages in the mbox")
        self.around_reload("alice@example.org", check)
        # A message too large to be held in memory waits in the spool first.
        self.send("alice@example.org", BIG)
        check(3)
        self.assertEqual(os.listdir(spool), [], "a spool file was left behind")

    def test_self_signed_pair_reread_after_sighup(self):
        """The key is only nobody's to read (0600): a SIGHUP, as nobody, rereads it."""
        self.start(sink="null")
        self.assertTlsPairNobodys()
        self.reload()
        c = self.ehlo()
        c.starttls()
        self.assertReply(c.cmd("EHLO " + HELO), "250")
        self.assertReply(c.cmd("NOOP"), "250")

    def test_unreadable_config_file_warned(self):
        """A config file only root can read (here: in a root-only folder) works
        at start, but the next SIGHUP, as nobody, cannot reread it: say so."""
        self.server = self.start_server("--user", "nobody", "--state-dir", self.state,
                                        sink="null", maildir=False, allow_root=False,
                                        config='hostname = "mx.inboxd.test"\n')
        m = self.server.wait_log(r"warning: nobody cannot read the config file (\S+): "
                                 r"Permission denied; a SIGHUP will fail")
        self.assertTrue(m, f"no warning; log:\n{self.server.log()}")
        self.assertEqual(m.group(1), self.server.config_path)
        self.assertRegex(self.server.reload(), r"reload failed")
        self.assertNotRegex(self.server.log(), r"cannot read the TLS", "the TLS pair is nobody's")

    def run_refused(self, *args):
        """Runs the binary as root with --user nobody expecting exit 2 before it
        serves; returns the one line on stderr that is not an info log line."""
        p = subprocess.run([BIN, "--listen", "127.0.0.1:0", "--user", "nobody",
                            "--state-dir", self.state, *args],
                           cwd=self.top, capture_output=True, timeout=10, stdin=subprocess.DEVNULL)
        err = p.stderr.decode("utf-8", "replace")
        self.assertEqual(p.returncode, 2, f"stderr:\n{err}")
        lines = [l for l in err.splitlines()
                 if not re.match(r"^\d{4}-\d\d-\d\dT\S+ inboxd\[\d+\]: info: ", l)]
        self.assertEqual(len(lines), 1, f"expected one error line; stderr:\n{err}")
        return lines[0]

    def test_root_owned_maildir_refused_at_start(self):
        """A Maildir made by an earlier start as root (root, 0700) is not nobody's
        to write: the start fails naming it, rather than a 451 for every message."""
        md = os.path.join(self.top, "maildir")
        for sub in ("", "tmp", "new", "cur"):
            os.makedirs(os.path.join(md, sub), mode=0o700, exist_ok=True)
        line = self.run_refused("--maildir", md)
        self.assertIn(md, line)
        self.assertIn("nobody", line)
        self.assertIn("Permission denied", line)
        # Nothing was handed over that was there before.
        self.assertEqual(os.stat(md).st_uid, 0)

    def test_root_owned_mbox_folder_refused_at_start(self):
        folder = os.path.join(self.top, "mail")
        os.mkdir(folder, 0o700)
        line = self.run_refused("--mbox", os.path.join(folder, "{user}"),
                                "--spool-dir", os.path.join(self.top, "spool"))
        self.assertIn(folder, line)
        self.assertIn("nobody", line)


if __name__ == "__main__":
    harness.main()
