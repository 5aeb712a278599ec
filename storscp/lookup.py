"""Is SOP Instance UID X stored, with which SOP Class, at which path? (Storage Commitment)

The feed's history answers for every layout while it keeps the commit (see
`feed_max_bytes`, `feed_max_age_s`); the file must still be there. Beyond the
history, the flat layout still has a place to look: `<storage_dir>/<UID><ext>`,
whose SOP Class is read from its file meta. With `layout = "study"` an
instance older than the history is not found.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from pydicom.filereader import read_file_meta_info

from storscp.config import Config
from storscp.history import HistoryReader
from storscp.uids import UIDError, storage_path


@dataclass(frozen=True, slots=True)
class StoredInstance:
    sop_instance_uid: str
    sop_class_uid: str
    path: Path
    # The feed seq of its commit, or None when it was found outside the history.
    seq: int | None


def find_stored(config: Config, uid: str, history: HistoryReader | None) -> StoredInstance | None:
    """Where `uid` is stored now, or None. `history`: an open reader, if there is one."""
    if history is not None:
        msg = history.newest_instance(uid)
        if msg is not None and os.path.isfile(msg.path):
            return StoredInstance(uid, msg.sop_class_uid, Path(msg.path), msg.seq)
    if config.layout != "flat":
        return None
    try:
        path = storage_path(config.storage_dir, uid, config.extension)
        meta = read_file_meta_info(path)
    except (UIDError, OSError):
        return None
    except Exception:  # a damaged file meta: not something we can vouch for
        return None
    sop_class = str(meta.get("MediaStorageSOPClassUID", ""))
    return StoredInstance(uid, sop_class, path, None) if sop_class else None
