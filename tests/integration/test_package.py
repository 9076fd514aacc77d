"""The Debian package (issue 12, "Installed from a package"): from a copy of
the source tree, `dpkg-buildpackage -us -uc -b` builds inboxd_*.deb and
libinboxd-dev_*.deb with Debian's own build dependencies (nothing is
downloaded); lintian finds no error in them; `dpkg -i` makes the inboxd
system user, /etc/inboxd/inboxd.toml (a conffile) and /var/lib/inboxd and
/var/mail/inboxd owned by that user. The installed /usr/sbin/inboxd, started
as root with the installed config and a test port, runs as inboxd and stores
a message sent with smtplib in the packaged mail store, as inboxd's file; an
embedder builds examples/embed.cpp against the installed libinboxd-dev with
pkg-config. `dpkg --purge` then removes the config and the state, and keeps
the mail and the user, which the test removes itself, so the machine is as
before.

Runs only as root (CI does), with dpkg-buildpackage and debhelper (./dev
installs them), and only where no inboxd package or user exists yet: it
would otherwise change an installation it did not make. Building takes about
2 minutes of CPU (nocheck: the tests are not built into the package)."""
import glob
import grp
import os
import pwd
import re
import shutil
import smtplib
import stat
import subprocess
import tempfile
import time
import unittest

import harness

SOURCE = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
BUILD_TIMEOUT = 600    # seconds; about 100 s of CPU, far slower on a loaded machine
CONFIG = "/etc/inboxd/inboxd.toml"
STATE = "/var/lib/inboxd"
MAIL = "/var/mail/inboxd"
BODY = b"Subject: packaged\r\nMessage-ID: <pkg@example.com>\r\n\r\nto the packaged store\r\n"


def run(cmd, timeout=120, **kw):
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL, **kw)


def installed(package):
    r = run(["dpkg-query", "-W", "-f=${Status}", package])
    return r.returncode == 0 and "installed" in r.stdout and "not-installed" not in r.stdout


def user_exists(name):
    try:
        pwd.getpwnam(name)
        return True
    except KeyError:
        return False


def why_not():
    if os.geteuid() != 0:
        return "needs root (it installs a package and makes a system user)"
    # The package is built from the source tree with Debian's flags, whatever
    # build runs this test: the plain stage of ./dev test covers it once, and
    # the sanitizer stage need not build it again.
    if os.environ.get("INBOXD_SANITIZE", "none") not in ("", "none"):
        return "the package build does not depend on the sanitized build; the plain stage runs it"
    for tool in ("dpkg-buildpackage", "dh", "adduser"):
        if not shutil.which(tool):
            return f"{tool} is not installed (./dev installs it)"
    if installed("inboxd") or installed("libinboxd-dev"):
        return "an inboxd package is installed already; the test would replace it"
    if user_exists("inboxd") or os.path.exists(MAIL) or os.path.exists("/etc/inboxd"):
        return "an inboxd user or /etc/inboxd or /var/mail/inboxd exists; the test would own it"
    return None


# What an earlier dpkg-buildpackage in the tree leaves in debian/.
DEBIAN_LEFTOVERS = {".debhelper", "inboxd", "libinboxd-dev", "tmp", "files",
                    "debhelper-build-stamp"}


def ignore_top(top):
    """copytree's ignore: the source tree without builds, state or VCS data."""
    def ignore(folder, names):
        folder = os.path.abspath(folder)
        if folder == top:
            return [n for n in names if n.startswith(("build", "obj-", "var")) or n == ".git"]
        if folder == os.path.join(top, "subprojects"):
            return [n for n in names if not n.endswith(".wrap")]  # fetched sources
        if folder == os.path.join(top, "debian"):
            return [n for n in names if n in DEBIAN_LEFTOVERS
                    or n.endswith((".substvars", ".debhelper.log"))]
        return []
    return ignore


@unittest.skipIf(why_not(), why_not())
class PackageTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.work = tempfile.mkdtemp(prefix="inboxd-it-package-")
        try:
            cls.build_packages()
        except BaseException:
            shutil.rmtree(cls.work, ignore_errors=True)
            raise

    @classmethod
    def build_packages(cls):
        tree = os.path.join(cls.work, "inboxd")
        shutil.copytree(SOURCE, tree, ignore=ignore_top(SOURCE), symlinks=True)
        # nocheck: the package's own unit tests are not built (this suite is
        # the test); noddebs: no -dbgsym package.
        env = dict(os.environ, DEB_BUILD_OPTIONS="nocheck noddebs parallel=2")
        env.pop("MAKEFLAGS", None)
        start = time.monotonic()
        r = run(["dpkg-buildpackage", "-us", "-uc", "-b"], BUILD_TIMEOUT, cwd=tree, env=env)
        cls.build_seconds = time.monotonic() - start
        if r.returncode != 0:
            raise AssertionError(f"dpkg-buildpackage failed ({r.returncode}):\n"
                                 f"{r.stdout[-6000:]}\n{r.stderr[-4000:]}")
        cls.debs = {}
        for name in ("inboxd", "libinboxd-dev"):
            found = glob.glob(os.path.join(cls.work, f"{name}_*_*.deb"))
            if len(found) != 1:
                raise AssertionError(f"{name}: built {found}; in {os.listdir(cls.work)}")
            cls.debs[name] = found[0]
        cls.changes = glob.glob(os.path.join(cls.work, "inboxd_*.changes"))[0]

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls.work, ignore_errors=True)

    def purge(self):
        """dpkg --purge, then what purge keeps on purpose (the mail, the user)."""
        run(["dpkg", "--purge", "inboxd", "libinboxd-dev"], 120)
        shutil.rmtree(MAIL, ignore_errors=True)
        if user_exists("inboxd"):
            run(["userdel", "inboxd"])
        try:
            grp.getgrnam("inboxd")
            run(["groupdel", "inboxd"])
        except KeyError:
            pass

    def dpkg_install(self):
        self.addCleanup(self.purge)
        r = run(["dpkg", "-i", self.debs["inboxd"], self.debs["libinboxd-dev"]], 180)
        self.assertEqual(r.returncode, 0, f"dpkg -i failed:\n{r.stdout}\n{r.stderr}")

    def start_installed(self, log_path):
        """/usr/sbin/inboxd as root with the packaged config (user = inboxd) on
        a free loopback port; returns (process, port)."""
        log = open(log_path, "wb")
        self.addCleanup(log.close)
        proc = subprocess.Popen(["/usr/sbin/inboxd", "-c", CONFIG, "--listen", "127.0.0.1:0",
                                 "--hostname", harness.HOSTNAME],
                                cwd="/", stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=log)

        def stop():
            if proc.poll() is None:
                proc.kill()
            proc.wait(harness.TIMEOUT)
        self.addCleanup(stop)
        deadline = time.monotonic() + 4 * harness.TIMEOUT
        while time.monotonic() < deadline:
            with open(log_path) as f:
                m = harness.LISTEN_RE.search(f.read())
            if m:
                return proc, int(m.group(1))
            if proc.poll() is not None:
                break
            time.sleep(0.05)
        with open(log_path) as f:
            self.fail(f"the installed inboxd did not listen (rc={proc.poll()}):\n{f.read()}")

    def test_lintian_finds_no_error(self):
        if not shutil.which("lintian"):
            self.skipTest("lintian is not installed")
        r = run(["lintian", "--fail-on", "error", "--no-tag-display-limit", self.changes], 300)
        self.assertEqual(r.returncode, 0, f"lintian:\n{r.stdout}\n{r.stderr}")

    def test_package_contents(self):
        r = run(["dpkg-deb", "-c", self.debs["inboxd"]])
        for path in ("./usr/sbin/inboxd", "./etc/inboxd/inboxd.toml",
                     "./usr/share/man/man8/inboxd.8.gz", "./usr/share/man/man5/inboxd.toml.5.gz",
                     "./usr/share/doc/inboxd/examples/inboxd.example.toml"):
            self.assertIn(path, r.stdout)
        self.assertNotIn("./usr/include", r.stdout)  # those are libinboxd-dev's
        r = run(["dpkg-deb", "-c", self.debs["libinboxd-dev"]])
        for path in ("/libinboxd.a", "/pkgconfig/inboxd.pc", "./usr/include/inboxd/server.hpp"):
            self.assertIn(path, r.stdout)

    def test_install_deliver_as_packaged_user_purge(self):
        self.dpkg_install()
        # The system user (Debian policy 9.2.2): no login, a system uid.
        user = pwd.getpwnam("inboxd")
        self.assertLess(user.pw_uid, 1000)
        self.assertEqual(user.pw_shell, "/usr/sbin/nologin")
        self.assertEqual(grp.getgrgid(user.pw_gid).gr_name, "inboxd")
        r = run(["dpkg-query", "-W", "-f=${Conffiles}", "inboxd"])
        self.assertIn(CONFIG, r.stdout)
        for path in (STATE, MAIL):
            st = os.stat(path)
            self.assertEqual((st.st_uid, st.st_gid), (user.pw_uid, user.pw_gid), path)
            self.assertEqual(stat.S_IMODE(st.st_mode), 0o750, path)
        r = run(["/usr/sbin/inboxd", "--check-config", "-c", CONFIG])
        self.assertEqual(r.returncode, 0, r.stderr)
        # debian/changelog's version is the program's (version.hpp, meson.build).
        version = run(["dpkg-deb", "-f", self.debs["inboxd"], "Version"]).stdout.strip()
        self.assertTrue(run(["/usr/sbin/inboxd", "--version"]).stdout.startswith(
            f"inboxd {version} "), version)

        log_path = os.path.join(self.work, "installed.log")
        proc, port = self.start_installed(log_path)
        with open(f"/proc/{proc.pid}/status") as f:
            uids = re.search(r"^Uid:\s+(.*)$", f.read(), re.M).group(1).split()
        self.assertEqual(set(uids), {str(user.pw_uid)}, "not running as the inboxd user")
        with smtplib.SMTP("127.0.0.1", port, local_hostname=harness.HELO,
                          timeout=harness.TIMEOUT) as s:
            s.sendmail("sender@example.org", ["alice@example.com"], BODY)
        new = os.path.join(MAIL, "example.com", "alice", "new")
        names = os.listdir(new)
        self.assertEqual(len(names), 1, names)
        message = os.path.join(new, names[0])
        st = os.stat(message)
        self.assertEqual((st.st_uid, st.st_gid), (user.pw_uid, user.pw_gid))
        with open(message, "rb") as f:
            self.assertTrue(f.read().endswith(BODY.replace(b"\r\n", b"\n")))
        # The self-signed pair is made in the packaged state folder.
        self.assertTrue(os.path.exists(os.path.join(STATE, "self-signed-key.pem")))
        proc.send_signal(15)
        self.assertEqual(proc.wait(4 * harness.TIMEOUT), 0)

        # An embedder against the installed libinboxd-dev, through /usr.
        flags = run(["pkg-config", "--cflags", "--libs", "inboxd"])
        self.assertEqual(flags.returncode, 0, flags.stderr)
        shutil.copy(os.path.join(SOURCE, "examples", "embed.cpp"), self.work)
        r = run(["c++", "-std=c++20", "-o", "embed", "embed.cpp", *flags.stdout.split()], 180,
                cwd=self.work)
        self.assertEqual(r.returncode, 0, r.stderr)
        r = run([os.path.join(self.work, "embed")], 30)
        self.assertEqual(r.returncode, 0, f"{r.stdout}\n{r.stderr}")

        # Purge: the config and the state go; the mail and the user stay.
        r = run(["dpkg", "--purge", "inboxd", "libinboxd-dev"], 120)
        self.assertEqual(r.returncode, 0, f"{r.stdout}\n{r.stderr}")
        self.assertFalse(installed("inboxd"))
        self.assertFalse(os.path.exists("/etc/inboxd"))
        self.assertFalse(os.path.exists(STATE))
        self.assertTrue(os.path.exists(message))
        self.assertTrue(user_exists("inboxd"))


if __name__ == "__main__":
    unittest.main()
