"""Names of the files in `<storage_dir>/depot/`, shared by receiver and committer.

A receiver streams into `<token>.part` while holding an exclusive flock;
once durable it renames it to `<token>_<uid>.ready`. Tokens start with the
wall-clock nanoseconds at which the name was made, so sorting ready names
gives arrival order across all receiver processes.
"""

from __future__ import annotations

import itertools
import os
import time

PART_SUFFIX = ".part"
READY_SUFFIX = ".ready"

_counter = itertools.count()


def new_token() -> str:
    """A name unique across processes and sortable by time."""
    return f"{time.time_ns():019d}-{os.getpid()}-{next(_counter)}"


def part_name(token: str) -> str:
    return token + PART_SUFFIX


def ready_name(uid: str) -> str:
    """A fresh ready name for `uid`, made at the moment it becomes ready."""
    return f"{new_token()}_{uid}{READY_SUFFIX}"


def uid_of_ready(name: str) -> str | None:
    """The SOP Instance UID in a ready name, or None if it is not one."""
    if not name.endswith(READY_SUFFIX) or "_" not in name:
        return None
    return name[: -len(READY_SUFFIX)].rsplit("_", 1)[1]


def is_part(name: str) -> bool:
    return name.endswith(PART_SUFFIX)
