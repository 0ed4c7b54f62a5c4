"""Liveness, readiness and Prometheus metrics: unauthenticated, cheap, no request content."""

from __future__ import annotations

import orjson
from aiohttp import web

from servegate import keys
from servegate.records.metrics import CONTENT_TYPE


async def healthz(request: web.Request) -> web.Response:
    return web.Response(body=b'{"status":"ok"}', content_type="application/json")


async def readyz(request: web.Request) -> web.Response:
    """200 once a config has loaded (ready or not, every endpoint is then listed)."""
    config = request.app[keys.config_holder].current
    body = {
        "status": "ready",
        "generation": config.generation,
        "endpoints": len(config.endpoints),
        "endpoints_ready": sum(1 for ep in config.endpoints.values() if ep.ready),
    }
    return web.Response(body=orjson.dumps(body), content_type="application/json")


async def metrics(request: web.Request) -> web.Response:
    return web.Response(
        body=request.app[keys.metrics].render(), headers={"Content-Type": CONTENT_TYPE}
    )
