"""The one query path, stage by stage. Each stage lives in its own module; this file only
calls them in order:

    endpoint lookup → body validation (task) → rate limits (calls counted, token room
    checked, ``max_tokens`` capped to it) → routing (split or named entity, then fallback
    order) → per attempt: provider translation → transport → response or stream
    → tokens charged

Authentication ran before this, in the middleware (``ingress/middleware.py``).
"""

from __future__ import annotations

import itertools
import logging
import time

import orjson
from aiohttp import web

from servegate import keys
from servegate.canonical.requests import QueryRequest, parse_query
from servegate.canonical.usage import estimate_tokens
from servegate.config import EndpointRuntime, EntityRuntime, RuntimeConfig
from servegate.ingress.errors import BadRequest, EndpointNotReady, GatewayError, NotFound
from servegate.policy.limits import RateLimited
from servegate.records.metrics import Observation
from servegate.routing.fallback import attempt_order, falls_back
from servegate.spec.endpoint import Task
from servegate.streaming.relay import relay_stream

log = logging.getLogger(__name__)


def find_endpoint(config: RuntimeConfig, name: str) -> EndpointRuntime:
    endpoint = config.endpoints.get(name)
    if endpoint is not None:
        return endpoint
    invalid = config.invalid.get(name)
    if invalid is not None:
        raise EndpointNotReady(
            f"Endpoint '{name}' is not ready: its manifest is invalid: {invalid.errors[0]}",
            retry_after=10,
        )
    raise NotFound(f"Endpoint with name '{name}' not found.")


def _pick_entity(endpoint: EndpointRuntime, entity_name: str) -> EntityRuntime:
    entity = endpoint.entities.get(entity_name)
    if entity is None:
        raise NotFound(f"Served entity '{entity_name}' not found in endpoint '{endpoint.name}'.")
    return entity


async def answer_query(
    request: web.Request,
    endpoint_name: str,
    body: object,
    *,
    task: Task | None = None,
    entity_name: str | None = None,
) -> web.StreamResponse:
    """Answer one query. ``task`` is set by the OpenAI routes, which imply one."""
    app = request.app
    endpoint = find_endpoint(app[keys.config_holder].current, endpoint_name)
    access = request[keys.access]
    access.endpoint = endpoint.name
    if task is not None and endpoint.task != task:
        raise BadRequest(
            f"Endpoint '{endpoint.name}' serves {endpoint.task}, not {task}: "
            "call the route for its task."
        )
    if not endpoint.ready:
        raise EndpointNotReady(
            f"Endpoint '{endpoint.name}' is not ready: {'; '.join(endpoint.problems)}",
            retry_after=10,
        )
    query = parse_query(endpoint.task, body)
    access.stream = query.stream
    limiter = app[keys.rate_limiter]
    try:
        admission = await limiter.admit(
            endpoint.name, endpoint.rate_limits, request[keys.principal]
        )
    except RateLimited:
        app[keys.metrics].rate_limited.labels(endpoint.name).inc()
        raise
    if admission is None or not admission.token_charges:
        return await _answer(request, endpoint, entity_name, query)
    prompt_tokens = estimate_tokens(query.prompt_characters())
    cap = limiter.cap(admission, prompt_tokens)
    if cap is not None and query.task != Task.EMBEDDINGS:
        query = query.with_max_tokens(cap)
    try:
        return await _answer(request, endpoint, entity_name, query)
    finally:
        usage = access.usage
        await limiter.charge(admission, usage.total_tokens if usage else prompt_tokens)


async def _answer(
    request: web.Request, endpoint: EndpointRuntime, entity_name: str | None, query: QueryRequest
) -> web.StreamResponse:
    """Routing: the chosen entity, then (with fallback enabled) the others in order."""
    app, access = request.app, request[keys.access]
    order = _attempts(endpoint, entity_name)
    deadline = time.monotonic() + app[keys.upstream_client].timeouts.first_byte
    for entity, following in itertools.pairwise(order):
        access.entity = entity.name
        try:
            return await _attempt(request, endpoint, entity, query, deadline)
        except GatewayError as error:
            if not falls_back(error) or time.monotonic() >= deadline:
                raise
            log.warning(
                "endpoint %s: served entity %s failed (%s %s); falling back to %s",
                endpoint.name, entity.name, error.status, error.error_code, following.name,
            )  # fmt: skip
            app[keys.metrics].fallbacks.labels(endpoint.name, entity.name, following.name).inc()
    access.entity = order[-1].name
    return await _attempt(request, endpoint, order[-1], query, deadline)


def _attempts(endpoint: EndpointRuntime, entity_name: str | None) -> list[EntityRuntime]:
    """The entities to try, in order: the named one alone, or the split's pick and then,
    with fallback enabled, the others (routing/fallback.py)."""
    if entity_name is not None:
        return [_pick_entity(endpoint, entity_name)]
    names = attempt_order(
        list(endpoint.entities), endpoint.split.choose(), enabled=endpoint.fallback
    )
    return [endpoint.entities[name] for name in names]


async def _attempt(
    request: web.Request,
    endpoint: EndpointRuntime,
    entity: EntityRuntime,
    query: QueryRequest,
    deadline: float,
) -> web.StreamResponse:
    """One served entity answers (or raises before anything reached the client)."""
    app = request.app
    provider = entity.provider
    if provider is None:  # only possible for a not-ready endpoint, refused above
        raise EndpointNotReady(f"Served entity '{entity.name}' is not ready: {entity.problem}")
    status, usage = 500, None
    upstream_started: float | None = None
    first_frame_at: float | None = None
    client = app[keys.upstream_client]
    in_flight = app[keys.metrics].in_flight
    in_flight.inc()
    try:
        provider.check(query)
        upstream_request = await provider.authorize(provider.build_request(query))
        upstream_started = time.perf_counter()
        upstream = await client.send(upstream_request, provider.name, deadline=deadline)
        if upstream.status >= 400:
            raise provider.error(
                upstream.status, await client.read_body(upstream, provider.name), upstream.headers
            )
        headers = {"served-model-name": entity.name}
        if query.stream:
            outcome = await relay_stream(
                request,
                upstream,
                provider.stream(query),
                client,
                provider=provider.name,
                headers=headers,
            )
            status, usage, first_frame_at = outcome.status, outcome.usage, outcome.first_frame_at
            if status >= 400 and status != 499:  # failed after content reached the client
                app[keys.metrics].stream_errors.labels(endpoint.name, provider.name).inc()
            return outcome.response
        translated = provider.parse_response(query, await client.read_body(upstream, provider.name))
        status, usage = 200, translated.usage
        payload = translated.raw if translated.raw is not None else orjson.dumps(translated.body)
        return web.Response(body=payload, content_type="application/json", headers=headers)
    except GatewayError as error:
        status = error.status
        raise
    finally:
        in_flight.dec()
        access = request[keys.access]
        access.usage = usage
        now = time.perf_counter()
        app[keys.metrics].observe(
            Observation(
                endpoint=endpoint.name,
                entity=entity.name,
                provider=str(entity.model.provider),
                model=entity.model.name,
                task=str(endpoint.task),
                status=status,
                seconds=now - access.started,
                stream=query.stream,
                usage=usage,
                upstream_seconds=None if upstream_started is None else now - upstream_started,
                first_token_seconds=None
                if first_frame_at is None
                else first_frame_at - access.started,
            )
        )
