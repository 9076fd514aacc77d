#!/usr/bin/python3
"""Compare inboxd-bench with Postfix's smtp-source against one smtp-sink.

Starts smtp-sink on a free loopback port, then for 1 and 20 connections runs
smtp-source and inboxd-bench alternately, three times each, with the same
message count and the same message size on the wire (smtp-source -l 1024
sends 1148 bytes of message text: its four header lines, a blank line and
1024 body characters in lines of 80). Both are timed around the process, so
start-up and connection set-up count for both. Prints the median messages/s
of each, their ratio, and smtp-sink's CPU time per 1,000 messages under each
client. smtp-sink is stopped by its PID whatever happens.

Usage: compare_smtp_source.py [--bench PATH] [--messages N] [--runs N]
                              [--connections 1,20] [--bench-args '--pipelining off']
"""

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
SMTP_SOURCE_TEXT_BYTES = 1148  # what smtp-source -l 1024 sends between DATA and "."
CLK_TCK = os.sysconf("SC_CLK_TCK")


def find_bench():
    for build in ("build-bench", "build"):
        path = os.path.join(ROOT, build, "src", "bench", "inboxd-bench")
        if os.access(path, os.X_OK):
            return path
    return None


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_listening(port, proc, seconds=5.0):
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if proc.poll() is not None:
            return False
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return True
        except OSError:
            time.sleep(0.05)
    return False


def cpu_seconds(pid):
    """User + system CPU time of a process, from /proc (fields 14 and 15)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def timed(argv, timeout):
    start = time.monotonic()
    proc = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                          timeout=timeout)
    return time.monotonic() - start, proc


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bench", default=find_bench(), help="the inboxd-bench binary")
    ap.add_argument("--messages", type=int, default=100000)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--connections", default="1,20")
    ap.add_argument("--timeout", type=float, default=300, help="per run, seconds")
    ap.add_argument("--bench-args", default="",
                    help="more inboxd-bench flags, e.g. '--pipelining off'")
    args = ap.parse_args()
    if not args.bench:
        sys.exit("compare_smtp_source: no inboxd-bench binary; build it or pass --bench")
    for tool in ("smtp-sink", "smtp-source"):
        if not shutil.which(tool, path=os.environ.get("PATH", "") + ":/usr/sbin"):
            sys.exit(f"compare_smtp_source: {tool} not found (Debian package postfix)")
    sink_bin = shutil.which("smtp-sink", path=os.environ.get("PATH", "") + ":/usr/sbin")
    source_bin = shutil.which("smtp-source", path=os.environ.get("PATH", "") + ":/usr/sbin")

    port = free_port()
    # smtp-sink wants -u when it runs as root; the backlog is its last argument.
    sink_argv = [sink_bin] + (["-u", "nobody"] if os.geteuid() == 0 else [])
    sink_argv += [f"127.0.0.1:{port}", "1024"]
    sink = subprocess.Popen(sink_argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    rows = []
    try:
        if not wait_listening(port, sink):
            sys.exit("compare_smtp_source: smtp-sink did not start: " +
                     (sink.stderr.read().decode() if sink.poll() is not None else "timeout"))
        for conns in [int(c) for c in args.connections.split(",")]:
            source_argv = [source_bin, "-4", "-d", "-s", str(conns), "-m", str(args.messages),
                           "-l", "1024", "-f", "a@b.example", "-t", "c@d.example",
                           f"127.0.0.1:{port}"]
            bench_argv = [args.bench, "--port", str(port), "-c", str(conns),
                          "--messages", str(args.messages), "--size",
                          str(SMTP_SOURCE_TEXT_BYTES), "--from", "a@b.example",
                          "--to", "c@d.example", "--progress", "off", "--json"]
            bench_argv += args.bench_args.split()
            rates = {"smtp-source": [], "inboxd-bench": []}
            sink_cpu = {"smtp-source": [], "inboxd-bench": []}
            inner = []
            for _ in range(args.runs):
                for name, argv in (("smtp-source", source_argv), ("inboxd-bench", bench_argv)):
                    before = cpu_seconds(sink.pid)
                    elapsed, proc = timed(argv, args.timeout)
                    used = cpu_seconds(sink.pid) - before
                    if proc.returncode != 0:
                        sys.exit(f"compare_smtp_source: {name} failed ({proc.returncode}): "
                                 f"{proc.stderr.strip()}")
                    sent = args.messages
                    if name == "inboxd-bench":
                        result = json.loads(proc.stdout)
                        sent = result["accepted"]
                        inner.append(result["messages_per_second"])
                        if sent != args.messages:
                            print(f"warning: inboxd-bench: {sent} of {args.messages} accepted",
                                  file=sys.stderr)
                    rates[name].append(sent / elapsed)
                    sink_cpu[name].append(1000 * used / sent * 1000)
            src = statistics.median(rates["smtp-source"])
            bench = statistics.median(rates["inboxd-bench"])
            rows.append((conns, src, bench, bench / src, statistics.median(inner),
                         statistics.median(sink_cpu["smtp-source"]),
                         statistics.median(sink_cpu["inboxd-bench"])))
    finally:
        sink.terminate()
        try:
            sink.wait(timeout=5)
        except subprocess.TimeoutExpired:
            sink.kill()
            sink.wait()

    print(f"smtp-sink on 127.0.0.1:{port}, {args.messages} messages of "
          f"{SMTP_SOURCE_TEXT_BYTES} bytes per run, median of {args.runs} runs, "
          f"timed around each process{'; inboxd-bench ' + args.bench_args if args.bench_args else ''}")
    print(f"{'conns':>5}  {'smtp-source msg/s':>17}  {'inboxd-bench msg/s':>18}  {'ratio':>6}  "
          f"{'(bench inner)':>13}  {'sink CPU ms/1k: source':>22}  {'bench':>6}")
    worst = None
    for conns, src, bench, ratio, inner_rate, cpu_src, cpu_bench in rows:
        print(f"{conns:>5}  {src:>17.0f}  {bench:>18.0f}  {ratio:>5.2f}x  {inner_rate:>13.0f}  "
              f"{cpu_src:>22.1f}  {cpu_bench:>6.1f}")
        worst = ratio if worst is None else min(worst, ratio)
    print(f"lowest ratio {worst:.2f}x (goal: at least 1.5x)")
    return 0 if worst is not None and worst >= 1.5 else 1


if __name__ == "__main__":
    sys.exit(main())
