"""Shared helpers for the inboxd integration tests (standard library only).

Server: runs the binary on a free loopback port in a fresh temp directory.
Client: a raw-socket SMTP client that reads complete (multi-line) replies.
InboxdTestCase: a unittest base class that starts one server per test.
Every wait is bounded in time.
"""
import datetime
import email.utils
import mailbox
import os
import re
import resource
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import time
import unittest

BIN = os.environ.get("INBOXD_BIN", os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                                "..", "..", "build", "inboxd"))
HOSTNAME = "mx.inboxd.test"      # passed as --hostname
HELO = "client.test"             # what our clients say in EHLO/HELO
TIMEOUT = 5.0                    # seconds, for any single wait on the server
CRLF = b"\r\n"

# The plain listeners' lines; the implicit-TLS ones end in " (implicit TLS)".
LISTEN_RE = re.compile(r"listening on 127\.0\.0\.1:(\d+)(?!\d| \(implicit TLS\))")
TLS_LISTEN_RE = re.compile(r"listening on 127\.0\.0\.1:(\d+) \(implicit TLS\)")
QUEUED_RE = re.compile(r"^250 2\.0\.0 Ok: queued as ([!-~]+)$")
# Return-Path line, then the folded Received header, then the body. With TLS
# and AUTH the header has "(using TLSv1.2 with cipher ...)" and
# "(Authenticated sender: USER)" lines, and the protocol is ESMTPS/ESMTPSA.
STORED_RE = re.compile(
    rb"Return-Path: (?P<return_path><[^\n]*>)\n"
    rb"Received: from (?P<helo>\S+) \(\[127\.0\.0\.1\]\)\n"
    rb"(?:\t\(using (?P<tls>[^\n]*)\)\n)?"
    rb"(?:\t\(Authenticated sender: (?P<auth>[^\n]*)\)\n)?"
    rb"\tby (?P<host>\S+) \(inboxd\) with (?P<proto>E?SMTPS?A?) id (?P<id>\S+?)"
    rb"(?:\n\tfor (?P<for><[^\n]*>|[^\s;]+))?;(?: |\n\t)(?P<date>[^\n]+)\n",
)


def run_cli(*args, timeout=TIMEOUT):
    """Run the binary to completion (for --help, bad flags...)."""
    return subprocess.run([BIN, *args], capture_output=True, timeout=timeout,
                          stdin=subprocess.DEVNULL)



def read_log(path):
    """A log file's text so far."""
    with open(path, "rb") as f:
        return f.read().decode("utf-8", "replace")


def wait_log(path, pattern, timeout=TIMEOUT):
    """Wait until a line of the log file matches the regex; the match or None."""
    deadline = time.monotonic() + timeout
    while True:
        m = re.search(pattern, read_log(path), re.M)
        if m or time.monotonic() > deadline:
            return m
        time.sleep(0.02)


def attach_strace(case, pid, path, *trace_args):
    """strace -f -qq -yy -o path TRACE_ARGS -p pid, for the rest of the test case.

    Returns, once every thread of pid is traced (so no call is missed), the
    function that detaches it (the trace is whole after it); it also runs at
    cleanup. Skips the test when strace cannot attach."""
    proc = subprocess.Popen(["strace", "-f", "-qq", "-yy", "-o", path, *trace_args,
                             "-p", str(pid)],
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)

    def traced():
        for tid in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{tid}/status") as f:
                if re.search(r"^TracerPid:\s+0$", f.read(), re.M):
                    return False
        return True

    def stop():
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)  # detaches; the server goes on
            try:
                proc.wait(TIMEOUT)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(TIMEOUT)
        proc.stderr.close()

    case.addCleanup(stop)
    deadline = time.monotonic() + TIMEOUT
    while not traced():
        if proc.poll() is not None:
            raise unittest.SkipTest("strace cannot attach: "
                                    + proc.stderr.read().decode(errors="replace"))
        if time.monotonic() > deadline:
            case.fail("strace did not attach in time")
        time.sleep(0.02)
    return stop


def client_tls_context(**kw):
    """A client TLS context that does not verify (the test certs are self-signed).
    Keyword arguments are set as attributes (e.g. maximum_version=...)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    for k, v in kw.items():
        setattr(ctx, k, v)
    return ctx


class Server:
    """One inboxd process listening on 127.0.0.1:<free port>.

    sink: passed as --sink; None passes no --sink (so that --mbox or the
    config file chooses). maildir: False passes no --maildir (so that the
    config file's maildir applies). config: TOML text written to
    <dir>/inboxd.toml and passed with -c. run_as: (uid, gid) to run the
    binary as, through setpriv; the temp dir is then owned by that user.
    With "--listen-tls 127.0.0.1:0" in args, tls_port is that listener's port.
    allow_root: False passes no --allow-root even when run as root (to test
    --user and the refusal to run as root). nofile: the server's RLIMIT_NOFILE
    (soft and hard), to run it out of file descriptors.
    """

    def __init__(self, *args, sink="maildir", maildir=True, config=None, run_as=None,
                 allow_root=True, nofile=None):
        if not os.access(BIN, os.X_OK):
            raise RuntimeError(f"inboxd binary not found at {BIN} (set INBOXD_BIN)")
        self.dir = tempfile.mkdtemp(prefix="inboxd-it-")
        self.maildir = os.path.join(self.dir, "maildir")
        self.log_path = os.path.join(self.dir, "stderr.log")
        self.config_path = os.path.join(self.dir, "inboxd.toml")
        cmd = [BIN, "--listen", "127.0.0.1:0", "--hostname", HOSTNAME]
        if maildir:
            cmd += ["--maildir", self.maildir]
        if sink is not None:
            cmd += ["--sink", sink]
        if config is not None:
            self.write_config(config)
            cmd += ["-c", self.config_path]
        if os.geteuid() == 0 and run_as is None and allow_root:
            cmd.append("--allow-root")  # CI runs as root; inboxd refuses that by default
        cmd += list(args)
        if run_as is not None:
            uid, gid = run_as
            os.chmod(self.dir, 0o755)
            os.chown(self.dir, uid, gid)
            if config is not None:
                os.chown(self.config_path, uid, gid)
            cmd = ["setpriv", f"--reuid={uid}", f"--regid={gid}", "--clear-groups", *cmd]
        preexec = None
        if nofile is not None:
            def preexec():
                resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(cmd, cwd=self.dir, stdin=subprocess.DEVNULL,
                                         stdout=subprocess.DEVNULL, stderr=log,
                                         preexec_fn=preexec)
        self.stopped = False
        self.port = self._wait_port()
        self.tls_port = self._wait_port(TLS_LISTEN_RE) if "--listen-tls" in cmd else None

    def write_config(self, text):
        """(Re)writes the config file, atomically (a reload never sees half a file)."""
        tmp = self.config_path + ".new"
        with open(tmp, "w") as f:
            f.write(text)
        os.replace(tmp, self.config_path)

    def reload(self, timeout=TIMEOUT):
        """SIGHUP; waits for the 'reloaded' or 'reload failed' log line it causes
        and returns that line (None if none came within `timeout` s)."""
        pattern = r"^.*\b(?:reloaded|reload failed)\b.*$"
        before = len(re.findall(pattern, self.log(), re.M))
        self.proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            lines = re.findall(pattern, self.log(), re.M)
            if len(lines) > before:
                return lines[before]
            time.sleep(0.02)
        return None

    def _wait_port(self, regex=LISTEN_RE):
        deadline = time.monotonic() + TIMEOUT
        while time.monotonic() < deadline:
            m = regex.search(self.log())
            if m:
                return int(m.group(1))
            if self.proc.poll() is not None:
                break
            time.sleep(0.01)
        self.kill()
        log = self.log()
        self.cleanup()      # nobody else will: the constructor fails
        raise RuntimeError(f"inboxd did not report 'listening on' (rc={self.proc.returncode}); "
                           f"log:\n{log}")

    def log(self):
        return read_log(self.log_path)

    def wait_log(self, pattern, timeout=TIMEOUT):
        """Wait until a log line matches the regex; return the match or None."""
        return wait_log(self.log_path, pattern, timeout)

    def alive(self):
        return self.proc.poll() is None

    def stop(self, timeout=TIMEOUT):
        """SIGTERM, then SIGKILL after `timeout` s. Returns the exit code."""
        self.stopped = True
        if self.alive():
            self.proc.send_signal(signal.SIGTERM)
            try:
                return self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
                return None   # did not exit on SIGTERM
        return self.proc.returncode

    def status(self, field):
        """A field of /proc/PID/status (e.g. "Uid", "VmRSS"), as its text; None once gone."""
        try:
            with open(f"/proc/{self.proc.pid}/status") as f:
                for line in f:
                    name, _, value = line.partition(":")
                    if name == field:
                        return value.strip()
        except OSError:
            pass
        return None

    def rss(self, field="VmRSS"):
        """Resident memory in bytes (VmRSS; "VmHWM" for the peak so far)."""
        value = self.status(field)
        if value is None:
            raise AssertionError(f"no {field} for pid {self.proc.pid} (exited?)")
        kb, unit = value.split()
        assert unit == "kB", value
        return int(kb) * 1024

    def kill(self):
        if self.alive():
            self.proc.kill()
        self.proc.wait(TIMEOUT)

    def cleanup(self):
        self.kill()
        if not os.environ.get("INBOXD_KEEP"):
            shutil.rmtree(self.dir, ignore_errors=True)

    # ---- Maildir ----
    def mailbox(self):
        return mailbox.Maildir(self.maildir, factory=None, create=False)

    def files(self, sub):
        """{name: bytes} of the regular files in maildir/<sub>/ (empty if missing)."""
        return read_files(os.path.join(self.maildir, sub))


def raise_nofile_limit(want=None):
    """Raises this process's soft RLIMIT_NOFILE to the hard limit (for tests
    that open many sockets; servers started later inherit it); as root, also
    the hard limit up to `want`. Returns the soft limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if want and hard != resource.RLIM_INFINITY and hard < want and os.geteuid() == 0:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, want))
            soft, hard = want, want
        except (ValueError, OSError):
            pass
    if soft != hard and (hard == resource.RLIM_INFINITY or soft < hard):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def read_files(path):
    """{name: bytes} of the files in the folder `path` (empty if it is missing)."""
    if not os.path.isdir(path):
        return {}
    out = {}
    for name in os.listdir(path):
        with open(os.path.join(path, name), "rb") as f:
            out[name] = f.read()
    return out


class Reply:
    def __init__(self, lines):
        self.lines = lines                      # full text lines, without CRLF
        self.code = int(lines[-1][:3])
        self.last = lines[-1]

    def __repr__(self):
        return "Reply(%r)" % "\\r\\n".join(self.lines)


class Client:
    """Raw SMTP client over a socket. Replies must be CRLF-terminated lines."""

    def __init__(self, port, timeout=TIMEOUT, tls=None, source=None):
        """tls: an ssl.SSLContext to start TLS at once (implicit TLS, RFC 8314).
        source: the local address to connect from (e.g. "127.0.0.2")."""
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout,
                                             source_address=(source, 0) if source else None)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.timeout = timeout
        self.buf = b""
        if tls is not None:
            self.start_tls(tls)

    def start_tls(self, ctx=None):
        """TLS handshake over this socket (after a 220 to STARTTLS, or at once
        for implicit TLS). Bytes already read and not yet parsed are an error:
        they would be plaintext the server sent after its 220."""
        if self.buf:
            raise AssertionError(f"plaintext left before the TLS handshake: {self.buf!r}")
        self.sock = (ctx or client_tls_context()).wrap_socket(self.sock)
        return self.sock

    def starttls(self, ctx=None):
        """STARTTLS, a 220, then the handshake. Returns the 220 reply."""
        r = self.cmd("STARTTLS")
        if r.code != 220:
            raise AssertionError(f"STARTTLS refused: {r!r}")
        self.start_tls(ctx)
        return r

    def set_timeout(self, timeout):
        """For replies that are slow on purpose (waiting for a lock...)."""
        self.timeout = timeout
        self.sock.settimeout(timeout)

    def send(self, data):
        self.sock.sendall(data)

    def send_bytewise(self, data):
        for i in range(len(data)):
            self.sock.sendall(data[i:i + 1])

    def _line(self, deadline):
        while CRLF not in self.buf:
            if time.monotonic() > deadline:
                raise TimeoutError(f"no complete reply line; got {self.buf!r}")
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError(f"server closed the connection; pending {self.buf!r}")
            self.buf += chunk
        line, self.buf = self.buf.split(CRLF, 1)
        text = line.decode("utf-8", "replace")
        if not re.match(r"^[2-5]\d\d([ -]|$)", text) or "\n" in text or "\r" in text:
            raise AssertionError(f"malformed reply line {line!r}")
        return text

    def reply(self):
        """Read one complete reply (all lines of a multi-line reply)."""
        deadline = time.monotonic() + self.timeout
        lines = [self._line(deadline)]
        while lines[-1][3:4] == "-":
            lines.append(self._line(deadline))
            if lines[-1][:3] != lines[0][:3]:
                raise AssertionError(f"code changed inside multi-line reply {lines!r}")
        return Reply(lines)

    def replies(self, n):
        return [self.reply() for _ in range(n)]

    def cmd(self, line):
        self.send(line.encode() + CRLF)
        return self.reply()

    def at_eof(self, timeout=1.0):
        """True if the server closes the connection within `timeout` s with no more data."""
        self.sock.settimeout(timeout)
        try:
            return self.buf == b"" and self.sock.recv(1) == b""
        except ConnectionResetError:
            return True
        except socket.timeout:
            return False
        finally:
            self.sock.settimeout(self.timeout)

    def quiet(self, timeout=0.3):
        """True if the server sends nothing (and does not close) within `timeout` s."""
        if self.buf:
            return False
        self.sock.settimeout(timeout)
        try:
            self.buf = self.sock.recv(65536)
            return False
        except socket.timeout:
            return True
        finally:
            self.sock.settimeout(self.timeout)

    def read_to_eof(self, timeout=TIMEOUT):
        """Everything the server sends until it closes: (bytes, how), how being
        "eof", "reset" (ECONNRESET after the bytes) or "timeout" (still open
        after `timeout` s). Includes what was read but not yet parsed."""
        data, self.buf = self.buf, b""
        deadline = time.monotonic() + timeout
        how = "timeout"
        try:
            while time.monotonic() < deadline:
                self.sock.settimeout(max(0.01, deadline - time.monotonic()))
                try:
                    chunk = self.sock.recv(65536)
                except socket.timeout:
                    break
                if not chunk:
                    how = "eof"
                    break
                data += chunk
        except ConnectionResetError:
            how = "reset"
        finally:
            try:
                self.sock.settimeout(self.timeout)
            except OSError:
                pass
        return data, how

    def close(self):
        self.sock.close()


def stuff(body):
    """Dot-stuff a CRLF body for the wire (RFC 5321 4.5.2)."""
    return re.sub(rb"(?m)^\.", b"..", body)


def parse_stored(data):
    """Split a stored message into its trace fields and the body; None if malformed."""
    m = STORED_RE.match(data)
    if not m:
        return None
    d = {k: (v.decode("utf-8", "replace") if v is not None else None)
         for k, v in m.groupdict().items()}
    d["body"] = data[m.end():]
    return d


class InboxdTestCase(unittest.TestCase):
    """Starts a fresh server per test with `server_args`; checks it did not crash."""
    server_args = ()
    sink = "maildir"

    server_kwargs = {}    # more keyword arguments for Server (maildir, config, run_as)
    # False: setUp starts none; each test starts its own (with its peers first).
    server_at_setup = True

    def setUp(self):
        self.clients = []
        self.server = None
        if self.server_at_setup:
            self.server = self.start_server(*self.server_args, sink=self.sink,
                                            **self.server_kwargs)

    def start_server(self, *args, **kwargs):
        """Starts a Server that is killed and removed when the test ends."""
        server = Server(*args, **kwargs)
        self.addCleanup(server.cleanup)
        return server

    def tearDown(self):
        for c in self.clients:
            c.close()
        # None: the test starts its server itself, and may not have.
        if self.server is not None and not self.server.stopped and not self.server.alive():
            self.fail(f"server died during the test (rc={self.server.proc.returncode}); "
                      f"log:\n{self.server.log()}")

    # ---- replies ----
    def assertReply(self, reply, prefix, msg=None):
        """The final reply line is `prefix` or starts with `prefix` + ' '."""
        ok = reply.last == prefix or reply.last.startswith(prefix + " ")
        if not ok:
            self.fail(msg or f"expected {prefix!r}..., got {reply!r}")

    def connect(self, port=None, tls=None):
        """A client that has read the greeting; tls: an ssl.SSLContext for implicit TLS."""
        c = Client(port or self.server.port, tls=tls)
        self.clients.append(c)
        self.assertEqual(c.reply().lines, [f"220 {HOSTNAME} ESMTP inboxd"])
        return c

    def ehlo(self, c=None):
        c = c or self.connect()
        r = c.cmd("EHLO " + HELO)
        self.assertReply(r, "250")
        return c

    def deliver(self, c, sender, rcpts, data):
        """MAIL/RCPT/DATA/<data>/. on an open session; `data` is wire bytes ending
        in CRLF. Asserts every reply and returns the queue id."""
        self.assertReply(c.cmd(f"MAIL FROM:<{sender}>"), "250 2.1.0")
        for r in rcpts:
            self.assertReply(c.cmd(f"RCPT TO:<{r}>"), "250 2.1.5")
        self.assertReply(c.cmd("DATA"), "354")
        c.send(data + b".\r\n")
        return self.assertQueued(c.reply())

    def assertQueued(self, reply):
        m = QUEUED_RE.match(reply.last)
        self.assertTrue(m and len(reply.lines) == 1, f"expected '250 2.0.0 Ok: queued as ID', got {reply!r}")
        return m.group(1)

    # ---- Maildir ----
    def stored(self, maildir=None):
        """Messages in new/ (sorted by name) of `maildir` (default: the server's),
        after checking the Maildir invariants: names end in ',S=<file size>,W=<POP3 size>',
        nothing left in tmp/, nothing in cur/."""
        maildir = maildir or self.server.maildir
        new = read_files(os.path.join(maildir, "new"))
        for name, data in new.items():
            self.assertMaildirName(name, data)
        self.assertEqual(read_files(os.path.join(maildir, "tmp")), {}, f"files left in {maildir}/tmp/")
        self.assertEqual(read_files(os.path.join(maildir, "cur")), {}, f"files in {maildir}/cur/")
        return [new[k] for k in sorted(new)]

    def assertMaildirName(self, name, data):
        """time.unique.host (no '/' or ':'), then ',S=<file size>,W=<size with CRLF line ends>'."""
        raw = data if isinstance(data, bytes) else data.encode("latin-1")
        wire = len(raw) + raw.count(b"\n") - raw.count(b"\r\n")
        self.assertRegex(name, rf"^\d+\.[^./:]+\.[^/:]+,S={len(raw)},W={wire}$", "bad Maildir file name")

    def assertStored(self, data, sender, body, rcpt=None, queue_id=None, proto="ESMTP"):
        """`data` is Return-Path + Received + `body` (wire body with CRLF->LF)."""
        p = parse_stored(data)
        self.assertIsNotNone(p, f"stored message lacks the Return-Path/Received prefix:\n{data[:400]!r}")
        self.assertEqual(p["return_path"], f"<{sender}>")
        self.assertEqual((p["helo"], p["host"], p["proto"]), (HELO, HOSTNAME, proto))
        if queue_id is not None:
            self.assertEqual(p["id"], queue_id)
        if rcpt is None:
            self.assertIsNone(p["for"], "'for' clause with several recipients")
        else:
            self.assertIn(p["for"], (f"<{rcpt}>", rcpt))
        date = email.utils.parsedate_to_datetime(p["date"])
        self.assertIsNotNone(date.tzinfo, f"date without zone: {p['date']!r}")
        now = datetime.datetime.now(datetime.timezone.utc)
        self.assertLess(abs((now - date).total_seconds()), 300, f"date off: {p['date']!r}")
        self.assertEqual(p["body"], body.replace(CRLF, b"\n"))
        return p


def main():
    unittest.main(verbosity=2)
