"""OpenAI, and the converters every OpenAI-format upstream reuses.

The client already speaks OpenAI's format, so requests pass through with the upstream model
name set; the work is in the stream. The gateway asks every OpenAI-format upstream for usage
(``stream_options.include_usage``) so tokens are always counted. If the client did not ask for
it, the usage-only chunk OpenAI sends last (``"choices": []``) is folded into the chunk that
carries ``finish_reason`` instead, because much client code reads ``chunk.choices[0]`` and
would fail on an empty list.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Mapping
from typing import Any, ClassVar

import orjson

from servegate.canonical.requests import QueryRequest
from servegate.canonical.usage import Usage, usage_near_end
from servegate.ingress.errors import UpstreamError, UpstreamUnavailable
from servegate.providers.base import (
    Provider,
    StreamTranslator,
    Translated,
    UpstreamRequest,
    reads_upstream,
)
from servegate.spec.endpoint import ExternalModel, Task
from servegate.streaming.sse import DONE, SSEDecoder, encode_data

TASK_PATHS: dict[Task, str] = {
    Task.CHAT: "/chat/completions",
    Task.COMPLETIONS: "/completions",
    Task.EMBEDDINGS: "/embeddings",
}
JSON_HEADERS = {"Content-Type": "application/json", "Accept": "application/json"}


class OpenAIStream(StreamTranslator):
    """OpenAI SSE in, OpenAI SSE out: validates each chunk, collects usage, ends at [DONE]."""

    def __init__(self, provider: Provider, *, fold_usage: bool) -> None:
        self._provider = provider
        self._fold_usage = fold_usage
        self._decoder = SSEDecoder()
        self._held: dict[str, Any] | None = None
        self._done = False

    @reads_upstream
    def feed(self, chunk: bytes) -> list[bytes]:
        return self._frames(self._decoder.decode(chunk))

    @reads_upstream
    def finish(self) -> list[bytes]:
        frames = self._frames(self._decoder.flush())
        if not self._done:
            raise UpstreamUnavailable(
                f"Provider '{self._provider.name}' ended the stream before it was complete."
            )
        if self._held is not None:
            frames.append(encode_data(orjson.dumps(self._held)))
            self._held = None
        return frames

    def _frames(self, events: list[Any]) -> list[bytes]:
        frames: list[bytes] = []
        for event in events:
            if self._done:
                break
            if event.data == DONE:
                self._done = True
                continue
            chunk = self._parse(event.data)
            usage = Usage.from_openai(chunk["usage"]) if "usage" in chunk else None
            if usage is not None:
                self.usage = usage
            if not self._fold_usage:
                frames.append(encode_data(event.data))
                continue
            choices = chunk.get("choices")
            if usage is not None and not choices and self._held is not None:
                self._held["usage"] = usage.to_openai()
                continue
            if self._held is not None:
                frames.append(encode_data(orjson.dumps(self._held)))
                self._held = None
            if choices and _finishes(choices):
                self._held = chunk
            else:
                frames.append(encode_data(event.data))
        return frames

    def _parse(self, data: bytes) -> dict[str, Any]:
        try:
            chunk = orjson.loads(data)
        except orjson.JSONDecodeError:
            chunk = None
        if not isinstance(chunk, dict):
            raise UpstreamUnavailable(
                f"Provider '{self._provider.name}' sent a stream chunk that is not JSON."
            )
        if "error" in chunk and "choices" not in chunk:
            raise UpstreamError(self._provider.name, 500, self._provider.decode_error_body(data))
        return chunk


def _finishes(choices: object) -> bool:
    """Whether a chunk's choices carry a ``finish_reason`` (the chunk to hold for usage)."""
    if not isinstance(choices, list):
        return False
    for choice in choices:  # noqa: SIM110 (no generator object per streamed event)
        if isinstance(choice, dict) and choice.get("finish_reason"):
            return True
    return False


class OpenAIFormatProvider(Provider):
    """An upstream that takes the OpenAI body as is. Subclasses set the URL and auth."""

    tasks: ClassVar[frozenset[Task]] = frozenset(Task)
    sends_model: ClassVar[bool] = True
    """Whether the body names the upstream model (Azure and serving endpoints route by URL)."""

    @abstractmethod
    def upstream_url(self, task: Task) -> str: ...

    def auth_headers(self) -> Mapping[str, str]:
        return {}

    def build_request(self, query: QueryRequest) -> UpstreamRequest:
        payload = dict(query.payload)
        if self.sends_model:
            payload["model"] = self.model.name
        if query.stream and query.task != Task.EMBEDDINGS and not query.include_usage_requested:
            payload["stream_options"] = {
                **(payload.get("stream_options") or {}),
                "include_usage": True,
            }
        return UpstreamRequest(
            url=self.upstream_url(query.task),
            headers={**JSON_HEADERS, **self.auth_headers()},
            body=orjson.dumps(payload),
        )

    @reads_upstream
    def parse_response(self, query: QueryRequest, body: bytes) -> Translated:
        if query.task == Task.EMBEDDINGS and body.rstrip().endswith(b"}"):
            usage = usage_near_end(body)
            if usage is not None:  # passed through as is; only the usage is read
                return Translated(body=None, usage=usage, raw=body)
        data = self.load_json(body, self.name)
        return Translated(body=data, usage=Usage.from_openai(data.get("usage")), raw=body)

    def stream(self, query: QueryRequest) -> StreamTranslator:
        return OpenAIStream(self, fold_usage=not query.include_usage_requested)


class OpenAIProvider(OpenAIFormatProvider):
    """api.openai.com or any ``openai_api_base``, with an optional organization header."""

    name = "openai"
    unsupported_params = frozenset({"top_k"})

    def __init__(self, model: ExternalModel, secrets: Mapping[str, str]) -> None:
        super().__init__(model, secrets)
        config = model.openai_config
        if config is None:
            raise ValueError("provider 'openai' needs openai_config")
        self._base = (config.openai_api_base or "https://api.openai.com/v1").rstrip("/")
        self._headers = {"Authorization": f"Bearer {secrets['openai_api_key']}"}
        if config.openai_organization:
            self._headers["OpenAI-Organization"] = config.openai_organization

    def upstream_url(self, task: Task) -> str:
        return self._base + TASK_PATHS[task]

    def auth_headers(self) -> Mapping[str, str]:
        return self._headers
