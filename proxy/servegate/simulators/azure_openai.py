"""The Azure OpenAI data-plane simulator.

Azure serves the OpenAI shapes under
``/openai/deployments/{deployment}/{chat/completions|completions|embeddings}``
with a mandatory ``api-version`` query parameter, and differs from OpenAI in the
places a gateway has to get right:

* auth is ``api-key: <key>`` or ``Authorization: Bearer <Entra token>`` (the token
  must be live in the :class:`~.tokens.TokenRegistry` shared with the Entra
  simulator, for the Cognitive Services audience);
* errors use Azure's envelopes: 401 ``Access denied due to invalid subscription
  key or wrong API endpoint...`` for keys, the ``statusCode``/``message`` body for
  bad tokens, 404 ``Resource not found`` without (or for an unknown path),
  400 ``API version not supported`` for an unknown ``api-version``, 404
  ``DeploymentNotFound``, and 429s that name the operation and API version;
* ``model`` comes from the deployment, and responses carry content-filter
  annotations (``prompt_filter_results`` and, when streaming, a leading chunk with
  empty ``choices``).

Request validation and response building are the OpenAI simulator's (:func:`serve`).
"""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Collection, Mapping
from typing import Any, Final

from aiohttp import web

from .errors import ApiError, openai_status_error
from .faults import install_control
from .openai import OPENAI_PARAMS, Dialect, read_json_body, serve
from .tokens import COGNITIVE_SERVICES_AUDIENCE, TokenRegistry
from .wire import JsonReply, Reply, StreamReply, json_response

__all__ = ["DEFAULT_AZURE_API_VERSIONS", "azure_status_error", "create_azure_openai_app"]

#: GA and preview data-plane versions the simulator accepts by default.
DEFAULT_AZURE_API_VERSIONS: Final = frozenset(
    {
        "2023-05-15", "2024-02-01", "2024-06-01", "2024-10-21",
        "2024-02-15-preview", "2024-05-01-preview", "2024-08-01-preview",
        "2024-09-01-preview", "2024-10-01-preview", "2024-12-01-preview",
        "2025-01-01-preview", "2025-03-01-preview", "2025-04-01-preview",
    }
)  # fmt: skip

_KEY_DENIED = {
    "error": {
        "code": "401",
        "message": "Access denied due to invalid subscription key or wrong API endpoint. Make "
        "sure to provide a valid key for an active subscription and use a correct regional "
        "API endpoint for your resource.",
    }
}
_TOKEN_DENIED = {
    "statusCode": 401,
    "message": "Unauthorized. Access token is missing, invalid, audience is incorrect "
    f"({COGNITIVE_SERVICES_AUDIENCE}), or have expired.",
}
_NOT_FOUND = {"error": {"code": "404", "message": "Resource not found"}}
_VERSION_UNSUPPORTED = {"error": {"code": "BadRequest", "message": "API version not supported"}}
_DEPLOYMENT_NOT_FOUND = {
    "error": {
        "code": "DeploymentNotFound",
        "message": "The API deployment for this resource does not exist. If you created the "
        "deployment within the last 5 minutes, please wait a moment and try again.",
    }
}
_OPERATIONS = {
    "chat": "ChatCompletions_Create",
    "completions": "Completions_Create",
    "embeddings": "Embeddings_Create",
}
_KIND_BY_SUFFIX = {
    "chat/completions": "chat",
    "completions": "completions",
    "embeddings": "embeddings",
}
_SAFE = {
    name: {"filtered": False, "severity": "safe"}
    for name in ("hate", "self_harm", "sexual", "violence")
}
# Azure accepts its own extensions on top of OpenAI's chat arguments.
_AZURE_PARAMS = {
    **OPENAI_PARAMS,
    "chat": OPENAI_PARAMS["chat"] | {"data_sources", "user_security_context"},
}


def _kind_of(request: web.Request) -> str:
    return _KIND_BY_SUFFIX[request.match_info["operation"]]


def azure_status_error(
    request: web.Request, status: int, model: str | None, headers: Mapping[str, str]
) -> object:
    """Azure's body for a fault that names only ``status``."""
    if status == 401:
        return _KEY_DENIED
    if status == 404:
        return _DEPLOYMENT_NOT_FOUND
    if status == 429:
        operation = _OPERATIONS.get(_kind_of(request), "ChatCompletions_Create")
        version = request.query.get("api-version", "")
        retry = {k.lower(): v for k, v in headers.items()}.get("retry-after", "1")
        return {
            "error": {
                "code": "429",
                "message": f"Requests to the {operation} Operation under Azure OpenAI API "
                f"version {version} have exceeded token rate limit of your current OpenAI S0 "
                f"pricing tier. Please retry after {retry} seconds. Please go here: "
                "https://aka.ms/oai/quotaincrease if you would like to further increase the "
                "default rate limit.",
            }
        }
    if status == 400 or status >= 500:
        return openai_status_error(request, status, model, headers)
    return {"error": {"code": str(status), "message": f"Simulated error (HTTP {status})."}}


def _with_content_filters(kind: str, reply: Reply) -> Reply:
    """Add Azure's content-filter annotations to chat/completions replies."""
    if kind == "embeddings":
        return reply
    prompt_results = [{"prompt_index": 0, "content_filter_results": _SAFE}]
    if isinstance(reply, StreamReply):
        lead = {
            "choices": [],
            "created": 0,
            "id": "",
            "model": "",
            "object": "",
            "prompt_filter_results": prompt_results,
        }
        return dataclasses.replace(reply, events=[lead, *reply.events])
    body: Any = reply.body
    if not isinstance(body, dict):
        return reply
    choices = [{**c, "content_filter_results": _SAFE} for c in body.get("choices", [])]
    annotated = {**body, "choices": choices, "prompt_filter_results": prompt_results}
    return JsonReply(reply.status, annotated, reply.headers)


def _azure_headers(_request: web.Request) -> dict[str, str]:
    request_id = str(uuid.uuid4())
    return {"apim-request-id": request_id, "x-request-id": request_id}


def create_azure_openai_app(
    *,
    api_keys: Collection[str],
    entra_tokens: TokenRegistry | None = None,
    deployments: Mapping[str, str] | None = None,
    api_versions: Collection[str] = DEFAULT_AZURE_API_VERSIONS,
) -> web.Application:
    """An aiohttp app speaking the Azure OpenAI data plane (plus ``/_sim``).

    ``deployments`` maps deployment name to the model it serves (reported as the
    responses' ``model``); None accepts any deployment, serving a model of the same
    name. Bearer tokens are accepted only when ``entra_tokens`` is given. Faults
    match on the deployment name.
    """
    keys = frozenset(api_keys)
    versions = frozenset(api_versions)
    dialect = Dialect(
        allowed_params=_AZURE_PARAMS,
        require_model=False,
        transform=_with_content_filters,
        headers=_azure_headers,
    )

    def authenticate(request: web.Request) -> web.StreamResponse | None:
        key = request.headers.get("api-key")
        if key is not None:
            return None if key in keys else json_response(401, _KEY_DENIED)
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer":
            return json_response(401, _KEY_DENIED)
        live = entra_tokens is not None and entra_tokens.is_live(
            token.strip(), audience=COGNITIVE_SERVICES_AUDIENCE
        )
        return None if live else json_response(401, _TOKEN_DENIED)

    async def handle(request: web.Request) -> web.StreamResponse:
        denied = authenticate(request)
        if denied is not None:
            return denied
        version = request.query.get("api-version")
        if not version:
            return json_response(404, _NOT_FOUND)
        if version not in versions:
            return json_response(400, _VERSION_UNSUPPORTED)
        deployment = request.match_info["deployment"]
        if deployments is not None and deployment not in deployments:
            return json_response(404, _DEPLOYMENT_NOT_FOUND)
        model = deployments[deployment] if deployments is not None else deployment
        try:
            body = await read_json_body(request)
        except ApiError as exc:
            return json_response(exc.status, exc.body)
        return await serve(
            request, _kind_of(request), body, model=model, fault_key=deployment, dialect=dialect
        )

    async def not_found(_request: web.Request) -> web.StreamResponse:
        return json_response(404, _NOT_FOUND)

    app = web.Application()
    install_control(app, error_factory=azure_status_error)
    operations = "{operation:chat/completions|completions|embeddings}"
    app.router.add_post(f"/openai/deployments/{{deployment}}/{operations}", handle)
    app.router.add_route("*", "/openai/{tail:.*}", not_found)
    return app
