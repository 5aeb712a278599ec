"""Streaming a C-STORE dataset from P-DATA straight into the depot.

pynetdicom collects a whole dataset in memory (or, in its chunked mode, in
a temporary file of its own, flushed per fragment). We plug into its DIMSE
layer instead: `DepotDIMSEProvider` gives each association a
`StreamingMessage` that decodes the command set as pynetdicom does, but
writes every dataset fragment of a C-STORE-RQ into a `PartFile` as it
arrives. The C-STORE handler then picks the part up by Message ID.

This runs on pynetdicom's DUL thread; an exception here makes pynetdicom
abort the association, which is what a protocol violation deserves.
"""

from __future__ import annotations

import logging
import threading
from io import BytesIO
from typing import TYPE_CHECKING, Protocol

from pydicom.dataset import Dataset
from pynetdicom.dimse import DIMSEServiceProvider
from pynetdicom.dimse_messages import _MESSAGE_TYPES, C_STORE_RQ, DIMSEMessage
from pynetdicom.dsutils import decode
from pynetdicom.pdu_primitives import P_DATA

from storscp.receiver.depot import PartFile, file_meta_bytes
from storscp.uids import UIDError, check_uid

if TYPE_CHECKING:
    from pynetdicom.association import Association

log = logging.getLogger(__name__)

# A command set is a few hundred bytes; anything near this is hostile.
MAX_COMMAND_BYTES = 64 * 1024
# Datasets of non-C-STORE messages (which we do not serve) stay in memory.
MAX_INMEMORY_DATASET_BYTES = 1024 * 1024


class ProtocolViolation(Exception):
    """The peer broke PS3.8 Annex E framing; the association is aborted."""


class PartSource(Protocol):
    """What the provider needs from the receiver to open part files."""

    def open_part(
        self, assoc: Association, command_set: Dataset, context_id: int
    ) -> PartFile | RefusedPart: ...


class RefusedPart:
    """Stands in for a PartFile we could not or would not create.

    The dataset is still read off the wire (the peer is mid-message) but
    goes nowhere; the handler answers with the failure recorded here.
    """

    def __init__(self, reason: str, error: Exception) -> None:
        self.reason = reason
        self.error = error
        self.dataset_bytes = 0

    def write(self, data: bytes | memoryview) -> None:
        self.dataset_bytes += len(data)

    def discard(self) -> None:
        pass


AnyPart = PartFile | RefusedPart


class StreamingMessage(DIMSEMessage):
    """A DIMSE message being received; a C-STORE-RQ dataset goes to disk."""

    def __init__(self, provider: DepotDIMSEProvider) -> None:
        # DIMSEMessage.__init__ only works for its own named subclasses.
        self.context_id: int | None = None
        self.encoded_command_set = BytesIO()
        self.data_set: BytesIO | None = BytesIO()
        self.command_set = Dataset()
        self._data_set_path = None
        self._data_set_file = None
        self._provider = provider
        self._final_cls: type[DIMSEMessage] | None = None
        self.part: AnyPart | None = None

    def decode_msg(self, primitive: P_DATA, assoc: Association | None = None) -> bool:
        """Consume one P-DATA; True once the whole message has arrived."""
        for context_id, data in primitive.presentation_data_value_list:
            header = data[0]
            payload = memoryview(data)[1:]
            if header & 0x01:
                if self._final_cls is not None:
                    raise ProtocolViolation("command fragment after the command set ended")
                self.encoded_command_set.write(payload)
                if self.encoded_command_set.tell() > MAX_COMMAND_BYTES:
                    raise ProtocolViolation("command set larger than 64 KiB")
                if header & 0x02 and self._end_of_command(context_id):
                    return True
            else:
                if self._final_cls is None:
                    raise ProtocolViolation("dataset fragment before the command set")
                if context_id != self.context_id:
                    raise ProtocolViolation("dataset fragment on another presentation context")
                self._take_dataset(payload)
                if header & 0x02:
                    if self.part is not None:
                        # Before pynetdicom queues the request for the handler.
                        self._provider.hold(int(self.command_set.MessageID), self.part)
                        self.part = None
                    self.__class__ = self._final_cls  # type: ignore[assignment]
                    return True
        return False

    def _end_of_command(self, context_id: int) -> bool:
        """Decode the command set; True if the message has no dataset."""
        self.context_id = context_id
        self.command_set = decode(self.encoded_command_set, True, True)
        try:
            cls = _MESSAGE_TYPES[int(self.command_set.CommandField)][1]
        except (KeyError, TypeError, AttributeError):
            raise ProtocolViolation("unknown DIMSE command field") from None
        if self.command_set.get("CommandDataSetType") == 0x0101:
            self.__class__ = cls  # type: ignore[assignment]
            return True
        self._final_cls = cls
        if cls is C_STORE_RQ:
            self.part = self._provider.open_part(self.command_set, context_id)
        return False

    def _take_dataset(self, payload: memoryview) -> None:
        if self.part is not None:
            self.part.write(payload)
            return
        data_set = self.data_set
        assert data_set is not None
        data_set.write(payload)
        if data_set.tell() > MAX_INMEMORY_DATASET_BYTES:
            raise ProtocolViolation("dataset of a non-storage message larger than 1 MiB")


class DepotDIMSEProvider(DIMSEServiceProvider):
    """pynetdicom's DIMSE provider, receiving C-STORE datasets into the depot."""

    def __init__(self, assoc: Association, source: PartSource) -> None:
        super().__init__(assoc)
        self._source = source
        self._lock = threading.Lock()
        self._parts: dict[int, AnyPart] = {}

    def receive_primitive(self, primitive: P_DATA) -> None:
        if self.message is None:
            self.message = StreamingMessage(self)
        super().receive_primitive(primitive)

    def hold(self, message_id: int, part: AnyPart) -> None:
        """Keep a completely received part until its handler takes it."""
        with self._lock:
            old = self._parts.pop(message_id, None)
            self._parts[message_id] = part
        if old is not None:
            old.discard()

    def open_part(self, command_set: Dataset, context_id: int) -> AnyPart:
        return self._source.open_part(self.assoc, command_set, context_id)

    def take_part(self, message_id: int) -> AnyPart | None:
        """Hand the received part of a C-STORE to its handler (once)."""
        with self._lock:
            return self._parts.pop(message_id, None)

    def discard_all(self) -> None:
        """Remove every part this association still holds (abort, close)."""
        with self._lock:
            parts = list(self._parts.values())
            self._parts.clear()
        message = self.message
        pending = getattr(message, "part", None) if message is not None else None
        if pending is not None:
            parts.append(pending)
        for part in parts:
            part.discard()


def refuse_invalid_request(command_set: Dataset) -> RefusedPart | None:
    """A RefusedPart if the request's UIDs are not valid DICOM UIDs."""
    for keyword in ("AffectedSOPInstanceUID", "AffectedSOPClassUID"):
        try:
            check_uid(str(command_set.get(keyword) or ""))
        except UIDError as exc:
            return RefusedPart(f"request {keyword} is invalid: {exc}", exc)
    return None


def meta_for_request(command_set: Dataset, transfer_syntax_uid: str, calling_ae: str) -> bytes:
    """File meta for a request whose UIDs were checked."""
    return file_meta_bytes(
        str(command_set.AffectedSOPClassUID),
        str(command_set.AffectedSOPInstanceUID),
        transfer_syntax_uid,
        calling_ae,
    )
