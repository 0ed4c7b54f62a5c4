"""OpenAI response bodies and stream chunks, assembled from planned choices.

The field sets mirror what api.openai.com returns today (``chat.completion``,
``chat.completion.chunk``, ``text_completion``, ``list`` of ``embedding``), including
the fields clients rarely read (``system_fingerprint``, ``logprobs: null``,
``usage`` details), because a gateway that re-serialises responses must cope with
them. Streaming follows OpenAI's framing rules:

* the first chunk of a chat choice carries ``delta.role`` (and an empty content),
  then one chunk per word, then a chunk with an empty delta and ``finish_reason``;
* with ``stream_options.include_usage`` every chunk has ``"usage": null`` and an
  extra last chunk has ``"choices": []`` and the usage of the whole request.
"""

from __future__ import annotations

import base64
import hashlib
import math
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from .openai_shapes import Choice, split_words

__all__ = [
    "ResponseMeta",
    "chat_body",
    "chat_chunks",
    "completion_body",
    "completion_chunks",
    "embedding_vector",
    "embeddings_body",
    "usage",
]

SYSTEM_FINGERPRINT = "fp_simulated"


@dataclass(frozen=True, slots=True)
class ResponseMeta:
    """What every body and chunk of one response shares."""

    id: str
    created: int
    model: str


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, Any]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
        "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
        "completion_tokens_details": {
            "reasoning_tokens": 0,
            "audio_tokens": 0,
            "accepted_prediction_tokens": 0,
            "rejected_prediction_tokens": 0,
        },
    }


def _tool_calls_json(choice: Choice) -> list[dict[str, Any]]:
    assert choice.tool_call is not None
    call = choice.tool_call
    return [
        {
            "id": call.id,
            "type": "function",
            "function": {"name": call.name, "arguments": call.arguments},
        }
    ]


def chat_body(meta: ResponseMeta, choices: Sequence[Choice], prompt_tokens: int) -> dict[str, Any]:
    out_choices = []
    for choice in choices:
        message: dict[str, Any] = {
            "role": "assistant",
            "content": choice.text,
            "refusal": None,
            "annotations": [],
        }
        if choice.tool_call is not None:
            message["tool_calls"] = _tool_calls_json(choice)
        out_choices.append(
            {
                "index": choice.index,
                "message": message,
                "logprobs": None,
                "finish_reason": choice.finish_reason,
            }
        )
    return {
        "id": meta.id,
        "object": "chat.completion",
        "created": meta.created,
        "model": meta.model,
        "choices": out_choices,
        "usage": usage(prompt_tokens, sum(c.completion_tokens for c in choices)),
        "service_tier": "default",
        "system_fingerprint": SYSTEM_FINGERPRINT,
    }


def _chat_chunk(
    meta: ResponseMeta, index: int, delta: dict[str, Any], finish: str | None, with_usage: bool
) -> dict[str, Any]:
    chunk: dict[str, Any] = {
        "id": meta.id,
        "object": "chat.completion.chunk",
        "created": meta.created,
        "model": meta.model,
        "service_tier": "default",
        "system_fingerprint": SYSTEM_FINGERPRINT,
        "choices": [{"index": index, "delta": delta, "logprobs": None, "finish_reason": finish}],
    }
    if with_usage:
        chunk["usage"] = None
    return chunk


def _usage_chunk(meta: ResponseMeta, obj: str, usage_json: dict[str, Any]) -> dict[str, Any]:
    chunk: dict[str, Any] = {
        "id": meta.id,
        "object": obj,
        "created": meta.created,
        "model": meta.model,
        "choices": [],
        "usage": usage_json,
        "system_fingerprint": SYSTEM_FINGERPRINT,
    }
    if obj == "chat.completion.chunk":
        chunk["service_tier"] = "default"
    return chunk


def chat_chunks(
    meta: ResponseMeta, choices: Sequence[Choice], prompt_tokens: int, *, include_usage: bool
) -> list[dict[str, Any]]:
    chunks: list[dict[str, Any]] = []
    for choice in choices:
        if choice.tool_call is not None:
            call = choice.tool_call
            opening = {
                "index": 0,
                "id": call.id,
                "type": "function",
                "function": {"name": call.name, "arguments": ""},
            }
            first = {"role": "assistant", "content": None, "tool_calls": [opening], "refusal": None}
            chunks.append(_chat_chunk(meta, choice.index, first, None, include_usage))
            for piece in split_words(call.arguments):
                delta = {"tool_calls": [{"index": 0, "function": {"arguments": piece}}]}
                chunks.append(_chat_chunk(meta, choice.index, delta, None, include_usage))
        else:
            first = {"role": "assistant", "content": "", "refusal": None}
            chunks.append(_chat_chunk(meta, choice.index, first, None, include_usage))
            for piece in split_words(choice.text or ""):
                chunks.append(
                    _chat_chunk(meta, choice.index, {"content": piece}, None, include_usage)
                )
        chunks.append(_chat_chunk(meta, choice.index, {}, choice.finish_reason, include_usage))
    if include_usage:
        total = usage(prompt_tokens, sum(c.completion_tokens for c in choices))
        chunks.append(_usage_chunk(meta, "chat.completion.chunk", total))
    return chunks


def completion_body(
    meta: ResponseMeta, choices: Sequence[Choice], prompt_tokens: int
) -> dict[str, Any]:
    return {
        "id": meta.id,
        "object": "text_completion",
        "created": meta.created,
        "model": meta.model,
        "system_fingerprint": SYSTEM_FINGERPRINT,
        "choices": [
            {
                "text": c.text or "",
                "index": c.index,
                "logprobs": None,
                "finish_reason": c.finish_reason,
            }
            for c in choices
        ],
        "usage": usage(prompt_tokens, sum(c.completion_tokens for c in choices)),
    }


def completion_chunks(
    meta: ResponseMeta, choices: Sequence[Choice], prompt_tokens: int, *, include_usage: bool
) -> list[dict[str, Any]]:
    def chunk(index: int, text: str, finish: str | None) -> dict[str, Any]:
        out: dict[str, Any] = {
            "id": meta.id,
            "object": "text_completion",
            "created": meta.created,
            "model": meta.model,
            "system_fingerprint": SYSTEM_FINGERPRINT,
            "choices": [{"text": text, "index": index, "logprobs": None, "finish_reason": finish}],
        }
        if include_usage:
            out["usage"] = None
        return out

    chunks: list[dict[str, Any]] = []
    for choice in choices:
        chunks.extend(chunk(choice.index, piece, None) for piece in split_words(choice.text or ""))
        chunks.append(chunk(choice.index, "", choice.finish_reason))
    if include_usage:
        total = usage(prompt_tokens, sum(c.completion_tokens for c in choices))
        chunks.append(_usage_chunk(meta, "text_completion", total))
    return chunks


def embedding_vector(model: str, text: str, dimensions: int) -> bytes:
    """A unit vector as little-endian float32 bytes, derived from SHA-256 of the
    model and input (the same bytes back both the float and base64 encodings)."""
    raw = b""
    counter = 0
    while len(raw) < dimensions * 4:
        raw += hashlib.sha256(f"{model}\0{text}\0{counter}".encode()).digest()
        counter += 1
    ints = struct.unpack(f"<{dimensions}I", raw[: dimensions * 4])
    values = [i / 2**31 - 1.0 for i in ints]
    norm = math.sqrt(sum(v * v for v in values)) or 1.0
    return struct.pack(f"<{dimensions}f", *(v / norm for v in values))


def embeddings_body(
    model: str, inputs: Sequence[tuple[str, int]], *, dimensions: int, encoding_format: str
) -> dict[str, Any]:
    data = []
    for index, (text, _) in enumerate(inputs):
        packed = embedding_vector(model, text, dimensions)
        vector: Any = (
            base64.b64encode(packed).decode("ascii")
            if encoding_format == "base64"
            else list(struct.unpack(f"<{dimensions}f", packed))
        )
        data.append({"object": "embedding", "index": index, "embedding": vector})
    tokens = sum(t for _, t in inputs)
    return {
        "object": "list",
        "data": data,
        "model": model,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    }
