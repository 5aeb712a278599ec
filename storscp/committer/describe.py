"""What a ready file is, read back from disk when its InstanceStored never came.

Used for files found by the sweep: after a committer restart, a receiver
that died between making the file ready and telling us, or a dropped bus
message. The file meta gives SOP Class, transfer syntax and calling AE; the
dataset's head gives Study, Series and Modality, as the receiver would have.
Both are read without pydicom (`storscp.filemeta`, `sopuids.from_head`);
only a head that walk cannot tell (deflated, deeply nested) falls back to
pydicom, imported then.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from storscp import bus, filemeta
from storscp.receiver import sopuids

log = logging.getLogger(__name__)

# The identifiers sit in the dataset's first few hundred bytes.
HEAD_BYTES = 64 * 1024


def describe(path: Path, name: str, uid: str) -> bus.InstanceStored:
    """What the receiver would have said about the ready file `name`.

    Raises OSError if the file cannot be read at all (FileNotFoundError if it
    is gone); a damaged meta or head only leaves fields empty.
    """
    size = os.stat(path).st_size
    try:
        meta = filemeta.read(path)
        sop_class = meta.text(filemeta.MEDIA_SOP_CLASS)
        syntax = meta.text(filemeta.TRANSFER_SYNTAX)
        calling = meta.text(filemeta.SOURCE_AE).strip()
        offset = meta.dataset_offset
    except FileNotFoundError:
        raise
    except (OSError, filemeta.MetaError) as exc:  # a damaged meta must not stop the commit
        log.warning("cannot read file meta of %s: %s", path, exc)
        sop_class = syntax = calling = ""
        offset = -1
    study = series = modality = ""
    if offset > 0:
        try:
            ids = _identifiers(path, offset, syntax)
            study, series, modality = sopuids.study_series_modality(ids)
        except (ValueError, OSError) as exc:
            log.warning("cannot read the identifiers of %s: %s", path, exc)
    return bus.InstanceStored(
        depot_name=name,
        sop_instance_uid=uid,
        sop_class_uid=sop_class,
        transfer_syntax_uid=syntax,
        size_bytes=size,
        calling_ae=calling,
        study_instance_uid=study,
        series_instance_uid=series,
        modality=modality,
    )


def _identifiers(path: Path, offset: int, syntax: str) -> sopuids.DatasetIds:
    with open(path, "rb") as fh:
        fh.seek(offset)
        head = fh.read(HEAD_BYTES)
    ids = sopuids.from_head(head, syntax, complete=len(head) < HEAD_BYTES)
    return ids if ids is not None else sopuids.from_file(path, offset, syntax)
