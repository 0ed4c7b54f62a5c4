"""Request validation and deterministic response bodies in OpenAI's wire shapes.

Everything here is a pure function of the request body, so the OpenAI, Azure OpenAI
and OpenAI-compatible simulators share one implementation, and a test can predict
every answer:

* chat content is ``"Simulated reply from <model> to: <first 40 chars of the last
  user message>"`` (choice ``i > 0`` gets a ``" [i]"`` suffix); completions answer
  ``"Simulated completion from <model> for: <first 40 chars of the prompt>"``;
* **token counting rule**: one token per whitespace-separated word, for prompts
  (message contents, text parts only) and completions alike; token-array inputs count
  one token per array element; a tool call counts the words of its name plus those of
  its JSON arguments;
* embeddings are unit vectors derived from SHA-256 of ``model`` and the input, so
  equal inputs give equal vectors.

A choice's outcome (text or tool call, finish reason) is computed once by
:func:`plan_chat` / :func:`plan_completions`; the non-streaming body and the
streaming chunks are both assembled from that plan.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from .errors import ApiError, openai_error
from .schema_fill import example_for_schema

__all__ = [
    "CHAT_PARAMS",
    "COMPLETIONS_DEFAULT_MAX_TOKENS",
    "COMPLETION_PARAMS",
    "EMBEDDING_PARAMS",
    "Choice",
    "ToolCall",
    "chat_prompt_tokens",
    "count_tokens",
    "embedding_inputs",
    "plan_chat",
    "plan_completions",
    "split_words",
    "validate_request",
]

# The request arguments OpenAI accepts, per endpoint; anything else is refused with
# "Unrecognized request argument supplied: <name>" (as OpenAI does).
CHAT_PARAMS = frozenset(
    {
        "model", "messages", "audio", "frequency_penalty", "function_call", "functions",
        "logit_bias", "logprobs", "max_completion_tokens", "max_tokens", "metadata",
        "modalities", "n", "parallel_tool_calls", "prediction", "presence_penalty",
        "prompt_cache_key", "prompt_cache_retention", "reasoning_effort",
        "response_format", "safety_identifier", "seed", "service_tier", "stop", "store",
        "stream", "stream_options", "temperature", "tool_choice", "tools", "top_logprobs",
        "top_p", "user", "verbosity", "web_search_options",
    }
)  # fmt: skip
COMPLETION_PARAMS = frozenset(
    {
        "model", "prompt", "best_of", "echo", "frequency_penalty", "logit_bias",
        "logprobs", "max_tokens", "n", "presence_penalty", "seed", "stop", "stream",
        "stream_options", "suffix", "temperature", "top_p", "user",
    }
)  # fmt: skip
EMBEDDING_PARAMS = frozenset({"model", "input", "dimensions", "encoding_format", "user"})

_REQUIRED = {"chat": "messages", "completions": "prompt", "embeddings": "input"}
_WORD = re.compile(r"\s*\S+")
_CALL = re.compile(r"\bcall\s+([A-Za-z0-9_.-]+)", re.IGNORECASE)
#: OpenAI's default ``max_tokens`` for the legacy completions endpoint.
COMPLETIONS_DEFAULT_MAX_TOKENS = 16


def split_words(text: str) -> list[str]:
    """``text`` as word pieces that concatenate back to it: ``["a", " b", " c"]``."""
    return _WORD.findall(text)


def count_tokens(text: str) -> int:
    return len(text.split())


# OpenAI's own upper bounds; without them a fuzzer's n = 10**9 would build a billion choices.
_MAXIMUM = {"n": 128, "dimensions": 3072}


def _int_param(body: Mapping[str, Any], name: str, *, minimum: int) -> int | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise ApiError(
            400,
            openai_error(
                f"Invalid type for '{name}': expected an integer, but got "
                f"{type(value).__name__} instead.",
                param=name,
                code="invalid_type",
            ),
        )
    if value < minimum:
        raise ApiError(
            400,
            openai_error(
                f"Invalid '{name}': integer below minimum value. Expected a value >= "
                f"{minimum}, but got {value} instead.",
                param=name,
                code="integer_below_min_value",
            ),
        )
    maximum = _MAXIMUM.get(name)
    if maximum is not None and value > maximum:
        raise ApiError(
            400,
            openai_error(
                f"Invalid '{name}': integer above maximum value. Expected a value <= "
                f"{maximum}, but got {value} instead.",
                param=name,
                code="integer_above_max_value",
            ),
        )
    return value


def validate_request(
    kind: str,
    body: Mapping[str, Any],
    *,
    allowed: frozenset[str] | None,
    require_model: bool = True,
) -> None:
    """Refuse what OpenAI refuses; ``allowed=None`` accepts unknown arguments (vLLM)."""
    if allowed is not None:
        unknown = sorted(set(body) - allowed)
        if len(unknown) == 1:
            raise ApiError(
                400, openai_error(f"Unrecognized request argument supplied: {unknown[0]}")
            )
        if unknown:
            raise ApiError(
                400, openai_error(f"Unrecognized request arguments supplied: {', '.join(unknown)}")
            )
    if require_model and not body.get("model"):
        raise ApiError(400, openai_error("you must provide a model parameter"))
    required = _REQUIRED[kind]
    if body.get(required) is None:
        raise ApiError(
            400,
            openai_error(
                f"Missing required parameter: '{required}'.",
                param=required,
                code="missing_required_parameter",
            ),
        )
    if kind == "chat":
        messages = body["messages"]
        if not isinstance(messages, list) or not all(isinstance(m, dict) for m in messages):
            raise ApiError(
                400,
                openai_error(
                    "Invalid type for 'messages': expected an array of objects.",
                    param="messages",
                    code="invalid_type",
                ),
            )
        if not messages:
            raise ApiError(
                400,
                openai_error(
                    "Invalid 'messages': empty array. Expected an array with minimum "
                    "length 1, but got an empty array instead.",
                    param="messages",
                    code="empty_array",
                ),
            )
    for name in ("n", "max_tokens", "max_completion_tokens", "dimensions"):
        _int_param(body, name, minimum=1)
    stream = body.get("stream", False)
    if stream is not None and not isinstance(stream, bool):
        raise ApiError(
            400,
            openai_error(
                "Invalid type for 'stream': expected a boolean.",
                param="stream",
                code="invalid_type",
            ),
        )
    if body.get("stream_options") is not None and not stream:
        raise ApiError(
            400,
            openai_error(
                "The 'stream_options' parameter is only allowed when 'stream' is enabled.",
                param="stream_options",
            ),
        )


def _text_of(content: object) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # content parts: keep the text ones
        return " ".join(
            str(part.get("text", ""))
            for part in content
            if isinstance(part, dict) and part.get("type") == "text"
        )
    return ""


def _stop_sequences(body: Mapping[str, Any]) -> list[str]:
    stop = body.get("stop")
    if isinstance(stop, str):
        return [stop]
    if isinstance(stop, list):
        return [s for s in stop if isinstance(s, str) and s]
    return []


@dataclass(frozen=True, slots=True)
class ToolCall:
    id: str
    name: str
    arguments: str


@dataclass(frozen=True, slots=True)
class Choice:
    """The outcome of one choice, shared by the streaming and non-streaming bodies."""

    index: int
    text: str | None
    tool_call: ToolCall | None
    finish_reason: str
    #: Tokens of an echoed prompt at the start of ``text`` (completions ``echo``),
    #: which OpenAI does not count as completion tokens.
    echoed_tokens: int = 0

    @property
    def completion_tokens(self) -> int:
        if self.tool_call is not None:
            return count_tokens(self.tool_call.name) + count_tokens(self.tool_call.arguments)
        return count_tokens(self.text or "") - self.echoed_tokens


def _limit(text: str, *, stops: Sequence[str], max_tokens: int | None) -> tuple[str, str]:
    """Apply stop sequences then the token budget; returns (text, finish_reason)."""
    cut = min((i for i in (text.find(s) for s in stops) if i >= 0), default=-1)
    if cut >= 0:
        text = text[:cut]
    words = split_words(text)
    if max_tokens is not None and len(words) > max_tokens:
        return "".join(words[:max_tokens]), "length"
    return text, "stop"


def _tool_to_call(body: Mapping[str, Any], user_text: str) -> dict[str, Any] | None:
    """The function definition to call, if ``tool_choice`` forces one or the user
    message says ``call <name>`` for a declared tool."""
    tools: list[dict[str, Any]] = [
        t["function"]
        for t in body.get("tools") or []
        if isinstance(t, dict) and isinstance(t.get("function"), dict)
    ]
    by_name = {str(f.get("name")): f for f in tools}
    choice = body.get("tool_choice")
    if not tools or choice == "none":
        return None
    if isinstance(choice, dict) and isinstance(choice.get("function"), dict):
        name = str(choice["function"].get("name"))
        return by_name.get(name, {"name": name})
    if choice == "required":
        return tools[0]
    match = _CALL.search(user_text)
    return by_name.get(match.group(1)) if match else None


def _call_id(*parts: object) -> str:
    return "call_" + hashlib.sha256(repr(parts).encode()).hexdigest()[:24]


def plan_chat(body: Mapping[str, Any], model: str) -> list[Choice]:
    messages: list[dict[str, Any]] = body["messages"]
    user_text = next(
        (_text_of(m.get("content")) for m in reversed(messages) if m.get("role") == "user"), ""
    )
    snippet = user_text[:40].strip()
    fmt = body.get("response_format")
    fmt_type = fmt.get("type") if isinstance(fmt, dict) else None
    tool = _tool_to_call(body, user_text)
    max_tokens = body.get("max_completion_tokens") or body.get("max_tokens")
    choices: list[Choice] = []
    for index in range(body.get("n") or 1):
        reply = f"Simulated reply from {model} to: {snippet}" + (f" [{index}]" if index else "")
        if tool is not None:
            name = str(tool.get("name"))
            arguments = orjson.dumps(example_for_schema(tool.get("parameters") or {}, snippet))
            call = ToolCall(_call_id(model, name, index, user_text), name, arguments.decode())
            choices.append(Choice(index, None, call, "tool_calls"))
            continue
        if fmt_type == "json_object":
            reply = orjson.dumps({"reply": reply}).decode()
        elif fmt_type == "json_schema" and isinstance(fmt, dict):
            schema = (fmt.get("json_schema") or {}).get("schema") or {}
            reply = orjson.dumps(example_for_schema(schema, reply)).decode()
        text, finish = _limit(reply, stops=_stop_sequences(body), max_tokens=max_tokens)
        choices.append(Choice(index, text, None, finish))
    return choices


def chat_prompt_tokens(body: Mapping[str, Any]) -> int:
    return sum(count_tokens(_text_of(m.get("content"))) for m in body["messages"])


def _prompts(value: object) -> list[tuple[str, int]]:
    """Normalise a completions ``prompt`` / embeddings ``input`` to (text, tokens) items."""
    if isinstance(value, str):
        return [(value, count_tokens(value))]
    if isinstance(value, list) and value and all(isinstance(v, int) for v in value):
        return [(" ".join(map(str, value)), len(value))]
    if isinstance(value, list):
        items: list[tuple[str, int]] = []
        for item in value:
            if isinstance(item, str):
                items.append((item, count_tokens(item)))
            elif isinstance(item, list):
                items.append((" ".join(map(str, item)), len(item)))
        return items
    return []


def plan_completions(body: Mapping[str, Any], model: str) -> tuple[list[Choice], int]:
    """Choices for every prompt (prompt ``p``, choice ``i`` -> index ``p * n + i``) and
    the prompt token count."""
    n = body.get("n") or 1
    max_tokens = body.get("max_tokens", COMPLETIONS_DEFAULT_MAX_TOKENS)
    prompts = _prompts(body["prompt"])
    choices: list[Choice] = []
    for p, (prompt, _) in enumerate(prompts):
        for i in range(n):
            reply = f"Simulated completion from {model} for: {prompt[:40].strip()}"
            reply += f" [{i}]" if i else ""
            text, finish = _limit(reply, stops=_stop_sequences(body), max_tokens=max_tokens)
            echoed = 0
            if body.get("echo"):
                text, echoed = prompt + text, count_tokens(prompt + text) - count_tokens(text)
            choices.append(Choice(p * n + i, text, None, finish, echoed))
    return choices, sum(tokens for _, tokens in prompts)


def embedding_inputs(body: Mapping[str, Any]) -> list[tuple[str, int]]:
    """The inputs to embed; an empty, empty-string or non-text/token input is
    refused with OpenAI's message."""
    inputs = _prompts(body["input"])
    if not inputs or any(tokens == 0 for _, tokens in inputs):
        raise ApiError(
            400,
            openai_error(
                "'$.input' is invalid. Please check the API reference: "
                "https://platform.openai.com/docs/api-reference.",
            ),
        )
    return inputs
