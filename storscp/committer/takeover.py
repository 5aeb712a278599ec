"""A dead node's acknowledged instances, handed to a live node (`storscp recover --node`).

Under the dead node's exclusive lock (storscp.nodelock), each ready file of
`depot/<dead>/` is renamed into this node's depot, and both directories are
fsynced: the one atomic rename on the shared filesystem that a commit also
is. This node's committer then commits them at its next sweep, with its
WRITE events and feed messages. So the dead node's depot is only ever read
and emptied here, never by another committer.

Arrival tokens (storscp.arrival) order arrivals at one node only: another
machine's CLOCK_MONOTONIC and boot counter say nothing about ours, and the
wall clock is not an order. A recovered file therefore gets boot number 0
(its own tick kept, so the dead node's order among its files stays): it
counts as older than anything this node received. Of two copies of one UID,
the one this node stored stays, and the recovered one is set aside as
`*.superseded` with an ERROR naming it, never lost in silence.

The dead node's part files are removed (no receiver of it can finish them;
their senders got no Success). Quarantined `.bad` files stay for an operator.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from storscp.arrival import format_token, parse_token
from storscp.committer.commit import QUARANTINE_SUFFIX
from storscp.committer.recover import remove_orphaned_parts
from storscp.depotfiles import ready_names

# Below every boot this node numbers (they start at 1).
RECOVERED_BOOT = 0


@dataclass
class Takeover:
    """What was done to a dead node's depot."""

    moved: list[str] = field(default_factory=list)
    parts_removed: list[tuple[str, int]] = field(default_factory=list)
    quarantined: list[str] = field(default_factory=list)


def take_over(dead_depot: Path, target_depot: Path) -> Takeover:
    """Move `dead_depot`'s ready files into `target_depot`; the caller holds the dead lock."""
    result = Takeover()
    names = ready_names(dead_depot)
    if names:
        for name in names:
            new_name = recovered_name(name)
            if (target_depot / new_name).exists():
                continue  # moved by an earlier recovery that was interrupted: never overwrite
            try:
                os.rename(dead_depot / name, target_depot / new_name)
            except FileNotFoundError:
                continue
            result.moved.append(new_name)
        # Durable in the target before they leave the source, as a commit is.
        _fsync_dir(target_depot)
        _fsync_dir(dead_depot)
    # Under the exclusive node lock no receiver of the dead node lives: no grace.
    result.parts_removed = remove_orphaned_parts(dead_depot, grace_s=0.0)
    with os.scandir(dead_depot) as entries:
        result.quarantined = sorted(e.name for e in entries if e.name.endswith(QUARANTINE_SUFFIX))
    return result


def recovered_name(name: str) -> str:
    """The name a dead node's ready file takes here: its token's boot made 0."""
    parsed = parse_token(name)
    if parsed is None:
        return name  # no token (an older version's name): it sorts first anyway
    token = format_token(RECOVERED_BOOT, parsed[1])
    return token + name[len(token) :]


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
