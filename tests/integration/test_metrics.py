"""--metrics: Prometheus metrics over HTTP. The numbers move exactly with
what clients do (accepted, refused RCPT, 552, failed AUTH, TLS full and
resumed), promtool accepts the text, a reload keeps the counters, a real
Prometheus server scrapes it, and hostile HTTP clients (a 1 MiB request
line, a head that never ends, 100 idle connections, a POST) cost a bounded
amount and get clear answers."""
import http.client
import json
import os
import re
import shutil
import socket
import ssl
import subprocess
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request

import harness
import peers
from harness import HELO, InboxdTestCase, client_tls_context

METRICS_RE = re.compile(r"metrics on http://127\.0\.0\.1:(\d+)/metrics")
SAMPLE_RE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})? (\S+)$")
PROMTOOL = shutil.which("promtool")
PROMETHEUS = shutil.which("prometheus")
USERS = None


def setUpModule():
    global USERS, _users_dir
    _users_dir = tempfile.mkdtemp(prefix="inboxd-metrics-users-")
    p = subprocess.run([harness.BIN, "passwd"], input="secret\n", capture_output=True, text=True,
                       timeout=harness.TIMEOUT)
    assert p.returncode == 0, p
    USERS = os.path.join(_users_dir, "users")
    with open(USERS, "w") as f:
        f.write(f"alice:{p.stdout.strip()}\n")


def tearDownModule():
    shutil.rmtree(_users_dir, ignore_errors=True)


def parse(text):
    """{(name, labels): value} of every sample line."""
    out = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = SAMPLE_RE.match(line)
        assert m, f"not a sample line: {line!r}"
        out[(m.group(1), m.group(2) or "")] = float(m.group(3))
    return out


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class MetricsCase(InboxdTestCase):
    @property
    def server_args(self):
        return ("--metrics", "127.0.0.1:0", "--listen-tls", "127.0.0.1:0", "--domain",
                "example.org", "--max-message-size", "1000", "--auth-users", USERS,
                "--allow-plaintext-auth")

    def setUp(self):
        super().setUp()
        m = self.server.wait_log(METRICS_RE.pattern)
        self.assertIsNotNone(m, f"no 'metrics on' line:\n{self.server.log()}")
        self.metrics_port = int(m.group(1))

    def scrape_text(self, path="/metrics"):
        url = f"http://127.0.0.1:{self.metrics_port}{path}"
        with urllib.request.urlopen(url, timeout=harness.TIMEOUT) as r:
            self.assertEqual(r.status, 200)
            self.assertEqual(r.headers["Content-Type"], "text/plain; version=0.0.4; charset=utf-8")
            return r.read().decode()

    def scrape(self):
        return parse(self.scrape_text())

    def raw(self, data, timeout=harness.TIMEOUT):
        """Sends data on a new metrics connection; returns all it gets until EOF."""
        with socket.create_connection(("127.0.0.1", self.metrics_port), timeout=timeout) as s:
            s.sendall(data)
            got = b""
            while True:
                chunk = s.recv(65536)
                if not chunk:
                    return got
                got += chunk

    def send_traffic(self):
        """One of each event; returns the message octets sent in DATA."""
        c = self.ehlo()
        ok_body = b"Subject: ok\r\n\r\nhello\r\n"
        self.deliver(c, "a@example.com", ["b@example.org"], ok_body)
        # A refused RCPT (not our domain), then a message over the size limit: 552.
        self.assertReply(c.cmd("MAIL FROM:<a@example.com>"), "250")
        self.assertReply(c.cmd("RCPT TO:<x@elsewhere.example>"), "550 5.7.1")
        self.assertReply(c.cmd("RCPT TO:<b@example.org>"), "250")
        self.assertReply(c.cmd("DATA"), "354")
        big_body = b"x" * 1200 + b"\r\n"
        c.send(big_body + b".\r\n")
        self.assertReply(c.reply(), "552")
        # A failed AUTH (a wrong password).
        self.assertReply(c.cmd("AUTH PLAIN " + harness_b64("\0alice\0wrong")), "535")
        c.cmd("QUIT")
        # A TLS session (implicit TLS) with a message, then one resumed from its ticket.
        ctx = client_tls_context(maximum_version=ssl.TLSVersion.TLSv1_2)
        t = self.connect(port=self.server.tls_port, tls=ctx)
        session = t.sock.session
        self.deliver(self.ehlo(t), "a@example.com", ["b@example.org"], ok_body)
        t.cmd("QUIT")
        r = harness.Client(self.server.tls_port)
        r.sock = ctx.wrap_socket(r.sock, session=session)
        self.clients.append(r)
        self.assertReply(r.reply(), "220")
        self.assertTrue(r.sock.session_reused, "the TLS session was not resumed")
        r.cmd("QUIT")
        return len(ok_body) * 2 + len(big_body)

    def test_numbers_move_exactly(self):
        before = self.scrape()
        octets = self.send_traffic()
        # The last QUIT's disconnect may still be on its way: wait for the gauge.
        deadline = time.monotonic() + harness.TIMEOUT
        while True:
            after = self.scrape()
            if after[("inboxd_connections", "")] == 0 or time.monotonic() > deadline:
                break
            time.sleep(0.05)

        def delta(name, labels=""):
            return after[(name, labels)] - before.get((name, labels), 0)

        self.assertEqual(delta("inboxd_connections_total"), 3)
        self.assertEqual(after[("inboxd_connections", "")], 0)
        self.assertEqual(delta("inboxd_sessions_total"), 3)
        self.assertEqual(delta("inboxd_messages_total", '{status="accepted"}'), 2)
        self.assertEqual(delta("inboxd_messages_total", '{status="rejected"}'), 1)
        self.assertEqual(delta("inboxd_messages_total", '{status="temp_failed"}'), 0)
        self.assertEqual(delta("inboxd_received_message_bytes_total"), octets)
        self.assertEqual(delta("inboxd_recipients_total", '{result="accepted"}'), 3)
        self.assertEqual(delta("inboxd_recipients_total", '{result="refused"}'), 1)
        self.assertEqual(delta("inboxd_commit_duration_seconds_count"), 2)
        self.assertEqual(delta("inboxd_commit_duration_seconds_bucket", '{le="+Inf"}'), 2)
        self.assertGreater(delta("inboxd_commit_duration_seconds_sum"), 0)
        self.assertEqual(delta("inboxd_tls_handshakes_total", '{kind="full"}'), 1)
        self.assertEqual(delta("inboxd_tls_handshakes_total", '{kind="resumed"}'), 1)
        self.assertEqual(delta("inboxd_tls_handshake_failures_total"), 0)
        self.assertEqual(delta("inboxd_auth_total", '{result="failure"}'), 1)
        self.assertEqual(delta("inboxd_auth_total", '{result="success"}'), 0)
        self.assertEqual(after[("inboxd_memory_budget_limit_bytes", "")], 64 * 1024 * 1024)
        self.assertEqual(after[("inboxd_build_info", '{version="0.1.0"}')], 1)
        self.assertLess(abs(after[("inboxd_start_time_seconds", "")] - time.time()), 300)
        # A TLS handshake that fails counts as one.
        with socket.create_connection(("127.0.0.1", self.server.tls_port), timeout=5) as s:
            s.sendall(b"EHLO not-tls\r\n" * 20)
            s.settimeout(5)
            try:
                while s.recv(4096):
                    pass
            except OSError:
                pass
        deadline = time.monotonic() + harness.TIMEOUT
        while (self.scrape()[("inboxd_tls_handshake_failures_total", "")] != 1
               and time.monotonic() < deadline):
            time.sleep(0.05)
        self.assertEqual(self.scrape()[("inboxd_tls_handshake_failures_total", "")], 1)

    def test_refusals_by_reason(self):
        # Two connections from loopback under --limit-loopback and a per-address limit of 1.
        s = self.start_server("--metrics", "127.0.0.1:0", "--limit-loopback",
                              "--max-connections-per-ip", "1")
        port = int(s.wait_log(METRICS_RE.pattern).group(1))
        first = harness.Client(s.port)
        self.clients.append(first)
        self.assertReply(first.reply(), "220")
        second = harness.Client(s.port)
        self.clients.append(second)
        self.assertReply(second.reply(), "421")
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
            m = parse(r.read().decode())
        self.assertEqual(m[("inboxd_connections_refused_total", '{reason="per_ip"}')], 1)
        self.assertEqual(m[("inboxd_connections_refused_total", '{reason="total"}')], 0)
        self.assertEqual(m[("inboxd_sessions_total", "")], 1)
        self.assertEqual(m[("inboxd_connections_total", "")], 2)

    def test_promtool_accepts_the_text(self):
        if not PROMTOOL:
            self.skipTest("promtool not installed (Debian package prometheus)")
        self.send_traffic()
        text = self.scrape_text()
        p = subprocess.run([PROMTOOL, "check", "metrics"], input=text, capture_output=True,
                           text=True, timeout=30)
        self.assertEqual(p.returncode, 0, f"promtool: {p.stdout}{p.stderr}")
        self.assertEqual(p.stdout + p.stderr, "", "promtool has lint remarks")

    def test_reload_keeps_the_counters(self):
        c = self.ehlo()
        self.deliver(c, "a@example.com", ["b@example.org"], b"hi\r\n")
        before = self.scrape()
        line = self.server.reload()
        self.assertIsNotNone(line, "no reload line in the log")
        self.assertIn("reloaded", line)
        after = self.scrape()
        for key in (("inboxd_messages_total", '{status="accepted"}'),
                    ("inboxd_connections_total", ""), ("inboxd_recipients_total",
                                                       '{result="accepted"}'),
                    ("inboxd_start_time_seconds", "")):
            self.assertEqual(after[key], before[key], key)
        self.assertEqual(after[("inboxd_messages_total", '{status="accepted"}')], 1)
        # And they go on counting.
        self.deliver(c, "a@example.com", ["b@example.org"], b"hi\r\n")
        self.assertEqual(self.scrape()[("inboxd_messages_total", '{status="accepted"}')], 2)

    def test_http_answers(self):
        # HEAD: the headers of the page, no body.
        conn = http.client.HTTPConnection("127.0.0.1", self.metrics_port, timeout=5)
        conn.request("HEAD", "/metrics")
        r = conn.getresponse()
        self.assertEqual(r.status, 200)
        self.assertGreater(int(r.headers["Content-Length"]), 1000)
        self.assertEqual(r.read(), b"")
        # Keep-alive: a second request on the same connection, with a query string.
        conn.request("GET", "/metrics?x=1")
        r = conn.getresponse()
        self.assertEqual(r.status, 200)
        self.assertIn(b"inboxd_messages_total", r.read())
        conn.close()
        for path, status in (("/", 404), ("/metricsx", 404)):
            with self.assertRaises(urllib.error.HTTPError) as e:
                urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}{path}", timeout=5)
            self.assertEqual(e.exception.code, status)
        # A POST (with its body) gets 405 and Allow, and the connection closes.
        got = self.raw(b"POST /metrics HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello")
        self.assertTrue(got.startswith(b"HTTP/1.1 405 Method Not Allowed\r\n"), got[:200])
        self.assertIn(b"\r\nAllow: GET, HEAD\r\n", got)
        self.assertIn(b"\r\nConnection: close\r\n", got)
        self.assertTrue(self.raw(b"BREW /pot HTCPCP/1.0\r\n\r\n").startswith(
            b"HTTP/1.1 400 Bad Request\r\n"))
        # Pipelined: two requests in one write, two answers in order, the second closing.
        got = self.raw(b"GET /nope HTTP/1.1\r\n\r\nGET /metrics HTTP/1.1\r\nConnection: close\r\n\r\n")
        self.assertTrue(got.startswith(b"HTTP/1.1 404 "), got[:100])
        self.assertEqual(got.count(b"HTTP/1.1 200 OK\r\n"), 1)

    def test_hostile_clients(self):
        # A request line of 1 MiB: 414 after 8 KiB, and the connection closes.
        got = self.raw(b"GET /" + b"a" * (1 << 20) + b" HTTP/1.1\r\n\r\n")
        self.assertTrue(got.startswith(b"HTTP/1.1 414 URI Too Long\r\n"), got[:100])
        # Many header lines, 64 KiB in all: 431.
        got = self.raw(b"GET /metrics HTTP/1.1\r\n" + b"X-A: b\r\n" * 8000 + b"\r\n")
        self.assertTrue(got.startswith(b"HTTP/1.1 431 "), got[:100])
        # A head that never ends is closed after the request timeout (5 s).
        with socket.create_connection(("127.0.0.1", self.metrics_port), timeout=20) as s:
            s.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")
            start = time.monotonic()
            self.assertEqual(s.recv(100), b"")
            waited = time.monotonic() - start
            self.assertGreater(waited, 3)
            self.assertLess(waited, 20)
        # 100 idle connections: at most 16 are kept; SMTP and a scrape still work.
        fds_before = len(os.listdir(f"/proc/{self.server.proc.pid}/fd"))
        idle = [socket.create_connection(("127.0.0.1", self.metrics_port), timeout=5)
                for _ in range(100)]
        try:
            # The oldest ones are closed by the server as new ones come.
            closed = 0
            for s in idle[:84]:
                s.settimeout(5)
                try:
                    closed += s.recv(1) == b""
                except OSError:
                    closed += 1
            self.assertEqual(closed, 84)
            fds = len(os.listdir(f"/proc/{self.server.proc.pid}/fd"))
            self.assertLessEqual(fds - fds_before, 16)
            c = self.ehlo()
            self.deliver(c, "a@example.com", ["b@example.org"], b"hi\r\n")
            self.assertEqual(self.scrape()[("inboxd_messages_total", '{status="accepted"}')], 1)
        finally:
            for s in idle:
                s.close()
        self.assertTrue(self.server.alive())

    def test_a_real_prometheus_scrapes_it(self):
        if not PROMETHEUS:
            self.skipTest("prometheus not installed (Debian package prometheus)")
        c = self.ehlo()
        for _ in range(3):
            self.deliver(c, "a@example.com", ["b@example.org"], b"hi\r\n")
        work = tempfile.mkdtemp(prefix="inboxd-prometheus-")
        self.addCleanup(shutil.rmtree, work, True)
        config = os.path.join(work, "prometheus.yml")
        with open(config, "w") as f:
            f.write("global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n"
                    "scrape_configs:\n  - job_name: inboxd\n    static_configs:\n"
                    f"      - targets: ['127.0.0.1:{self.metrics_port}']\n")
        port = free_port()
        log = open(os.path.join(work, "prometheus.log"), "wb")
        self.addCleanup(log.close)
        proc = subprocess.Popen([PROMETHEUS, f"--config.file={config}",
                                 f"--storage.tsdb.path={work}/data",
                                 f"--web.listen-address=127.0.0.1:{port}"],
                                stdin=subprocess.DEVNULL, stdout=log, stderr=log, cwd=work)

        self.addCleanup(peers.stop_process, proc)
        query = urllib.parse.quote('inboxd_messages_total{status="accepted"}')
        url = f"http://127.0.0.1:{port}/api/v1/query?query={query}"
        value, deadline = None, time.monotonic() + 60
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                with urllib.request.urlopen(url, timeout=5) as r:
                    result = json.load(r)["data"]["result"]
                if result:
                    value = result[0]["value"][1]
                    if value == "3":
                        break
            except (OSError, ValueError, KeyError):
                pass
            time.sleep(0.5)
        with open(os.path.join(work, "prometheus.log"), "rb") as f:
            plog = f.read().decode("utf-8", "replace")[-3000:]
        self.assertEqual(value, "3", f"Prometheus did not see our value; its log:\n{plog}")
        # And its view of the target: up, scraped without error.
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/v1/targets", timeout=5) as r:
            targets = json.load(r)["data"]["activeTargets"]
        self.assertEqual([t["health"] for t in targets], ["up"], targets)


def harness_b64(s):
    import base64
    return base64.b64encode(s.encode()).decode()


if __name__ == "__main__":
    harness.main()
