"""Calling AE titles as metric label values, bounded.

A calling AE title is whatever the peer puts in its request (with
`accept_any = true`, anyone picks one), so it must not become a label as is:
each value is a series in every scrape, for ever. A title gets its own
label value if it is configured in `[[remote_ae]]`, or if it is one of the
first MAX_OTHER_AE_TITLES other titles seen since the service started;
every later one is `other`.

"First seen" is decided across all processes (receivers and the committer)
and their restarts: the admitted titles are appended, under an flock, to
`<run_dir>/bus/metrics/ae_titles`, which starts empty with the service.
Only a title this process has not looked up before touches that file, so
the cost is paid once per new title, never per instance.
"""

from __future__ import annotations

import fcntl
import json
import os
import threading
from collections.abc import Iterable
from pathlib import Path

MAX_OTHER_AE_TITLES = 20
OTHER = "other"
# Instances whose calling AE is unknown (a file swept from the depot without meta).
UNKNOWN = "unknown"
TITLES_FILE = "ae_titles"


class AeLabels:
    """Callable: calling AE title -> its label value."""

    def __init__(
        self,
        configured: Iterable[str],
        directory: Path | None,
        max_others: int = MAX_OTHER_AE_TITLES,
    ) -> None:
        """`directory`: where the shared list lives; None: decide in this process alone."""
        self._known: dict[str, str] = {title: title for title in configured}
        self._others = 0
        self._max_others = max_others
        self._path = directory / TITLES_FILE if directory is not None else None
        self._full = False
        self._lock = threading.Lock()

    def __call__(self, ae_title: str) -> str:
        label = self._known.get(ae_title)
        if label is not None:
            return label
        if not ae_title:
            return UNKNOWN
        if self._full:
            return OTHER
        with self._lock:
            return self._admit(ae_title)

    def _admit(self, ae_title: str) -> str:
        """Look the title up in the shared list; add it while there is room."""
        if self._path is None:
            if self._others < self._max_others:
                self._others += 1
                self._known[ae_title] = ae_title
                return ae_title
            self._full = True
            return OTHER
        fd = os.open(self._path, os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            admitted, whole = _read_titles(fd)
            for title in admitted:
                self._known.setdefault(title, title)
            if ae_title in admitted:
                return ae_title
            if len(admitted) >= self._max_others:
                self._full = True
                return OTHER
            line = json.dumps(ae_title) + "\n"
            os.write(fd, line.encode("utf-8") if whole else b"\n" + line.encode("utf-8"))
            self._known[ae_title] = ae_title
            return ae_title
        finally:
            os.close(fd)  # releases the flock


def _read_titles(fd: int) -> tuple[list[str], bool]:
    """(the admitted titles, whether the file ends with a whole line).

    A torn last line (a crash in the middle of an append) is ignored.
    """
    os.lseek(fd, 0, os.SEEK_SET)
    chunks = []
    while chunk := os.read(fd, 65536):
        chunks.append(chunk)
    data = b"".join(chunks)
    titles = []
    for line in data.splitlines():
        try:
            title = json.loads(line)
        except ValueError:
            continue
        if isinstance(title, str) and title not in titles:
            titles.append(title)
    return titles, data.endswith(b"\n") or not data
