"""Two alternating log files, as the original service keeps them.

Write to the current file until the next line would make it larger than
`max_bytes`; then empty the other file and continue there. Each line is a
single write() on an O_APPEND descriptor. After a restart we continue in
the file written last (newer mtime; on a tie, the smaller one, which is the
one just started).
"""

from __future__ import annotations

import os
from pathlib import Path

from storscp.logger.lines import cut_line

LOG_NAMES = ("storscp1.log", "storscp2.log")


def log_paths(log_dir: Path) -> tuple[Path, Path]:
    return (log_dir / LOG_NAMES[0], log_dir / LOG_NAMES[1])


def newest_index(paths: tuple[Path, Path]) -> int:
    """Index of the file written last; 0 if neither exists."""
    stats: list[tuple[int, int] | None] = []
    for path in paths:
        try:
            st = os.stat(path)
            stats.append((st.st_mtime_ns, -st.st_size))
        except FileNotFoundError:
            stats.append(None)
    if stats[0] is None and stats[1] is None:
        return 0
    if stats[0] is None:
        return 1
    if stats[1] is None:
        return 0
    return 0 if stats[0] >= stats[1] else 1


class AlternatingLog:
    """The pair of files; only the logger process creates one."""

    def __init__(self, log_dir: Path, max_bytes: int, file_mode: int = 0o640) -> None:
        self.paths = log_paths(log_dir)
        self.max_bytes = max_bytes
        self.file_mode = file_mode
        self.current = newest_index(self.paths)
        self._fd = self._open(self.current, truncate=False)
        self.size = os.fstat(self._fd).st_size
        self.dirty = False

    def _open(self, index: int, truncate: bool) -> int:
        flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC
        if truncate:
            flags |= os.O_TRUNC
        return os.open(self.paths[index], flags, self.file_mode)

    def write_line(self, line: bytes) -> None:
        """Append one line (cut if longer than the limit), alternating as needed."""
        line = cut_line(line, self.max_bytes)
        if self.size + len(line) > self.max_bytes:
            self._switch()
        written = os.write(self._fd, line)
        self.size += written
        self.dirty = True

    def _switch(self) -> None:
        other = 1 - self.current
        new_fd = self._open(other, truncate=True)
        os.close(self._fd)
        self._fd = new_fd
        self.current = other
        self.size = 0

    def sync(self) -> None:
        if self.dirty:
            os.fsync(self._fd)
            self.dirty = False

    def close(self) -> None:
        self.sync()
        os.close(self._fd)
