"""Putting a simulator's answer on the wire, with any injected fault applied.

Handlers describe *what* to answer (a JSON body or a list of SSE events) as a
:data:`Reply`; :func:`deliver` owns *how*: it takes the matching fault, then
delays, replaces, truncates, corrupts or parks the response exactly as the fault
says. Keeping that in one place means every endpoint of every simulator misbehaves
the same way, and handlers stay free of fault logic.

Streams default to OpenAI's framing (``data: <json>\\n\\n`` per event, then
``data: [DONE]\\n\\n``); a simulator whose provider frames differently (Anthropic's
named events, Cohere's JSON lines, Vertex's CRLF, Bedrock's binary event stream) passes
its own ``frames``, ``terminator`` and corrupted frame, and gets the same fault handling.
A "cut" really drops the TCP connection after the chosen number of events, so the
client sees a body without its terminator (for chunked transfer encoding: no final
zero-length chunk).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import orjson
from aiohttp import web

from .faults import Fault, control_of

__all__ = ["JsonReply", "Reply", "StreamReply", "deliver", "json_response"]

_SSE_DONE = b"data: [DONE]\n\n"
#: What a corrupted SSE event carries: a ``data:`` line whose payload is not JSON.
_MALFORMED_EVENT = b'data: {"id": "chatcmpl-sim-malformed", "choices": [\n\n'


@dataclass(frozen=True, slots=True)
class JsonReply:
    status: int
    body: object
    headers: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class StreamReply:
    """A streamed answer: JSON ``events`` in OpenAI's framing, or provider ``frames``."""

    events: Sequence[object] = ()
    headers: Mapping[str, str] = field(default_factory=dict)
    frames: Sequence[bytes] | None = None
    """Already framed in the provider's own way; replaces ``events``."""
    terminator: bytes | None = _SSE_DONE
    """Written after the last frame (None: the stream just ends)."""
    malformed: bytes | Callable[[bytes], bytes] = _MALFORMED_EVENT
    """What a ``malformed`` fault adds after the first frame (or a function of that frame)."""
    content_type: str = "text/event-stream; charset=utf-8"
    in_band_error: Callable[[Fault], bytes | None] | None = None
    """For providers that report errors inside the stream: the frame a fault turns into
    (None: the fault is not an in-band one). It replaces the rest of the stream."""
    in_band_after: int = 1

    def encoded(self) -> Sequence[bytes]:
        if self.frames is not None:
            return self.frames
        return [b"data: " + orjson.dumps(event) + b"\n\n" for event in self.events]

    def in_band(self, fault: Fault | None) -> bytes | None:
        if fault is None or self.in_band_error is None:
            return None
        return self.in_band_error(fault)


Reply = JsonReply | StreamReply


def json_response(
    status: int, body: object, headers: Mapping[str, str] | None = None
) -> web.Response:
    """A JSON response serialised with orjson (used for errors raised before faults)."""
    resp = web.Response(status=status, body=orjson.dumps(body), headers=headers)
    resp.content_type = "application/json"
    return resp


def _cut(request: web.Request, resp: web.StreamResponse) -> web.StreamResponse:
    """Drop the connection: buffered bytes are flushed, then the socket is closed
    without the body's terminator. aiohttp's own ``write_eof`` afterwards meets a
    closing transport and gives up quietly."""
    resp.force_close()
    if request.transport is not None:
        request.transport.close()
    return resp


def _padded(frame: bytes, pad: int) -> bytes:
    """``frame`` with ``pad`` spaces before its line ends: still the same event, only bigger."""
    body = frame.rstrip(b"\r\n")
    return body + b" " * pad + frame[len(body) :]


async def _drip(resp: web.StreamResponse, data: bytes, delay: float) -> None:
    """Write ``data`` a byte at a time, ``delay`` apart (a slowloris upstream)."""
    for i in range(len(data)):
        await resp.write(data[i : i + 1])
        await asyncio.sleep(delay)


async def _send_json(
    request: web.Request, reply: JsonReply, fault: Fault | None, model: str | None
) -> web.StreamResponse:
    payload = orjson.dumps(reply.body)
    if fault is not None and fault.malformed:
        payload = payload[:-1]  # valid JSON minus its closing bracket: not JSON any more
    if fault is not None and fault.pad_bytes:
        payload = _padded(payload, fault.pad_bytes)
    if fault is not None and fault.gate is not None:
        control = control_of(request.app)
        log = control.stream_started(request.path, model, 0)  # so a test sees it parked
        try:
            await control.gate(fault.gate).wait()
        except asyncio.CancelledError:  # served with handler_cancellation: the client left
            log["state"] = "client_gone"
            raise
        log["state"] = "done"
    headers = {**reply.headers, **(fault.headers if fault else {})}
    content_type = (fault.content_type if fault else None) or "application/json"
    if fault is None or (fault.stream_cut_after is None and not fault.drip_ms):
        whole = web.Response(status=reply.status, body=payload, headers=headers)
        whole.headers["Content-Type"] = content_type
        return whole
    resp = web.StreamResponse(status=reply.status, headers=headers)
    resp.headers["Content-Type"] = content_type
    resp.content_length = len(payload)
    await resp.prepare(request)
    if fault.drip_ms:
        with contextlib.suppress(ConnectionError):
            await _drip(resp, payload, fault.drip_ms / 1000)
            await resp.write_eof()
        return resp
    # A non-streaming "cut": announce the full length, send half, hang up.
    await resp.write(payload[: len(payload) // 2])
    return _cut(request, resp)


async def _send_stream(
    request: web.Request, reply: StreamReply, fault: Fault | None, model: str | None
) -> web.StreamResponse:
    headers = {
        "Content-Type": (fault.content_type if fault else None) or reply.content_type,
        "Cache-Control": "no-cache",
        **reply.headers,
        **(fault.headers if fault else {}),
    }
    resp = web.StreamResponse(status=200, headers=headers)
    await resp.prepare(request)
    control = control_of(request.app)
    gate = control.gate(fault.gate) if fault and fault.gate else None
    cut_after = fault.stream_cut_after if fault else None
    delay = fault.chunk_delay_ms / 1000 if fault else 0.0
    in_band = reply.in_band(fault)
    frames = list(reply.encoded())
    if fault is not None and fault.pad_bytes and frames:
        frames[0] = _padded(frames[0], fault.pad_bytes)
    drip = fault.drip_ms / 1000 if fault else 0.0
    log = control.stream_started(request.path, model, len(frames))

    async def write(data: bytes) -> None:
        if drip:
            await _drip(resp, data, drip)
        else:
            await resp.write(data)  # blocks while the client does not read
        log["sent"] += 1
        log["bytes"] += len(data)

    try:
        for sent, frame in enumerate(frames):
            if gate is not None and fault is not None and sent == fault.gate_after:
                await gate.wait()
            if delay and sent:
                await asyncio.sleep(delay)
            if cut_after is not None and sent == cut_after:
                log["state"] = "cut"
                return _cut(request, resp)
            if in_band is not None and sent == reply.in_band_after:
                await write(in_band)
                break
            await write(frame)
            if sent == 0 and fault is not None and fault.malformed:
                if delay:  # apart from the first event, so it cannot arrive in its read
                    await asyncio.sleep(delay)
                bad = reply.malformed
                await resp.write(bad(frame) if callable(bad) else bad)
        if gate is not None:  # gate_after >= number of events: park before the end
            await gate.wait()
        if cut_after is not None:
            log["state"] = "cut"
            return _cut(request, resp)
        if reply.terminator is not None and in_band is None:
            await resp.write(reply.terminator)
        await resp.write_eof()
        log["state"] = "done"
    except ConnectionError:
        log["state"] = "client_gone"  # the client went away mid-stream; nothing to tell it
    except asyncio.CancelledError:  # served with handler_cancellation: the client went away
        log["state"] = "client_gone"
        raise
    return resp


async def deliver(
    request: web.Request, reply: Reply | Callable[[], Reply], *, model: str | None
) -> web.StreamResponse:
    """Send ``reply``, or what the first fault matching ``model`` turns it into.

    ``reply`` may be a callable, invoked only when no fault replaces the answer, for
    answers with side effects (the Entra simulator issues a token only if sent).
    """
    control = control_of(request.app)
    fault = control.take_fault(model)
    if fault is not None and fault.latency_ms:
        await asyncio.sleep(fault.latency_ms / 1000)
    if fault is not None and fault.hang_up:
        return _cut(request, web.Response(status=500))
    in_band = isinstance(reply, StreamReply) and reply.in_band(fault) is not None
    if fault is not None and fault.overrides_response and not in_band:
        status = fault.status if fault.status is not None else 200
        body = (
            fault.body
            if fault.body is not None
            else control.error_factory(request, status, model, fault.headers)
        )
        reply = JsonReply(status=status, body=body)
    elif callable(reply):
        reply = reply()
    if isinstance(reply, StreamReply):
        return await _send_stream(request, reply, fault, model)
    return await _send_json(request, reply, fault, model)
