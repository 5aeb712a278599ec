"""The durability floor: what the disk charges for storscp's promise, per instance.

storscp answers Success only after `fsync` of the file, a rename and `fsync`
of the depot directory (DESIGN.md, data path step 3); DCMTK and the
pynetdicom app do neither. This measures that sequence alone — no network,
no DICOM — in the benchmark's own directory, so the report can say how much
of storscp's time per instance the disk takes, and what a single sender
could reach at best with those fsyncs on this machine.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

CYCLES = 300
PAYLOAD = b"\x00" * 2800  # the size of a tiny instance


def durable_write_ms(directory: Path, cycles: int = CYCLES) -> list[float]:
    """Milliseconds per create + write + fsync + rename + fsync(directory).

    The files are left in `directory` (emptied): deleting them would slow the
    next creates on this disk (see `Server.clear_output`). The caller removes
    the directory when the benchmark is over.
    """
    directory.mkdir(parents=True, exist_ok=True)
    dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    times: list[float] = []
    try:
        for n in range(cycles):
            part = directory / f"{n}.part"
            began = time.perf_counter()
            fd = os.open(part, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            try:
                os.write(fd, PAYLOAD)
                os.fsync(fd)
            finally:
                os.close(fd)
            ready = directory / f"{n}.ready"
            os.rename(part, ready)
            os.fsync(dir_fd)
            times.append((time.perf_counter() - began) * 1000)
            os.truncate(ready, 0)
    finally:
        os.close(dir_fd)
    return times


def one_flush_ms(directory: Path, cycles: int = CYCLES) -> list[float]:
    """Milliseconds per write + fsync into a file whose name is already durable.

    The floor of the one-flush design that issue 16 describes (bench/RESULTS.md):
    parts created ahead of time, their directory fsynced once per batch off
    the critical path, so an instance costs its own data flush and no rename.
    Only the per-instance part is timed; the batch creation is not.
    """
    directory.mkdir(parents=True, exist_ok=True)
    parts = [directory / f"{n}.pool" for n in range(cycles)]
    for part in parts:
        os.close(os.open(part, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    times: list[float] = []
    for part in parts:
        began = time.perf_counter()
        fd = os.open(part, os.O_WRONLY)
        try:
            os.write(fd, PAYLOAD)
            os.fsync(fd)
        finally:
            os.close(fd)
        times.append((time.perf_counter() - began) * 1000)
        os.truncate(part, 0)
    return times


def main() -> None:
    """Both floors side by side, in a fresh directory under bench/out."""
    import statistics
    import tempfile

    root = Path(__file__).parent / "out"
    root.mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory(dir=root, prefix="floor-") as work:
        for name, measure in (("today", durable_write_ms), ("one flush", one_flush_ms)):
            times = sorted(measure(Path(work) / name.replace(" ", "-")))
            p90 = times[int(len(times) * 0.9)]
            print(f"{name:>10}: {statistics.median(times):.3f} ms median, {p90:.3f} ms p90")


if __name__ == "__main__":
    main()
