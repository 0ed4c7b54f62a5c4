"""Prometheus metrics: names, labels and the helpers that observe them.

Labels are endpoint, served entity, provider, task and status: bounded sets taken from the
config, never request content, principals or credentials. Each app owns its registry, so
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
_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)


@dataclass(frozen=True, slots=True)
class _Children:
    requests: Counter
    latency: Histogram
    prompt_tokens: Counter
    completion_tokens: Counter


class Metrics:
    def __init__(self) -> None:
        self.multiprocess = bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))
        self._children: dict[tuple[str, str, str, str, int, bool], _Children] = {}
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
        self.latency = Histogram(
            "servegate_request_duration_seconds",
            "Time from request to the last byte of the response.",
            ["endpoint", "served_entity", "task", "stream"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.tokens = Counter(
            "servegate_tokens",
            "Tokens reported by providers, by kind (prompt or completion).",
            ["endpoint", "served_entity", "kind"],
            registry=self.registry,
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

    def observe(
        self,
        *,
        endpoint: str,
        entity: str,
        provider: str,
        task: str,
        status: int,
        seconds: float,
        stream: bool,
        usage: Usage | None,
    ) -> None:
        key = (endpoint, entity, provider, task, status, stream)
        children = self._children.get(key)
        if children is None:  # label lookups take a lock each: resolve once per combination
            children = self._children[key] = _Children(
                self.requests.labels(endpoint, entity, provider, task, str(status)),
                self.latency.labels(endpoint, entity, task, "true" if stream else "false"),
                self.tokens.labels(endpoint, entity, "prompt"),
                self.tokens.labels(endpoint, entity, "completion"),
            )
        children.requests.inc()
        children.latency.observe(seconds)
        if usage is not None:
            children.prompt_tokens.inc(usage.prompt_tokens)
            children.completion_tokens.inc(usage.completion_tokens)

    def render(self) -> bytes:
        if self.registry is not None:
            return generate_latest(self.registry)
        everyone = CollectorRegistry()
        multiprocess.MultiProcessCollector(everyone)  # type: ignore[no-untyped-call]
        return generate_latest(everyone)
