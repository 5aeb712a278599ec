"""The N-ACTION / N-EVENT-REPORT command sets we write and read, against pynetdicom's."""

from __future__ import annotations

from io import BytesIO

import pytest
from pynetdicom.dimse_messages import (
    N_ACTION_RQ,
    N_ACTION_RSP,
    N_EVENT_REPORT_RQ,
    N_EVENT_REPORT_RSP,
)
from pynetdicom.dimse_primitives import N_ACTION, N_EVENT_REPORT
from pynetdicom.dsutils import encode

from storscp.commitmentinfo import SOP_CLASS_UID, SOP_INSTANCE_UID
from storscp.receiver import dimse, pdu


def pynetdicom_command(message: object, primitive: object) -> bytes:
    """The command set pynetdicom sends for `primitive`, implicit VR little endian."""
    message.primitive_to_message(primitive)  # type: ignore[attr-defined]
    data = encode(message.command_set, True, True)  # type: ignore[attr-defined]
    assert data is not None
    return data


@pytest.mark.parametrize(
    ("status", "comment"), [(0x0000, ""), (0x0124, "not allowed"), (0x0115, "odd")]
)
def test_action_response_is_byte_equal_to_pynetdicom(status: int, comment: str) -> None:
    rsp = N_ACTION()
    rsp.MessageIDBeingRespondedTo = 7
    rsp.Status = status
    if status == 0:
        rsp.AffectedSOPClassUID = SOP_CLASS_UID
        rsp.AffectedSOPInstanceUID = SOP_INSTANCE_UID
        rsp.ActionTypeID = 1
    if comment:
        rsp.ErrorComment = comment
    ours = dimse.action_response(
        7,
        status,
        comment,
        SOP_CLASS_UID if status == 0 else "",
        SOP_INSTANCE_UID if status == 0 else "",
        1 if status == 0 else None,
    )
    assert ours == pynetdicom_command(N_ACTION_RSP(), rsp)


def test_event_report_request_is_byte_equal_to_pynetdicom() -> None:
    req = N_EVENT_REPORT()
    req.MessageID = 513
    req.AffectedSOPClassUID = SOP_CLASS_UID
    req.AffectedSOPInstanceUID = SOP_INSTANCE_UID
    req.EventTypeID = 2
    req.EventInformation = BytesIO(b"\x08\x00\x95\x11\x04\x00\x31\x2e\x32\x00")
    ours = dimse.event_report_request(513, SOP_CLASS_UID, SOP_INSTANCE_UID, 2)
    assert ours == pynetdicom_command(N_EVENT_REPORT_RQ(), req)


def test_action_request_fields_are_read() -> None:
    req = N_ACTION()
    req.MessageID = 99
    req.RequestedSOPClassUID = SOP_CLASS_UID
    req.RequestedSOPInstanceUID = SOP_INSTANCE_UID
    req.ActionTypeID = 1
    req.ActionInformation = BytesIO(b"\x00\x00")
    command = dimse.decode_command(pynetdicom_command(N_ACTION_RQ(), req))
    assert command.command_field == dimse.CommandField.N_ACTION_RQ
    assert command.message_id == 99 and command.has_dataset
    assert command.requested_sop_class_uid.rstrip("\x00") == SOP_CLASS_UID
    assert command.requested_sop_instance_uid.rstrip("\x00") == SOP_INSTANCE_UID
    assert command.action_type_id == 1


def test_event_report_response_fields_are_read() -> None:
    rsp = N_EVENT_REPORT()
    rsp.MessageIDBeingRespondedTo = 513
    rsp.Status = 0x0110
    rsp.EventTypeID = 1
    command = dimse.decode_command(pynetdicom_command(N_EVENT_REPORT_RSP(), rsp))
    assert command.command_field == dimse.CommandField.N_EVENT_REPORT_RSP
    assert (command.responded_to, command.status, command.has_dataset) == (513, 0x0110, False)


@pytest.mark.parametrize(("size", "max_pdu", "pdus"), [(0, 0, 1), (10, 0, 1), (100, 16, 10)])
def test_p_data_message_fragments_within_the_peer_maximum(
    size: int, max_pdu: int, pdus: int
) -> None:
    data = bytes(range(256)) * (size // 256) + bytes(range(size % 256))
    fragments = pdu.p_data_message(3, data, False, max_pdu)
    assert len(fragments) == pdus
    joined = b""
    for number, fragment in enumerate(fragments):
        pdu_type, length = pdu.HEADER.unpack_from(fragment)
        assert pdu_type == pdu.PduType.P_DATA_TF and length == len(fragment) - 6
        assert not max_pdu or length <= max_pdu
        item_length, context_id, control = pdu.PDV_HEADER.unpack_from(fragment, 6)
        assert context_id == 3 and item_length == length - 4
        assert control == (0x02 if number == len(fragments) - 1 else 0x00)
        joined += fragment[12:]
    assert joined == data
