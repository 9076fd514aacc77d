"""--sink null: messages are accepted, counted, and nothing is written."""
import os

import harness
from harness import InboxdTestCase

BODY = b"Subject: null\r\n\r\ndiscard me\r\n"


class NullSinkTest(InboxdTestCase):
    sink = "null"

    def test_accepts_and_writes_nothing(self):
        c = self.ehlo()
        ids = [self.deliver(c, "a@example.com", ["b@example.org", "c@example.org"], BODY)
               for _ in range(3)]
        self.assertEqual(len(set(ids)), 3, "queue ids not unique")
        self.assertReply(c.cmd("QUIT"), "221 2.0.0")
        written = [os.path.join(d, f) for d, _, files in os.walk(self.server.maildir) for f in files]
        self.assertEqual(written, [])

    def test_size_limit_still_applies(self):
        c = self.ehlo()
        self.assertReply(c.cmd("MAIL FROM:<a@example.com> SIZE=10240001"), "552 5.3.4")


if __name__ == "__main__":
    harness.main()
