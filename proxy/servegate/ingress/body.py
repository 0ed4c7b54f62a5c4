"""Reading a JSON request body once, with the platform's 4 MB limit and clean errors."""

from __future__ import annotations

from typing import Any

import orjson
from aiohttp import web
from aiohttp.web_urldispatcher import _default_expect_handler

from servegate.ingress.errors import BadRequest, PayloadTooLarge, error_response

MAX_BODY_BYTES = 4 * 1024 * 1024


async def read_json(request: web.Request) -> Any:
    if request.content_length is not None and request.content_length > MAX_BODY_BYTES:
        raise _too_large(request.content_length)
    try:
        raw = await request.read()
    except web.HTTPRequestEntityTooLarge:
        raise _too_large(None) from None
    if not raw:
        raise BadRequest("The request body is empty; send a JSON object.")
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise BadRequest(f"The request body is not valid JSON: {exc}.") from None


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
