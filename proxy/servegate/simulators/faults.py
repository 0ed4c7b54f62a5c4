"""Fault injection and request recording shared by every provider simulator.

Tests of a gateway need two things from a fake upstream beyond happy-path answers:
to make it misbehave on cue (rate limits, slowness, broken streams, garbage) and to
see exactly what the gateway sent it. Every simulator app therefore mounts the same
control API under ``/_sim/`` (never part of any provider's real surface):

``POST /_sim/faults``
    Register a fault; the body is a :class:`Fault` spec (see :func:`parse_fault`).
    Answers ``{"id": ...}``. ``GET`` lists the pending faults; ``DELETE`` clears
    them and every gate (waiting streams are released first so none hangs).
``POST /_sim/gates/{name}/open``
    Open a gate. A gate is an :class:`asyncio.Event`; once open it stays open until
    ``DELETE /_sim/faults``, so opening before the request arrives is fine.
``GET /_sim/requests`` / ``DELETE /_sim/requests``
    Every provider request received (not ``/_sim`` ones), oldest first, as
    ``{"method", "path", "query", "headers", "json", "form"}``. Header names are
    lower-cased (HTTP/2 style) so lookups do not depend on the client's casing;
    ``json`` is the parsed body or null, ``form`` the url-encoded form or null.
``GET /_sim/streams`` / ``DELETE /_sim/streams``
    Every streamed answer, oldest first, as ``{"path", "model", "events", "sent",
    "bytes", "state"}``: how many events it has and how many (and bytes) were written so
    far, and ``state``: ``streaming``, ``done``, ``cut`` (a ``stream_cut_after`` fault) or
    ``client_gone`` (the client closed the connection first). A write blocks while the
    client does not read (TCP backpressure), so ``sent`` shows how far a slow client let
    the stream get. A client that goes away is noticed at the next write, or at once when
    the app is served with ``handler_cancellation=True`` (as a real provider would).
    A JSON answer parked on a gate is listed too (``events`` 0, ``state`` ``streaming``
    while it waits), so a test can see a client give up on it.

State lives on the app under a typed :class:`aiohttp.web.AppKey`, never in globals,
so any number of simulators can run in one process.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final, TypedDict
from urllib.parse import parse_qsl

import orjson
from aiohttp import web

__all__ = [
    "CONTROL_PREFIX",
    "ErrorFactory",
    "Fault",
    "FaultSpecError",
    "RecordedRequest",
    "SimulatorControl",
    "StreamRecord",
    "control_of",
    "install_control",
    "parse_fault",
]

CONTROL_PREFIX: Final = "/_sim/"

#: Builds the provider's realistic error body for a fault that names only a status:
#: ``(request, status, model, fault_headers) -> body`` (headers let a message quote
#: the injected ``Retry-After``).
ErrorFactory = Callable[[web.Request, int, "str | None", Mapping[str, str]], object]


class FaultSpecError(ValueError):
    """A ``POST /_sim/faults`` body that does not describe a valid fault."""


@dataclass(slots=True)
class Fault:
    """What to do to matching requests instead of (or on top of) answering normally.

    Faults apply to requests that passed auth and validation; the oldest matching
    fault wins.

    * ``model``: the request's model (OpenAI-style apps), deployment (Azure) or
      client id (Entra); None matches every request.
    * ``times``: how many requests it still applies to (None: unlimited).
    * ``status`` / ``body``: when ``status`` is an error (>= 400) or ``body`` is
      given, the answer is replaced by ``body`` (default: the provider's own error
      for that status) with that status (default 200).
    * ``headers``: added to the response (e.g. ``Retry-After``).
    * ``latency_ms``: delay before the response headers.
    * ``stream_cut_after``: a stream sends that many events, then the connection is
      dropped without ``[DONE]`` or the chunked terminator; a JSON answer announces
      its full ``Content-Length``, sends half, and drops the connection.
    * ``malformed``: a JSON answer loses its closing bracket; a stream gets an extra
      ``data:`` line that is not JSON right after its first event (``chunk_delay_ms``
      after it, when set).
    * ``gate`` / ``gate_after``: a stream sends ``gate_after`` events, then waits for
      the gate to open; a JSON answer waits before its headers.
    * ``chunk_delay_ms``: a stream waits this long before each event after the first
      (a model generating slowly), so streams stay in flight for a while.
    * ``content_type``: the answer is sent with this ``Content-Type`` instead (an HTML
      error page from a proxy, a JSON answer to a stream request).
    * ``drip_ms``: a slow-drip (slowloris) upstream: the answer's bytes go out one at a
      time, this long apart, after the headers.
    * ``pad_bytes``: a JSON answer gets this many spaces after it (still valid JSON); a
      stream's first event gets them inside its ``data:`` line (an oversized event).
    * ``hang_up``: the connection is closed at once, before any response (a crash, or an
      idle connection the server dropped just as it was reused).
    """

    id: str
    model: str | None = None
    status: int | None = None
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    latency_ms: float = 0.0
    stream_cut_after: int | None = None
    malformed: bool = False
    gate: str | None = None
    gate_after: int = 0
    chunk_delay_ms: float = 0.0
    content_type: str | None = None
    drip_ms: float = 0.0
    pad_bytes: int = 0
    hang_up: bool = False
    times: int | None = None

    @property
    def overrides_response(self) -> bool:
        return (self.status is not None and self.status >= 400) or self.body is not None

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "model": self.model,
            "status": self.status,
            "body": self.body,
            "headers": self.headers,
            "latency_ms": self.latency_ms,
            "stream_cut_after": self.stream_cut_after,
            "malformed": self.malformed,
            "gate": self.gate,
            "gate_after": self.gate_after,
            "chunk_delay_ms": self.chunk_delay_ms,
            "content_type": self.content_type,
            "drip_ms": self.drip_ms,
            "pad_bytes": self.pad_bytes,
            "hang_up": self.hang_up,
            "times": self.times,
        }


_FAULT_KEYS = frozenset(Fault.__dataclass_fields__) - {"id"}


def _int_field(spec: Mapping[str, Any], key: str, *, minimum: int) -> int | None:
    value = spec.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise FaultSpecError(f"'{key}' must be an integer >= {minimum}")
    return value


def _str_field(spec: Mapping[str, Any], key: str) -> str | None:
    value = spec.get(key)
    if value is not None and (not isinstance(value, str) or not value):
        raise FaultSpecError(f"'{key}' must be a non-empty string")
    return value


def _ms_field(spec: Mapping[str, Any], key: str) -> float:
    value = spec.get(key, 0)
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
        raise FaultSpecError(f"'{key}' must be a number >= 0")
    return float(value)


def parse_fault(spec: object, fault_id: str) -> Fault:
    """Validate a fault spec (a decoded JSON object); unknown keys are rejected so a
    typo never silently turns into "no fault"."""
    if not isinstance(spec, dict):
        raise FaultSpecError("the fault must be a JSON object")
    unknown = sorted(set(spec) - _FAULT_KEYS)
    if unknown:
        raise FaultSpecError(f"unknown fault field(s): {', '.join(unknown)}")
    status = _int_field(spec, "status", minimum=100)
    if status is not None and status > 599:
        raise FaultSpecError("'status' must be an HTTP status (100-599)")
    headers = spec.get("headers") or {}
    if not isinstance(headers, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in headers.items()
    ):
        raise FaultSpecError("'headers' must be an object of string values")
    latency = _ms_field(spec, "latency_ms")
    chunk_delay = _ms_field(spec, "chunk_delay_ms")
    malformed = spec.get("malformed", False)
    hang_up = spec.get("hang_up", False)
    if not isinstance(malformed, bool) or not isinstance(hang_up, bool):
        raise FaultSpecError("'malformed' and 'hang_up' must be booleans")
    gate = _str_field(spec, "gate")
    gate_after = _int_field(spec, "gate_after", minimum=0)
    if gate_after is not None and gate is None:
        raise FaultSpecError("'gate_after' needs 'gate'")
    return Fault(
        id=fault_id,
        model=_str_field(spec, "model"),
        status=status,
        body=spec.get("body"),
        headers=dict(headers),
        latency_ms=latency,
        stream_cut_after=_int_field(spec, "stream_cut_after", minimum=0),
        malformed=malformed,
        gate=gate,
        gate_after=gate_after or 0,
        chunk_delay_ms=chunk_delay,
        content_type=_str_field(spec, "content_type"),
        drip_ms=_ms_field(spec, "drip_ms"),
        pad_bytes=_int_field(spec, "pad_bytes", minimum=0) or 0,
        hang_up=hang_up,
        times=_int_field(spec, "times", minimum=1),
    )


class RecordedRequest(TypedDict):
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    json: Any
    form: dict[str, str] | None


class StreamRecord(TypedDict):
    path: str
    model: str | None
    events: int
    sent: int
    bytes: int
    state: str


class SimulatorControl:
    """Per-app fault queue, gates, request log and stream log."""

    def __init__(self, error_factory: ErrorFactory) -> None:
        self.error_factory = error_factory
        self._faults: list[Fault] = []
        self._gates: dict[str, asyncio.Event] = {}
        self._requests: list[RecordedRequest] = []
        self._streams: list[StreamRecord] = []
        self._ids = itertools.count(1)

    def add_fault(self, spec: object) -> Fault:
        fault = parse_fault(spec, f"fault-{next(self._ids)}")
        self._faults.append(fault)
        return fault

    def faults(self) -> list[Fault]:
        return list(self._faults)

    def take_fault(self, model: str | None) -> Fault | None:
        """The oldest fault matching ``model``, consuming one of its ``times``."""
        for fault in self._faults:
            if fault.model is None or fault.model == model:
                if fault.times is not None:
                    fault.times -= 1
                    if fault.times == 0:
                        self._faults.remove(fault)
                return fault
        return None

    def gate(self, name: str) -> asyncio.Event:
        return self._gates.setdefault(name, asyncio.Event())

    def open_gate(self, name: str) -> None:
        self.gate(name).set()

    def clear_faults(self) -> int:
        """Drop all faults and gates; streams parked on a gate are released first."""
        for event in self._gates.values():
            event.set()
        self._gates.clear()
        count = len(self._faults)
        self._faults.clear()
        return count

    def release_all_gates(self) -> None:
        for event in self._gates.values():
            event.set()

    def record(self, entry: RecordedRequest) -> None:
        self._requests.append(entry)

    def requests(self) -> list[RecordedRequest]:
        return list(self._requests)

    def clear_requests(self) -> None:
        self._requests.clear()

    def stream_started(self, path: str, model: str | None, events: int) -> StreamRecord:
        """A new entry in the stream log, for the sender to update as it goes."""
        entry = StreamRecord(
            path=path, model=model, events=events, sent=0, bytes=0, state="streaming"
        )
        self._streams.append(entry)
        return entry

    def streams(self) -> list[StreamRecord]:
        return [StreamRecord(**entry) for entry in self._streams]

    def clear_streams(self) -> None:
        self._streams.clear()


_CONTROL_KEY: Final = web.AppKey("servegate_simulator_control", SimulatorControl)


def control_of(app: web.Application) -> SimulatorControl:
    """The control state of a simulator app built by this package."""
    return app[_CONTROL_KEY]


def _json(body: object, status: int = 200) -> web.Response:
    return web.Response(status=status, body=orjson.dumps(body), content_type="application/json")


async def _recorded(request: web.Request) -> RecordedRequest:
    raw = await request.read()  # aiohttp caches the body, so handlers can read it again
    parsed: Any = None
    form: dict[str, str] | None = None
    if raw:
        if request.content_type == "application/x-www-form-urlencoded":
            form = dict(parse_qsl(raw.decode("utf-8", "replace"), keep_blank_values=True))
        else:
            try:
                parsed = orjson.loads(raw)
            except orjson.JSONDecodeError:
                parsed = None
    return RecordedRequest(
        method=request.method,
        path=request.path,
        query=dict(request.query),
        headers={name.lower(): value for name, value in request.headers.items()},
        json=parsed,
        form=form,
    )


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def _record_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    if not request.path.startswith(CONTROL_PREFIX):
        control_of(request.app).record(await _recorded(request))
    return await handler(request)


async def _post_fault(request: web.Request) -> web.Response:
    try:
        spec = orjson.loads(await request.read())
        fault = control_of(request.app).add_fault(spec)
    except (orjson.JSONDecodeError, FaultSpecError) as exc:
        return _json({"error": str(exc)}, status=400)
    return _json({"id": fault.id})


async def _get_faults(request: web.Request) -> web.Response:
    return _json({"faults": [f.to_json() for f in control_of(request.app).faults()]})


async def _delete_faults(request: web.Request) -> web.Response:
    return _json({"cleared": control_of(request.app).clear_faults()})


async def _open_gate(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    control_of(request.app).open_gate(name)
    return _json({"gate": name, "open": True})


async def _get_requests(request: web.Request) -> web.Response:
    return _json({"requests": control_of(request.app).requests()})


async def _delete_requests(request: web.Request) -> web.Response:
    control_of(request.app).clear_requests()
    return _json({"cleared": True})


async def _get_streams(request: web.Request) -> web.Response:
    return _json({"streams": control_of(request.app).streams()})


async def _delete_streams(request: web.Request) -> web.Response:
    control_of(request.app).clear_streams()
    return _json({"cleared": True})


async def _release_gates_on_shutdown(app: web.Application) -> None:
    # A stream parked on a gate would otherwise hold shutdown for its full timeout.
    control_of(app).release_all_gates()


def install_control(app: web.Application, *, error_factory: ErrorFactory) -> SimulatorControl:
    """Attach the ``/_sim`` control API and request recording to ``app``.

    Must run before the app is frozen (i.e. while building it). ``error_factory``
    supplies the provider's own error body for a fault that only names a status.
    """
    control = SimulatorControl(error_factory)
    app[_CONTROL_KEY] = control
    app.middlewares.append(_record_middleware)
    app.router.add_post("/_sim/faults", _post_fault)
    app.router.add_get("/_sim/faults", _get_faults)
    app.router.add_delete("/_sim/faults", _delete_faults)
    app.router.add_post("/_sim/gates/{name}/open", _open_gate)
    app.router.add_get("/_sim/requests", _get_requests)
    app.router.add_delete("/_sim/requests", _delete_requests)
    app.router.add_get("/_sim/streams", _get_streams)
    app.router.add_delete("/_sim/streams", _delete_streams)
    app.on_shutdown.append(_release_gates_on_shutdown)
    return control
