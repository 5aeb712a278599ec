"""The check behind a report: is each referenced instance stored, under that UID, with that class?

"Stored" means what the committer made visible: `<storage_dir>/<UID><ext>`
(or where the feed's history says, with `layout = "study"`), whose file
meta names the SOP Class the receiver checked against the dataset before
it answered Success. An instance acknowledged but still in the depot (a
ready file) is waited for, within `commitment_wait_s`, rather than
reported missing a millisecond after it arrived. The depot is listed before
the storage directory is looked at: a rename moves a file from one to the
other atomically, so an acknowledged instance is always seen in one.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from storscp import depotfiles, filemeta
from storscp.commitmentinfo import Failure, FailureReason, Reference
from storscp.config import Config
from storscp.filemeta import MetaError
from storscp.lookup import Locator
from storscp.uids import UIDError

DEPOT_POLL_S = 0.05


@dataclass(frozen=True, slots=True)
class CheckResult:
    committed: tuple[Reference, ...]
    failed: tuple[Failure, ...]


def stored_uids(path: Path) -> tuple[str, str]:
    """(Media Storage SOP Class UID, SOP Instance UID) from a Part 10 file's meta.

    Reads at most filemeta.META_READ_BYTES. Raises OSError (FileNotFoundError if the
    file is not there) or MetaError.
    """
    meta = filemeta.read(path)
    if not {filemeta.MEDIA_SOP_CLASS, filemeta.MEDIA_SOP_INSTANCE} <= meta.values.keys():
        raise MetaError("file meta lacks Media Storage SOP Class or Instance UID")
    return meta.text(filemeta.MEDIA_SOP_CLASS), meta.text(filemeta.MEDIA_SOP_INSTANCE)


def ready_uids(depots_dir: Path) -> set[str]:
    """SOP Instance UIDs with a ready file in a depot: acknowledged, not yet committed.

    Every node's depot (`depot/<node>/`) counts: behind a load balancer a
    modality may store through one node and ask through another.
    """
    uids: set[str] = set()
    try:
        scan = os.scandir(depots_dir)
    except FileNotFoundError:
        return uids
    with scan:
        for entry in scan:
            uid = depotfiles.uid_of_ready(entry.name)
            if uid is not None:
                uids.add(uid)
            elif entry.is_dir(follow_symlinks=False):
                with contextlib.suppress(OSError):
                    names = os.listdir(entry.path)
                    uids.update(u for n in names if (u := depotfiles.uid_of_ready(n)) is not None)
    return uids


def classify(locator: Locator, reference: Reference, supported: frozenset[str]) -> Failure | None:
    """None if `reference` is stored with that class, else the Failure to report."""
    sop_class, uid = reference
    try:
        path = locator.path(uid)
        found_class, found_uid = stored_uids(path)
    except FileNotFoundError:
        reason = (
            FailureReason.NO_SUCH_OBJECT_INSTANCE
            if not supported or sop_class in supported
            else FailureReason.REFERENCED_SOP_CLASS_NOT_SUPPORTED
        )
        return Failure(sop_class, uid, reason)
    except (OSError, MetaError, UIDError):
        return Failure(sop_class, uid, FailureReason.PROCESSING_FAILURE)
    if found_uid != uid:
        return Failure(sop_class, uid, FailureReason.PROCESSING_FAILURE)
    if found_class != sop_class:
        return Failure(sop_class, uid, FailureReason.CLASS_INSTANCE_CONFLICT)
    return None


def check_references(
    config: Config,
    references: Iterable[Reference],
    wait_s: float,
    supported: frozenset[str] = frozenset(),
    *,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> CheckResult:
    """Classify every reference; wait up to `wait_s` for those still in the depot.

    `supported`: the SOP classes we store (empty: do not tell 0x0122 apart).
    An instance still in the depot when the wait ends is a processing
    failure (0x0110): acknowledged, durable, but not where we promise it.
    """
    refs = list(references)
    outcome: dict[int, Failure | None] = {}
    waiting = set(range(len(refs)))
    deadline = clock() + wait_s
    with Locator(config) as locator:
        while True:
            in_depot = ready_uids(config.depots_dir)
            for index in sorted(waiting):
                if refs[index][1] not in in_depot:
                    outcome[index] = classify(locator, refs[index], supported)
                    waiting.discard(index)
            if not waiting or clock() >= deadline:
                break
            sleep(min(DEPOT_POLL_S, max(0.0, deadline - clock())))
    for index in waiting:
        sop_class, uid = refs[index]
        outcome[index] = Failure(sop_class, uid, FailureReason.PROCESSING_FAILURE)
    committed = tuple(refs[i] for i in range(len(refs)) if outcome[i] is None)
    failed = tuple(f for i in range(len(refs)) if (f := outcome[i]) is not None)
    return CheckResult(committed, failed)
