"""LazyFS for the power-loss tests: built once, mounted over a directory, power cut on demand.

LazyFS 0.3.0 (vendor/lazyfs-0.3.0) is a FUSE filesystem with its own page
cache: what a program writes stays there until it fsyncs the file.
`clear_cache()` writes `lazyfs::clear-cache` to its fault FIFO and waits for
LazyFS to say it is done: every unsynced byte is gone, as at a power cut.
Creates, renames and unlinks reach the backing directory at once, so it
loses data, never metadata.

LazyFS 0.3.0 keeps its per-file locks in a map that one request thread
reads while another adds to it: with four senders it once crashed in
about a hundred crash points (SIGSEGV in `Cache::unlockItem`, seen under
AddressSanitizer). So it runs with one request thread (`-s`), and
`clear_cache()` first waits until that thread is idle.

`build()` compiles it from a copy of the source into build/lazyfs/<key>/ (key:
a hash of the source and of the compiler), once per key, under a lock: a
changed source is rebuilt, an unchanged one costs a hash. A `LazyFS` runs
`lazyfs -f` in its own session and always unmounts and stops what it started,
by its PID. It does not pass `-o allow_other`: the tests and the service they
start run as one account, so /etc/fuse.conf needs no `user_allow_other`.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import shutil
import signal
import subprocess
from collections.abc import Iterable
from pathlib import Path

from .service import alive, poll_for

REPO = Path(__file__).resolve().parents[2]
SOURCE_DIR = REPO / "vendor" / "lazyfs-0.3.0"
CACHE_DIR = REPO / "build" / "lazyfs"
BUILD_TIMEOUT_S = 900
CLEAR_CACHE = b"lazyfs::clear-cache\n"
CLEARED = b"finished::clear-cache\n"
FUSE_TYPE = "fuse.lazyfs"


def source_key(source: Path) -> str:
    """What the build depends on: every source file (name and bytes) and the compiler."""
    digest = hashlib.sha256()
    for path in sorted(p for p in source.rglob("*") if p.is_file()):
        digest.update(str(path.relative_to(source)).encode() + b"\0")
        digest.update(path.read_bytes() + b"\0")
    compiler = subprocess.run(["c++", "--version"], capture_output=True, check=True, timeout=60)
    digest.update(compiler.stdout)
    return digest.hexdigest()[:16]


def build(source: Path = SOURCE_DIR, cache: Path = CACHE_DIR) -> Path:
    """The lazyfs binary for this source, compiled now unless a finished build exists.

    Built in place under cache/<key>/src: the binary finds libpcache.so by the
    absolute path CMake recorded, so a build is never moved. `built` marks a
    finished build; anything else under the key is a broken one, redone.
    """
    key = source_key(source)
    home = cache / key
    binary = home / "src" / "lazyfs" / "build" / "lazyfs"
    built = home / "built"
    cache.mkdir(parents=True, exist_ok=True)
    with open(cache / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another checkout's tests may be building the same key
        if built.exists() and os.access(binary, os.X_OK):
            return binary
        shutil.rmtree(home, ignore_errors=True)
        shutil.copytree(source, home / "src")
        log = home / "build.log"
        steps: list[tuple[str, list[str]]] = [
            ("libs/libpcache", []),
            ("lazyfs", ["-DLAZYFS_BUILD_TESTS=OFF"]),
        ]
        for subdir, options in steps:
            build_dir = home / "src" / subdir / "build"
            build_dir.mkdir()
            _run(["cmake", *options, ".."], build_dir, log)
            _run(["cmake", "--build", ".", "--parallel", str(os.cpu_count() or 1)], build_dir, log)
        built.write_text(f"{key}\n")
        for stale in cache.iterdir():  # older sources' builds
            if stale.is_dir() and stale.name != key:
                shutil.rmtree(stale, ignore_errors=True)
    return binary


def _run(argv: list[str], cwd: Path, log: Path) -> None:
    with open(log, "ab") as out:
        out.write(f"$ {' '.join(argv)}  (in {cwd})\n".encode())
        out.flush()
        done = subprocess.run(
            argv, cwd=cwd, stdout=out, stderr=subprocess.STDOUT, timeout=BUILD_TIMEOUT_S
        )
    if done.returncode != 0:
        tail = log.read_text(errors="replace")[-3000:]
        raise RuntimeError(f"building LazyFS failed: {' '.join(argv)} in {cwd}:\n{tail}")


class LazyFS:
    """One LazyFS process mounted on `mount_dir`, keeping its data in `backing_dir`.

    Its configuration, FIFOs and log live in `work_dir`. `mount()` and
    `unmount()` may alternate; `remount()` is both, so the new view holds only
    what reached the backing directory. `close()` always unmounts, stops the
    process and closes our end of the FIFO.
    """

    def __init__(
        self,
        binary: Path,
        mount_dir: Path,
        backing_dir: Path,
        work_dir: Path,
        cache_size: str = "256mb",
    ) -> None:
        self.binary = binary
        self.mount_dir = mount_dir
        self.backing_dir = backing_dir
        self.work_dir = work_dir
        self.cache_size = cache_size
        self.faults_fifo = work_dir / "faults.fifo"
        self.done_fifo = work_dir / "done.fifo"
        self.config_path = work_dir / "lazyfs.toml"
        self.output_path = work_dir / "lazyfs.out"
        self.proc: subprocess.Popen[bytes] | None = None
        self._done_fd = -1
        self._done = bytearray()

    def mount(self, timeout_s: float = 30.0) -> LazyFS:
        """Start lazyfs in the foreground of its own session; return once it is mounted."""
        assert self.proc is None, "LazyFS is already mounted"
        for directory in (self.mount_dir, self.backing_dir, self.work_dir):
            directory.mkdir(parents=True, exist_ok=True)
        self._write_config()
        self._open_done_fifo()
        argv = [
            str(self.binary), str(self.mount_dir),
            "--config-path", str(self.config_path),
            "-o", "modules=subdir", "-o", f"subdir={self.backing_dir}",
            "-f",  # foreground: the process we started is the filesystem
            "-s",  # one thread: LazyFS 0.3.0's cache is not safe for concurrent requests
        ]  # fmt: skip
        with open(self.output_path, "ab") as out:
            self.proc = subprocess.Popen(
                argv,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        poll_for(lambda: self.is_mounted() or self._died(), timeout_s, "LazyFS to mount")
        return self

    def _write_config(self) -> None:
        self.config_path.write_text(
            "[faults]\n"
            f'fifo_path = "{self.faults_fifo}"\n'
            f'fifo_path_completed = "{self.done_fifo}"\n'
            "[cache]\n"
            "apply_eviction = false\n"
            "[cache.simple]\n"
            f'custom_size = "{self.cache_size}"\n'
            "blocks_per_page = 1\n"
            "[filesystem]\n"
            "log_all_operations = false\n"
            f'logfile = "{self.work_dir / "lazyfs.log"}"\n'
        )

    def _open_done_fifo(self) -> None:
        """Our end of the FIFO where LazyFS reports a finished clear-cache.

        Opened before LazyFS starts and kept across remounts: LazyFS opens its
        end for writing with a blocking open(), which waits for a reader.
        """
        if self._done_fd >= 0:
            return
        with contextlib.suppress(FileExistsError):
            os.mkfifo(self.done_fifo, 0o600)
        self._done_fd = os.open(self.done_fifo, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)

    def is_mounted(self) -> bool:
        """Whether a LazyFS is mounted on mount_dir (by /proc/self/mountinfo)."""
        target = str(self.mount_dir)
        with open("/proc/self/mountinfo") as fh:
            for line in fh:
                fields = line.split()
                fstype = fields[fields.index("-") + 1]
                if fields[4] == target and fstype == FUSE_TYPE:
                    return True
        return False

    def _died(self) -> bool:
        """Never true: a LazyFS that exited is an AssertionError with its status and output."""
        if self.proc is not None and self.proc.poll() is not None:
            raise AssertionError(f"lazyfs exited with {self.proc.returncode}: {self.output()}")
        return False

    def check_alive(self) -> None:
        """Fail if the mounted LazyFS died (then every access says ENOTCONN)."""
        self._died()

    def output(self) -> str:
        try:
            return self.output_path.read_text(errors="replace")[-3000:]
        except FileNotFoundError:
            return ""

    def clear_cache(self, timeout_s: float = 30.0) -> None:
        """Drop every byte not yet fsynced (`lazyfs::clear-cache`); return once it is done.

        First it waits until LazyFS has answered every request made before:
        the clear runs in LazyFS' fault thread, whose cache code must not run
        beside a request still in progress.
        """
        self.settle()
        opened: list[int] = []
        poll_for(lambda: self._open_faults_fifo(opened), timeout_s, "LazyFS's fault FIFO to open")
        try:
            os.write(opened[0], CLEAR_CACHE)
        finally:
            os.close(opened[0])
        poll_for(self._cleared, timeout_s, "LazyFS to finish clear-cache", interval_s=0.002)

    def settle(self) -> None:
        """Return once LazyFS has answered every request made before this call.

        It runs one request thread (`-s`), which takes requests in the order
        they were made; looking up a name that does not exist is one more
        request (LazyFS turns the kernel's entry caches off), answered last.
        """
        os.path.lexists(self.mount_dir / ".lazyfs-settle")

    def _open_faults_fifo(self, opened: list[int]) -> bool:
        # ENXIO: LazyFS has not opened its end yet (its fault thread starts after mounting).
        try:
            opened.append(os.open(self.faults_fifo, os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC))
        except OSError:
            self._died()
            return False
        return True

    def _cleared(self) -> bool:
        with contextlib.suppress(BlockingIOError):
            self._done += os.read(self._done_fd, 4096)
        if CLEARED in self._done:
            del self._done[: self._done.index(CLEARED) + len(CLEARED)]
            return True
        self._died()
        return False

    def unmount(self, timeout_s: float = 30.0) -> None:
        """Unmount (lazyfs then exits), waiting while a dying process still holds the mount.

        Last resort after timeout_s: a lazy unmount, and SIGKILL to our lazyfs by PID.
        """
        proc = self.proc
        if proc is None:
            return
        stuck = False
        try:
            poll_for(
                lambda: self._try_unmount(["-u"]), timeout_s, "LazyFS to unmount", interval_s=0.05
            )
        except AssertionError:
            stuck = True
            self._try_unmount(["-u", "-z"])
        try:
            proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(10)
        self.proc = None
        assert not stuck, f"{self.mount_dir} was still busy after {timeout_s}s: {self.output()}"

    def _try_unmount(self, options: list[str]) -> bool:
        if self.is_mounted():
            subprocess.run(
                ["fusermount3", *options, str(self.mount_dir)], capture_output=True, timeout=60
            )
        return not self.is_mounted()

    def remount(self) -> None:
        """A new LazyFS over the same backing directory: its view is what was synced."""
        self.unmount()
        self.mount()

    def close(self) -> None:
        """Unmount, stop lazyfs and close our FIFO end; safe to call twice."""
        try:
            self.unmount()
        finally:
            if self._done_fd >= 0:
                os.close(self._done_fd)
                self._done_fd = -1


def cut_power(pids: Iterable[int], fs: LazyFS) -> None:
    """The power cut: freeze `pids` (SIGSTOP), drop LazyFS' unsynced data, kill -9 them.

    Frozen first, in the order given (supervisord first, so it restarts
    nothing): a process that ran on between clear-cache and its kill could
    fsync the end of a file whose beginning the cut had just dropped and then
    answer Success for it, which a real power cut does not allow. A process
    frozen in the middle of a syscall finishes that call and stops before it
    can do anything with the result.
    """
    pids = list(pids)
    try:
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGSTOP)
        fs.clear_cache()
    finally:
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    poll_for(lambda: not any(alive(pid) for pid in pids), 30, "the killed processes to end")
