"""Names of the files in `<storage_dir>/depot/`, shared by receiver and committer.

A receiver streams into `<unique>.part` while holding an exclusive flock;
once durable it renames it to `<arrival token>_<uid>.ready` (see arrival.py:
tokens sort in arrival order across receiver processes and boots). Part
names only need to be unique, so they may use the wall clock.
"""

from __future__ import annotations

import itertools
import os
import time
from pathlib import Path

from storscp import arrival, processid

PART_SUFFIX = ".part"
READY_SUFFIX = ".ready"

_counter = itertools.count()


def unique_name() -> str:
    """A name no other process or thread makes (order does not matter)."""
    return f"{time.time_ns():019d}-{processid.current()}-{next(_counter)}"


def part_name(unique: str) -> str:
    return unique + PART_SUFFIX


def ready_name(token: str, uid: str) -> str:
    """The ready name of `uid` that arrived with arrival token `token`."""
    return f"{token}_{uid}{READY_SUFFIX}"


def uid_of_ready(name: str) -> str | None:
    """The SOP Instance UID in a ready name, or None if it is not one."""
    if not name.endswith(READY_SUFFIX) or "_" not in name:
        return None
    return name[: -len(READY_SUFFIX)].rsplit("_", 1)[1]


def arrival_key(name: str) -> tuple[bool, str]:
    """Sort key of a ready name: arrival order.

    Tokens have a fixed width, so tokened names sort as strings. A name
    without one (made by a version that used the wall clock) sorts before
    every tokened one, in name order. Cheap: a depot after an outage may hold
    many thousands of names.
    """
    return (name[arrival.BOOT_DIGITS : arrival.BOOT_DIGITS + 1] == ".", name)


def ready_names(depot_dir: Path) -> list[str]:
    """Ready files in the depot, in arrival order."""
    with os.scandir(depot_dir) as entries:
        names = [e.name for e in entries if e.name.endswith(READY_SUFFIX)]
    names.sort(key=arrival_key)
    return names


def is_part(name: str) -> bool:
    return name.endswith(PART_SUFFIX)


def highest_boot(depot_dir: Path) -> int:
    """The largest boot number among the ready files waiting in the depot (0 if none)."""
    boots = [arrival.parse_token(name) for name in os.listdir(depot_dir)]
    return max((parsed[0] for parsed in boots if parsed is not None), default=0)
