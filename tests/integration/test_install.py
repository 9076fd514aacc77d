"""meson install (issue 12, "Installed from a package"): `meson install
--destdir` of the test's build dir gives the program in sbin, libinboxd.a with
its headers, inboxd.pc, the man pages and the example config; an embedder
builds examples/embed.cpp with `pkg-config --cflags --libs inboxd` against
that installed tree alone (no path into the source or build tree), and the
program it makes serves SMTP on its own loop (embed.cpp checks that a message
sent to it arrives byte for byte, and exits 0).

The build dir is INBOXD_BUILD_DIR, else the folder of INBOXD_BIN."""
import os
import re
import shutil
import subprocess
import tempfile
import unittest

import harness

SOURCE = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
BUILD = os.environ.get("INBOXD_BUILD_DIR") or os.path.dirname(os.path.abspath(harness.BIN))
COMPILE_TIMEOUT = 180  # seconds: one C++20 file, -O0, on a loaded machine under ASan's flags


def run(cmd, timeout, **kw):
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL, **kw)


class InstallTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.dest = tempfile.mkdtemp(prefix="inboxd-it-install-")
        # --no-rebuild: meson test has built this test's dependencies (the
        # installed targets); a nested ninja would race the suite's.
        r = run(["meson", "install", "-C", BUILD, "--no-rebuild", "--destdir", cls.dest], 120)
        if r.returncode != 0:
            shutil.rmtree(cls.dest, ignore_errors=True)
            raise AssertionError(f"meson install failed ({r.returncode}):\n{r.stdout}\n{r.stderr}")
        cls.files = {}
        for top, _, names in os.walk(cls.dest):
            for n in names:
                path = os.path.join(top, n)
                cls.files["/" + os.path.relpath(path, cls.dest)] = path

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls.dest, ignore_errors=True)

    def installed(self, suffix):
        """The one installed file whose path ends in `suffix`."""
        found = [p for p in self.files if p.endswith(suffix)]
        self.assertEqual(len(found), 1, f"{suffix}: installed {found}; all: {sorted(self.files)}")
        return self.files[found[0]]

    def test_program_in_sbin_runs(self):
        path = self.installed("/sbin/inboxd")
        r = run([path, "--version"], harness.TIMEOUT)
        self.assertEqual(r.returncode, 0, r.stderr)
        # version.hpp says what meson.build says (and inboxd.pc carries).
        with open(self.installed("/pkgconfig/inboxd.pc")) as f:
            version = re.search(r"^Version: (\S+)$", f.read(), re.M).group(1)
        self.assertTrue(r.stdout.startswith(f"inboxd {version} "), (version, r.stdout))

    def test_library_headers_man_pages_and_example(self):
        for suffix in ("/libinboxd.a", "/include/inboxd/server.hpp", "/include/inboxd/sink.hpp",
                       "/include/inboxd/version.hpp", "/pkgconfig/inboxd.pc",
                       "/share/man/man8/inboxd.8", "/share/man/man5/inboxd.toml.5",
                       "/share/doc/inboxd/examples/inboxd.example.toml"):
            self.installed(suffix)
        # Static only: a shared library would promise an ABI (see meson.build).
        self.assertFalse([p for p in self.files if re.search(r"\.so(\.|$)", os.path.basename(p))])

    def test_man_pages_format_without_warnings(self):
        if not shutil.which("man") or not shutil.which("groff"):
            self.skipTest("man-db and groff are not installed")
        for suffix in ("/man8/inboxd.8", "/man5/inboxd.toml.5"):
            r = run(["man", "--warnings=w", "-l", self.installed(suffix)], 60,
                    env=dict(os.environ, MANWIDTH="80", MAN_KEEP_STDERR="1"))
            self.assertEqual(r.returncode, 0, r.stderr)
            self.assertEqual(r.stderr, "", f"{suffix}: troff warnings")
            self.assertIn("NAME", r.stdout)

    def test_embedder_builds_with_pkg_config_and_serves_smtp(self):
        pc_dir = os.path.dirname(self.installed("/pkgconfig/inboxd.pc"))
        # The sysroot prefixes the .pc file's /usr/... paths with the destdir;
        # the system's own .pc files (fmt, libuv, libidn2) are found as usual.
        env = dict(os.environ, PKG_CONFIG_PATH=pc_dir, PKG_CONFIG_SYSROOT_DIR=self.dest)
        r = run(["pkg-config", "--cflags", "--libs", "inboxd"], harness.TIMEOUT, env=env)
        self.assertEqual(r.returncode, 0, r.stderr)
        flags = r.stdout.split()
        self.assertIn("-linboxd", flags)
        for f in flags:
            self.assertFalse(SOURCE in f or os.path.realpath(BUILD) in f,
                             f"{f}: a flag points into the source or build tree")
        work = os.path.join(self.dest, "embedder")
        os.mkdir(work)
        shutil.copy(os.path.join(SOURCE, "examples", "embed.cpp"), work)
        # The headers are C++20 (std::span, designated initialisers). A
        # sanitized build installs a sanitized libinboxd.a, which links only
        # with the same -fsanitize flags (an embedder's own choice).
        sanitize = os.environ.get("INBOXD_SANITIZE", "none")
        extra = [] if sanitize in ("", "none") else [f"-fsanitize={sanitize}"]
        r = run(["c++", "-std=c++20", *extra, "-o", "embed", "embed.cpp", *flags],
                COMPILE_TIMEOUT, cwd=work)
        self.assertEqual(r.returncode, 0, f"the embedder does not build:\n{r.stderr}")
        r = run([os.path.join(work, "embed")], 30, cwd=work)
        self.assertEqual(r.returncode, 0, f"{r.stdout}\n{r.stderr}")
        self.assertIn("embed: ok", r.stdout)
        self.assertIn("status=sent (250 2.0.0 Ok: queued as", r.stderr)


if __name__ == "__main__":
    unittest.main()
