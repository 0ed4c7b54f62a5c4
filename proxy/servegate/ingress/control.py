"""The write side of ``/api/2.0/serving-endpoints``: create, update and delete.

Locally (``--state-dir``) the API writes ServingEndpoint manifests there and reloads at
once, so the response already describes the endpoint as it serves. Several workers share
one state dir; until a worker's watcher has loaded a change, its GET reports that
endpoint as ``config_update: IN_PROGRESS`` with the ``pending_config`` (read from the
file), and refuses another update with 409 ``RESOURCE_CONFLICT``, as the platform does.

Endpoints defined by the manifests the gateway was started with belong to those files:
the API can read and query them, never change them (403, naming the file).

Who may write is the auth's decision (``authorize`` with verb create, update or delete):
without an auth file (loopback only) anyone; with one, callers in the manage group
(``--manage-group``, default ``admins``); with ``--auth kubernetes`` a SubjectAccessReview
for that verb on the ``servingendpoints`` resource. Others get 403 ``PERMISSION_DENIED``
and nothing is written.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import orjson
from aiohttp import web

from servegate import keys
from servegate.control import bodies
from servegate.control.plaintext import extract
from servegate.control.statedir import StateDir
from servegate.ingress.body import read_json
from servegate.ingress.databricks import endpoint_object, pending_config, pending_object
from servegate.ingress.errors import GatewayError, NotFound, PermissionDenied
from servegate.reload import reload_now
from servegate.spec import redacted_dump


class AlreadyExists(GatewayError):
    status = 400
    error_code = "RESOURCE_ALREADY_EXISTS"


class Conflict(GatewayError):
    status = 409
    error_code = "RESOURCE_CONFLICT"


class ControlPlaneOff(GatewayError):
    status = 400
    error_code = "BAD_REQUEST"


async def create_endpoint(request: web.Request) -> web.Response:
    state = _state(request)
    body = await read_json(request)
    write = bodies.create_body(body)
    name = write.name
    await _may(request, "create", name)
    config = request.app[keys.config_holder].current
    if name in config.endpoints or name in config.invalid or state.manages(name):
        raise AlreadyExists(f"Endpoint with name '{name}' already exists.")
    extracted = extract(name, write.spec)
    try:
        await asyncio.to_thread(state.create, name, extracted, request[keys.principal].name)
    except FileExistsError:
        raise AlreadyExists(f"Endpoint with name '{name}' already exists.") from None
    return await _written(request, name)


async def update_config(request: web.Request) -> web.Response:
    return await _update(request, bodies.config_body)


async def update_ai_gateway(request: web.Request) -> web.Response:
    name = await _update_spec(request, bodies.ai_gateway_body)
    spec = _served_spec(request, name)
    return _json(spec.get("ai_gateway", {}) if spec else {})


async def update_rate_limits(request: web.Request) -> web.Response:
    name = await _update_spec(request, bodies.rate_limits_body)
    spec = _served_spec(request, name)
    return _json({"rate_limits": (spec or {}).get("rate_limits", [])})


async def patch_tags(request: web.Request) -> web.Response:
    name = await _update_spec(request, bodies.tags_body)
    spec = _served_spec(request, name)
    return _json({"tags": (spec or {}).get("tags", [])})


async def delete_endpoint(request: web.Request) -> web.Response:
    state = _state(request)
    name = request.match_info["name"]
    await _may(request, "delete", name)
    _owned(request, state, name)
    await asyncio.to_thread(state.delete, name)
    await reload_now(request.app)
    return _json({})


# ------------------------------------------------------------------ internals


async def _update(
    request: web.Request, change: Callable[[dict[str, Any], object], dict[str, Any]]
) -> web.Response:
    name = await _update_spec(request, change)
    return await _written(request, name, reload=False)


async def _update_spec(
    request: web.Request, change: Callable[[dict[str, Any], object], dict[str, Any]]
) -> str:
    state = _state(request)
    body = await read_json(request)
    name = request.match_info["name"]
    await _may(request, "update", name)
    _owned(request, state, name)
    stored = state.read(name)
    if stored is None:  # deleted meanwhile
        raise NotFound(f"Endpoint with name '{name}' not found.")
    served = request.app[keys.config_holder].current.endpoints.get(name)
    if pending_config(stored, served, 0):
        raise Conflict(
            f"Endpoint '{name}' has an update in progress; another update can not be made "
            "until the update completes or fails."
        )
    extracted = extract(name, change(stored, body))
    await asyncio.to_thread(state.replace, name, extracted)
    await reload_now(request.app)
    return name


async def _written(request: web.Request, name: str, *, reload: bool = True) -> web.Response:
    """Reload (unless done), then answer with the endpoint as GET shows it."""
    if reload:
        await reload_now(request.app)
    pending = pending_object(request.app, name)
    if pending is not None:
        return _json(pending)
    served = request.app[keys.config_holder].current.endpoints.get(name)
    if served is None:
        raise NotFound(f"Endpoint with name '{name}' not found.")
    return _json(endpoint_object(served, detailed=True))


def _state(request: web.Request) -> StateDir:
    state = request.app.get(keys.state_dir)
    if state is None:
        raise ControlPlaneOff(
            "This gateway serves endpoints from its manifests only; start it with "
            "--state-dir DIR to create and change endpoints through the API."
        )
    return state


async def _may(request: web.Request, verb: str, name: str) -> None:
    """The caller may ``verb`` (create, update, delete) the endpoint: the auth decides (the
    auth file's manage group, or a SubjectAccessReview with ``--auth kubernetes``)."""
    await request.app[keys.auth_holder].current.authorize(request[keys.principal], name, verb)


def _owned(request: web.Request, state: StateDir, name: str) -> None:
    """The endpoint exists and the API created it."""
    if state.manages(name):
        return
    config = request.app[keys.config_holder].current
    defined = config.endpoints.get(name) or config.invalid.get(name)
    if defined is None:
        raise NotFound(f"Endpoint with name '{name}' not found.")
    raise PermissionDenied(
        f"Endpoint '{name}' is defined by {defined.source}, not through the API; "
        "change that manifest instead."
    )


def _served_spec(request: web.Request, name: str) -> dict[str, Any] | None:
    served = request.app[keys.config_holder].current.endpoints.get(name)
    return redacted_dump(served.spec) if served else None


def _json(data: dict[str, Any]) -> web.Response:
    return web.Response(body=orjson.dumps(data), content_type="application/json")
