"""Prometheus metrics: names, labels and the helpers that observe them.

Two families. ``servegate_*`` are the gateway's own. ``gen_ai_*`` follow the OpenTelemetry
GenAI semantic conventions as Prometheus names (dots become underscores, the unit a
suffix): ``gen_ai.server.request.duration``, ``gen_ai.client.token.usage`` (with
``gen_ai_token_type`` input or output and the convention's bucket boundaries),
``gen_ai.server.time_to_first_token``, ``gen_ai.server.time_per_output_token`` and
``gen_ai.client.operation.duration`` (the provider call alone), labelled with
``gen_ai_operation_name`` (chat, text_completion, embeddings), ``gen_ai_provider_name`` and
``gen_ai_request_model`` beside the endpoint and served entity.

Labels are bounded sets taken from the config (endpoint, entity, provider, model, task,
status class), never request content, principals or credentials; a per-requester counter
exists only when ``--metrics-requester-labels`` turns it on. Each app owns its registry, so
several apps in one process (tests, benchmarks) do not share counters. Under
``--workers N`` (``PROMETHEUS_MULTIPROC_DIR`` set) values live in shared files and every
scrape, whichever worker answers it, reports the sum over all workers.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from servegate.canonical.usage import Usage

CONTENT_TYPE = CONTENT_TYPE_LATEST
# The GenAI conventions' advised boundaries.
_GENAI_DURATION_BUCKETS = (
    0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48, 40.96, 81.92,
)  # fmt: skip
_TOKEN_BUCKETS = (
    1, 4, 16, 64, 256, 1024, 4096, 16384, 65536, 262144, 1048576, 4194304, 16777216, 67108864,
)  # fmt: skip
_TTFT_BUCKETS = (
    0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
)  # fmt: skip
_PER_TOKEN_BUCKETS = (
    0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5,
)  # fmt: skip
_OVERHEAD_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5)
_OPERATION = {"llm/v1/chat": "chat", "llm/v1/completions": "text_completion"}


@dataclass(frozen=True, slots=True)
class _Children:
    requests: Counter
    genai_duration: Histogram
    input_tokens: Histogram
    output_tokens: Histogram
    upstream_errors: Counter | None
    upstream_duration: Histogram
    overhead: Histogram


@dataclass(frozen=True, slots=True)
class _StreamChildren:
    time_to_first_token: Histogram
    time_per_output_token: Histogram


@dataclass(frozen=True, slots=True)
class Observation:
    """One answered query attempt, as the metrics see it."""

    endpoint: str
    entity: str
    provider: str
    model: str
    task: str
    status: int
    seconds: float
    stream: bool
    usage: Usage | None = None
    upstream_seconds: float | None = None
    """The provider call alone (request sent to last byte read)."""
    first_token_seconds: float | None = None
    """Streams: request start to the first content frame written."""


class Metrics:
    def __init__(self) -> None:
        self.multiprocess = bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))
        self._children: dict[tuple[str, str, str, str, int, bool], _Children] = {}
        self._stream_children: dict[tuple[str, str, str, str], _StreamChildren] = {}
        self.requester_labels = False
        # In multiprocess mode the values go to files; exposition collects them all (render).
        self.registry: CollectorRegistry | None = (
            None if self.multiprocess else CollectorRegistry(auto_describe=True)
        )
        self.requests = Counter(
            "servegate_requests",
            "Query requests answered, by endpoint, served entity and HTTP status.",
            ["endpoint", "served_entity", "provider", "task", "status"],
            registry=self.registry,
        )
        # Request durations and token counts are the GenAI histograms below (their _sum and
        # _count are the totals): one observation each, not a servegate_* twin as well.
        genai = ["gen_ai_operation_name", "gen_ai_provider_name", "gen_ai_request_model"]
        where = ["endpoint", "served_entity"]
        self.genai_duration = Histogram(
            "gen_ai_server_request_duration_seconds",
            "GenAI request duration: request received to last byte sent (OTel "
            "gen_ai.server.request.duration).",
            [*genai, *where, "stream", "status_class", "error_type"],
            buckets=_GENAI_DURATION_BUCKETS,
            registry=self.registry,
        )
        self.genai_tokens = Histogram(
            "gen_ai_client_token_usage",
            "Input and output tokens per request (OTel gen_ai.client.token.usage).",
            [*genai, *where, "gen_ai_token_type"],
            buckets=_TOKEN_BUCKETS,
            registry=self.registry,
        )
        self.time_to_first_token = Histogram(
            "gen_ai_server_time_to_first_token_seconds",
            "Streams: request received to the first content sent "
            "(OTel gen_ai.server.time_to_first_token).",
            [*genai, *where],
            buckets=_TTFT_BUCKETS,
            registry=self.registry,
        )
        self.time_per_output_token = Histogram(
            "gen_ai_server_time_per_output_token_seconds",
            "Streams: time per output token after the first "
            "(OTel gen_ai.server.time_per_output_token).",
            [*genai, *where],
            buckets=_PER_TOKEN_BUCKETS,
            registry=self.registry,
        )
        self.upstream_duration = Histogram(
            "gen_ai_client_operation_duration_seconds",
            "The provider call alone, request sent to last byte read "
            "(OTel gen_ai.client.operation.duration).",
            [*genai, *where],
            buckets=_GENAI_DURATION_BUCKETS,
            registry=self.registry,
        )
        self.overhead = Histogram(
            "servegate_gateway_overhead_seconds",
            "Time the gateway spent on a request outside the provider call.",
            ["endpoint"],
            buckets=_OVERHEAD_BUCKETS,
            registry=self.registry,
        )
        self.upstream_errors = Counter(
            "servegate_upstream_errors",
            "Provider calls that failed, by status class (4xx, 5xx; 599 for no answer).",
            [*where, "provider", "status_class"],
            registry=self.registry,
        )
        self.guardrail_triggers = Counter(
            "servegate_guardrail_triggers",
            "Guardrails that fired, by side (input, output), check (pii, keyword, safety, "
            "topic) and action (block, mask).",
            ["endpoint", "side", "check", "action"],
            registry=self.registry,
        )
        self.requester_requests = Counter(
            "servegate_requester_requests",
            "Query requests by requester (only with --metrics-requester-labels).",
            ["endpoint", "requester"],
            registry=self.registry,
        )
        self.records_written = Counter(
            "servegate_records_written",
            "Usage and inference-table rows written, by table kind.",
            ["kind"],
            registry=self.registry,
        )
        self.records_dropped = Counter(
            "servegate_records_dropped",
            "Usage and inference-table rows dropped, by reason (queue_full, sink_error, shutdown).",
            ["reason"],
            registry=self.registry,
        )
        self.record_queue_depth = Gauge(
            "servegate_record_queue_depth",
            "Rows waiting for the usage and inference-table writer.",
            registry=self.registry,
            multiprocess_mode="livesum",
        )
        self.fallbacks = Counter(
            "servegate_fallbacks",
            "Requests passed on to the next served entity after a failure, by from and to entity.",
            ["endpoint", "from_entity", "to_entity"],
            registry=self.registry,
        )
        self.stream_errors = Counter(
            "servegate_stream_errors",
            "Streams that failed after content reached the client (ended with an error event).",
            ["endpoint", "provider"],
            registry=self.registry,
        )
        self.rate_limited = Counter(
            "servegate_rate_limited",
            "Requests refused by an AI Gateway rate limit.",
            ["endpoint"],
            registry=self.registry,
        )
        self.rate_limit_errors = Counter(
            "servegate_rate_limit_storage_errors",
            "Rate-limit storage failures (Redis down); the failure policy decided the request.",
            registry=self.registry,
        )
        self.in_flight = Gauge(
            "servegate_requests_in_flight",
            "Query requests being answered now.",
            registry=self.registry,
            multiprocess_mode="livesum",
        )
        self.reloads = Counter(
            "servegate_config_reloads",
            "Config reloads, by result (applied or failed).",
            ["result"],
            registry=self.registry,
        )
        self.endpoints_ready = Gauge(
            "servegate_endpoints",
            "Endpoints loaded, by readiness.",
            ["ready"],
            registry=self.registry,
            multiprocess_mode="livemax",
        )

    def observe(self, seen: Observation) -> None:
        key = (seen.endpoint, seen.entity, seen.provider, seen.task, seen.status, seen.stream)
        children = self._children.get(key)
        if children is None:  # label lookups take a lock each: resolve once per combination
            children = self._children[key] = self._resolve(seen)
        children.requests.inc()
        children.genai_duration.observe(seen.seconds)
        if children.upstream_errors is not None:
            children.upstream_errors.inc()
        usage = seen.usage
        if usage is not None:
            children.input_tokens.observe(usage.prompt_tokens)
            children.output_tokens.observe(usage.completion_tokens)
        if seen.upstream_seconds is not None:
            children.upstream_duration.observe(seen.upstream_seconds)
            children.overhead.observe(max(0.0, seen.seconds - seen.upstream_seconds))
        if seen.first_token_seconds is not None and seen.status == 200:
            stream = self._stream(seen)
            stream.time_to_first_token.observe(seen.first_token_seconds)
            if usage is not None and usage.completion_tokens > 1:
                rest = max(0.0, seen.seconds - seen.first_token_seconds)
                stream.time_per_output_token.observe(rest / (usage.completion_tokens - 1))

    def _genai(self, seen: Observation) -> tuple[str, str, str, str, str]:
        operation = _OPERATION.get(seen.task, "embeddings")
        return (operation, seen.provider, seen.model, seen.endpoint, seen.entity)

    def _resolve(self, seen: Observation) -> _Children:
        genai = self._genai(seen)
        status_class = f"{seen.status // 100}xx"
        error_type = "" if seen.status < 400 else str(seen.status)
        stream = "true" if seen.stream else "false"
        upstream_failed = seen.status >= 400 and seen.upstream_seconds is not None
        return _Children(
            self.requests.labels(seen.endpoint, seen.entity, seen.provider, seen.task,
                                 str(seen.status)),
            self.genai_duration.labels(*genai, stream, status_class, error_type),
            self.genai_tokens.labels(*genai, "input"),
            self.genai_tokens.labels(*genai, "output"),
            self.upstream_errors.labels(seen.endpoint, seen.entity, seen.provider, status_class)
            if upstream_failed
            else None,
            self.upstream_duration.labels(*genai),
            self.overhead.labels(seen.endpoint),
        )  # fmt: skip

    def _stream(self, seen: Observation) -> _StreamChildren:
        key = (seen.endpoint, seen.entity, seen.provider, seen.model)
        children = self._stream_children.get(key)
        if children is None:
            genai = self._genai(seen)
            children = self._stream_children[key] = _StreamChildren(
                self.time_to_first_token.labels(*genai),
                self.time_per_output_token.labels(*genai),
            )
        return children

    def requester(self, endpoint: str, requester: str) -> None:
        if self.requester_labels:
            self.requester_requests.labels(endpoint, requester).inc()

    def render(self) -> bytes:
        if self.registry is not None:
            return generate_latest(self.registry)
        everyone = CollectorRegistry()
        multiprocess.MultiProcessCollector(everyone)  # type: ignore[no-untyped-call]
        return generate_latest(everyone)
