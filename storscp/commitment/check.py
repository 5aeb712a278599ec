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
import struct
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from storscp import depotfiles
from storscp.commitmentinfo import Failure, FailureReason, Reference
from storscp.config import Config
from storscp.errors import StorscpError
from storscp.lookup import Locator
from storscp.uids import UIDError

# Our file meta is ~250 bytes; anything past this is not a file we wrote.
META_READ_BYTES = 16 * 1024
DEPOT_POLL_S = 0.05
PREAMBLE_BYTES = 128
_ELEMENT = struct.Struct("<HH2s")
_U16 = struct.Struct("<H")
_U32 = struct.Struct("<L")
_LONG_VRS = frozenset({b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"UC", b"UN", b"UR", b"UT"})


class MetaError(StorscpError, ValueError):
    """A stored file whose meta information we cannot read."""


@dataclass(frozen=True, slots=True)
class CheckResult:
    committed: tuple[Reference, ...]
    failed: tuple[Failure, ...]


def stored_uids(path: Path) -> tuple[str, str]:
    """(Media Storage SOP Class UID, SOP Instance UID) from a Part 10 file's meta.

    Reads at most META_READ_BYTES. Raises OSError (FileNotFoundError if the
    file is not there) or MetaError.
    """
    with open(path, "rb") as fh:
        head = fh.read(META_READ_BYTES)
    if head[PREAMBLE_BYTES : PREAMBLE_BYTES + 4] != b"DICM":
        raise MetaError("no DICM prefix")
    values: dict[int, bytes] = {}
    pos = PREAMBLE_BYTES + 4
    while pos + 8 <= len(head):
        group, element, vr = _ELEMENT.unpack_from(head, pos)
        if group != 0x0002:
            break
        if vr in _LONG_VRS:
            if pos + 12 > len(head):
                break
            length = _U32.unpack_from(head, pos + 8)[0]
            pos += 12
        else:
            length = _U16.unpack_from(head, pos + 6)[0]
            pos += 8
        if pos + length > len(head):
            raise MetaError(
                f"file meta element (0002,{element:04X}) runs past {META_READ_BYTES} bytes"
            )
        values[element] = head[pos : pos + length]
        pos += length
    try:
        sop_class = values[0x0002].decode("ascii").rstrip("\x00 ")
        sop_instance = values[0x0003].decode("ascii").rstrip("\x00 ")
    except (KeyError, UnicodeDecodeError):
        raise MetaError("file meta lacks Media Storage SOP Class or Instance UID") from None
    return sop_class, sop_instance


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
