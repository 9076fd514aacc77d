#!/usr/bin/python3
"""Which calls allocate: proto-bench --alloc-trace N, its frames named with addr2line.

    bench/micro/alloc_trace.py BUILD/bench/micro/proto-bench [N (4)] [--all-frames]

Runs `proto-bench --allocations-only --alloc-trace N` (a backtrace of each of the first N
allocations of every workload's steady-state pass) and prints each allocation as the chain of
source lines that made it, innermost first, without the standard library's and the counting
allocator's own frames (--all-frames keeps them). Use a build with debug info and no inlining
for exact lines (`meson setup BUILD -Dbuildtype=debug`): at -O2 an inlined call is named by the
function it was inlined into, and even at -O0 GCC may name a temporary of a braced initializer
by the line of the function's closing brace (check such a line with gdb: `break
alloc_count::trace`, then `frame N` and `disassemble /s`).
"""

import re
import subprocess
import sys


def main():
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    all_frames = "--all-frames" in sys.argv
    if not args:
        sys.exit(__doc__)
    exe, n = args[0], (args[1] if len(args) > 1 else "4")
    r = subprocess.run([exe, "--allocations-only", "--alloc-trace", n], capture_output=True,
                       text=True, timeout=600)
    if r.returncode != 0:
        sys.exit(f"error: {exe} failed: {r.stderr.strip()[-500:]}")
    # "FILE(+OFFSET) [ADDR]" (a local symbol), or "FILE(SYMBOL+OFFSET) [ADDR]" (an exported
    # one: the standard library's templates, main, libc): only the first kind is looked up.
    frame = re.compile(r"^(\S+)\(([^)+]*)\+(0x[0-9a-f]+)\)\s*\[")
    for line in r.stderr.splitlines():
        m = frame.match(line)
        if not m:
            print(line)
            continue
        if m.group(2) or not m.group(1).endswith(exe.split("/")[-1]):
            if all_frames:
                print("    " + m.group(2) if m.group(2) else line)
            continue
        # A return address: the call is the instruction before it.
        pc = hex(int(m.group(3), 16) - 1)
        out = subprocess.run(["addr2line", "-Cfipe", exe, pc], capture_output=True,
                             text=True).stdout.strip()
        if not all_frames and ("/usr/include/" in out or "alloc_count::" in out or
                               out.startswith("??")):
            continue
        print("    " + out.replace("\n", "\n      "))
    print(r.stdout.strip())
    return 0


if __name__ == "__main__":
    sys.exit(main())
