"""A 200 MB multi-frame instance: streamed to disk, never visible half-written."""

from __future__ import annotations

import contextlib
import threading
from pathlib import Path

from support import dicomfiles as df
from support.scu import storescu
from support.service import Service, poll_for


def vm_hwm_kib(pid: int) -> int:
    """Peak resident set size of a process, from /proc."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError("no VmHWM")


def test_200mb_multiframe_is_streamed_and_never_visible_partial(
    service: Service, short_tmp: Path
) -> None:
    source = short_tmp / "big.dcm"
    uid = df.make_image(source, df.MULTIFRAME_WORD_SC, seed=42, rows=512, columns=512, frames=400)
    size = source.stat().st_size
    assert size > 200 * 1024 * 1024
    receiver_pid = int(service.events("START", proc="receiver")[-1]["pid"])
    target = service.stored_path(uid)

    sightings: list[int] = []
    done = threading.Event()

    def watch() -> None:
        # Given a transfer in progress, the final name shows only a complete file.
        while not done.is_set():
            with contextlib.suppress(FileNotFoundError):
                sightings.append(target.stat().st_size)
            done.wait(0.005)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        result = storescu(service.port, [source], timeout_s=600)
        poll_for(lambda: sightings, 60, "the watcher to see the committed file")
    finally:
        done.set()
        watcher.join()
    assert result.returncode == 0, result.stderr
    assert df.dataset_bytes(target) == df.dataset_bytes(source)
    assert sightings, "the watcher never saw the file"
    assert set(sightings) == {target.stat().st_size}, "a partial file was visible"
    peak_mib = vm_hwm_kib(receiver_pid) / 1024
    print(f"receiver peak RSS during 200 MB transfer: {peak_mib:.1f} MiB")
    # Streaming: memory is a few PDUs, not the instance.
    assert peak_mib < 150, f"receiver peak RSS {peak_mib:.1f} MiB"
    poll_for(lambda: service.depot_entries() == [], 10, "an empty depot")
