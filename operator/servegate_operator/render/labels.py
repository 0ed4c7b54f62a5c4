"""The ``app.kubernetes.io/*`` labels every owned object carries."""

from __future__ import annotations

from servegate import __version__

MANAGED_BY = "servegate-operator"
PART_OF = "servegate"


def labels(component: str, *, endpoint: str | None = None) -> dict[str, str]:
    out = {
        "app.kubernetes.io/name": "servegate",
        "app.kubernetes.io/component": component,
        "app.kubernetes.io/part-of": PART_OF,
        "app.kubernetes.io/managed-by": MANAGED_BY,
        "app.kubernetes.io/version": __version__,
    }
    if endpoint is not None:
        out["servegate.io/endpoint"] = endpoint
    return out


def gateway_selector() -> dict[str, str]:
    return {"app.kubernetes.io/name": "servegate", "app.kubernetes.io/component": "gateway"}
