"""The real programs on the other side of inboxd's hand-offs and filters,
each started privately on loopback by a test and stopped at its cleanup,
bounded in time:

    free_port(), wait_port(port)     a free port on 127.0.0.1; wait for a listener
    start_process(case, cmd, port)   a program listening on port (a milter)
    Dovecot()                        LMTP and IMAP, users alice and bob (password pw)
    start_postgrey(case, delay)      postgrey greylisting; returns its port
    start_opendkim(case, ...)        opendkim signing for example.com
    dkim_verify(message, key, dir)   a DKIM-Signature checked with openssl

A program that is not installed skips the test (Dovecot also needs root)."""
import base64
import grp
import hashlib
import imaplib
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import unittest

DOVECOT = "/usr/sbin/dovecot"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, proc=None, timeout=10):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc is not None and proc.poll() is not None:
            return False
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return True
        except OSError:
            time.sleep(0.05)
    return False


def start_process(case, cmd, port, **kw):
    """Starts a milter program in its own process group, stopped at cleanup."""
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, start_new_session=True, **kw)

    def stop():
        try:
            os.killpg(proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        proc.stderr.close()

    case.addCleanup(stop)
    if not wait_port(port, proc):
        stop()
        case.fail(f"{cmd[0]} did not listen on {port}")
    return proc


def start_opendkim(case, mode="s"):
    """opendkim on a free port, signing mail from 127.0.0.1 for example.com
    with a key made now (mode "sv" also verifies mail from elsewhere).
    Returns (port, the public key as PEM, a work folder for dkim_verify)."""
    kdir = tempfile.mkdtemp(prefix="inboxd-dkim-")
    case.addCleanup(shutil.rmtree, kdir, True)
    subprocess.run(["opendkim-genkey", "-D", kdir, "-d", "example.com", "-s", "test"],
                   check=True, timeout=30)
    key = os.path.join(kdir, "test.private")
    os.chmod(key, 0o600)
    public = subprocess.run(["openssl", "rsa", "-in", key, "-pubout"], check=True,
                            capture_output=True, timeout=10).stdout
    port = free_port()
    conf = os.path.join(kdir, "opendkim.conf")
    with open(conf, "w") as f:
        f.write(f"""Mode {mode}
Domain example.com
Selector test
KeyFile {key}
Socket inet:{port}@127.0.0.1
Canonicalization relaxed/relaxed
Background no
Syslog no
InternalHosts 127.0.0.1
RequireSafeKeys no
PidFile {kdir}/opendkim.pid
""")
    start_process(case, ["opendkim", "-f", "-x", conf], port)
    return port, public, kdir


def relaxed_header(line):
    name, _, value = line.partition(b":")
    value = re.sub(rb"[ \t]+", b" ", value.replace(b"\r\n", b"")).strip(b" ")
    return name.strip().lower() + b":" + value


def relaxed_body(body):
    lines = body.split(b"\r\n")
    out = [re.sub(rb"[ \t]+", b" ", l).rstrip(b" ") for l in lines]
    text = b"\r\n".join(out)
    text = re.sub(rb"(\r\n)*$", b"", text)
    return text + b"\r\n" if text else b""


def dkim_verify(message, public_pem, workdir):
    """Verifies the first DKIM-Signature of message (CRLF) with relaxed/relaxed
    canonicalization and rsa-sha256 (RFC 6376 3.4.2, 3.4.4, 3.7) by openssl.
    Returns None when it verifies, else why not."""
    head, _, body = message.partition(b"\r\n\r\n")
    fields = re.split(rb"\r\n(?![ \t])", head)
    sig = next((f for f in fields if f.lower().startswith(b"dkim-signature:")), None)
    if sig is None:
        return "no DKIM-Signature"
    tags = {}
    for part in sig.partition(b":")[2].split(b";"):
        k, _, v = part.partition(b"=")
        if k.strip():
            tags[k.strip().decode()] = re.sub(rb"\s+", b"", v)
    if tags.get("c") != b"relaxed/relaxed" or tags.get("a") != b"rsa-sha256":
        return f"unexpected tags {tags}"
    bh = base64.b64encode(hashlib.sha256(relaxed_body(body)).digest())
    if bh != tags["bh"]:
        return f"body hash {bh} != {tags['bh']}"
    # h= from the bottom up, each name once per occurrence (RFC 6376 5.4.2).
    remaining = [f for f in fields if f is not sig]
    signed = []
    for name in tags["h"].decode().split(":"):
        for f in reversed(remaining):
            if f.partition(b":")[0].strip().lower() == name.lower().encode():
                signed.append(relaxed_header(f) + b"\r\n")
                remaining.remove(f)
                break
    # Only the b= tag is emptied, not bh=.
    unsigned = re.sub(rb"(^|;)(\s*b=)[^;]*", rb"\1\2", sig.partition(b":")[2], count=1)
    signed.append(relaxed_header(b"DKIM-Signature:" + unsigned))
    data_path = os.path.join(workdir, "signed-data")
    sig_path = os.path.join(workdir, "sig")
    pub_path = os.path.join(workdir, "pub.pem")
    with open(data_path, "wb") as f:
        f.write(b"".join(signed))
    with open(sig_path, "wb") as f:
        f.write(base64.b64decode(tags["b"]))
    with open(pub_path, "wb") as f:
        f.write(public_pem)
    r = subprocess.run(["openssl", "dgst", "-sha256", "-verify", pub_path, "-signature", sig_path,
                        data_path], capture_output=True, timeout=10)
    return None if r.returncode == 0 else r.stdout.decode() + r.stderr.decode()


class Dovecot:
    """A private Dovecot with LMTP and IMAP on loopback, users alice and bob
    (password pw), each with a Maildir in the temp dir."""

    def __init__(self):
        if os.geteuid() != 0:
            raise unittest.SkipTest("a private Dovecot must be started as root")
        if not os.path.exists(DOVECOT):
            raise unittest.SkipTest("Dovecot is not installed (dovecot-lmtpd, dovecot-imapd)")
        self.dir = tempfile.mkdtemp(prefix="inboxd-dovecot-")
        os.chmod(self.dir, 0o755)
        mail = os.path.join(self.dir, "mail")
        os.makedirs(mail)
        os.chmod(mail, 0o777)
        self.lmtp_port, self.imap_port = free_port(), free_port()
        users = os.path.join(self.dir, "users")
        with open(users, "w") as f:
            for u in ("alice", "bob"):
                f.write(f"{u}@inboxd.test:{{PLAIN}}pw:65534:65534::{mail}/{u}\n")
        self.conf = os.path.join(self.dir, "dovecot.conf")
        with open(self.conf, "w") as f:
            f.write(f"""base_dir = {self.dir}/run
state_dir = {self.dir}/state
log_path = {self.dir}/dovecot.log
protocols = lmtp imap
listen = 127.0.0.1
ssl = no
disable_plaintext_auth = no
mail_location = maildir:~/Maildir
first_valid_uid = 1
default_internal_user = dovecot
default_login_user = dovenull
passdb {{
  driver = passwd-file
  args = {users}
}}
userdb {{
  driver = passwd-file
  args = {users}
}}
service lmtp {{
  inet_listener lmtp {{
    address = 127.0.0.1
    port = {self.lmtp_port}
  }}
  unix_listener lmtp {{
    mode = 0666
  }}
}}
service imap-login {{
  inet_listener imap {{
    address = 127.0.0.1
    port = {self.imap_port}
  }}
  inet_listener imaps {{
    port = 0
  }}
  chroot =
}}
service anvil {{
  chroot =
}}
""")
        self.proc = subprocess.Popen([DOVECOT, "-F", "-c", self.conf], stdin=subprocess.DEVNULL,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        if not (wait_port(self.lmtp_port) and wait_port(self.imap_port)):
            self.stop()
            raise RuntimeError("Dovecot did not start")
        self.lmtp_socket = os.path.join(self.dir, "run", "lmtp")

    def imap_messages(self, user):
        with imaplib.IMAP4("127.0.0.1", self.imap_port, timeout=10) as m:
            m.login(f"{user}@inboxd.test", "pw")
            m.select("INBOX")
            _, data = m.search(None, "ALL")
            out = []
            for num in data[0].split():
                _, msg = m.fetch(num, "(RFC822)")
                out.append(msg[0][1])
            return out

    def log(self):
        try:
            with open(os.path.join(self.dir, "dovecot.log"), errors="replace") as f:
                return f.read()
        except OSError:
            return ""

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
        shutil.rmtree(self.dir, ignore_errors=True)


def start_postgrey(case, delay):
    d = tempfile.mkdtemp(prefix="inboxd-postgrey-")
    case.addCleanup(shutil.rmtree, d, True)
    port = free_port()
    cmd = ["/usr/sbin/postgrey", f"--inet=127.0.0.1:{port}", f"--dbdir={d}/db",
           f"--pidfile={d}/pid", f"--delay={delay}", "--max-age=1",
           f"--whitelist-clients={d}/none", f"--whitelist-recipients={d}/none"]
    open(f"{d}/none", "w").close()
    os.mkdir(f"{d}/db")
    # postgrey becomes --user (default "postgrey"): as root, that user
    # owns the database; otherwise it is whoever runs the test.
    pw = pwd.getpwuid(os.geteuid())
    if os.geteuid() == 0:
        pw = pwd.getpwnam("postgrey" if _has_user("postgrey") else "nobody")
        for path in (d, f"{d}/db", f"{d}/none"):
            os.chown(path, pw.pw_uid, pw.pw_gid)
    cmd += [f"--user={pw.pw_name}", f"--group={_group_of(pw)}"]
    with open(f"{d}/log", "wb") as log:
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=log)
    case.addCleanup(stop_process, proc)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return port
        except OSError:
            if proc.poll() is not None:
                break
            time.sleep(0.1)
    with open(f"{d}/log", "rb") as f:
        case.fail(f"postgrey did not start: {f.read()[-2000:]!r}")


def _has_user(name):
    try:
        pwd.getpwnam(name)
        return True
    except KeyError:
        return False


def _group_of(pw):
    return grp.getgrgid(pw.pw_gid).gr_name


def stop_process(proc):
    """SIGTERM, then SIGKILL after 10 s; bounded either way."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
