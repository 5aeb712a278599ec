"""One event -> one log line, with nothing a peer can use to forge a line.

`<ISO-8601 time with offset> <EVENT> key=value ...`. A value with spaces,
quotes, '=', backslashes or nothing at all is double-quoted; control and
format characters (newlines and Unicode line separators included) are
escaped, so a hostile AE title or UID can never split a line or fake another
event. A line longer than the file limit is shortened field by field and
ends with `cut=true`, so it still parses.

An event that came with a place in its sender's stream carries it as the
field after `proc`: `ev=<origin>:<seq>`. It is short (never the longest value,
never below MIN_CUT_CHARS) and never among the last fields, so a cut keeps it,
and a restarted logger finds it at a fixed place in the line.
"""

from __future__ import annotations

import re
import unicodedata
from datetime import datetime

from storscp import bus

_KEY_RE = re.compile(r"[^a-z0-9_]")
MAX_KEY_CHARS = 64
# Printable ASCII except space, '"', '=' and '\\': written as is.
# \Z, not $: "$" also matches before a trailing newline, which would be written bare.
_PLAIN_ASCII_RE = re.compile(r"^[!#-<>-\[\]-~]+\Z")
_ESCAPES = {"\\": "\\\\", '"': '\\"', "\n": "\\n", "\r": "\\r", "\t": "\\t"}
# The mark of a shortened line: a field, so the line still parses.
CUT_FIELD = "cut=true"
# Longest timestamp we accept from a sender ("2026-11-27T19:56:41.582123+05:45").
MAX_TIME_CHARS = 40
# The field that says which sender incarnation wrote an event, and its number there.
EVENT_ID_KEY = "ev"


def _needs_escape(ch: str) -> bool:
    """Control, format, surrogate, private-use, unassigned, line/paragraph separators."""
    code = ord(ch)
    if code < 0x80:
        return code < 0x20 or code == 0x7F
    category = unicodedata.category(ch)
    return category[0] == "C" or category in ("Zl", "Zp")


def _is_plain(text: str) -> bool:
    if _PLAIN_ASCII_RE.match(text):
        return True
    return bool(text) and all(
        not ch.isspace() and ch not in '"=\\' and not _needs_escape(ch) for ch in text
    )


def _escape(ch: str) -> str:
    if ch in _ESCAPES:
        return _ESCAPES[ch]
    if not _needs_escape(ch):
        return ch
    code = ord(ch)
    if code <= 0xFF:
        return f"\\x{code:02x}"
    if code <= 0xFFFF:
        return f"\\u{code:04x}"
    return f"\\U{code:08x}"


def _text(value: bus.FieldValue) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def quote(text: str) -> str:
    """`text` as it appears after `key=`: bare if safe, else quoted and escaped."""
    if _is_plain(text):
        return text
    return '"' + "".join(_escape(ch) for ch in text) + '"'


def format_value(value: bus.FieldValue) -> str:
    return quote(_text(value))


def format_key(key: str) -> str:
    return _KEY_RE.sub("_", key.lower())[:MAX_KEY_CHARS] or "_"


def _head(event: bus.Event) -> str:
    return f"{safe_time(event.time)} {event.type.value}"


def _pairs(event: bus.Event, event_id: str | None) -> list[tuple[str, str]]:
    pairs = [("proc", _text(event.proc))]
    if event_id is not None:
        pairs.append((EVENT_ID_KEY, event_id))
    pairs += [
        (format_key(k), _text(v))
        for k, v in event.fields.items()
        if k != "proc" and k != EVENT_ID_KEY
    ]
    return pairs


def format_event(event: bus.Event, event_id: str | None = None) -> str:
    """The line for `event`, newline included, whatever its length.

    `event_id`: `<origin>:<seq>` of an event that came with one.
    """
    pairs = _pairs(event, event_id)
    return _head(event) + "".join(f" {k}={quote(v)}" for k, v in pairs) + "\n"


def encode_event(event: bus.Event, max_bytes: int, event_id: str | None = None) -> bytes:
    """The UTF-8 line for `event`, at most `max_bytes` long.

    A line that does not fit has its longest values shortened (never below
    MIN_CUT_CHARS), then its last fields dropped, and is marked `cut=true`:
    the reader still sees the event, its type and its short fields.
    """
    line = format_event(event, event_id).encode("utf-8")
    if len(line) <= max_bytes:
        return line
    head = _head(event)
    budget = max_bytes - len(f" {CUT_FIELD}\n") - len(head.encode("utf-8"))
    # No value can be longer than the whole line; keep only fields whose key fits.
    pairs: list[tuple[str, str]] = []
    minimum = 0
    for key, value in _pairs(event, event_id):
        minimum += len(key) + 4  # ' k=""'
        if minimum > budget:
            break
        pairs.append((key, value[:max_bytes]))
    sizes = [_field_size(k, v) for k, v in pairs]
    total = sum(sizes)
    for i in sorted(range(len(pairs)), key=lambda j: sizes[j], reverse=True):
        if total <= budget:
            break
        key, value = pairs[i]
        if key == EVENT_ID_KEY:
            continue  # a restarted logger reads it back: never shortened
        value = _shorten(key, value, sizes[i] - (total - budget))
        pairs[i] = (key, value)
        total -= sizes[i]
        sizes[i] = _field_size(key, value)
        total += sizes[i]
    while total > budget and len(pairs) > 1:
        pairs.pop()
        total -= sizes.pop()
    line = (head + "".join(f" {k}={quote(v)}" for k, v in pairs) + f" {CUT_FIELD}\n").encode()
    return cut_line(line, max_bytes)


MIN_CUT_CHARS = 32


def _field_size(key: str, value: str) -> int:
    return len(f" {key}={quote(value)}".encode())


def _shorten(key: str, value: str, size: int) -> str:
    """The longest prefix of `value` (at least MIN_CUT_CHARS) whose field fits `size`."""
    low, high = min(MIN_CUT_CHARS, len(value)), len(value)
    while low < high:
        mid = (low + high + 1) // 2
        if _field_size(key, value[:mid]) <= size:
            low = mid
        else:
            high = mid - 1
    return value[:low]


def safe_time(text: str) -> str:
    """The sender's timestamp if it is ISO-8601 with an offset, else now."""
    if len(text) <= MAX_TIME_CHARS and _PLAIN_ASCII_RE.match(text):
        try:
            if datetime.fromisoformat(text).tzinfo is not None:
                return text
        except ValueError:
            pass
    return bus.now_iso()


def cut_line(line: bytes, max_bytes: int) -> bytes:
    """Shorten an over-long line to `max_bytes`, marked, on a UTF-8 boundary.

    The last resort for bytes that are not a formatted event.
    """
    if len(line) <= max_bytes:
        return line
    marker = f" {CUT_FIELD}\n".encode()
    keep = line[: max(0, max_bytes - len(marker))]
    text = keep.decode("utf-8", errors="ignore")
    return text.encode("utf-8") + marker


class ParsedLine:
    """A log line read back: time, event type and fields (values as text)."""

    __slots__ = ("fields", "raw", "time", "type")

    def __init__(self, time: str, type_: str, fields: dict[str, str], raw: str) -> None:
        self.time = time
        self.type = type_
        self.fields = fields
        self.raw = raw

    def __getitem__(self, key: str) -> str:
        return self.fields[key]

    def get(self, key: str, default: str | None = None) -> str | None:
        return self.fields.get(key, default)

    def __repr__(self) -> str:
        return f"ParsedLine({self.raw.rstrip()!r})"


_UNESCAPES = {"\\": "\\", '"': '"', "n": "\n", "r": "\r", "t": "\t"}
_HEX_ESCAPES = {"x": 2, "u": 4, "U": 8}
_HEX_RE = re.compile(r"^[0-9a-fA-F]+\Z")


def parse_line(line: str) -> ParsedLine | None:
    """Inverse of format_event; None for a line that is not an event."""
    head = line.rstrip("\n").split(" ", 2)
    if len(head) < 2:
        return None
    time, type_ = head[0], head[1]
    fields: dict[str, str] = {}
    rest = head[2] if len(head) == 3 else ""
    i, n = 0, len(rest)
    while i < n:
        eq = rest.find("=", i)
        if eq < 0:
            return None
        key = rest[i:eq]
        i = eq + 1
        if i < n and rest[i] == '"':
            value, i = _read_quoted(rest, i + 1)
        else:
            end = rest.find(" ", i)
            end = n if end < 0 else end
            value, i = rest[i:end], end
        fields[key] = value
        i += 1  # the separating space
    return ParsedLine(time, type_, fields, line)


def _read_quoted(text: str, i: int) -> tuple[str, int]:
    out: list[str] = []
    while i < len(text):
        ch = text[i]
        if ch == '"':
            return "".join(out), i + 1
        if ch == "\\" and i + 1 < len(text):
            nxt = text[i + 1]
            if nxt in _UNESCAPES:
                out.append(_UNESCAPES[nxt])
                i += 2
                continue
            width = _HEX_ESCAPES.get(nxt, 0)
            digits = text[i + 2 : i + 2 + width]
            if width and len(digits) == width and _HEX_RE.match(digits):
                code = int(digits, 16)
                if code <= 0x10FFFF:
                    out.append(chr(code))
                    i += 2 + width
                    continue
        out.append(ch)
        i += 1
    return "".join(out), i
