"""Reading a JSON request body once, with the platform's 4 MB limit and clean errors."""

from __future__ import annotations

from typing import Any

import orjson
from aiohttp import web

from servegate.ingress.errors import BadRequest, PayloadTooLarge

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


def _too_large(size: int | None) -> PayloadTooLarge:
    got = f"{size} bytes" if size is not None else "larger"
    return PayloadTooLarge(
        f"The request body is {got}; the limit is 4 MB ({MAX_BODY_BYTES} bytes)."
    )
