"""Real DICOM clients for the tests: DCMTK's storescu/echoscu and pynetdicom."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable, Sequence
from pathlib import Path

from pynetdicom import AE
from pynetdicom import _config as pynetdicom_config
from pynetdicom.presentation import build_context

from .dicomfiles import dataset_offset

# Debian's DCMTK leaves Nagle on unless told, and then each C-STORE waits ~40 ms.
DCMTK_ENV = {**os.environ, "TCP_NODELAY": "1"}


def storescu(
    port: int,
    files: Sequence[Path],
    *args: str,
    called_ae: str = "STORSCP",
    calling_ae: str = "STORESCU",
    timeout_s: float = 300,
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            "storescu",
            "-aet",
            calling_ae,
            "-aec",
            called_ae,
            *args,
            "127.0.0.1",
            str(port),
            *map(str, files),
        ],
        capture_output=True,
        text=True,
        timeout=timeout_s,
        env=DCMTK_ENV,
    )


def echoscu(port: int, *args: str, called_ae: str = "STORSCP") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["echoscu", "-aec", called_ae, *args, "127.0.0.1", str(port)],
        capture_output=True,
        text=True,
        timeout=60,
        env=DCMTK_ENV,
    )


def pynetdicom_store(
    port: int,
    files: Sequence[tuple[Path, str, str]],
    *,
    called_ae: str = "STORSCP",
    calling_ae: str = "PYSCU",
    after_each: Callable[[Path, int | None], None] | None = None,
) -> list[int | None]:
    """Send (path, sop_class, transfer_syntax) files over one association, raw.

    With STORE_SEND_CHUNKED_DATASET pynetdicom sends the file's dataset bytes
    exactly as they are on disk. Returns each C-STORE's status (None: no answer).
    `after_each(path, status)` runs after each answer, before the next send.
    """
    pynetdicom_config.STORE_SEND_CHUNKED_DATASET = True
    ae = AE(ae_title=calling_ae)
    contexts = {(cls, ts) for _, cls, ts in files}
    ae.requested_contexts = [build_context(cls, [ts]) for cls, ts in sorted(contexts)]
    assoc = ae.associate("127.0.0.1", port, ae_title=called_ae)
    statuses: list[int | None] = []
    try:
        assert assoc.is_established, "association was not accepted"
        for path, _cls, _ts in files:
            rsp = assoc.send_c_store(path)
            statuses.append(int(rsp.Status) if "Status" in rsp else None)
            if after_each is not None:
                after_each(path, statuses[-1])
    finally:
        if assoc.is_established:
            assoc.release()
        ae.shutdown()
    return statuses


__all__ = ["dataset_offset", "echoscu", "pynetdicom_store", "storescu"]
