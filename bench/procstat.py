"""CPU time and memory of a server's whole process tree, read from /proc.

Why a tree: storscp is supervisord plus four (or more) Python processes, and
DCMTK `storescp --fork` forks one child per association. Both must be charged
in full, so every measurement walks the tree below the process we started.

CPU: for every process in the tree, utime + stime + cutime + cstime from
/proc/<pid>/stat. cutime/cstime hold the lifetime CPU of children the process
has already reaped, so a per-association child that came and went inside the
measured window is counted exactly once: live (or zombie) it is in the tree,
reaped it is in its parent's cutime. The window's CPU is the difference of two
readings; each reading is repeated until two in a row agree, so a child that
is reaped *during* a reading cannot be counted twice or lost.

Memory: at the start of a window the peak RSS (VmHWM) of every process is
reset by writing 5 to /proc/<pid>/clear_refs; a sampler thread then reads
VmHWM of every live process in the tree every SAMPLE_INTERVAL_S. Reported are
the largest single-process peak and the largest sum of the peaks of processes
alive at the same time. VmHWM is the kernel's own high-water mark, so spikes
between samples are not missed for processes that outlive a sample.
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass, field

CLOCK_TICKS_PER_S = os.sysconf("SC_CLK_TCK")
SAMPLE_INTERVAL_S = 0.05
SETTLE_TIMEOUT_S = 5.0


def tree_pids(root: int) -> list[int]:
    """root and all its descendants (any thread may be the parent)."""
    found: list[int] = []
    todo = [root]
    while todo:
        pid = todo.pop()
        found.append(pid)
        try:
            tids = os.listdir(f"/proc/{pid}/task")
        except (FileNotFoundError, ProcessLookupError):
            continue
        for tid in tids:
            try:
                with open(f"/proc/{pid}/task/{tid}/children") as fh:
                    todo.extend(int(c) for c in fh.read().split())
            except (FileNotFoundError, ProcessLookupError):
                continue
    return found


def _stat_fields(pid: int | str) -> list[str] | None:
    """The fields of /proc/<pid>/stat after comm; `pid` may be "<pid>/task/<tid>"."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            text = fh.read()
    except (FileNotFoundError, ProcessLookupError):
        return None
    # comm may contain spaces and parentheses: split after the last ')'.
    return text[text.rindex(")") + 2 :].split()


def _cpu_ticks(pid: int) -> int:
    fields = _stat_fields(pid)
    if fields is None:
        return 0
    # After comm: state=0 ... utime=11 stime=12 cutime=13 cstime=14 (proc(5) minus 3).
    return sum(int(fields[i]) for i in (11, 12, 13, 14))


def process_cpu_s(pid: int) -> float | None:
    """CPU seconds (user + system) of one live process itself, None if it is gone."""
    fields = _stat_fields(pid)
    if fields is None:
        return None
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS_PER_S


def tree_cpu_s(root: int) -> float:
    """CPU seconds used so far by the tree, dead and reaped descendants included."""
    previous = -1
    deadline = time.monotonic() + SETTLE_TIMEOUT_S
    while True:
        ticks = sum(_cpu_ticks(pid) for pid in tree_pids(root))
        if ticks == previous or time.monotonic() > deadline:
            return ticks / CLOCK_TICKS_PER_S
        previous = ticks
        time.sleep(0.02)


def _status_kib(pid: int, key: str) -> int | None:
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith(key):
                    return int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError):
        return None
    return None  # a zombie has no memory lines


def reset_peak_rss(pid: int) -> None:
    """Reset VmHWM to the current RSS (Linux >= 4.0), so a window sees its own peak."""
    try:
        with open(f"/proc/{pid}/clear_refs", "w") as fh:
            fh.write("5")
    except (FileNotFoundError, ProcessLookupError):
        pass


def cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            return fh.read().replace(b"\0", b" ").decode(errors="replace").strip()
    except (FileNotFoundError, ProcessLookupError):
        return ""


@dataclass(slots=True)
class Usage:
    """What one measured window cost the server."""

    cpu_s: float = 0.0
    peak_rss_kib: int = 0
    peak_rss_cmd: str = ""
    sum_rss_kib: int = 0
    processes: set[int] = field(default_factory=set)


class TreeMeter:
    """Measure a window: `with TreeMeter(root) as m: ...; m.usage`."""

    def __init__(self, root: int) -> None:
        self.root = root
        self.usage = Usage()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample_loop, name="meter", daemon=True)
        self._cpu_before = 0.0

    def __enter__(self) -> TreeMeter:
        for pid in tree_pids(self.root):
            reset_peak_rss(pid)
        self._cpu_before = tree_cpu_s(self.root)
        self._thread.start()
        return self

    def finish(self) -> Usage:
        """End the window: final sample and the CPU difference."""
        if not self._stop.is_set():
            self._stop.set()
            self._thread.join()
            self._sample()
            self.usage.cpu_s = tree_cpu_s(self.root) - self._cpu_before
        return self.usage

    def __exit__(self, *exc: object) -> None:
        self.finish()

    def _sample_loop(self) -> None:
        while not self._stop.wait(SAMPLE_INTERVAL_S):
            self._sample()

    def _sample(self) -> None:
        total = 0
        for pid in tree_pids(self.root):
            hwm = _status_kib(pid, "VmHWM:")
            if hwm is None:
                continue
            self.usage.processes.add(pid)
            total += hwm
            if hwm > self.usage.peak_rss_kib:
                self.usage.peak_rss_kib = hwm
                self.usage.peak_rss_cmd = cmdline(pid)
        self.usage.sum_rss_kib = max(self.usage.sum_rss_kib, total)
