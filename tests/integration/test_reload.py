"""SIGHUP reloads the config file: no connection dropped, a transaction in
flight finishes under the old config, the next one uses the new one, a broken
file keeps the old config running and the log says why."""
import os

import harness
from harness import InboxdTestCase

MSG = b"From: a@example.net\r\nSubject: reload\r\n\r\nhello\r\n"


def config(maildir, users=("alice",), extra=""):
    users = ", ".join(f'"{u}"' for u in users)
    return (f'maildir = "{maildir}/{{user}}"\n{extra}'
            f'[[domain]]\nname = "example.com"\nusers = [{users}]\n')


class ReloadTest(InboxdTestCase):
    sink = None
    server_kwargs = {"maildir": False, "config": config("old")}

    def path(self, *parts):
        return os.path.join(self.server.dir, *parts)

    def reload_ok(self):
        line = self.server.reload()
        self.assertIsNotNone(line, f"no reload log line:\n{self.server.log()}")
        self.assertRegex(line, r"\breloaded\b", self.server.log())

    def test_connection_open_across_reload_not_dropped(self):
        c = self.ehlo()
        self.server.write_config(config("new"))
        self.reload_ok()
        self.assertReply(c.cmd("NOOP"), "250")
        self.deliver(c, "a@example.net", ["alice@example.com"], MSG)
        self.assertEqual(len(self.stored(self.path("new", "alice"))), 1)

    def test_transaction_in_flight_finishes_under_old_config(self):
        c = self.ehlo()
        self.assertReply(c.cmd("MAIL FROM:<a@example.net>"), "250")
        self.assertReply(c.cmd("RCPT TO:<alice@example.com>"), "250 2.1.5")
        self.server.write_config(config("new"))
        self.reload_ok()
        self.assertReply(c.cmd("DATA"), "354")
        c.send(MSG + b".\r\n")
        self.assertQueued(c.reply())
        [data] = self.stored(self.path("old", "alice"))
        self.assertStored(data, "a@example.net", MSG, rcpt="alice@example.com")
        self.assertFalse(os.path.exists(self.path("new", "alice")),
                         "in-flight message went to the new path")
        # The next transaction on the same connection: the new config.
        self.deliver(c, "a@example.net", ["alice@example.com"], MSG)
        self.assertEqual(len(self.stored(self.path("new", "alice"))), 1)
        self.assertEqual(len(self.stored(self.path("old", "alice"))), 1)

    def test_reload_during_data_finishes_under_old_config(self):
        c = self.ehlo()
        self.assertReply(c.cmd("MAIL FROM:<a@example.net>"), "250")
        self.assertReply(c.cmd("RCPT TO:<alice@example.com>"), "250 2.1.5")
        self.assertReply(c.cmd("DATA"), "354")
        c.send(MSG[:20])
        self.server.write_config(config("new"))
        self.reload_ok()
        c.send(MSG[20:] + b".\r\n")
        self.assertQueued(c.reply())
        self.assertEqual(len(self.stored(self.path("old", "alice"))), 1)
        self.assertFalse(os.path.exists(self.path("new", "alice")))

    def test_recipient_accepted_before_reload_removed_it_still_delivered(self):
        c = self.ehlo()
        self.assertReply(c.cmd("MAIL FROM:<a@example.net>"), "250")
        self.assertReply(c.cmd("RCPT TO:<alice@example.com>"), "250 2.1.5")
        self.server.write_config(config("old", users=("bob",)))
        self.reload_ok()
        self.assertReply(c.cmd("DATA"), "354")
        c.send(MSG + b".\r\n")
        self.assertQueued(c.reply())
        self.assertEqual(len(self.stored(self.path("old", "alice"))), 1)
        # Afterwards alice is unknown.
        self.assertReply(c.cmd("MAIL FROM:<a@example.net>"), "250")
        self.assertReply(c.cmd("RCPT TO:<alice@example.com>"), "550 5.1.1")

    def test_broken_config_keeps_old_one(self):
        c = self.ehlo()
        self.server.write_config('maildir = "new/{user}"\nthis is not toml\n')
        line = self.server.reload()
        self.assertIsNotNone(line, f"no reload log line:\n{self.server.log()}")
        self.assertRegex(line, r"reload failed", line)
        # The log says why: the file and the line of the error.
        self.assertIn(f"{self.server.config_path}:2:", line)
        self.assertTrue(self.server.alive())
        # Mail is still accepted, under the old config, on old and new connections.
        self.assertReply(c.cmd("NOOP"), "250")
        self.deliver(c, "a@example.net", ["alice@example.com"], MSG)
        c2 = self.ehlo()
        self.deliver(c2, "a@example.net", ["alice@example.com"], MSG)
        self.assertReply(c2.cmd("MAIL FROM:<a@example.net>"), "250")
        self.assertReply(c2.cmd("RCPT TO:<bob@example.com>"), "550 5.1.1")
        self.assertEqual(len(self.stored(self.path("old", "alice"))), 2)
        self.assertFalse(os.path.exists(self.path("new", "alice")))

    def test_invalid_config_keeps_old_one(self):
        """Valid TOML, invalid config (an unknown key): same as a syntax error."""
        self.server.write_config(config("new") + "colour = \"blue\"\n")
        line = self.server.reload()
        self.assertRegex(line or "", r"reload failed.*colour", self.server.log())
        c = self.ehlo()
        self.deliver(c, "a@example.net", ["alice@example.com"], MSG)
        self.assertEqual(len(self.stored(self.path("old", "alice"))), 1)

    def test_unusable_new_maildir_keeps_old_config(self):
        """The new file is valid but its single Maildir cannot be made (a regular
        file is in the way): the reload fails, the old sink goes on."""
        with open(self.path("blocker"), "wb") as f:
            f.write(b"in the way\n")
        self.server.write_config('maildir = "blocker/maildir"\n')
        line = self.server.reload()
        self.assertRegex(line or "", r"reload failed.*blocker", self.server.log())
        c = self.ehlo()
        self.deliver(c, "a@example.net", ["alice@example.com"], MSG)
        self.assertEqual(len(self.stored(self.path("old", "alice"))), 1)

    def test_fixed_config_after_broken_one_loads(self):
        self.server.write_config("[[[\n")
        self.assertRegex(self.server.reload() or "", "reload failed")
        self.server.write_config(config("new"))
        self.reload_ok()
        c = self.ehlo()
        self.deliver(c, "a@example.net", ["alice@example.com"], MSG)
        self.assertEqual(len(self.stored(self.path("new", "alice"))), 1)

    def test_new_user_after_reload(self):
        c = self.ehlo()
        self.assertReply(c.cmd("MAIL FROM:<a@example.net>"), "250")
        self.assertReply(c.cmd("RCPT TO:<dave@example.com>"), "550 5.1.1")
        self.assertReply(c.cmd("RSET"), "250")
        self.server.write_config(config("old", users=("alice", "dave")))
        self.reload_ok()
        # On the connection that was open, and on a new one.
        self.deliver(c, "a@example.net", ["dave@example.com"], MSG)
        self.deliver(self.ehlo(), "a@example.net", ["dave@example.com"], MSG)
        self.assertEqual(len(self.stored(self.path("old", "dave"))), 2)

    def test_limit_change_after_reload(self):
        self.server.write_config(config("old", extra="max-recipients = 2\n"))
        self.reload_ok()
        c = self.ehlo()
        self.assertReply(c.cmd("MAIL FROM:<a@example.net>"), "250")
        self.assertReply(c.cmd("RCPT TO:<alice@example.com>"), "250")
        self.assertReply(c.cmd("RCPT TO:<alice+1@example.com>"), "250")
        self.assertReply(c.cmd("RCPT TO:<alice+2@example.com>"), "452 4.5.3")

    def test_many_reloads_while_delivering(self):
        c = self.ehlo()
        for i in range(5):
            self.server.write_config(config("old" if i % 2 else "new"))
            self.reload_ok()
            self.deliver(c, "a@example.net", ["alice@example.com"], MSG)
        self.assertEqual(len(self.stored(self.path("new", "alice"))), 3)
        self.assertEqual(len(self.stored(self.path("old", "alice"))), 2)


class ReloadFlagsWinTest(InboxdTestCase):
    """A flag given on the command line keeps winning over the reloaded file."""
    sink = None
    server_args = ("--max-recipients", "1")
    server_kwargs = {"config": "max-recipients = 5\n"}

    def test_flag_still_wins_after_reload(self):
        self.server.write_config("max-recipients = 10\n")
        self.assertRegex(self.server.reload() or "", r"\breloaded\b", self.server.log())
        c = self.ehlo()
        self.assertReply(c.cmd("MAIL FROM:<a@example.net>"), "250")
        self.assertReply(c.cmd("RCPT TO:<x@example.com>"), "250")
        self.assertReply(c.cmd("RCPT TO:<y@example.com>"), "452 4.5.3")


if __name__ == "__main__":
    harness.main()
