"""The kopf peering object(s) the operator's replicas coordinate through, made to exist.

kopf keeps an operator paused until it has seen its peering object, and an operator given
``--peering NAME`` whose object is missing stays paused for good, without a word. The
object is only a name (kopf writes each replica's keep-alive into its status), so the
operator applies it at start: an install is whole without it (``kubectl apply -f
deploy/crds/ -f deploy/operator/`` carries no object of a kind its own CRDs define, which a
new cluster may not serve yet), and a peering object deleted by hand comes back at the
next start. The Helm chart also installs it, so ``helm uninstall`` removes it.
"""

from __future__ import annotations

import logging
from collections.abc import Collection
from typing import Any

from kubernetes.client.exceptions import ApiException

from servegate_operator.kube import Kube

log = logging.getLogger(__name__)


def peering_objects(name: str, namespaces: Collection[str]) -> list[dict[str, Any]]:
    """A ClusterKopfPeering for a cluster-wide operator, else a KopfPeering per namespace
    (kopf's own choice of kind for each)."""
    if not namespaces:
        return [
            {"apiVersion": "kopf.dev/v1", "kind": "ClusterKopfPeering", "metadata": {"name": name}}
        ]
    return [
        {
            "apiVersion": "kopf.dev/v1",
            "kind": "KopfPeering",
            "metadata": {"name": name, "namespace": namespace},
        }
        for namespace in sorted(namespaces)
    ]


def ensure_peering(k: Kube, name: str, namespaces: Collection[str]) -> None:
    """Apply the peering object(s). A refusal is logged, not raised: the operator still
    starts (the object may exist, only this write refused), and kopf would say nothing of
    a missing one, so this warning is the one word of it."""
    for obj in peering_objects(name, namespaces):
        where = obj["metadata"].get("namespace", "cluster-wide")
        try:
            k.apply(obj)
        except ApiException as exc:
            hint = " (are deploy/crds/ applied?)" if exc.status == 404 else ""
            log.warning(
                "could not apply the %s %r (%s): %s %s%s; without it this operator stays paused",
                obj["kind"],
                name,
                where,
                exc.status,
                exc.reason,
                hint,
            )
