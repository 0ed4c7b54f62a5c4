"""The one query path, stage by stage. Each stage lives in its own module; this file only
calls them in order:

    endpoint lookup → body validation (task) → rate limits (calls counted, token room
    checked, ``max_tokens`` capped to it) → input guardrails → routing (split or named
    entity, then fallback order) → per attempt: provider translation → transport →
    output guardrails → response or stream → tokens charged → usage and payload rows

Authentication ran before this, in the middleware (``ingress/middleware.py``);
authorization (may this caller query this endpoint) is the first stage here. Endpoints
without guardrails, usage tracking or an inference table skip those stages entirely.
"""

from __future__ import annotations

import itertools
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web

from servegate import keys
from servegate.canonical.requests import QueryRequest, parse_query
from servegate.canonical.usage import estimate_tokens
from servegate.config import EndpointRuntime, EntityRuntime, RuntimeConfig
from servegate.ingress.errors import (
    BadRequest,
    EndpointNotReady,
    GatewayError,
    NotFound,
    UpstreamFault,
)
from servegate.ingress.middleware import authorize
from servegate.policy.guardrails.engine import (
    GuardrailBlocked,
    Judge,
    Screening,
    SideRules,
    Turn,
    answer_characters,
    judge_answer,
    output_filter,
    request_turns,
    screen_input,
    screen_output,
)
from servegate.policy.limits import RateLimited
from servegate.records.metrics import Observation
from servegate.records.recorder import RequestRecord, received_now
from servegate.routing.fallback import attempt_order, falls_back
from servegate.spec.endpoint import Task
from servegate.streaming.relay import active_streams_key, relay_stream
from servegate.streaming.tap import StreamTap
from servegate.transport.client import expect_content_type

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
    # First: a caller who may not query the endpoint learns nothing of it (not even that
    # it exists), and nothing is counted or recorded for it.
    await authorize(request, endpoint_name)
    endpoint = find_endpoint(app[keys.config_holder].current, endpoint_name)
    access = request[keys.access]
    access.endpoint = endpoint.name
    if not (endpoint.usage_tracking or endpoint.payload_table or endpoint.guardrails):
        return await _governed(request, endpoint, body, task, entity_name, Watch())
    watch = Watch(
        record=RequestRecord(
            request_id=request[keys.request_id],
            requester=request[keys.principal].name,
            received=received_now(),
            request_body=orjson.dumps(body) if endpoint.payload_table else None,
        ),
        screening=Screening(),
        judge=app.get(keys.judge),
    )
    status = 500
    try:
        response = await _governed(request, endpoint, body, task, entity_name, watch)
        status = access.status or response.status
        return response
    except GatewayError as error:
        status = error.status
        if isinstance(error, GuardrailBlocked) and watch.record is not None:
            watch.record.response_body = orjson.dumps(error.body())
        raise
    except ConnectionResetError:
        status = 499
        raise
    finally:
        _recorded(app, endpoint, watch, status)


def _recorded(app: web.Application, endpoint: EndpointRuntime, watch: Watch, status: int) -> None:
    assert watch.record is not None
    assert watch.screening is not None
    metrics = app[keys.metrics]
    for trigger in watch.screening.triggers:
        metrics.guardrail_triggers.labels(
            endpoint.name, trigger.side, trigger.check, trigger.action
        ).inc()
    watch.record.guardrail = watch.screening.summary
    app[keys.recorder].request(endpoint, watch.record, status)


async def _governed(
    request: web.Request,
    endpoint: EndpointRuntime,
    body: object,
    task: Task | None,
    entity_name: str | None,
    watch: Watch,
) -> web.StreamResponse:
    app, access = request.app, request[keys.access]
    app[keys.metrics].requester(endpoint.name, request[keys.principal].name)
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
    query = parse_query(endpoint.task, body, depth_checked=True)  # read_json checked it
    access.stream = query.stream
    if watch.record is not None:
        watch.record.client_request_id = query.client_request_id
        watch.record.usage_context = query.usage_context
        watch.record.stream = query.stream
        watch.record.input_characters = query.prompt_characters()
    limiter = app[keys.rate_limiter]
    try:
        admission = await limiter.admit(
            endpoint.name, endpoint.rate_limits, request[keys.principal]
        )
    except RateLimited:
        app[keys.metrics].rate_limited.labels(endpoint.name).inc()
        raise
    guardrails = endpoint.guardrails
    if guardrails is not None and watch.screening is not None:
        watch.output = guardrails.output
        if guardrails.output is not None and guardrails.output.needs_judge:
            watch.prompt = request_turns(query)
        if guardrails.input is not None:
            query = await screen_input(guardrails.input, query, watch.judge, watch.screening)
    if admission is None or not admission.token_charges:
        return await _answer(request, endpoint, entity_name, query, watch)
    prompt_tokens = estimate_tokens(query.prompt_characters())
    cap = limiter.cap(admission, prompt_tokens)
    if cap is not None and query.task != Task.EMBEDDINGS:
        query = query.with_max_tokens(cap)
    try:
        return await _answer(request, endpoint, entity_name, query, watch)
    finally:
        usage = access.usage
        await limiter.charge(admission, usage.total_tokens if usage else prompt_tokens)


async def _answer(
    request: web.Request,
    endpoint: EndpointRuntime,
    entity_name: str | None,
    query: QueryRequest,
    watch: Watch,
) -> web.StreamResponse:
    """Routing: the chosen entity, then (with fallback enabled) the others in order."""
    app, access = request.app, request[keys.access]
    order = _attempts(endpoint, entity_name)
    deadline = time.monotonic() + app[keys.upstream_client].timeouts.first_byte
    for entity, following in itertools.pairwise(order):
        access.entity = entity.name
        try:
            return await _attempt(request, endpoint, entity, query, deadline, watch)
        except GatewayError as error:
            if not falls_back(error) or time.monotonic() >= deadline:
                raise
            log.warning(
                "endpoint %s: served entity %s failed (%s %s); falling back to %s",
                endpoint.name, entity.name, error.status, error.error_code, following.name,
            )  # fmt: skip
            app[keys.metrics].fallbacks.labels(endpoint.name, entity.name, following.name).inc()
    access.entity = order[-1].name
    return await _attempt(request, endpoint, order[-1], query, deadline, watch)


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
    watch: Watch,
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
        # A client that goes away while we wait cancels the upstream request (ClientGone).
        with app[active_streams_key].watch(request):
            upstream = await client.send(
                upstream_request, provider.name, deadline=deadline, whole=not query.stream
            )
            # A unary answer's own timer bounds its body; a stream's error body needs one.
            bounded = deadline if query.stream else None
            if upstream.status >= 400:
                raise provider.error(
                    upstream.status,
                    await client.read_body(upstream, provider.name, deadline=bounded),
                    upstream.headers,
                )
            if not query.stream:
                expect_content_type(upstream, provider.name)
                body = await client.read_body(upstream, provider.name)
        headers = {"served-model-name": entity.name}
        if query.stream:
            tap = watch.tap(query.task)
            outcome = await relay_stream(
                request,
                upstream,
                provider.stream(query),
                client,
                provider=provider.name,
                headers=headers,
                tap=tap,
                deadline=deadline,
            )
            status, usage, first_frame_at = outcome.status, outcome.usage, outcome.first_frame_at
            if status >= 400 and status != 499:  # failed after content reached the client
                app[keys.metrics].stream_errors.labels(endpoint.name, provider.name).inc()
            request[keys.access].status = status
            watch.answered(tap, None)
            return outcome.response
        translated = provider.complete_usage(
            query, provider.parse_response(query, body), upstream.headers
        )
        status, usage = 200, translated.usage
        payload = translated.raw if translated.raw is not None else orjson.dumps(translated.body)
        if watch.record is not None:
            payload = await watch.screen_answer(query.task, translated.body, payload)
        return web.Response(body=payload, content_type="application/json", headers=headers)
    except GatewayError as error:
        status = error.status
        if isinstance(error, UpstreamFault) and error.provider is None:
            error.provider = provider.name  # raised by a converter that did not name it
        raise
    except ConnectionResetError:
        status = 499  # the client went away first (nginx's code for it)
        raise
    finally:
        in_flight.dec()
        access = request[keys.access]
        access.usage = usage
        now = time.perf_counter()
        if watch.record is not None:
            watch.record.entity, watch.record.usage = entity.name, usage
            if upstream_started is not None:
                watch.record.upstream_ms = int((now - upstream_started) * 1000)
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


@dataclass(slots=True)
class Watch:
    """What the governance stages need across one request: its record (usage tracking,
    inference table), what the guardrails did, and the output rules. Empty (all None) for
    endpoints with none of those, which then pay nothing for them."""

    record: RequestRecord | None = None
    screening: Screening | None = None
    judge: Judge | None = None
    output: SideRules | None = None
    prompt: list[Turn] = field(default_factory=list)

    def tap(self, task: Task) -> StreamTap | None:
        if self.record is None or self.screening is None:
            return None
        rules, screening = self.output, self.screening
        tap = StreamTap(task, output_filter(rules, screening) if rules else None)
        if rules is not None and rules.needs_judge:
            judge = self.judge

            async def whole_answer() -> None:
                await judge_answer(rules, tap.text(), self.prompt, judge, screening)

            tap.before_end = whole_answer
        return tap

    def answered(self, tap: StreamTap | None, body: bytes | None) -> None:
        record = self.record
        if record is None:
            return
        if tap is not None:
            record.output_characters = tap.output_characters
            if record.request_body is not None:  # an inference table wants the payload
                record.response_body = orjson.dumps(tap.response())
        elif body is not None and record.request_body is not None:
            record.response_body = body

    async def screen_answer(self, task: Task, body: dict[str, Any] | None, payload: bytes) -> bytes:
        """Output guardrails on a unary answer; also counts its characters."""
        assert self.screening is not None
        data = body if body is not None else orjson.loads(payload)
        if self.output is not None:
            masked = await screen_output(
                self.output, task, data, self.judge, self.screening, self.prompt
            )
            if masked is not None:
                data, payload = masked, orjson.dumps(masked)
        if self.record is not None:
            self.record.output_characters = answer_characters(task, data)
        self.answered(None, payload)
        return payload


def ask_endpoint(
    app: web.Application, name: str
) -> Callable[[list[dict[str, str]]], Awaitable[str]]:
    """The guardrail judge's way to ask endpoint ``name``: a chat through its provider,
    in-process (no HTTP hop, no auth, limits or guardrails of its own). Failures raise;
    the judge turns them into a fail-closed 503."""

    async def ask(messages: list[dict[str, str]]) -> str:
        endpoint = app[keys.config_holder].current.endpoints.get(name)
        if endpoint is None or not endpoint.ready:
            raise EndpointNotReady(f"The guardrail judge endpoint '{name}' is not ready.")
        query = parse_query(
            endpoint.task, {"messages": messages, "temperature": 0, "max_tokens": 64}
        )
        provider = endpoint.entities[endpoint.split.choose()].provider
        if provider is None:
            raise EndpointNotReady(f"The guardrail judge endpoint '{name}' is not ready.")
        client = app[keys.upstream_client]
        upstream_request = await provider.authorize(provider.build_request(query))
        deadline = time.monotonic() + client.timeouts.first_byte
        upstream = await client.send(upstream_request, provider.name, deadline=deadline, whole=True)
        if upstream.status < 400:
            expect_content_type(upstream, provider.name)
        body = await client.read_body(upstream, provider.name)
        if upstream.status >= 400:
            raise provider.error(upstream.status, body, upstream.headers)
        translated = provider.parse_response(query, body)
        data = translated.body if translated.body is not None else orjson.loads(body)
        content = data["choices"][0]["message"]["content"]
        return content if isinstance(content, str) else ""

    return ask
