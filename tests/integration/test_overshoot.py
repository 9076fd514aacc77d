"""RFC 5321 4.5.3.1.10: past the recipient limit a RCPT gets 452 and the client
sends the rest in another transaction. A pipelining client that sends 1,100
RCPTs in one go gets 1,000 x 250 and 100 x 452 4.5.3, then its DATA goes through
for the accepted ones, and the connection stays open for the second transaction.
Such 452s count as protocol errors only past the overshoot allowance
(--recipient-overshoot-limit, Postfix's smtpd_recipient_overshoot_limit)."""
import harness
from harness import CRLF, InboxdTestCase

BODY = b"From: a@example.net\r\nSubject: many\r\n\r\nhello\r\n"


def pipelined(rcpts, tail=b""):
    out = [b"MAIL FROM:<a@example.net>"]
    out += [f"RCPT TO:<user{i}@example.com>".encode() for i in rcpts]
    return CRLF.join(out) + CRLF + tail


class OvershootTest(InboxdTestCase):
    def test_1100_pipelined_rcpts_then_data_then_the_rest(self):
        c = self.ehlo()
        c.send(pipelined(range(1100), b"DATA" + CRLF))
        replies = c.replies(1 + 1100 + 1)
        self.assertReply(replies[0], "250 2.1.0")
        codes = [r.lines[-1][:9] for r in replies[1:1101]]
        self.assertEqual(codes.count("250 2.1.5"), 1000, codes[:3])
        self.assertEqual(codes.count("452 4.5.3"), 100)
        self.assertEqual(codes[1000:], ["452 4.5.3"] * 100, "the 452s are the last 100")
        self.assertReply(replies[-1], "354")
        c.send(BODY + b"." + CRLF)
        self.assertQueued(c.reply())
        # The second transaction, for the 100 that were told to retry.
        c.send(pipelined(range(1000, 1100), b"DATA" + CRLF))
        replies = c.replies(1 + 100 + 1)
        self.assertTrue(all(r.lines[-1].startswith("250 2.1.5") for r in replies[1:101]))
        self.assertReply(replies[-1], "354")
        c.send(BODY + b"." + CRLF)
        self.assertQueued(c.reply())
        self.assertReply(c.cmd("QUIT"), "221")
        # One stored file per message: the Maildir is shared by every recipient.
        self.assertEqual(len(self.stored()), 2)
        self.assertIsNone(self.server.wait_log(r"Too many errors|errors: closing", timeout=0.2))

    def test_rset_after_452s(self):
        c = self.ehlo()
        c.send(pipelined(range(1010)))
        replies = c.replies(1011)
        self.assertReply(replies[-1], "452 4.5.3")
        self.assertReply(c.cmd("RSET"), "250")
        self.assertReply(c.cmd("NOOP"), "250")


class OvershootLimitTest(InboxdTestCase):
    server_args = ("--max-recipients", "10", "--recipient-overshoot-limit", "5",
                   "--max-errors", "3")

    def test_past_the_allowance_452s_are_errors(self):
        c = self.ehlo()
        c.send(pipelined(range(10 + 5 + 3)))
        # The third error is answered, then the error limit closes the session.
        replies = c.replies(1 + 10 + 5 + 3 + 1)
        self.assertEqual(sum(r.lines[-1].startswith("452 4.5.3") for r in replies), 5 + 3)
        self.assertReply(replies[-1], "421 4.7.0")
        data, how = c.read_to_eof()
        self.assertEqual(data, b"", f"nothing after the 421: {data!r}")


if __name__ == "__main__":
    harness.main()
