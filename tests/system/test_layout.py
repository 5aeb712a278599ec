"""layout = "study": <Study>/<Series>/<UID><ext>, and no Study UID can lead outside storage.

DCMTK's storescp had a path traversal with a Study UID of `..` (fixed in
2026); every path component here is a validated UID, checked by the receiver
before it answers and again by the committer before it creates a directory.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from pydicom.uid import ExplicitVRLittleEndian

from support import dicomfiles as df
from support.scu import pynetdicom_store
from support.service import Service

CANNOT_UNDERSTAND = 0xC000


def tree(root: Path) -> set[str]:
    return {str(Path(d, f).relative_to(root)) for d, _, files in os.walk(root) for f in files}


@pytest.mark.filterwarnings("ignore:Invalid value for VR UI")  # pydicom, writing the bad ones
def test_a_study_uid_that_climbs_is_refused_and_nothing_is_written_outside_storage(
    service_factory: type[Service], short_tmp: Path
) -> None:
    svc = service_factory(layout="study").start()
    src = short_tmp / "src"
    src.mkdir()
    good = src / "good.dcm"
    good_uid = df.make_image(good, df.CT, seed=1, rows=8, columns=8)
    hostile = []
    for i, (study, series) in enumerate([("..", "1.2"), ("1.2/../3", "1.2"), ("1.2", "../..")]):
        path = src / f"bad{i}.dcm"
        df.make_image(
            path, df.CT, seed=10 + i, rows=8, columns=8, study_uid=study, series_uid=series
        )
        hostile.append(path)
    before = tree(short_tmp)

    statuses = pynetdicom_store(
        svc.port, [(p, df.CT, ExplicitVRLittleEndian) for p in [*hostile, good]]
    )

    # Then each hostile instance got a failure status and an ERROR saying why ...
    assert statuses == [CANNOT_UNDERSTAND] * 3 + [0x0000]
    errors = svc.wait_event("ERROR", count=3, what="C-STORE failed")
    assert all(e["reason"].startswith("layout=study:") for e in errors)
    # ... the valid one is under its study and series ...
    ds_study, ds_series = df.uid_for("study-0"), df.uid_for("series-0")
    stored = svc.storage_dir / ds_study / ds_series / f"{good_uid}.dcm"
    svc.wait_event("WRITE", path=str(stored))
    assert df.dataset_bytes(stored) == df.dataset_bytes(good)
    # ... and nothing else was written anywhere: not outside storage, not in it
    outside = tree(short_tmp) - before
    assert all(name.startswith(f"{svc.root.name}/") for name in outside), sorted(outside)
    data = {n for n in tree(svc.storage_dir) if not n.startswith((".storscp/", "depot/"))}
    assert data == {str(stored.relative_to(svc.storage_dir))}
