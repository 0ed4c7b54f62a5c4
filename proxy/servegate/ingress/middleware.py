"""Around every request: request id, authentication, error mapping and the access log.

Authentication (who is calling) happens here, for every path but the public ones.
Authorization (may they query this endpoint) needs the endpoint's name, which only the
route knows (the URL, or an OpenAI body's ``model``), so the query path calls
:func:`authorize` once it has the name; GET routes call :func:`permission_level`.

Any ``GatewayError`` becomes the platform's ``{"error_code", "message"}`` body here (and only
here). aiohttp's own 404/405 become the same shape. Anything else is a bug: it is logged
with its stack trace under the request id, and the client gets a 500 that names the id but
never the trace (nor the words "Unexpected error", which make databricks-sdk retry).
"""

from __future__ import annotations

import itertools
import logging
import time
import uuid

from aiohttp import web
from aiohttp.typedefs import Handler

from servegate import keys
from servegate.auth.callers import QUERY, PermissionLevel
from servegate.auth.callers import permission_level as _permission_level
from servegate.ingress.errors import (
    GatewayError,
    InternalError,
    MethodNotAllowed,
    NotFound,
    error_response,
)
from servegate.ingress.health import Drain, close_while_draining, drain_key

log = logging.getLogger("servegate.access")
errors_log = logging.getLogger("servegate.errors")

PUBLIC_PATHS = frozenset({"/healthz", "/readyz", "/metrics", "/.well-known/databricks-config"})


# Request ids: a random per-process prefix and a counter. Unique, ordered, and free: uuid4
# costs a getrandom syscall per request.
_ID_PREFIX = uuid.uuid4().hex[:16]
_ids = itertools.count(1)


@web.middleware
async def gateway_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """The one middleware (each layer costs every request): counts the request in flight
    for the drain, then authenticates, calls the route and maps its errors."""
    drain = request.app[drain_key]
    drain.started(request)
    try:
        return await _handle(request, handler, drain)
    finally:
        drain.finished(request)


async def _handle(request: web.Request, handler: Handler, drain: Drain) -> web.StreamResponse:
    request_id = f"{_ID_PREFIX}{next(_ids):016x}"
    request[keys.request_id] = request_id
    started = time.perf_counter()
    access = keys.AccessInfo(started=started)
    request[keys.access] = access
    principal = "-"
    try:
        if request.path not in PUBLIC_PATHS:
            who = await request.app[keys.auth_holder].current.authenticate(request.headers)
            request[keys.principal] = who
            principal = who.name
        response = await handler(request)
    except GatewayError as error:
        response = error_response(error)
    except web.HTTPNotFound:
        response = error_response(NotFound(f"No route for {request.method} {request.path}."))
    except web.HTTPMethodNotAllowed as exc:
        allowed = ", ".join(sorted(exc.allowed_methods))
        response = error_response(
            MethodNotAllowed(f"{request.method} is not allowed on {request.path}; use {allowed}.")
        )
    except ConnectionResetError:
        log.info("request_id=%s client disconnected", request_id)
        return web.Response(status=499)
    except web.HTTPException as exc:
        response = error_response(GatewayError(exc.reason, status=exc.status))
    except Exception:
        errors_log.exception("request %s failed", request_id)
        response = error_response(
            InternalError(f"The gateway failed to handle the request (request id {request_id}).")
        )
    if not response.prepared:  # a stream was prepared with these by streaming/relay.py
        response.headers["x-request-id"] = request_id
        close_while_draining(drain, response)
    log.info(
        "request_id=%s method=%s path=%s status=%s duration_ms=%.1f endpoint=%s "
        "served_entity=%s principal=%s stream=%s",
        request_id,
        request.method,
        request.path,
        response.status,
        (time.perf_counter() - started) * 1000,
        access.endpoint,
        access.entity,
        principal,
        access.stream,
    )
    return response


async def authorize(request: web.Request, endpoint: str, verb: str = QUERY) -> None:
    """Let the request through if its caller may ``verb`` (``query``) the endpoint.

    Raises ``PermissionDenied`` (403), or ``AuthUnavailable`` (503) when it cannot be
    decided. Call it before anything is counted or sent upstream.
    """
    await request.app[keys.auth_holder].current.authorize(request[keys.principal], endpoint, verb)


async def permission_level(request: web.Request, endpoint: str) -> PermissionLevel:
    """The caller's ``permission_level`` on an endpoint, for GET responses."""
    return await _permission_level(
        request.app[keys.auth_holder].current, request[keys.principal], endpoint
    )
