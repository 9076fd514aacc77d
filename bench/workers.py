#!/usr/bin/python3
"""--workers 1 against --workers 2, driven by inboxd-bench (issue 12).

For each round, starts `inboxd --sink null --workers N` on a free loopback
port, runs `inboxd-bench -c 16 -s 1024 --duration D --warmup 1` against it,
and prints one JSON line: msgs/s, the CPU the server's processes (the
supervisor and every worker) and the generator used per second of the run
(in cores), and how the connections and messages split over the workers
(from the log). The rounds alternate 1 and 2 workers so that a change in
the machine's load hits both. On a machine with few cores the generator
competes with the workers: read the generator's CPU beside the server's.

    bench/workers.py [--build build] [--duration 5] [--rounds 3]
"""
import argparse
import json
import os
import re
import resource
import shutil
import subprocess
import tempfile
import time


def cpu_seconds(pid):
    """utime + stime of one process (all its threads), from /proc."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def children(pid):
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(x) for x in f.read().split()]
    except OSError:
        return []


def run(build, workers, duration):
    d = tempfile.mkdtemp(prefix="inboxd-bench-workers-")
    log_path = os.path.join(d, "log")
    cmd = [os.path.join(build, "inboxd"), "--listen", "127.0.0.1:0", "--sink", "null",
           "--workers", str(workers)]
    if os.geteuid() == 0:
        cmd.append("--allow-root")
    with open(log_path, "wb") as log:
        server = subprocess.Popen(cmd, cwd=d, stdin=subprocess.DEVNULL, stderr=log)
    ready = f"all {workers} workers ready" if workers > 1 else "open files limit"
    deadline = time.monotonic() + 10
    text = ""
    while ready not in text:
        if time.monotonic() > deadline or server.poll() is not None:
            server.kill()
            raise SystemExit(f"inboxd did not start:\n{text}")
        time.sleep(0.02)
        with open(log_path) as f:
            text = f.read()
    port = int(re.search(r"listening on 127\.0\.0\.1:(\d+)", text).group(1))
    pids = [server.pid] + children(server.pid)
    before = {p: cpu_seconds(p) for p in pids}
    r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.monotonic()
    bench = subprocess.run([os.path.join(build, "src", "bench", "inboxd-bench"), "--port",
                            str(port), "-c", "16", "-s", "1024", "-d", str(duration),
                            "--warmup", "1", "--json", "--progress", "off"],
                           capture_output=True, text=True, timeout=duration + 60)
    wall = time.monotonic() - t0
    r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    after = {p: cpu_seconds(p) for p in pids}
    server.terminate()
    server.wait(60)
    with open(log_path) as f:
        text = f.read()
    shutil.rmtree(d, ignore_errors=True)
    result = json.loads(bench.stdout.strip().splitlines()[-1])

    def per_pid(pattern):
        counts = {}
        for pid in re.findall(pattern, text):
            counts[pid] = counts.get(pid, 0) + 1
        return sorted(counts.values())
    generator = (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)
    return {"workers": workers,
            "msgs_per_s": round(result["messages_per_second"]),
            "server_cores": round(sum(after[p] - before[p] for p in pids) / wall, 3),
            "generator_cores": round(generator / wall, 3),
            "connections_per_worker": per_pid(r"inboxd\[(\d+)\]: info: conn=\d+ connect from"),
            "messages_per_worker": per_pid(r"inboxd\[(\d+)\]: info: conn=\d+ id=\S+ .* status=sent")}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--build", default=os.path.join(os.path.dirname(__file__), "..", "build"))
    ap.add_argument("--duration", type=float, default=5)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    for _ in range(args.rounds):
        for workers in (1, 2):
            print(json.dumps(run(args.build, workers, args.duration)), flush=True)


if __name__ == "__main__":
    main()
