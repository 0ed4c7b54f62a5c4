"""The unified query bodies clients send (chat, completions, embeddings) and their validation.

Clients always speak the OpenAI-style format; the Databricks ``/invocations`` body is the same
plus a few gateway-only fields (``extra_params``, ``client_request_id``, ``usage_context``).
The models validate the parameters the gateway understands and keep every other key
(``extra="allow"``): provider extras pass through, and each translator decides what its
provider accepts.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from servegate.ingress.errors import BadRequest, InvalidParameter
from servegate.spec.endpoint import Task
from servegate.spec.manifest import validation_errors

_ALLOW = ConfigDict(extra="allow")

# Fields the gateway consumes itself; they are never forwarded to a provider.
GATEWAY_FIELDS = frozenset({"extra_params", "client_request_id", "usage_context", "model"})
# Custom-model input formats (databricks-api.md §3.1): meaningless on an LLM endpoint.
_CUSTOM_MODEL_FIELDS = ("dataframe_records", "dataframe_split", "instances", "inputs")
# The field that says which task a body is for.
_TASK_FIELD = {Task.CHAT: "messages", Task.COMPLETIONS: "prompt", Task.EMBEDDINGS: "input"}
# JSON nesting a body may have. orjson parses up to 1024 levels but encodes only 254, and
# pydantic's serializer stops near 255: deeper bodies would fail after validation (a 500).
# The margin leaves room for the levels a translator adds around client values.
MAX_NESTING = 128


class ChatMessage(BaseModel):
    model_config = _ALLOW
    role: Literal["system", "user", "assistant", "tool", "developer", "function"]
    content: str | list[dict[str, Any]] | None = None


class _Generation(BaseModel):
    """Sampling parameters shared by chat and completions."""

    model_config = _ALLOW
    max_tokens: int | None = Field(default=None, gt=0)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, ge=0, le=1)
    top_k: int | None = Field(default=None, gt=0)
    n: int | None = Field(default=None, ge=1)
    stop: str | list[str] | None = None
    stream: bool | None = None
    stream_options: dict[str, Any] | None = None


class ChatRequest(_Generation):
    messages: list[ChatMessage] = Field(min_length=1)
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    response_format: dict[str, Any] | None = None


class CompletionsRequest(_Generation):
    prompt: str | list[str]


class EmbeddingsRequest(BaseModel):
    model_config = _ALLOW
    input: str | list[str] | list[int] | list[list[int]]
    encoding_format: Literal["float", "base64"] | None = None
    dimensions: int | None = Field(default=None, gt=0)


_MODELS: dict[Task, type[BaseModel]] = {
    Task.CHAT: ChatRequest,
    Task.COMPLETIONS: CompletionsRequest,
    Task.EMBEDDINGS: EmbeddingsRequest,
}


@dataclass(frozen=True, slots=True)
class QueryRequest:
    """One validated query: what to send on (``payload``) and what the gateway keeps."""

    task: Task
    payload: dict[str, Any]
    stream: bool
    client_request_id: str | None = None
    usage_context: dict[str, str] = field(default_factory=dict)

    def prompt_characters(self) -> int:
        """Characters of the prompt's text (messages, prompt or input), for token estimates."""
        value = self.payload.get(_TASK_FIELD[self.task])
        return sum(len(text) for text in _texts(value))

    def with_max_tokens(self, cap: int) -> QueryRequest:
        """A copy whose ``max_tokens`` is at most ``cap`` (the original stays untouched)."""
        current = self.payload.get("max_tokens")
        limit = cap if not isinstance(current, int) else min(current, cap)
        return replace(self, payload={**self.payload, "max_tokens": limit})

    @property
    def include_usage_requested(self) -> bool:
        options = self.payload.get("stream_options")
        return isinstance(options, dict) and options.get("include_usage") is True


def parse_query(task: Task, body: object, *, depth_checked: bool = False) -> QueryRequest:
    """Validate a client body against the endpoint's task; raise BadRequest naming the field.

    ``depth_checked``: the body came from ``ingress.body.read_json``, which already refused
    one nested deeper than ``MAX_NESTING`` (cheaply, from its bytes)."""
    if not isinstance(body, dict):
        raise BadRequest("The request body must be a JSON object.")
    if not depth_checked and nested_deeper_than(body, MAX_NESTING):
        raise BadRequest(f"The request body is nested more than {MAX_NESTING} levels deep.")
    for name in _CUSTOM_MODEL_FIELDS:
        if name in body:
            raise BadRequest(
                f"'{name}' is a custom-model input format; this endpoint serves {task} "
                f"and takes '{_TASK_FIELD[task]}'."
            )
    expected = _TASK_FIELD[task]
    if expected not in body:
        found = [f"'{f}'" for t, f in _TASK_FIELD.items() if t != task and f in body]
        hint = f" (the body has {', '.join(found)}, which belongs to another task)" if found else ""
        raise BadRequest(f"This endpoint serves {task}: the body needs '{expected}'{hint}.")

    merged = {k: v for k, v in body.items() if k not in GATEWAY_FIELDS}
    merged.update(_decode_extra_params(body.get("extra_params")))
    try:
        model = _MODELS[task].model_validate(merged)
    except ValidationError as exc:
        raise InvalidParameter(_describe(exc)) from None
    payload = model.model_dump(mode="json", exclude_unset=True)
    return QueryRequest(
        task=task,
        payload=payload,
        stream=bool(payload.get("stream")),
        client_request_id=_optional_str(body, "client_request_id"),
        usage_context=_usage_context(body.get("usage_context")),
    )


def _decode_extra_params(extra: object) -> dict[str, Any]:
    """``extra_params`` is map<string,string> in databricks-sdk: decode JSON-looking values.

    ``{"top_p": "0.5", "logit_bias": "{\\"50256\\": -100}", "user": "ana"}`` becomes
    ``{"top_p": 0.5, "logit_bias": {"50256": -100}, "user": "ana"}``.
    """
    if extra is None:
        return {}
    if not isinstance(extra, dict):
        raise InvalidParameter("extra_params: must be an object of parameter names to values.")
    decoded: dict[str, Any] = {}
    for key, value in extra.items():
        if key in GATEWAY_FIELDS:
            continue
        if isinstance(value, str):
            try:
                decoded[key] = orjson.loads(value)
            except orjson.JSONDecodeError:
                decoded[key] = value
            if nested_deeper_than(decoded[key], MAX_NESTING - 1):
                raise InvalidParameter(
                    f"extra_params.{key}: nested more than {MAX_NESTING} levels deep."
                )
        else:
            decoded[key] = value
    return decoded


def too_deep(raw: bytes, value: object) -> bool:
    """Whether the JSON document ``raw`` (decoded: ``value``) nests deeper than
    ``MAX_NESTING``. A document with no more brackets than that cannot (brackets inside
    strings only add to the count), which spares walking the common small body."""
    if raw.count(b"{") + raw.count(b"[") <= MAX_NESTING:
        return False
    return nested_deeper_than(value, MAX_NESTING)


def nested_deeper_than(value: object, limit: int) -> bool:
    """Whether ``value`` has containers (objects, arrays) nested more than ``limit`` deep.

    Level by level, without recursion, so any depth is measured safely.
    """
    level: list[dict[Any, Any] | list[Any]] = [value] if isinstance(value, dict | list) else []
    for _ in range(limit):
        below: list[dict[Any, Any] | list[Any]] = []
        for container in level:
            items = container.values() if isinstance(container, dict) else container
            below += [item for item in items if isinstance(item, dict | list)]
        if not below:
            return False
        level = below
    return bool(level)


def _optional_str(body: dict[str, Any], key: str) -> str | None:
    value = body.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        raise InvalidParameter(f"{key}: must be a string.")
    return value


def _usage_context(value: object) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
        raise InvalidParameter("usage_context: must be an object of string keys and values.")
    return {k: str(v) for k, v in value.items()}


def _describe(exc: ValidationError) -> str:
    """The first problems, as ``field.path: message`` (clients show one line)."""
    issues = validation_errors(exc)[:3]
    return "Invalid request: " + "; ".join(f"{i.field or 'body'}: {i.message}" for i in issues)


def _texts(value: object) -> list[str]:
    """The text inside a prompt, messages (string or content-part contents) or input."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        if isinstance(value.get("text"), str):
            return [value["text"]]
        return _texts(value.get("content"))
    if isinstance(value, list):
        return [text for item in value for text in _texts(item)]
    return []
