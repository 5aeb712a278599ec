"""One event -> one log line, with nothing a peer can use to forge a line.

`<ISO-8601 time with offset> <EVENT> key=value ...`. A value with spaces,
quotes, '=', backslashes or nothing at all is double-quoted; control
characters (newlines included) are escaped, so a hostile AE title or UID
can never split a line or fake another event.
"""

from __future__ import annotations

import re

from storscp import bus

_KEY_RE = re.compile(r"[^a-z0-9_]")
_PLAIN_RE = re.compile(r'^[^\s"\\=\x00-\x1f\x7f-\x9f]+$')
_ESCAPES = {"\\": "\\\\", '"': '\\"', "\n": "\\n", "\r": "\\r", "\t": "\\t"}
CUT_MARKER = " [cut]"


def format_value(value: bus.FieldValue) -> str:
    if value is None:
        return '""'
    if isinstance(value, bool):
        return "true" if value else "false"
    text = str(value)
    if _PLAIN_RE.match(text):
        return text
    return '"' + "".join(_escape(ch) for ch in text) + '"'


def _escape(ch: str) -> str:
    if ch in _ESCAPES:
        return _ESCAPES[ch]
    code = ord(ch)
    if code < 0x20 or 0x7F <= code <= 0x9F or ch in "\u2028\u2029":
        return f"\\x{code:02x}" if code <= 0xFF else f"\\u{code:04x}"
    return ch


def format_key(key: str) -> str:
    return _KEY_RE.sub("_", key.lower()) or "_"


def format_event(event: bus.Event) -> str:
    """The line for `event`, newline included."""
    parts = [_safe_time(event.time), event.type.value, f"proc={format_value(event.proc)}"]
    for key, value in event.fields.items():
        if key == "proc":
            continue
        parts.append(f"{format_key(key)}={format_value(value)}")
    return " ".join(parts) + "\n"


def _safe_time(text: str) -> str:
    """The sender's timestamp, unless it could break the line."""
    if _PLAIN_RE.match(text):
        return text
    return bus.now_iso()


def cut_line(line: bytes, max_bytes: int) -> bytes:
    """Shorten an over-long line to `max_bytes`, marked, on a UTF-8 boundary."""
    if len(line) <= max_bytes:
        return line
    marker = CUT_MARKER.encode() + b"\n"
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
            if nxt == "x" and i + 3 < len(text):
                out.append(chr(int(text[i + 2 : i + 4], 16)))
                i += 4
                continue
            if nxt == "u" and i + 5 < len(text):
                out.append(chr(int(text[i + 2 : i + 6], 16)))
                i += 6
                continue
        out.append(ch)
        i += 1
    return "".join(out), i
