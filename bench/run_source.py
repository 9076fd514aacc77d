#!/usr/bin/python3
"""inboxd (null sink) against Postfix's smtp-sink, both driven by Postfix's smtp-source.

Starts both servers on free loopback ports, runs smtp-source against each in turn
(inboxd, smtp-sink, inboxd, smtp-sink, ...) so that machine noise hits both alike,
and prints the median msgs/s of each and their ratio. See bench/README.md.
"""

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time

from benchlib import free_port, greets, pinned, stop, tail

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

SMTP_SOURCE = "/usr/sbin/smtp-source"
SMTP_SINK = "/usr/sbin/smtp-sink"
START_TIMEOUT = 10.0  # Seconds a server gets to start listening.
TICK = os.sysconf("SC_CLK_TCK")


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("-s", "--sessions", default="1,20", help="session counts, comma separated")
    p.add_argument("-m", "--messages", default="10000,100000",
                   help="messages per run, one per session count or one for all")
    p.add_argument("-l", "--length", type=int, default=1024, help="payload bytes (1024)")
    p.add_argument("-r", "--reps", type=int, default=5, help="runs per target and scenario (5)")
    p.add_argument("--timeout", type=float, default=120, help="seconds allowed per run (120)")
    p.add_argument("--no-pin", action="store_true",
                   help="do not pin the servers to CPU 0 and smtp-source to CPU 1")
    p.add_argument("--sink-vs-sink", action="store_true",
                   help="A/A check: a second smtp-sink stands in for inboxd")
    p.add_argument("--json", action="store_true", help="also print one JSON line per scenario")
    return p.parse_args()


def start(name, argv, port, needle, log, cpu, procs):
    """Starts a server with its output in `log`, appends it to `procs`; returns (proc, ready).

    It is ready once `needle` (if any) is in its log and it greets a connection with 220.
    """
    with open(log, "w") as f:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=f, stderr=f,
                                preexec_fn=pinned(cpu))
    procs.append(proc)  # From here on the caller's `finally` stops it.
    print(f"# started {name} pid {proc.pid}: {' '.join(argv)}", file=sys.stderr)
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.05)
        if needle:
            with open(log, errors="replace") as f:
                if needle not in f.read():
                    continue
        if greets(port):
            return proc, True
    return proc, False


def run_source(port, sessions, messages, args, cpu):
    """One smtp-source run; returns (msgs/s, None) or (None, reason)."""
    argv = [SMTP_SOURCE, "-4", "-d", "-s", str(sessions), "-m", str(messages),
            "-l", str(args.length), "-M", "bench.example",
            "-f", "sender@bench.example", "-t", "rcpt@bench.example", f"127.0.0.1:{port}"]
    t0 = time.monotonic()
    try:
        r = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                           timeout=args.timeout, preexec_fn=pinned(cpu))
    except subprocess.TimeoutExpired:
        return None, f"timed out after {args.timeout:g} s"
    elapsed = time.monotonic() - t0
    if r.returncode != 0:
        last = (r.stderr.strip().splitlines() or ["no output"])[-1]
        return None, f"exit {r.returncode}: {last}"
    return messages / elapsed, None


def other_cpu(exclude):
    """CPU seconds per process (with its reaped children) of all processes but `exclude`.

    Kernel threads are left out: loopback traffic makes them busy. The growth over a scenario
    shows that something else (a build, a test suite) shared the cores.
    """
    seconds = {}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue  # It has just exited.
        if int(pid) not in exclude and pid != "2" and fields[1] != "2":  # kthreadd's
            seconds[pid] = sum(map(int, fields[11:15])) / TICK  # utime, stime, cutime, cstime
    return seconds


def summary(samples):
    if not samples:
        return None, None
    med = statistics.median(samples)
    return med, (max(samples) - min(samples)) / 2 / med * 100


def main():
    args = parse_args()
    sessions = [int(s) for s in args.sessions.split(",")]
    messages = [int(m) for m in args.messages.split(",")]
    if len(messages) == 1:
        messages *= len(sessions)
    if len(messages) != len(sessions):
        sys.exit("error: give one --messages value, or one per --sessions value")
    pin = not args.no_pin and len(os.sched_getaffinity(0)) >= 2
    server_cpu, client_cpu = (0, 1) if pin else (None, None)
    inboxd_bin = os.environ.get("INBOXD_BIN", os.path.join(REPO, "build", "inboxd"))
    as_root = ["-u", "nobody"] if os.geteuid() == 0 else []  # smtp-sink refuses root without -u.

    def sink_argv(port):
        return [SMTP_SINK, *as_root, "-4", f"127.0.0.1:{port}", "1024"]

    ports = {"inboxd": free_port(), "smtp-sink": free_port()}
    if args.sink_vs_sink:
        servers = [("inboxd", sink_argv(ports["inboxd"]), None)]
    else:
        root = ["--allow-root"] if os.geteuid() == 0 else []
        servers = [("inboxd", [inboxd_bin, *root, "--sink", "null", "--listen",
                               f"127.0.0.1:{ports['inboxd']}"],
                    f"listening on 127.0.0.1:{ports['inboxd']}")]
    servers.append(("smtp-sink", sink_argv(ports["smtp-sink"]), None))

    procs = []

    # SIGTERM and SIGHUP become SystemExit so that the `finally` below stops the servers;
    # SIGINT already arrives as KeyboardInterrupt.
    def on_signal(signum, _frame):
        sys.exit(128 + signum)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGHUP, on_signal)
    workdir = tempfile.mkdtemp(prefix="inboxd-bench-")
    try:
        for name, argv, needle in servers:
            log = os.path.join(workdir, name + ".log")
            try:
                proc, ready = start(name, argv, ports[name], needle, log, server_cpu, procs)
            except OSError as e:
                print(f"error: cannot start {name}: {e}", file=sys.stderr)
                return 2
            if not ready:
                state = "still running" if proc.poll() is None else f"exit {proc.returncode}"
                print(f"error: {name} not ready within {START_TIMEOUT:g} s ({state}); log:\n"
                      f"{tail(log)}", file=sys.stderr)
                return 2

        results, failures = [], 0
        for s, m in zip(sessions, messages):
            samples = {"inboxd": [], "smtp-sink": []}
            ours = {os.getpid(), *(p.pid for p in procs)}
            cpu0, wall0 = other_cpu(ours), time.monotonic()
            for rep in range(args.reps):
                for name, proc in zip(samples, procs):
                    rate, err = run_source(ports[name], s, m, args, client_cpu)
                    if proc.poll() is not None:
                        print(f"error: {name} died (exit {proc.returncode}) during a run "
                              f"({err}); log:\n{tail(os.path.join(workdir, name + '.log'))}",
                              file=sys.stderr)
                        return 2
                    if err:
                        failures += 1
                        print(f"# FAILED s={s} rep {rep + 1} {name}: {err}", file=sys.stderr)
                    else:
                        samples[name].append(rate)
                        print(f"# s={s} rep {rep + 1} {name}: {rate:.0f} msgs/s", file=sys.stderr)
            cpu1 = other_cpu(ours)
            other = sum(t - cpu0.get(pid, 0) for pid, t in cpu1.items())
            other *= 100 / (time.monotonic() - wall0)
            results.append((s, m, samples, other))

        label = "smtp-sink (as inboxd)" if args.sink_vs_sink else "inboxd"
        print(f"\n{label} vs smtp-sink: {args.length}-byte payload, "
              f"median of {args.reps}, {'server CPU 0, smtp-source CPU 1' if pin else 'unpinned'}")
        print(f"{'scenario':<20}{'msgs/s inboxd':>18}{'msgs/s smtp-sink':>18}{'ratio':>8}"
              f"{'other CPU':>11}")
        lines = []
        for s, m, samples, other in results:
            (a, a_spread), (b, b_spread) = summary(samples["inboxd"]), summary(samples["smtp-sink"])
            ratio = a / b if a and b else None
            cell = lambda v, spread: f"{v:.0f} ±{spread:.1f}%" if v else "FAILED"
            print(f"{f'-s {s} -m {m}':<20}{cell(a, a_spread):>18}{cell(b, b_spread):>18}"
                  f"{f'{ratio:.2f}' if ratio else '-':>8}{f'{other:.0f}%':>11}")
            lines.append(json.dumps({
                "bench": "smtp-source", "scenario": f"s{s}-l{args.length}", "sessions": s,
                "payload_bytes": args.length, "messages": m, "reps": args.reps,
                "pinned": pin, "sink_vs_sink": args.sink_vs_sink,
                "inboxd_msgs_per_s": a and round(a, 1), "smtp_sink_msgs_per_s": b and round(b, 1),
                "ratio": ratio and round(ratio, 3), "other_cpu_pct": round(other, 1),
                "inboxd_samples": [round(x, 1) for x in samples["inboxd"]],
                "smtp_sink_samples": [round(x, 1) for x in samples["smtp-sink"]],
                "failed_runs": 2 * args.reps - len(samples["inboxd"]) - len(samples["smtp-sink"]),
            }))
        print("# spread: half of (max - min) over the median. other CPU: CPU time of processes\n"
              "# other than the benchmark's, in % of one core; above ~10 % the numbers are noise.\n"
              f"# failed runs: {failures}")
        if args.json:
            print("\n".join(lines))
        return 1 if failures else 0
    finally:
        for proc in procs:
            stop(proc)
        for f in os.listdir(workdir):
            os.unlink(os.path.join(workdir, f))
        os.rmdir(workdir)


if __name__ == "__main__":
    sys.exit(main())
