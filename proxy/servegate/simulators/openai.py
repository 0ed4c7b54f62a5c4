"""The OpenAI API simulator (``/v1``), and the request pipeline every
OpenAI-shaped simulator reuses.

``POST /v1/chat/completions``, ``POST /v1/completions``, ``POST /v1/embeddings`` and
``GET /v1/models`` behave like api.openai.com: ``Authorization: Bearer <key>``,
OpenAI's error bodies (401 ``invalid_api_key`` without echoing the key, 400
``Unrecognized request argument supplied: <name>`` against an explicit allow-list,
``Missing required parameter``), deterministic results (see
:mod:`.openai_shapes`), SSE streaming with ``stream_options.include_usage``, and an
OpenAI-style 404 (``Invalid URL (METHOD /path)``) for anything else under ``/v1``.

What differs between OpenAI-shaped servers is captured by two seams: an
:data:`Authenticator` (a callable that returns an error response or None) and a
:class:`Dialect` (strictness, model handling, response post-processing). The
Azure OpenAI and vLLM-like simulators build on :func:`serve` with their own.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Awaitable, Callable, Collection, Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web

from .errors import ApiError, openai_error, openai_status_error
from .faults import install_control
from .openai_bodies import (
    ResponseMeta,
    chat_body,
    chat_chunks,
    completion_body,
    completion_chunks,
    embeddings_body,
)
from .openai_shapes import (
    CHAT_PARAMS,
    COMPLETION_PARAMS,
    EMBEDDING_PARAMS,
    chat_prompt_tokens,
    embedding_inputs,
    plan_chat,
    plan_completions,
    validate_request,
)
from .wire import JsonReply, Reply, StreamReply, deliver, json_response

__all__ = [
    "DEFAULT_MODELS",
    "OPENAI_PARAMS",
    "Authenticator",
    "Dialect",
    "bearer_key_auth",
    "build_reply",
    "create_openai_app",
    "mask_key",
    "read_json_body",
    "serve",
]

#: Checks a request's credentials: returns the rejection to send, or None to proceed.
Authenticator = Callable[[web.Request], "web.StreamResponse | None"]

OPENAI_PARAMS: Mapping[str, frozenset[str]] = {
    "chat": CHAT_PARAMS,
    "completions": COMPLETION_PARAMS,
    "embeddings": EMBEDDING_PARAMS,
}
DEFAULT_MODELS = ("gpt-4o-mini", "gpt-4o", "gpt-3.5-turbo-instruct", "text-embedding-3-small")
_DEFAULT_EMBEDDING_DIMENSIONS = 8
_MODEL_CREATED = 1_700_000_000


@dataclass(frozen=True)
class Dialect:
    """How one OpenAI-shaped server differs from api.openai.com.

    ``allowed_params`` None accepts unknown request arguments (as vLLM does);
    ``known_models`` None accepts any model; ``default_model`` stands in for a missing
    ``model`` when ``require_model`` is false; ``transform`` post-processes every
    successful reply (Azure adds content-filter annotations); ``headers`` builds the
    per-response headers.
    """

    allowed_params: Mapping[str, frozenset[str]] | None = field(
        default_factory=lambda: dict(OPENAI_PARAMS)
    )
    require_model: bool = True
    default_model: str = "simulated-model"
    known_models: Collection[str] | None = None
    transform: Callable[[str, Reply], Reply] | None = None
    headers: Callable[[web.Request], dict[str, str]] = lambda _request: {}


def mask_key(key: str) -> str:
    """How OpenAI quotes a wrong key: a few leading and trailing characters only."""
    head, tail = min(8, len(key) // 3), min(4, len(key) // 4)
    return key[:head] + "*" * max(len(key) - head - tail, 3) + (key[-tail:] if tail else "")


def bearer_key_auth(api_keys: Collection[str]) -> Authenticator:
    """OpenAI's check: ``Authorization: Bearer <key>`` with one of ``api_keys``."""
    keys = frozenset(api_keys)

    def check(request: web.Request) -> web.StreamResponse | None:
        header = request.headers.get("Authorization", "")
        scheme, _, key = header.partition(" ")
        key = key.strip()
        if scheme.lower() != "bearer" or not key:
            return json_response(
                401,
                openai_error(
                    "You didn't provide an API key. You need to provide your API key in an "
                    "Authorization header using Bearer auth (i.e. Authorization: Bearer "
                    "YOUR_KEY), or as the password field (with blank username) if you're "
                    "accessing the API from your browser and are prompted for a username. "
                    "You can obtain an API key from https://platform.openai.com/account/api-keys."
                ),
            )
        if key not in keys:
            return json_response(
                401,
                openai_error(
                    f"Incorrect API key provided: {mask_key(key)}. You can find your API key "
                    "at https://platform.openai.com/account/api-keys.",
                    code="invalid_api_key",
                ),
            )
        return None

    return check


async def read_json_body(request: web.Request) -> dict[str, Any]:
    """The request's JSON object, or OpenAI's "could not parse" 400."""
    try:
        body = orjson.loads(await request.read())
    except orjson.JSONDecodeError:
        body = None
    if not isinstance(body, dict):
        raise ApiError(
            400,
            openai_error(
                "We could not parse the JSON body of your request. (HINT: This likely means "
                "you aren't using your HTTP library correctly. The OpenAI API expects a JSON "
                "payload, but what was sent was not valid JSON. If you have trouble figuring "
                "out how to fix this, please contact us through our help center at "
                "help.openai.com.)"
            ),
        )
    return body


def build_reply(
    kind: str, body: Mapping[str, Any], *, model: str, dialect: Dialect, headers: dict[str, str]
) -> Reply:
    """Validate ``body`` for endpoint ``kind`` and build the (deterministic) answer."""
    allowed = dialect.allowed_params[kind] if dialect.allowed_params is not None else None
    validate_request(kind, body, allowed=allowed, require_model=dialect.require_model)
    if dialect.known_models is not None and model not in dialect.known_models:
        raise ApiError(
            404,
            openai_error(
                f"The model `{model}` does not exist or you do not have access to it.",
                code="model_not_found",
            ),
        )
    stream = bool(body.get("stream"))
    options = body.get("stream_options")
    include_usage = isinstance(options, dict) and bool(options.get("include_usage"))
    created = int(time.time())
    if kind == "chat":
        meta = ResponseMeta(f"chatcmpl-sim{uuid.uuid4().hex[:24]}", created, model)
        choices, prompt_tokens = plan_chat(body, model), chat_prompt_tokens(body)
        if stream:
            events = chat_chunks(meta, choices, prompt_tokens, include_usage=include_usage)
            return StreamReply(events, headers)
        return JsonReply(200, chat_body(meta, choices, prompt_tokens), headers)
    if kind == "completions":
        meta = ResponseMeta(f"cmpl-sim{uuid.uuid4().hex[:24]}", created, model)
        choices, prompt_tokens = plan_completions(body, model)
        if stream:
            events = completion_chunks(meta, choices, prompt_tokens, include_usage=include_usage)
            return StreamReply(events, headers)
        return JsonReply(200, completion_body(meta, choices, prompt_tokens), headers)
    encoding = body.get("encoding_format") or "float"
    if encoding not in ("float", "base64"):
        raise ApiError(
            400,
            openai_error(
                f"'{encoding}' is not one of ['float', 'base64'] - 'encoding_format'",
                param="encoding_format",
            ),
        )
    dimensions = body.get("dimensions") or _DEFAULT_EMBEDDING_DIMENSIONS
    result = embeddings_body(
        model, embedding_inputs(body), dimensions=dimensions, encoding_format=encoding
    )
    return JsonReply(200, result, headers)


async def serve(
    request: web.Request,
    kind: str,
    body: Mapping[str, Any],
    *,
    model: str,
    fault_key: str | None,
    dialect: Dialect,
) -> web.StreamResponse:
    """Answer an authenticated request for endpoint ``kind`` (``chat``,
    ``completions`` or ``embeddings``); faults are looked up by ``fault_key``."""
    headers = dialect.headers(request)
    try:
        reply = build_reply(kind, body, model=model, dialect=dialect, headers=headers)
    except ApiError as exc:
        return json_response(exc.status, exc.body, headers)
    if dialect.transform is not None:
        reply = dialect.transform(kind, reply)
    return await deliver(request, reply, model=fault_key)


def _openai_headers(request: web.Request) -> dict[str, str]:
    return {
        "x-request-id": f"req_{uuid.uuid4().hex}",
        "openai-version": "2020-10-01",
        "openai-processing-ms": "1",
        "openai-organization": request.headers.get("OpenAI-Organization", "org-simulated"),
    }


def create_openai_app(
    *,
    api_keys: Collection[str] = (),
    auth: Authenticator | None = None,
    strict_params: bool = True,
    models: Collection[str] | None = None,
) -> web.Application:
    """An aiohttp app speaking the OpenAI API under ``/v1`` (plus ``/_sim``).

    ``auth`` defaults to :func:`bearer_key_auth` over ``api_keys``. With
    ``strict_params`` false, unknown request arguments are accepted and ``model`` may
    be omitted (OpenAI-compatible servers such as vLLM). ``models`` restricts the
    accepted models (others get OpenAI's 404 ``model_not_found``) and is what
    ``GET /v1/models`` lists; by default any model is accepted and
    :data:`DEFAULT_MODELS` are listed.
    """
    check = auth if auth is not None else bearer_key_auth(api_keys)
    dialect = Dialect(
        allowed_params=dict(OPENAI_PARAMS) if strict_params else None,
        require_model=strict_params,
        known_models=frozenset(models) if models is not None else None,
        headers=_openai_headers,
    )
    listed = tuple(models) if models is not None else DEFAULT_MODELS

    def endpoint(kind: str) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
        async def handle(request: web.Request) -> web.StreamResponse:
            denied = check(request)
            if denied is not None:
                return denied
            try:
                body = await read_json_body(request)
            except ApiError as exc:
                return json_response(exc.status, exc.body)
            requested = body.get("model")
            model = str(requested) if requested else dialect.default_model
            return await serve(request, kind, body, model=model, fault_key=model, dialect=dialect)

        return handle

    async def list_models(request: web.Request) -> web.StreamResponse:
        denied = check(request)
        if denied is not None:
            return denied
        data = [
            {"id": m, "object": "model", "created": _MODEL_CREATED, "owned_by": "system"}
            for m in listed
        ]
        listing = JsonReply(200, {"object": "list", "data": data}, _openai_headers(request))
        return await deliver(request, listing, model=None)  # only model-less faults match

    async def invalid_url(request: web.Request) -> web.StreamResponse:
        message = f"Invalid URL ({request.method} {request.path})"
        return json_response(404, openai_error(message))

    app = web.Application()
    install_control(app, error_factory=openai_status_error)
    app.router.add_post("/v1/chat/completions", endpoint("chat"))
    app.router.add_post("/v1/completions", endpoint("completions"))
    app.router.add_post("/v1/embeddings", endpoint("embeddings"))
    app.router.add_get("/v1/models", list_models)
    app.router.add_route("*", "/v1/{tail:.*}", invalid_url)
    return app
