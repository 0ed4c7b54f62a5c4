"""An OpenAI-compatible server in the style of vLLM, with configurable auth.

Self-hosted OpenAI-compatible servers differ from api.openai.com in the two ways
that matter to a gateway: credentials are whatever the operator configured (vLLM's
``--api-key`` is a bearer token; proxies in front often want a custom header), and
unknown sampling arguments such as ``top_k`` are accepted rather than refused. This
is the OpenAI simulator with exactly those two seams swapped, nothing copied.
"""

from __future__ import annotations

import secrets

from aiohttp import web

from .openai import Authenticator, create_openai_app
from .wire import json_response

__all__ = ["create_custom_app", "custom_auth"]


def _matches(presented: str | None, expected: str) -> bool:
    return presented is not None and secrets.compare_digest(presented.encode(), expected.encode())


def custom_auth(
    *, api_key_header: tuple[str, str] | None = None, bearer_token: str | None = None
) -> Authenticator:
    """Require the ``(name, value)`` header and/or ``Authorization: Bearer <token>``
    (both when both are configured, nothing when neither is). Rejections use vLLM's
    body, ``{"error": "Unauthorized"}``."""

    def check(request: web.Request) -> web.StreamResponse | None:
        ok = True
        if api_key_header is not None:
            name, value = api_key_header
            ok = ok and _matches(request.headers.get(name), value)
        if bearer_token is not None:
            scheme, _, token = request.headers.get("Authorization", "").partition(" ")
            ok = ok and scheme.lower() == "bearer" and _matches(token.strip(), bearer_token)
        return None if ok else json_response(401, {"error": "Unauthorized"})

    return check


def create_custom_app(
    *, api_key_header: tuple[str, str] | None = None, bearer_token: str | None = None
) -> web.Application:
    """An OpenAI-compatible app under ``/v1`` that accepts extra request arguments
    (``top_k``, ``repetition_penalty``, ...) and lets ``model`` be omitted."""
    return create_openai_app(
        auth=custom_auth(api_key_header=api_key_header, bearer_token=bearer_token),
        strict_params=False,
    )
