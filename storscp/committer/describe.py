"""What a ready file is, read back from disk when its InstanceStored never came.

Used for files found by the sweep: after a committer restart, a receiver
that died between making the file ready and telling us, or a dropped bus
message. The file meta gives SOP Class, transfer syntax and calling AE; the
dataset's head gives Study, Series and Modality, as the receiver would have.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from pydicom.filereader import read_file_meta_info

from storscp import bus
from storscp.receiver import sopuids

log = logging.getLogger(__name__)

PREAMBLE_BYTES = 132
# A file meta element header (tag, VR, 2-byte length) and the group length's 4-byte value.
GROUP_LENGTH_BYTES = 12


def describe(path: Path, name: str, uid: str) -> bus.InstanceStored:
    """What the receiver would have said about the ready file `name`.

    Raises OSError if the file cannot be read at all (FileNotFoundError if it
    is gone); a damaged meta or head only leaves fields empty.
    """
    size = os.stat(path).st_size
    try:
        meta = read_file_meta_info(path)
        sop_class = str(meta.get("MediaStorageSOPClassUID", ""))
        syntax = str(meta.get("TransferSyntaxUID", ""))
        calling = str(meta.get("SourceApplicationEntityTitle", "")).strip()
        group_length = int(meta.get("FileMetaInformationGroupLength"))
        offset = PREAMBLE_BYTES + GROUP_LENGTH_BYTES + group_length
    except FileNotFoundError:
        raise
    except Exception as exc:  # a damaged meta must not stop the commit
        log.warning("cannot read file meta of %s: %s", path, exc)
        sop_class = syntax = calling = ""
        offset = -1
    study = series = modality = ""
    if offset > 0:
        try:
            ids = sopuids.from_file(path, offset, syntax)
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
