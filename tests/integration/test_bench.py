"""inboxd-bench against the real inboxd: --workers splits the work and its
merged report adds up, --histogram-log writes an HdrHistogram interval log
that HdrHistogram's own Java tool reads with the same percentiles, and
--corpus replays a Maildir or an mbox that inboxd then stores byte for byte.
No timing is checked."""
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
import unittest

import harness
from harness import InboxdTestCase, parse_stored

BENCH = os.path.join(os.path.dirname(os.path.abspath(harness.BIN)), "src", "bench", "inboxd-bench")
JAVA = shutil.which("java")
HDR_JAR = "/usr/share/java/hdrhistogram.jar"   # Debian's libhdrhistogram-java
RUN_TIMEOUT = 120                              # seconds, for one inboxd-bench or java run


def bench(port, *args):
    """Runs inboxd-bench --json against port; returns the parsed JSON."""
    p = subprocess.run([BENCH, "--port", str(port), "--json", "--progress", "off", *args],
                       capture_output=True, timeout=RUN_TIMEOUT)
    if p.returncode != 0:
        raise AssertionError(f"inboxd-bench {args} exited {p.returncode}: {p.stderr.decode()}")
    return json.loads(p.stdout)


def java_percentiles(log_path):
    """HistogramLogProcessor's percentile table for the whole log, in
    microseconds: a list of (value, percentile level, total count) and the
    total count and max from its footer."""
    p = subprocess.run(["java", "-cp", HDR_JAR, "org.HdrHistogram.HistogramLogProcessor",
                        "-i", log_path, "-outputValueUnitRatio", "1", "-csv"],
                       capture_output=True, timeout=RUN_TIMEOUT)
    if p.returncode != 0:
        raise AssertionError(f"HistogramLogProcessor failed: {p.stderr.decode()}")
    rows = []
    for line in p.stdout.decode().splitlines():
        fields = line.split(",")
        if len(fields) == 4 and not line.startswith(("#", '"')):
            rows.append((float(fields[0]), float(fields[1]), int(fields[2])))
    return rows


def value_at(rows, level):
    """The value of the row at exactly this percentile level (0..1)."""
    for value, pct, _ in rows:
        if abs(pct - level) < 1e-9:
            return value
    raise AssertionError(f"no row at percentile level {level} in {rows[:5]}...")


@unittest.skipIf(not os.access(BENCH, os.X_OK), f"inboxd-bench not built at {BENCH}")
class BenchWorkersTest(InboxdTestCase):
    """--workers N: N processes, one report whose counts add up."""

    def test_workers_counts_add_up(self):
        n = 300
        d = bench(self.server.port, "--workers", "3", "-c", "5", "-m", str(n), "--size", "2000",
                  "--to", "u{n}@inboxd.example")
        self.assertEqual(d["workers"], 3)
        self.assertEqual((d["started"], d["accepted"], d["refused"], d["failed"]), (n, n, 0, 0))
        self.assertEqual(d["codes"], {"250": n})
        self.assertEqual(d["sessions"], 5, "every connection of every worker, once")
        self.assertEqual(d["latency_us"]["count"], n, "the histograms are merged, not one worker's")
        self.assertGreater(d["messages_per_second"], 0)
        self.assertGreaterEqual(d["writes"], n)
        # Every message is stored, and {n} is unique across the workers: the
        # recipients are exactly u1 .. u300.
        stored = self.stored()
        self.assertEqual(len(stored), n)
        rcpts = sorted(parse_stored(m)["for"].strip("<>") for m in stored)
        self.assertEqual(rcpts, sorted(f"u{k}@inboxd.example" for k in range(1, n + 1)))

    def test_sigint_to_the_parent_reaches_every_worker(self):
        """SIGINT to the parent: each worker finishes what is in flight and
        reports; the merged report counts exactly what was stored."""
        p = subprocess.Popen([BENCH, "--port", str(self.server.port), "--workers", "2", "-c", "4",
                              "--duration", "60", "--json", "--progress", "off"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            new = os.path.join(self.server.maildir, "new")
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline and not (os.path.isdir(new) and os.listdir(new)):
                time.sleep(0.05)
            p.send_signal(signal.SIGINT)
            out, err = p.communicate(timeout=RUN_TIMEOUT)
        finally:
            if p.poll() is None:
                p.kill()
                p.wait()
        self.assertEqual(p.returncode, 0, err.decode())
        d = json.loads(out)
        self.assertEqual((d["workers"], d["stopped_because"], d["failed"]), (2, "interrupted", 0))
        self.assertGreater(d["accepted"], 0)
        self.assertEqual(len(self.stored()), d["accepted"])

    def test_workers_refuses_more_workers_than_connections(self):
        p = subprocess.run([BENCH, "--port", str(self.server.port), "--workers", "4", "-c", "2"],
                           capture_output=True, timeout=RUN_TIMEOUT)
        self.assertEqual(p.returncode, 2)
        self.assertIn(b"--workers", p.stderr)


@unittest.skipIf(not os.access(BENCH, os.X_OK), f"inboxd-bench not built at {BENCH}")
@unittest.skipIf(JAVA is None or not os.path.exists(HDR_JAR),
                 f"java or {HDR_JAR} missing (Debian: default-jre-headless libhdrhistogram-java)")
class BenchHistogramLogTest(InboxdTestCase):
    """--histogram-log: HdrHistogram's HistogramLogProcessor reads it and finds
    our count and our percentiles (one process, and merged from workers)."""
    sink = "null"

    def check_log(self, *args):
        n = 2000   # 0.5, 0.9 and 0.99 of it are whole ranks, so both sides agree exactly
        tmp = tempfile.mkdtemp(prefix="inboxd-bench-hlog-")
        self.addCleanup(shutil.rmtree, tmp, True)
        path = os.path.join(tmp, "latency.hlog")
        d = bench(self.server.port, "-c", "4", "-m", str(n), "--histogram-log", path,
                  "--histogram-interval", "0.1", *args)
        self.assertEqual(d["accepted"], n)
        with open(path) as f:
            text = f.read()
        self.assertIn("#[Histogram log format version 1.3]", text)
        self.assertIn("#[StartTime: ", text)
        self.assertIn("#[BaseTime: ", text)
        lines = [l for l in text.splitlines() if l and not l.startswith(("#", '"'))]
        self.assertEqual(len(lines), d["histogram_intervals"])
        self.assertTrue(all(l.split(",")[3].startswith("HISTF") for l in lines),
                        "compressed V2 histograms (cookie 0x1c849314) begin HISTF in base64")
        rows = java_percentiles(path)
        self.assertEqual(rows[-1][2], n, "the Java tool counts every accepted message")
        lat = d["latency_us"]
        # Both report the highest value of the percentile's bucket; ours is
        # also never above the exact max.
        for ours, level in ((lat["p50"], 0.5), (lat["p90"], 0.9)):
            theirs = value_at(rows, level)
            if ours < lat["max"]:
                self.assertEqual(ours, theirs, f"percentile {level}")
            else:
                self.assertLessEqual(ours, theirs)
        below = max(v for v, pct, _ in rows if pct <= 0.99)
        above = min(v for v, pct, _ in rows if pct >= 0.99)
        self.assertTrue(below <= lat["p99"] <= above, f"p99 {lat['p99']} not in [{below}, {above}]")
        self.assertLessEqual(lat["max"], rows[-1][0])

    def test_log_read_by_hdrhistogram(self):
        self.check_log()

    def test_merged_log_of_workers(self):
        self.check_log("--workers", "2")


# Messages for the corpus: LF and CRLF line ends, lines that start with a
# dot (and one that is only a dot, which would end DATA unstuffed), a last
# line without its line end, "From " lines.
CORPUS = [
    b"Subject: plain\n\nOne line.\n",
    b"Subject: dots\r\n\r\n.starts with a dot\r\n.\r\n..two\r\nend\r\n",
    b"Subject: no final line end\n\nFrom the start of a line\nlast line",
    b"Subject: long\n\n" + b"".join(b"line %d " % i + b"x" * 70 + b"\n" for i in range(400)),
]


def as_stored(message):
    """What inboxd stores of a message: LF line ends, a final one added."""
    body = message.replace(b"\r\n", b"\n")
    return body if body.endswith(b"\n") else body + b"\n"


@unittest.skipIf(not os.access(BENCH, os.X_OK), f"inboxd-bench not built at {BENCH}")
class BenchCorpusTest(InboxdTestCase):
    """--corpus: each message of a Maildir or an mbox reaches inboxd's Maildir
    byte for byte, in order, cycling."""

    def corpus_dir(self):
        tmp = tempfile.mkdtemp(prefix="inboxd-bench-corpus-")
        self.addCleanup(shutil.rmtree, tmp, True)
        return tmp

    def check_stored(self, expected, d, rounds):
        self.assertEqual(d["accepted"], len(expected) * rounds)
        got = sorted(parse_stored(m)["body"] for m in self.stored())
        want = sorted(as_stored(m) for m in expected for _ in range(rounds))
        self.assertEqual(len(got), len(want))
        for g, w in zip(got, want):
            self.assertEqual(g, w)

    def test_maildir_replayed_byte_for_byte(self):
        root = self.corpus_dir()
        for sub in ("cur", "new", "tmp"):
            os.mkdir(os.path.join(root, sub))
        for i, m in enumerate(CORPUS):
            # cur/ names carry Maildir flags; both directories are read.
            sub, name = ("cur", f"{i}.corpus.test:2,S") if i % 2 else ("new", f"{i}.corpus.test")
            with open(os.path.join(root, sub, name), "wb") as f:
                f.write(m)
        # Something in tmp/ is not a delivered message: not replayed.
        with open(os.path.join(root, "tmp", "half"), "wb") as f:
            f.write(b"Subject: not delivered\n\n")
        d = bench(self.server.port, "--corpus", root, "-c", "2", "-m", str(2 * len(CORPUS)))
        self.check_stored(CORPUS, d, 2)
        self.assertEqual(d["bytes_accepted"],
                         2 * sum(len(as_stored(m).replace(b"\n", b"\r\n")) for m in CORPUS))

    def test_bdat_sends_the_corpus_unstuffed(self):
        """With --bdat the chunk is the text itself (RFC 3030 2: no
        dot-stuffing), and BDAT's count is its size."""
        root = self.corpus_dir()
        os.mkdir(os.path.join(root, "new"))
        for i, m in enumerate(CORPUS):
            with open(os.path.join(root, "new", f"{i}.corpus.test"), "wb") as f:
                f.write(m)
        for pipelining in ("on", "off"):
            d = bench(self.server.port, "--corpus", root, "--bdat", "-c", "1", "-m",
                      str(len(CORPUS)), "--pipelining", pipelining)
            self.assertEqual(d["accepted"], len(CORPUS))
        got = sorted(parse_stored(m)["body"] for m in self.stored())
        self.assertEqual(got, sorted(as_stored(m) for m in CORPUS for _ in range(2)))

    def test_mboxrd_replayed_byte_for_byte(self):
        root = self.corpus_dir()
        path = os.path.join(root, "corpus.mbox")
        messages = CORPUS + [b"Subject: quoted\n\nFrom inside\n>From once quoted\n"]
        with open(path, "wb") as f:
            for m in messages:
                # mboxrd (qmail's mbox(5)): quote "From " lines and their quoted forms.
                lines = m.split(b"\n")
                quoted = [b">" + l if l.lstrip(b">").startswith(b"From ") else l for l in lines]
                body = b"\n".join(quoted)
                if not body.endswith(b"\n"):
                    body += b"\n"
                f.write(b"From corpus@example.test Thu Jan  1 00:00:00 2026\n" + body + b"\n")
        d = bench(self.server.port, "--corpus", path, "-c", "1", "-m", str(len(messages)),
                  "--workers", "1")
        # The file's last line end of the no-final-line-end message is the
        # mbox's, and stays: inboxd adds one anyway.
        self.check_stored(messages, d, 1)

    def test_bad_corpus_is_a_flag_error(self):
        root = self.corpus_dir()
        p = subprocess.run([BENCH, "--port", str(self.server.port), "--corpus", root],
                           capture_output=True, timeout=RUN_TIMEOUT)
        self.assertEqual(p.returncode, 2)
        self.assertIn(b"not a Maildir", p.stderr)


if __name__ == "__main__":
    harness.main()
