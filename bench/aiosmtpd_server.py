#!/usr/bin/python3
"""An aiosmtpd server for the benchmark harness: discards mail, or stores it in a Maildir.

    /usr/bin/python3 bench/aiosmtpd_server.py --port 2526 --handler discard
    /usr/bin/python3 bench/aiosmtpd_server.py --port 2526 --handler maildir --maildir DIR

Uses Debian's python3-aiosmtpd on one asyncio loop, as an aiosmtpd user would.
The Maildir handler writes tmp/<unique>, fsyncs it, renames it into new/ and
fsyncs new/ before the 250, like inboxd's Maildir sink; the file work runs in
the loop's default thread pool so that the loop does not block on fsync.
Prints "listening on 127.0.0.1:PORT" once it accepts connections; SIGTERM
stops it.
"""

import argparse
import asyncio
import itertools
import os
import signal
import socket
import sys
import time

from aiosmtpd.smtp import SMTP


class Discard:
    async def handle_DATA(self, server, session, envelope):
        return "250 2.0.0 Ok: discarded"


class Maildir:
    def __init__(self, root):
        self.root = root
        for sub in ("tmp", "new", "cur"):
            os.makedirs(os.path.join(root, sub), exist_ok=True)
        self.host = socket.gethostname().replace("/", r"\057").replace(":", r"\072")
        self.counter = itertools.count(1)
        self.new_fd = os.open(os.path.join(root, "new"), os.O_RDONLY | os.O_DIRECTORY)

    def store(self, data, n):
        now = time.time()
        name = f"{int(now)}.M{int(now * 1e6) % 1000000}P{os.getpid()}Q{n}.{self.host}"
        tmp = os.path.join(self.root, "tmp", name)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(tmp, os.path.join(self.root, "new", f"{name},S={len(data)}"))
        os.fsync(self.new_fd)

    async def handle_DATA(self, server, session, envelope):
        data = envelope.original_content or envelope.content
        if isinstance(data, str):
            data = data.encode("utf-8", "surrogateescape")
        loop = asyncio.get_running_loop()
        try:
            await loop.run_in_executor(None, self.store, data, next(self.counter))
        except OSError as e:
            return f"451 4.3.0 Not stored: {e.strerror}"
        return "250 2.0.0 Ok: stored"


async def serve(args):
    handler = Discard() if args.handler == "discard" else Maildir(args.maildir)
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: SMTP(handler, hostname="aiosmtpd.bench", data_size_limit=64 * 1024 * 1024,
                     decode_data=False, enable_SMTPUTF8=False),
        host=args.host, port=args.port, backlog=4096, reuse_address=True)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print(f"listening on {args.host}:{args.port}", flush=True)
    await stop.wait()
    server.close()


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--handler", choices=("discard", "maildir"), default="discard")
    p.add_argument("--maildir", help="the Maildir (created if missing), with --handler maildir")
    args = p.parse_args()
    if args.handler == "maildir" and not args.maildir:
        p.error("--handler maildir needs --maildir")
    asyncio.run(serve(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
