"""The write side of ``/api/2.0/serving-endpoints``: create, update and delete.

Every write goes to an :class:`~servegate.control.store.EndpointStore`:

- ``--state-dir`` (:class:`~servegate.control.statedir.LocalStore`): manifests this gateway
  serves itself. It reloads before answering, so the response already describes the
  endpoint as it serves. Endpoints defined by the manifests the gateway was started with
  belong to those files: the API can read and query them, never change them (403, naming
  the file).
- ``--control-plane kubernetes`` (:class:`~servegate.control.kubestore.KubernetesStore`):
  ServingEndpoint resources in the gateway's namespace, which the operator turns into the
  config the gateway loads some seconds later. The response describes the endpoint as
  stored, ``config_update: IN_PROGRESS`` until this replica serves it.

Either way the served config can lag behind the store (another worker wrote it, or the
operator and kubelet have not caught up): until it does, GET reports the endpoint as
``config_update: IN_PROGRESS`` with its ``pending_config`` (:func:`pending_object`), and
another update is refused with 409 ``RESOURCE_CONFLICT``, as the platform does.

Who may write is the auth's decision (``authorize`` with verb create, update or delete),
taken before anything is read from or written to the store: without an auth file (loopback
only) anyone; with one, callers in the manage group (``--manage-group``, default
``admins``); with ``--auth kubernetes`` a SubjectAccessReview for that verb on that
``servingendpoints`` name. Others get 403 ``PERMISSION_DENIED`` and nothing is written.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

import orjson
from aiohttp import web

from servegate import keys
from servegate.config import EndpointRuntime
from servegate.control import bodies
from servegate.control.pending import pending_config
from servegate.control.plaintext import extract
from servegate.control.statedir import LocalStore
from servegate.control.store import (
    AlreadyExists,
    Conflict,
    EndpointStore,
    Stored,
    StoreUnavailable,
)
from servegate.ingress import databricks
from servegate.ingress.body import read_json
from servegate.ingress.errors import GatewayError, NotFound, PermissionDenied
from servegate.reload import reload_now
from servegate.spec import ServingEndpointSpec, redacted_dump

Change = Callable[[dict[str, Any], object], dict[str, Any]]


class ControlPlaneOff(GatewayError):
    status = 400
    error_code = "BAD_REQUEST"


async def create_endpoint(request: web.Request) -> web.Response:
    store = _store(request)
    body = await read_json(request)
    write = bodies.create_body(body)
    name = write.name
    await _may(request, "create", name)
    config = request.app[keys.config_holder].current
    if not store.authoritative and (name in config.endpoints or name in config.invalid):
        raise AlreadyExists(f"Endpoint with name '{name}' already exists.")
    extracted = extract(name, write.spec)
    stored = await store.create(name, extracted, request[keys.principal].name)
    if store.reload_after_write:
        await reload_now(request.app)
    return await _written(request, stored)


async def update_config(request: web.Request) -> web.Response:
    stored = await _update(request, bodies.config_body)
    return await _written(request, stored)


async def update_ai_gateway(request: web.Request) -> web.Response:
    stored = await _update(request, bodies.ai_gateway_body)
    return _json(_dump(stored).get("ai_gateway", {}))


async def update_rate_limits(request: web.Request) -> web.Response:
    stored = await _update(request, bodies.rate_limits_body)
    return _json({"rate_limits": _dump(stored).get("rate_limits", [])})


async def patch_tags(request: web.Request) -> web.Response:
    stored = await _update(request, bodies.tags_body)
    return _json({"tags": _dump(stored).get("tags", [])})


async def delete_endpoint(request: web.Request) -> web.Response:
    store = _store(request)
    name = request.match_info["name"]
    await _may(request, "delete", name)
    if not store.authoritative:
        await _owned(request, store, name)
    await store.delete(name)
    if store.reload_after_write:
        await reload_now(request.app)
    return _json({})


async def pending_object(
    app: web.Application, name: str, stored: Stored | None = None
) -> dict[str, Any] | None:
    """GET's view of a stored endpoint this process does not serve as stored: not loaded
    yet (``config_update: IN_PROGRESS`` with its ``pending_config``), or refused by the
    platform (``UPDATE_FAILED``, the last good version serving). None when the served
    view is the whole truth: up to date, or not held by the store at all.

    When the store cannot be read the served view is shown, if there is one; otherwise
    the store's 503 (the endpoint may exist, so a 404 would be a lie).
    """
    store = _app_store(app)
    if store is None:
        return None
    served = app[keys.config_holder].current.endpoints.get(name)
    if stored is None:
        try:
            stored = await store.read(name)
        except StoreUnavailable:
            if served is not None:
                return None
            raise
    if stored is None:
        return None
    if stored.rejected is not None:
        obj = _endpoint_object(served, stored)
        obj["state"]["config_update"] = "UPDATE_FAILED"
        obj["state"]["message"] = stored.rejected
        return obj
    pending = pending_config(stored, served)
    if pending is None:
        return None
    obj = _endpoint_object(served, stored)
    obj["state"]["config_update"] = "IN_PROGRESS"
    obj["pending_config"] = pending
    return obj


# ------------------------------------------------------------------ internals


async def _update(request: web.Request, change: Change) -> Stored:
    """Authorize, read, check nothing is in progress, write the changed spec (and reload,
    when the gateway serves the store itself)."""
    store = _store(request)
    body = await read_json(request)
    name = request.match_info["name"]
    await _may(request, "update", name)
    stored = await _owned(request, store, name)
    served = request.app[keys.config_holder].current.endpoints.get(name)
    if pending_config(stored, served) is not None:
        raise Conflict(
            f"Endpoint '{name}' has an update in progress; another update can not be made "
            "until the update completes or fails."
        )
    extracted = extract(name, change(stored.spec, body))
    written = await store.replace(stored, extracted)
    if store.reload_after_write:
        await reload_now(request.app)
    return written


async def _written(request: web.Request, stored: Stored) -> web.Response:
    """Answer a create or a config update with the endpoint as GET shows it."""
    pending = await pending_object(request.app, stored.name, stored)
    if pending is not None:
        return _json(pending)
    served = request.app[keys.config_holder].current.endpoints.get(stored.name)
    if served is None:
        raise NotFound(f"Endpoint with name '{stored.name}' not found.")
    return _json(databricks.endpoint_object(served, detailed=True))


def _app_store(app: web.Application) -> EndpointStore | None:
    store = app.get(keys.endpoint_store)
    if store is not None:
        return store
    state = app.get(keys.state_dir)  # a gateway wired before the store key existed
    return LocalStore(state) if state is not None else None


def _store(request: web.Request) -> EndpointStore:
    store = _app_store(request.app)
    if store is None:
        raise ControlPlaneOff(
            "This gateway serves endpoints from its manifests only; start it with "
            "--state-dir DIR (or, in Kubernetes, --control-plane kubernetes) to create and "
            "change endpoints through the API."
        )
    return store


async def _may(request: web.Request, verb: str, name: str) -> None:
    """The caller may ``verb`` (create, update, delete) the endpoint: the auth decides (the
    auth file's manage group, or a SubjectAccessReview with ``--auth kubernetes``)."""
    await request.app[keys.auth_holder].current.authorize(request[keys.principal], name, verb)


async def _owned(request: web.Request, store: EndpointStore, name: str) -> Stored:
    """The endpoint as stored; 404 if it does not exist, 403 if the gateway's own
    manifests define it (the API did not create it)."""
    stored = await store.read(name)
    if stored is not None:
        return stored
    config = request.app[keys.config_holder].current
    defined = config.endpoints.get(name) or config.invalid.get(name)
    if defined is None or store.authoritative:
        raise NotFound(f"Endpoint with name '{name}' not found.")
    raise PermissionDenied(
        f"Endpoint '{name}' is defined by {defined.source}, not through the API; "
        "change that manifest instead."
    )


def _endpoint_object(served: EndpointRuntime | None, stored: Stored) -> dict[str, Any]:
    """The platform's endpoint object: as served, or, for an endpoint this process does
    not serve at all yet (just created), NOT_READY from the stored spec."""
    if served is not None:
        return databricks.endpoint_object(served, detailed=True)
    spec = _dump(stored)
    obj: dict[str, Any] = {
        "name": stored.name,
        "id": databricks.endpoint_id(stored.name),
        "creator": databricks.CREATOR,
        "creation_timestamp": stored.created_ms,
        "last_updated_timestamp": stored.changed_ms,
        "state": {"ready": "NOT_READY"},
        "config": {"served_entities": []},
        "tags": spec.get("tags", []),
        "endpoint_type": "EXTERNAL_MODEL",
        "route_optimized": False,
    }
    with contextlib.suppress(ValueError):  # an invalid spec has no task
        obj["task"] = str(ServingEndpointSpec.model_validate(stored.spec).task)
    for key in ("ai_gateway", "description"):
        if key in spec:
            obj[key] = spec[key]
    return obj


def _dump(stored: Stored) -> dict[str, Any]:
    """The stored spec as GET shows specs (no plaintext), or as stored if invalid."""
    try:
        return redacted_dump(ServingEndpointSpec.model_validate(stored.spec))
    except ValueError:
        return {k: v for k, v in stored.spec.items() if k in ("tags", "description")}


def _json(data: dict[str, Any]) -> web.Response:
    return web.Response(body=orjson.dumps(data), content_type="application/json")
