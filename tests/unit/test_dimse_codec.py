"""Our hand-written DIMSE command set codec against pynetdicom's and pydicom's.

`dimse.decode_command` must read what pynetdicom's SCUs write, and
`store_response`/`echo_response` must be byte for byte what pynetdicom's
own messages encode, whatever the UIDs, ids, statuses and comments.
"""

from __future__ import annotations

from io import BytesIO

from hypothesis import given, settings
from hypothesis import strategies as st
from pynetdicom.dimse_messages import C_ECHO_RQ, C_ECHO_RSP, C_STORE_RQ, C_STORE_RSP
from pynetdicom.dimse_primitives import C_ECHO, C_STORE
from pynetdicom.dsutils import decode, encode

from storscp.receiver import dimse

# Valid UIDs of every length parity (the odd ones get a NUL pad on the wire).
components = st.one_of(st.just("0"), st.integers(1, 10**12).map(str))
uids = (
    st.lists(components, min_size=2, max_size=12).map(".".join).filter(lambda uid: len(uid) <= 64)
)
message_ids = st.integers(0, 0xFFFF)
ae_titles = st.text(
    alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7E, exclude_characters="\\"),
    min_size=1,
    max_size=16,
)


def wire(command_set: object) -> bytes:
    """A pynetdicom message's command set as it goes on the wire."""
    return bytes(encode(command_set, True, True))


@given(
    message_id=message_ids,
    sop_class=uids,
    sop_instance=uids,
    priority=st.sampled_from([0, 1, 2]),
    move_originator=st.one_of(st.none(), ae_titles),
)
@settings(max_examples=100, deadline=None)
def test_decode_command_reads_what_pynetdicom_writes_for_c_store(
    message_id: int, sop_class: str, sop_instance: str, priority: int, move_originator: str | None
) -> None:
    primitive = C_STORE()
    primitive.MessageID = message_id
    primitive.AffectedSOPClassUID = sop_class
    primitive.AffectedSOPInstanceUID = sop_instance
    primitive.Priority = priority
    if move_originator is not None:
        primitive.MoveOriginatorApplicationEntityTitle = move_originator
        primitive.MoveOriginatorMessageID = 1
    primitive.DataSet = BytesIO(b"\x00")
    message = C_STORE_RQ()
    message.primitive_to_message(primitive)

    command = dimse.decode_command(wire(message.command_set))

    assert command.command_field == dimse.CommandField.C_STORE_RQ
    assert command.message_id == message_id
    assert command.has_dataset
    assert command.affected_sop_class_uid.rstrip("\x00") == sop_class
    assert command.affected_sop_instance_uid.rstrip("\x00") == sop_instance
    assert command.move_originator_ae == (move_originator or "").strip()


@given(message_id=message_ids)
def test_decode_command_reads_what_pynetdicom_writes_for_c_echo(message_id: int) -> None:
    primitive = C_ECHO()
    primitive.MessageID = message_id
    primitive.AffectedSOPClassUID = dimse.VERIFICATION_SOP_CLASS
    message = C_ECHO_RQ()
    message.primitive_to_message(primitive)

    command = dimse.decode_command(wire(message.command_set))

    assert (command.command_field, command.message_id) == (dimse.CommandField.C_ECHO_RQ, message_id)
    assert not command.has_dataset


@given(
    message_id=message_ids,
    sop_class=uids,
    sop_instance=uids,
    status=st.sampled_from([0x0000, 0x0110, 0x0122, 0xA700, 0xA900, 0xC000, 0xC001, 0xC211]),
    comment=st.text(
        alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E, exclude_characters="\\"),
        max_size=64,
    ).map(str.strip),
)
@settings(max_examples=100, deadline=None)
def test_store_response_is_byte_equal_to_pynetdicoms(
    message_id: int, sop_class: str, sop_instance: str, status: int, comment: str
) -> None:
    primitive = C_STORE()
    primitive.MessageIDBeingRespondedTo = message_id
    primitive.AffectedSOPClassUID = sop_class
    primitive.AffectedSOPInstanceUID = sop_instance
    primitive.Status = status
    if comment:
        primitive.ErrorComment = comment
    message = C_STORE_RSP()
    message.primitive_to_message(primitive)

    ours = dimse.store_response(message_id, sop_class, sop_instance, status, comment)

    assert ours == wire(message.command_set)


@given(
    comment=st.text(max_size=200),
    message_id=message_ids,
)
@settings(max_examples=100, deadline=None)
def test_any_error_comment_makes_a_response_pydicom_reads_as_one_short_value(
    comment: str, message_id: int
) -> None:
    # The reasons we put in Error Comment quote peers' bytes: backslashes, control
    # characters, non-ASCII. Whatever they hold, the element stays one LO value.
    ours = dimse.store_response(message_id, "1.2.3", "1.2.3.4", 0xC000, comment)
    decoded = decode(BytesIO(ours), True, True)
    assert decoded.MessageIDBeingRespondedTo == message_id
    assert decoded.Status == 0xC000
    if comment:
        value = decoded.ErrorComment
        assert isinstance(value, str), value  # not a multi-valued LO
        assert len(value) <= 64 and value.isprintable()


@given(message_id=message_ids, status=st.sampled_from([0x0000, 0x0122]))
def test_echo_response_is_byte_equal_to_pynetdicoms(message_id: int, status: int) -> None:
    primitive = C_ECHO()
    primitive.MessageIDBeingRespondedTo = message_id
    primitive.AffectedSOPClassUID = dimse.VERIFICATION_SOP_CLASS
    primitive.Status = status
    message = C_ECHO_RSP()
    message.primitive_to_message(primitive)

    assert dimse.echo_response(message_id, status) == wire(message.command_set)
