"""Server-sent events: the only SSE code in servegate.

The decoder is sans-IO: feed it bytes as they arrive (any split, even one byte at a time)
and it returns the complete events so far, keeping the partial tail for the next call.
The encoder emits ``data:`` lines only, because MLflow's ``predict_stream`` raises on any
other field (``event:``, ``id:``, ``retry:`` or a ``:`` comment).
"""

from __future__ import annotations

from typing import NamedTuple

DONE = b"[DONE]"
DONE_FRAME = b"data: [DONE]\n\n"


class SSEEvent(NamedTuple):
    """One dispatched event. ``data`` joins multi-line data with ``\\n``, as the spec says.

    A named tuple, not a dataclass: one is made per streamed event, and a tuple is made in
    half the time of a frozen dataclass."""

    data: bytes
    event: str | None = None
    id: str | None = None


class SSEDecoder:
    """Incremental SSE parser (WHATWG event-stream rules, minus reconnection)."""

    def __init__(self) -> None:
        self._buffer = b""
        self._data: list[bytes] = []
        self._event: str | None = None
        self._id: str | None = None
        self._has_fields = False

    def decode(self, chunk: bytes) -> list[SSEEvent]:
        self._buffer += chunk
        if not self._has_fields and b"\r" not in self._buffer:
            return self._decode_blocks()
        events: list[SSEEvent] = []
        while True:
            line, sep, rest = _split_line(self._buffer)
            if not sep:
                break
            self._buffer = rest
            event = self._take_line(line)
            if event is not None:
                events.append(event)
        return events

    def _decode_blocks(self) -> list[SSEEvent]:
        """The common case (LF line ends, nothing pending): split whole events at blank
        lines, and take single-line ``data:`` events without the line-by-line parser."""
        *blocks, self._buffer = self._buffer.split(b"\n\n")
        events: list[SSEEvent] = []
        for block in blocks:
            if block.startswith(b"data: ") and b"\n" not in block:
                events.append(SSEEvent(block[6:]))
                continue
            for line in block.split(b"\n"):
                self._take_line(line)
            event = self._dispatch()
            if event is not None:
                events.append(event)
        return events

    def flush(self) -> list[SSEEvent]:
        """End of body: a last event without its blank line still counts."""
        events: list[SSEEvent] = []
        if self._buffer:
            line, self._buffer = self._buffer, b""
            self._take_line(line)
        event = self._dispatch()
        if event is not None:
            events.append(event)
        return events

    def _take_line(self, line: bytes) -> SSEEvent | None:
        if not line:
            return self._dispatch()
        if line.startswith(b":"):
            return None
        name, _, value = line.partition(b":")
        if value.startswith(b" "):
            value = value[1:]
        self._has_fields = True
        if name == b"data":
            self._data.append(value)
        elif name == b"event":
            self._event = value.decode("utf-8", "replace")
        elif name == b"id":
            self._id = value.decode("utf-8", "replace")
        return None

    def _dispatch(self) -> SSEEvent | None:
        if not self._has_fields:
            return None
        event = (
            SSEEvent(data=b"\n".join(self._data), event=self._event, id=self._id)
            if self._data
            else None
        )
        self._data, self._event, self._id, self._has_fields = [], None, None, False
        return event


def _split_line(buffer: bytes) -> tuple[bytes, bool, bytes]:
    """Split off the first line ending in CRLF, LF or CR (a CR at the end may be half a CRLF)."""
    lf = buffer.find(b"\n")
    cr = buffer.find(b"\r")
    if cr == -1 or (lf != -1 and lf < cr):
        if lf == -1:
            return buffer, False, b""
        return buffer[:lf], True, buffer[lf + 1 :]
    if cr == len(buffer) - 1:
        return buffer, False, b""  # wait: the next byte may be the LF of a CRLF
    if buffer[cr + 1 : cr + 2] == b"\n":
        return buffer[:cr], True, buffer[cr + 2 :]
    return buffer[:cr], True, buffer[cr + 1 :]


def encode_data(payload: bytes) -> bytes:
    """One SSE event carrying ``payload`` as ``data:`` lines (JSON from orjson has no newlines)."""
    if b"\n" not in payload:
        return b"data: " + payload + b"\n\n"
    return b"".join(b"data: " + line + b"\n" for line in payload.split(b"\n")) + b"\n"
