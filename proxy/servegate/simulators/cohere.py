"""The Cohere API simulator: Chat v2, Generate (v1) and Embed v2 on their real paths.

``POST /v2/chat``, ``POST /v1/generate`` and ``POST /v2/embed`` behave like api.cohere.com:

* auth is ``Authorization: Bearer <key>``; a missing or empty key gets 401
  ``{"message": "no api key supplied"}``, a wrong one 401 ``{"message": "invalid api token"}``;
* a body field the endpoint does not define gets 422 ``unknown field: parameter <name> is not a
  valid field…`` (nested fields of messages, tools and response_format included); a bad value
  gets 400 ``invalid request: …``; v2 error bodies also carry an ``id``;
* v2 chat streams server-sent events (``event: <type>`` + ``data: <json>``, ending with
  ``data: [DONE]``); asked with ``Accept: application/json`` it sends the same events as JSON
  lines instead, as the real API was observed to. Generate streams JSON lines
  (``text-generation`` events, then ``stream-end`` carrying the whole response and its meta).

Answers are deterministic: chat says ``"Simulated reply from <model> to: <first 40 chars of the
last user message>"``, Generate ``"Simulated completion from <model> for: <first 40 chars of
the prompt>"`` (generation ``i > 0`` adds ``" [i]"``). A chat with tools calls the first one
when ``tool_choice`` is ``REQUIRED``, or the one the last user message names as ``call <name>``,
with arguments filled from its schema, unless the last message is already a tool result.
``max_tokens`` cuts the answer (``MAX_TOKENS``), a stop sequence cuts before it
(``STOP_SEQUENCE``). **Token rule**: one token per whitespace-separated word of the text sent
or generated; that is ``billed_units``, and chat's ``tokens.input_tokens`` adds
:data:`TEMPLATE_TOKENS` for Cohere's own prompt template, as real responses count more
``tokens`` than ``billed_units``. Embeddings are unit vectors derived from SHA-256 of the
model and text (:data:`DEFAULT_DIMENSIONS` long unless ``output_dimension`` says otherwise).
Faults from the shared ``/_sim`` control API match on the request's ``model``.
"""

from __future__ import annotations

import base64
import hashlib
import re
import struct
import uuid
from collections.abc import Awaitable, Callable, Collection, Mapping, Sequence
from typing import Any

import orjson
from aiohttp import web

from .errors import ApiError
from .faults import install_control
from .openai_bodies import embedding_vector
from .openai_shapes import count_tokens, split_words
from .schema_fill import example_for_schema
from .wire import JsonReply, StreamReply, deliver, json_response

__all__ = [
    "DEFAULT_API_KEY",
    "DEFAULT_DIMENSIONS",
    "TEMPLATE_TOKENS",
    "cohere_status_error",
    "create_cohere_app",
]

DEFAULT_API_KEY = "sim-cohere-key"
DEFAULT_DIMENSIONS = 8
TEMPLATE_TOKENS = 7
_DOCS = "https://docs.cohere.com/reference/"
_FIELDS = {
    "chat": {
        "model", "messages", "stream", "tools", "strict_tools", "documents", "citation_options",
        "response_format", "safety_mode", "max_tokens", "stop_sequences", "temperature", "seed",
        "frequency_penalty", "presence_penalty", "k", "p", "logprobs", "tool_choice", "thinking",
        "priority",
    },
    "generate": {
        "prompt", "model", "num_generations", "stream", "max_tokens", "truncate", "temperature",
        "seed", "preset", "end_sequences", "stop_sequences", "k", "p", "frequency_penalty",
        "presence_penalty", "return_likelihoods", "raw_prompting", "logit_bias",
    },
    "embed": {
        "texts", "images", "model", "input_type", "inputs", "max_tokens", "output_dimension",
        "embedding_types", "truncate",
    },
}  # fmt: skip
_MESSAGE_FIELDS = {
    "system": {"role", "content"},
    "user": {"role", "content"},
    "assistant": {"role", "content", "tool_calls", "tool_plan", "citations"},
    "tool": {"role", "tool_call_id", "content"},
}
_EMBEDDING_TYPES = {"float", "int8", "uint8", "binary", "ubinary", "base64"}
_TYPES = ", ".join(sorted(_EMBEDDING_TYPES))
_INPUT_TYPES = {"search_document", "search_query", "classification", "clustering", "image"}
_CALL = re.compile(r"\bcall\s+([A-Za-z0-9_.-]+)", re.IGNORECASE)
_MALFORMED = {
    True: b'event: content-delta\ndata: {"type": "content-delta", "delta": {\n\n',
    False: b'{"event_type": "text-generation", "text": \n',
}


def _fail(request: web.Request, status: int, message: str) -> ApiError:
    body: dict[str, Any] = {"message": message}
    if request.path.startswith("/v2/"):
        body = {"id": str(uuid.uuid4()), **body}
    return ApiError(status, body)


def cohere_status_error(
    request: web.Request, status: int, model: str | None, headers: Mapping[str, str]
) -> object:
    """Cohere's body for a fault that names only a status."""
    messages = {
        400: "invalid request: simulated fault.",
        401: "invalid api token",
        402: "Please add or update your payment method at https://dashboard.cohere.com/billing",
        404: f"model '{model}' not found, make sure the correct model ID was used and that "
        "you have access to the model.",
        429: "You are using a Trial key, which is limited to 20 API calls / minute. You can "
        "continue to use the Trial key for free or upgrade to a Production key with higher "
        "rate limits at 'https://dashboard.cohere.com/api-keys'.",
        500: "internal server error, this has been reported to our developers",
        503: "service unavailable",
    }
    message = messages.get(status, f"simulated upstream error (HTTP {status})")
    if status == 401:
        return {"message": message}
    return _fail(request, status, message).body


def _bearer_check(keys: frozenset[str]) -> Callable[[web.Request], web.Response | None]:
    def check(request: web.Request) -> web.Response | None:
        scheme, _, key = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not key.strip():
            return json_response(401, {"message": "no api key supplied"})
        if key.strip() not in keys:
            return json_response(401, {"message": "invalid api token"})
        return None

    return check


def _reject_unknown(request: web.Request, fields: object, allowed: set[str], at: str) -> None:
    endpoint = request.path.rsplit("/", 1)[-1]
    for name in sorted(fields) if isinstance(fields, dict) else []:
        if name not in allowed:
            raise _fail(
                request,
                422,
                f"unknown field: parameter {at}{name} is not a valid field. For proper usage, "
                f"please refer to {_DOCS}{endpoint}",
            )


def _number(
    request: web.Request, body: Mapping[str, Any], name: str, low: float, high: float | None
) -> None:
    value = body.get(name)
    if value is None:
        return
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or value < low
        or (high is not None and value > high)
    ):
        bounds = f"between {low} and {high}" if high is not None else f"at least {low}"
        raise _fail(request, 400, f"invalid request: {name} must be {bounds}.")


def _text(content: object) -> str:
    if isinstance(content, str):
        return content
    parts = content if isinstance(content, list) else []
    return " ".join(str(p.get("text", "")) for p in parts if isinstance(p, dict))


def _validate_common(request: web.Request, kind: str, body: Mapping[str, Any]) -> None:
    _reject_unknown(request, body, _FIELDS[kind], "")
    if kind != "generate" and not isinstance(body.get("model"), str):
        raise _fail(request, 400, "invalid request: model must be a string.")
    limits: dict[str, tuple[float, float | None]] = {
        "p": (0.01, 0.99),
        "k": (0, 500),
        "frequency_penalty": (0, 1),
        "presence_penalty": (0, 1),
        "temperature": (0, 5 if kind == "generate" else None),
        "max_tokens": (1, None),
        "num_generations": (1, 5),
    }
    for name, (low, high) in limits.items():
        _number(request, body, name, low, high)
    stops = body.get("stop_sequences")
    if stops is not None and (
        not isinstance(stops, list) or len(stops) > 5 or not all(isinstance(s, str) for s in stops)
    ):
        raise _fail(request, 400, "invalid request: stop_sequences must be at most 5 strings.")
    if not isinstance(body.get("stream", False), bool):
        raise _fail(request, 400, "invalid request: stream must be a boolean.")


def _validate_chat(request: web.Request, body: Mapping[str, Any]) -> None:
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise _fail(request, 400, "invalid request: messages must have at least one message.")
    for i, message in enumerate(messages):
        role = message.get("role") if isinstance(message, dict) else None
        if role not in _MESSAGE_FIELDS:
            raise _fail(request, 400, f"invalid request: messages[{i}].role is invalid.")
        _reject_unknown(request, message, _MESSAGE_FIELDS[role], f"messages[{i}].")
        if role == "tool" and not message.get("tool_call_id"):
            raise _fail(request, 400, f"invalid request: messages[{i}].tool_call_id is required.")
        if role != "assistant" and message.get("content") is None:
            raise _fail(request, 400, f"invalid request: messages[{i}].content is required.")
    for i, tool in enumerate(body.get("tools") or []):
        _reject_unknown(request, tool, {"type", "function"}, f"tools[{i}].")
        function = tool.get("function") if isinstance(tool, dict) else None
        _reject_unknown(
            request, function, {"name", "description", "parameters"}, f"tools[{i}].function."
        )
        if not isinstance(function, dict) or not function.get("name") or tool["type"] != "function":
            raise _fail(request, 400, f"invalid request: tools[{i}] must be a named function.")
    choice = body.get("tool_choice")
    if choice is not None and (choice not in ("REQUIRED", "NONE") or not body.get("tools")):
        raise _fail(
            request, 400, "invalid request: tool_choice must be REQUIRED or NONE, with tools."
        )
    fmt = body.get("response_format")
    if fmt is not None:
        _reject_unknown(request, fmt, {"type", "json_schema"}, "response_format.")
        if not isinstance(fmt, dict) or fmt.get("type") not in ("text", "json_object"):
            raise _fail(
                request, 400, "invalid request: response_format.type must be text or json_object."
            )


def _validate_embed(request: web.Request, body: Mapping[str, Any]) -> None:
    texts = body.get("texts")
    if (
        not isinstance(texts, list)
        or not 1 <= len(texts) <= 96
        or not all(isinstance(t, str) for t in texts)
    ):
        raise _fail(request, 400, "invalid request: texts must be a list of 1 to 96 strings.")
    types = body.get("embedding_types", ["float"])
    if not isinstance(types, list) or not types or not set(types) <= _EMBEDDING_TYPES:
        raise _fail(request, 400, f"invalid request: embedding_types must be some of {_TYPES}.")
    input_type = body.get("input_type")
    if input_type is None:  # required by v2 (v1 only required it for v3+ models)
        message = "invalid request: valid input_type must be provided with the provided model"
        raise _fail(request, 400, message)
    if input_type not in _INPUT_TYPES:
        raise _fail(request, 400, f"invalid request: input_type '{input_type}' is not valid.")
    if body.get("output_dimension") not in (None, 256, 512, 1024, 1536):
        raise _fail(
            request, 400, "invalid request: output_dimension must be 256, 512, 1024 or 1536."
        )


def _validate_generate(request: web.Request, body: Mapping[str, Any]) -> None:
    prompt = body.get("prompt")
    if not isinstance(prompt, str) or not prompt.strip():
        raise _fail(request, 400, "invalid request: prompt must be at least 1 token long.")


_VALIDATORS = {"chat": _validate_chat, "generate": _validate_generate, "embed": _validate_embed}


def _limit(text: str, body: Mapping[str, Any]) -> tuple[str, str]:
    """Stop sequences, then the token budget: (text, Cohere finish reason)."""
    finish = "COMPLETE"
    cuts = [i for i in (text.find(s) for s in body.get("stop_sequences") or [] if s) if i >= 0]
    if cuts:
        text, finish = text[: min(cuts)], "STOP_SEQUENCE"
    words = split_words(text)
    if body.get("max_tokens") is not None and len(words) > body["max_tokens"]:
        return "".join(words[: body["max_tokens"]]), "MAX_TOKENS"
    return text, finish


def _usage(input_tokens: int, output_tokens: int, template: int) -> dict[str, Any]:
    return {
        "billed_units": {"input_tokens": input_tokens, "output_tokens": output_tokens},
        "tokens": {"input_tokens": input_tokens + template, "output_tokens": output_tokens},
    }


def _event(kind: str, index: int | None = None, **message: Any) -> tuple[str, dict[str, Any]]:
    """A v2 stream event: ``{"type", "index"?, "delta": {"message": {...}}}``."""
    event: dict[str, Any] = {"type": kind} | ({} if index is None else {"index": index})
    return kind, event | ({"delta": {"message": message}} if message else {})


def _chat_tool(body: Mapping[str, Any], user: str) -> dict[str, Any] | None:
    """The function to call: forced by ``REQUIRED`` or named as ``call <name>`` by the user."""
    tools: dict[str, dict[str, Any]] = {
        t["function"]["name"]: t["function"] for t in body.get("tools") or []
    }
    if not tools or body.get("tool_choice") == "NONE" or body["messages"][-1]["role"] == "tool":
        return None
    if body.get("tool_choice") == "REQUIRED":
        return next(iter(tools.values()))
    named = _CALL.search(user)
    return tools.get(named.group(1)) if named else None


def _chat(body: Mapping[str, Any], model: str) -> tuple[dict[str, Any], list[Any]]:
    """The non-streamed response and the stream events of one chat, from the same plan."""
    messages = body["messages"]
    prompt = sum(
        count_tokens(f"{_text(m.get('content'))} {m.get('tool_plan', '')}") for m in messages
    )
    user = next((_text(m.get("content")) for m in reversed(messages) if m["role"] == "user"), "")
    snippet, reply_id = user[:40].strip(), str(uuid.uuid4())
    start = {"role": "assistant", "content": [], "tool_plan": "", "tool_calls": [], "citations": []}
    events = [("message-start", {"id": reply_id} | _event("message-start", message=start)[1])]
    tool = _chat_tool(body, user)
    if tool is not None:
        name = str(tool["name"])
        arguments = orjson.dumps(example_for_schema(tool.get("parameters") or {}, snippet)).decode()
        call_id = f"{name}_{hashlib.sha256(repr((model, name, user)).encode()).hexdigest()[:12]}"
        plan = f"I will call {name}."
        call = {
            "id": call_id,
            "type": "function",
            "function": {"name": name, "arguments": arguments},
        }
        message: dict[str, Any] = {"role": "assistant", "tool_plan": plan, "tool_calls": [call]}
        finish = "TOOL_CALL"
        output = count_tokens(plan) + count_tokens(name) + count_tokens(arguments)
        events += [_event("tool-plan-delta", tool_plan=word) for word in split_words(plan)]
        opened = call | {"function": {"name": name, "arguments": ""}}
        events.append(_event("tool-call-start", 0, tool_calls=opened))
        half = len(arguments) // 2
        for piece in (arguments[:half], arguments[half:]):
            events.append(
                _event("tool-call-delta", 0, tool_calls={"function": {"arguments": piece}})
            )
        events.append(_event("tool-call-end", 0))
    else:
        reply = f"Simulated reply from {model} to: {snippet}"
        fmt = body.get("response_format") or {}
        if fmt.get("type") == "json_object":
            schema = fmt.get("json_schema")
            shaped = example_for_schema(schema, reply) if schema else {"reply": reply}
            reply = orjson.dumps(shaped).decode()
        text, finish = _limit(reply, body)
        message = {"role": "assistant", "content": [{"type": "text", "text": text}]}
        output = count_tokens(text)
        events.append(_event("content-start", 0, content={"type": "text", "text": ""}))
        events += [_event("content-delta", 0, content={"text": w}) for w in split_words(text)]
        events.append(_event("content-end", 0))
    usage = _usage(prompt, output, TEMPLATE_TOKENS)
    end = {"type": "message-end", "delta": {"finish_reason": finish, "usage": usage}}
    events.append(("message-end", end))
    return {"id": reply_id, "message": message, "finish_reason": finish, "usage": usage}, events


def _generate(body: Mapping[str, Any], model: str) -> tuple[dict[str, Any], list[Any]]:
    """The non-streamed response and the stream's JSON lines of one Generate call."""
    prompt, n = str(body["prompt"]), body.get("num_generations") or 1
    generations: list[dict[str, Any]] = []
    events: list[dict[str, Any]] = []
    for i in range(n):
        reply = f"Simulated completion from {model} for: {prompt[:40].strip()}"
        text, finish = _limit(reply + (f" [{i}]" if i else ""), body)
        index = {"index": i} if n > 1 else {}  # present only with several generations
        generations.append({"id": str(uuid.uuid4()), "text": text, "finish_reason": finish} | index)
        for word in split_words(text):
            events.append(
                {"text": word, "is_finished": False, "event_type": "text-generation"} | index
            )
    output = sum(count_tokens(g["text"]) for g in generations)
    billed = {"input_tokens": count_tokens(prompt), "output_tokens": output}
    meta = {"api_version": {"version": "1"}, "billed_units": billed}
    response = {"id": str(uuid.uuid4()), "generations": generations, "prompt": prompt, "meta": meta}
    streamed = response | {"generations": [{"index": i} | g for i, g in enumerate(generations)]}
    end = {"is_finished": True, "event_type": "stream-end", "response": streamed}
    events.append(end | {"finish_reason": generations[0]["finish_reason"]})
    return response, events


def _embed(body: Mapping[str, Any], model: str) -> dict[str, Any]:
    dims = body.get("output_dimension") or DEFAULT_DIMENSIONS
    packed = [embedding_vector(model, text, dims) for text in body["texts"]]
    floats = [list(struct.unpack(f"<{dims}f", p)) for p in packed]
    bits = [
        [
            int("".join("1" if v > 0 else "0" for v in f[j : j + 8]).ljust(8, "0"), 2)
            for j in range(0, dims, 8)
        ]
        for f in floats
    ]
    by_type: dict[str, Any] = {
        "float": floats,
        "int8": [[round(v * 127) for v in f] for f in floats],
        "uint8": [[round((v + 1) * 127.5) for v in f] for f in floats],
        "ubinary": bits,
        "binary": [[b - 128 for b in row] for row in bits],
        "base64": [base64.b64encode(p).decode("ascii") for p in packed],
    }
    tokens = sum(count_tokens(t) for t in body["texts"])
    return {
        "id": str(uuid.uuid4()),
        "embeddings": {t: by_type[t] for t in body.get("embedding_types", ["float"])},
        "texts": body["texts"],
        "meta": {"api_version": {"version": "2"}, "billed_units": {"input_tokens": tokens}},
        "response_type": "embeddings_by_type",
    }


async def _send_stream(
    request: web.Request, frames: Sequence[bytes], *, sse: bool, model: str
) -> web.StreamResponse:
    """:func:`.wire.deliver` in Cohere's framings: chat v2 is SSE ending in ``[DONE]``,
    generate streams one JSON object per line with no terminator."""
    reply = StreamReply(
        frames=frames,
        terminator=b"data: [DONE]\n\n" if sse else None,
        malformed=_MALFORMED[sse],
        content_type="text/event-stream" if sse else "application/stream+json",
    )
    return await deliver(request, reply, model=model)


async def _parse(request: web.Request, kind: str, known: frozenset[str] | None) -> dict[str, Any]:
    """The validated body, or the ApiError Cohere would answer with."""
    try:
        body = orjson.loads(await request.read())
    except orjson.JSONDecodeError:
        body = None
    if not isinstance(body, dict):
        raise _fail(request, 400, "invalid request: the body must be a JSON object.")
    _validate_common(request, kind, body)
    _VALIDATORS[kind](request, body)
    model = str(body.get("model") or "command")
    if known is not None and model not in known:
        raise ApiError(404, cohere_status_error(request, 404, model, {}))
    return body


def _frames(events: list[tuple[str, dict[str, Any]]], *, sse: bool) -> list[bytes]:
    if sse:
        return [f"event: {kind}\ndata: ".encode() + orjson.dumps(e) + b"\n\n" for kind, e in events]
    return [orjson.dumps(e) + b"\n" for _, e in events]


def create_cohere_app(
    *, api_keys: Collection[str] = (DEFAULT_API_KEY,), models: Collection[str] | None = None
) -> web.Application:
    """An aiohttp app speaking Cohere's API (plus ``/_sim``), for tests and quickstart.

    ``api_keys``: the bearer keys accepted (default :data:`DEFAULT_API_KEY`). ``models``
    restricts the models accepted (others get Cohere's 404); by default any model works, and
    Generate without a ``model`` uses ``command``. Paths: ``POST /v2/chat``,
    ``POST /v1/generate``, ``POST /v2/embed``; anything else under ``/v1`` or ``/v2`` is a 404.
    The examples expect it on 127.0.0.1:8906.
    """
    check = _bearer_check(frozenset(api_keys))
    known = frozenset(models) if models is not None else None

    def endpoint(kind: str) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
        async def handle(request: web.Request) -> web.StreamResponse:
            denied = check(request)
            if denied is not None:
                return denied
            try:
                body = await _parse(request, kind, known)
            except ApiError as exc:
                return json_response(exc.status, exc.body)
            model, stream = str(body.get("model") or "command"), bool(body.get("stream"))
            if kind == "embed":
                return await deliver(request, JsonReply(200, _embed(body, model)), model=model)
            if kind == "chat":
                response, events = _chat(body, model)
                sse = request.headers.get("Accept") != "application/json"
                frames = _frames(events, sse=sse)
            else:
                response, lines = _generate(body, model)
                sse, frames = False, [orjson.dumps(line) + b"\n" for line in lines]
            if not stream:
                return await deliver(request, JsonReply(200, response), model=model)
            return await _send_stream(request, frames, sse=sse, model=model)

        return handle

    async def not_found(request: web.Request) -> web.Response:
        return json_response(404, {"message": f"404 page not found: {request.path}"})

    app = web.Application()
    install_control(app, error_factory=cohere_status_error)
    app.router.add_post("/v2/chat", endpoint("chat"))
    app.router.add_post("/v1/generate", endpoint("generate"))
    app.router.add_post("/v2/embed", endpoint("embed"))
    app.router.add_route("*", "/v1/{tail:.*}", not_found)
    app.router.add_route("*", "/v2/{tail:.*}", not_found)
    return app
