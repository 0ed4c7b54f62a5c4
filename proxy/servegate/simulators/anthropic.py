"""The Anthropic Messages API simulator: ``POST /v1/messages`` as api.anthropic.com serves it.

What a gateway must get right, and what this app therefore checks, in the real API's order
and with its error bodies (``{"type": "error", "error": {"type", "message"},
"request_id"}``; every response carries a ``request-id`` header):

* ``x-api-key`` (401 ``authentication_error``: "x-api-key header is required" /
  "invalid x-api-key"), then ``anthropic-version`` (400 "anthropic-version: header is
  required"; an unknown version is refused too);
* the body: unknown top-level fields ("<field>: Extra inputs are not permitted", which is
  what an OpenAI-only parameter such as ``n`` or ``stop`` gets), ``model`` and
  ``max_tokens`` required ("max_tokens: Field required"), ``temperature`` within 0-1,
  ``messages`` non-empty, roles only ``user``/``assistant`` (a ``system`` role gets the
  real hint about the top-level ``system``), the first one ``user``, alternating, no
  empty text, well-formed image/tool blocks, and every ``tool_result`` answering a
  ``tool_use`` of the previous turn (and the reverse);
* ``models`` (optional) limits the model names (404 ``not_found_error`` "model: <name>").

Replies are deterministic: ``"Simulated reply from <model> to: <first 40 characters of the
last user turn's text>"``, cut at the first stop sequence (``stop_reason: stop_sequence``)
and at ``max_tokens`` words (``max_tokens``). A tool is used (``stop_reason: tool_use``,
input generated from its ``input_schema``) when ``tool_choice`` is ``any``/``tool``, or it
is ``auto`` and the last user text says ``call <tool name>``. Token rule: one token per
whitespace-separated word, over the system prompt and every text, tool input (as JSON) and
tool result of the messages; the output counts the reply's words (a tool use: its name and
JSON input).

Streams use the real framing: ``event: <type>`` and ``data: <json>`` per event, in the real
order (``message_start``, then per block ``content_block_start``, a ``ping`` after the
first, ``content_block_delta``s, ``content_block_stop``, then ``message_delta`` and
``message_stop``), and no ``[DONE]``. The shared ``/_sim`` faults apply to streams with
that framing; in addition, a fault whose ``body`` is an Anthropic error object and whose
status is 200 (or unset) is sent in-band as an ``event: error`` right after the first
content delta, and ends the stream: how Anthropic reports ``overloaded_error`` mid-stream.
"""

from __future__ import annotations

import hashlib
import re
import uuid
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any, Final

import orjson
from aiohttp import web

from .errors import ApiError
from .faults import Fault, install_control
from .openai_shapes import count_tokens, split_words
from .schema_fill import example_for_schema
from .wire import JsonReply, StreamReply, deliver, json_response

__all__ = [
    "API_VERSIONS",
    "DEFAULT_API_KEY",
    "anthropic_error",
    "anthropic_status_error",
    "create_anthropic_app",
]

DEFAULT_API_KEY: Final = "sk-ant-servegate-simulator"
API_VERSIONS: Final = frozenset({"2023-06-01", "2023-01-01"})
_FIELDS = frozenset({
    "model", "messages", "max_tokens", "system", "stop_sequences", "stream", "temperature",
    "top_p", "top_k", "tools", "tool_choice", "metadata", "thinking", "service_tier",
    "container", "mcp_servers", "context_management", "inference_geo",
})  # fmt: skip
_BLOCK_TYPES = {
    "user": {"text", "image", "tool_result", "document"},
    "assistant": {"text", "tool_use"},
}
_MEDIA_TYPES = ("image/jpeg", "image/png", "image/gif", "image/webp")
_CALL = re.compile(r"\bcall\s+([A-Za-z0-9_.-]+)", re.IGNORECASE)
#: An in-band error fault interrupts the stream after this many events: message_start,
#: content_block_start, ping and the first content_block_delta.
_IN_BAND_ERROR_AFTER = 4
_STATUS_ERRORS = {
    400: ("invalid_request_error", "Invalid request (simulated fault)."),
    401: ("authentication_error", "invalid x-api-key"),
    403: ("permission_error", "Your API key does not have permission to use the specified resource."),
    404: ("not_found_error", "The requested resource could not be found."),
    413: ("request_too_large", "Request exceeds the maximum allowed number of bytes."),
    429: ("rate_limit_error", "This request would exceed the rate limit for your organization of 50 requests per minute. Please retry later or contact sales to discuss a rate limit increase."),
    500: ("api_error", "Internal server error"),
    529: ("overloaded_error", "Overloaded"),
}  # fmt: skip

Body = dict[str, Any]


def anthropic_error(kind: str, message: str) -> Body:
    """Anthropic's error envelope."""
    error = {"type": kind, "message": message}
    return {"type": "error", "error": error, "request_id": f"req_sim{uuid.uuid4().hex[:20]}"}


def anthropic_status_error(
    _request: web.Request, status: int, model: str | None, _headers: Mapping[str, str]
) -> object:
    """Anthropic's body for a fault that names only ``status``."""
    if status == 404 and model:
        return anthropic_error("not_found_error", f"model: {model}")
    fallback = ("invalid_request_error", "api_error")[status >= 500]
    kind, message = _STATUS_ERRORS.get(status, (fallback, f"Simulated error (HTTP {status})."))
    return anthropic_error(kind, message)


def _invalid(message: str) -> ApiError:
    return ApiError(400, anthropic_error("invalid_request_error", message))


def _number(body: Body, name: str, low: float, high: float | None) -> None:
    value = body.get(name)
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _invalid(f"{name}: Input should be a valid number")
    if value < low:
        raise _invalid(f"{name}: Input should be greater than or equal to {low:g}")
    if high is not None and value > high:
        raise _invalid(f"{name}: Input should be less than or equal to {high:g}")


def _check_block(block: object, role: str, where: str, tool_ids: set[str]) -> None:
    kind = block.get("type") if isinstance(block, dict) else None
    if not isinstance(block, dict) or kind not in _BLOCK_TYPES[role]:
        raise _invalid(f"{where}: Input tag '{kind}' found using 'type' is not allowed here")
    if kind == "text" and (not isinstance(block.get("text"), str) or not block["text"]):
        raise _invalid("messages: text content blocks must be non-empty")
    source = block.get("source") if kind == "image" else None
    if kind == "image" and not (
        isinstance(source, dict)
        and (
            (source.get("type") == "base64" and source.get("media_type") in _MEDIA_TYPES
             and isinstance(source.get("data"), str))
            or (source.get("type") == "url" and isinstance(source.get("url"), str))
        )
    ):  # fmt: skip
        raise _invalid(f"{where}.source: Input should be a valid base64 or url image source")
    if kind == "tool_use" and not (
        isinstance(block.get("id"), str)
        and block.get("name")
        and isinstance(block.get("input"), dict)
    ):
        raise _invalid(f"{where}: tool_use blocks need 'id', 'name' and an object 'input'")
    if kind == "tool_result" and block.get("tool_use_id") not in tool_ids:
        raise _invalid(
            f"{where}: unexpected `tool_use_id` found in `tool_result` blocks: "
            f"{block.get('tool_use_id')}. Each `tool_result` block must have a corresponding "
            "`tool_use` block in the previous message."
        )


def _check_messages(messages: object) -> None:
    if not isinstance(messages, list):
        raise _invalid("messages: Input should be a valid list")
    if not messages:
        raise _invalid("messages: at least one message is required")
    previous: Body | None = None
    for i, message in enumerate(messages):
        role = message.get("role") if isinstance(message, dict) else None
        if role == "system":
            raise _invalid(
                'messages: Unexpected role "system". The Messages API accepts a top-level '
                '`system` parameter, not "system" as an input message role.'
            )
        if not isinstance(message, dict) or role not in ("user", "assistant"):
            raise _invalid(f"messages.{i}.role: Input should be 'user' or 'assistant'")
        if i == 0 and role != "user":
            raise _invalid('messages: first message must use the "user" role')
        if previous is not None and previous["role"] == role:
            raise _invalid(
                'messages: roles must alternate between "user" and "assistant", but found '
                f'multiple "{role}" roles in a row'
            )
        content = message.get("content")
        if not content:
            raise _invalid(
                f"messages.{i}: all messages must have non-empty content except for the "
                "optional final assistant message"
            )
        asked = {b["id"] for b in _blocks_of(previous) if b.get("type") == "tool_use"}
        for j, block in enumerate(content if isinstance(content, list) else []):
            _check_block(
                block, role, f"messages.{i}.content.{j}", asked if role == "user" else set()
            )
        answered = {
            b.get("tool_use_id") for b in _blocks_of(message) if b.get("type") == "tool_result"
        }
        if role == "user" and asked - answered:
            raise _invalid(
                f"messages.{i - 1}: `tool_use` ids were found without `tool_result` blocks "
                f"immediately after: {', '.join(sorted(asked - answered))}. Each `tool_use` "
                "block must have a corresponding `tool_result` block in the next message."
            )
        previous = message


def _check_tools(body: Body) -> None:
    tools = body.get("tools")
    for i, tool in enumerate(tools if isinstance(tools, list) else []):
        extra = sorted(set(tool) - {"name", "description", "input_schema", "type", "cache_control"})
        if extra:
            raise _invalid(f"tools.{i}.custom.{extra[0]}: Extra inputs are not permitted")
        for field in ("name", "input_schema"):
            if not tool.get(field):
                raise _invalid(f"tools.{i}.custom.{field}: Field required")
    choice = body.get("tool_choice")
    if choice is not None and (
        not isinstance(choice, dict)
        or choice.get("type") not in ("auto", "any", "tool", "none")
        or (choice.get("type") == "tool" and not choice.get("name"))
    ):
        raise _invalid("tool_choice: Input should be a valid tool choice (auto, any, tool, none)")


def validate(body: Body) -> None:
    """Refuse what the Messages API refuses (raises :class:`ApiError`)."""
    extra = sorted(set(body) - _FIELDS)
    if extra:
        raise _invalid(f"{extra[0]}: Extra inputs are not permitted")
    for field in ("model", "max_tokens", "messages"):
        if field not in body:
            raise _invalid(f"{field}: Field required")
    if isinstance(body["max_tokens"], bool) or not isinstance(body["max_tokens"], int):
        raise _invalid("max_tokens: Input should be a valid integer")
    _number(body, "max_tokens", 1, None)
    _number(body, "temperature", 0, 1)
    _number(body, "top_p", 0, 1)
    _number(body, "top_k", 0, None)
    system = body.get("system")
    if system is not None and not isinstance(system, str | list):
        raise _invalid("system: Input should be a valid string")
    stops = body.get("stop_sequences")
    if stops is not None and not (
        isinstance(stops, list) and all(isinstance(s, str) for s in stops)
    ):
        raise _invalid("stop_sequences: Input should be a valid list")
    if not isinstance(body.get("stream", False), bool):
        raise _invalid("stream: Input should be a valid boolean")
    metadata = body.get("metadata")
    if isinstance(metadata, dict) and set(metadata) - {"user_id"}:
        key = sorted(set(metadata) - {"user_id"})[0]
        raise _invalid(f"metadata.{key}: Extra inputs are not permitted")
    _check_messages(body["messages"])
    _check_tools(body)


def _blocks_of(message: Body | None) -> list[Body]:
    content = message.get("content") if message else None
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    return [b for b in content or [] if isinstance(b, dict)]


def _text_of(block: Body) -> str:
    if block.get("type") == "tool_use":
        return orjson.dumps(block.get("input")).decode()
    content = block.get("content") if block.get("type") == "tool_result" else block.get("text")
    if isinstance(content, list):
        return " ".join(str(c.get("text", "")) for c in content if isinstance(c, dict))
    return str(content or "")


@dataclass(frozen=True, slots=True)
class Plan:
    """One answer, from which both the JSON message and the event stream are built."""

    id: str
    model: str
    blocks: list[Body]
    stop_reason: str
    stop_sequence: str | None
    input_tokens: int
    output_tokens: int

    def usage(self, output_tokens: int) -> Body:
        return {
            "input_tokens": self.input_tokens,
            "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": 0,
            "output_tokens": output_tokens,
            "service_tier": "standard",
        }

    def message(self, *, streaming: bool = False) -> Body:
        return {
            "id": self.id,
            "type": "message",
            "role": "assistant",
            "model": self.model,
            "content": [] if streaming else self.blocks,
            "stop_reason": None if streaming else self.stop_reason,
            "stop_sequence": None if streaming else self.stop_sequence,
            "usage": self.usage(1 if streaming else self.output_tokens),
        }


def _tool_to_use(body: Body, user_text: str, answered_tool: bool) -> Body | None:
    tools: dict[str, Body] = {str(t.get("name")): t for t in body.get("tools") or []}
    choice = body.get("tool_choice") or {"type": "auto"}
    if not tools or choice["type"] == "none":
        return None
    if choice["type"] == "tool":
        named: Body = {"name": choice["name"]}
        return tools.get(str(choice["name"]), named)
    if choice["type"] == "any":
        return next(iter(tools.values()))
    match = None if answered_tool else _CALL.search(user_text)
    return tools.get(match.group(1)) if match else None


def plan(body: Body) -> Plan:
    model, messages = str(body["model"]), body["messages"]
    last_user = _blocks_of(next(m for m in reversed(messages) if m["role"] == "user"))
    user_text = " ".join(_text_of(b) for b in last_user if b.get("type") != "image")
    snippet = user_text[:40].strip()
    system = body.get("system") or ""
    system_text = system if isinstance(system, str) else " ".join(_text_of(b) for b in system)
    prompt = count_tokens(system_text) + sum(
        count_tokens(_text_of(b)) for m in messages for b in _blocks_of(m)
    )
    message_id = f"msg_sim{uuid.uuid4().hex[:20]}"
    answered = any(b.get("type") == "tool_result" for b in last_user)
    tool = _tool_to_use(body, user_text, answered)
    if tool is not None:
        name = str(tool.get("name"))
        arguments = example_for_schema(tool.get("input_schema") or {}, snippet)
        call_id = (
            "toolu_sim" + hashlib.sha256(f"{model}|{name}|{user_text}".encode()).hexdigest()[:20]
        )
        use = {"type": "tool_use", "id": call_id, "name": name, "input": arguments}
        output = count_tokens(name) + count_tokens(orjson.dumps(arguments).decode())
        return Plan(message_id, model, [use], "tool_use", None, prompt, output)
    text, reason, matched = f"Simulated reply from {model} to: {snippet}", "end_turn", None
    cuts = [(text.find(s), s) for s in body.get("stop_sequences") or [] if s and s in text]
    if cuts:
        cut, matched = min(cuts)
        text, reason = text[:cut], "stop_sequence"
    words = split_words(text)
    if len(words) > body["max_tokens"]:
        text, reason, matched = "".join(words[: body["max_tokens"]]), "max_tokens", None
    blocks = [{"type": "text", "text": text}] if text else []
    return Plan(message_id, model, blocks, reason, matched, prompt, count_tokens(text))


def stream_events(answer: Plan) -> list[tuple[str, Body]]:
    """The event sequence Anthropic sends for ``answer``."""
    events: list[tuple[str, Body]] = [
        ("message_start", {"type": "message_start", "message": answer.message(streaming=True)})
    ]
    for index, block in enumerate(answer.blocks):
        if block["type"] == "text":
            start: Body = {"type": "text", "text": ""}
            deltas = [{"type": "text_delta", "text": w} for w in split_words(block["text"])]
        else:
            start = {**block, "input": {}}
            arguments = orjson.dumps(block["input"]).decode()
            pieces = [arguments[i : i + 12] for i in range(0, len(arguments), 12)]
            deltas = [{"type": "input_json_delta", "partial_json": p} for p in ["", *pieces]]
        events.append(
            (
                "content_block_start",
                {"type": "content_block_start", "index": index, "content_block": start},
            )
        )
        if index == 0:
            events.append(("ping", {"type": "ping"}))
        events += [
            ("content_block_delta", {"type": "content_block_delta", "index": index, "delta": d})
            for d in deltas
        ]
        events.append(("content_block_stop", {"type": "content_block_stop", "index": index}))
    stop = {"stop_reason": answer.stop_reason, "stop_sequence": answer.stop_sequence}
    usage = {"output_tokens": answer.output_tokens}
    events.append(("message_delta", {"type": "message_delta", "delta": stop, "usage": usage}))
    events.append(("message_stop", {"type": "message_stop"}))
    return events


def _frame(name: str, data: object) -> bytes:
    return b"event: " + name.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"


def _in_band(fault: Fault | None) -> bool:
    """A fault meant as a mid-stream ``event: error`` rather than an HTTP error."""
    return (
        fault is not None
        and fault.status in (None, 200)
        and isinstance(fault.body, dict)
        and fault.body.get("type") == "error"
    )


async def _answer_stream(
    request: web.Request, events: list[tuple[str, Body]], model: str, headers: Mapping[str, str]
) -> web.StreamResponse:
    """:func:`.wire.deliver` with Anthropic's named events, no terminator, and in-band
    ``error`` events for faults that carry an Anthropic error body without a status."""
    reply = StreamReply(
        frames=[_frame(name, data) for name, data in events],
        headers=headers,
        terminator=None,
        malformed=b'event: content_block_delta\ndata: {"type": "content_blo\n\n',
        in_band_error=lambda fault: _frame("error", fault.body) if _in_band(fault) else None,
        in_band_after=_IN_BAND_ERROR_AFTER,
    )
    return await deliver(request, reply, model=model)


def create_anthropic_app(
    *,
    api_keys: Collection[str] = (DEFAULT_API_KEY,),
    models: Collection[str] | None = None,
    api_versions: Collection[str] = API_VERSIONS,
) -> web.Application:
    """An aiohttp app speaking Anthropic's Messages API (``POST /v1/messages``) plus ``/_sim``.

    ``api_keys``: the accepted ``x-api-key`` values (default :data:`DEFAULT_API_KEY`).
    ``models``: the model names served; None (default) serves any name, legacy ones too.
    ``api_versions``: accepted ``anthropic-version`` values (default 2023-06-01 and
    2023-01-01). Faults match on the request's ``model``. Other ``/v1`` paths answer
    Anthropic's 404. The quick start's conventional port for it is 8905.
    """
    keys, versions = frozenset(api_keys), frozenset(api_versions)
    served = frozenset(models) if models is not None else None

    async def messages(request: web.Request) -> web.StreamResponse:
        headers = {"request-id": f"req_sim{uuid.uuid4().hex[:20]}"}
        key = request.headers.get("x-api-key")
        if key is None or key not in keys:
            why = "x-api-key header is required" if key is None else "invalid x-api-key"
            return json_response(401, anthropic_error("authentication_error", why), headers)
        version = request.headers.get("anthropic-version")
        try:
            if version is None:
                raise _invalid("anthropic-version: header is required")
            if version not in versions:
                raise _invalid(f"anthropic-version: invalid version '{version}'")
            try:
                body = orjson.loads(await request.read())
            except orjson.JSONDecodeError:
                raise _invalid(
                    "There was an issue with the format or content of your request."
                ) from None
            if not isinstance(body, dict):
                raise _invalid("Input should be a valid dictionary")
            validate(body)
            if served is not None and body["model"] not in served:
                raise ApiError(404, anthropic_error("not_found_error", f"model: {body['model']}"))
        except ApiError as exc:
            return json_response(exc.status, exc.body, headers)
        answer = plan(body)
        if body.get("stream"):
            return await _answer_stream(request, stream_events(answer), answer.model, headers)
        return await deliver(request, JsonReply(200, answer.message(), headers), model=answer.model)

    async def not_found(_request: web.Request) -> web.StreamResponse:
        body = anthropic_error("not_found_error", "The requested resource could not be found.")
        return json_response(404, body)

    app = web.Application()
    install_control(app, error_factory=anthropic_status_error)
    app.router.add_post("/v1/messages", messages)
    app.router.add_route("*", "/v1/{tail:.*}", not_found)
    return app
