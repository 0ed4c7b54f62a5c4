"""The SSE decoder gives the same events however the bytes are split."""

from __future__ import annotations

import pytest

from servegate.streaming.sse import SSEDecoder, SSEEvent, encode_data

RAW = (
    b": keep-alive comment\n"
    b'data: {"a": 1}\n\n'
    b"event: message\r\nid: 7\r\ndata: line one\r\ndata: line two\r\n\r\n"
    b'data: {"b": 2}\r\r'
    b"retry: 100\n\n"
    b"data: [DONE]\n\n"
)
EVENTS = [
    SSEEvent(b'{"a": 1}'),
    SSEEvent(b"line one\nline two", event="message", id="7"),
    SSEEvent(b'{"b": 2}'),
    SSEEvent(b"[DONE]"),
]


def decode_in_pieces(pieces: list[bytes]) -> list[SSEEvent]:
    decoder = SSEDecoder()
    events: list[SSEEvent] = []
    for piece in pieces:
        events += decoder.decode(piece)
    return events + decoder.flush()


@pytest.mark.parametrize("cut", range(len(RAW) + 1))
def test_any_single_split_gives_the_same_events(cut: int) -> None:
    assert decode_in_pieces([RAW[:cut], RAW[cut:]]) == EVENTS


def test_one_byte_at_a_time() -> None:
    assert decode_in_pieces([RAW[i : i + 1] for i in range(len(RAW))]) == EVENTS


def test_last_event_without_blank_line_is_flushed() -> None:
    assert decode_in_pieces([b"data: tail"]) == [SSEEvent(b"tail")]


def test_encoder_emits_data_lines_only() -> None:
    assert encode_data(b'{"x":1}') == b'data: {"x":1}\n\n'
    assert encode_data(b"a\nb") == b"data: a\ndata: b\n\n"
    assert decode_in_pieces([encode_data(b"a\nb")]) == [SSEEvent(b"a\nb")]


LF_ONLY = (
    b": comment\n\n"
    b'data: {"a": 1}\n\n'
    b"event: message\nid: 7\ndata: line one\ndata: line two\n\n"
    b"data:no-space\n\n"
    b"\n\n"
    b"retry: 5\n\n"
    b"data: [DONE]\n\n"
)
LF_EVENTS = [
    SSEEvent(b'{"a": 1}'),
    SSEEvent(b"line one\nline two", event="message", id="7"),
    SSEEvent(b"no-space"),
    SSEEvent(b"[DONE]"),
]


@pytest.mark.parametrize("cut", range(len(LF_ONLY) + 1))
def test_lf_only_streams_take_the_fast_path_with_the_same_events(cut: int) -> None:
    assert decode_in_pieces([LF_ONLY[:cut], LF_ONLY[cut:]]) == LF_EVENTS
    assert decode_in_pieces([LF_ONLY[i : i + 1] for i in range(len(LF_ONLY))]) == LF_EVENTS
