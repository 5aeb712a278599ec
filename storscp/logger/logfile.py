"""Two alternating log files, as the original service keeps them.

Write to the current file until the next line would make it larger than
`max_bytes`; then empty the other file and continue there. Each line is a
single write() on an O_APPEND descriptor, and a line is either whole in the
file or absent: a short write (full disk) is truncated away. After a
restart we continue in the file written last (newer mtime; on a tie, the
smaller one, which is the one just started). A current file deleted by
hand is created again at the next line. A file larger than the limit (it was
lowered) is cut to its newest lines at start.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
import sys
from pathlib import Path

from storscp.logger.lines import cut_line

LOG_NAMES = ("storscp1.log", "storscp2.log")


def log_paths(log_dir: Path) -> tuple[Path, Path]:
    return (log_dir / LOG_NAMES[0], log_dir / LOG_NAMES[1])


def _age_key(path: Path) -> tuple[int, int] | None:
    """Sort key, larger is newer: mtime, then smaller size (the file just started)."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return (st.st_mtime_ns, -st.st_size)


def newest_index(paths: tuple[Path, Path]) -> int:
    """Index of the file written last; 0 if neither exists.

    On a tie of mtimes the smaller file is the newer: wrong only if the new
    file took more than a whole file's bytes within one timestamp tick.
    """
    keys = [_age_key(p) for p in paths]
    if keys[0] is None and keys[1] is None:
        return 0
    if keys[0] is None:
        return 1
    if keys[1] is None:
        return 0
    return 0 if keys[0] >= keys[1] else 1


def oldest_first(paths: tuple[Path, Path]) -> list[Path]:
    """The existing files, the one written before the other first."""
    newest = newest_index(paths)
    return [p for p in (paths[1 - newest], paths[newest]) if p.exists()]


def keep_newest_lines(path: Path, max_bytes: int) -> None:
    """Cut a file larger than `max_bytes` (the limit was lowered) to its newest whole lines.

    Neither file may exceed the limit, and the newest lines are the ones an
    admin needs. The cut copy replaces the file atomically and keeps its mtime,
    which says which of the two files was written last.
    """
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return
    if st.st_size <= max_bytes:
        return
    with open(path, "rb") as fh:
        # One byte more: if it is a newline, the window starts with a whole line.
        fh.seek(st.st_size - max_bytes - 1)
        tail = fh.read(max_bytes + 1)
    newline = tail.find(b"\n")
    kept = tail[newline + 1 :] if newline >= 0 else b""
    temporary = path.with_name(path.name + ".cut")
    try:
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            os.fchmod(fd, stat.S_IMODE(st.st_mode))
            if os.write(fd, kept) != len(kept):
                raise OSError(errno.ENOSPC, "short write", str(temporary))
            os.fsync(fd)
        finally:
            os.close(fd)
        os.utime(temporary, ns=(st.st_atime_ns, st.st_mtime_ns))
        os.replace(temporary, path)
    except OSError:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise


class AlternatingLog:
    """The pair of files; only the logger process creates one."""

    def __init__(self, log_dir: Path, max_bytes: int, file_mode: int = 0o640) -> None:
        self.paths = log_paths(log_dir)
        self.max_bytes = max_bytes
        self.file_mode = file_mode
        self.current = newest_index(self.paths)
        for path in self.paths:
            try:
                keep_newest_lines(path, max_bytes)
            except OSError as exc:
                # Not worth failing to start over: the next alternation cuts it anyway.
                print(
                    f"storscp logger: cannot cut {path} to {max_bytes} bytes: {exc}",
                    file=sys.stderr,
                )
        self._fd = self._open(self.current, truncate=False)
        self.size = os.fstat(self._fd).st_size
        self.dirty = False
        self._end_partial_line()

    @property
    def current_path(self) -> Path:
        return self.paths[self.current]

    def _open(self, index: int, truncate: bool) -> int:
        flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC
        if truncate:
            flags |= os.O_TRUNC
        return os.open(self.paths[index], flags, self.file_mode)

    def _end_partial_line(self) -> None:
        """A crash can leave a file without its final newline; never glue onto it."""
        if self.size == 0 or self.size >= self.max_bytes:
            return
        with open(self.paths[self.current], "rb") as fh:
            fh.seek(self.size - 1)
            if fh.read(1) != b"\n":
                self.size += os.write(self._fd, b"\n")

    def write_line(self, line: bytes) -> None:
        """Append one line (cut if longer than the limit), alternating as needed.

        Raises OSError if the line could not be written whole; the file is
        then as it was before.
        """
        line = cut_line(line, self.max_bytes)
        self._follow_current_file()
        if self.size + len(line) > self.max_bytes:
            self._switch()
        before = self.size
        try:
            written = os.write(self._fd, line)
        except OSError:
            self._truncate_to(before)
            raise
        if written != len(line):
            self._truncate_to(before)
            raise OSError(
                errno.ENOSPC,
                f"short write ({written} of {len(line)} bytes)",
                str(self.current_path),
            )
        self.size = before + written
        self.dirty = True

    def _follow_current_file(self) -> None:
        """Re-create a current file deleted by hand; learn its real size."""
        st = os.fstat(self._fd)
        if st.st_nlink == 0:
            self.reopen()
        else:
            self.size = st.st_size

    def _truncate_to(self, size: int) -> None:
        # If this fails too, the next write's fstat learns the real size.
        with contextlib.suppress(OSError):
            os.ftruncate(self._fd, size)

    def _switch(self) -> None:
        other = 1 - self.current
        new_fd = self._open(other, truncate=True)
        self._close_fd()
        self._fd = new_fd
        self.current = other
        self.size = 0

    def reopen(self) -> None:
        """Open the current file again by name (after a failure or a deletion)."""
        new_fd = self._open(self.current, truncate=False)
        self._close_fd()
        self._fd = new_fd
        self.size = os.fstat(self._fd).st_size
        self.dirty = False
        self._end_partial_line()

    def sync(self) -> None:
        if self.dirty:
            os.fsync(self._fd)
            self.dirty = False

    def _close_fd(self) -> None:
        # A failed close of a log file leaves nothing more to do with it.
        with contextlib.suppress(OSError):
            os.close(self._fd)

    def close(self) -> None:
        try:
            self.sync()
        finally:
            self._close_fd()
