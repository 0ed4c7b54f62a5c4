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


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


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
