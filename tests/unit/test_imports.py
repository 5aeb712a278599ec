"""What each program imports: the memory of the process tree is mostly imports (issue 16).

Each module below is imported in a fresh interpreter, which must not load
the heavy packages that program does not need (bench/README.md, "Where the
memory goes": pydicom ~15 MiB, prometheus_client's exposition half ~7.5 MiB,
supervisor.childutils ~10 MiB RSS per process).
"""

from __future__ import annotations

import subprocess
import sys

import pytest

# Only the receiver parses DICOM (pynetdicom, pydicom); only the metrics
# program serves HTTP (prometheus_client's exposition, http.server).
HEAVY = ("pydicom", "pynetdicom", "supervisor", "http.server", "http.client", "ssl", "_hashlib")
LIGHT_PROGRAMS = (
    "storscp.logger.main",
    "storscp.committer.main",
    "storscp.feed.main",
    "storscp.commitment.main",
    "storscp.supervisor.listener",
)

_PROBE = "import importlib, sys; importlib.import_module(sys.argv[1]); print(' '.join(sys.modules))"


def loaded(module: str) -> set[str]:
    out = subprocess.run(
        [sys.executable, "-c", _PROBE, module], capture_output=True, text=True, check=True
    )
    return set(out.stdout.split())


@pytest.mark.parametrize("module", LIGHT_PROGRAMS)
def test_a_program_that_only_counts_and_moves_files_loads_no_heavy_package(module: str) -> None:
    assert loaded(module) & set(HEAVY) == set()
