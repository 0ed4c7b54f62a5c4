"""Cohere: Chat v2, the legacy Generate endpoint and Embed v2, behind the OpenAI shapes.

Each task goes to the one Cohere endpoint that can serve it: chat to ``POST /v2/chat`` (the
current API, which takes OpenAI-style function tools), completions to ``POST /v1/generate``
(the only one that takes a raw prompt and several generations), embeddings to
``POST /v2/embed``. Their streams are framed differently, hence two decoders: v2 chat sends
server-sent events (``content-delta`` …, ``message-end``, then ``data: [DONE]``) when asked
with ``Accept: text/event-stream``; v1 Generate sends one JSON object per line
(``text-generation`` …, ``stream-end``), which is not SSE.

The tables below say which OpenAI parameter becomes which Cohere one; anything else is
refused with a 400 naming it, because Cohere rejects unknown fields anyway (422) and a
dropped parameter would change the answer silently. Three conversions need a reason:
Generate's ``temperature`` runs 0-5, so OpenAI's 0-2 is scaled by 2.5 (as MLflow's gateway
does; v2 chat takes the value as is); ``top_p`` is clamped into Cohere's 0.01-0.99, so the
common ``top_p: 1`` still works; embeddings always ask for float vectors, which satisfy
either OpenAI ``encoding_format``. Usage counts Cohere's ``billed_units`` (what the account is
charged; ``tokens`` also counts Cohere's own prompt template), falling back to ``tokens``.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Mapping
from typing import Any, ClassVar

import orjson

from servegate.canonical.requests import QueryRequest
from servegate.canonical.responses import (
    ChunkEmitter,
    chat_message,
    chat_response,
    completion_response,
    embeddings_response,
)
from servegate.canonical.usage import Usage
from servegate.ingress.errors import BadRequest, UpstreamError, UpstreamUnavailable
from servegate.providers.base import (
    Provider,
    StreamTranslator,
    Translated,
    UpstreamRequest,
    reads_upstream,
)
from servegate.spec.endpoint import ExternalModel, Task
from servegate.streaming.sse import DONE, SSEDecoder, SSEEvent

DEFAULT_API_BASE = "https://api.cohere.com"
PATHS = {Task.CHAT: "/v2/chat", Task.COMPLETIONS: "/v1/generate", Task.EMBEDDINGS: "/v2/embed"}
_SAMPLING = {"max_tokens": "max_tokens", "top_k": "k"} | {
    same: same for same in ("frequency_penalty", "presence_penalty", "seed")
}
# OpenAI name -> Cohere name, for values that need no conversion.
_RENAMED: dict[Task, dict[str, str]] = {
    Task.CHAT: _SAMPLING | {"max_completion_tokens": "max_tokens", "temperature": "temperature"},
    Task.COMPLETIONS: _SAMPLING | {"logit_bias": "logit_bias"},
    Task.EMBEDDINGS: {"dimensions": "output_dimension"},
}
# Converted by hand in build_request (n: chat takes only 1, Generate's num_generations 1-5).
_GENERATION = {"top_p", "stop", "n", "stream", "stream_options"}
_CONVERTED: dict[Task, set[str]] = {
    Task.CHAT: _GENERATION | {"messages", "tools", "tool_choice", "response_format"},
    Task.COMPLETIONS: _GENERATION | {"prompt", "temperature"},
    Task.EMBEDDINGS: {"input", "encoding_format"},
}
# Cohere-only parameters a client may send as extras; they pass through as they are.
_NATIVE: dict[Task, set[str]] = {
    Task.CHAT: {"documents", "citation_options", "safety_mode", "strict_tools", "thinking"}
    | {"priority"},
    Task.COMPLETIONS: {"truncate", "end_sequences", "raw_prompting"},
    Task.EMBEDDINGS: {"input_type", "truncate", "max_tokens"},
}
# OpenAI parameters Cohere cannot take, harmless at these (their default) values.
_NEUTRAL: dict[str, object] = {"parallel_tool_calls": True, "logprobs": False, "echo": False}
_MAX_GENERATIONS = 5
_FINISH = {"COMPLETE": "stop", "STOP_SEQUENCE": "stop", "MAX_TOKENS": "length"}
_CHAT_FINISH = _FINISH | {"TOOL_CALL": "tool_calls"}
_GENERATE_FINISH = _FINISH | {"ERROR_LIMIT": "length", "ERROR_TOXIC": "content_filter"}
# Finish reasons that mean the generation failed: the answer becomes a wrapped error.
_FAILED = {"ERROR": 500, "TIMEOUT": 504}


def _unsupported(param: str, why: str = "") -> BadRequest:
    return BadRequest(
        f"Parameter '{param}' is not supported by provider 'cohere'{why}; "
        "remove it from the request."
    )


def usage_of(container: object) -> Usage | None:
    """``{"billed_units": {...}, "tokens": {...}}``: chat's ``usage``, Generate/Embed's ``meta``."""
    for bucket in ("billed_units", "tokens"):
        counts = container.get(bucket) if isinstance(container, Mapping) else None
        if isinstance(counts, Mapping) and (prompt := _count(counts, "input_tokens")) is not None:
            return Usage(prompt, _count(counts, "output_tokens") or 0)
    return None


def _count(counts: Mapping[str, Any], key: str) -> int | None:
    value = counts.get(key)  # numbers; Cohere's SDK types them as floats
    if isinstance(value, int | float) and not isinstance(value, bool):
        return int(value)
    return None


def _content(content: object, where: str, *, images: bool = False) -> str | list[dict[str, Any]]:
    """OpenAI content (a string or parts) as Cohere content: text parts, and images for users."""
    if content is None or isinstance(content, str):
        return content or ""
    parts: list[dict[str, Any]] = []
    for part in content if isinstance(content, list) else []:
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text":
            parts.append({"type": "text", "text": part.get("text", "")})
        elif kind == "image_url" and images and isinstance(part.get("image_url"), dict):
            parts.append({"type": "image_url", "image_url": part["image_url"]})
        else:
            raise BadRequest(f"{where}: content of type '{kind}' is not supported by 'cohere'.")
    return parts


def _message(index: int, message: Mapping[str, Any]) -> dict[str, Any]:
    """One OpenAI message as a v2 message (``name`` has no Cohere field and is not sent)."""
    role, where = message["role"], f"messages[{index}]"
    content = message.get("content")
    if role in ("system", "developer"):
        return {"role": "system", "content": _content(content, where)}
    if role == "user":
        return {"role": "user", "content": _content(content, where, images=True)}
    if role == "tool":
        if not message.get("tool_call_id"):
            raise BadRequest(f"{where}: provider 'cohere' needs 'tool_call_id' on tool messages.")
        call_id = message["tool_call_id"]
        return {"role": "tool", "tool_call_id": call_id, "content": _content(content, where)}
    if role != "assistant":
        raise BadRequest(f"{where}: role '{role}' is not supported by provider 'cohere'.")
    text = _content(content, where)
    if not message.get("tool_calls"):
        return {"role": "assistant", "content": text}
    calls = []
    for call in message["tool_calls"]:
        function = call.get("function") or {}
        arguments = {"name": function.get("name"), "arguments": function.get("arguments", "")}
        calls.append({"id": call.get("id"), "type": "function", "function": arguments})
    out: dict[str, Any] = {"role": "assistant", "tool_calls": calls}
    if text:  # Cohere keeps the text that goes with tool calls as their plan, not as content
        out["tool_plan"] = text if isinstance(text, str) else "".join(p["text"] for p in text)
    return out


def _tools(tools: list[Any]) -> tuple[list[dict[str, Any]], bool]:
    """OpenAI function tools with only the fields v2 takes, and whether any asked for strict."""
    converted, strict = [], False
    for tool in tools:
        function = tool.get("function") if isinstance(tool, dict) else None
        if not isinstance(function, dict) or tool.get("type") != "function":
            raise _unsupported("tools", " except function tools")
        strict = strict or function.get("strict") is True
        keep = {k: function[k] for k in ("name", "description", "parameters") if k in function}
        converted.append({"type": "function", "function": keep})
    return converted, strict


def _response_format(value: Mapping[str, Any]) -> dict[str, Any]:
    kind = value.get("type")
    if kind == "json_schema":
        schema = (value.get("json_schema") or {}).get("schema")
        return {"type": "json_object", **({"json_schema": schema} if schema else {})}
    if kind in ("text", "json_object"):
        return {"type": kind}
    raise _unsupported("response_format", f" with type '{kind}'")


class CohereProvider(Provider):
    name = "cohere"
    tasks: ClassVar[frozenset[Task]] = frozenset(Task)

    def __init__(self, model: ExternalModel, secrets: Mapping[str, str]) -> None:
        super().__init__(model, secrets)
        config = model.cohere_config
        if config is None:
            raise ValueError("provider 'cohere' needs cohere_config")
        base = str(config.cohere_api_base or DEFAULT_API_BASE).rstrip("/")
        # A base that already names an API version (MLflow's was ".../v1") works too.
        self._base = base.removesuffix("/v1").removesuffix("/v2")
        auth = {
            "Authorization": f"Bearer {secrets['cohere_api_key']}",
            "Content-Type": "application/json",
            "X-Client-Name": "servegate",
        }
        self._json_headers = {**auth, "Accept": "application/json"}
        self._sse_headers = {**auth, "Accept": "text/event-stream"}

    def check(self, query: QueryRequest) -> None:
        super().check(query)
        task, payload = query.task, query.payload
        known = _RENAMED[task].keys() | _CONVERTED[task] | _NATIVE[task]
        for key, value in payload.items():
            if key not in known and value is not None and _NEUTRAL.get(key, ...) != value:
                raise _unsupported(key)
        n = payload.get("n") or 1
        if task == Task.CHAT and n != 1:
            raise _unsupported("n", " with a value other than 1 (its chat returns one choice)")
        if n > _MAX_GENERATIONS:
            raise _unsupported("n", f" above {_MAX_GENERATIONS} (Generate's num_generations)")
        if payload.get("tool_choice") not in (None, "auto", "none", "required"):
            raise _unsupported("tool_choice", " naming a function (use auto, none or required)")
        prompt = payload.get("prompt")
        if isinstance(prompt, list) and len(prompt) != 1:
            raise _unsupported("prompt", " as a list of several prompts (send one per request)")
        inputs = payload.get("input")
        if task == Task.EMBEDDINGS and not all(
            isinstance(i, str) for i in (inputs if isinstance(inputs, list) else [inputs])
        ):
            raise _unsupported("input", " as token ids (send text)")

    def build_request(self, query: QueryRequest) -> UpstreamRequest:
        task, payload = query.task, query.payload
        body: dict[str, Any] = {"model": self.model.name}
        body |= {to: payload[k] for k, to in _RENAMED[task].items() if payload.get(k) is not None}
        body |= {k: payload[k] for k in _NATIVE[task] if payload.get(k) is not None}
        if task == Task.CHAT:
            _chat_fields(payload, body)
        elif task == Task.COMPLETIONS:
            prompt = payload["prompt"]
            body["prompt"] = prompt[0] if isinstance(prompt, list) else prompt
            if payload.get("temperature") is not None:
                body["temperature"] = payload["temperature"] * 2.5
            if (payload.get("n") or 1) > 1:
                body["num_generations"] = payload["n"]
        else:
            inputs = payload["input"]
            body["texts"] = [inputs] if isinstance(inputs, str) else inputs
            body.setdefault("input_type", "search_document")
            body["embedding_types"] = ["float"]
        if task != Task.EMBEDDINGS:
            if payload.get("top_p") is not None:
                body["p"] = min(max(payload["top_p"], 0.01), 0.99)
            if stop := payload.get("stop"):
                body["stop_sequences"] = [stop] if isinstance(stop, str) else stop
            if query.stream:
                body["stream"] = True
        return UpstreamRequest(
            url=self._base + PATHS[task],
            headers=self._sse_headers if query.stream and task == Task.CHAT else self._json_headers,
            body=orjson.dumps(body),
        )

    @reads_upstream
    def parse_response(self, query: QueryRequest, body: bytes) -> Translated:
        data = self.load_json(body, self.name)
        if query.task == Task.EMBEDDINGS:
            return self._embeddings(data)
        if query.task == Task.COMPLETIONS:
            return self._generations(data, body)
        self.raise_if_failed(data.get("finish_reason"), body)
        message = data.get("message") or {}
        text = "".join(  # a reasoning model's "thinking" parts stay out
            part.get("text", "")
            for part in message.get("content") or []
            if part.get("type") == "text"
        )
        calls = [
            {"id": c.get("id"), "type": "function", "function": c.get("function", {})}
            for c in message.get("tool_calls") or []
        ]
        if calls and not text:  # the text Cohere sends with tool calls is their plan
            text = message.get("tool_plan") or ""
        usage = usage_of(data.get("usage"))
        choice = (
            chat_message(text or (None if calls else ""), calls),
            _CHAT_FINISH.get(data.get("finish_reason") or "", "stop"),
        )
        result = chat_response(
            model=self.model.name, choices=[choice], usage=usage, id=data.get("id")
        )
        return Translated(body=result, usage=usage)

    def _generations(self, data: Mapping[str, Any], raw: bytes) -> Translated:
        choices: list[tuple[str, str | None]] = []
        for generation in sorted(data.get("generations") or [], key=lambda g: g.get("index", 0)):
            reason = generation.get("finish_reason")
            self.raise_if_failed(reason, raw)
            choices.append((generation.get("text", ""), _GENERATE_FINISH.get(reason or "", "stop")))
        usage = usage_of(data.get("meta"))
        result = completion_response(model=self.model.name, choices=choices, usage=usage)
        return Translated(body=result, usage=usage)

    def _embeddings(self, data: Mapping[str, Any]) -> Translated:
        by_type = data.get("embeddings")
        vectors = by_type.get("float") if isinstance(by_type, dict) else None
        if not isinstance(vectors, list):
            raise UpstreamUnavailable("Provider 'cohere' returned no float embeddings.")
        usage = usage_of(data.get("meta")) or Usage()
        result = embeddings_response(
            model=self.model.name, vectors=vectors, prompt_tokens=usage.prompt_tokens
        )
        return Translated(body=result, usage=usage)

    def raise_if_failed(self, reason: object, raw: bytes) -> None:
        """A 200 whose finish reason says the generation failed is an upstream error."""
        if isinstance(reason, str) and reason in _FAILED:
            raise UpstreamError(self.name, _FAILED[reason], self.decode_error_body(raw))

    def stream(self, query: QueryRequest) -> StreamTranslator:
        return (ChatStream if query.task == Task.CHAT else GenerateStream)(self, query)


def _chat_fields(payload: Mapping[str, Any], body: dict[str, Any]) -> None:
    body["messages"] = [_message(i, m) for i, m in enumerate(payload["messages"])]
    if payload.get("tools"):
        body["tools"], strict = _tools(payload["tools"])
        if strict:
            body.setdefault("strict_tools", True)
    if payload.get("tool_choice") in ("none", "required"):
        body["tool_choice"] = payload["tool_choice"].upper()
    if payload.get("response_format"):
        body["response_format"] = _response_format(payload["response_format"])


class _CohereStream(StreamTranslator):
    """What both decoders share: the chunk emitter, the end-of-answer flag, JSON parsing."""

    def __init__(self, provider: CohereProvider, query: QueryRequest) -> None:
        self._provider = provider
        self._emitter = ChunkEmitter(
            task=query.task, model=provider.model.name, include_usage=query.include_usage_requested
        )
        self._ended = False

    @reads_upstream
    def finish(self) -> list[bytes]:
        frames = self._flush()
        if not self._ended:
            raise UpstreamUnavailable("Provider 'cohere' ended the stream before it was complete.")
        return frames

    @abstractmethod
    def _flush(self) -> list[bytes]:
        """Decode what is still buffered when the body ends."""

    def _parse(self, raw: bytes) -> dict[str, Any]:
        return self._provider.load_json(raw, self._provider.name)


class ChatStream(_CohereStream):
    """Chat v2 server-sent events → OpenAI chat chunks; ``message-end`` ends the answer."""

    def __init__(self, provider: CohereProvider, query: QueryRequest) -> None:
        super().__init__(provider, query)
        self._decoder = SSEDecoder()
        self._positions: dict[int, int] = {}  # Cohere's tool-call index → OpenAI's

    @reads_upstream
    def feed(self, chunk: bytes) -> list[bytes]:
        return self._events(self._decoder.decode(chunk))

    def _flush(self) -> list[bytes]:
        return self._events(self._decoder.flush())

    def _events(self, events: list[SSEEvent]) -> list[bytes]:
        frames: list[bytes] = []
        for sse in events:
            if self._ended or sse.data == DONE:
                continue  # [DONE] follows message-end; nothing after it matters
            event = self._parse(sse.data)
            kind = event.get("type") or sse.event
            message = (event.get("delta") or {}).get("message") or {}
            if kind == "content-delta":  # a reasoning model's thinking deltas carry no text
                text = (message.get("content") or {}).get("text")
                frames += self._emitter.text(text) if text else []
            elif kind == "tool-plan-delta" and message.get("tool_plan"):
                frames += self._emitter.text(message["tool_plan"])
            elif kind in ("tool-call-start", "tool-call-delta"):
                call = message.get("tool_calls") or {}
                function = call.get("function") or {}
                position = self._positions.setdefault(event.get("index", 0), len(self._positions))
                frames += self._emitter.tool_call(
                    position=position,
                    call_id=call.get("id"),  # tool-call-start carries the id and name
                    name=function.get("name"),
                    arguments=function.get("arguments") or "",
                )
            elif kind == "message-end":
                delta = event.get("delta") or {}
                reason = delta.get("finish_reason")
                self._provider.raise_if_failed("ERROR" if delta.get("error") else reason, sse.data)
                self.usage, self._ended = usage_of(delta.get("usage")), True
                frames += self._emitter.finish(_CHAT_FINISH.get(reason or "", "stop"), self.usage)
        return frames


class GenerateStream(_CohereStream):
    """Generate's newline-delimited JSON → OpenAI completion chunks; ``stream-end`` ends it."""

    content_types = frozenset({"application/stream+json", "application/x-ndjson"})

    def __init__(self, provider: CohereProvider, query: QueryRequest) -> None:
        super().__init__(provider, query)
        self._buffer = b""

    @reads_upstream
    def feed(self, chunk: bytes) -> list[bytes]:
        *lines, self._buffer = (self._buffer + chunk).split(b"\n")
        return self._lines(lines)

    def _flush(self) -> list[bytes]:
        tail, self._buffer = self._buffer, b""
        return self._lines([tail])

    def _lines(self, lines: list[bytes]) -> list[bytes]:
        frames: list[bytes] = []
        for line in lines:
            if self._ended or not line.strip():
                continue
            event = self._parse(line)
            kind = event.get("event_type")
            if kind == "text-generation" and event.get("text"):
                frames += self._emitter.text(event["text"], event.get("index", 0))
            elif kind == "stream-error":
                body = self._provider.decode_error_body(line)
                raise UpstreamError(self._provider.name, 500, body)
            elif kind == "stream-end":
                frames += self._end(event, line)
        return frames

    def _end(self, event: Mapping[str, Any], raw: bytes) -> list[bytes]:
        """One finish chunk per generation; the usage rides on the last."""
        self._provider.raise_if_failed(event.get("finish_reason"), raw)
        response = event.get("response") or {}
        self.usage, self._ended = usage_of(response.get("meta")), True
        ends = sorted(
            (g.get("index", 0), g.get("finish_reason")) for g in response.get("generations") or []
        ) or [(0, event.get("finish_reason"))]
        frames: list[bytes] = []
        for position, (index, reason) in enumerate(ends):
            self._provider.raise_if_failed(reason, raw)
            usage = self.usage if position == len(ends) - 1 else None
            frames += self._emitter.finish(_GENERATE_FINISH.get(reason or "", "stop"), usage, index)
        return frames
