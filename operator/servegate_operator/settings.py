"""What the operator renders for each namespace's gateway, read once from the environment.

The Helm chart sets these variables on the operator's Deployment. Everything has a safe
default, so ``servegate operator`` also runs from a laptop against any cluster.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from servegate import __version__

DEFAULT_IMAGE = f"ghcr.io/servegate/servegate:{__version__}"
DEFAULT_RESOURCES: dict[str, Any] = {
    "requests": {"cpu": "100m", "memory": "128Mi"},
    "limits": {"memory": "512Mi"},
}


_SECRET_NAME = re.compile(
    r"(?=.{1,253}$)[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*"
)
"""A Secret's (or a ConfigMap's) name: a DNS subdomain (RFC 1123)."""
_DATA_KEY = re.compile(r"(?=.{1,253}$)\.?[-_a-zA-Z0-9][-._a-zA-Z0-9]*")
"""A key of a Secret's or a ConfigMap's data (never ``.``, ``..`` nor ``..``-prefixed)."""
_ENV_NAME = re.compile(r"[-._a-zA-Z][-._a-zA-Z0-9]*")
"""An environment variable name, as Kubernetes accepts it in a container's ``env``."""
GATEWAY_OWN_ENV_PREFIX = "SERVEGATE_"
"""The gateway's own settings (``servegate serve`` reads ``SERVEGATE_*``): they come from
typed values (``records_dsn_secret``, ``ca_bundle``, ``redis_url``, ...), never from
``env``, so that a plain value cannot bypass them (a DSN with its password, say)."""
OPERATOR_ENV = ("PYTHONUNBUFFERED", "HOME")
"""Variables the operator sets in every gateway container itself."""

CaBundleSource = Literal["configMap", "secret"]


@dataclass(frozen=True)
class SecretKey:
    """One key of a Secret of the same name in each endpoint namespace."""

    name: str
    key: str


@dataclass(frozen=True)
class CaBundle:
    """A PEM file of CA certificates: one key of a ConfigMap or a Secret of the same name in
    each endpoint namespace."""

    source: CaBundleSource
    name: str
    key: str


AuthMode = Literal["file", "kubernetes"]
AUTH_MODES: tuple[AuthMode, ...] = ("file", "kubernetes")
ControlPlane = Literal["kubernetes"]
CONTROL_PLANES: tuple[ControlPlane, ...] = ("kubernetes",)


@dataclass(frozen=True)
class GatewayDefaults:
    image: str = DEFAULT_IMAGE
    image_pull_policy: str = "IfNotPresent"
    replicas: int = 2
    resources: Mapping[str, Any] = field(default_factory=lambda: dict(DEFAULT_RESOURCES))
    service_type: str = "ClusterIP"
    service_annotations: Mapping[str, str] = field(default_factory=dict)
    pod_annotations: Mapping[str, str] = field(default_factory=dict)
    hpa_max_replicas: int = 0
    """0 disables the HorizontalPodAutoscaler; otherwise it scales replicas..max on CPU."""
    hpa_cpu_utilization: int = 75
    pdb_min_available: int = 1
    auth_secret: str | None = None
    """A Secret holding ``auth.yaml`` (the gateway's --auth-file). None with ``auth_mode``
    ``file``: in-cluster callers are not authenticated (the gateway runs with
    --insecure-no-auth: restrict it with a NetworkPolicy)."""
    auth_mode: AuthMode = "file"
    """``kubernetes``: the gateway checks callers' projected ServiceAccount tokens with
    TokenReviews and authorizes queries with SubjectAccessReviews (``--auth kubernetes``);
    it then runs as the ServiceAccount ``servegate-gateway``, bound to the review
    ClusterRole. ``auth_secret`` tokens keep working beside it."""
    auth_audience: str = "servegate"
    """The audience callers' projected tokens must be issued for (``--auth-audience``)."""
    reviewer_cluster_role: str = "servegate-gateway-reviews"
    """The chart's ClusterRole granting ``create`` on tokenreviews and
    subjectaccessreviews, bound to each gateway's ServiceAccount."""
    control_plane: ControlPlane | None = None
    """``kubernetes``: the gateway's REST API creates, updates and deletes ServingEndpoints
    (and their ``<name>-credentials`` Secrets) in its namespace (``--control-plane
    kubernetes``); its ServiceAccount is then bound, in that namespace only, to
    ``control_plane_cluster_role`` by a RoleBinding. Needs ``auth_mode`` ``kubernetes``."""
    control_plane_cluster_role: str = "servegate-gateway-control-plane"
    """The chart's ClusterRole granting what ``--control-plane kubernetes`` writes with
    (``servegate.control.kubestore.REQUIRED_RULES``), bound per namespace."""
    run_as_user: int = 10001
    security_context: Mapping[str, Any] = field(default_factory=dict)
    """Merged over the container's secure defaults (non-root, read-only root filesystem,
    no privilege escalation, no capabilities, seccomp RuntimeDefault)."""
    pod_security_context: Mapping[str, Any] = field(default_factory=dict)
    """Merged over the pod's defaults (runAsNonRoot, fsGroup, seccomp RuntimeDefault)."""
    workers: int = 1
    """Gateway worker processes per pod (``--workers``): one per CPU the pod may use."""
    redis_url: str | None = None
    """Shared rate-limit storage for the gateway's replicas (SERVEGATE_REDIS_URL in the pod)."""
    tls_secret: str | None = None
    """A ``kubernetes.io/tls`` Secret (keys ``tls.crt`` and ``tls.key``) in each endpoint
    namespace: the gateway serves HTTPS with it (``--tls-cert``/``--tls-key``), reloading
    it when kubelet refreshes the mount, and its Service exposes port 443 ``https``."""
    env: Mapping[str, str] = field(default_factory=dict)
    """More environment variables of the gateway container, in order (an egress proxy:
    ``HTTPS_PROXY``, ``NO_PROXY``, ...). Plain values: no ``SERVEGATE_*`` name (see
    ``GATEWAY_OWN_ENV_PREFIX``), nor one the operator sets (``OPERATOR_ENV``)."""
    records_dsn_secret: SecretKey | None = None
    """The Secret key holding the records database's PostgreSQL DSN: the container's
    SERVEGATE_RECORDS_DSN comes from it (``secretKeyRef``, not optional), so the DSN and
    its password appear in no object the operator writes."""
    ca_bundle: CaBundle | None = None
    """Extra CA certificates (PEM) the gateway trusts for provider TLS, beside the system's
    (a private CA, a TLS-inspecting egress proxy): the key is mounted read-only (not
    optional) and named by SERVEGATE_CA_BUNDLE (``--ca-bundle``)."""

    def __post_init__(self) -> None:
        if self.control_plane is not None and self.auth_mode != "kubernetes":
            raise ValueError("control_plane 'kubernetes' needs auth_mode 'kubernetes'")
        if self.tls_secret is not None and not _SECRET_NAME.fullmatch(self.tls_secret):
            raise ValueError(
                f"SERVEGATE_GATEWAY_TLS_SECRET must be a Secret name (a DNS subdomain): "
                f"{self.tls_secret!r}"
            )
        _check_env(self.env)
        if self.records_dsn_secret is not None:
            _check_source(
                "SERVEGATE_GATEWAY_RECORDS_DSN_SECRET",
                "SERVEGATE_GATEWAY_RECORDS_DSN_KEY",
                self.records_dsn_secret.name,
                self.records_dsn_secret.key,
            )
        if self.ca_bundle is not None:
            source = "CONFIG_MAP" if self.ca_bundle.source == "configMap" else "SECRET"
            _check_source(
                f"SERVEGATE_GATEWAY_CA_BUNDLE_{source}",
                "SERVEGATE_GATEWAY_CA_BUNDLE_KEY",
                self.ca_bundle.name,
                self.ca_bundle.key,
            )


def _check_env(env: Mapping[str, str]) -> None:
    for name, value in env.items():
        if not isinstance(name, str) or not _ENV_NAME.fullmatch(name):
            raise ValueError(
                f"SERVEGATE_GATEWAY_ENV: {name!r} is not an environment variable name "
                f"(letters, digits, '_', '-' and '.', not starting with a digit)"
            )
        if name.startswith(GATEWAY_OWN_ENV_PREFIX):
            raise ValueError(
                f"SERVEGATE_GATEWAY_ENV: {name}: names starting with {GATEWAY_OWN_ENV_PREFIX} "
                "are the gateway's own settings, which come from their typed values "
                "(gateway.records.dsnSecret, gateway.caBundle, gateway.redisUrl, ...)"
            )
        if name in OPERATOR_ENV:
            raise ValueError(f"SERVEGATE_GATEWAY_ENV: {name} is set by the operator")
        if not isinstance(value, str):
            raise ValueError(f"SERVEGATE_GATEWAY_ENV: the value of {name} must be a string")


def _check_source(name_var: str, key_var: str, name: str, key: str) -> None:
    if not _SECRET_NAME.fullmatch(name):
        raise ValueError(f"{name_var} must be a name (a DNS subdomain): {name!r}")
    if not _DATA_KEY.fullmatch(key):
        raise ValueError(
            f"{key_var} must be a data key (letters, digits, '-', '_' and '.', not "
            f"starting with '..'): {key!r}"
        )


@dataclass(frozen=True)
class OperatorSettings:
    gateway: GatewayDefaults = field(default_factory=GatewayDefaults)
    reconcile_interval_s: float = 60.0


def _json_env(env: Mapping[str, str], name: str, default: Any) -> Any:
    raw = env.get(name)
    if not raw:
        return default
    try:
        return json.loads(raw)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{name} must be JSON: {exc}") from None


def _auth_mode(value: str) -> AuthMode:
    """A typo must not turn authentication off: anything but the two modes is an error."""
    if value not in AUTH_MODES:
        raise ValueError(
            f"SERVEGATE_GATEWAY_AUTH must be one of {', '.join(AUTH_MODES)}: {value!r}"
        )
    return value


def _control_plane(value: str, auth_mode: AuthMode) -> ControlPlane | None:
    """Empty: off. The gateway refuses ``--control-plane kubernetes`` without ``--auth
    kubernetes``, so rendering it would only crash every gateway: refuse it here."""
    if not value:
        return None
    if value not in CONTROL_PLANES:
        raise ValueError(
            f"SERVEGATE_GATEWAY_CONTROL_PLANE must be empty or one of "
            f"{', '.join(CONTROL_PLANES)}: {value!r}"
        )
    if auth_mode != "kubernetes":
        raise ValueError(
            "SERVEGATE_GATEWAY_CONTROL_PLANE=kubernetes needs SERVEGATE_GATEWAY_AUTH=kubernetes: "
            "the gateway authorizes REST API writes with SubjectAccessReviews"
        )
    return "kubernetes"


def _env_list(env: Mapping[str, str]) -> dict[str, str]:
    """SERVEGATE_GATEWAY_ENV: a JSON list of ``{"name": ..., "value": ...}`` (the chart's
    ``gateway.env``), in order; a name listed twice is an error, not a silent override."""
    items = _json_env(env, "SERVEGATE_GATEWAY_ENV", [])
    if not isinstance(items, list):
        raise ValueError("SERVEGATE_GATEWAY_ENV must be a JSON list of {name, value} objects")
    out: dict[str, str] = {}
    for item in items:
        if not isinstance(item, dict) or sorted(item) != ["name", "value"]:
            raise ValueError(
                f"SERVEGATE_GATEWAY_ENV: each item must be {{name, value}}, not {item!r}"
            )
        name = item["name"]
        if name in out:
            raise ValueError(f"SERVEGATE_GATEWAY_ENV lists {name} twice")
        out[name] = item["value"]
    return out


def _records_dsn_secret(env: Mapping[str, str]) -> SecretKey | None:
    name = env.get("SERVEGATE_GATEWAY_RECORDS_DSN_SECRET")
    if not name:
        return None
    return SecretKey(name, env.get("SERVEGATE_GATEWAY_RECORDS_DSN_KEY") or "dsn")


def _ca_bundle(env: Mapping[str, str]) -> CaBundle | None:
    config_map = env.get("SERVEGATE_GATEWAY_CA_BUNDLE_CONFIG_MAP")
    secret = env.get("SERVEGATE_GATEWAY_CA_BUNDLE_SECRET")
    key = env.get("SERVEGATE_GATEWAY_CA_BUNDLE_KEY") or "ca.crt"
    if config_map and secret:
        raise ValueError(
            "SERVEGATE_GATEWAY_CA_BUNDLE_CONFIG_MAP and SERVEGATE_GATEWAY_CA_BUNDLE_SECRET "
            "are both set: the CA bundle comes from one ConfigMap or one Secret"
        )
    if config_map:
        return CaBundle("configMap", config_map, key)
    if secret:
        return CaBundle("secret", secret, key)
    return None


def settings_from_env(env: Mapping[str, str] | None = None) -> OperatorSettings:
    env = os.environ if env is None else env
    base = GatewayDefaults()
    auth_mode = _auth_mode(env.get("SERVEGATE_GATEWAY_AUTH") or base.auth_mode)
    gateway = GatewayDefaults(
        image=env.get("SERVEGATE_GATEWAY_IMAGE", base.image),
        image_pull_policy=env.get("SERVEGATE_GATEWAY_IMAGE_PULL_POLICY", base.image_pull_policy),
        replicas=int(env.get("SERVEGATE_GATEWAY_REPLICAS", base.replicas)),
        resources=_json_env(env, "SERVEGATE_GATEWAY_RESOURCES", base.resources),
        service_type=env.get("SERVEGATE_GATEWAY_SERVICE_TYPE", base.service_type),
        service_annotations=_json_env(env, "SERVEGATE_GATEWAY_SERVICE_ANNOTATIONS", {}),
        pod_annotations=_json_env(env, "SERVEGATE_GATEWAY_POD_ANNOTATIONS", {}),
        hpa_max_replicas=int(env.get("SERVEGATE_GATEWAY_HPA_MAX_REPLICAS", 0)),
        hpa_cpu_utilization=int(env.get("SERVEGATE_GATEWAY_HPA_CPU", base.hpa_cpu_utilization)),
        pdb_min_available=int(env.get("SERVEGATE_GATEWAY_PDB_MIN_AVAILABLE", 1)),
        auth_secret=env.get("SERVEGATE_GATEWAY_AUTH_SECRET") or None,
        auth_mode=auth_mode,
        auth_audience=env.get("SERVEGATE_GATEWAY_AUTH_AUDIENCE") or base.auth_audience,
        reviewer_cluster_role=env.get("SERVEGATE_GATEWAY_REVIEWER_CLUSTER_ROLE")
        or base.reviewer_cluster_role,
        control_plane=_control_plane(env.get("SERVEGATE_GATEWAY_CONTROL_PLANE", ""), auth_mode),
        control_plane_cluster_role=env.get("SERVEGATE_GATEWAY_CONTROL_PLANE_CLUSTER_ROLE")
        or base.control_plane_cluster_role,
        redis_url=env.get("SERVEGATE_GATEWAY_REDIS_URL") or None,
        tls_secret=env.get("SERVEGATE_GATEWAY_TLS_SECRET") or None,
        env=_env_list(env),
        records_dsn_secret=_records_dsn_secret(env),
        ca_bundle=_ca_bundle(env),
        workers=int(env.get("SERVEGATE_GATEWAY_WORKERS", 1)),
        security_context=_json_env(env, "SERVEGATE_GATEWAY_SECURITY_CONTEXT", {}),
        pod_security_context=_json_env(env, "SERVEGATE_GATEWAY_POD_SECURITY_CONTEXT", {}),
    )
    interval = float(env.get("SERVEGATE_RECONCILE_INTERVAL", 60))
    return OperatorSettings(gateway=gateway, reconcile_interval_s=interval)
