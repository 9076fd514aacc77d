"""XCLIENT (Postfix's XCLIENT_README) for trusted clients (--xclient-from).

A filtering proxy in front says who its client is: ADDR, NAME, HELO, PROTO,
LOGIN and the rest; the session then starts over with a new 220, and the
Received header names that client. For anyone else XCLIENT is not in the
EHLO reply and is refused with Postfix's 550 5.7.0. swaks' --xclient-*
options drive it as a real client; raw commands cover the refusals."""
import re
import shutil
import subprocess
import unittest

import harness
from harness import HELO, HOSTNAME, Client, InboxdTestCase

GREETING = f"220 {HOSTNAME} ESMTP inboxd"
BODY = b"Subject: via a filter\r\n\r\nhello\r\n"
XCLIENT_LINE = "250-XCLIENT ADDR PORT NAME HELO PROTO LOGIN DESTADDR DESTPORT"


class XclientTest(InboxdTestCase):
    server_args = ("--xclient-from", "127.0.0.0/8")

    def test_ehlo_offers_it(self):
        c = self.connect()
        r = c.cmd("EHLO " + HELO)
        self.assertIn(XCLIENT_LINE, r.lines)

    def test_xclient_restarts_the_session_as_the_client(self):
        c = self.ehlo()
        r = c.cmd("XCLIENT ADDR=203.0.113.9 PORT=4711 NAME=mail.example.net HELO=relay.example.net "
                  "PROTO=ESMTP DESTADDR=192.0.2.1 DESTPORT=25")
        self.assertEqual(r.lines, [GREETING])
        # As after the greeting: EHLO first (RFC 5321 4.1.4).
        self.assertReply(c.cmd("MAIL FROM:<a@example.org>"), "503 5.5.1")
        self.ehlo(c)
        self.deliver(c, "a@example.org", ["b@example.com"], BODY)
        [data] = self.stored()
        # XCLIENT's HELO stays through the EHLO that follows (XCLIENT_README).
        self.assertIn(b"Received: from relay.example.net (mail.example.net [203.0.113.9])\n"
                      b"\tby " + HOSTNAME.encode() + b" (inboxd) with ESMTP id ", data)
        self.assertTrue(self.server.wait_log(
            r"xclient: addr=203\.0\.113\.9 port=4711 name=mail\.example\.net "
            r"helo=relay\.example\.net proto=ESMTP destaddr=192\.0\.2\.1 destport=25"))

    def test_login_is_the_authenticated_sender(self):
        c = self.ehlo()
        self.assertEqual(c.cmd("XCLIENT LOGIN=alice+40example.org ADDR=IPV6:2001:DB8::5").lines,
                         [GREETING])
        self.ehlo(c)
        self.deliver(c, "alice@example.org", ["b@example.com"], BODY)
        [data] = self.stored()
        self.assertIn(f"Received: from {HELO} ([IPv6:2001:db8::5])\n"
                      "\t(Authenticated sender: alice@example.org)\n".encode(), data)
        self.assertIn(b" (inboxd) with ESMTPA id ", data)

    def test_unavailable_values(self):
        c = self.ehlo()
        self.assertEqual(c.cmd("XCLIENT ADDR=[UNAVAILABLE] NAME=[TEMPUNAVAIL]").lines, [GREETING])
        self.ehlo(c)
        self.deliver(c, "a@example.org", ["b@example.com"], BODY)
        [data] = self.stored()
        self.assertIn(f"Received: from {HELO} (unknown)\n".encode(), data)

    def test_not_inside_a_transaction(self):
        c = self.ehlo()
        self.assertReply(c.cmd("MAIL FROM:<a@example.org>"), "250")
        self.assertReply(c.cmd("XCLIENT ADDR=203.0.113.9"), "503 5.5.1")
        self.assertReply(c.cmd("RSET"), "250")
        self.assertEqual(c.cmd("XCLIENT ADDR=203.0.113.9").lines, [GREETING])

    def test_bad_attributes_are_refused_whole(self):
        c = self.ehlo()
        for line, want in [("XCLIENT", "501 5.5.4"),
                           ("XCLIENT ADDR", "501 5.5.4"),
                           ("XCLIENT FOO=bar", "501 5.5.4 Bad XCLIENT attribute name: FOO"),
                           ("XCLIENT ADDR=300.1.1.1", "501 5.5.4 Bad XCLIENT attribute value: ADDR"),
                           ("XCLIENT ADDR=2001:db8::1", "501 5.5.4"),  # IPv6 needs "IPV6:"
                           ("XCLIENT PORT=65536", "501 5.5.4"),
                           ("XCLIENT PROTO=LMTP", "501 5.5.4"),
                           ("XCLIENT NAME=a+20b", "501 5.5.4"),  # a space, once decoded
                           ("XCLIENT ADDR=203.0.113.9 HELO=+zz", "501 5.5.4")]:
            self.assertReply(c.cmd(line), want, f"{line}: {want}")
        # Nothing of the refused ones was applied: still the same session.
        self.assertReply(c.cmd("MAIL FROM:<a@example.org>"), "250")

    @unittest.skipIf(shutil.which("swaks") is None, "swaks is not installed")
    def test_swaks_xclient_options(self):
        cmd = ["swaks", "--server", "127.0.0.1", "--port", str(self.server.port),
               "--helo", HELO, "--from", "a@example.org", "--to", "b@example.com",
               "--xclient-addr", "198.51.100.7", "--xclient-name", "filter.example",
               "--xclient-helo", "outside.example", "--xclient-login", "carol",
               "--xclient-proto", "ESMTP", "--timeout", "5"]
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=20)
        self.assertEqual(p.returncode, 0, f"swaks failed:\n{p.stdout}\n{p.stderr}")
        self.assertRegex(p.stdout, r"<-\s+220 ")
        self.assertRegex(p.stdout, r"<-\s+250 2\.0\.0 Ok: queued as \S+")
        [data] = self.stored()
        self.assertIn(b"Received: from outside.example (filter.example [198.51.100.7])\n"
                      b"\t(Authenticated sender: carol)\n", data)


class NotAllowedTest(InboxdTestCase):
    # The default: nobody may use XCLIENT.
    def test_not_offered_and_refused(self):
        c = self.connect()
        r = c.cmd("EHLO " + HELO)
        self.assertFalse([l for l in r.lines if "XCLIENT" in l], r.lines)
        self.assertEqual(c.cmd("XCLIENT ADDR=203.0.113.9").lines,
                         ["550 5.7.0 Error: insufficient authorization"])
        self.assertTrue(self.server.wait_log(r"refused: 550 5\.7\.0 Error: insufficient"))

    def test_other_networks_are_refused(self):
        srv = self.start_server("--xclient-from", "10.0.0.0/8", "--xclient-from", "2001:db8::/32")
        c = Client(srv.port)
        self.clients.append(c)
        c.reply()
        self.assertFalse([l for l in c.cmd("EHLO " + HELO).lines if "XCLIENT" in l])
        self.assertReply(c.cmd("XCLIENT ADDR=203.0.113.9"), "550 5.7.0")


class XclientBehindProxyTest(InboxdTestCase):
    """Behind a PROXY listener, xclient-from is matched against the client
    the header names, not the proxy."""
    server_args = ("--listen-proxy", "127.0.0.1:0", "--xclient-from", "203.0.113.0/24")

    def test_carried_address_decides(self):
        m = self.server.wait_log(r"listening on 127\.0\.0\.1:(\d+) \(PROXY protocol\)")
        port = int(m.group(1))
        for source, offered in (("203.0.113.5", True), ("198.51.100.5", False)):
            c = Client(port)
            self.clients.append(c)
            c.send(f"PROXY TCP4 {source} 192.0.2.1 1000 25\r\n".encode())
            self.assertEqual(c.reply().lines, [GREETING])
            lines = c.cmd("EHLO " + HELO).lines
            self.assertEqual(XCLIENT_LINE in lines, offered, (source, lines))


if __name__ == "__main__":
    harness.main()
