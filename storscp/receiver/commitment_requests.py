"""Storage Commitment requests (N-ACTION) as the receiver takes them.

Who may ask: only a calling AE listed in `[[remote_ae]]` with
`storage_commitment = true` (and, if its table names a `host`, from that
host), whatever `accept_any` says: `accept_any` opens C-STORE and C-ECHO to
anyone, but a commitment report is sent to the host and port configured
for the AE, so only a configured AE can ask for one.

A valid request is written to disk (commitmentfiles.py) before the
N-ACTION-RSP says Success; then the commitment process is rung. Every
refusal has a standard N-ACTION status, an Error Comment and an ERROR event.
"""

from __future__ import annotations

import errno
import itertools
import threading
import time
from dataclasses import dataclass

from storscp import bus
from storscp.commitmentfiles import CommitmentRequest, RequestStore
from storscp.commitmentinfo import (
    ACTION_REQUEST_COMMITMENT,
    SOP_CLASS_UID,
    SOP_INSTANCE_UID,
    ActionInformation,
    ActionRefused,
    ActionStatus,
    max_action_bytes,
    parse_action_information,
)
from storscp.config import Config
from storscp.outbox import Outbox
from storscp.receiver.admission import RemoteHosts, normalise_address
from storscp.receiver.dimse import Command
from storscp.uids import strip_padding

RESOURCE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}


class ActionDataset:
    """Where an N-ACTION's dataset goes: memory, up to a limit; past it, nowhere.

    Past the limit the rest is still read off the wire (the peer is
    mid-message) and the request is refused with Resource limitation.
    """

    def __init__(self, command: Command, context_id: int, limit_bytes: int) -> None:
        self.command = command
        self.context_id = context_id
        self.limit_bytes = limit_bytes
        self.received = 0
        self._data = bytearray()

    @property
    def too_large(self) -> bool:
        return self.received > self.limit_bytes

    def take(self, data: memoryview) -> None:
        self.received += len(data)
        if not self.too_large:
            self._data += data
        elif self._data:
            self._data = bytearray()  # give the memory back at once

    def bytes(self) -> bytes:
        return bytes(self._data)

    def discard(self) -> None:
        self._data = bytearray()


@dataclass(frozen=True, slots=True)
class Accepted:
    """A request on disk: its file name and whether its Transaction UID was in use."""

    request_name: str
    duplicate: bool
    info: ActionInformation


class CommitmentRequests:
    """N-ACTION handling shared by a receiver's connections (thread-safe)."""

    def __init__(
        self,
        config: Config,
        outbox: Outbox,
        remotes: RemoteHosts,
        reply_to: str = "",
    ) -> None:
        """`reply_to`: our ReportOffered endpoint, "" when we cannot take offers."""
        self.config = config
        self.outbox = outbox
        self.remotes = remotes
        self.reply_to = reply_to
        self.store = RequestStore(
            config.commitment_dir, int(config.file_mode), int(config.dir_mode)
        )
        self._ids = itertools.count(1)
        self._lock = threading.Lock()

    def new_association_id(self) -> int:
        with self._lock:
            return next(self._ids)

    def dataset_limit(self) -> int:
        return max_action_bytes(self.config.commitment_max_references)

    def authorise(self, calling_ae: str, peer_host: str) -> str | None:
        """None if `calling_ae` at `peer_host` may ask for commitment, else why not."""
        tables = [
            (remote, hosts)
            for remote, hosts in self.remotes
            if remote.ae_title == calling_ae and remote.storage_commitment
        ]
        if not tables:
            return f"calling AE {calling_ae!r} is no [[remote_ae]] with storage_commitment = true"
        # Addresses were resolved at start (behind a balancer: the PROXY header's).
        peer = normalise_address(peer_host)
        if not any(hosts is None or peer in hosts for _, hosts in tables):
            return f"calling AE {calling_ae!r} may ask only from its configured host"
        return None

    def take(
        self,
        command: Command,
        dataset: ActionDataset,
        transfer_syntax: str,
        calling_ae: str,
        called_ae: str,
        peer: str,
        peer_host: str,
        association_id: int,
    ) -> Accepted:
        """Check, write durably, ring the commitment process; ActionRefused if not."""
        if strip_padding(command.requested_sop_class_uid) != SOP_CLASS_UID:
            raise ActionRefused(
                ActionStatus.NO_SUCH_SOP_CLASS,
                f"Requested SOP Class {strip_padding(command.requested_sop_class_uid)!r}"
                " is not Storage Commitment Push Model",
            )
        if strip_padding(command.requested_sop_instance_uid) != SOP_INSTANCE_UID:
            raise ActionRefused(
                ActionStatus.NO_SUCH_SOP_INSTANCE,
                f"Requested SOP Instance must be {SOP_INSTANCE_UID}",
            )
        if command.action_type_id != ACTION_REQUEST_COMMITMENT:
            raise ActionRefused(
                ActionStatus.NO_SUCH_ACTION,
                f"Action Type ID {command.action_type_id} is not 1 (request commitment)",
            )
        refusal = self.authorise(calling_ae, peer_host)
        if refusal is not None:
            raise ActionRefused(ActionStatus.NOT_AUTHORISED, refusal)
        if not command.has_dataset:
            raise ActionRefused(ActionStatus.INVALID_ARGUMENT_VALUE, "no Action Information")
        if dataset.too_large:
            raise ActionRefused(
                ActionStatus.RESOURCE_LIMITATION,
                f"Action Information of {dataset.received} bytes is more than"
                f" commitment_max_references={self.config.commitment_max_references} allow",
            )
        info = parse_action_information(
            dataset.bytes(), transfer_syntax, self.config.commitment_max_references
        )
        request = CommitmentRequest(
            transaction_uid=info.transaction_uid,
            references=info.references,
            calling_ae=calling_ae,
            called_ae=called_ae,
            peer=peer,
            received_unix=time.time(),
            reply_to=self.reply_to,
            association_id=association_id if self.reply_to else 0,
        )
        try:
            name, duplicate = self.store.add(request)
        except OSError as exc:
            status = (
                ActionStatus.RESOURCE_LIMITATION
                if exc.errno in RESOURCE_ERRNOS
                else ActionStatus.PROCESSING_FAILURE
            )
            raise ActionRefused(
                status, f"cannot keep the request: {exc}", info.transaction_uid
            ) from None
        self.outbox.post("commitment", bus.CommitmentRequested(name))
        return Accepted(name, duplicate, info)
