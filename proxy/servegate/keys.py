"""Every typed app and request key, in one place ("no singletons": state hangs off the app)."""

from __future__ import annotations

from dataclasses import dataclass

from aiohttp import web

from servegate.auth.callers import AuthHolder, Principal
from servegate.canonical.usage import Usage
from servegate.config import ConfigHolder
from servegate.control.statedir import StateDir
from servegate.control.store import EndpointStore
from servegate.policy.guardrails.judge import Judge
from servegate.policy.limits import RateLimiter
from servegate.records.metrics import Metrics
from servegate.records.recorder import Recorder
from servegate.transport.client import UpstreamClient


@dataclass
class AccessInfo:
    """What the access log and metrics learn about a query as it moves through the pipeline."""

    endpoint: str = "-"
    entity: str = "-"
    stream: bool = False
    usage: Usage | None = None
    started: float = 0.0
    """``perf_counter`` when the request arrived."""
    status: int | None = None
    """A stream's real outcome (its response says 200 even when it ended in an error)."""


config_holder = web.AppKey("config_holder", ConfigHolder)
auth_holder = web.AppKey("auth_holder", AuthHolder)
upstream_client = web.AppKey("upstream_client", UpstreamClient)
metrics = web.AppKey("metrics", Metrics)
rate_limiter = web.AppKey("rate_limiter", RateLimiter)
recorder = web.AppKey("recorder", Recorder)
state_dir = web.AppKey("state_dir", StateDir)
"""Set only with ``--state-dir``: where API-created endpoints live."""
endpoint_store: web.AppKey[EndpointStore] = web.AppKey("endpoint_store")
"""Where the REST API writes endpoints (``control/store.py``); unset: the API is read-only."""
judge = web.AppKey("judge", Judge)
"""Set only when ``--guardrail-judge`` names an endpoint."""

principal = web.RequestKey("principal", Principal)
request_id = web.RequestKey("request_id", str)
access = web.RequestKey("access", AccessInfo)
