"""The config file and the recipient policy: --check-config, CLI flags over the
file, domains, users, aliases, sub-addressing, postmaster, --domain."""
import os
import re
import shutil
import tempfile
import unittest

import harness
from harness import InboxdTestCase, run_cli

EXAMPLE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..",
                       "inboxd.example.toml")
MSG = b"From: a@example.net\r\nSubject: policy\r\n\r\nhello\r\n"

# The policy every PolicyTest server runs with (paths relative to its temp dir).
POLICY = """
maildir = "mail/{domain}/{user}"
case-insensitive-local-parts = true
sub-address-delimiter = "+"

[[domain]]
name = "example.com"
users = ["alice", "bob"]
aliases = { info = ["alice", "bob"], abuse = "alice" }

[[domain]]
name = "*.example.org"

[[domain]]
name = "catchall.test"
users = ["carol"]
aliases = { "*" = "carol" }
"""


class CheckConfigTest(unittest.TestCase):
    """inboxd --check-config -c FILE: exit 0, or one line FILE:LINE:COL: ... and exit 2."""

    def setUp(self):
        self.dir = tempfile.mkdtemp(prefix="inboxd-cfg-")
        self.addCleanup(shutil.rmtree, self.dir, True)

    def check(self, text, name="inboxd.toml"):
        path = os.path.join(self.dir, name)
        if text is not None:
            with open(path, "w") as f:
                f.write(text)
        return path, run_cli("--check-config", "-c", path)

    def assertOneError(self, path, result):
        """Exit 2, nothing on stdout, exactly one line FILE:LINE:COL: text on stderr.
        Returns (line, column)."""
        self.assertEqual(result.returncode, 2, result)
        self.assertEqual(result.stdout, b"", result)
        lines = result.stderr.decode().splitlines()
        self.assertEqual(len(lines), 1, f"want exactly one line, got {result.stderr!r}")
        m = re.match(rf"^{re.escape(path)}:(\d+):(\d+): \S.*$", lines[0])
        self.assertTrue(m, f"not FILE:LINE:COL: what: {lines[0]!r}")
        return int(m.group(1)), int(m.group(2))

    def test_example_config_is_valid(self):
        r = run_cli("--check-config", "-c", os.path.abspath(EXAMPLE))
        self.assertEqual(r.returncode, 0, r)

    def test_unknown_top_level_key(self):
        path, r = self.check('hostname = "mx.example.com"\n\n  max-recipent = 5\n')
        self.assertEqual(self.assertOneError(path, r), (3, 3))
        self.assertIn(b"max-recipent", r.stderr)

    def test_unknown_key_in_domain_table(self):
        path, r = self.check('[[domain]]\nname = "example.com"\nusers = ["a"]\n'
                             'user = ["b"]\n')
        self.assertEqual(self.assertOneError(path, r), (4, 1))
        self.assertIn(b"'user'", r.stderr)

    def test_unknown_table(self):
        path, r = self.check('hostname = "mx.example.com"\n[tls]\ncert = "x.pem"\n')
        line, col = self.assertOneError(path, r)
        self.assertEqual(line, 2, r.stderr)
        self.assertIn(col, (1, 2), r.stderr)
        self.assertIn(b"tls", r.stderr)

    def test_syntax_error(self):
        path, r = self.check('hostname = "mx.example.com"\n\n\nmax-recipients = = 3\n')
        line, _ = self.assertOneError(path, r)
        self.assertEqual(line, 4, r.stderr)

    def test_unterminated_string(self):
        path, r = self.check('sink = "maildir"\nhostname = "mx.example.com\n')
        line, _ = self.assertOneError(path, r)
        self.assertEqual(line, 2, r.stderr)

    def test_wrong_type(self):
        path, r = self.check('hostname = "mx.example.com"\nmax-recipients = "five"\n')
        line, col = self.assertOneError(path, r)
        self.assertEqual(line, 2, r.stderr)
        self.assertIn(col, (1, 18), "column is neither the key's nor the value's")
        self.assertIn(b"max-recipients", r.stderr)

    def test_wrong_type_in_list(self):
        path, r = self.check('listen = ["127.0.0.1:2525",\n          25]\n')
        line, col = self.assertOneError(path, r)
        self.assertEqual((line, col), (2, 11), r.stderr)

    def test_bad_value(self):
        path, r = self.check('\nbare-newline = "sometimes"\n')
        line, _ = self.assertOneError(path, r)
        self.assertEqual(line, 2, r.stderr)

    def test_zero_limit(self):
        path, r = self.check('max-message-size = 0\n')
        line, _ = self.assertOneError(path, r)
        self.assertEqual(line, 1, r.stderr)

    def test_missing_file(self):
        path, r = self.check(None, name="absent.toml")
        self.assertOneError(path, r)

    def test_issue9_keys(self):
        """recipient-overshoot-limit (0 or more), ipv6-prefix-length (0..128) and
        memory-budget (at least 1) are known keys, checked, as are their flags."""
        path, r = self.check('recipient-overshoot-limit = 0\nipv6-prefix-length = 128\n'
                             'memory-budget = 1048576\n')
        self.assertEqual(r.returncode, 0, r)
        for text, key in (('\nrecipient-overshoot-limit = -1\n', b"recipient-overshoot-limit"),
                          ('\nipv6-prefix-length = 129\n', b"ipv6-prefix-length"),
                          ('\nmemory-budget = 0\n', b"memory-budget")):
            path, r = self.check(text)
            self.assertEqual(self.assertOneError(path, r)[0], 2, r.stderr)
            self.assertIn(key, r.stderr)
        for flag, bad in (("--recipient-overshoot-limit", "-1"), ("--ipv6-prefix-length", "129"),
                          ("--memory-budget", "0")):
            r = run_cli("--check-config", flag, bad)
            self.assertEqual(r.returncode, 2, r)
            self.assertIn(flag.encode(), r.stderr)
            r = run_cli("--check-config", flag, "1")
            self.assertEqual(r.returncode, 0, r)

    def test_flags_checked_too(self):
        """A valid file with a flag that makes the whole invalid (mbox sink, no path)."""
        path, _ = self.check('hostname = "mx.example.com"\n')
        r = run_cli("--check-config", "-c", path, "--sink", "mbox")
        self.assertEqual(r.returncode, 2, r)
        self.assertEqual(len(r.stderr.decode().splitlines()), 1, r.stderr)


class FlagsOverFileTest(InboxdTestCase):
    """The file says 5 recipients and another host name; the flags say 3 and ours."""
    server_args = ("--max-recipients", "3")
    server_kwargs = {"config": 'hostname = "from-the-file.example"\nmax-recipients = 5\n'
                               'listen = ["127.0.0.1:1"]\n'}

    def test_flag_wins_over_file(self):
        c = self.ehlo()     # connect() checks the greeting names --hostname, not the file's
        self.assertReply(c.cmd("MAIL FROM:<a@example.net>"), "250")
        for i in range(3):
            self.assertReply(c.cmd(f"RCPT TO:<u{i}@example.com>"), "250 2.1.5")
        self.assertReply(c.cmd("RCPT TO:<u3@example.com>"), "452 4.5.3")


class FileOnlyLimitTest(InboxdTestCase):
    server_kwargs = {"config": "max-recipients = 5\n"}

    def test_file_limit_applies(self):
        c = self.ehlo()
        self.assertReply(c.cmd("MAIL FROM:<a@example.net>"), "250")
        for i in range(5):
            self.assertReply(c.cmd(f"RCPT TO:<u{i}@example.com>"), "250 2.1.5")
        self.assertReply(c.cmd("RCPT TO:<u5@example.com>"), "452 4.5.3")


class PolicyTest(InboxdTestCase):
    """Domains, users, aliases, wildcards, catch-all, postmaster, from a config file."""
    sink = None
    server_kwargs = {"maildir": False, "config": POLICY}

    def mbox_dir(self, domain, user):
        return os.path.join(self.server.dir, "mail", domain, user)

    def rcpt(self, address):
        c = self.ehlo()
        self.assertReply(c.cmd("MAIL FROM:<a@example.net>"), "250")
        return c.cmd(f"RCPT TO:<{address}>")

    def send(self, rcpts, body=MSG):
        c = self.ehlo()
        return self.deliver(c, "a@example.net", rcpts, body)

    def test_known_user(self):
        qid = self.send(["alice@example.com"])
        [data] = self.stored(self.mbox_dir("example.com", "alice"))
        self.assertStored(data, "a@example.net", MSG, rcpt="alice@example.com", queue_id=qid)

    def test_unknown_user(self):
        r = self.rcpt("mallory@example.com")
        self.assertReply(r, "550 5.1.1")

    def test_domain_not_served(self):
        self.assertReply(self.rcpt("alice@example.net"), "550 5.7.1")

    def test_relay_attempt_with_source_route_like_local_part(self):
        self.assertReply(self.rcpt('"alice@example.net"@example.com'), "550 5.1.1")

    def test_wildcard_domain(self):
        for addr in ("x@sub.example.org", "y@a.b.example.org", "Z@SUB.Example.ORG"):
            r = self.rcpt(addr)
            self.assertReply(r, "250 2.1.5", f"RCPT TO:<{addr}> got {r!r}")
        self.send(["Z@SUB.Example.ORG"])
        self.assertEqual(len(self.stored(self.mbox_dir("sub.example.org", "z"))), 1)

    def test_wildcard_does_not_serve_parent_or_lookalike(self):
        for addr in ("x@example.org", "x@badexample.org", "x@example.org.evil.test"):
            r = self.rcpt(addr)
            self.assertReply(r, "550 5.7.1", f"RCPT TO:<{addr}> got {r!r}")

    def test_case_insensitive_local_part(self):
        self.send(["ALICE@Example.COM"])
        [data] = self.stored(self.mbox_dir("example.com", "alice"))
        self.assertStored(data, "a@example.net", MSG, rcpt="ALICE@Example.COM")

    def test_subaddress_maps_to_base_user(self):
        self.send(["alice+lists@example.com"])
        [data] = self.stored(self.mbox_dir("example.com", "alice"))
        self.assertStored(data, "a@example.net", MSG, rcpt="alice+lists@example.com")
        self.assertFalse(os.path.exists(self.mbox_dir("example.com", "alice+lists")))

    def test_subaddress_of_unknown_user(self):
        self.assertReply(self.rcpt("mallory+alice@example.com"), "550 5.1.1")

    def test_alias_to_several_users_hard_links(self):
        self.send(["info@example.com"])
        alice = self.mbox_dir("example.com", "alice")
        bob = self.mbox_dir("example.com", "bob")
        [a] = self.stored(alice)
        [b] = self.stored(bob)
        self.assertEqual(a, b)
        self.assertStored(a, "a@example.net", MSG, rcpt="info@example.com")
        [na] = os.listdir(os.path.join(alice, "new"))
        [nb] = os.listdir(os.path.join(bob, "new"))
        sa = os.stat(os.path.join(alice, "new", na))
        sb = os.stat(os.path.join(bob, "new", nb))
        self.assertEqual((sa.st_dev, sa.st_ino), (sb.st_dev, sb.st_ino), "not one hard-linked file")
        self.assertEqual(sa.st_nlink, 2)

    def test_alias_and_its_target_in_one_message_one_copy_each(self):
        self.send(["info@example.com", "alice@example.com", "bob@example.com"])
        self.assertEqual(len(self.stored(self.mbox_dir("example.com", "alice"))), 1)
        self.assertEqual(len(self.stored(self.mbox_dir("example.com", "bob"))), 1)

    def test_single_target_alias(self):
        self.send(["abuse@example.com"])
        self.assertEqual(len(self.stored(self.mbox_dir("example.com", "alice"))), 1)
        self.assertFalse(os.path.exists(self.mbox_dir("example.com", "bob")))

    def test_catch_all(self):
        self.send(["anything.at.all@catchall.test"])
        [data] = self.stored(self.mbox_dir("catchall.test", "carol"))
        self.assertStored(data, "a@example.net", MSG, rcpt="anything.at.all@catchall.test")

    def test_postmaster_without_domain(self):
        for addr in ("postmaster", "Postmaster", "POSTMASTER"):
            r = self.rcpt(addr)
            self.assertReply(r, "250 2.1.5", f"RCPT TO:<{addr}> got {r!r}")
        self.send(["postmaster"])
        # Without postmaster-domain: the first domain's postmaster.
        self.assertEqual(len(self.stored(self.mbox_dir("example.com", "postmaster"))), 1)

    def test_postmaster_of_served_domain_not_in_users(self):
        self.assertReply(self.rcpt("postmaster@example.com"), "250 2.1.5")
        self.assertReply(self.rcpt("PostMaster@example.com"), "250 2.1.5")

    def test_postmaster_of_unserved_domain_refused(self):
        self.assertReply(self.rcpt("postmaster@example.net"), "550 5.7.1")

    def test_refusals_do_not_break_the_transaction(self):
        c = self.ehlo()
        self.assertReply(c.cmd("MAIL FROM:<a@example.net>"), "250")
        self.assertReply(c.cmd("RCPT TO:<mallory@example.com>"), "550 5.1.1")
        self.assertReply(c.cmd("RCPT TO:<x@example.net>"), "550 5.7.1")
        self.assertReply(c.cmd("RCPT TO:<bob@example.com>"), "250 2.1.5")
        self.assertReply(c.cmd("DATA"), "354")
        c.send(MSG + b".\r\n")
        self.assertQueued(c.reply())
        self.assertEqual(len(self.stored(self.mbox_dir("example.com", "bob"))), 1)
        self.assertFalse(os.path.exists(self.mbox_dir("example.com", "mallory")))

    def test_refusal_logged(self):
        self.assertReply(self.rcpt("mallory@example.com"), "550")
        self.assertIsNotNone(self.server.wait_log(r"refused: 550 5\.1\.1.*mallory@example\.com"),
                             self.server.log())


class CaseSensitiveTest(InboxdTestCase):
    sink = None
    server_kwargs = {"config": 'case-insensitive-local-parts = false\nsub-address-delimiter = ""\n'
                               '[[domain]]\nname = "example.com"\nusers = ["alice", "a+b"]\n'}

    def rcpt(self, c, address):
        self.assertReply(c.cmd("RSET"), "250")
        self.assertReply(c.cmd("MAIL FROM:<a@example.net>"), "250")
        return c.cmd(f"RCPT TO:<{address}>")

    def test_case_matters_when_configured(self):
        c = self.ehlo()
        self.assertReply(self.rcpt(c, "alice@example.com"), "250 2.1.5")
        self.assertReply(self.rcpt(c, "Alice@example.com"), "550 5.1.1")

    def test_no_subaddressing_when_delimiter_empty(self):
        c = self.ehlo()
        self.assertReply(self.rcpt(c, "alice+x@example.com"), "550 5.1.1")
        self.assertReply(self.rcpt(c, "a+b@example.com"), "250 2.1.5")

    def test_postmaster_is_always_case_insensitive(self):
        """RFC 5321 4.5.1: postmaster is a case-insensitive local name."""
        c = self.ehlo()
        for addr in ("postmaster@example.com", "PostMaster@example.com", "POSTMASTER"):
            r = self.rcpt(c, addr)
            self.assertReply(r, "250 2.1.5", f"RCPT TO:<{addr}> got {r!r}")


class DomainFlagsTest(InboxdTestCase):
    """--domain D, repeatable, with no config file: those domains, any local part."""
    server_args = ("--domain", "a.test", "--domain", "b.test")

    def test_listed_domains_accepted(self):
        c = self.ehlo()
        self.deliver(c, "x@example.net", ["anyone@a.test", "Other@B.TEST"], MSG)
        [data] = self.stored()
        self.assertStored(data, "x@example.net", MSG)

    def test_other_domain_refused(self):
        c = self.ehlo()
        self.assertReply(c.cmd("MAIL FROM:<x@example.net>"), "250")
        self.assertReply(c.cmd("RCPT TO:<x@c.test>"), "550 5.7.1")
        self.assertReply(c.cmd("RCPT TO:<x@sub.a.test>"), "550 5.7.1")

    def test_no_domain_flag_accepts_any(self):
        other = self.start_server()
        c = self.connect(other.port)
        self.assertReply(c.cmd("EHLO " + harness.HELO), "250")
        self.deliver(c, "x@example.net", ["x@anything.example"], MSG)


if __name__ == "__main__":
    harness.main()
