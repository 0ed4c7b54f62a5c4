"""The translator interface every provider unit implements.

A ``Provider`` is built once per served entity when a config loads (never per request) and
holds that entity's upstream address and resolved credentials. Its converters are pure:
``build_request`` turns a validated query into the upstream HTTP request,
``parse_response`` turns the upstream body into the OpenAI-shaped response, ``error`` wraps
an upstream error, and ``stream`` returns a fresh per-request ``StreamTranslator`` that
holds the parsing state of one streamed response. Only ``authorize`` may do I/O (fetching
an OAuth token), which is why it is the one async method.
"""

from __future__ import annotations

import functools
import logging
import struct
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Any, ClassVar, Concatenate, ParamSpec, TypeVar

import orjson

from servegate.canonical.requests import QueryRequest
from servegate.canonical.usage import Usage
from servegate.ingress.errors import (
    BadRequest,
    GatewayError,
    UpstreamError,
    UpstreamUnavailable,
    parse_retry_after,
)
from servegate.spec.endpoint import ExternalModel, Task

REDACTED = "[REDACTED]"

log = logging.getLogger(__name__)
P = ParamSpec("P")
R = TypeVar("R")
S = TypeVar("S")
# What reading data of an unexpected shape raises: a field of another type (``.get`` on a
# list, ``int(None)``), a missing key or index, a number out of range.
SHAPE_ERRORS = (LookupError, AttributeError, TypeError, ValueError, ArithmeticError, struct.error)


def reads_upstream(method: Callable[Concatenate[S, P], R]) -> Callable[Concatenate[S, P], R]:
    """Mark a converter of what a provider sent (a body, stream bytes, an event).

    The converters read provider bodies the way the provider documents them. A body of
    another shape (a field of another type, a missing object, a number out of range) makes
    them raise a Python error; here it becomes a 502 ``UpstreamUnavailable`` naming the
    provider, as the README promises for "provider returned garbage", instead of a 500
    that would blame the gateway. The trace is logged, so a converter bug stays visible.
    """

    @functools.wraps(method)
    def guarded(self: S, /, *args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return method(self, *args, **kwargs)
        except SHAPE_ERRORS:
            name = provider_name(self)
            log.warning("provider %s sent a body of unknown shape", name, exc_info=True)
            raise UpstreamUnavailable(
                f"Provider '{name}' returned a response of unknown shape."
            ) from None

    return guarded


def provider_name(converter: object) -> str:
    """The provider's name, from a Provider or from a stream translator holding one."""
    name = getattr(converter, "name", None)
    if not isinstance(name, str):
        name = getattr(getattr(converter, "_provider", None), "name", None)
    return name if isinstance(name, str) else "upstream"


@dataclass(frozen=True, slots=True)
class UpstreamRequest:
    url: str
    headers: Mapping[str, str]
    body: bytes
    method: str = "POST"

    def with_headers(self, extra: Mapping[str, str]) -> UpstreamRequest:
        return replace(self, headers={**self.headers, **extra})


@dataclass(frozen=True, slots=True)
class Translated:
    """A complete (non-streamed) response, already in the client's OpenAI shape."""

    body: dict[str, Any] | None
    """The answer as data (None when ``raw`` carries it unread)."""
    usage: Usage | None
    raw: bytes | None = None
    """The bytes sent to the client: the upstream's own when they already are the answer
    (OpenAI-format passthrough), else ``body`` encoded here, so a body that cannot be
    encoded (nested too deep for orjson) fails inside the converter, as a 502."""

    def __post_init__(self) -> None:
        if self.raw is None and self.body is not None:
            object.__setattr__(self, "raw", orjson.dumps(self.body))


class StreamTranslator(ABC):
    """Per-request streaming state: upstream bytes in, OpenAI-shaped SSE frames out.

    ``feed`` takes bytes split anywhere and returns whole ``data:`` frames; ``finish`` runs at
    the end of the upstream body and raises if the stream ended early. The caller writes the
    terminating ``data: [DONE]`` itself, after ``finish`` succeeds.
    """

    usage: Usage | None = None
    content_types: ClassVar[frozenset[str]] = frozenset({"text/event-stream"})
    """The media types the provider streams this format in; a 200 of any other type (a
    whole JSON answer from a server that ignored ``stream``, an HTML page from a proxy)
    is refused with a 502 before anything is read."""

    @abstractmethod
    def feed(self, chunk: bytes) -> list[bytes]: ...

    @abstractmethod
    def finish(self) -> list[bytes]: ...


class Provider(ABC):
    """One served entity's upstream: its address, credentials and converters."""

    name: ClassVar[str]
    """The ``provider`` value from the spec, used in wrapped errors."""
    tasks: ClassVar[frozenset[Task]] = frozenset(Task)
    unsupported_params: ClassVar[frozenset[str]] = frozenset()
    """Parameters the upstream API rejects: answered with a 400 naming them, before any call."""

    def __init__(self, model: ExternalModel, secrets: Mapping[str, str]) -> None:
        self.model = model
        self._secret_values: tuple[str, ...] = ()
        self.add_secret_values(secrets.values())

    def add_secret_values(self, values: Iterable[str]) -> None:
        """More values to scrub from upstream errors: parts of a credential that a provider
        could echo on their own (a service-account key's PEM and key id)."""
        merged = {*self._secret_values, *(v for v in values if v)}
        self._secret_values = tuple(sorted(merged, key=len, reverse=True))

    def live_secrets(self) -> tuple[str, ...]:
        """Credentials fetched at request time (OAuth access tokens), scrubbed like the
        configured ones; the upstream sees them, so it can echo them."""
        return ()

    def check(self, query: QueryRequest) -> None:
        if query.task not in self.tasks:
            raise BadRequest(f"Provider '{self.name}' does not support the task {query.task}.")
        for param in self.unsupported_params:
            if param in query.payload:
                raise BadRequest(
                    f"Parameter '{param}' is not supported by provider '{self.name}'; "
                    "remove it from the request."
                )

    @abstractmethod
    def build_request(self, query: QueryRequest) -> UpstreamRequest: ...

    async def authorize(self, request: UpstreamRequest) -> UpstreamRequest:
        """Add credentials that must be fetched at request time; static ones are set in build."""
        return request

    @abstractmethod
    def parse_response(self, query: QueryRequest, body: bytes) -> Translated: ...

    def complete_usage(
        self, query: QueryRequest, translated: Translated, headers: Mapping[str, str]
    ) -> Translated:
        """A unary answer whose body carries no token counts, completed from the response
        headers where a provider sends them there instead (Bedrock's InvokeModel does).
        The default: the answer as it is."""
        return translated

    @abstractmethod
    def stream(self, query: QueryRequest) -> StreamTranslator: ...

    def error(self, status: int, body: bytes, headers: Mapping[str, str]) -> GatewayError:
        """Wrap an upstream error body, with this provider's secrets scrubbed out of it."""
        decoded = self.decode_error_body(body)
        status = self.error_status(status, decoded, headers)
        retry_after = parse_retry_after(headers)
        if retry_after is None and status in (429, 503):
            retry_after = 1
        return UpstreamError(self.name, status, decoded, retry_after=retry_after)

    def error_status(self, status: int, body: Any, headers: Mapping[str, str]) -> int:
        """The status to answer with; providers override it to map their own signals
        (Anthropic's 529 "overloaded", a Bedrock ThrottlingException) onto 429."""
        return status

    def decode_error_body(self, body: bytes) -> Any:
        text = body.decode("utf-8", "replace")
        try:
            data = orjson.loads(text)
        except orjson.JSONDecodeError:
            return self.redact(text)[:2000]
        # JSON is scrubbed decoded: escapes would hide a value from a scan of the text (an
        # echoed PEM's newlines are "\n"; "\/" or "\u0041" can spell any key).
        return self._redact_decoded(data)

    def redact(self, text: str) -> str:
        """Providers sometimes echo credentials in errors; never pass them on."""
        values = self._secret_values
        live = self.live_secrets()
        if live:
            values = tuple(sorted({*values, *live}, key=len, reverse=True))
        for value in values:
            text = text.replace(value, REDACTED)
        return text

    def _redact_decoded(self, data: Any) -> Any:
        """``redact`` every string (keys too) of decoded JSON, in place. A loop, not
        recursion: orjson decodes nesting deeper than Python's recursion limit."""
        pending: list[dict[Any, Any] | list[Any]] = []

        def scrub(item: Any) -> Any:
            if isinstance(item, str):
                return self.redact(item)
            if isinstance(item, dict | list):
                pending.append(item)
            return item

        data = scrub(data)
        while pending:
            node = pending.pop()
            if isinstance(node, list):
                node[:] = [scrub(item) for item in node]
                continue
            entries = list(node.items())
            node.clear()
            for key, item in entries:
                node[scrub(key)] = scrub(item)
        return data

    @staticmethod
    def load_json(body: bytes, provider: str) -> dict[str, Any]:
        try:
            data = orjson.loads(body)
        except orjson.JSONDecodeError:
            data = None
        if not isinstance(data, dict):
            raise UpstreamUnavailable(
                f"Provider '{provider}' returned a response that is not JSON."
            )
        return data
