"""A store whose depot fsync fails is answered with a failure, and nothing is left to commit.

The fault is real: fsync of a /proc directory fails with EINVAL, so the
depot directory's fd is swapped for one of /proc, after the rename into the
real depot succeeded. No hook in the code under test.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydicom.uid import ExplicitVRLittleEndian

from storscp.arrival import Arrival
from storscp.receiver.depot import PartPool
from storscp.receiver.dimse import Command, CommandField
from storscp.receiver.store import (
    StoreFailure,
    StoreLimits,
    StoreStatus,
    finish_store,
    open_store,
)
from support import dicomfiles as df


@pytest.fixture
def unsyncable_fd() -> Iterator[int]:
    """A directory fd whose fsync fails (EINVAL): the fault a failing disk gives."""
    fd = os.open("/proc", os.O_RDONLY | os.O_DIRECTORY)
    with pytest.raises(OSError) as info:
        os.fsync(fd)
    assert info.value.errno == errno.EINVAL
    yield fd
    os.close(fd)


def test_issue_10_a_failed_depot_fsync_fails_the_store_and_leaves_nothing_ready(
    tmp_path: Path, unsyncable_fd: int
) -> None:
    # Given a complete, valid C-STORE streamed into a part in the depot
    source = tmp_path / "ct.dcm"
    uid = df.make_image(source, df.CT, seed=71)
    depot = tmp_path / "depot"
    depot.mkdir()
    (tmp_path / "state").mkdir()
    arrival = Arrival(tmp_path / "state")
    pool = PartPool(depot, 0o640, arrival, size=0)
    command = Command(
        command_field=CommandField.C_STORE_RQ,
        message_id=1,
        affected_sop_class_uid=df.CT,
        affected_sop_instance_uid=uid,
        has_dataset=True,
        move_originator_ae="",
    )
    pending = open_store(command, 1, df.CT, ExplicitVRLittleEndian, "SCU", pool, StoreLimits())
    pending.take(memoryview(df.dataset_bytes(source)))
    # When the depot directory's fsync fails after the rename to the ready name
    with pytest.raises(StoreFailure) as info:
        finish_store(pending, unsyncable_fd)
    pending.discard()  # as the DIMSE service does after every store
    # Then the SCU gets a failure status, and the committer finds nothing to commit
    assert info.value.status == StoreStatus.PROCESSING_FAILURE
    assert "cannot make depot file durable" in str(info.value)
    assert os.listdir(depot) == []
    arrival.close()
