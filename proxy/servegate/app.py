"""``create_app(settings)``: keys, cleanup contexts, middleware and routes; nothing else."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from aiohttp import web

from servegate import keys
from servegate.auth.kube import DEFAULT_AUDIENCE
from servegate.auth.setup import AuthMode, build_auth
from servegate.config import ConfigHolder, ConfigSource
from servegate.control.kubestore import kubernetes_store
from servegate.control.statedir import LocalStore, StateDir
from servegate.control.store import ControlPlaneConfigError
from servegate.ingress.body import DEFAULT_BODY_TIMEOUT_S, MAX_BODY_BYTES, body_timeout_key
from servegate.ingress.health import Drain, drain_key
from servegate.ingress.middleware import gateway_middleware
from servegate.ingress.routes import setup_routes
from servegate.pipeline import ask_endpoint
from servegate.policy.guardrails.judge import Judge
from servegate.policy.guardrails.judge import Style as JudgeStyle
from servegate.policy.limits import OnError, RateLimiter, TokenLimitMode
from servegate.records.logsink import LogSink
from servegate.records.metrics import Metrics
from servegate.records.postgres import PostgresSink
from servegate.records.recorder import Recorder
from servegate.records.writer import RecordWriter
from servegate.reload import publish_readiness, watcher_context
from servegate.secretstore import SecretStore
from servegate.streaming.relay import ActiveStreams, active_streams_key
from servegate.transport.client import MAX_RESPONSE_BYTES, Timeouts, UpstreamClient
from servegate.transport.credentials import DEFAULT_AUTHORITY_HOST, CredentialRegistry


@dataclass(frozen=True)
class GatewaySettings:
    """Everything the gateway is configured with; the CLI builds it, nothing else parses argv."""

    paths: tuple[Path, ...]
    secrets_dir: Path | None = None
    auth_file: Path | None = None
    auth: AuthMode = "file"
    """``kubernetes``: in-cluster callers' ServiceAccount tokens (TokenReview) and
    per-endpoint RBAC (SubjectAccessReview); the auth file's static tokens work beside them."""
    auth_audience: str = DEFAULT_AUDIENCE
    """The audience callers' projected tokens must be issued for (``--auth kubernetes``)."""
    auth_namespace: str | None = None
    """The namespace of SubjectAccessReviews; None: the pod's (or the kubeconfig's)."""
    kubeconfig: Path | None = None
    """The API server outside a pod (None: in-cluster, else $KUBECONFIG or ~/.kube/config)."""
    timeouts: Timeouts = field(default_factory=Timeouts)
    entra_authority_host: str = DEFAULT_AUTHORITY_HOST
    watch: bool = True
    redis_url: str | None = None
    """Shared rate-limit storage for several replicas; None keeps limits in memory."""
    rate_limit_failure: OnError = "open"
    token_limit_mode: TokenLimitMode = "cap"
    access_log: bool = False
    """One INFO line per request on ``servegate.access`` (off by default: it costs CPU)."""
    records_dsn: str | None = None
    """PostgreSQL for usage and inference-table rows; None writes them as JSON log lines."""
    guardrail_judge: str | None = None
    """The endpoint that judges ``safety`` and ``valid_topics`` guardrails."""
    guardrail_judge_style: JudgeStyle = "llama-guard"
    metrics_requester_labels: bool = False
    ca_bundle: Path | None = None
    """Extra CA certificates (PEM) trusted for upstream TLS, beside the system's."""
    max_upstream_response: int = MAX_RESPONSE_BYTES
    """The most a provider may send as one answer (a unary body, or one stream event)."""
    upstream_connections_per_host: int = 0
    """A cap on connections to one provider host and port (0: none)."""
    state_dir: Path | None = None
    """Where endpoints created through the REST API are stored (None: the API is read-only)."""
    control_plane: Literal["kubernetes"] | None = None
    """``kubernetes``: the REST API writes ServingEndpoint resources in the auth namespace
    (needs ``auth="kubernetes"``; excludes ``state_dir``)."""
    manage_group: str = "admins"
    """With an auth file, the group whose members may create, change and delete endpoints."""

    # Client connections and shutdown (server.py, ingress/health.py, ingress/body.py).
    client_body_timeout: float = DEFAULT_BODY_TIMEOUT_S
    """Seconds the whole request body may take to arrive; then 408."""
    keepalive_timeout: float = 75.0
    """Seconds an idle keep-alive client connection is kept open."""
    drain_delay: float = 0.0
    """After SIGTERM: seconds /readyz fails while new connections are still accepted."""
    grace_period: float = 30.0
    """After SIGTERM: seconds until requests still in flight are cut off."""

    # TLS on the gateway's own port (server.py: ServerTLS).
    tls_cert: Path | None = None
    """PEM certificate chain (leaf first): the port serves HTTPS only. Needs ``tls_key``."""
    tls_key: Path | None = None
    """The certificate's unencrypted PEM private key. Both files are reloaded when they change."""


async def _upstream_client_ctx(app: web.Application) -> AsyncIterator[None]:
    await app[keys.upstream_client].start()
    yield
    await app[keys.upstream_client].close()
    await app[keys.rate_limiter].close()
    await app[keys.auth_holder].close()


async def _record_writer_ctx(app: web.Application) -> AsyncIterator[None]:
    """Started after the config loads; closed (flushed, bounded) after requests finish."""
    recorder = app[keys.recorder]
    await recorder.writer.start()
    recorder.config_loaded(None, app[keys.config_holder].current)
    yield
    await recorder.writer.close(timeout=5.0)


def create_app(settings: GatewaySettings) -> web.Application:
    """Build the gateway. Loads the config (blocking) so a bad auth file (or a missing
    Kubernetes configuration with ``--auth kubernetes``) fails here, early."""
    auth = build_auth(
        settings.auth,
        settings.auth_file,
        audience=settings.auth_audience,
        namespace=settings.auth_namespace,
        kubeconfig=settings.kubeconfig,
        manage_group=settings.manage_group,
    )
    if settings.control_plane is not None and settings.state_dir is not None:
        raise ControlPlaneConfigError("--state-dir and --control-plane exclude each other")
    paths, secrets_dir = settings.paths, settings.secrets_dir
    state: StateDir | None = None
    if settings.state_dir is not None:  # API-created endpoints, served beside the PATHs
        secrets_dir = secrets_dir or settings.state_dir / "secrets"
        state = StateDir(settings.state_dir, secrets_dir)
        paths = (*paths, state.endpoints)
    source = ConfigSource(
        paths,
        SecretStore(secrets_dir),
        CredentialRegistry(settings.entra_authority_host),
        judge=settings.guardrail_judge,
    )
    app = web.Application(middlewares=[gateway_middleware], client_max_size=MAX_BODY_BYTES)
    app[keys.auth_holder] = auth
    if state is not None:
        app[keys.state_dir] = state
        app[keys.endpoint_store] = LocalStore(state)
    elif settings.control_plane == "kubernetes":
        app[keys.endpoint_store] = kubernetes_store(auth)
    app[keys.config_holder] = ConfigHolder(source, source.load())
    metrics = app[keys.metrics] = Metrics()
    metrics.requester_labels = settings.metrics_requester_labels
    sink = PostgresSink(settings.records_dsn) if settings.records_dsn else LogSink()
    app[keys.recorder] = Recorder(
        RecordWriter(
            sink,
            on_written=metrics.records_written.labels("rows").inc,
            on_dropped=lambda reason, n: metrics.records_dropped.labels(reason).inc(n),
        ),
        metrics,
    )
    if settings.guardrail_judge is not None:
        app[keys.judge] = Judge(
            ask_endpoint(app, settings.guardrail_judge), style=settings.guardrail_judge_style
        )
    app[keys.upstream_client] = UpstreamClient(
        settings.timeouts,
        ca_bundle=settings.ca_bundle,
        max_response_bytes=settings.max_upstream_response,
        pool_per_host=settings.upstream_connections_per_host,
    )
    app[keys.rate_limiter] = RateLimiter(
        settings.redis_url,
        on_error=settings.rate_limit_failure,
        token_mode=settings.token_limit_mode,
        on_storage_error=app[keys.metrics].rate_limit_errors.inc,
    )
    publish_readiness(app)
    app.cleanup_ctx.append(_upstream_client_ctx)
    app.cleanup_ctx.append(_record_writer_ctx)
    if settings.watch:
        watched = [*paths]
        watched += [p for p in (secrets_dir, settings.auth_file) if p is not None]
        app.cleanup_ctx.append(watcher_context(watched))
    # Client connections and shutdown: the drain state and the requests in flight (counted
    # by the middleware), the relayed streams, the body read's time limit.
    app[drain_key] = Drain()
    app[active_streams_key] = ActiveStreams()
    app[body_timeout_key] = settings.client_body_timeout
    setup_routes(app)
    return app
