#!/usr/bin/python3
"""What TLS and AUTH cost inboxd: inboxd-bench in plaintext, STARTTLS, implicit TLS and
STARTTLS+AUTH against one `inboxd --sink null`, plus TLS handshakes per second.

Starts one inboxd with a plain and an implicit-TLS listener and --auth-users, then runs
inboxd-bench for every scenario in turn (all scenarios, then all again, --reps times), so
that machine noise hits them alike, and prints the median msgs/s of each, its ratio to the
plaintext scenario of the same shape, and handshakes/s. See src/bench/README.md.
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

START_TIMEOUT = 10.0  # Seconds the server gets to start listening.
TICK = os.sysconf("SC_CLK_TCK")
USER, PASSWORD = "alice", "bench-secret"


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("-m", "--messages", type=int, default=20000,
                   help="messages per run of the throughput scenarios (20000)")
    p.add_argument("-c", "--connections", type=int, default=16, help="connections (16)")
    p.add_argument("-k", "--per-connection", type=int, default=100,
                   help="messages per connection in the throughput scenarios (100)")
    p.add_argument("-s", "--size", default="1k", help="message size, inboxd-bench --size (1k)")
    p.add_argument("--handshakes", type=int, default=1000,
                   help="messages (= connections) per run of the handshake scenarios (1000)")
    p.add_argument("-r", "--reps", type=int, default=3, help="runs per scenario (3)")
    p.add_argument("--timeout", type=float, default=300, help="seconds allowed per run (300)")
    p.add_argument("--no-pin", action="store_true",
                   help="do not pin the server to CPU 0 and inboxd-bench to CPU 1")
    p.add_argument("--json", action="store_true", help="also print one JSON line per scenario")
    return p.parse_args()


def scenarios(args, plain_port, tls_port):
    """(name, reference name for the ratio, inboxd-bench arguments)."""
    auth = f"{USER}:{PASSWORD}"
    shape = ["-m", str(args.messages), "--messages-per-connection", str(args.per_connection)]
    once = ["-m", str(args.handshakes), "--messages-per-connection", "1"]
    plain, tls = ["--port", str(plain_port)], ["--port", str(tls_port)]
    return [
        ("plaintext", "plaintext", [*plain, *shape]),
        ("STARTTLS", "plaintext", [*plain, *shape, "--tls", "starttls"]),
        ("implicit TLS", "plaintext", [*tls, *shape, "--tls", "implicit"]),
        ("STARTTLS + AUTH", "plaintext", [*plain, *shape, "--tls", "starttls", "--auth", auth]),
        ("plaintext, 1/conn", "plaintext, 1/conn", [*plain, *once]),
        ("implicit TLS, 1/conn, full", "plaintext, 1/conn",
         [*tls, *once, "--tls", "implicit", "--tls-resume", "off"]),
        ("implicit TLS, 1/conn, resumed", "plaintext, 1/conn",
         [*tls, *once, "--tls", "implicit", "--tls-resume", "on"]),
    ]


def wait_ready(proc, log, ports):
    """True once the log shows every listener and the plain port greets with 220."""
    deadline = time.monotonic() + START_TIMEOUT
    needles = [f"listening on 127.0.0.1:{p}" for p in ports]
    while time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.05)
        with open(log, errors="replace") as f:
            text = f.read()
        if not all(n in text for n in needles):
            continue
        if greets(ports[0]):
            return True
    return False


def cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK  # utime, stime


def other_cpu(exclude):
    """CPU seconds per process (with reaped children) of all processes but `exclude`,
    kernel threads left out (loopback traffic keeps them busy)."""
    seconds = {}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue  # It has just exited.
        if int(pid) not in exclude and pid != "2" and fields[1] != "2":
            seconds[pid] = sum(map(int, fields[11:15])) / TICK
    return seconds


def run_bench(bench, argv, args, server, cpu):
    """One inboxd-bench run; returns (result dict, None) or (None, reason)."""
    full = [bench, "--connections", str(args.connections), "--size", args.size, "--json",
            "--progress", "off", *argv]
    s0, t0 = cpu_seconds(server.pid), time.monotonic()
    try:
        r = subprocess.run(full, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                           timeout=args.timeout, preexec_fn=pinned(cpu))
    except subprocess.TimeoutExpired:
        return None, f"timed out after {args.timeout:g} s"
    wall = time.monotonic() - t0
    server_cpu = (cpu_seconds(server.pid) - s0) / wall * 100 if server.poll() is None else None
    try:
        d = json.loads(r.stdout)
    except ValueError:
        last = (r.stderr.strip().splitlines() or ["no output"])[-1]
        return None, f"exit {r.returncode}: {last}"
    errors = {k: v for k, v in d["connection_errors"].items() if v}
    if r.returncode != 0 or d["accepted"] != d["started"] or errors:
        return None, (f"exit {r.returncode}: {d['accepted']} of {d['started']} accepted, "
                      f"errors {errors or 'none'}, codes {d['session_codes'] or d['codes']}, "
                      f"last error {d['last_error']}")
    d["server_cpu_pct"] = server_cpu
    d["bench_cpu_pct"] = (d["cpu_user_seconds"] + d["cpu_system_seconds"]) / d["wall_seconds"] * 100
    return d, None


def median_spread(values):
    if not values:
        return None, None
    med = statistics.median(values)
    return med, ((max(values) - min(values)) / 2 / med * 100 if med else 0.0)


def main():
    args = parse_args()
    inboxd = os.environ.get("INBOXD_BIN", os.path.join(REPO, "build", "inboxd"))
    bench = os.environ.get("INBOXD_BENCH", os.path.join(REPO, "build", "src", "bench", "inboxd-bench"))
    for path in (inboxd, bench):
        if not os.access(path, os.X_OK):
            print(f"error: {path} is not an executable (set INBOXD_BIN / INBOXD_BENCH)",
                  file=sys.stderr)
            return 2
    pin = not args.no_pin and len(os.sched_getaffinity(0)) >= 2
    server_cpu, bench_cpu = (0, 1) if pin else (None, None)
    plain_port, tls_port = free_port(), free_port()

    # SIGTERM and SIGHUP become SystemExit so that the `finally` below stops the server;
    # SIGINT already arrives as KeyboardInterrupt.
    def on_signal(signum, _frame):
        sys.exit(128 + signum)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGHUP, on_signal)
    workdir = tempfile.mkdtemp(prefix="inboxd-tls-column-")
    server = None
    try:
        hashed = subprocess.run([inboxd, "passwd"], input=PASSWORD + "\n", capture_output=True,
                                text=True, timeout=30)
        if hashed.returncode != 0 or not hashed.stdout.strip():
            print(f"error: inboxd passwd failed: {hashed.stderr.strip()}", file=sys.stderr)
            return 2
        users = os.path.join(workdir, "users")
        with open(users, "w") as f:
            f.write(f"{USER}:{hashed.stdout.strip()}\n")
        root = ["--allow-root"] if os.geteuid() == 0 else []
        argv = [inboxd, *root, "--sink", "null", "--listen", f"127.0.0.1:{plain_port}",
                "--listen-tls", f"127.0.0.1:{tls_port}", "--state-dir",
                os.path.join(workdir, "state"), "--auth-users", users]
        log = os.path.join(workdir, "inboxd.log")
        with open(log, "w") as f:
            server = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=f, stderr=f,
                                      preexec_fn=pinned(server_cpu))
        print(f"# started inboxd pid {server.pid}: {' '.join(argv)}", file=sys.stderr)
        if not wait_ready(server, log, [plain_port, tls_port]):
            state = "still running" if server.poll() is None else f"exit {server.returncode}"
            print(f"error: inboxd not ready within {START_TIMEOUT:g} s ({state}); log:\n"
                  f"{tail(log)}", file=sys.stderr)
            return 2

        plan = scenarios(args, plain_port, tls_port)
        runs = {name: [] for name, _, _ in plan}
        failures = 0
        ours = {os.getpid(), server.pid}
        cpu0, wall0 = other_cpu(ours), time.monotonic()
        for rep in range(args.reps):
            for name, _, argv in plan:
                d, err = run_bench(bench, argv, args, server, bench_cpu)
                if server.poll() is not None:
                    print(f"error: inboxd died (exit {server.returncode}) during {name} "
                          f"({err}); log:\n{tail(log)}", file=sys.stderr)
                    return 2
                if err:
                    failures += 1
                    print(f"# FAILED rep {rep + 1} {name}: {err}", file=sys.stderr)
                    continue
                runs[name].append(d)
                print(f"# rep {rep + 1} {name}: {d['messages_per_second']:.0f} msgs/s, "
                      f"{d['handshakes_per_second']:.0f} handshakes/s "
                      f"({d['handshakes']} done, {d['handshakes_resumed']} resumed)",
                      file=sys.stderr)
        other = sum(t - cpu0.get(pid, 0) for pid, t in other_cpu(ours).items())
        other *= 100 / (time.monotonic() - wall0)

        medians = {name: median_spread([d["messages_per_second"] for d in runs[name]])[0]
                   for name in runs}
        tls_names = {d["tls_version"] + " " + d["tls_cipher"]
                     for ds in runs.values() for d in ds if d["tls_version"]}
        print(f"\ninboxd --sink null, inboxd-bench -c {args.connections} --size {args.size}, "
              f"median of {args.reps}, "
              f"{'server on CPU 0, inboxd-bench on CPU 1' if pin else 'unpinned'}")
        print(f"throughput: -m {args.messages} --messages-per-connection {args.per_connection}; "
              f"1/conn: -m {args.handshakes} --messages-per-connection 1")
        if tls_names:
            print(f"TLS: {', '.join(sorted(tls_names))}")
        print(f"{'scenario':<31}{'msgs/s':>9}{'spread':>8}{'ratio':>7}{'handshakes/s':>14}"
              f"{'resumed':>9}{'hs p50 ms':>11}{'server CPU':>12}{'bench CPU':>11}")
        lines = []
        for name, ref, _ in plan:
            ds = runs[name]
            rate, spread = median_spread([d["messages_per_second"] for d in ds])
            hs, _ = median_spread([d["handshakes_per_second"] for d in ds])
            hs_p50, _ = median_spread([d["handshake_latency_us"]["p50"] / 1000 for d in ds])
            srv, _ = median_spread([d["server_cpu_pct"] for d in ds
                                    if d["server_cpu_pct"] is not None])
            cli, _ = median_spread([d["bench_cpu_pct"] for d in ds])
            resumed = sum(d["handshakes_resumed"] for d in ds)
            total_hs = sum(d["handshakes"] for d in ds)
            ratio = rate / medians[ref] if rate and medians.get(ref) else None
            tls = bool(ds) and ds[0]["tls"] is not None
            if not ds:
                print(f"{name:<31}{'FAILED':>9}")
            else:
                print(f"{name:<31}{rate:>9.0f}{f'±{spread:.1f}%':>8}{ratio:>7.2f}"
                      f"{f'{hs:.0f}' if tls else '-':>14}"
                      f"{f'{resumed / total_hs * 100:.0f}%' if tls and total_hs else '-':>9}"
                      f"{f'{hs_p50:.2f}' if tls else '-':>11}"
                      f"{f'{srv:.0f}%' if srv is not None else '-':>12}{f'{cli:.0f}%':>11}")
            lines.append(json.dumps({
                "bench": "tls-column", "scenario": name, "reference": ref,
                "args": " ".join("USER:PASS" if a.startswith(USER + ":") else a
                                for a in _args_of(plan, name)),
                "connections": args.connections, "size": args.size, "reps": args.reps,
                "pinned": pin,
                "msgs_per_s": rate and round(rate, 1), "spread_pct": spread and round(spread, 2),
                "ratio": ratio and round(ratio, 4),
                "handshakes_per_s": round(hs, 1) if tls and hs is not None else None,
                "handshakes": total_hs, "handshakes_resumed": resumed,
                "handshake_p50_ms": round(hs_p50, 3) if tls and hs_p50 is not None else None,
                "server_cpu_pct": srv and round(srv, 1), "bench_cpu_pct": cli and round(cli, 1),
                "tls_version": ds[0]["tls_version"] if ds else None,
                "tls_cipher": ds[0]["tls_cipher"] if ds else None,
                "msgs_per_s_samples": [round(d["messages_per_second"], 1) for d in ds],
                "handshakes_per_s_samples": [round(d["handshakes_per_second"], 1) for d in ds],
                "failed_runs": args.reps - len(ds),
            }))
        print("# ratio: msgs/s over the plaintext row of the same shape (100/conn rows against\n"
              "# 'plaintext', 1/conn rows against 'plaintext, 1/conn'). spread: half of\n"
              "# (max - min) over the median. CPU: % of one core during the run. A bench CPU\n"
              "# near 100% means the client, not the server, set the pace (full handshakes\n"
              "# cost the client more than the server: it verifies the ECDSA signature).\n"
              f"# other CPU (processes other than these): {other:.0f}% of one core; above ~10%\n"
              f"# the numbers are noise. failed runs: {failures}")
        if args.json:
            print("\n".join(lines))
        return 1 if failures else 0
    finally:
        if server is not None:
            stop(server)
        for dirpath, dirnames, filenames in os.walk(workdir, topdown=False):
            for f in filenames:
                os.unlink(os.path.join(dirpath, f))
            for d in dirnames:
                os.rmdir(os.path.join(dirpath, d))
        os.rmdir(workdir)


def _args_of(plan, name):
    return next(argv for n, _, argv in plan if n == name)


if __name__ == "__main__":
    sys.exit(main())
