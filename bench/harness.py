#!/usr/bin/python3
"""inboxd and its peers side by side: throughput matrix, idle memory, instructions, micro benchmark.

    bench/harness.py                    # the matrix, about 10 minutes on 2 cores
    bench/harness.py --quick            # a subset, about 2 minutes
    bench/harness.py --with-postfix     # also a private Postfix instance delivering to Maildir
    bench/harness.py --memory           # also: RSS per idle connection (10,000 of them)
    bench/harness.py --callgrind        # also: instructions per message under callgrind
    bench/harness.py --micro            # also: the src/proto micro benchmark
    bench/harness.py --no-matrix --memory --callgrind   # only those

Every server runs on a free 127.0.0.1 port, started and stopped (by PID) here.
One load generator for all (inboxd-bench, --json), alternating servers within a
scenario. Results: a table on the terminal, bench/results/latest.csv,
bench/results/latest.json, PNG plots (gnuplot) and bench/RESULTS.md, which is
regenerated from latest.json (sections not run this time are kept from the
previous run, with their own dates). See bench/HARNESS.md.
"""

import argparse
import csv
import datetime
import json
import os
import platform
import resource
import selectors
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

from benchlib import free_port, greets, pinned, stop, tail

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
RESULTS = os.path.join(HERE, "results")
SMTP_SINK = "/usr/sbin/smtp-sink"
SMTP_SOURCE = "/usr/sbin/smtp-source"
STRACE = "/usr/bin/strace"
CALLGRIND_ANNOTATE = "/usr/bin/callgrind_annotate"
POSTFIX = "/usr/sbin/postfix"
PYTHON = "/usr/bin/python3"
VALGRIND = "/usr/bin/valgrind"
GNUPLOT = "/usr/bin/gnuplot"
TICK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")
KIB, MIB = 1024, 1024 * 1024
START_TIMEOUT = 15.0
AS_ROOT = os.geteuid() == 0

SERVER_ORDER = ["inboxd-null", "inboxd-maildir", "smtp-sink", "aiosmtpd-discard",
                "aiosmtpd-maildir", "postfix-maildir"]
DESCRIPTIONS = {
    "inboxd-null": "inboxd --sink null (counts and discards)",
    "inboxd-maildir": "inboxd, Maildir sink (fsync file and directory before 250)",
    "smtp-sink": "Postfix smtp-sink (discards; the reference)",
    "aiosmtpd-discard": "aiosmtpd 1 loop, handler returns 250 (bench/aiosmtpd_server.py)",
    "aiosmtpd-maildir": "aiosmtpd, Maildir handler, fsync in a thread pool",
    "postfix-maildir": "Postfix 3 smtpd+cleanup+qmgr+virtual(8) to Maildir (private instance)",
    "inboxd-maildir-syncfs": "inboxd, Maildir sink with `--maildir-sync syncfs` (`--headline`, "
                             "when inboxd has it)",
    "wire-floor": "bench/floor/wire-floor: replies and discards, nothing else; the least any "
                  "server costs per message on this kernel (`--headline`; never a mail server)",
}


def log(msg):
    print(msg, file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------
# Processes: start, readiness, CPU accounting from /proc, stop by PID.


def proc_stat(pid):
    """(ppid, utime+stime+cutime+cstime in ticks) of a process, or None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return int(fields[1]), sum(map(int, fields[11:15]))


def tree_cpu(root_pid):
    """CPU seconds of a process tree: every live process under root_pid (threads included) and
    the children each one has reaped (cutime/cstime), so a daemon's exited workers count."""
    parent, ticks = {}, {}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        st = proc_stat(pid)
        if st:
            parent[int(pid)], ticks[int(pid)] = st
    total, members = 0, {root_pid}
    changed = True
    while changed:
        changed = False
        for pid, ppid in parent.items():
            if ppid in members and pid not in members:
                members.add(pid)
                changed = True
    for pid in members:
        total += ticks.get(pid, 0)
    return total / TICK


def other_cpu(exclude_roots):
    """CPU seconds per process of everything but our own trees and kernel threads (noise)."""
    parent, ticks = {}, {}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        st = proc_stat(pid)
        if st and pid != "2" and st[0] != 2:
            parent[int(pid)], ticks[int(pid)] = st
    ours = set(exclude_roots)
    changed = True
    while changed:
        changed = False
        for pid, ppid in parent.items():
            if ppid in ours and pid not in ours:
                ours.add(pid)
                changed = True
    return {pid: t / TICK for pid, t in ticks.items() if pid not in ours}


def vm_rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


class Server:
    """One server under test: how to start it, where it stores mail, how to stop it."""

    def __init__(self, name, workdir, args, cpu):
        self.name, self.workdir, self.args, self.cpu = name, workdir, args, cpu
        self.port = free_port()
        self.dir = os.path.join(workdir, name)
        os.makedirs(self.dir)
        self.log = os.path.join(self.dir, "server.log")
        self.proc = None
        self.maildir_new = None  # emptied between runs so that the disk stays bounded
        self.cpu_root = None  # the PID whose process tree is charged

    def argv(self):
        a, p = self.args, self.port
        root = ["--allow-root"] if AS_ROOT else []
        common = [*root, "--listen", f"127.0.0.1:{p}", "--max-connections", "20000",
                  "--state-dir", os.path.join(self.dir, "state"), "--hostname", "inboxd.bench"]
        if self.name == "inboxd-null":
            return [a.inboxd, *common, "--sink", "null"], f"listening on 127.0.0.1:{p}"
        if self.name in ("inboxd-maildir", "inboxd-maildir-syncfs"):
            md = os.path.join(self.dir, "Maildir")
            self.maildir_new = os.path.join(md, "new")
            sync = ["--maildir-sync", "syncfs"] if self.name.endswith("-syncfs") else []
            return [a.inboxd, *common, "--sink", "maildir", "--maildir", md, *sync], \
                f"listening on 127.0.0.1:{p}"
        if self.name == "wire-floor":
            return [a.wire_floor, str(p)], f"listening on 127.0.0.1:{p}"
        if self.name == "smtp-sink":
            # Single process; refuses to run as root without -u. -m: at most this many sessions
            # (default 256, past which it stops accepting). Backlog 1024.
            return [SMTP_SINK, *(["-u", "nobody"] if AS_ROOT else []), "-m", "20000", "-4",
                    f"127.0.0.1:{p}", "1024"], None
        if self.name.startswith("aiosmtpd"):
            argv = [PYTHON, os.path.join(HERE, "aiosmtpd_server.py"), "--port", str(p)]
            if self.name == "aiosmtpd-maildir":
                md = os.path.join(self.dir, "Maildir")
                self.maildir_new = os.path.join(md, "new")
                argv += ["--handler", "maildir", "--maildir", md]
            else:
                argv += ["--handler", "discard"]
            return argv, f"listening on 127.0.0.1:{p}"
        raise ValueError(self.name)

    def start(self):
        argv, needle = self.argv()
        with open(self.log, "w") as f:
            self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=f, stderr=f,
                                         preexec_fn=pinned(self.cpu), cwd=self.dir)
        self.cpu_root = self.proc.pid
        log(f"# started {self.name} pid {self.proc.pid} port {self.port}")
        return self.wait_ready(needle, START_TIMEOUT)

    def wait_ready(self, needle, timeout):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self.proc.poll() is None:
            time.sleep(0.05)
            if needle:
                with open(self.log, errors="replace") as f:
                    if needle not in f.read():
                        continue
            if greets(self.port):
                return True
        return False

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def cpu_seconds(self):
        return tree_cpu(self.cpu_root)

    def settle(self):
        """Waits for work the server does after its last reply (Postfix delivers later)."""

    def clean(self):
        if self.maildir_new and os.path.isdir(self.maildir_new):
            for n in os.listdir(self.maildir_new):
                try:
                    os.unlink(os.path.join(self.maildir_new, n))
                except OSError:
                    pass

    def stop(self):
        if self.proc is not None:
            stop(self.proc)

    def tail(self):
        try:
            with open(self.log, errors="replace") as f:
                return f.read()[-1500:]
        except OSError:
            return ""


class PostfixServer(Server):
    """A private Postfix instance: own config dir, queue, data dir and port, delivering to one
    Maildir through virtual(8). Started with `postfix -c DIR start-fg`; never the system's."""

    def start(self):
        if not AS_ROOT:
            log("# postfix-maildir skipped: a Postfix instance must be started as root")
            return False
        if not os.path.exists(POSTFIX):
            log("# postfix-maildir skipped: no /usr/sbin/postfix")
            return False
        d = self.dir
        conf, self.queue = os.path.join(d, "conf"), os.path.join(d, "queue")
        vmail = os.path.join(d, "vmail")
        for sub in (conf, self.queue, vmail):
            os.makedirs(sub, exist_ok=True)
        os.chmod(d, 0o755)
        shutil.chown(vmail, "nobody", "nogroup")
        self.maildir_new = os.path.join(vmail, "mailbox", "new")
        self.log = os.path.join(d, "maillog")
        with open(os.path.join(conf, "main.cf"), "w") as f:
            f.write(f"""# Written by bench/harness.py for one benchmark run.
compatibility_level = 3.6
queue_directory = {self.queue}
data_directory = {os.path.join(d, 'data')}
mail_owner = postfix
setgid_group = postdrop
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
myhostname = postfix.bench
mydomain = bench
myorigin = $myhostname
mydestination =
mynetworks = 127.0.0.0/8
relay_domains =
smtpd_relay_restrictions = permit_mynetworks, reject_unauth_destination
virtual_mailbox_domains = inboxd.example
virtual_mailbox_base = {vmail}
virtual_mailbox_maps = static:mailbox/
virtual_uid_maps = static:{65534}
virtual_gid_maps = static:{65534}
virtual_minimum_uid = 1
alias_maps =
alias_database =
local_recipient_maps =
in_flow_delay = 0
smtpd_client_connection_count_limit = 0
smtpd_client_connection_rate_limit = 0
smtpd_client_message_rate_limit = 0
default_process_limit = 300
message_size_limit = 67108864
maillog_file = {self.log}
maillog_file_prefixes = {d}
smtputf8_enable = no
biff = no
""")
        services = """pickup unix n - n 60 1 pickup
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
showq unix n - n - - showq
error unix - - n - - error
retry unix - - n - - error
discard unix - - n - - discard
local unix - n n - - local
virtual unix - n n - - virtual
anvil unix - - n - 1 anvil
scache unix - - n - 1 scache
postlog unix-dgram n - n - 1 postlogd
"""
        with open(os.path.join(conf, "master.cf"), "w") as f:
            f.write(f"127.0.0.1:{self.port} inet n - n - - smtpd\n{services}")
        self.conf = conf
        self.fg_log = os.path.join(d, "start-fg.log")
        with open(self.fg_log, "w") as f:
            self.proc = subprocess.Popen([POSTFIX, "-c", conf, "start-fg"],
                                         stdin=subprocess.DEVNULL, stdout=f, stderr=f,
                                         preexec_fn=pinned(self.cpu), cwd=d)
        self.cpu_root = self.proc.pid
        log(f"# started postfix-maildir (postfix -c {conf} start-fg) pid {self.proc.pid} "
            f"port {self.port}")
        if self.wait_ready(None, 30):
            return True
        log(f"# postfix-maildir skipped: not ready within 30 s; log:\n{self.tail()}")
        self.stop()
        return False

    def queue_files(self):
        n = 0
        for sub in ("incoming", "active", "deferred", "maildrop", "hold"):
            for _, _, files in os.walk(os.path.join(self.queue, sub)):
                n += len(files)
        return n

    def settle(self):
        # smtpd replies 250 once cleanup has queued the message; delivery comes later and its
        # CPU belongs to the run. Wait (at most 30 s) for an empty queue.
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and self.queue_files():
            time.sleep(0.1)

    def stop(self):
        if self.proc is None:
            return
        if self.proc.poll() is None:
            subprocess.run([POSTFIX, "-c", self.conf, "stop"], stdin=subprocess.DEVNULL,
                           capture_output=True, timeout=30)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                pid = self.master_pid()
                if pid:  # The master we started, by the PID it wrote.
                    try:
                        os.kill(pid, signal.SIGTERM)
                    except OSError:
                        pass
                stop(self.proc)
        self.proc = None

    def master_pid(self):
        try:
            with open(os.path.join(self.queue, "pid", "master.pid")) as f:
                return int(f.read().strip())
        except (OSError, ValueError):
            return None


def make_server(name, workdir, args, cpu):
    cls = PostfixServer if name == "postfix-maildir" else Server
    return cls(name, workdir, args, cpu)


def start_server(name, workdir, args, cpu):
    """Makes and starts one server; returns (server, whether it is ready)."""
    s = make_server(name, workdir, args, cpu)
    try:
        return s, s.start()
    except OSError as e:
        log(f"# {name}: cannot start: {e}")
        return s, False


# ---------------------------------------------------------------------------------------------
# One load-generator run.


def run_bench(args, port, size, conns, pipelining, messages, time_cap, cpu):
    """inboxd-bench --json, cut with SIGINT (which makes it finish and report) after time_cap s.
    Returns (dict, None) or (None, reason)."""
    argv = [args.bench, "--port", str(port), "--connections", str(conns), "--messages",
            str(messages), "--size", str(size), "--pipelining", pipelining, "--json",
            "--progress", "off", "--timeout", "10"]
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, preexec_fn=pinned(cpu))
    interrupted = False
    try:
        out, err = proc.communicate(timeout=time_cap)
    except subprocess.TimeoutExpired:
        interrupted = True
        proc.send_signal(signal.SIGINT)  # Finish what is in flight, then print the summary.
        try:
            out, err = proc.communicate(timeout=15)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGINT)  # The second one stops at once.
            try:
                out, err = proc.communicate(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.communicate()
                return None, "did not stop after SIGINT"
    try:
        result = json.loads(out)
    except ValueError:
        last = (err.strip().splitlines() or ["no output"])[-1]
        return None, f"exit {proc.returncode}: {last}"
    result["interrupted"] = interrupted
    if not result.get("accepted"):
        return None, f"nothing accepted: {result.get('last_error') or err.strip()[-200:]}"
    return result, None


# ---------------------------------------------------------------------------------------------
# The matrix.


def size_label(size):
    return f"{size // MIB} MiB" if size >= MIB else f"{size // KIB} KiB"


def run_matrix(args, workdir):
    sizes = [1 * KIB, 64 * KIB] if args.quick else [1 * KIB, 64 * KIB, 1 * MIB]
    conn_counts = [1, 16] if args.quick else [1, 16, 256]
    pipelinings = ["group", "off"]
    if args.sizes:
        sizes = [parse_size(s) for s in args.sizes.split(",")]
    if args.connections:
        conn_counts = [int(c) for c in args.connections.split(",")]
    if args.pipelining:
        pipelinings = args.pipelining.split(",")
    reps = args.reps or 2
    time_cap = args.time_cap or (1.5 if args.quick else 2.5)

    names = [n for n in SERVER_ORDER if n != "postfix-maildir" or args.with_postfix]
    if args.servers:
        names = [n for n in args.servers.split(",")]
        if "smtp-sink" not in names:
            names.append("smtp-sink")  # ratios need it
    pin = not args.no_pin and len(os.sched_getaffinity(0)) >= 2
    server_cpu, client_cpu = (0, 1) if pin else (None, None)

    servers = []
    for name in names:
        s, ok = start_server(name, workdir, args, server_cpu)
        servers.append(s)
        if not ok:
            if name != "postfix-maildir":
                log(f"# {name} not ready; log:\n{s.tail()}")
            s.stop()
            servers.pop()
            if name == "smtp-sink":
                raise SystemExit("error: smtp-sink does not start; no ratios without it")
    rows = []
    t_start = time.monotonic()
    try:
        for size in sizes:
            for conns in conn_counts:
                for pl in pipelinings:
                    # Short runs: a message count, capped by bytes for large messages and never
                    # fewer than 2 per connection; and a time cap (SIGINT ends the run).
                    messages = min(args.max_messages, max(args.max_bytes // size, 2 * conns))
                    samples = {s.name: [] for s in servers}
                    roots = [os.getpid()] + [s.cpu_root for s in servers]
                    other0, wall0 = other_cpu(roots), time.monotonic()
                    for rep in range(reps):
                        for s in servers:
                            if not s.alive():
                                continue
                            c0 = s.cpu_seconds()
                            r, err = run_bench(args, s.port, size, conns, pl, messages,
                                               time_cap, client_cpu)
                            s.settle()
                            c1 = s.cpu_seconds()
                            s.clean()
                            tag = f"{size_label(size)} c={conns} pipelining={pl} {s.name}"
                            if not s.alive():
                                log(f"# {tag}: server died; log:\n{s.tail()}")
                                continue
                            if err:
                                log(f"# {tag}: FAILED: {err}")
                                continue
                            r["server_cpu_s"] = c1 - c0
                            samples[s.name].append(r)
                            log(f"# {tag} rep {rep + 1}: {r['messages_per_second']:.0f} msgs/s "
                                f"({r['accepted']} msgs{', cut' if r['interrupted'] else ''}), "
                                f"server CPU {1e6 * (c1 - c0) / r['accepted']:.1f}"
                                f" ms/1k")
                    other1 = other_cpu(roots)
                    other = sum(t - other0.get(p, 0) for p, t in other1.items())
                    other_pct = 100 * other / max(time.monotonic() - wall0, 1e-3)
                    rows += summarise(size, conns, pl, samples, other_pct, reps)
    finally:
        for s in servers:
            s.stop()
            log(f"# stopped {s.name}")
    log(f"# matrix took {time.monotonic() - t_start:.0f} s")
    return {"date": now_iso(), "quick": args.quick, "reps": reps, "time_cap_s": time_cap,
            "max_messages": args.max_messages, "max_bytes": args.max_bytes, "pinned": pin,
            "servers": [s.name for s in servers], "rows": rows}


def summarise(size, conns, pl, samples, other_pct, reps):
    out = []
    for name, rs in samples.items():
        row = {"size": size, "connections": conns, "pipelining": pl, "server": name,
               "runs": len(rs), "other_cpu_pct": round(other_pct, 1)}
        if rs:
            rate = statistics.median(r["messages_per_second"] for r in rs)
            cpu = statistics.median(1000 * r["server_cpu_s"] / r["accepted"] * 1000 for r in rs)
            row.update({
                "msgs_per_s": round(rate, 1),
                "mb_per_s": round(statistics.median(r["megabytes_per_second"] for r in rs), 2),
                "server_cpu_ms_per_1k": round(cpu, 2),
                "p50_ms": round(statistics.median(r["latency_us"]["p50"] for r in rs) / 1000, 3),
                "p99_ms": round(statistics.median(r["latency_us"]["p99"] for r in rs) / 1000, 3),
                "messages": sum(r["accepted"] for r in rs),
                "failed": sum(r["failed"] + r["refused"] for r in rs),
                "cut": sum(1 for r in rs if r["interrupted"]),
                "spread_pct": round((max(r["messages_per_second"] for r in rs) -
                                     min(r["messages_per_second"] for r in rs)) / 2 / rate * 100,
                                    1),
                "server_pipelining": all(r["sessions_pipelining"] > 0 for r in rs),
                "writes_per_tx": round(statistics.median(r["writes_per_transaction"] for r in rs),
                                       2),
            })
        out.append(row)
    sink = next((r for r in out if r["server"] == "smtp-sink" and r.get("msgs_per_s")), None)
    for r in out:
        if sink and r.get("msgs_per_s"):
            r["ratio_msgs"] = round(r["msgs_per_s"] / sink["msgs_per_s"], 3)
            if sink["server_cpu_ms_per_1k"] > 0:
                r["ratio_cpu"] = round(r["server_cpu_ms_per_1k"] / sink["server_cpu_ms_per_1k"],
                                       3)
    return out


def parse_size(s):
    s = s.strip()
    mult = {"k": KIB, "K": KIB, "m": MIB, "M": MIB}.get(s[-1], 1)
    return int(s[:-1] if mult != 1 else s) * mult


# ---------------------------------------------------------------------------------------------
# Memory: RSS per idle connection.


def raise_nofile(want):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if AS_ROOT and hard < want:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, want))
            return want
        except (OSError, ValueError):
            pass
    new = min(max(soft, want), hard)
    resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))
    return new


def hold_idle(port, count, timeout):
    """Opens `count` connections to port, reads each greeting, keeps them open. Returns the
    sockets and how many were greeted. At most 256 connects are pending at once."""
    sel = selectors.DefaultSelector()
    socks, greeted, pending, opened = [], 0, 0, 0
    deadline = time.monotonic() + timeout
    while greeted < count and time.monotonic() < deadline:
        while opened < count and pending < 256:
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.setblocking(False)
            s.connect_ex(("127.0.0.1", port))
            sel.register(s, selectors.EVENT_READ)
            socks.append(s)
            opened += 1
            pending += 1
        for key, _ in sel.select(timeout=0.5):
            s = key.fileobj
            try:
                data = s.recv(4096)
            except (BlockingIOError, InterruptedError):
                continue
            except OSError:
                data = b""
            sel.unregister(s)
            pending -= 1
            if data.startswith(b"220"):
                greeted += 1
    sel.close()
    return socks, greeted


def run_memory(args, workdir, names=("inboxd-null", "smtp-sink"), count=None):
    n = count or args.idle_connections
    got = raise_nofile(n + 1000)
    if got < n + 100:
        log(f"# memory: RLIMIT_NOFILE is {got}; fewer connections than asked")
        n = got - 100
    results = []
    sub = os.path.join(workdir, "memory")
    os.makedirs(sub)
    for name in names:
        s = make_server(name, sub, args, None)
        try:
            if not s.start():
                log(f"# memory: {name} not ready; log:\n{s.tail()}")
                continue
            time.sleep(0.5)
            before = vm_rss_kib(s.proc.pid)
            socks, greeted = hold_idle(s.port, n, 120)
            time.sleep(1.0)
            after = vm_rss_kib(s.proc.pid)
            fds = len(os.listdir(f"/proc/{s.proc.pid}/fd"))
            for sock in socks:
                sock.close()
            per = (after - before) * 1024 / max(greeted, 1)
            log(f"# memory {name}: {greeted}/{n} idle connections greeted, VmRSS {before} -> "
                f"{after} KiB, {per:.0f} bytes per connection, {fds} fds")
            results.append({"server": name, "connections": greeted, "asked": n,
                            "rss_before_kib": before, "rss_after_kib": after,
                            "bytes_per_connection": round(per), "server_fds": fds})
        finally:
            s.stop()
        time.sleep(1)
    return {"date": now_iso(), "rows": results}


# ---------------------------------------------------------------------------------------------
# Instructions per message under callgrind.


def callgrind_total(path):
    with open(path, errors="replace") as f:
        for line in f:
            if line.startswith(("summary:", "totals:")):
                return int(line.split()[1])
    raise ValueError(f"no summary in {path}")


def run_callgrind(args, workdir, names=("inboxd-null", "smtp-sink"), messages=None,
                  profiles=None):
    """Instructions per message of each server; profiles, if a dict, gets each server's
    (baseline, run) callgrind.out paths (they live in workdir)."""
    if not os.path.exists(VALGRIND):
        log("# callgrind skipped: no valgrind")
        return None
    messages = messages or args.callgrind_messages
    rows = []
    for name in names:
        totals = {}
        for label, count in (("baseline", 0), ("run", messages)):
            sub = os.path.join(workdir, f"cg-{label}")
            os.makedirs(sub, exist_ok=True)
            s = make_server(name, sub, args, None)
            os.chmod(s.dir, 0o777)  # smtp-sink writes its profile as nobody
            out = os.path.join(s.dir, "callgrind.out")
            argv, needle = s.argv()
            # valgrind creates the file at start and writes it at exit, after smtp-sink has
            # become nobody: give it to nobody beforehand.
            open(out, "w").close()
            if AS_ROOT and name == "smtp-sink":
                shutil.chown(out, "nobody")
            vg = [VALGRIND, "--tool=callgrind", "--vgdb=no", f"--callgrind-out-file={out}",
                  "--trace-children=no"]
            with open(s.log, "w") as f:
                s.proc = subprocess.Popen(vg + argv, stdin=subprocess.DEVNULL, stdout=f,
                                          stderr=f, cwd=s.dir)
            s.cpu_root = s.proc.pid
            try:
                if not s.wait_ready(needle, 120):
                    log(f"# callgrind {name}: not ready; log:\n{s.tail()}")
                    break
                if count:
                    r, err = run_bench(args, s.port, 1024, 1, "group", count, 300, None)
                    if err or r["accepted"] != count:
                        log(f"# callgrind {name}: bench failed: {err or r['accepted']}")
                        break
            finally:
                stop(s.proc, grace=60)
            totals[label] = callgrind_total(out)
            if profiles is not None:
                profiles.setdefault(name, {})[label] = out
        if len(totals) == 2:
            per = (totals["run"] - totals["baseline"]) / messages
            log(f"# callgrind {name}: Ir baseline {totals['baseline']:,}, with {messages} "
                f"messages {totals['run']:,}: {per:,.0f} instructions per message")
            rows.append({"server": name, "messages": messages, "ir_baseline": totals["baseline"],
                         "ir_run": totals["run"], "instructions_per_message": round(per)})
    sink = next((r for r in rows if r["server"] == "smtp-sink"), None)
    for r in rows:
        if sink:
            r["ratio"] = round(r["instructions_per_message"] / sink["instructions_per_message"], 3)
    return {"date": now_iso(), "message_size": 1024, "connections": 1, "pipelining": "group",
            "rows": rows}


# ---------------------------------------------------------------------------------------------
# The micro benchmark.


def run_micro(args):
    exe = args.proto_bench
    if not os.path.exists(exe):
        log(f"# micro skipped: no {exe} (build the project: it is bench/micro/proto-bench)")
        return None
    r = subprocess.run([exe, "--json"], capture_output=True, text=True, timeout=300)
    if r.returncode != 0:
        log(f"# micro failed: {r.stderr.strip()}")
        return None
    d = json.loads(r.stdout)
    d["date"] = now_iso()
    return d


# ---------------------------------------------------------------------------------------------
# The headline (--headline): issue 10's figures in one run, servers alternating.

# What each figure must reach (issue 10), and which way is better.
HEADLINE_GOALS = {
    "instructions": (0.25, "<="), "source_cpu": (0.65, "<="), "bench_msgs": (2.0, ">="),
    "maildir_vs_null": (0.5, ">="), "memory": (1024, "<="), "allocations": (2, "<="),
}
HEADLINE_FULL = {"reps": 3, "source_s": 2.0, "source_min_s": 1.5, "bench_s": 2.5,
                 "bench_min_s": 2.0, "latency_s": 2.0, "callgrind_messages": 2000,
                 "idle_connections": 2000, "strace_messages": 5000, "micro_seconds": 0.5,
                 "micro_reps": 3, "first": 1.0}
# --headline-quick: every step, with runs too short to mean anything (a test of the harness).
HEADLINE_QUICK = {"reps": 1, "source_s": 0.3, "source_min_s": 0.1, "bench_s": 0.3,
                  "bench_min_s": 0.1, "latency_s": 0.3, "callgrind_messages": 100,
                  "idle_connections": 200, "strace_messages": 500, "micro_seconds": 0.05,
                  "micro_reps": 1, "first": 0.2}


def headline_tools(args):
    """Every program the headline runs, or a clear exit: a missing tool is no silent gap."""
    need = [(SMTP_SOURCE, "package postfix"), (SMTP_SINK, "package postfix"),
            (STRACE, "package strace"), (VALGRIND, "package valgrind"),
            (CALLGRIND_ANNOTATE, "package valgrind"),
            (args.wire_floor, "build the project: bench/floor/wire-floor"),
            (args.proto_bench, "build the project: bench/micro/proto-bench")]
    missing = [f"{exe} ({how})" for exe, how in need if not os.access(exe, os.X_OK)]
    if missing:
        sys.exit("error: --headline needs " + "; ".join(missing))


def has_maildir_sync(args):
    r = subprocess.run([args.inboxd, "--help"], capture_output=True, text=True, timeout=30)
    return "--maildir-sync" in r.stdout + r.stderr


def start_all(names, workdir, args, cpu):
    servers = []
    for name in names:
        s, ok = start_server(name, workdir, args, cpu)
        servers.append(s)
        if not ok:
            for t in servers:
                t.stop()
            raise SystemExit(f"error: --headline: {name} does not start; log:\n{s.tail()}")
    return servers


def source_run(server, sessions, messages, cpu, timeout=300):
    """smtp-source -d -s SESSIONS -l 1024, timed around the process. Returns (dict, None) or
    (None, reason). Server CPU: its process tree, from /proc; client CPU: getrusage."""
    argv = [SMTP_SOURCE, "-4", "-d", "-s", str(sessions), "-m", str(messages), "-l", "1024",
            "-M", "bench.example", "-f", "sender@bench.example", "-t", "rcpt@bench.example",
            f"127.0.0.1:{server.port}"]
    c0, u0 = server.cpu_seconds(), resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.monotonic()
    try:
        r = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                           timeout=timeout, preexec_fn=pinned(cpu))
    except subprocess.TimeoutExpired:
        return None, f"smtp-source timed out after {timeout} s"
    t1 = time.monotonic()
    server.settle()
    c1, u1 = server.cpu_seconds(), resource.getrusage(resource.RUSAGE_CHILDREN)
    server.clean()
    if r.returncode != 0:
        return None, f"smtp-source exit {r.returncode}: {(r.stderr.strip() or 'no output')[-300:]}"
    if not server.alive():
        return None, f"server died; log:\n{server.tail()}"
    client = (u1.ru_utime + u1.ru_stime) - (u0.ru_utime + u0.ru_stime)
    return {"messages": messages, "seconds": round(t1 - t0, 3),
            "msgs_per_s": messages / (t1 - t0),
            "server_cpu_us_per_msg": 1e6 * (c1 - c0) / messages,
            "client_cpu_us_per_msg": 1e6 * client / messages}, None


def bench_run(args, server, conns, messages, cpu, seconds):
    """inboxd-bench --pipelining on, --json; the same figures as source_run, and latency."""
    c0 = server.cpu_seconds()
    r, err = run_bench(args, server.port, 1024, conns, "on", messages, max(10, 4 * seconds), cpu)
    server.settle()
    c1 = server.cpu_seconds()
    server.clean()
    if err:
        return None, err
    if not server.alive():
        return None, f"server died; log:\n{server.tail()}"
    n = r["accepted"]
    return {"messages": n, "seconds": r["measured_seconds"],
            "msgs_per_s": r["messages_per_second"], "server_cpu_us_per_msg": 1e6 * (c1 - c0) / n,
            "client_cpu_us_per_msg": 1e6 * (r["cpu_user_seconds"] + r["cpu_system_seconds"]) / n,
            "p50_us": r["latency_us"]["p50"], "p99_us": r["latency_us"]["p99"],
            "cut": r["interrupted"]}, None


def alternate(servers, reps, run_one, first_count, target_s, min_s, tag):
    """A calibration run per server (its warm-up too, not counted; repeated longer while it is
    under a quarter of target_s) sets how many messages make a run of target_s; then reps rounds, servers in turn (A B C, A B C, ...). A run shorter than
    min_s is kept, marked short, and the next one of that server is made longer.
    Returns {name: [run, ...]}."""
    counts, samples = {}, {s.name: [] for s in servers}
    first_count = max(1, int(first_count))
    for s in servers:
        n = first_count
        for _ in range(4):  # a run too short to time well is calibrated again, longer
            r, err = run_one(s, n)
            if err:
                raise SystemExit(f"error: --headline: {tag} {s.name}: {err}")
            if r["seconds"] >= target_s / 4:
                break
            n = max(2 * n, int(r["msgs_per_s"] * target_s / 3))
        counts[s.name] = max(1, int(r["msgs_per_s"] * target_s))
    for rep in range(reps):
        for s in servers:
            r, err = run_one(s, counts[s.name])
            if err:
                log(f"# {tag} {s.name} rep {rep + 1}: FAILED: {err}")
                continue
            r["short"] = r["seconds"] < min_s
            if r["short"]:
                counts[s.name] = int(counts[s.name] * target_s / max(r["seconds"], 1e-3)) + 1
            samples[s.name].append(r)
            log(f"# {tag} {s.name} rep {rep + 1}: {r['msgs_per_s']:,.0f} msgs/s over "
                f"{r['seconds']:.2f} s ({r['messages']:,} msgs{', SHORT' if r['short'] else ''}),"
                f" server CPU {r['server_cpu_us_per_msg']:.1f} us/msg")
    return samples


def medians(samples):
    """The median of every numeric figure of a server's runs, and the runs themselves."""
    out = {}
    for name, runs in samples.items():
        if not runs:
            out[name] = {"runs": 0}
            continue
        row = {"runs": len(runs), "short_runs": sum(1 for r in runs if r.get("short")),
               "seconds_min": min(r["seconds"] for r in runs)}
        for k in ("msgs_per_s", "server_cpu_us_per_msg", "client_cpu_us_per_msg", "p50_us",
                  "p99_us"):
            if k in runs[0]:
                row[k] = round(statistics.median(r[k] for r in runs), 2)
        row["samples"] = [{k: (round(v, 2) if isinstance(v, float) else v) for k, v in r.items()}
                          for r in runs]
        out[name] = row
    return out


def annotate_functions(path):
    """{function: Ir} of a callgrind profile, every function (callgrind_annotate, self cost)."""
    r = subprocess.run([CALLGRIND_ANNOTATE, "--threshold=100", path], capture_output=True,
                       text=True, timeout=300)
    if r.returncode != 0:
        raise SystemExit(f"error: callgrind_annotate {path}: {r.stderr.strip()[-300:]}")
    funcs = {}
    for line in r.stdout.splitlines():
        parts = line.split(None, 1)
        if len(parts) != 2 or not parts[0].replace(",", "").isdigit():
            continue
        rest = parts[1]
        if rest.startswith("("):  # "(12.34%)" after the count, in newer valgrind
            rest = rest.split(")", 1)[1].strip()
        if rest.startswith("PROGRAM TOTALS") or not rest:
            continue
        name, _, obj = rest.partition(" [")  # the object file in brackets is left out...
        if name.startswith("???:"):
            name = name[4:]  # no source file known
        if name.startswith("0x") and obj:  # ...but for a function without a name
            name += f" in {os.path.basename(obj.rstrip(']'))}"
        funcs[name] = funcs.get(name, 0) + int(parts[0].replace(",", ""))
    return funcs


def profile_top(profiles, messages, n=10):
    """The n functions with the most instructions per message: run minus baseline."""
    run, base = annotate_functions(profiles["run"]), annotate_functions(profiles["baseline"])
    per = {f: (ir - base.get(f, 0)) / messages for f, ir in run.items()}
    total = sum(v for v in per.values() if v > 0)
    top = sorted(per.items(), key=lambda kv: -kv[1])[:n]
    return [{"function": f, "instructions_per_message": round(v),
             "percent": round(100 * v / total, 1) if total else 0} for f, v in top]


ALLOC_FUNCTIONS = ("malloc", "calloc", "realloc", "aligned_alloc", "posix_memalign", "memalign")


def callgrind_callers(path, names):
    """{caller: calls} of the calls a callgrind profile saw into the named functions. The file
    names a function once, as "fn=(ID) NAME" or "cfn=(ID) NAME", then by "(ID)" alone; fn= sets
    the caller, and "calls=N ..." follows the cfn= of the callee."""
    ids, caller, target, out = {}, None, None, {}
    with open(path, errors="replace") as f:
        for line in f:
            if line.startswith(("fn=", "cfn=")):
                ref, _, name = line.rstrip("\n").partition("=")[2].partition(" ")
                if name:
                    ids[ref] = name.strip()
                if line.startswith("cfn="):
                    target = ids.get(ref)
                else:
                    caller, target = ids.get(ref), None
            elif line.startswith("calls="):
                if target in names:
                    out[caller] = out.get(caller, 0) + int(line[6:].split()[0])
                target = None
    return out


def callgrind_calls(path, names=ALLOC_FUNCTIONS):
    """How many calls a callgrind profile saw into libc's allocator (operator new calls malloc,
    so each allocation counts once)."""
    return sum(callgrind_callers(path, names).values())


NEW_FUNCTIONS = ("operator new(unsigned long)", "operator new[](unsigned long)",
                 "operator new(unsigned long, std::nothrow_t const&)",
                 "operator new(unsigned long, std::align_val_t)")


def allocating_callers(profiles, messages):
    """Who calls operator new or malloc per message (run minus baseline), most first."""
    def callers(path):
        c = callgrind_callers(path, NEW_FUNCTIONS)
        for k, v in callgrind_callers(path, ALLOC_FUNCTIONS).items():
            if not k or not k.startswith("operator new"):  # new's own malloc is counted above
                c[k] = c.get(k, 0) + v
        return c
    run, base = callers(profiles["run"]), callers(profiles["baseline"])
    per = {k: (v - base.get(k, 0)) / messages for k, v in run.items()}
    return [{"caller": k, "per_message": round(v, 2)}
            for k, v in sorted(per.items(), key=lambda kv: -kv[1]) if v >= 0.05]


def parse_strace(path):
    """{syscall: calls} from strace -c's table."""
    calls = {}
    with open(path, errors="replace") as f:
        for line in f:
            t = line.split()
            if len(t) < 5 or not t[0].replace(".", "").isdigit() or t[-1] == "total":
                continue
            try:
                calls[t[-1]] = int(t[3])
            except ValueError:
                continue
    return calls


def strace_counts(server, messages, cpu, outdir):
    """System calls of the server (every thread, -f) while smtp-source sends `messages`: strace
    -c slows the server, so these are counts, never rates. Per 1,000 messages."""
    out = os.path.join(outdir, f"strace-{server.name}.txt")
    err = os.path.join(outdir, f"strace-{server.name}.err")
    with open(err, "w") as ef:
        st = subprocess.Popen([STRACE, "-c", "-f", "-o", out, "-p", str(server.cpu_root)],
                              stdin=subprocess.DEVNULL, stdout=ef, stderr=ef,
                              preexec_fn=pinned(cpu))
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and st.poll() is None:
            with open(err, errors="replace") as f:
                if "attached" in f.read():
                    break
            time.sleep(0.05)
        if st.poll() is not None:
            raise SystemExit(f"error: strace could not attach to {server.name}: {tail(err)}")
        r, e = source_run(server, 20, messages, cpu)
        if e:
            raise SystemExit(f"error: --headline: strace run on {server.name}: {e}")
    finally:
        if st.poll() is None:
            st.send_signal(signal.SIGINT)  # detach and write the summary
            try:
                st.wait(timeout=30)
            except subprocess.TimeoutExpired:
                st.kill()
                st.wait()
    calls = parse_strace(out)
    log(f"# strace {server.name}: {sum(calls.values()):,} system calls for {messages:,} "
        "messages")
    if not calls:
        raise SystemExit(f"error: strace -c gave no table for {server.name}: {tail(err)}")
    return {k: round(v * 1000 / messages, 1) for k, v in sorted(calls.items(),
                                                               key=lambda kv: -kv[1])}


def ratio(a, b):
    return round(a / b, 3) if a is not None and b else None


def goal_met(key, value):
    if value is None:
        return None
    goal, way = HEADLINE_GOALS[key]
    return value <= goal if way == "<=" else value >= goal


def run_headline(args, workdir):
    P = HEADLINE_QUICK if args.headline_quick else HEADLINE_FULL
    headline_tools(args)
    pin = not args.no_pin and len(os.sched_getaffinity(0)) >= 2
    server_cpu, client_cpu = (0, 1) if pin else (None, None)
    sync = has_maildir_sync(args)
    t_start = time.monotonic()
    H = {"date": now_iso(), "quick": args.headline_quick, "pinned": pin, "params": P,
         "maildir_sync_syncfs": sync}

    # a. Instructions per message under callgrind (unpinned: a count, not a time).
    log("# headline a: callgrind")
    profiles = {}
    cg = run_callgrind(args, os.path.join(workdir, "cg"), ("inboxd-null", "smtp-sink",
                                                           "wire-floor"),
                       P["callgrind_messages"], profiles)
    if not cg or len(cg["rows"]) < 3:
        raise SystemExit("error: --headline: callgrind did not measure every server")
    H["callgrind"] = cg
    H["profile_top"] = profile_top(profiles["inboxd-null"], P["callgrind_messages"])
    H["heap_allocations_per_message"] = {
        name: round((callgrind_calls(p["run"]) - callgrind_calls(p["baseline"])) /
                    P["callgrind_messages"], 2) for name, p in profiles.items()}
    H["allocating_callers"] = allocating_callers(profiles["inboxd-null"], P["callgrind_messages"])

    # b, c, f. smtp-source, inboxd-bench and strace, against the same three servers.
    trio = ["inboxd-null", "smtp-sink", "wire-floor"]
    sub = os.path.join(workdir, "load")
    os.makedirs(sub)
    maildirs = ["inboxd-maildir"] + (["inboxd-maildir-syncfs"] if sync else [])
    servers = start_all(trio + maildirs, sub, args, server_cpu)
    by = {s.name: s for s in servers}
    roots = [os.getpid()] + [s.cpu_root for s in servers]
    other0, wall0 = other_cpu(roots), time.monotonic()
    try:
        log("# headline b: smtp-source -d -s 20 -l 1024")
        H["source"] = medians(alternate(
            [by[n] for n in trio], P["reps"],
            lambda s, n: source_run(s, 20, n, client_cpu), 5000 * P["first"], P["source_s"],
            P["source_min_s"], "smtp-source"))
        log("# headline c: inboxd-bench -c 16 --size 1024 --pipelining on")
        H["bench"] = medians(alternate(
            [by[n] for n in trio], P["reps"],
            lambda s, n: bench_run(args, s, 16, n, client_cpu, P["bench_s"]), 20000 * P["first"],
            P["bench_s"], P["bench_min_s"], "inboxd-bench"))
        log("# headline d: durable Maildir, smtp-source -d -s 20 -l 1024, beside inboxd-null")
        H["maildir"] = medians(alternate(
            [by[n] for n in ["inboxd-null"] + maildirs], P["reps"],
            lambda s, n: source_run(s, 20, n, client_cpu), 1000 * P["first"], P["source_s"],
            P["source_min_s"], "maildir"))
        H["latency"] = {}
        for conns in (1, 20):
            got = medians(alternate(
                [by[n] for n in maildirs], P["reps"],
                lambda s, n, c=conns: bench_run(args, s, c, n, client_cpu, P["latency_s"]),
                50 * conns, P["latency_s"], P["latency_s"] / 2, f"latency c={conns}"))
            for name, row in got.items():
                H["latency"].setdefault(name, {})[str(conns)] = row
        log("# headline f: strace -c -f")
        H["strace"] = {n: strace_counts(by[n], P["strace_messages"], client_cpu, sub)
                       for n in ["inboxd-null", *maildirs, "smtp-sink", "wire-floor"]}
        H["strace_messages"] = P["strace_messages"]
        other1 = other_cpu(roots)
        H["other_cpu_pct"] = round(100 * sum(t - other0.get(p, 0) for p, t in other1.items()) /
                                   max(time.monotonic() - wall0, 1e-3), 1)
    finally:
        for s in servers:
            s.stop()

    # e. Memory per idle greeted connection.
    log("# headline e: memory per idle connection")
    mem = run_memory(args, os.path.join(workdir, "mem"), trio, P["idle_connections"])
    H["memory"] = {r["server"]: r for r in mem["rows"]}

    # g. The micro benchmark: decoder GB/s on 78-column text, allocations.
    log("# headline g: proto-bench")
    r = subprocess.run([args.proto_bench, "--json", "--no-hostile", "--seconds",
                        str(P["micro_seconds"]), "--reps", str(P["micro_reps"])],
                       capture_output=True, text=True, timeout=600)
    if r.returncode != 0:
        raise SystemExit(f"error: proto-bench failed: {r.stderr.strip()[-300:]}")
    mi = json.loads(r.stdout)
    H["micro"] = {k: mi.get(k) for k in ("1k", "64k", "allocations_per_message",
                                         "allocations_per_message_null_sink",
                                         "allocations_per_command", "allocations")}
    H["decoder_gb_per_s"] = round(mi["64k"]["decoder_mb_per_s"] / 1000, 2)
    if "allocations_per_message" not in mi:
        raise SystemExit("error: proto-bench reports no allocation counts (an old build?)")

    H["table"] = headline_table(H)
    H["seconds"] = round(time.monotonic() - t_start)
    log(f"# headline took {H['seconds']} s")
    return H


def headline_table(H):
    """The five figures of issue 10 (and two more for context), ratios to smtp-sink."""
    rows = []

    def add(figure, unit, vals, r, key=None, goal_text=None):
        goal = HEADLINE_GOALS.get(key)
        rows.append({"figure": figure, "unit": unit, "inboxd": vals[0], "smtp-sink": vals[1],
                     "floor": vals[2], "ratio": r,
                     "goal": goal_text or (f"{goal[1].replace('<=', '≤').replace('>=', '≥')} "
                                           f"{goal[0]}×" if goal else None),
                     "met": goal_met(key, vals[0] if key in ("memory", "allocations") else r)
                     if key else None})

    cg = {r["server"]: r["instructions_per_message"] for r in H["callgrind"]["rows"]}
    add("user-space instructions per 1 KiB message (callgrind, 1 session)", "instructions",
        [cg.get("inboxd-null"), cg.get("smtp-sink"), cg.get("wire-floor")],
        ratio(cg.get("inboxd-null"), cg.get("smtp-sink")), "instructions")
    al = H.get("heap_allocations_per_message", {})
    if al:
        av = [al.get(n) for n in ("inboxd-null", "smtp-sink", "wire-floor")]
        add("heap allocations per message, whole server (callgrind: malloc calls)", "calls", av,
            None, "allocations", "≤ 2 per msg")
    src = H["source"]
    g = lambda d, n, k: d.get(n, {}).get(k)  # noqa: E731
    add("server CPU per message, smtp-source -s 20 (us)", "us",
        [g(src, n, "server_cpu_us_per_msg") for n in ("inboxd-null", "smtp-sink", "wire-floor")],
        ratio(g(src, "inboxd-null", "server_cpu_us_per_msg"),
              g(src, "smtp-sink", "server_cpu_us_per_msg")), "source_cpu")
    above = lambda d, n: (None if g(d, n, "server_cpu_us_per_msg") is None  # noqa: E731
                          or g(d, "wire-floor", "server_cpu_us_per_msg") is None else
                          round(g(d, n, "server_cpu_us_per_msg") -
                                g(d, "wire-floor", "server_cpu_us_per_msg"), 2))
    add("↳ the same above the floor: the server's own code (us)", "us",
        [above(src, "inboxd-null"), above(src, "smtp-sink"), 0.0],
        ratio(above(src, "inboxd-null"), above(src, "smtp-sink")))
    add("msgs/s, smtp-source -s 20", "msgs/s",
        [g(src, n, "msgs_per_s") for n in ("inboxd-null", "smtp-sink", "wire-floor")],
        ratio(g(src, "inboxd-null", "msgs_per_s"), g(src, "smtp-sink", "msgs_per_s")))
    b = H["bench"]
    add("msgs/s, inboxd-bench -c 16, 1 KiB, pipelining on", "msgs/s",
        [g(b, n, "msgs_per_s") for n in ("inboxd-null", "smtp-sink", "wire-floor")],
        ratio(g(b, "inboxd-null", "msgs_per_s"), g(b, "smtp-sink", "msgs_per_s")), "bench_msgs")
    add("server CPU per message, inboxd-bench -c 16 (us)", "us",
        [g(b, n, "server_cpu_us_per_msg") for n in ("inboxd-null", "smtp-sink", "wire-floor")],
        ratio(g(b, "inboxd-null", "server_cpu_us_per_msg"),
              g(b, "smtp-sink", "server_cpu_us_per_msg")))
    add("↳ the same above the floor: the server's own code (us)", "us",
        [above(b, "inboxd-null"), above(b, "smtp-sink"), 0.0],
        ratio(above(b, "inboxd-null"), above(b, "smtp-sink")))
    md = H["maildir"]
    for name in [n for n in md if n != "inboxd-null"]:
        label = "durable Maildir msgs/s, smtp-source -s 20 (ratio: to --sink null)"
        if name.endswith("syncfs"):
            label = label.replace("Maildir", "Maildir (syncfs)")
        add(label, "msgs/s", [g(md, name, "msgs_per_s"), None, None],
            ratio(g(md, name, "msgs_per_s"), g(md, "inboxd-null", "msgs_per_s")),
            "maildir_vs_null", "≥ 0.5× null")
    mem = H["memory"]
    mv = [mem.get(n, {}).get("bytes_per_connection") for n in ("inboxd-null", "smtp-sink",
                                                              "wire-floor")]
    add("memory per idle greeted connection (bytes)", "bytes", mv, ratio(mv[0], mv[1]), "memory",
        "≤ 1,024 bytes")
    return rows


def fmt_cell(v):
    if v is None:
        return "-"
    if isinstance(v, bool):
        return "yes" if v else "**no**"
    if isinstance(v, float) and v < 100:
        return f"{v:.1f}"
    return f"{v:,.0f}"


def headline_lines(H, markdown):
    """The headline as Markdown (RESULTS.md) or plain text (the terminal)."""
    L = []
    head = ["figure", "inboxd", "smtp-sink", "floor", "ratio", "goal", "met"]
    if markdown:
        L += ["| " + " | ".join(head) + " |", "|---|---:|---:|---:|---:|---|---|"]
    else:
        L.append(f"{'figure':<76}{'inboxd':>10}{'smtp-sink':>11}{'floor':>10}{'ratio':>7}"
                 f"  {'goal':<14}{'met'}")
    for r in H["table"]:
        cells = [r["figure"], fmt_cell(r["inboxd"]), fmt_cell(r["smtp-sink"]),
                 fmt_cell(r["floor"]), fmt_ratio(r["ratio"]), r["goal"] or "-",
                 fmt_cell(r["met"]) if r["met"] is not None else "-"]
        if markdown:
            L.append("| " + " | ".join(cells) + " |")
        else:
            L.append(f"{cells[0]:<76}{cells[1]:>10}{cells[2]:>11}{cells[3]:>10}{cells[4]:>7}"
                     f"  {cells[5]:<14}{cells[6].replace('*', '')}")
    return L


# ---------------------------------------------------------------------------------------------
# Output: terminal table, CSV, plots, RESULTS.md.


def now_iso():
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def fmt_rate(v):
    return "-" if v is None else (f"{v:,.0f}" if v >= 100 else f"{v:,.1f}")


def fmt_ratio(v):
    return "-" if v is None else f"{v:.2f}"


def matrix_lines(matrix, markdown):
    head = ["size", "conns", "pipelining", "server", "msgs/s", "× sink", "MB/s",
            "CPU ms/1k msgs", "× sink", "p99 ms", "runs"]
    lines = []
    if markdown:
        lines.append("| " + " | ".join(head) + " |")
        lines.append("|" + "|".join(["---"] * 4 + ["---:"] * 7) + "|")
    else:
        lines.append(f"{'size':<7}{'conns':>6} {'pipelining':<11}{'server':<18}{'msgs/s':>10}"
                     f"{'×sink':>7}{'MB/s':>9}{'CPU ms/1k':>11}{'×sink':>7}{'p99 ms':>9}"
                     f"{'runs':>5}")
    prev = None
    for r in matrix["rows"]:
        key = (r["size"], r["connections"], r["pipelining"])
        if not markdown and prev and key != prev:
            lines.append("")
        prev = key
        pl = "on (group)" if r["pipelining"] == "group" else r["pipelining"]
        if r.get("msgs_per_s") and not r.get("server_pipelining", True) and r["pipelining"] != "off":
            pl += "*"
        cells = [size_label(r["size"]), str(r["connections"]), pl, r["server"],
                 fmt_rate(r.get("msgs_per_s")), fmt_ratio(r.get("ratio_msgs")),
                 "-" if r.get("mb_per_s") is None else f"{r['mb_per_s']:.1f}",
                 "-" if r.get("server_cpu_ms_per_1k") is None else
                 f"{r['server_cpu_ms_per_1k']:.1f}",
                 fmt_ratio(r.get("ratio_cpu")),
                 "-" if r.get("p99_ms") is None else f"{r['p99_ms']:.2f}", str(r["runs"])]
        if markdown:
            lines.append("| " + " | ".join(cells) + " |")
        else:
            lines.append(f"{cells[0]:<7}{cells[1]:>6} {cells[2]:<11}{cells[3]:<18}{cells[4]:>10}"
                         f"{cells[5]:>7}{cells[6]:>9}{cells[7]:>11}{cells[8]:>7}{cells[9]:>9}"
                         f"{cells[10]:>5}")
    return lines


def write_csv(matrix, path):
    cols = ["size", "connections", "pipelining", "server", "msgs_per_s", "ratio_msgs", "mb_per_s",
            "server_cpu_ms_per_1k", "ratio_cpu", "p50_ms", "p99_ms", "runs", "messages", "failed",
            "cut", "spread_pct", "server_pipelining", "writes_per_tx", "other_cpu_pct"]
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=cols, extrasaction="ignore")
        w.writeheader()
        for r in matrix["rows"]:
            w.writerow(r)


def plot(matrix):
    """One PNG per message size and pipelining mode: msgs/s vs connections, a line per server."""
    if not os.path.exists(GNUPLOT):
        log("# plots skipped: no gnuplot")
        return []
    rows = matrix["rows"]
    made = []
    for size in sorted({r["size"] for r in rows}):
        for pl in sorted({r["pipelining"] for r in rows}):
            sub = [r for r in rows if r["size"] == size and r["pipelining"] == pl]
            servers = [s for s in SERVER_ORDER if any(r["server"] == s for r in sub)]
            conns = sorted({r["connections"] for r in sub})
            stem = f"msgs-{size_label(size).replace(' ', '').lower()}-pipelining-{pl}"
            dat = os.path.join(RESULTS, stem + ".dat")
            with open(dat, "w") as f:
                f.write("# connections " + " ".join(servers) + "\n")
                for c in conns:
                    vals = []
                    for s in servers:
                        r = next((x for x in sub if x["server"] == s and x["connections"] == c),
                                 None)
                        vals.append(str(r["msgs_per_s"]) if r and r.get("msgs_per_s") else "NaN")
                    f.write(f"{c} " + " ".join(vals) + "\n")
            png = os.path.join(RESULTS, stem + ".png")
            title = (f"{size_label(size)} messages, pipelining "
                     f"{'on (RFC 2920 groups)' if pl == 'group' else pl}")
            series = ", ".join(
                f"'{dat}' using 1:{i + 2} with linespoints lw 2 pt 7 title '{s}'"
                for i, s in enumerate(servers))
            script = f"""set terminal pngcairo size 800,500 font 'sans,10'
set output '{png}'
set title "{title}"
set xlabel 'concurrent connections'
set ylabel 'messages/s (log)'
set logscale xy
set xtics ({', '.join(str(c) for c in conns)})
set key outside right
set grid
set datafile missing 'NaN'
plot {series}
"""
            r = subprocess.run([GNUPLOT], input=script, capture_output=True, text=True,
                               timeout=60)
            if r.returncode != 0:
                log(f"# gnuplot failed for {stem}: {r.stderr.strip()[-300:]}")
                continue
            made.append((title, os.path.basename(png)))
    return made


def first_line(argv):
    try:
        r = subprocess.run(argv, capture_output=True, text=True, timeout=30)
        return ((r.stdout or r.stderr).strip().splitlines() or ["?"])[0]
    except (OSError, subprocess.TimeoutExpired):
        return "not available"


def dpkg_version(pkg):
    return first_line(["dpkg-query", "-W", "-f", "${Version}", pkg])


def machine(args):
    cpu = "?"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem_kib = 0
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                mem_kib = int(line.split()[1])
    git = first_line(["git", "-C", ROOT, "describe", "--always", "--dirty"])
    return {
        "cpu": cpu, "cores": os.cpu_count(), "memory_gib": round(mem_kib / MIB, 1),
        "kernel": platform.release(), "os": first_line(["sh", "-c", ". /etc/os-release; "
                                                        "echo $PRETTY_NAME"]),
        "inboxd": f"{first_line([args.inboxd, '--version'])} (git {git})",
        "postfix": dpkg_version("postfix"), "python3-aiosmtpd": dpkg_version("python3-aiosmtpd"),
        "python3": platform.python_version(), "valgrind": first_line([VALGRIND, "--version"]),
        "compiler": first_line(["c++", "--version"]),
    }


def short_function(name, width=90):
    """A profile's function without its source file and parameter list (C++ names are long),
    cut to width."""
    head, sep, rest = name.partition(":")
    if sep and "/" in head and not rest.startswith(":"):
        name = rest  # "./string/../memmove.S:__memcpy_avx" -> "__memcpy_avx"
    if name.endswith(" const"):
        name = name[:-len(" const")]
    if name.endswith(")"):  # the parameter list: from its own "(", which may hold parentheses
        depth = 0
        for i in range(len(name) - 1, -1, -1):
            depth += {")": 1, "(": -1}.get(name[i], 0)
            if depth == 0:
                name = name[:i]
                break
    return name if len(name) <= width else name[:width - 1] + "…"


def headline_md(H):
    P = H["params"]
    L = ["## Headline (issue 10)", "",
         f"Run {H['date']}"
         f"{' (`--headline-quick`: runs far too short to mean anything)' if H['quick'] else ''}"
         f", `bench/harness.py --headline`, {H.get('seconds', '?')} s: every figure in one run, "
         f"servers {'on CPU 0 and load generators on CPU 1' if H['pinned'] else 'unpinned'}, "
         f"taking turns (A B C, A B C, …), the median of {P['reps']} run(s) each after one "
         "calibration run. **ratio**: inboxd / smtp-sink in the same run (the Maildir rows: "
         "inboxd Maildir / inboxd `--sink null`, interleaved). **floor**: "
         "`bench/floor/wire-floor`, a responder that only replies (one read and one write per "
         "batch, nothing stored or parsed): it shows the kernel's share, the CPU per message "
         "and the rate no server can beat on this machine.", ""]
    L += headline_lines(H, True)
    L += ["",
          f"- instructions: each server under callgrind, {P['callgrind_messages']:,} × 1 KiB "
          "messages over one session (inboxd-bench `-c 1 --pipelining group`), total Ir minus "
          "that of a run with no message, per message.",
          f"- smtp-source: `smtp-source -4 -d -s 20 -l 1024 -m N`, N set for runs of about "
          f"{P['source_s']} s (≥ {P['source_min_s']} s); server CPU = user + system of its "
          "process tree from `/proc/PID/stat`, per message.",
          f"- inboxd-bench: `-c 16 --size 1024 --pipelining on --messages N`, N set for runs of "
          f"about {P['bench_s']} s (≥ {P['bench_min_s']} s).",
          f"- memory: {P['idle_connections']:,} connections greeted and held idle; VmRSS after "
          "minus before, per connection.", ""]
    cl = lambda d, k: "-" if d.get(k) is None else fmt_cell(d.get(k))  # noqa: E731
    L += ["Client CPU per message (the load generator shares the two cores): "
          + "; ".join(f"{tool} → {n} {cl(H[key].get(n, {}), 'client_cpu_us_per_msg')} us"
                      for tool, key in (("smtp-source", "source"), ("inboxd-bench", "bench"))
                      for n in ("inboxd-null", "smtp-sink", "wire-floor")) + ".", ""]
    if H.get("other_cpu_pct") is not None:
        noisy = ": **noise, rerun on a quiet machine**" if H["other_cpu_pct"] > 10 else ""
        L += [f"Other CPU during the load runs (processes outside the benchmark, % of one core):"
              f" {H['other_cpu_pct']:.0f} %{noisy}.", ""]
    short = sum(r.get("short_runs", 0) for part in ("source", "bench", "maildir")
                for r in H[part].values())
    if short:
        L += [f"**{short} run(s) were shorter than the minimum** (see latest.json).", ""]
    L += ["### Durable Maildir: commit latency", "",
          "inboxd-bench `--pipelining on`, 1 KiB, into inboxd's Maildir sink, which makes each "
          "message durable before its 250 (inboxd-maildir: fsync of the file and of `new/`; "
          "-syncfs: `--maildir-sync syncfs`, one syncfs shared by concurrent messages); "
          "latency from the end of the text to the 250, median of the runs' p50 and p99.", "",
          "| server | sessions | msgs/s | p50 ms | p99 ms |", "|---|---:|---:|---:|---:|"]
    for name, by_conns in H["latency"].items():
        for c, row in by_conns.items():
            L.append(f"| {name} | {c} | {fmt_cell(row.get('msgs_per_s'))} | "
                     f"{row.get('p50_us', 0) / 1000:.2f} | {row.get('p99_us', 0) / 1000:.2f} |")
    md = H["maildir"]
    L += ["", "smtp-source -s 20 msgs/s in the same interleaved runs: " + ", ".join(
        f"{n} {fmt_cell(r.get('msgs_per_s'))}" for n, r in md.items()) + ".", ""]
    st = H["strace"]
    names = list(st)
    calls = sorted({c for n in names for c in st[n]}, key=lambda c: -max(st[n].get(c, 0)
                                                                         for n in names))
    L += ["### System calls per 1,000 messages", "",
          f"`strace -c -f -p PID` on the server while `smtp-source -d -s 20 -l 1024` sends "
          f"{H['strace_messages']:,} messages; counts only (strace slows the server, so no "
          "rate here). Every thread counts (inboxd's pool too).", "",
          "| syscall | " + " | ".join(names) + " |", "|---|" + "---:|" * len(names)]
    for c in calls:
        L.append(f"| {c} | " + " | ".join(fmt_cell(st[n].get(c)) for n in names) + " |")
    L += ["", "### Where inboxd's instructions go", "",
          "callgrind_annotate of the inboxd-null profile (self cost), run minus baseline, per "
          "message:", "", "| # | function | instructions per message | % |",
          "|---:|---|---:|---:|"]
    for i, f in enumerate(H["profile_top"], 1):
        name = short_function(f["function"])
        L.append(f"| {i} | `{name.replace('|', '¦')}` | {f['instructions_per_message']:,} | "
                 f"{f['percent']:.1f} |")
    mi = H["micro"]
    L += ["", "### Allocations and the decoder (proto-bench)", "",
          f"Heap allocations in steady state, counted by proto-bench's counting operator new "
          f"(goal: ≤ 2 per message, 0 per command): **{mi['allocations_per_message']:.2f} per "
          f"message** (the session; {mi['allocations_per_message_null_sink']:.2f} with inboxd's "
          f"null sink), **{mi['allocations_per_command']:.2f} per command**.", "",
          "| unit | allocations | bytes |", "|---|---:|---:|"]
    for a in mi.get("allocations") or []:
        L.append(f"| {a['unit']} | {a['allocations']:.2f} | {a['bytes']:.0f} |")
    al = H.get("heap_allocations_per_message", {})
    if al:
        L += ["", f"The whole server under callgrind (step a; calls into libc's malloc, calloc "
              f"and realloc per message, run minus baseline): inboxd-null "
              f"**{al.get('inboxd-null', 0):.2f}**, smtp-sink {al.get('smtp-sink', 0):.2f}, "
              f"wire-floor {al.get('wire-floor', 0):.2f}. Who allocates in inboxd, per message:",
              ""]
        L += [f"- {c['per_message']:.2f}: `{short_function(c['caller'] or '?', 100)}`"
              for c in H.get("allocating_callers", [])] or ["- nobody"]
    L += ["", f"Data decoder on 78-column text (76 characters and CRLF, 64 KiB bodies): "
          f"**{H['decoder_gb_per_s']:.2f} GB/s** (goal ≥ 1.5); 1 KiB bodies: "
          f"{mi['1k']['decoder_mb_per_s'] / 1000:.2f} GB/s.", ""]
    return L


def write_results_md(data, plots):
    m = data["machine"]
    L = ["# inboxd benchmark results", "",
         "Regenerated by `bench/harness.py` (see `bench/HARNESS.md`) from "
         "`bench/results/latest.json`; do not edit by hand. Absolute figures depend on the "
         "machine; the **ratios to Postfix's `smtp-sink`, measured in the same run**, are the "
         "figures to compare.", ""]
    if data.get("headline"):
        L += headline_md(data["headline"])
    L += ["## Machine", "",
         f"- CPU: {m['cpu']}, {m['cores']} cores; {m['memory_gib']} GiB RAM",
         f"- Kernel: Linux {m['kernel']} ({m['os']})",
         f"- inboxd: {m['inboxd']}; compiler: {m['compiler']}",
         f"- Postfix (smtp-sink, postfix): {m['postfix']}",
         f"- python3-aiosmtpd: {m['python3-aiosmtpd']} on Python {m['python3']}",
         f"- valgrind: {m['valgrind']}", ""]
    mx = data.get("matrix")
    if mx:
        L += ["## Throughput matrix", "",
              f"Run {mx['date']}{' (`--quick`)' if mx['quick'] else ''}: median of "
              f"{mx['reps']} run(s) per server and scenario, servers alternating within a "
              f"scenario; servers {'on CPU 0, inboxd-bench on CPU 1' if mx['pinned'] else 'unpinned'}."
              f" Each run: inboxd-bench `--messages N` with N = min({mx['max_messages']:,}, "
              f"{mx['max_bytes'] // MIB} MiB / size), at least 2 per connection, cut with "
              f"SIGINT after {mx['time_cap_s']} s (inboxd-bench then finishes the transactions "
              "in flight and reports over the measured time).", "",
              "- **msgs/s**: messages accepted (250 after the text) per second; **× sink**: "
              "ratio to smtp-sink in the same scenario.",
              "- **CPU ms/1k msgs**: the server's CPU time (user + system, all its processes "
              "and threads, from `/proc/PID/stat`) per 1,000 accepted messages; lower is "
              "better, **× sink** likewise.",
              "- **pipelining on (group)**: `inboxd-bench --pipelining group` (MAIL, RCPT, DATA "
              "in one write, the text after 354 in a second one: RFC 2920 grouping as SMTP "
              "clients do it); **off**: one command per round trip. `*`: the server does not "
              "offer PIPELINING (aiosmtpd), so the client sent one command per round trip.",
              "- Maildir servers fsync before their 250 (Postfix: cleanup fsyncs its queue file "
              "before smtpd's 250; delivery to Maildir follows, and its CPU is counted: the "
              "harness waits for an empty queue before reading CPU time).", ""]
        L += matrix_lines(mx, markdown=True)
        L.append("")
        others = [r["other_cpu_pct"] for r in mx["rows"]]
        if others:
            L += [f"Other CPU (processes outside the benchmark, % of one core, per scenario): "
                  f"max {max(others):.0f} %. Above ~10 % a scenario's figures are noise.", ""]
        for title, png in plots:
            L += [f"![{title}](results/{png})", ""]
        L += ["CSV: [results/latest.csv](results/latest.csv).", ""]
    mem = data.get("memory")
    if mem:
        L += ["## Memory per idle connection", "",
              f"Run {mem['date']}: the harness opens the connections (a Python selectors loop, "
              "256 connects pending at most), reads each greeting and holds them idle; server "
              "VmRSS from `/proc/PID/status` before the first and 1 s after the last, divided by "
              "the count.", "",
              "| server | idle connections | VmRSS before KiB | VmRSS after KiB | "
              "bytes per connection |", "|---|---:|---:|---:|---:|"]
        for r in mem["rows"]:
            L.append(f"| {r['server']} | {r['connections']:,} | {r['rss_before_kib']:,} | "
                     f"{r['rss_after_kib']:,} | {r['bytes_per_connection']:,} |")
        L += ["", "Kernel socket buffers are not in VmRSS; both servers' sockets cost the "
              "same there.", ""]
    cg = data.get("callgrind")
    if cg:
        L += ["## Instructions per message (callgrind)", "",
              f"Run {cg['date']}: each server under `valgrind --tool=callgrind`, "
              f"inboxd-bench `--messages {cg['rows'][0]['messages'] if cg['rows'] else '?'} "
              f"--size 1024 -c 1 --pipelining group`; instructions = total Ir of the run minus "
              "the total Ir of a run with no message (start, one probe connection, stop), "
              "divided by the message count. Noise does not move this figure.", "",
              "| server | Ir, no message | Ir, with messages | instructions per message | "
              "× sink |", "|---|---:|---:|---:|---:|"]
        for r in cg["rows"]:
            L.append(f"| {r['server']} | {r['ir_baseline']:,} | {r['ir_run']:,} | "
                     f"{r['instructions_per_message']:,} | {fmt_ratio(r.get('ratio'))} |")
        L.append("")
    mi = data.get("micro")
    if mi:
        L += ["## Micro benchmark of src/proto", "",
              f"Run {mi['date']}: `build/bench/micro/proto-bench` (`meson test --benchmark "
              "proto-bench`): a fixed pipelined transcript (EHLO, then MAIL, RCPT, DATA, text, "
              "\".\" per transaction, QUIT) fed through a 64 KiB buffer to `proto::session` with "
              "a null sink, and the bodies alone to `proto::data_decoder`; best of "
              f"{mi['reps']} runs of ≥ {mi['seconds']} s. MB = 10^6 bytes of wire text.", "",
              "| body | transactions | session MB/s | session transactions/s | decoder MB/s |",
              "|---|---:|---:|---:|---:|"]
        for k in ("1k", "64k"):
            if k in mi:
                r = mi[k]
                L.append(f"| {r['body_bytes'] // KIB} KiB | {r['transactions']:,} | "
                         f"{r['session_mb_per_s']:.1f} | {r['session_transactions_per_s']:,.0f} | "
                         f"{r['decoder_mb_per_s']:.1f} |")
        L.append("")
        if mi.get("allocations_per_message") is not None:
            L += [f"Heap allocations in steady state (proto-bench's counting operator new): "
                  f"{mi['allocations_per_message']:.2f} per message "
                  f"({mi['allocations_per_message_null_sink']:.2f} with inboxd's null sink), "
                  f"{mi['allocations_per_command']:.2f} per command.", ""]
    L += ["## Servers", ""]
    L += [f"- **{k}**: {v}" for k, v in DESCRIPTIONS.items()]
    L.append("")
    with open(os.path.join(HERE, "RESULTS.md"), "w") as f:
        f.write("\n".join(L))


# ---------------------------------------------------------------------------------------------


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true",
                   help="1 KiB and 64 KiB × 1 and 16 connections (~2 minutes)")
    p.add_argument("--with-postfix", action="store_true",
                   help="also a private Postfix instance delivering to Maildir")
    p.add_argument("--no-matrix", action="store_true", help="skip the throughput matrix")
    p.add_argument("--memory", action="store_true", help="RSS per idle connection")
    p.add_argument("--callgrind", action="store_true", help="instructions per message")
    p.add_argument("--micro", action="store_true", help="the src/proto micro benchmark")
    p.add_argument("--headline", action="store_true",
                   help="issue 10's figures in one run (~6 minutes; no matrix unless --matrix)")
    p.add_argument("--headline-quick", action="store_true",
                   help="the headline with tiny runs: a test of the harness, not a measurement")
    p.add_argument("--matrix", action="store_true", help="with --headline: the matrix too")
    p.add_argument("--servers", help="comma-separated subset of: " + ",".join(SERVER_ORDER))
    p.add_argument("--sizes", help="message sizes, e.g. 1k,64k,1M")
    p.add_argument("--connections", help="connection counts, e.g. 1,16,256")
    p.add_argument("--pipelining", help="group,off (inboxd-bench modes)")
    p.add_argument("--reps", type=int, help="runs per server and scenario (2)")
    p.add_argument("--time-cap", type=float, help="seconds per run (2.5; --quick 1.5)")
    p.add_argument("--max-messages", type=int, default=20000, help="messages per run (20000)")
    p.add_argument("--max-bytes", type=int, default=256 * MIB,
                   help="message bytes per run (256 MiB)")
    p.add_argument("--idle-connections", type=int, default=10000, help="for --memory (10000)")
    p.add_argument("--callgrind-messages", type=int, default=2000, help="for --callgrind (2000)")
    p.add_argument("--no-pin", action="store_true",
                   help="do not pin servers to CPU 0 and inboxd-bench to CPU 1")
    build = os.environ.get("INBOXD_BUILD", os.path.join(ROOT, "build-harness"))
    if not os.path.isdir(build):
        build = os.path.join(ROOT, "build")
    p.add_argument("--inboxd", default=os.environ.get("INBOXD_BIN", f"{build}/inboxd"))
    p.add_argument("--bench", default=os.environ.get("INBOXD_BENCH",
                                                      f"{build}/src/bench/inboxd-bench"))
    p.add_argument("--proto-bench", default=f"{build}/bench/micro/proto-bench")
    p.add_argument("--wire-floor", default=f"{build}/bench/floor/wire-floor")
    p.add_argument("--no-results-md", action="store_true",
                   help="do not write bench/results or bench/RESULTS.md")
    return p.parse_args()


def main():
    args = parse_args()
    args.headline = args.headline or args.headline_quick
    if args.headline and not args.matrix:
        args.no_matrix = True
    if args.headline:
        headline_tools(args)  # before anything runs: a missing tool is a clear error
    for exe in (args.inboxd, args.bench, SMTP_SINK):
        if not os.access(exe, os.X_OK):
            sys.exit(f"error: {exe} not found (build the project, or set INBOXD_BUILD)")

    def on_signal(signum, _frame):  # SIGTERM/SIGHUP unwind through the `finally`s.
        sys.exit(128 + signum)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGHUP, on_signal)
    raise_nofile(4096)

    os.makedirs(RESULTS, exist_ok=True)
    latest = os.path.join(RESULTS, "latest.json")
    data = {}
    if os.path.exists(latest):
        with open(latest) as f:
            data = json.load(f)
    workdir = tempfile.mkdtemp(prefix="inboxd-harness-")
    os.chmod(workdir, 0o755)
    ran = False
    try:
        if args.headline:
            os.makedirs(os.path.join(workdir, "headline"))
            data["headline"] = run_headline(args, os.path.join(workdir, "headline"))
            ran = True
            print("\n".join(headline_lines(data["headline"], markdown=False)))
            print("ratio: inboxd / smtp-sink in the same run (Maildir rows: to inboxd "
                  "--sink null); floor: bench/floor/wire-floor, the kernel's share. Other CPU: "
                  f"{data['headline'].get('other_cpu_pct')} % of a core (above 10: noise).")
        if not args.no_matrix:
            os.makedirs(os.path.join(workdir, "matrix"))
            data["matrix"] = run_matrix(args, os.path.join(workdir, "matrix"))
            ran = True
            print("\n".join(matrix_lines(data["matrix"], markdown=False)))
            print("×sink: ratio to smtp-sink in the same scenario (msgs/s: higher is better; "
                  "CPU: lower is better). *: server without PIPELINING.")
        if args.memory:
            data["memory"] = run_memory(args, workdir)
            ran = True
            for r in data["memory"]["rows"]:
                print(f"memory {r['server']:<12} {r['connections']:>6} idle connections: "
                      f"{r['bytes_per_connection']:>7,} bytes per connection "
                      f"(VmRSS {r['rss_before_kib']:,} -> {r['rss_after_kib']:,} KiB)")
        if args.callgrind:
            cg = run_callgrind(args, workdir)
            if cg:
                data["callgrind"] = cg
                ran = True
                for r in cg["rows"]:
                    print(f"callgrind {r['server']:<12} {r['instructions_per_message']:>9,} "
                          f"instructions per message (× sink {fmt_ratio(r.get('ratio'))})")
        if args.micro:
            mi = run_micro(args)
            if mi:
                data["micro"] = mi
                ran = True
                for k in ("1k", "64k"):
                    r = mi[k]
                    print(f"micro {k:>3}: session {r['session_mb_per_s']:.1f} MB/s "
                          f"({r['session_transactions_per_s']:,.0f} transactions/s), decoder "
                          f"{r['decoder_mb_per_s']:.1f} MB/s")
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    if ran and not args.no_results_md:
        data["machine"] = machine(args)
        with open(latest, "w") as f:
            json.dump(data, f, indent=1)
        plots = []
        if data.get("matrix"):
            write_csv(data["matrix"], os.path.join(RESULTS, "latest.csv"))
            plots = plot(data["matrix"])
        write_results_md(data, plots)
        log(f"# wrote {os.path.relpath(latest, ROOT)}, bench/results/latest.csv, "
            f"{len(plots)} plots, bench/RESULTS.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
