"""What the benchmark scripts share: free loopback ports, CPU pinning, readiness, stopping.

Every server a script starts is stopped by its own PID (stop); nothing here looks processes
up by name.
"""

import os
import socket
import subprocess


def free_port():
    """A loopback port free right now. It is released again before the server binds it; a race
    is possible but harmless on a quiet benchmark machine (the server then fails to start and
    the script says so)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pinned(cpu):
    """A preexec_fn that pins the child to one CPU, or None for no pinning."""
    return None if cpu is None else (lambda: os.sched_setaffinity(0, {cpu}))


def greets(port, timeout=1.0):
    """True when a server on the port answers a connection with 220 (then QUIT)."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
            if s.recv(512).startswith(b"220"):
                s.sendall(b"QUIT\r\n")
                return True
    except OSError:
        pass
    return False


def tail(log, size=2000):
    """The end of a log file, for an error message."""
    with open(log, errors="replace") as f:
        return f.read()[-size:]


def stop(proc, grace=5.0):
    """Stops a process we started, by its PID: SIGTERM, then SIGKILL after `grace` seconds."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
