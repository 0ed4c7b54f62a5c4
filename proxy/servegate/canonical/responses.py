"""Builders for the OpenAI-shaped responses and stream chunks every translator returns.

Translators for non-OpenAI providers build their output here, so the shapes (and the
stream's usage policy) are written once. The usage policy for streams: the client always
gets usage; if it asked for ``stream_options.include_usage`` it comes as OpenAI sends it
(a last chunk with ``"choices": []``), otherwise it rides on the chunk that carries
``finish_reason``.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import orjson

from servegate.canonical.usage import Usage
from servegate.spec.endpoint import Task
from servegate.streaming.sse import encode_data


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


def chat_message(
    content: str | None, tool_calls: list[dict[str, Any]] | None = None
) -> dict[str, Any]:
    """An assistant message; ``tool_calls`` entries are ``{"id", "type": "function", "function": {"name", "arguments"}}``."""
    message: dict[str, Any] = {"role": "assistant", "content": content}
    if tool_calls:
        message["tool_calls"] = tool_calls
    return message


def chat_response(
    *,
    model: str,
    choices: list[tuple[dict[str, Any], str | None]],
    usage: Usage | None,
    id: str | None = None,
    created: int | None = None,
) -> dict[str, Any]:
    """``choices``: (message from :func:`chat_message`, finish_reason) per choice."""
    return {
        "id": id or new_id("chatcmpl"),
        "object": "chat.completion",
        "created": created or int(time.time()),
        "model": model,
        "choices": [
            {"index": i, "message": message, "finish_reason": reason, "logprobs": None}
            for i, (message, reason) in enumerate(choices)
        ],
        "usage": usage.to_openai() if usage else None,
    }


def completion_response(
    *,
    model: str,
    choices: list[tuple[str, str | None]],
    usage: Usage | None,
    id: str | None = None,
    created: int | None = None,
) -> dict[str, Any]:
    """``choices``: (text, finish_reason) per choice."""
    return {
        "id": id or new_id("cmpl"),
        "object": "text_completion",
        "created": created or int(time.time()),
        "model": model,
        "choices": [
            {"index": i, "text": text, "finish_reason": reason, "logprobs": None}
            for i, (text, reason) in enumerate(choices)
        ],
        "usage": usage.to_openai() if usage else None,
    }


def embeddings_response(
    *, model: str, vectors: list[list[float]], prompt_tokens: int
) -> dict[str, Any]:
    return {
        "object": "list",
        "model": model,
        "data": [
            {"object": "embedding", "index": i, "embedding": vector}
            for i, vector in enumerate(vectors)
        ],
        "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens},
    }


@dataclass
class ChunkEmitter:
    """Encodes the OpenAI chunks of one streamed chat or completions response as SSE frames.

    One per request. Call :meth:`text` (and :meth:`tool_call` for chat) as content arrives,
    then :meth:`finish` once with the finish reason and the usage.
    """

    task: Task
    model: str
    include_usage: bool
    id: str = ""
    created: int = field(default_factory=lambda: int(time.time()))
    _started: bool = False

    def __post_init__(self) -> None:
        if not self.id:
            self.id = new_id("chatcmpl" if self.task == Task.CHAT else "cmpl")

    def text(self, text: str, index: int = 0) -> list[bytes]:
        if self.task == Task.CHAT:
            return self._chat_delta({"content": text}, index)
        return [
            self._frame([{"index": index, "text": text, "finish_reason": None, "logprobs": None}])
        ]

    def tool_call(
        self,
        *,
        position: int,
        call_id: str | None = None,
        name: str | None = None,
        arguments: str = "",
        index: int = 0,
    ) -> list[bytes]:
        """A tool-call delta: the first for a call carries id and name, later ones argument text."""
        call: dict[str, Any] = {"index": position, "function": {"arguments": arguments}}
        if call_id is not None:
            call |= {"id": call_id, "type": "function"}
        if name is not None:
            call["function"]["name"] = name
        return self._chat_delta({"tool_calls": [call]}, index)

    def finish(self, reason: str | None, usage: Usage | None, index: int = 0) -> list[bytes]:
        frames: list[bytes] = []
        if self.task == Task.CHAT:
            if not self._started:  # an empty answer still announces the assistant role
                frames += self._chat_delta({"content": ""}, index)
            choice: dict[str, Any] = {
                "index": index,
                "delta": {},
                "finish_reason": reason,
                "logprobs": None,
            }
        else:
            choice = {"index": index, "text": "", "finish_reason": reason, "logprobs": None}
        if self.include_usage or usage is None:
            frames.append(self._frame([choice]))
            if usage is not None:
                frames.append(self._frame([], usage))
        else:
            frames.append(self._frame([choice], usage))
        return frames

    def _chat_delta(self, delta: dict[str, Any], index: int) -> list[bytes]:
        if not self._started:
            self._started = True
            delta = {"role": "assistant", **delta}
        return [
            self._frame([{"index": index, "delta": delta, "finish_reason": None, "logprobs": None}])
        ]

    def _frame(self, choices: list[dict[str, Any]], usage: Usage | None = None) -> bytes:
        chunk: dict[str, Any] = {
            "id": self.id,
            "object": "chat.completion.chunk" if self.task == Task.CHAT else "text_completion",
            "created": self.created,
            "model": self.model,
            "choices": choices,
        }
        if usage is not None:
            chunk["usage"] = usage.to_openai()
        return encode_data(orjson.dumps(chunk))
