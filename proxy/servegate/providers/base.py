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

from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any, ClassVar

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
    """The upstream's own bytes when they already are the answer (OpenAI-format passthrough):
    sent as they are instead of serialising ``body`` again."""


class StreamTranslator(ABC):
    """Per-request streaming state: upstream bytes in, OpenAI-shaped SSE frames out.

    ``feed`` takes bytes split anywhere and returns whole ``data:`` frames; ``finish`` runs at
    the end of the upstream body and raises if the stream ended early. The caller writes the
    terminating ``data: [DONE]`` itself, after ``finish`` succeeds.
    """

    usage: Usage | None = None

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
        self._secret_values = tuple(
            sorted({v for v in secrets.values() if v}, key=len, reverse=True)
        )

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
        text = self.redact(body.decode("utf-8", "replace"))
        try:
            return orjson.loads(text)
        except orjson.JSONDecodeError:
            return text[:2000]

    def redact(self, text: str) -> str:
        """Providers sometimes echo credentials in errors; never pass them on."""
        for value in self._secret_values:
            text = text.replace(value, REDACTED)
        return text

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
