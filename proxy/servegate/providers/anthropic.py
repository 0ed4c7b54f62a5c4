"""Anthropic: OpenAI-shaped chat and completions over the Messages API.

``POST {anthropic_api_base or https://api.anthropic.com}/v1/messages``, ``x-api-key`` and
``anthropic-version: 2023-06-01``. The mapping, with the reason where it is not obvious:

- ``system``/``developer`` messages, wherever they are → top-level ``system`` (joined).
- Same-role turns are merged (Anthropic requires alternation); ``tool`` messages become user
  ``tool_result`` blocks and assistant ``tool_calls`` become ``tool_use`` blocks.
- Empty text is dropped (Anthropic refuses empty text blocks). ``image_url`` parts: a
  base64 ``data:`` URL or an http(s) URL → image block; anything else → 400.
- ``tools`` (function tools) → ``{name, description, input_schema}``; ``tool_choice``
  auto/none/required/{function} → auto/none/any/tool; ``parallel_tool_calls: false`` →
  ``disable_parallel_tool_use``.
- ``max_tokens`` (or ``max_completion_tokens``) is required upstream: default 4096, which
  every Claude model accepts. ``temperature`` passes in 0-1 and above 1 is a 400: scaling
  OpenAI's 0-2 would silently change what the everyday values mean. ``top_p``/``top_k`` pass.
- ``stop`` → ``stop_sequences`` (a list); ``user`` → ``metadata.user_id``; ``n`` must be 1.
- Completions: the one prompt is one user message; the model name (``claude-2.1``…) as given.
- ``REFUSED`` OpenAI parameters get a 400 naming them. Other unknown keys are Anthropic-native
  extras (``metadata``, ``thinking``, ``service_tier``…) and pass through for Anthropic to
  validate, except the fields built here (``OWNED``), which clients send the OpenAI way.

Responses: text blocks joined, ``tool_use`` → ``tool_calls`` (JSON string arguments), blocks
with no OpenAI counterpart (``thinking``…) left out, and the upstream ``msg_…`` id kept so
a request can be traced at Anthropic. ``prompt_tokens`` counts cache reads and writes too,
as OpenAI's does. Errors: HTTP 529 (overloaded) is answered as 429, like a rate limit, and
an ``error`` event in a stream raises with the status its error type stands for.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, ClassVar

import orjson

from servegate.canonical.requests import QueryRequest
from servegate.canonical.responses import (
    ChunkEmitter,
    chat_message,
    chat_response,
    completion_response,
)
from servegate.canonical.usage import Usage
from servegate.ingress.errors import (
    BadRequest,
    InvalidParameter,
    UpstreamError,
    UpstreamUnavailable,
)
from servegate.providers.base import (
    Provider,
    StreamTranslator,
    Translated,
    UpstreamRequest,
    reads_upstream,
)
from servegate.spec.endpoint import ExternalModel, Task
from servegate.streaming.sse import SSEDecoder

NAME = "anthropic"
DEFAULT_API_BASE = "https://api.anthropic.com"
API_VERSION = "2023-06-01"
DEFAULT_MAX_TOKENS = 4096

REFUSED = frozenset({
    "response_format", "logit_bias", "frequency_penalty", "presence_penalty", "seed",
    "logprobs", "top_logprobs", "functions", "function_call", "audio", "modalities",
    "prediction", "store", "reasoning_effort", "verbosity", "web_search_options",
    "prompt_cache_key", "prompt_cache_retention", "safety_identifier", "suffix", "echo",
    "best_of",
})  # fmt: skip
OWNED = frozenset({"system", "stop_sequences"})
CHAT_ONLY = frozenset({"messages", "tools", "tool_choice", "parallel_tool_calls"})
TRANSLATED = CHAT_ONLY | {
    "prompt", "max_tokens", "max_completion_tokens", "temperature", "top_p",
    "top_k", "n", "stop", "stream", "stream_options", "user", "metadata",
}  # fmt: skip
FINISH_REASONS = {
    "end_turn": "stop", "stop_sequence": "stop", "pause_turn": "stop",
    "max_tokens": "length", "model_context_window_exceeded": "length",
    "tool_use": "tool_calls", "refusal": "content_filter",
}  # fmt: skip
# Error types → HTTP status, for ``error`` events inside a 200 stream. Overloaded (HTTP
# 529 when it comes as a status) means "slow down" to the caller, like a rate limit.
ERROR_STATUS = {
    "invalid_request_error": 400, "authentication_error": 401, "billing_error": 402,
    "permission_error": 403, "not_found_error": 404, "request_too_large": 413,
    "rate_limit_error": 429, "overloaded_error": 429, "api_error": 500, "timeout_error": 504,
}  # fmt: skip
_DATA_URL = re.compile(r"data:(image/(?:jpeg|png|gif|webp));base64,(.+)", re.DOTALL)
_TOOL_CHOICES = {"auto": "auto", "none": "none", "required": "any"}

Block = dict[str, Any]


def _refuse(what: str, why: str = "") -> BadRequest:
    return BadRequest(f"{what} is not supported by provider '{NAME}'{why}.")


def _image(part: Block, where: str) -> Block:
    image = part.get("image_url")
    url = image.get("url") if isinstance(image, dict) else image
    data = _DATA_URL.fullmatch(url) if isinstance(url, str) else None
    if data is not None:
        return {
            "type": "image",
            "source": {"type": "base64", "media_type": data.group(1), "data": data.group(2)},
        }
    if isinstance(url, str) and url.startswith(("https://", "http://")):
        return {"type": "image", "source": {"type": "url", "url": url}}
    raise _refuse(
        f"The image URL in {where}", ": send a base64 data: URL (JPEG, PNG, GIF, WebP) or http(s)"
    )


def _blocks(content: object, where: str, *, images: bool) -> list[Block]:
    """A message's ``content`` (string or parts) as Anthropic blocks, empty text dropped."""
    if content is None or isinstance(content, str):
        return [{"type": "text", "text": content}] if content else []
    blocks: list[Block] = []
    for j, part in enumerate(content if isinstance(content, list) else []):
        kind = part.get("type") if isinstance(part, dict) else type(part).__name__
        if kind == "text" and part.get("text"):
            blocks.append({"type": "text", "text": str(part["text"])})
        elif kind == "image_url" and images:
            blocks.append(_image(part, f"{where}.content[{j}]"))
        elif kind != "text":
            raise _refuse(f"Content part type '{kind}' in {where}.content[{j}]")
    return blocks


def _text(content: object, where: str) -> str:
    return "".join(b["text"] for b in _blocks(content, where, images=False))


def _tool_use(call: object, where: str) -> Block:
    function = call.get("function") if isinstance(call, dict) else None
    if not isinstance(call, dict) or not isinstance(function, dict) or not call.get("id"):
        raise BadRequest(f"{where} must be {{'id', 'type': 'function', 'function': {{...}}}}.")
    try:
        arguments = orjson.loads(function.get("arguments") or "{}")
    except (orjson.JSONDecodeError, TypeError):  # TypeError: not a string
        arguments = None
    if not isinstance(arguments, dict):
        raise BadRequest(f"{where}.function.arguments must be a JSON object encoded as a string.")
    return {"type": "tool_use", "id": call["id"], "name": function.get("name"), "input": arguments}


def _turn(message: Block, where: str) -> tuple[str, list[Block]]:
    """One non-system OpenAI message as (Anthropic role, content blocks)."""
    role, content = message.get("role"), message.get("content")
    if role == "user":
        return "user", _blocks(content, where, images=True)
    if role == "assistant":
        calls = message.get("tool_calls") or []
        uses = [_tool_use(call, f"{where}.tool_calls[{k}]") for k, call in enumerate(calls)]
        return "assistant", _blocks(content, where, images=False) + uses
    if role == "tool":
        if not message.get("tool_call_id"):
            raise BadRequest(f"{where}.tool_call_id is required for a tool message.")
        result: Block = {"type": "tool_result", "tool_use_id": message["tool_call_id"]}
        if text := _text(content, where):
            result["content"] = text
        return "user", [result]
    raise _refuse(f"Role '{role}' in {where}.role", ": use tools, tool_calls and tool messages")


def convert_messages(messages: list[Block]) -> tuple[str, list[Block]]:
    """OpenAI messages → (Anthropic ``system``, alternating ``messages``)."""
    system: list[str] = []
    turns: list[Block] = []
    for i, message in enumerate(messages):
        if message.get("role") in ("system", "developer"):
            if text := _text(message.get("content"), f"messages[{i}]"):
                system.append(text)
            continue
        role, blocks = _turn(message, f"messages[{i}]")
        if not blocks:
            continue
        if turns and turns[-1]["role"] == role:
            turns[-1]["content"].extend(blocks)
        else:
            turns.append({"role": role, "content": blocks})
    for turn in turns:  # a lone text block in the plain-string form people write
        if len(turn["content"]) == 1 and turn["content"][0]["type"] == "text":
            turn["content"] = turn["content"][0]["text"]
    return "\n\n".join(system), turns


def convert_tools(tools: list[Any]) -> list[Block]:
    converted: list[Block] = []
    for i, tool in enumerate(tools):
        function = tool.get("function") if isinstance(tool, dict) else None
        if not isinstance(function, dict) or tool.get("type") != "function":
            raise _refuse(f"tools[{i}]", ": only function tools can be translated")
        schema = function.get("parameters") or {"type": "object", "properties": {}}
        entry: Block = {"name": function.get("name"), "input_schema": schema}
        if function.get("description"):
            entry["description"] = function["description"]
        converted.append(entry)
    return converted


def convert_tool_choice(choice: object, parallel: object) -> Block | None:
    converted: Block | None = None
    if isinstance(choice, str) and choice in _TOOL_CHOICES:
        converted = {"type": _TOOL_CHOICES[choice]}
    elif isinstance(choice, dict) and isinstance(choice.get("function"), dict):
        converted = {"type": "tool", "name": choice["function"].get("name")}
    elif choice is not None:
        raise BadRequest(
            "tool_choice must be 'auto', 'none', 'required' or "
            "{'type': 'function', 'function': {'name': ...}}."
        )
    if parallel is False and (converted or {}).get("type") != "none":
        converted = {**(converted or {"type": "auto"}), "disable_parallel_tool_use": True}
    return converted


def convert_usage(usage: object) -> Usage | None:
    """Anthropic's ``input_tokens`` leaves out cached tokens; OpenAI's prompt count does not."""
    if not isinstance(usage, dict):
        return None
    keys = ("input_tokens", "cache_creation_input_tokens", "cache_read_input_tokens")
    prompt = sum(v for k in keys if isinstance(v := usage.get(k), int))
    output = usage.get("output_tokens")
    return Usage(prompt, output if isinstance(output, int) else 0)


def _tool_call(block: Block) -> Block:
    arguments = orjson.dumps(block.get("input") or {}).decode()
    function = {"name": block.get("name"), "arguments": arguments}
    return {"id": block.get("id"), "type": "function", "function": function}


class AnthropicStream(StreamTranslator):
    """Anthropic's SSE events in, OpenAI chunks out.

    ``message_start`` emits nothing, so an ``error`` event before any content still becomes
    a normal error response with its status; after content it ends the stream in-band.
    """

    def __init__(self, provider: AnthropicProvider, query: QueryRequest) -> None:
        self._provider = provider
        self._decoder = SSEDecoder()
        self.emitter = ChunkEmitter(
            task=query.task, model=provider.model.name, include_usage=query.include_usage_requested
        )
        self._tools: dict[object, int] = {}  # content block index → tool-call position
        self._reason = "end_turn"
        self._done = False

    @reads_upstream
    def feed(self, chunk: bytes) -> list[bytes]:
        return self._frames(self._decoder.decode(chunk))

    @reads_upstream
    def finish(self) -> list[bytes]:
        frames = self._frames(self._decoder.flush())
        if not self._done:
            raise UpstreamUnavailable(f"Provider '{NAME}' ended the stream before it was complete.")
        return frames

    def _frames(self, events: list[Any]) -> list[bytes]:
        frames: list[bytes] = []
        for event in events:
            if not self._done:
                frames += self._on(event.data)
        return frames

    def _on(self, raw: bytes) -> list[bytes]:
        try:
            data = orjson.loads(raw)
        except orjson.JSONDecodeError:
            data = None
        if not isinstance(data, dict):
            raise UpstreamUnavailable(f"Provider '{NAME}' sent a stream event that is not JSON.")
        kind, index = data.get("type"), data.get("index")
        block, delta = data.get("content_block") or {}, data.get("delta") or {}
        if kind == "message_start":
            message = data.get("message") or {}
            self.emitter.id = str(message.get("id") or self.emitter.id)
            self.emitter.model = str(message.get("model") or self.emitter.model)
            self.usage = convert_usage(message.get("usage"))
        elif kind == "content_block_start" and block.get("type") == "text" and block.get("text"):
            return self.emitter.text(str(block["text"]))
        elif kind == "content_block_start" and block.get("type") == "tool_use":
            if self.emitter.task != Task.CHAT:
                return []
            position = self._tools[index] = len(self._tools)
            return self.emitter.tool_call(
                position=position, call_id=block.get("id"), name=block.get("name")
            )
        elif kind == "content_block_delta" and delta.get("type") == "text_delta":
            return self.emitter.text(str(delta["text"])) if delta.get("text") else []
        elif kind == "content_block_delta" and delta.get("type") == "input_json_delta":
            call = self._tools.get(index)
            if call is not None and delta.get("partial_json"):
                return self.emitter.tool_call(position=call, arguments=delta["partial_json"])
        elif kind == "message_delta":
            self._reason = delta.get("stop_reason") or self._reason
            self._count(data.get("usage"))
        elif kind == "message_stop":
            self._done = True
            return self.emitter.finish(FINISH_REASONS.get(self._reason, "stop"), self.usage)
        elif kind == "error":
            status = ERROR_STATUS.get(str((data.get("error") or {}).get("type")), 500)
            body = self._provider.decode_error_body(raw)
            raise UpstreamError(NAME, status, body, retry_after=1 if status == 429 else None)
        return []  # ping, content_block_stop, thinking/signature deltas, future event types

    def _count(self, usage: object) -> None:
        """``message_delta`` usage is cumulative and may restate the input tokens."""
        latest = convert_usage(usage)
        if latest is not None:
            if self.usage and not (isinstance(usage, dict) and "input_tokens" in usage):
                latest = Usage(self.usage.prompt_tokens, latest.completion_tokens)
            self.usage = latest


class AnthropicProvider(Provider):
    name = NAME
    tasks: ClassVar[frozenset[Task]] = frozenset({Task.CHAT, Task.COMPLETIONS})
    unsupported_params = REFUSED

    def __init__(self, model: ExternalModel, secrets: Mapping[str, str]) -> None:
        super().__init__(model, secrets)
        config = model.anthropic_config
        if config is None:
            raise ValueError("provider 'anthropic' needs anthropic_config")
        base = (config.anthropic_api_base or DEFAULT_API_BASE).rstrip("/")
        self._url = base + ("/messages" if base.endswith("/v1") else "/v1/messages")
        self._headers = {
            "x-api-key": secrets["anthropic_api_key"],
            "anthropic-version": API_VERSION,
            "content-type": "application/json",
        }

    def check(self, query: QueryRequest) -> None:
        super().check(query)
        payload = query.payload
        refused = sorted(OWNED & payload.keys())
        if refused:
            raise _refuse(f"Parameter '{refused[0]}'", "; send it the OpenAI way (messages, stop)")
        refused = sorted(CHAT_ONLY & payload.keys()) if query.task != Task.CHAT else []
        if refused:
            raise _refuse(f"Parameter '{refused[0]}' on completions", "; use a chat endpoint")
        if (payload.get("temperature") or 0) > 1:
            raise InvalidParameter(
                f"temperature must be between 0 and 1 for provider '{NAME}' "
                f"(OpenAI's range is 0 to 2); got {payload['temperature']}."
            )
        if (payload.get("n") or 1) > 1:
            raise InvalidParameter(f"n must be 1 for provider '{NAME}', which has no 'n'.")
        limit = payload.get("max_completion_tokens")
        if limit is not None and (type(limit) is not int or limit < 1):
            raise InvalidParameter("max_completion_tokens must be a positive integer.")
        prompt = payload.get("prompt")
        if isinstance(prompt, list) and len(prompt) != 1:
            raise InvalidParameter(
                f"Provider '{NAME}' takes exactly one prompt per request; got {len(prompt)}."
            )

    def build_request(self, query: QueryRequest) -> UpstreamRequest:
        body = orjson.dumps(self.body(query))
        return UpstreamRequest(url=self._url, headers=self._headers, body=body)

    def body(self, query: QueryRequest) -> dict[str, Any]:
        """The Messages API body for ``query`` (a new dict: the query is never changed)."""
        p = query.payload
        if query.task == Task.CHAT:
            system, messages = convert_messages(p["messages"])
        else:
            prompt = p["prompt"] if isinstance(p["prompt"], str) else p["prompt"][0]
            system, messages = "", [{"role": "user", "content": prompt}]
        limit = p.get("max_tokens") or p.get("max_completion_tokens") or DEFAULT_MAX_TOKENS
        body: dict[str, Any] = {"model": self.model.name, "max_tokens": limit, "messages": messages}
        if system:
            body["system"] = system
        if stop := p.get("stop"):
            body["stop_sequences"] = [stop] if isinstance(stop, str) else list(stop)
        body |= {k: p[k] for k in ("temperature", "top_p", "top_k") if p.get(k) is not None}
        if p.get("tools"):
            body["tools"] = convert_tools(p["tools"])
        choice = convert_tool_choice(p.get("tool_choice"), p.get("parallel_tool_calls"))
        if choice is not None:
            body["tool_choice"] = choice
        metadata = dict(p.get("metadata") or {})
        if p.get("user"):
            metadata["user_id"] = p["user"]
        if metadata:
            body["metadata"] = metadata
        if query.stream:
            body["stream"] = True
        return body | {k: v for k, v in p.items() if k not in TRANSLATED | REFUSED | OWNED}

    @reads_upstream
    def parse_response(self, query: QueryRequest, body: bytes) -> Translated:
        data = self.load_json(body, self.name)
        blocks = data.get("content")
        if not isinstance(blocks, list):
            raise UpstreamUnavailable(f"Provider '{NAME}' returned a message without content.")
        text = "".join(str(b.get("text") or "") for b in blocks if b.get("type") == "text")
        calls = [_tool_call(b) for b in blocks if b.get("type") == "tool_use"]
        reason = FINISH_REASONS.get(str(data.get("stop_reason")), "stop")
        usage = convert_usage(data.get("usage"))
        meta: dict[str, Any] = {"model": str(data.get("model") or self.model.name), "usage": usage}
        if isinstance(data.get("id"), str):
            meta["id"] = data["id"]
        if query.task == Task.CHAT:
            message = chat_message(None if calls and not text else text, calls or None)
            return Translated(chat_response(choices=[(message, reason)], **meta), usage)
        return Translated(completion_response(choices=[(text, reason)], **meta), usage)

    def stream(self, query: QueryRequest) -> StreamTranslator:
        return AnthropicStream(self, query)

    def error_status(self, status: int, body: Any, headers: Mapping[str, str]) -> int:
        """529 (overloaded) means "slow down" to the caller, as 429 does: answer 429, which
        carries the upstream ``retry-after`` (or 1) and REQUEST_LIMIT_EXCEEDED."""
        return 429 if status == 529 else status
