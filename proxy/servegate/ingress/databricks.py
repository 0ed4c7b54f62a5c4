"""The Databricks serving-endpoint routes: ``/invocations`` and the read side of
``/api/2.0/serving-endpoints``, in the platform's object shape (``databricks-api.md`` §2).
"""

from __future__ import annotations

import uuid
from typing import Any

import orjson
from aiohttp import web

from servegate import keys
from servegate.config import EndpointRuntime, InvalidEndpoint
from servegate.ingress import control
from servegate.ingress.body import read_json
from servegate.ingress.middleware import permission_level
from servegate.ingress.openapi import openapi_json
from servegate.pipeline import answer_query, find_endpoint
from servegate.spec import redacted_dump

CREATOR = "servegate"
_ID_NAMESPACE = uuid.UUID("6f1c9e2a-5d0b-4d7e-9a51-3f0e8c2b7a10")


async def invocations(request: web.Request) -> web.StreamResponse:
    body = await read_json(request)
    return await answer_query(request, request.match_info["name"], body)


async def entity_invocations(request: web.Request) -> web.StreamResponse:
    body = await read_json(request)
    return await answer_query(
        request, request.match_info["name"], body, entity_name=request.match_info["entity"]
    )


async def list_endpoints(request: web.Request) -> web.Response:
    config = request.app[keys.config_holder].current
    objects = [endpoint_object(ep, detailed=False) for ep in config.endpoints.values()]
    objects += [invalid_object(ep) for ep in config.invalid.values()]
    objects.sort(key=lambda obj: str(obj["name"]))
    return _json({"endpoints": objects})


async def get_endpoint(request: web.Request) -> web.Response:
    config = request.app[keys.config_holder].current
    name = request.match_info["name"]
    pending = await control.pending_object(request.app, name)  # a write not served here yet
    if pending is not None:
        pending["permission_level"] = await permission_level(request, name)
        return _json(pending)
    if name in config.invalid and name not in config.endpoints:
        return _json(invalid_object(config.invalid[name]))
    obj = endpoint_object(find_endpoint(config, name), detailed=True)
    obj["permission_level"] = await permission_level(request, name)
    return _json(obj)


async def get_openapi(request: web.Request) -> web.Response:
    """The endpoint's OpenAPI document (``ingress/openapi.py``), ready or not."""
    config = request.app[keys.config_holder].current
    endpoint = find_endpoint(config, request.match_info["name"])
    document = openapi_json(endpoint.name, endpoint.task, tuple(endpoint.entities))
    return web.Response(body=document, content_type="application/json")


async def databricks_config_probe(request: web.Request) -> web.Response:
    """databricks-sdk probes this on every ``Config()``; a fast 404 tells it "no metadata"."""
    return web.Response(
        status=404,
        body=b'{"error_code":"RESOURCE_DOES_NOT_EXIST","message":"No host metadata."}',
        content_type="application/json",
    )


def endpoint_id(name: str) -> str:
    return uuid.uuid5(_ID_NAMESPACE, name).hex


def endpoint_object(endpoint: EndpointRuntime, *, detailed: bool) -> dict[str, Any]:
    """ServingEndpointDetailed (GET one) or ServingEndpoint (list); secrets never included."""
    spec = redacted_dump(endpoint.spec)
    config = spec.get("config", {})
    entities = []
    for entity in config.get("served_entities", []):
        runtime = endpoint.entities.get(entity.get("name", ""))
        problem = runtime.problem if runtime is not None else None
        if detailed:
            entity = {
                **entity,
                "state": {
                    "deployment": "DEPLOYMENT_FAILED" if problem else "DEPLOYMENT_READY",
                    "deployment_state_message": problem or "",
                },
                "creator": CREATOR,
                "creation_timestamp": endpoint.created_ms,
            }
        else:
            entity = {k: entity[k] for k in ("name", "external_model") if k in entity}
        entities.append(entity)
    state: dict[str, Any] = {
        "ready": "READY" if endpoint.ready else "NOT_READY",
        "config_update": "UPDATE_FAILED" if endpoint.rejected_update else "NOT_UPDATING",
    }
    reasons = [
        *endpoint.problems,
        *([endpoint.rejected_update] if endpoint.rejected_update else []),
    ]
    if reasons:
        state["message"] = "; ".join(reasons)
    out_config: dict[str, Any] = {"served_entities": entities}
    if detailed:
        out_config["traffic_config"] = config.get("traffic_config", {"routes": []})
        out_config["config_version"] = endpoint.config_version
    obj: dict[str, Any] = {
        "name": endpoint.name,
        "id": endpoint_id(endpoint.name),
        "creator": CREATOR,
        "creation_timestamp": endpoint.created_ms,
        "last_updated_timestamp": endpoint.updated_ms,
        "state": state,
        "config": out_config,
        "task": str(endpoint.task),
        "tags": spec.get("tags", []),
        "endpoint_type": "EXTERNAL_MODEL",
    }
    for key in ("ai_gateway", "description"):
        if key in spec:
            obj[key] = spec[key]
    if detailed:
        obj["permission_level"] = "CAN_QUERY"
        obj["route_optimized"] = False
    return obj


def invalid_object(endpoint: InvalidEndpoint) -> dict[str, Any]:
    return {
        "name": endpoint.name,
        "id": endpoint_id(endpoint.name),
        "creator": CREATOR,
        "state": {
            "ready": "NOT_READY",
            "config_update": "UPDATE_FAILED",
            "message": "; ".join(endpoint.errors),
        },
        "config": {"served_entities": []},
        "tags": [],
    }


def _json(data: dict[str, Any]) -> web.Response:
    return web.Response(body=orjson.dumps(data), content_type="application/json")
