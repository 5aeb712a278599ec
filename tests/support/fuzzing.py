"""Structure-aware hypothesis strategies for fuzzing the receiver's wire protocol.

Random bytes alone rarely get past the first PDU header, so most attacks here
start from something valid and break it on purpose: an A-ASSOCIATE-RQ from
`rawscu.associate_rq` taken apart into its items and mutated (lying lengths,
swapped item types, garbage presentation contexts, thousands of contexts,
flipped bits, truncation), or a valid association followed by P-DATA-TF
built from C-ECHO/C-STORE messages that are then fragmented, mislabelled
and corrupted. Every strategy produces an `Attack`: the bytes to send, whether
to associate first with a known-good request, and whether to half-close.

Drawn byte strings stay small (hypothesis's choice buffer is a few KB); large
values (a dataset longer than the receiver's 256 KB buffer) are built from a
drawn size, not drawn byte by byte.
"""

from __future__ import annotations

import itertools
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from hypothesis import strategies as st

from support import dicomfiles as df
from support.rawscu import (
    EXPLICIT_LE,
    IMPLICIT_LE,
    VERIFICATION,
    associate_rq,
    command_set,
    echo_rq,
    element,
    explicit_element,
    pad_uid,
)

EXPLICIT_BE = "1.2.840.10008.1.2.2"
DEFLATED = "1.2.840.10008.1.2.1.99"
JPEG_BASELINE = "1.2.840.10008.1.2.4.50"

# The known-good request every post-association attack starts with. Context
# ids are 1, 3, 5, ... in this order; the last abstract syntax is unknown to
# the receiver, so its context is refused.
GOOD_CONTEXTS: list[tuple[str, list[str]]] = [
    (df.CT, [EXPLICIT_LE]),
    (df.CT, [IMPLICIT_LE]),
    (VERIFICATION, [IMPLICIT_LE]),
    (df.MR, [EXPLICIT_BE]),
    (df.CT, [DEFLATED]),
    ("1.2.3.4.5.6", [IMPLICIT_LE]),
]
GOOD_RQ = associate_rq("FUZZSCU", "STORSCP", GOOD_CONTEXTS)
GOOD_CONTEXT_IDS = [2 * i + 1 for i in range(len(GOOD_CONTEXTS))]

PDU_HEADER = struct.Struct(">BxL")
PDV_HEADER = struct.Struct(">LBB")
ITEM_HEADER = struct.Struct(">BxH")
# PDU type, reserved, length; protocol version, reserved; called, calling; 32 reserved.
RQ_FIXED_BYTES = 6 + 2 + 2 + 16 + 16 + 32
UNDEFINED = 0xFFFFFFFF


REPR_BYTES = 4096


@dataclass(frozen=True, repr=False)
class Attack:
    """One connection's worth of hostile bytes."""

    kind: str
    chunks: tuple[bytes, ...]
    associate_first: bool = False
    half_close: bool = True
    notes: tuple[str, ...] = field(default=())

    @property
    def size(self) -> int:
        return sum(len(c) for c in self.chunks)

    def __repr__(self) -> str:
        """Every byte of small chunks (to reproduce by hand); the ends of large ones."""
        shown = [
            repr(c) if len(c) <= REPR_BYTES else f"{c[:256]!r} ...{len(c)} bytes... {c[-64:]!r}"
            for c in self.chunks
        ]
        return (
            f"Attack(kind={self.kind!r}, associate_first={self.associate_first}, "
            f"half_close={self.half_close}, notes={self.notes!r}, chunks=[{', '.join(shown)}])"
        )

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:
        """Hypothesis prints falsifying examples with this, not with repr()."""
        printer.text(repr(self))


# -- byte-level helpers ----------------------------------------------------------------


def u32_lies(true_length: int) -> st.SearchStrategy[int]:
    """Lengths a broken or hostile peer announces instead of `true_length`."""
    return st.one_of(
        st.sampled_from(
            [0, 1, 2, 3, 4, 5, 6, 7, 0x7FFFFFFF, 0x80000000, UNDEFINED, 0xFFFFFFFE, 1 << 20]
        ),
        st.integers(max(0, true_length - 8), true_length + 8),
        st.integers(0, UNDEFINED),
    )


def u16_lies(true_length: int) -> st.SearchStrategy[int]:
    return st.one_of(
        st.sampled_from([0, 1, 2, 3, 4, 0xFFFF, 0x8000]),
        st.integers(max(0, true_length - 4), min(0xFFFF, true_length + 4)),
        st.integers(0, 0xFFFF),
    )


@st.composite
def chunked(draw: st.DrawFn, data: bytes) -> tuple[bytes, ...]:
    """`data` cut at a few random points: the receiver must not care how bytes arrive."""
    if len(data) < 2:
        return (data,)
    cuts = draw(st.lists(st.integers(1, len(data) - 1), max_size=4, unique=True))
    bounds = [0, *sorted(cuts), len(data)]
    return tuple(data[a:b] for a, b in itertools.pairwise(bounds))


@st.composite
def corrupted(draw: st.DrawFn, data: bytes) -> bytes:
    """Flip a few bits and perhaps cut the tail: damage that keeps most of the structure."""
    out = bytearray(data)
    if out:
        for _ in range(draw(st.integers(0, 3))):
            pos = draw(st.integers(0, len(out) - 1))
            out[pos] ^= 1 << draw(st.integers(0, 7))
    if out and draw(st.booleans()):
        del out[draw(st.integers(0, len(out) - 1)) :]
    return bytes(out)


def pdu(pdu_type: int, body: bytes, length: int | None = None) -> bytes:
    return PDU_HEADER.pack(pdu_type, len(body) if length is None else length) + body


# -- (a) before association ----------------------------------------------------------


@st.composite
def pre_association(draw: st.DrawFn) -> Attack:
    """Random bytes, or a PDU header of any type and any length, before A-ASSOCIATE-RQ."""
    choice = draw(st.sampled_from(["bytes", "header", "prefix", "rq_then_garbage"]))
    if choice == "bytes":
        data = draw(st.binary(min_size=1, max_size=512))
    elif choice == "header":
        pdu_type = draw(st.one_of(st.integers(0, 7), st.integers(0, 255)))
        body = draw(st.binary(max_size=256))
        data = pdu(pdu_type, body, draw(st.one_of(st.none(), u32_lies(len(body)))))
    elif choice == "prefix":
        # Other protocols knocking on the port: TLS, HTTP, nothing useful.
        head = draw(
            st.sampled_from(
                [b"\x16\x03\x01\x02\x00\x01", b"GET / HTTP/1.1\r\n\r\n", b"\r\n", b"\x00" * 6]
            )
        )
        data = head + draw(st.binary(max_size=128))
    else:
        data = GOOD_RQ + draw(st.binary(min_size=1, max_size=256))
    return Attack(
        "pre-association",
        draw(chunked(data)),
        half_close=draw(st.booleans()),
        notes=(choice,),
    )


# -- (b) A-ASSOCIATE-RQ, taken apart and mutated ------------------------------------------


@dataclass
class Item:
    """An A-ASSOCIATE item or sub-item; `subs` for the ones made of sub-items."""

    type: int
    data: bytes
    subs: list[Item] | None = None
    length: int | None = None  # set to lie about the length

    def encode(self) -> bytes:
        body = self.data + b"".join(s.encode() for s in self.subs or [])
        length = len(body) if self.length is None else self.length
        return ITEM_HEADER.pack(self.type, length & 0xFFFF) + body

    def copy(self) -> Item:
        subs = None if self.subs is None else [s.copy() for s in self.subs]
        return Item(self.type, self.data, subs, self.length)


def parse_items(data: bytes) -> list[Item]:
    """The items of a well-formed A-ASSOCIATE-RQ variable part."""
    items = []
    pos = 0
    while pos + 4 <= len(data):
        item_type, length = ITEM_HEADER.unpack_from(data, pos)
        body = data[pos + 4 : pos + 4 + length]
        if item_type == 0x20:
            items.append(Item(item_type, body[:4], parse_items(body[4:])))
        elif item_type == 0x50:
            items.append(Item(item_type, b"", parse_items(body)))
        else:
            items.append(Item(item_type, body))
        pos += 4 + length
    return items


ITEM_TYPES = [0x10, 0x20, 0x21, 0x30, 0x40, 0x50, 0x51, 0x52, 0x53, 0x54, 0x55, 0x56, 0x57, 0x58]
SOME_UIDS = [
    df.CT,
    df.MR,
    VERIFICATION,
    EXPLICIT_LE,
    IMPLICIT_LE,
    DEFLATED,
    "1.2.840.10008.3.1.1.1",
    "1.2.3",
    "",
    "1..2",
    "x" * 64,
    "1." + "2" * 70,
]


def uid_bytes() -> st.SearchStrategy[bytes]:
    return st.one_of(
        st.sampled_from(SOME_UIDS).map(lambda u: u.encode()),
        st.binary(max_size=80),
        st.text(alphabet="0123456789.", max_size=70).map(str.encode),
    )


def garbage_item() -> st.SearchStrategy[Item]:
    """An item of any type whose content is UIDs, garbage, or sub-items."""
    leaf = st.builds(Item, st.sampled_from(ITEM_TYPES) | st.integers(0, 255), uid_bytes())
    context = st.builds(
        Item,
        st.just(0x20),
        st.binary(min_size=0, max_size=6),
        st.lists(leaf, max_size=6),
    )
    user_info = st.builds(
        Item,
        st.just(0x50),
        st.just(b""),
        st.lists(
            st.builds(
                Item,
                st.sampled_from([0x51, 0x52, 0x53, 0x54, 0x55, 0x56, 0x57, 0x58])
                | st.integers(0, 255),
                st.binary(max_size=40),
            ),
            max_size=6,
        ),
    )
    return st.one_of(leaf, context, user_info)


@st.composite
def associate_base(draw: st.DrawFn) -> bytes:
    """A well-formed request with drawn AE titles, contexts and maximum PDU length."""
    title = st.text(alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_", min_size=1, max_size=16)
    contexts = draw(
        st.lists(
            st.tuples(
                st.sampled_from([df.CT, df.MR, VERIFICATION, df.SECONDARY_CAPTURE, "1.2.3.4"]),
                st.lists(
                    st.sampled_from(
                        [EXPLICIT_LE, IMPLICIT_LE, EXPLICIT_BE, DEFLATED, JPEG_BASELINE, "1.2.3"]
                    ),
                    min_size=1,
                    max_size=4,
                ),
            ),
            min_size=1,
            max_size=6,
        )
    )
    if draw(st.integers(0, 9)) == 0:  # now and then, as many contexts as ids allow
        contexts = (contexts * 128)[:127]
    return associate_rq(draw(title), draw(title), contexts, max_pdu=draw(st.integers(0, UNDEFINED)))


def _pick(draw: st.DrawFn, items: list[Item]) -> int:
    return draw(st.integers(0, len(items) - 1))


def _nested(draw: st.DrawFn, items: list[Item]) -> list[Item]:
    """The top-level list or, sometimes, the sub-items of one of its items."""
    parents = [i for i in items if i.subs]
    descend: bool = draw(st.booleans())
    if parents and descend:
        subs = parents[draw(st.integers(0, len(parents) - 1))].subs
        assert subs is not None
        return subs
    return items


MutationFn = Callable[[st.DrawFn, list[Item]], str]


def _lie_item_length(draw: st.DrawFn, items: list[Item]) -> str:
    target = _nested(draw, items)
    item = target[_pick(draw, target)]
    item.length = draw(u16_lies(len(item.encode()) - 4))
    return f"item 0x{item.type:02X} length {item.length}"


def _swap_item_type(draw: st.DrawFn, items: list[Item]) -> str:
    target = _nested(draw, items)
    item = target[_pick(draw, target)]
    old, item.type = item.type, draw(st.sampled_from(ITEM_TYPES) | st.integers(0, 255))
    return f"item type 0x{old:02X} -> 0x{item.type:02X}"


def _insert_garbage(draw: st.DrawFn, items: list[Item]) -> str:
    target = _nested(draw, items)
    new = draw(garbage_item())
    target.insert(draw(st.integers(0, len(target))), new)
    return f"inserted item 0x{new.type:02X}"


def _drop_item(draw: st.DrawFn, items: list[Item]) -> str:
    target = _nested(draw, items)
    dropped = target.pop(_pick(draw, target))
    if not target:
        target.append(draw(garbage_item()))
    return f"dropped item 0x{dropped.type:02X}"


def _duplicate_item(draw: st.DrawFn, items: list[Item]) -> str:
    target = _nested(draw, items)
    item = target[_pick(draw, target)]
    times = draw(st.sampled_from([1, 2, 50, 255, 1000]))
    target.extend(item.copy() for _ in range(times))
    return f"item 0x{item.type:02X} x{times + 1}"


def _replace_data(draw: st.DrawFn, items: list[Item]) -> str:
    target = _nested(draw, items)
    item = target[_pick(draw, target)]
    item.data = draw(uid_bytes() | st.binary(max_size=8))
    return f"item 0x{item.type:02X} data replaced"


ITEM_MUTATIONS: list[MutationFn] = [
    _lie_item_length,
    _swap_item_type,
    _insert_garbage,
    _drop_item,
    _duplicate_item,
    _replace_data,
]


@st.composite
def mutated_associate_rq(draw: st.DrawFn) -> Attack:
    """A valid A-ASSOCIATE-RQ broken at the item level, then perhaps at the byte level."""
    base = draw(st.one_of(st.just(GOOD_RQ), associate_base()))
    fixed = bytearray(base[6:RQ_FIXED_BYTES])
    items = parse_items(base[RQ_FIXED_BYTES:])
    notes: list[str] = []
    for mutation in draw(st.lists(st.sampled_from(ITEM_MUTATIONS), max_size=4)):
        notes.append(mutation(draw, items))
    if draw(st.integers(0, 3)) == 0:
        field_at = draw(
            st.sampled_from([("version", 0, 2), ("called", 4, 20), ("calling", 20, 36)])
        )
        name, start, end = field_at
        fixed[start:end] = draw(st.binary(min_size=end - start, max_size=end - start))
        notes.append(f"{name} bytes replaced")
    body = bytes(fixed) + b"".join(i.encode() for i in items)
    length = draw(st.one_of(st.none(), st.none(), u32_lies(len(body))))
    data = pdu(0x01, body, length)
    if length is not None:
        notes.append(f"PDU length {length}")
    if draw(st.integers(0, 3)) == 0:
        data = draw(corrupted(data))
        notes.append("bits flipped or cut")
    if draw(st.integers(0, 4)) == 0:
        data += draw(st.binary(min_size=1, max_size=64))
        notes.append("trailing bytes")
    return Attack(
        "associate-rq", draw(chunked(data)), half_close=draw(st.booleans()), notes=tuple(notes)
    )


# -- (c) P-DATA-TF after a valid association --------------------------------------------------

# What each context of GOOD_RQ is for (the last one is refused by the receiver).
GOOD_CONTEXT_USE = {1: df.CT, 3: df.CT, 5: VERIFICATION, 7: df.MR, 9: df.CT}
CONTEXT_SYNTAX = {1: EXPLICIT_LE, 3: IMPLICIT_LE, 5: IMPLICIT_LE, 7: EXPLICIT_BE, 9: DEFLATED}


def foreign_context_ids() -> st.SearchStrategy[int]:
    """Contexts that were refused, never proposed, or even (never valid)."""
    return st.one_of(st.sampled_from([GOOD_CONTEXT_IDS[5], 0, 2, 13, 255]), st.integers(0, 255))


def sop_uids() -> st.SearchStrategy[bytes]:
    """Valid UIDs most of the time (so stores get far), hostile ones otherwise."""
    valid = st.integers(0, 10**6).map(lambda n: df.uid_for(f"fuzz-{n}").encode())
    return st.one_of(
        valid,
        valid,
        valid,
        st.sampled_from(
            [b"../../x", b"/etc/passwd", b"1.2.3\x004", b"", b"1..2", b"1." + b"2" * 63, b"1.2.3 "]
        ),
        st.text(alphabet="0123456789.", min_size=1, max_size=64).map(str.encode),
        st.binary(max_size=66),
    )


COMMAND_ELEMENTS = [0x0000, 0x0002, 0x0100, 0x0110, 0x0120, 0x0700, 0x0800, 0x0900, 0x1000, 0x1030]
COMMAND_FIELDS = [0x0001, 0x0030, 0x0FFF, 0x8001, 0x8030, 0x0020, 0x0021, 0x0010, 0xFFFF, 0x0000]


def command_values() -> st.SearchStrategy[bytes]:
    return st.one_of(
        st.sampled_from([*COMMAND_FIELDS, 0x0101, 0xFEFE]).map(lambda v: struct.pack("<H", v)),
        st.integers(0, UNDEFINED).map(lambda v: struct.pack("<L", v)),
        uid_bytes(),
        st.binary(max_size=12),
    )


@st.composite
def broken_command(draw: st.DrawFn, valid: bytes) -> bytes:
    """A command set with elements dropped, replaced, added, mislengthed or regrouped."""
    elements: list[tuple[int, int, bytes, int | None]] = []
    pos = 0
    while pos + 8 <= len(valid):
        group, elem, length = struct.unpack_from("<HHL", valid, pos)
        elements.append((group, elem, valid[pos + 8 : pos + 8 + length], None))
        pos += 8 + length
    for _ in range(draw(st.integers(1, 3))):
        op = draw(st.sampled_from(["drop", "replace", "add", "lie", "group", "random"]))
        i = draw(st.integers(0, max(0, len(elements) - 1)))
        if op == "random":
            pairs = st.tuples(
                st.sampled_from(COMMAND_ELEMENTS) | st.integers(0, 0xFFFF), command_values()
            )
            elements = [(0, tag, value, None) for tag, value in draw(st.lists(pairs, max_size=10))]
        elif op == "add" or not elements:
            tag = draw(st.sampled_from(COMMAND_ELEMENTS) | st.integers(0, 0xFFFF))
            elements.insert(i, (0x0000, tag, draw(command_values()), None))
        elif op == "drop":
            del elements[i]
        elif op == "replace":
            group, elem, _value, lie = elements[i]
            elements[i] = (group, elem, draw(command_values()), lie)
        elif op == "lie":
            group, elem, value, _lie = elements[i]
            elements[i] = (group, elem, value, draw(u32_lies(len(value))))
        else:
            group = draw(st.sampled_from([0x0002, 0x0008, 0xFFFE]) | st.integers(0, 0xFFFF))
            elements[i] = (group, *elements[i][1:])
    return b"".join(
        struct.pack("<HHL", g, e, len(v) if lie is None else lie) + v for g, e, v, lie in elements
    )


VRS = [b"UI", b"PN", b"OB", b"OW", b"SQ", b"UN", b"UT", b"US", b"UL", b"LO", b"CS", b"DA"]


@st.composite
def random_element(draw: st.DrawFn) -> bytes:
    """One dataset element with a drawn tag, VR, value and (maybe lying) length."""
    group = draw(st.sampled_from([0x0002, 0x0008, 0x0010, 0x7FE0, 0xFFFE]) | st.integers(0, 0xFFFF))
    elem = draw(
        st.sampled_from([0x0016, 0x0018, 0x0010, 0xE000, 0xE00D, 0xE0DD]) | st.integers(0, 0xFFFF)
    )
    vr = draw(st.sampled_from(VRS) | st.binary(min_size=2, max_size=2))
    value = draw(st.binary(max_size=40))
    if draw(st.booleans()):
        return explicit_element(group, elem, vr, value)
    length = draw(u32_lies(len(value)))
    if draw(st.booleans()):  # implicit VR header
        return struct.pack("<HHL", group, elem, length) + value
    if vr in (b"OB", b"OW", b"SQ", b"UN", b"UT"):
        return (
            struct.pack("<HH", group, elem) + vr + b"\x00\x00" + struct.pack("<L", length) + value
        )
    return struct.pack("<HH", group, elem) + vr + struct.pack("<H", length & 0xFFFF) + value


def undefined_sequence(
    inner: bytes, closed: bool, big_endian: bool = False, tag: tuple[int, int] = (0x0008, 0x1115)
) -> bytes:
    """An SQ of undefined length (at `tag`) holding one item of undefined length."""
    o = ">" if big_endian else "<"
    data = struct.pack(o + "HH", *tag) + b"SQ\x00\x00" + struct.pack(o + "L", UNDEFINED)
    data += struct.pack(o + "HHL", 0xFFFE, 0xE000, UNDEFINED) + inner
    if closed:
        data += struct.pack(o + "HHL", 0xFFFE, 0xE00D, 0)
        data += struct.pack(o + "HHL", 0xFFFE, 0xE0DD, 0)
    return data


def encoded_dataset(
    syntax: str,
    sop_class: bytes,
    sop_instance: bytes,
    payload: bytes,
    sequence_first: bool,
    hidden_bytes: int = 0,
) -> bytes:
    """A valid dataset in `syntax` (deflated included).

    With `sequence_first`, the SOP UIDs follow a Language Code Sequence of
    undefined length, which the receiver's fast path leaves to pydicom; a
    value of `hidden_bytes` inside it must not end up in the receiver's memory.
    """
    implicit = syntax == IMPLICIT_LE
    o = ">" if syntax == EXPLICIT_BE else "<"

    def elem(group: int, number: int, vr: bytes, value: bytes) -> bytes:
        if implicit:
            return struct.pack("<HHL", group, number, len(value)) + value
        if vr in (b"OB", b"SQ"):
            return (
                struct.pack(o + "HH", group, number)
                + vr
                + b"\0\0"
                + struct.pack(o + "L", len(value))
                + value
            )
        return struct.pack(o + "HH", group, number) + vr + struct.pack(o + "H", len(value)) + value

    data = b""
    if sequence_first:
        inner = elem(0x0008, 0x0100, b"SH", b"eng ")
        if hidden_bytes:
            inner += elem(0x0009, 0x1010, b"OB", bytes(hidden_bytes))
        data += undefined_sequence(inner, True, o == ">", (0x0008, 0x0006))
    data += elem(0x0008, 0x0016, b"UI", pad_uid(sop_class))
    data += elem(0x0008, 0x0018, b"UI", pad_uid(sop_instance))
    data += elem(0x0010, 0x0010, b"PN", b"FUZZ^TEST ")
    if payload:
        data += elem(0x7FE0, 0x0010, b"OB", payload)
    if syntax == DEFLATED:
        squeezer = zlib.compressobj(wbits=-zlib.MAX_WBITS)
        data = squeezer.compress(data) + squeezer.flush()
    return data


NO_DATASET = 0x0101
# Larger than the receiver's memory allowance per example in test_fuzz.py.
HIDDEN_VALUE_BYTES = 24 * 1024 * 1024


def dimse_request(
    command_field: int, message_id: int, sop_class: bytes, sop_instance: bytes, data_set_type: int
) -> bytes:
    """A C-STORE-RQ or C-ECHO-RQ command set with the given CommandDataSetType."""
    elements = [
        element(0x0002, pad_uid(sop_class)),
        element(0x0100, struct.pack("<H", command_field)),
        element(0x0110, struct.pack("<H", message_id)),
    ]
    if command_field == 0x0001:
        elements.append(element(0x0700, struct.pack("<H", 0)))
    elements.append(element(0x0800, struct.pack("<H", data_set_type)))
    if command_field == 0x0001:
        elements.append(element(0x1000, pad_uid(sop_instance)))
    return command_set(elements)


@dataclass(frozen=True)
class Pdv:
    context_id: int
    control: int
    data: bytes
    length: int | None = None  # set to lie

    def encode(self) -> bytes:
        length = len(self.data) + 2 if self.length is None else self.length
        return PDV_HEADER.pack(length, self.context_id, self.control) + self.data


def fragments(context_id: int, data: bytes, command: bool, size: int) -> list[Pdv]:
    """`data` as PDV items of at most `size` bytes with the right control bits."""
    pieces = [data[i : i + size] for i in range(0, len(data), size)] or [b""]
    base = 0x01 if command else 0x00
    last = len(pieces) - 1
    return [Pdv(context_id, base | (0x02 if i == last else 0), p) for i, p in enumerate(pieces)]


def p_data_pdus(pdvs: list[Pdv], per_pdu: int) -> list[bytearray]:
    """PDV items packed `per_pdu` to a P-DATA-TF (mutable, so that a fault can be planted)."""
    out = []
    for i in range(0, len(pdvs), per_pdu):
        body = b"".join(p.encode() for p in pdvs[i : i + per_pdu])
        out.append(bytearray(pdu(0x04, body)))
    return out


STORE_FAULTS = [
    "none",
    "none",
    "none",
    "command",
    "dataset",
    "uid",
    "sop-class",
    "context",
    "dataset-context",
    "control",
    "pdv-length",
    "pdu-length",
    "order",
    "no-dataset",
    "dataset-type",
]


@st.composite
def store_step(draw: st.DrawFn) -> tuple[str, bytes]:
    """A C-STORE or C-ECHO, well-formed except for at most one drawn fault; (fault, bytes)."""
    fault = draw(st.sampled_from(STORE_FAULTS))
    cid = draw(st.sampled_from(sorted(GOOD_CONTEXT_USE)))
    echo = cid == 5
    sop_class = GOOD_CONTEXT_USE[cid].encode()
    if fault == "sop-class":
        sop_class = draw(
            st.sampled_from([df.MR, df.CT, VERIFICATION]).map(str.encode) | uid_bytes()
        )
    sop_instance = (
        draw(sop_uids()) if fault == "uid" else df.uid_for(draw(st.integers(0, 10**6))).encode()
    )
    message_id = draw(st.integers(0, 0xFFFF))
    data_set_type = NO_DATASET if echo else 0x0000
    if fault == "dataset-type":  # C-ECHO with a dataset, C-STORE without one
        data_set_type = draw(st.sampled_from([NO_DATASET, 0x0000, 0xFEFE]))
    command = dimse_request(
        0x0030 if echo else 0x0001, message_id, sop_class, sop_instance, data_set_type
    )
    if fault == "command":
        command = draw(broken_command(command))
    cmd_size = draw(st.sampled_from([16_000, 16_000, 1, 7, 64]))
    pdvs = fragments(cid, command, True, cmd_size)
    if data_set_type != NO_DATASET and fault != "no-dataset":
        syntax = CONTEXT_SYNTAX[cid]
        payload = b"\x5a" * draw(st.sampled_from([0, 0, 0, 16, 70_000, 300_000]))
        sequence_first = draw(st.booleans())
        hidden = draw(st.sampled_from([0] * 7 + [HIDDEN_VALUE_BYTES])) if sequence_first else 0
        data = encoded_dataset(syntax, sop_class, sop_instance, payload, sequence_first, hidden)
        if fault == "dataset":
            data = draw(broken_dataset(data, sop_class, sop_instance))
        data_cid = (
            draw(foreign_context_ids() | st.sampled_from(sorted(GOOD_CONTEXT_USE)))
            if fault == "dataset-context"
            else cid
        )
        size = draw(st.sampled_from([16_000, 16_000, 1_000, 65_530, 1 << 20, 3]))
        if size < 100 and len(data) > 2_000:
            size = 16_000  # one byte per PDV over a big dataset is just slow
        pdvs += fragments(data_cid, data, False, size)
    if fault == "context":
        pdvs[0] = Pdv(draw(foreign_context_ids()), pdvs[0].control, pdvs[0].data)
    elif fault == "control":
        i = draw(st.integers(0, len(pdvs) - 1))
        pdvs[i] = Pdv(pdvs[i].context_id, draw(st.integers(0, 255)), pdvs[i].data)
    elif fault == "pdv-length":
        i = draw(st.integers(0, len(pdvs) - 1))
        pdvs[i] = Pdv(
            pdvs[i].context_id, pdvs[i].control, pdvs[i].data, draw(u32_lies(len(pdvs[i].data) + 2))
        )
    elif fault == "order":
        pdvs = draw(st.permutations(pdvs))
    pdus = p_data_pdus(pdvs, draw(st.sampled_from([1, 1, 2, 3])))
    if fault == "pdu-length":
        i = draw(st.integers(0, len(pdus) - 1))
        pdus[i][2:6] = struct.pack(">L", draw(u32_lies(len(pdus[i]) - 6)))
    return fault, b"".join(pdus)


@st.composite
def broken_dataset(draw: st.DrawFn, valid: bytes, sop_class: bytes, sop_instance: bytes) -> bytes:
    """Random element headers, an unclosed sequence, flipped bits, or plain garbage."""
    how = draw(st.sampled_from(["elements", "prefix", "sequence", "corrupted", "bytes"]))
    if how == "elements":
        return b"".join(draw(st.lists(random_element(), min_size=1, max_size=8)))
    if how == "prefix":  # good UIDs, then garbage the fast path never reads
        return valid[:200] + b"".join(draw(st.lists(random_element(), min_size=1, max_size=4)))
    if how == "sequence":
        inner = b"".join(draw(st.lists(random_element(), max_size=3)))
        uids = explicit_element(0x0008, 0x0016, b"UI", pad_uid(sop_class))
        uids += explicit_element(0x0008, 0x0018, b"UI", pad_uid(sop_instance))
        return undefined_sequence(inner, draw(st.booleans())) + uids
    if how == "corrupted":
        return draw(corrupted(valid))
    return draw(st.binary(max_size=300))


@st.composite
def raw_pdv_step(draw: st.DrawFn) -> bytes:
    """One P-DATA-TF whose PDV items are drawn directly: bad lengths, controls, contexts."""
    pdvs = draw(
        st.lists(
            st.builds(
                Pdv,
                st.sampled_from(sorted(GOOD_CONTEXT_USE)) | foreign_context_ids(),
                st.integers(0, 255),
                st.binary(max_size=64),
                st.one_of(st.none(), u32_lies(8)),
            ),
            min_size=0,
            max_size=4,
        )
    )
    body = b"".join(p.encode() for p in pdvs) + draw(st.sampled_from([b"", b"\x00", b"\x00" * 5]))
    return pdu(0x04, body, draw(st.one_of(st.none(), u32_lies(len(body)))))


@st.composite
def release_or_abort(draw: st.DrawFn) -> bytes:
    """(d) A-RELEASE-RQ / A-ABORT (or a type nobody expects here) with odd lengths."""
    pdu_type = draw(st.sampled_from([0x05, 0x07, 0x05, 0x07, 0x06, 0x02, 0x03, 0x01]))
    body = draw(st.sampled_from([b"\x00" * 4, b"", b"\x00", b"\x00" * 5]) | st.binary(max_size=16))
    return pdu(pdu_type, body, draw(st.one_of(st.none(), u32_lies(len(body)))))


@st.composite
def wrong_pdu_step(draw: st.DrawFn) -> bytes:
    """A PDU of a type that has no business after association (or no type at all)."""
    pdu_type = draw(
        st.sampled_from([0x01, 0x02, 0x03, 0x06, 0x00, 0x08, 0xFF]) | st.integers(0, 255)
    )
    body = GOOD_RQ[6:] if pdu_type == 0x01 and draw(st.booleans()) else draw(st.binary(max_size=64))
    return pdu(pdu_type, body)


def _echo(cid: int) -> bytes:
    return pdu(0x04, Pdv(cid, 0x03, echo_rq(1)).encode())


RELEASE_RQ = pdu(0x05, b"\x00" * 4)


def labelled(
    label: str, strategy: st.SearchStrategy[bytes]
) -> st.SearchStrategy[tuple[str, bytes]]:
    return strategy.map(lambda data: (label, data))


@st.composite
def after_association(draw: st.DrawFn, kind: str) -> Attack:
    """(c)/(d) A few messages after a valid association, perhaps a release, perhaps a cut."""
    steps: list[tuple[str, bytes]] = []
    if kind == "release-abort":
        if draw(st.booleans()):
            steps.append(("echo", _echo(5)))
        steps.append(draw(labelled("release/abort", release_or_abort())))
        if draw(st.booleans()):  # and something after it
            after = st.one_of(
                store_step(),
                labelled("release/abort", release_or_abort()),
                labelled("bytes", st.binary(max_size=32)),
            )
            steps.append(draw(after))
    else:
        step = st.one_of(
            store_step(),
            store_step(),
            store_step(),
            store_step(),
            labelled("raw PDV", raw_pdv_step()),
            labelled("wrong PDU", wrong_pdu_step()),
            st.just(("echo", _echo(5))),
            labelled("bytes", st.binary(min_size=1, max_size=32)),
        )
        steps = draw(st.lists(step, min_size=1, max_size=3))
        end = draw(st.sampled_from(["", "", "release", "odd"]))
        if end == "release":
            steps.append(("release", RELEASE_RQ))
        elif end == "odd":
            steps.append(draw(labelled("release/abort", release_or_abort())))
    data = b"".join(step for _label, step in steps)
    notes = [label for label, _step in steps]
    if data and draw(st.integers(0, 5)) == 0:
        cut = draw(st.integers(0, len(data) - 1))
        data = data[:cut]
        notes.append(f"cut at {cut}")
    return Attack(
        kind,
        draw(chunked(data)) if data else (),
        associate_first=True,
        half_close=draw(st.booleans()),
        notes=tuple(notes),
    )


def attacks() -> st.SearchStrategy[Attack]:
    """Every kind of attack; the richest (P-DATA after association) twice as often."""
    return st.one_of(
        pre_association(),
        mutated_associate_rq(),
        after_association("p-data"),
        after_association("p-data"),
        after_association("release-abort"),
    )
