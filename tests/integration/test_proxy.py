"""PROXY protocol listeners (HAProxy's doc/proxy-protocol.txt, v1 and v2).

A real HAProxy (Debian haproxy) in TCP mode relays clients that connect
from 127.0.0.5 and other loopback addresses to --listen-proxy with
send-proxy and send-proxy-v2; the Received header, the log and a per-IP
limit (--limit-loopback --max-connections-per-ip 1) show that the client's
address was used, not HAProxy's 127.0.0.1. Raw headers then cover what
HAProxy never sends: every split, garbage, oversize, an untrusted source, a
header that never comes, and the header with EHLO in one packet."""
import os
import re
import shutil
import socket
import struct
import subprocess
import time
import unittest

import harness
from harness import CRLF, HELO, HOSTNAME, Client, InboxdTestCase

PROXY_LISTEN_RE = re.compile(r"listening on 127\.0\.0\.1:(\d+) \(PROXY protocol\)")
TLS_PROXY_LISTEN_RE = re.compile(
    r"listening on 127\.0\.0\.1:(\d+) \(implicit TLS\) \(PROXY protocol\)")
GREETING = f"220 {HOSTNAME} ESMTP inboxd"
V2_SIG = b"\r\n\r\n\x00\r\nQUIT\n"
BODY = b"Subject: behind a proxy\r\n\r\nhello\r\n"


def v2_header(src, dst, sport, dport, tlvs=b"", command=0x21):
    block = socket.inet_aton(src) + socket.inet_aton(dst) + struct.pack("!HH", sport, dport)
    block += tlvs
    return V2_SIG + bytes([command, 0x11]) + struct.pack("!H", len(block)) + block


def tlv(kind, value):
    return bytes([kind]) + struct.pack("!H", len(value)) + value


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class HAProxy:
    """haproxy -db (foreground) with a config of TCP frontends, each one
    relaying to a backend server line; stopped by its PID."""

    def __init__(self, case, directory, backends):
        """backends: {name: "127.0.0.1:PORT send-proxy..."}; each gets a
        frontend on a free port (self.ports[name])."""
        if shutil.which("haproxy") is None:
            raise unittest.SkipTest("haproxy is not installed (./dev installs it)")
        self.ports = {}
        cfg = ["global", "    maxconn 256", "defaults", "    mode tcp",
               "    timeout connect 5s", "    timeout client 30s", "    timeout server 30s"]
        for name, server in backends.items():
            port = self.ports[name] = free_port()
            cfg += [f"frontend f_{name}", f"    bind 127.0.0.1:{port}",
                    f"    default_backend b_{name}", f"backend b_{name}",
                    f"    server s {server}"]
        path = os.path.join(directory, "haproxy.cfg")
        with open(path, "w") as f:
            f.write("\n".join(cfg) + "\n")
        self.log_path = os.path.join(directory, "haproxy.log")
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(["haproxy", "-db", "-f", path], stdin=subprocess.DEVNULL,
                                         stdout=log, stderr=subprocess.STDOUT)
        case.addCleanup(self.stop)
        deadline = time.monotonic() + harness.TIMEOUT
        for port in self.ports.values():
            while True:
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=1).close()
                    break
                except OSError:
                    if self.proc.poll() is not None or time.monotonic() > deadline:
                        with open(self.log_path) as f:
                            case.fail(f"haproxy did not start: {f.read()}")
                    time.sleep(0.05)

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(harness.TIMEOUT)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(harness.TIMEOUT)


class ProxyCase(InboxdTestCase):
    server_args = ("--listen-proxy", "127.0.0.1:0", "--limit-loopback",
                   "--max-connections-per-ip", "1", "--proxy-timeout", "1")

    def setUp(self):
        super().setUp()
        m = self.server.wait_log(PROXY_LISTEN_RE.pattern)
        self.assertTrue(m, "no PROXY listener")
        self.proxy_port = int(m.group(1))

    def raw(self, data, source=None):
        """A socket to the PROXY listener that has sent data."""
        c = Client(self.proxy_port, source=source)
        self.clients.append(c)
        if data:
            c.send(data)
        return c

    def refused_silently(self, c, log_pattern):
        data, how = c.read_to_eof(timeout=harness.TIMEOUT)
        self.assertEqual(data, b"", "a refused PROXY connection gets no SMTP reply")
        self.assertIn(how, ("eof", "reset"))
        self.assertTrue(self.server.wait_log(log_pattern), f"no log line {log_pattern!r}")


class HAProxyTest(ProxyCase):
    def setUp(self):
        super().setUp()
        target = f"127.0.0.1:{self.proxy_port}"
        self.haproxy = HAProxy(self, self.server.dir, {"v1": f"{target} send-proxy",
                                                       "v2": f"{target} send-proxy-v2"})

    def via(self, name, source):
        c = Client(self.haproxy.ports[name], source=source)
        self.clients.append(c)
        return c

    def check_delivery(self, name, source, version):
        c = self.via(name, source)
        self.assertEqual(c.reply().lines, [GREETING])
        self.ehlo(c)
        self.deliver(c, "alice@example.org", ["bob@example.com"], BODY)
        self.assertReply(c.cmd("QUIT"), "221")
        [data] = self.stored()
        # The Received header names the client HAProxy relayed, not HAProxy.
        self.assertIn(f"Received: from {HELO} ([{source}])\n".encode(), data)
        self.assertTrue(self.server.wait_log(
            rf"PROXY v{version} from 127\.0\.0\.1:\d+: client {re.escape(source)}:\d+ to "
            rf"127\.0\.0\.1:{self.haproxy.ports[name]}"))

    def test_send_proxy_v1_carries_the_client(self):
        self.check_delivery("v1", "127.0.0.5", 1)

    def test_send_proxy_v2_carries_the_client(self):
        self.check_delivery("v2", "127.0.0.6", 2)

    def test_per_ip_limit_counts_the_client_not_haproxy(self):
        for name in ("v1", "v2"):
            first = self.via(name, "127.0.0.5")
            self.assertEqual(first.reply().lines, [GREETING])
            # A second client from the same address is over the limit of 1 ...
            again = self.via(name, "127.0.0.5")
            data, how = again.read_to_eof(timeout=harness.TIMEOUT)
            self.assertRegex(data, rb"^421 4\.7\.0 .*too many connections from this address")
            # ... and one from another address is not, though HAProxy's is the same.
            other = self.via(name, "127.0.0.6")
            self.assertEqual(other.reply().lines, [GREETING])
            self.assertReply(other.cmd("QUIT"), "221")
            self.assertReply(first.cmd("QUIT"), "221")
            first.read_to_eof(timeout=harness.TIMEOUT)
            other.read_to_eof(timeout=harness.TIMEOUT)
            self.assertTrue(self.server.wait_log(
                r"refused: too many connections from this address \(127\.0\.0\.5\)"))
            # The slots are given back once the server has seen the closes.
            deadline = time.monotonic() + harness.TIMEOUT
            while self.server.log().count("disconnect from 127.0.0.5") < 2:
                self.assertLess(time.monotonic(), deadline)
                time.sleep(0.02)
            while self.server.log().count("disconnect from 127.0.0.6") < 1 + (name == "v2"):
                self.assertLess(time.monotonic(), deadline)
                time.sleep(0.02)


class ImplicitTlsBehindHAProxyTest(InboxdTestCase):
    """HAProxy in TCP mode in front of port 465: the header, then TLS."""
    server_args = ("--listen-tls-proxy", "127.0.0.1:0")

    def test_header_then_handshake(self):
        m = self.server.wait_log(TLS_PROXY_LISTEN_RE.pattern)
        self.assertTrue(m)
        target = f"127.0.0.1:{m.group(1)}"
        hap = HAProxy(self, self.server.dir, {"tls": f"{target} send-proxy-v2"})
        c = Client(hap.ports["tls"], source="127.0.0.7", tls=harness.client_tls_context())
        self.clients.append(c)
        self.assertEqual(c.reply().lines, [GREETING])
        self.ehlo(c)
        self.deliver(c, "alice@example.org", ["bob@example.com"], BODY)
        [data] = self.stored()
        self.assertIn(f"Received: from {HELO} ([127.0.0.7])\n\t(using TLS".encode(), data)
        self.assertTrue(self.server.wait_log(r"PROXY v2 from 127\.0\.0\.1:\d+: client 127\.0\.0\.7"))


class RawHeaderTest(ProxyCase):
    def talk(self, c, carried):
        """After a header naming `carried`: the greeting, EHLO, QUIT, close."""
        self.assertEqual(c.reply().lines, [GREETING])
        self.assertReply(c.reply(), "250")  # The EHLO sent with the header.
        self.assertReply(c.cmd("QUIT"), "221")
        c.read_to_eof(timeout=harness.TIMEOUT)
        c.close()
        self.assertTrue(self.server.wait_log(rf"disconnect from {re.escape(carried)}:"))

    def test_header_and_ehlo_in_one_packet(self):
        c = self.raw(b"PROXY TCP4 203.0.113.5 192.0.2.1 56324 25\r\nEHLO " + HELO.encode() + CRLF)
        self.assertEqual(c.reply().lines, [GREETING])
        self.assertReply(c.reply(), "250")
        self.deliver(c, "alice@example.org", ["bob@example.com"], BODY)
        [data] = self.stored()
        self.assertIn(f"Received: from {HELO} ([203.0.113.5])\n".encode(), data)
        self.assertTrue(self.server.wait_log(
            r"PROXY v1 from 127\.0\.0\.1:\d+: client 203\.0\.113\.5:56324 to 192\.0\.2\.1:25"))

    def test_split_at_every_byte(self):
        ehlo = b"EHLO " + HELO.encode() + CRLF
        headers = [
            ("v1", lambda i: f"PROXY TCP4 203.0.113.{i} 192.0.2.1 1000 25\r\n".encode()),
            ("v2", lambda i: v2_header(f"198.51.100.{i}", "192.0.2.1", 1000, 25,
                                       tlv(0x04, b"pad"))),
        ]
        for version, make in headers:
            size = len(make(1))
            for cut in range(1, size):
                carried = ("203.0.113." if version == "v1" else "198.51.100.") + str(cut)
                h = make(cut)
                c = self.raw(h[:cut])
                time.sleep(0.005)  # Its own segment, as far as the kernel goes.
                c.send(h[cut:] + ehlo)
                self.talk(c, carried)
            # And one octet at a time.
            c = self.raw(b"")
            c.send_bytewise(make(250) + ehlo)
            self.talk(c, ("203.0.113." if version == "v1" else "198.51.100.") + "250")

    def test_v2_local_keeps_the_proxy_address(self):
        # HAProxy's health checks: LOCAL, no address; the proxy's own is used.
        c = self.raw(V2_SIG + b"\x20\x00\x00\x00" + b"QUIT\r\n")
        self.assertEqual(c.reply().lines, [GREETING])
        self.assertReply(c.reply(), "221")
        self.assertTrue(self.server.wait_log(r"PROXY v2 from 127\.0\.0\.1:\d+: no client address"))

    def test_v2_tls_tlv_is_logged(self):
        ssl_tlv = tlv(0x20, b"\x01\x00\x00\x00\x00" + tlv(0x21, b"TLSv1.3") +
                      tlv(0x23, b"TLS_AES_128_GCM_SHA256"))
        c = self.raw(v2_header("203.0.113.9", "192.0.2.1", 4000, 465, ssl_tlv) + b"QUIT\r\n")
        self.assertEqual(c.reply().lines, [GREETING])
        self.assertTrue(self.server.wait_log(
            r"client 203\.0\.113\.9:4000 to 192\.0\.2\.1:465, TLS at the proxy: TLSv1\.3 "
            r"TLS_AES_128_GCM_SHA256"))

    def test_garbage_is_closed_and_logged(self):
        c = self.raw(b"EHLO " + HELO.encode() + CRLF)
        self.refused_silently(c, r"refused: bad PROXY header from 127\.0\.0\.1: not a PROXY")

    def test_malformed_v1_is_closed_and_logged(self):
        c = self.raw(b"PROXY TCP4 203.0.113.300 192.0.2.1 1 25\r\n")
        self.refused_silently(c, r"bad PROXY header from 127\.0\.0\.1: PROXY v1 line with malformed")

    def test_oversize_v1_is_closed_and_logged(self):
        c = self.raw(b"PROXY TCP4 " + b"1" * 200)
        self.refused_silently(c, r"PROXY v1 line longer than 107 octets")

    def test_oversize_v2_is_closed_and_logged(self):
        c = self.raw(V2_SIG + b"\x21\x11" + struct.pack("!H", 60000) + b"\x00" * 100)
        self.refused_silently(c, r"PROXY v2 header too long")

    def test_header_that_never_comes_times_out(self):
        c = self.raw(b"PROXY TCP4 203.0")  # Then nothing.
        start = time.monotonic()
        self.refused_silently(c, r"refused: no PROXY header from 127\.0\.0\.1 within 1000 ms")
        # --proxy-timeout 1, not the 300 s command timeout (slack for ASan).
        self.assertLess(time.monotonic() - start, 4.5)

    def test_close_before_the_header_is_logged(self):
        c = self.raw(b"PROXY ")
        c.sock.shutdown(socket.SHUT_WR)
        self.refused_silently(c, r"closed by 127\.0\.0\.1 before its PROXY header was complete")

    def test_plain_listener_takes_no_header(self):
        # The ordinary listener is not a PROXY listener: the line is a bad command.
        c = self.connect()
        self.assertReply(c.cmd("PROXY TCP4 203.0.113.5 192.0.2.1 56324 25"), "500")


class UntrustedSourceTest(ProxyCase):
    # Loopback is not among the trusted networks: its header is not believed.
    server_args = ("--listen-proxy", "127.0.0.1:0", "--proxy-from", "10.0.0.0/8")

    def test_untrusted_source_is_closed_and_logged(self):
        c = self.raw(b"PROXY TCP4 203.0.113.5 192.0.2.1 56324 25\r\n")
        self.refused_silently(c, r"refused: 127\.0\.0\.1 may not send a PROXY header")
        self.assertNotIn("203.0.113.5", self.server.log())


class ListenerTableTest(InboxdTestCase):
    """The config file marks a listener for PROXY with a [[listener]] table."""
    # Top-level keys first: after [[listener]] a key belongs to the table.
    server_kwargs = {"config": 'proxy-from = ["127.0.0.1/32"]\nproxy-timeout = 2\n'
                               '[[listener]]\naddress = "127.0.0.1:0"\nproxy = true\n'}

    def test_listener_table_with_proxy(self):
        m = self.server.wait_log(PROXY_LISTEN_RE.pattern)
        self.assertTrue(m, self.server.log())
        c = Client(int(m.group(1)))
        self.clients.append(c)
        c.send(b"PROXY TCP6 2001:db8::7 2001:db8::1 1000 25\r\nEHLO " + HELO.encode() + CRLF)
        self.assertEqual(c.reply().lines, [GREETING])
        self.assertReply(c.reply(), "250")
        self.deliver(c, "alice@example.org", ["bob@example.com"], BODY)
        [data] = self.stored()
        self.assertIn(f"Received: from {HELO} ([IPv6:2001:db8::7])\n".encode(), data)


class BadNetworkTest(unittest.TestCase):
    def test_bad_proxy_from_is_refused_at_start(self):
        for bad in ("10.0.0.1/8", "10.0.0.0/33", "nonsense", "::1/129"):
            r = harness.run_cli("--listen", "127.0.0.1:0", "--proxy-from", bad, "--sink", "null",
                                "--allow-root")
            self.assertNotEqual(r.returncode, 0, bad)
            self.assertIn(b"bad proxy-from network", r.stderr, bad)


if __name__ == "__main__":
    harness.main()
