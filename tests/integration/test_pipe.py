"""The pipe sink (--sink pipe --pipe-command), and --sink given twice.

Real programs on the other side (sh scripts the test writes): the program
gets the exact bytes on its standard input and the envelope in its
environment; exit 0 is 250, 75 is 451, anything else 554 with its first line
of standard error in the log (or as the reply when it is one); a program
that runs past --pipe-timeout is killed with what it started (451); one that
floods stderr or never reads its input is handled; --pipe-max bounds the
children and --pipe-queue the messages that wait; a large message is
streamed with the server's memory bounded; `--sink maildir --sink pipe`
stores a copy only of what the pipe took; as root with --user the program
runs as that user."""
import os
import pwd
import shutil
import tempfile
import time
import unittest

import harness
from harness import HELO, InboxdTestCase

BODY = b"From: a@example.net\r\nSubject: pipe\r\n\r\nline one\r\n.. dotted\r\nlast\r\n"
SENDER = "sender@example.net"
RCPTS = ["u1@example.org", "u2@example.org"]


class PipeTestCase(InboxdTestCase):

    def setUp(self):
        self.clients = []
        self.out = tempfile.mkdtemp(prefix="inboxd-it-pipe-")
        self.addCleanup(shutil.rmtree, self.out, True)
        os.chmod(self.out, 0o777)
        self.server = None  # each test starts its own

    def script(self, name, text):
        """An sh script in the output folder; returns its path."""
        path = os.path.join(self.out, name)
        with open(path, "w") as f:
            f.write("#!/bin/sh\n" + text)
        os.chmod(path, 0o755)
        return path

    def start(self, command, *args, sinks=("pipe",), **kw):
        more = []
        for s in sinks[1:]:
            more += ["--sink", s]
        self.server = self.start_server("--pipe-command", command, *more, *args,
                                        sink=sinks[0], **kw)
        return self.server

    def send(self, body=BODY, rcpts=RCPTS, c=None):
        """One message; returns the reply to its end of data."""
        c = c or self.ehlo()
        self.assertReply(c.cmd(f"MAIL FROM:<{SENDER}>"), "250 2.1.0")
        for r in rcpts:
            self.assertReply(c.cmd(f"RCPT TO:<{r}>"), "250 2.1.5")
        self.assertReply(c.cmd("DATA"), "354")
        c.send(harness.stuff(body) + b".\r\n")
        return c.reply()

    def read(self, name):
        with open(os.path.join(self.out, name), "rb") as f:
            return f.read()

    def wait_file(self, name, timeout=harness.TIMEOUT):
        path = os.path.join(self.out, name)
        deadline = time.monotonic() + timeout
        while not os.path.exists(path) and time.monotonic() < deadline:
            time.sleep(0.02)
        return os.path.exists(path)


def environment(data):
    return dict(line.split("=", 1) for line in data.decode().splitlines() if "=" in line)


def pid_alive(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ")[-1][:1] != "Z"
    except OSError:
        return False


class PipeDeliveryTest(PipeTestCase):
    def test_program_gets_the_exact_bytes_and_the_envelope(self):
        s = self.script("save.sh", f'env > {self.out}/env; printf "%s|" "$@" > {self.out}/args; '
                                   f'cat > {self.out}/msg\n')
        self.start(f"{s} 'one arg' two \"th ree\"")
        r = self.send()
        qid = self.assertQueued(r)
        data = self.read("msg")
        p = harness.parse_stored(b"Return-Path: <x>\n" + data)
        self.assertIsNotNone(p, data)
        self.assertEqual(p["id"], qid)
        self.assertEqual(p["body"], BODY.replace(b"\r\n", b"\n"))
        env = environment(self.read("env"))
        self.assertEqual(env["SENDER"], SENDER)
        self.assertEqual(env["RECIPIENTS"], " ".join(RCPTS))
        self.assertEqual(env["QUEUE_ID"], qid)
        self.assertEqual(env["CLIENT_ADDRESS"], "127.0.0.1")
        self.assertEqual(env["CLIENT_HELO"], HELO)
        self.assertIn("PATH", env)
        self.assertEqual(self.read("args"), b"one arg|two|th ree|")
        self.assertIsNotNone(self.server.wait_log(rf"id={qid} .* status=sent .*"
                                                  r"hop=\(pipe: \S+save\.sh exit status 0\)"),
                             self.server.log())

    def test_from_line_and_an_unsafe_sender(self):
        s = self.script("save.sh", f'env > {self.out}/env; cat > {self.out}/msg\n')
        self.start(s, "--pipe-from-line")
        c = self.ehlo()
        self.assertReply(c.cmd('MAIL FROM:<"a;$(touch x)"@example.net>'), "250")
        self.assertReply(c.cmd("RCPT TO:<u1@example.org>"), "250")
        self.assertReply(c.cmd("DATA"), "354")
        c.send(BODY + b".\r\n")
        self.assertQueued(c.reply())
        data = self.read("msg")
        self.assertRegex(data.split(b"\n")[0],
                         rb"^From _a___touch_x__@example\.net \w{3} \w{3} [ \d]\d \d\d:\d\d:\d\d \d{4}$")
        self.assertTrue(data.split(b"\n", 1)[1].startswith(b"Received: "))
        self.assertEqual(environment(self.read("env"))["SENDER"], "_a___touch_x__@example.net")

    def test_exit_75_is_451(self):
        self.start("sh -c 'cat > /dev/null; exit 75'")
        r = self.send()
        self.assertReply(r, "451 4.3.0")
        self.assertIsNotNone(self.server.wait_log(r"not stored: .*pipe: sh exit status 75"),
                             self.server.log())

    def test_exit_1_is_554_with_the_first_stderr_line_in_the_log(self):
        self.start("sh -c 'cat > /dev/null; echo \"no such mailbox here\" >&2; echo more >&2; "
                   "exit 1'")
        r = self.send()
        self.assertReply(r, "554 5.3.0")
        self.assertNotIn("no such mailbox", r.last)  # not a reply line: only the log has it
        m = self.server.wait_log(r"not stored: .*pipe: sh exit status 1: no such mailbox here$")
        self.assertIsNotNone(m, self.server.log())
        self.assertNotIn("more", m.group(0))

    def test_a_reply_line_on_stderr_is_the_clients_reply(self):
        self.start("sh -c 'cat > /dev/null; echo \"550 5.1.1 <u1@example.org>: unknown\" >&2; "
                   "exit 67'")
        r = self.send()
        self.assertEqual(r.lines, ["550 5.1.1 <u1@example.org>: unknown"])

    def test_a_program_that_cannot_run_is_451(self):
        self.start(os.path.join(self.out, "missing-program"))
        r = self.send()
        self.assertReply(r, "451 4.3.0")
        self.assertIsNotNone(self.server.wait_log(r"not stored: No such file or directory: pipe: "
                                                  r"cannot run .*missing-program"),
                             self.server.log())

    def test_timeout_kills_the_program_and_what_it_started(self):
        s = self.script("slow.sh", f'cat > /dev/null; sleep 30 & echo $$ $! > {self.out}/pids; '
                                   f'wait\n')
        self.start(s, "--pipe-timeout", "1")
        t0 = time.monotonic()
        c = self.ehlo()
        c.set_timeout(10)
        r = self.send(c=c)
        self.assertReply(r, "451 4.3.0")
        self.assertLess(time.monotonic() - t0, 6)
        self.assertIsNotNone(self.server.wait_log(r"pipe: \S+slow\.sh killed after 1000 ms"),
                             self.server.log())
        pids = [int(p) for p in self.read("pids").split()]
        deadline = time.monotonic() + 2
        while any(pid_alive(p) for p in pids) and time.monotonic() < deadline:
            time.sleep(0.02)
        self.assertEqual([p for p in pids if pid_alive(p)], [], "the program's group lives on")

    def test_stderr_flood_is_read_and_dropped(self):
        # 20 MB on stderr before the input is read: a server that did not read
        # it would block the program (and time out); the log keeps 512 bytes.
        self.start("sh -c 'head -c 20000000 /dev/zero | tr \"\\0\" x >&2; cat > /dev/null; "
                   "exit 1'", "--pipe-timeout", "20")
        c = self.ehlo()
        c.set_timeout(20)
        r = self.send(c=c)
        self.assertReply(r, "554 5.3.0")
        m = self.server.wait_log(r"pipe: sh exit status 1: (x+)$")
        self.assertIsNotNone(m, self.server.log()[-2000:])
        self.assertEqual(len(m.group(1)), 512)

    def test_a_program_whose_child_keeps_stderr_open(self):
        # What the program left running holds its stderr: the exit decides,
        # a moment later, without waiting for that.
        self.start("sh -c 'cat > /dev/null; sleep 3 >&2 & exit 0'")
        t0 = time.monotonic()
        self.assertQueued(self.send())
        self.assertLess(time.monotonic() - t0, 2)

    def test_a_program_that_does_not_read_its_input(self):
        # Exit 0 without reading: stored, as with Postfix's pipe(8) (the exit
        # decides); a 2 MB message meets a closed pipe (EPIPE) on the way.
        big = b"Subject: big\r\n\r\n" + b"y" * 998 + b"\r\n"
        big += b"z" * 998 * 2000 + b"\r\n"
        self.start("sh -c 'exit 0'")
        self.assertQueued(self.send(body=big))
        self.server.stop()
        self.server = self.start("sh -c 'exec 0<&-; sleep 0.2; echo closed early >&2; exit 3'")
        r = self.send(body=big)
        self.assertReply(r, "554 5.3.0")
        self.assertIsNotNone(self.server.wait_log(r"exit status 3: closed early"))
        r = self.send(c=self.ehlo())
        self.assertReply(r, "554 5.3.0")  # the server goes on

    def test_a_client_that_leaves_mid_data_never_completes_the_program(self):
        # The program is killed before its input ends: it never sees a
        # truncated message as a whole one.
        s = self.script("mark.sh", f'echo $$ > {self.out}/pid; cat > {self.out}/msg; '
                                   f'touch {self.out}/done\n')
        self.start(s)
        c = self.ehlo()
        self.assertReply(c.cmd(f"MAIL FROM:<{SENDER}>"), "250")
        self.assertReply(c.cmd("RCPT TO:<u1@example.org>"), "250")
        self.assertReply(c.cmd("DATA"), "354")
        c.send(b"Subject: half\r\n\r\nthe first half\r\n")
        self.assertTrue(self.wait_file("pid"))
        pid = int(self.read("pid"))
        c.close()
        self.clients.remove(c)
        deadline = time.monotonic() + harness.TIMEOUT
        while pid_alive(pid) and time.monotonic() < deadline:
            time.sleep(0.02)
        self.assertFalse(pid_alive(pid), "the program still runs")
        time.sleep(0.2)
        self.assertFalse(os.path.exists(os.path.join(self.out, "done")))
        # The server goes on.
        self.assertQueued(self.send())

    def test_reload_keeps_running_programs_and_the_limit(self):
        s = self.script("slow.sh", f'cat > {self.out}/msg.$QUEUE_ID; mkdir {self.out}/run.$$; '
                                   f'ls {self.out} | grep -c "^run\." >> {self.out}/counts; '
                                   f'sleep 1; rmdir {self.out}/run.$$\n')
        self.start(s, "--pipe-max", "1")
        c = self.ehlo()
        c.set_timeout(10)
        self.assertReply(c.cmd(f"MAIL FROM:<{SENDER}>"), "250")
        self.assertReply(c.cmd("RCPT TO:<u1@example.org>"), "250")
        self.assertReply(c.cmd("DATA"), "354")
        c.send(BODY + b".\r\n")
        time.sleep(0.3)
        self.assertRegex(self.server.reload(), r"\breloaded\b")
        # A message after the reload waits for the old sink's program.
        d = self.ehlo()
        d.set_timeout(10)
        self.assertQueued(self.send(c=d))
        qid = self.assertQueued(c.reply())
        self.assertTrue(self.read(f"msg.{qid}").endswith(b"last\n"))
        self.assertEqual([int(n) for n in self.read("counts").split()], [1, 1])

    def test_pipe_max_and_pipe_queue(self):
        s = self.script("count.sh",
                        f'cat > /dev/null; mkdir {self.out}/run.$QUEUE_ID; '
                        f'ls {self.out} | grep -c "^run\\." >> {self.out}/counts; sleep 0.5; '
                        f'rmdir {self.out}/run.$QUEUE_ID\n')
        self.start(s, "--pipe-max", "2", "--pipe-queue", "3")
        clients = []
        for _ in range(7):
            c = self.ehlo()
            c.set_timeout(15)
            self.assertReply(c.cmd(f"MAIL FROM:<{SENDER}>"), "250")
            self.assertReply(c.cmd("RCPT TO:<u1@example.org>"), "250")
            self.assertReply(c.cmd("DATA"), "354")
            clients.append(c)
        for c in clients:
            c.send(BODY + b".\r\n")
        codes = sorted(c.reply().code for c in clients)
        self.assertEqual(codes, [250] * 5 + [451] * 2, self.server.log()[-3000:])
        counts = [int(n) for n in self.read("counts").split()]
        self.assertEqual(len(counts), 5)
        self.assertLessEqual(max(counts), 2)
        self.assertIsNotNone(self.server.wait_log(r"messages wait for a free \S+count\.sh already"))

    def test_large_message_is_streamed_in_bounded_memory(self):
        self.start(f"sh -c 'sleep 1; cat > {self.out}/msg'", "--memory-budget", "1048576",
                   "--max-message-size", "100000000")
        line = b"w" * 998 + b"\r\n"
        n = 40_000  # 40 MB
        c = self.ehlo()
        c.set_timeout(60)
        self.assertReply(c.cmd(f"MAIL FROM:<{SENDER}>"), "250")
        self.assertReply(c.cmd("RCPT TO:<u1@example.org>"), "250")
        self.assertReply(c.cmd("DATA"), "354")
        rss0 = self.server.rss()
        c.send(b"Subject: big\r\n\r\n")
        chunk = line * 1000
        for _ in range(n // 1000):
            c.send(chunk)
        c.send(b".\r\n")
        self.assertQueued(c.reply())
        size = os.path.getsize(os.path.join(self.out, "msg"))
        self.assertGreater(size, n * 999)
        with open(os.path.join(self.out, "msg"), "rb") as f:
            f.seek(size - 2000)
            self.assertTrue(f.read().endswith(b"w" * 998 + b"\n"))
        if os.environ.get("INBOXD_SANITIZE", "none") in ("none", ""):
            peak = self.server.rss("VmHWM")
            self.assertLess(peak - rss0, 24 * 1024 * 1024, "the message was held in memory")


class ComposedSinksTest(PipeTestCase):
    def test_maildir_and_pipe_store_and_pipe(self):
        self.start(f"sh -c 'cat > {self.out}/msg'", sinks=("maildir", "pipe"))
        qid = self.assertQueued(self.send())
        stored = self.stored()
        self.assertEqual(len(stored), 1)
        self.assertStored(stored[0], SENDER, BODY, queue_id=qid)
        self.assertTrue(stored[0].endswith(self.read("msg")))

    def test_a_large_message_reaches_both_with_a_slow_pipe(self):
        # The pipe reads late: the tee pauses the client for it, and both
        # sides get every byte.
        self.start(f"sh -c 'sleep 1; cat > {self.out}/msg'", "--memory-budget", "1048576",
                   sinks=("maildir", "pipe"))
        body = b"Subject: big\r\n\r\n" + (b"v" * 998 + b"\r\n") * 8000
        c = self.ehlo()
        c.set_timeout(30)
        qid = self.assertQueued(self.send(body=body, c=c))
        stored = self.stored()
        self.assertEqual(len(stored), 1)
        self.assertStored(stored[0], SENDER, body, queue_id=qid)
        self.assertTrue(stored[0].endswith(self.read("msg")))

    def test_a_failing_pipe_leaves_no_maildir_copy(self):
        self.start("sh -c 'cat >/dev/null; echo \"554 5.7.1 not for us\" >&2; exit 1'",
                   sinks=("pipe", "maildir"))
        r = self.send()
        self.assertEqual(r.lines, ["554 5.7.1 not for us"])
        self.assertEqual(self.stored(), [])

    def test_a_deferring_pipe_leaves_no_maildir_copy(self):
        self.start("sh -c 'cat >/dev/null; exit 75'", sinks=("maildir", "pipe"))
        self.assertReply(self.send(), "451 4.3.0")
        self.assertEqual(self.stored(), [])

    def test_config_file_lists_two_sinks(self):
        self.server = self.start_server(
            sink=None,
            config=f'sink = ["maildir", "pipe"]\npipe-command = "sh -c \'cat > {self.out}/msg\'"\n'
                   f'pipe-max = 3\npipe-queue = 0\npipe-timeout = 5\npipe-from-line = true\n')
        self.assertQueued(self.send())
        self.assertEqual(len(self.stored()), 1)
        self.assertTrue(self.read("msg").startswith(b"From sender@example.net "))

    def test_bad_configurations_are_refused(self):
        cases = [
            (["--sink", "pipe"], "needs pipe-command"),
            (["--sink", "pipe", "--pipe-command", "sh -c 'open"], "unterminated '"),
            (["--sink", "maildir", "--sink", "mbox", "--mbox", "x"], "a local store"),
            (["--sink", "pipe", "--sink", "pipe", "--pipe-command", "cat"], "a local store"),
        ]
        for args, want in cases:
            p = harness.run_cli("--check-config", "--allow-root", *args)
            self.assertEqual(p.returncode, 2, (args, p.stderr))
            self.assertIn(want, p.stderr.decode(), args)


@unittest.skipUnless(os.geteuid() == 0, "needs root")
class PipeAsUserTest(PipeTestCase):
    def test_the_program_runs_as_the_servers_user(self):
        nobody = pwd.getpwnam("nobody")
        top = tempfile.mkdtemp(prefix="inboxd-it-pipe-root-")
        self.addCleanup(shutil.rmtree, top, True)
        os.chmod(top, 0o755)
        self.server = self.start_server(
            "--user", "nobody", "--state-dir", os.path.join(top, "state"),
            "--pipe-command", f"sh -c 'id -u > {self.out}/uid; id -g > {self.out}/gid; "
                              f"cat > {self.out}/msg'",
            sink="pipe", maildir=False, allow_root=False)
        self.assertIsNotNone(self.server.wait_log(rf"running as uid {nobody.pw_uid} "),
                             self.server.log())
        self.assertQueued(self.send())
        self.assertEqual(int(self.read("uid")), nobody.pw_uid)
        self.assertEqual(int(self.read("gid")), nobody.pw_gid)
        self.assertEqual(os.stat(os.path.join(self.out, "msg")).st_uid, nobody.pw_uid)

    def test_a_program_the_user_cannot_run_is_an_error_at_start(self):
        s = self.script("private.sh", "cat > /dev/null\n")
        os.chmod(s, 0o700)
        top = tempfile.mkdtemp(prefix="inboxd-it-pipe-root-")
        self.addCleanup(shutil.rmtree, top, True)
        os.chmod(top, 0o755)
        p = harness.run_cli("--listen", "127.0.0.1:0", "--user", "nobody", "--state-dir",
                            os.path.join(top, "state"), "--sink", "pipe", "--pipe-command", s)
        self.assertEqual(p.returncode, 2, p.stderr)
        self.assertIn(f"nobody cannot run the pipe program {s}", p.stderr.decode())


if __name__ == "__main__":
    harness.main()
