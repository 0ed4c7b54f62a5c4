"""kopf wiring only: every handler is a few lines that call ``reconcile``.

One function handles create, update, resume and the periodic timer, so a restart, a
missed event or a hand-edited child all converge the same way.
"""

from __future__ import annotations

import datetime
from typing import Any

import kopf

from servegate_operator import peering, reconcile
from servegate_operator.runtime import RUNTIME

GROUP, VERSION, PLURAL = "servegate.io", "v1alpha1", "servingendpoints"


TIME_FORMAT = "%Y-%m-%dT%H:%M:%SZ"
"""Kubernetes' timestamps (RFC 3339, UTC, whole seconds), as conditions carry them."""


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime(TIME_FORMAT)


@kopf.on.resume(GROUP, VERSION, PLURAL)
@kopf.on.create(GROUP, VERSION, PLURAL)
@kopf.on.update(GROUP, VERSION, PLURAL)
@kopf.timer(
    GROUP,
    VERSION,
    PLURAL,
    interval=RUNTIME.settings.reconcile_interval_s,
    initial_delay=min(5.0, RUNTIME.settings.reconcile_interval_s),
)
def reconcile_endpoint(body: kopf.Body, patch: kopf.Patch, **_: Any) -> None:
    outcome = reconcile.reconcile(RUNTIME.kube(), dict(body), RUNTIME.settings, _now())
    RUNTIME.reconciles += 1
    patch.status.update(outcome.status)
    for kind, reason, message in outcome.events:
        kopf.event(body, type=kind, reason=reason, message=message)


FOLLOW_INTERVAL_S = 2.0
"""While its gateway rolls out, an endpoint is reconciled this often, so READY follows the
rollout within seconds rather than at the next periodic reconcile."""
FOLLOW_FOR_S = 600.0
"""For at most this long after the gateway became unavailable: a gateway that cannot start
(a bad image, no node for it) is then looked at every reconcile interval only."""


def following_rollout(
    status: kopf.Status, *, now: datetime.datetime | None = None, **_: Any
) -> bool:
    """The gateway is rolling out, or has no replica available, since less than
    ``FOLLOW_FOR_S``: no watch on Deployments needed (nor the RBAC to read them all).
    ``now`` (naive UTC) is for tests."""
    conditions = status.get("conditions") or []
    gateway = next((c for c in conditions if c.get("type") == "GatewayAvailable"), None)
    if gateway is None or gateway.get("status") != "False":
        return False
    try:
        since = datetime.datetime.strptime(gateway["lastTransitionTime"], TIME_FORMAT)
    except (KeyError, TypeError, ValueError):
        return True
    now = now or datetime.datetime.now(datetime.UTC).replace(tzinfo=None)
    age = now - since
    return age.total_seconds() < FOLLOW_FOR_S


@kopf.timer(
    GROUP, VERSION, PLURAL, id="follow_rollout", interval=FOLLOW_INTERVAL_S, when=following_rollout
)
def follow_rollout(body: kopf.Body, patch: kopf.Patch, **kwargs: Any) -> None:
    reconcile_endpoint(body=body, patch=patch, **kwargs)


@kopf.on.delete(GROUP, VERSION, PLURAL, optional=True)
def endpoint_deleted(namespace: str | None, **_: Any) -> None:
    """Owned config goes by garbage collection; the shared gateway drops this endpoint."""
    if namespace is not None:
        reconcile.apply_gateway(RUNTIME.kube(), namespace, RUNTIME.settings)


@kopf.on.login()
def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
    """The pod's ServiceAccount in a cluster, else KUBECONFIG as it is now (the kubernetes
    library caches KUBECONFIG at import; kopf's own readers do not)."""
    return kopf.login_with_service_account(**kwargs) or kopf.login_with_kubeconfig(**kwargs)


@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
    RUNTIME.configure_kopf(settings)


@kopf.on.startup()
def ensure_peering(**_: Any) -> None:
    """Before kopf looks for it: the peering object, without which every replica would wait."""
    if RUNTIME.peering is not None:
        peering.ensure_peering(RUNTIME.kube(), RUNTIME.peering, RUNTIME.namespaces)


@kopf.on.startup()
def sweep_review_bindings(**_: Any) -> None:
    """Before any reconcile: drop the review ClusterRoleBindings no gateway needs."""
    reconcile.startup_sweep(RUNTIME.kube(), RUNTIME.settings, RUNTIME.namespaces)


@kopf.on.probe(id="reconciles")
def reconciles(**_: Any) -> int:
    return RUNTIME.reconciles
