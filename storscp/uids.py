"""Strict DICOM UID checks: a SOP Instance UID becomes a file name.

PS3.5 section 9.1: components of digits separated by single dots, no leading
zero in a multi-digit component, at most 64 characters. A value of odd
length may carry one trailing NUL (or, from some toolkits, a space) as
padding; nothing else passes.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from storscp.errors import StorscpError

MAX_UID_LENGTH = 64

_UID_RE = re.compile(r"(?:0|[1-9][0-9]*)(?:\.(?:0|[1-9][0-9]*))*")


class UIDError(StorscpError, ValueError):
    """A value that is not a valid DICOM UID; the message says why."""


def strip_padding(value: str) -> str:
    """Remove the single trailing NUL or space that pads an odd length."""
    if value.endswith(("\x00", " ")):
        return value[:-1]
    return value


def check_uid(value: str) -> str:
    """Return the UID without padding, or raise UIDError saying why."""
    uid = strip_padding(value)
    if not uid:
        raise UIDError("UID is empty")
    if len(uid) > MAX_UID_LENGTH:
        raise UIDError(f"UID is {len(uid)} characters long, the limit is {MAX_UID_LENGTH}")
    if _UID_RE.fullmatch(uid) is None:
        raise UIDError(f"UID {uid!r} is not dot-separated numbers without leading zeros")
    return uid


def is_valid_uid(value: str) -> bool:
    try:
        check_uid(value)
    except UIDError:
        return False
    return True


def storage_path(storage_dir: Path, uid: str, extension: str) -> Path:
    """The final file of `uid`, proven to lie directly in `storage_dir`."""
    return Path(storage_file(os.fspath(storage_dir), uid, extension))


def storage_file(storage_dir: str, uid: str, extension: str) -> str:
    """`storage_path` as a plain string (the committer's per-instance path)."""
    uid = check_uid(uid)
    path = os.path.join(storage_dir, f"{uid}{extension}")
    # Defence in depth: the regex already excludes '/', '..' and NUL.
    if os.path.dirname(os.path.normpath(path)) != os.path.normpath(storage_dir):
        raise UIDError(f"UID {uid!r} would leave the storage directory")
    return path


def study_path(
    storage_dir: Path, uid: str, extension: str, study_uid: str, series_uid: str
) -> Path:
    """`<storage_dir>/<Study>/<Series>/<UID><ext>`, every component a validated UID.

    A Study UID such as `..` or `1.2/../3` raises UIDError: nothing can be
    written outside `storage_dir`.
    """
    parts = [check_uid(study_uid), check_uid(series_uid)]
    path = storage_dir.joinpath(*parts, f"{check_uid(uid)}{extension}")
    # Defence in depth, as above: the path must be three levels below storage_dir.
    if Path(os.path.normpath(path)).parents[2] != Path(os.path.normpath(storage_dir)):
        raise UIDError(f"UIDs {parts} would leave the storage directory")
    return path
