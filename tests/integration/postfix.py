"""A private Postfix instance that is a CLIENT of inboxd, for the integration tests.

It has its own config directory, queue, data directory, log file and smtpd
port on 127.0.0.1, in a temp dir; never the system's Postfix. Mail is injected
over its smtpd port (submit()) and Postfix hands it to inboxd by `transport`:

    lmtp:inet:127.0.0.1:PORT   lmtp:unix:/path/to.sock   (LMTP, RFC 2033)
    smtp:[127.0.0.1]:PORT      (SMTP; relayhost-like)

as default_transport, so every recipient domain goes there. Use:

    with postfix.Postfix(f"lmtp:inet:127.0.0.1:{port}") as pf:
        pf.submit("a@example.com", ["u1@inboxd.test"], b"Subject: x\\r\\n\\r\\nhi\\r\\n")
        statuses = pf.wait_statuses(["u1@inboxd.test"])   # {"u1@inboxd.test": "sent"}
        pf.maillog()                                       # its log, for the details

start() (or `with`) raises unittest.SkipTest when not root or when Postfix is
not installed: a Postfix instance must be started as root. Everything is
bounded in time; stop() ends it with `postfix -c DIR stop`, then by the
master's PID, and removes the temp dir.
"""
import os
import re
import shutil
import signal
import smtplib
import socket
import subprocess
import tempfile
import time
import unittest

POSTFIX = "/usr/sbin/postfix"
START_TIMEOUT = 30.0
STATUS_RE = re.compile(r" to=<([^>]*)>,.* status=(\w+) \((.*)\)$", re.M)

SERVICES = """pickup unix n - n 60 1 pickup
cleanup unix n - n - 0 cleanup
qmgr unix n - n 300 1 qmgr
rewrite unix - - n - - trivial-rewrite
bounce unix - - n - 0 bounce
defer unix - - n - 0 bounce
trace unix - - n - 0 bounce
verify unix - - n - 1 verify
flush unix n - n 1000? 0 flush
proxymap unix - - n - - proxymap
smtp unix - - n - - smtp
relay unix - - n - - smtp
lmtp unix - - n - - lmtp
showq unix n - n - - showq
error unix - - n - - error
retry unix - - n - - error
discard unix - - n - - discard
anvil unix - - n - 1 anvil
scache unix - - n - 1 scache
postlog unix-dgram n - n - 1 postlogd
"""


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Postfix:
    def __init__(self, transport, extra_main_cf=""):
        self.transport = transport
        self.extra = extra_main_cf
        self.dir = None
        self.proc = None

    def __enter__(self):
        self.start()
        return self

    def __exit__(self, *exc):
        self.stop()

    def start(self):
        if os.geteuid() != 0:
            raise unittest.SkipTest("a private Postfix instance must be started as root")
        if not os.path.exists(POSTFIX):
            raise unittest.SkipTest("Postfix is not installed (/usr/sbin/postfix)")
        self.dir = tempfile.mkdtemp(prefix="inboxd-postfix-")
        os.chmod(self.dir, 0o755)
        self.conf = os.path.join(self.dir, "conf")
        self.queue = os.path.join(self.dir, "queue")
        for sub in (self.conf, self.queue):
            os.makedirs(sub)
        self.log_path = os.path.join(self.dir, "maillog")
        self.port = free_port()
        with open(os.path.join(self.conf, "main.cf"), "w") as f:
            f.write(f"""# Written by tests/integration/postfix.py for one test.
compatibility_level = 3.6
queue_directory = {self.queue}
data_directory = {os.path.join(self.dir, 'data')}
mail_owner = postfix
setgid_group = postdrop
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
myhostname = postfix.test
mydomain = test
myorigin = $myhostname
mydestination =
relay_domains =
mynetworks = 127.0.0.0/8
smtpd_relay_restrictions = permit_mynetworks, reject
alias_maps =
alias_database =
local_recipient_maps =
default_transport = {self.transport}
relay_transport = {self.transport}
# A deferred recipient is tried again soon, and the test can see it done.
queue_run_delay = 1s
minimal_backoff_time = 1s
maximal_backoff_time = 2s
in_flow_delay = 0
maillog_file = {self.log_path}
maillog_file_prefixes = {self.dir}
smtputf8_enable = no
biff = no
{self.extra}
""")
        with open(os.path.join(self.conf, "master.cf"), "w") as f:
            f.write(f"127.0.0.1:{self.port} inet n - n - - smtpd\n{SERVICES}")
        self.fg_log = os.path.join(self.dir, "start-fg.log")
        with open(self.fg_log, "w") as out:
            self.proc = subprocess.Popen([POSTFIX, "-c", self.conf, "start-fg"],
                                         stdin=subprocess.DEVNULL, stdout=out, stderr=out,
                                         cwd=self.dir)
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                break
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1) as s:
                    if s.recv(4).startswith(b"220"):
                        return self
            except OSError:
                time.sleep(0.1)
        log = self.tail()
        self.stop()
        raise RuntimeError(f"Postfix did not start within {START_TIMEOUT} s:\n{log}")

    def submit(self, sender, rcpts, data):
        """Hands one message to Postfix over its smtpd port; returns smtplib's refusals."""
        with smtplib.SMTP("127.0.0.1", self.port, timeout=10) as s:
            return s.sendmail(sender, rcpts, data)

    def maillog(self):
        try:
            with open(self.log_path, errors="replace") as f:
                return f.read()
        except OSError:
            return ""

    def tail(self, n=40):
        text = self.maillog()
        try:
            with open(self.fg_log, errors="replace") as f:
                text += f.read()
        except OSError:
            pass
        return "\n".join(text.splitlines()[-n:])

    def statuses(self):
        """{recipient: (status, the reply text)} from the log, the last line for each."""
        return {m.group(1): (m.group(2), m.group(3)) for m in STATUS_RE.finditer(self.maillog())}

    def wait_statuses(self, rcpts, want=None, timeout=30.0):
        """Waits (at most timeout s) until each recipient has a delivery status in the log
        (or, with want, that status) and returns statuses()."""
        deadline = time.monotonic() + timeout
        while True:
            got = self.statuses()
            if all(r in got and (want is None or got[r][0] == want) for r in rcpts):
                return got
            if time.monotonic() > deadline:
                return got
            time.sleep(0.1)

    def queue_files(self, subs=("incoming", "active", "deferred", "maildrop", "hold")):
        n = 0
        for sub in subs:
            for _, _, files in os.walk(os.path.join(self.queue, sub)):
                n += len(files)
        return n

    def wait_drained(self, timeout=30.0):
        """Waits (at most timeout s) for an empty queue; returns True if it emptied."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.queue_files() == 0:
                return True
            time.sleep(0.1)
        return False

    def master_pid(self):
        try:
            with open(os.path.join(self.queue, "pid", "master.pid")) as f:
                return int(f.read().strip())
        except (OSError, ValueError):
            return None

    def stop(self):
        if self.proc is not None:
            if self.proc.poll() is None:
                try:
                    subprocess.run([POSTFIX, "-c", self.conf, "stop"], stdin=subprocess.DEVNULL,
                                   capture_output=True, timeout=30)
                except subprocess.TimeoutExpired:
                    pass
                try:
                    self.proc.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    pid = self.master_pid()
                    if pid:  # The master we started, by the PID it wrote.
                        try:
                            os.kill(pid, signal.SIGKILL)
                        except OSError:
                            pass
                    self.proc.kill()
                    self.proc.wait(timeout=5)
            self.proc = None
        if self.dir and os.environ.get("INBOXD_KEEP_TMP") is None:
            shutil.rmtree(self.dir, ignore_errors=True)
            self.dir = None
