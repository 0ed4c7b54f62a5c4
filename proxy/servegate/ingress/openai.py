"""The OpenAI-compatible routes: ``model`` names the endpoint, the path names the task.

They live under ``/serving-endpoints`` (the base URL databricks-sdk gives the OpenAI client)
and under ``/v1`` (the base URL every other OpenAI client expects).
"""

from __future__ import annotations

from typing import Any

import orjson
from aiohttp import web

from servegate import keys
from servegate.ingress.body import read_json
from servegate.ingress.errors import BadRequest
from servegate.pipeline import answer_query
from servegate.spec.endpoint import Task


async def _query(request: web.Request, task: Task) -> web.StreamResponse:
    body = await read_json(request)
    model = body.get("model") if isinstance(body, dict) else None
    if not isinstance(model, str) or not model:
        raise BadRequest("'model' is required: set it to the serving endpoint's name.")
    return await answer_query(request, model, body, task=task)


async def chat_completions(request: web.Request) -> web.StreamResponse:
    return await _query(request, Task.CHAT)


async def completions(request: web.Request) -> web.StreamResponse:
    return await _query(request, Task.COMPLETIONS)


async def embeddings(request: web.Request) -> web.StreamResponse:
    return await _query(request, Task.EMBEDDINGS)


async def list_models(request: web.Request) -> web.Response:
    config = request.app[keys.config_holder].current
    data: list[dict[str, Any]] = [
        {
            "id": name,
            "object": "model",
            "created": endpoint.created_ms // 1000,
            "owned_by": "servegate",
            "task": str(endpoint.task),
        }
        for name, endpoint in sorted(config.endpoints.items())
    ]
    return web.Response(
        body=orjson.dumps({"object": "list", "data": data}), content_type="application/json"
    )
