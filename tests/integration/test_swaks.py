"""inboxd against swaks, a real command-line SMTP client."""
import subprocess

import harness
from harness import HELO, InboxdTestCase

BODY = "first line\n.starts with a dot\nlast line"


class SwaksTest(InboxdTestCase):
    def swaks(self, *extra, to="x@y.example"):
        cmd = ["swaks", "--server", "127.0.0.1", "--port", str(self.server.port),
               "--helo", HELO, "--from", "a@b.example", "--to", to,
               "--header", "Subject: swaks test", "--body", BODY, "--timeout", "5", *extra]
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=20)
        self.assertEqual(p.returncode, 0, f"swaks failed:\n{p.stdout}\n{p.stderr}")
        self.assertRegex(p.stdout, r"<-\s+250 2\.0\.0 Ok: queued as \S+")
        return p.stdout

    def check_stored(self, rcpt):
        [data] = set(self.stored())
        p = harness.parse_stored(data)
        self.assertIsNotNone(p, data[:300])
        self.assertEqual((p["return_path"], p["helo"]), ("<a@b.example>", HELO))
        if rcpt:
            self.assertIn(p["for"], (f"<{rcpt}>", rcpt))
        self.assertIn(b"\nSubject: swaks test\n", p["body"])
        self.assertIn(b"\n\n" + BODY.encode() + b"\n", p["body"])   # dot-unstuffed
        self.assertNotIn(b"\r", p["body"])

    def test_plain(self):
        self.swaks()
        self.check_stored("x@y.example")

    def test_pipeline(self):
        out = self.swaks("--pipeline")
        self.assertIn("PIPELINING", out)
        self.check_stored("x@y.example")

    def test_two_recipients(self):
        self.swaks(to="x@y.example,z@y.example")
        self.check_stored(None)


if __name__ == "__main__":
    harness.main()
