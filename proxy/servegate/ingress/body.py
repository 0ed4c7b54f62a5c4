"""Reading a JSON request body once, with the platform's 4 MB limit, a time limit and clean
errors.

The whole body must arrive within the client body timeout (``--client-body-timeout``,
30 s by default): a client that sends its headers and then stalls, trickles its body, or
sends a chunked body whose framing never completes would otherwise hold a handler for as
long as it keeps the connection open. It gets 408 ``BAD_REQUEST`` (the request was the
client's to finish; databricks-sdk and MLflow do not retry it) and ``Connection: close``.
"""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
from aiohttp import web
from aiohttp.web_urldispatcher import _default_expect_handler

from servegate.canonical.requests import MAX_NESTING, too_deep
from servegate.ingress.errors import BadRequest, GatewayError, PayloadTooLarge, error_response

MAX_BODY_BYTES = 4 * 1024 * 1024
DEFAULT_BODY_TIMEOUT_S = 30.0

body_timeout_key = web.AppKey("client_body_timeout", float)
"""Seconds the whole request body may take to arrive (unset: ``DEFAULT_BODY_TIMEOUT_S``)."""


class RequestTimeout(GatewayError):
    """408: the request body did not arrive in time. The connection is closed after it: what
    the client sends next is the rest of a body nobody reads, not a new request."""

    status = 408
    error_code = "BAD_REQUEST"

    def headers(self) -> dict[str, str]:
        return {**super().headers(), "Connection": "close"}


async def read_json(request: web.Request) -> Any:
    if request.content_length is not None and request.content_length > MAX_BODY_BYTES:
        raise _too_large(request.content_length)
    timeout = request.app.get(body_timeout_key, DEFAULT_BODY_TIMEOUT_S)
    try:
        if request.content.is_eof():  # it came with the headers (most bodies): no timer
            raw = await request.read()
        else:
            async with asyncio.timeout(timeout):
                raw = await request.read()
    except web.HTTPRequestEntityTooLarge:
        raise _too_large(None) from None
    except TimeoutError:
        raise RequestTimeout(
            f"The request body did not arrive within {timeout:g} s; send it at once "
            "(and completely) after the headers."
        ) from None
    if not raw:
        raise BadRequest("The request body is empty; send a JSON object.")
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise BadRequest(f"The request body is not valid JSON: {exc}.") from None
    if too_deep(raw, body):
        raise BadRequest(f"The request body is nested more than {MAX_NESTING} levels deep.")
    return body


async def expect_continue(request: web.Request) -> web.StreamResponse | None:
    """``Expect: 100-continue`` on the query routes: a body announced over the limit gets its
    413 at once, so the client never sends it (curl asks this way for bodies over 1 MB).
    Otherwise aiohttp's own handling: ``100 Continue``. This runs before the middleware, so
    the refusal is written here, in the same shape."""
    if request.content_length is not None and request.content_length > MAX_BODY_BYTES:
        response = error_response(_too_large(request.content_length))
        response.force_close()
        return response
    await _default_expect_handler(request)
    return None


def _too_large(size: int | None) -> PayloadTooLarge:
    got = f"{size} bytes" if size is not None else "larger"
    return PayloadTooLarge(
        f"The request body is {got}; the limit is 4 MB ({MAX_BODY_BYTES} bytes)."
    )
