"""Liveness, readiness and Prometheus metrics: unauthenticated, cheap, no request content.

Readiness also carries the drain (``server.py`` runs the sequence): from the moment the
gateway is told to stop, ``/readyz`` answers 503 ``{"status": "draining"}`` so load
balancers and the endpoints controller stop sending it new connections, and every response
says ``Connection: close``, so keep-alive clients reconnect (to a ready replica) instead of
reusing a connection that is about to close. ``/healthz`` stays 200 throughout: a draining
gateway is alive, and a failed liveness probe would get it killed before it has drained.
"""

from __future__ import annotations

import asyncio
import contextlib

import orjson
from aiohttp import hdrs, web
from aiohttp.web_protocol import RequestHandler

from servegate import keys
from servegate.records.metrics import CONTENT_TYPE


class Drain:
    """Whether the gateway is draining, and what it is still doing.

    The gateway middleware (``ingress/middleware.py``) counts the requests being handled
    and the connections they arrived on, so the shutdown can wait for exactly those and
    close the connections no request is using.
    """

    def __init__(self) -> None:
        self.draining = False
        self.in_flight = 0
        self.busy: dict[RequestHandler, int] = {}
        """Connections with a request in flight (HTTP/1.1: one at a time, pipelining aside)."""
        self._idle: asyncio.Event | None = None

    def begin(self) -> None:
        self.draining = True

    async def wait_idle(self, seconds: float) -> bool:
        """Wait until no request is in flight (True), for at most ``seconds`` (False)."""
        if self.in_flight == 0:
            return True
        self._idle = asyncio.Event()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(max(0.0, seconds)):
                await self._idle.wait()
        return self.in_flight == 0

    def started(self, request: web.Request) -> None:
        self.in_flight += 1
        protocol = request.protocol
        self.busy[protocol] = self.busy.get(protocol, 0) + 1

    def finished(self, request: web.Request) -> None:
        self.in_flight -= 1
        protocol = request.protocol
        left = self.busy.pop(protocol, 1) - 1
        if left > 0:
            self.busy[protocol] = left
        if self.in_flight == 0 and self._idle is not None:
            self._idle.set()


drain_key = web.AppKey("drain", Drain)


def close_while_draining(drain: Drain, response: web.StreamResponse) -> None:
    """While draining, no connection is kept alive, and the client is told so in the
    response (it must not reuse the connection for its next request)."""
    if drain.draining:
        response.force_close()
        response.headers[hdrs.CONNECTION] = "close"


async def healthz(request: web.Request) -> web.Response:
    return web.Response(body=b'{"status":"ok"}', content_type="application/json")


async def readyz(request: web.Request) -> web.Response:
    """200 once a config has loaded (ready or not, every endpoint is then listed); 503
    ``draining`` from the moment the gateway is told to stop."""
    config = request.app[keys.config_holder].current
    drain = request.app.get(drain_key)
    draining = drain is not None and drain.draining
    body = {
        "status": "draining" if draining else "ready",
        "generation": config.generation,
        "endpoints": len(config.endpoints),
        "endpoints_ready": sum(1 for ep in config.endpoints.values() if ep.ready),
    }
    return web.Response(
        status=503 if draining else 200, body=orjson.dumps(body), content_type="application/json"
    )


async def metrics(request: web.Request) -> web.Response:
    return web.Response(
        body=request.app[keys.metrics].render(), headers={"Content-Type": CONTENT_TYPE}
    )
