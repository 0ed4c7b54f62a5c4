"""Status as Kubernetes conventions want it: conditions (KEP-1623 shape) plus the
platform's ``state`` block, computed by pure functions from what reconcile observed.

``lastTransitionTime`` moves only when a condition's status flips, so watchers can trust it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

CONDITION_TYPES = ("ConfigValid", "SecretsResolved", "GatewayAvailable", "Ready")


@dataclass(frozen=True)
class Condition:
    type: str
    ok: bool
    reason: str
    message: str = ""


@dataclass(frozen=True)
class Observed:
    """What one reconcile found out, before it is turned into status."""

    generation: int
    config_valid: Condition
    secrets: Condition
    gateway: Condition
    task: str | None = None
    entities: Sequence[dict[str, Any]] = ()
    url: str | None = None


def ready_condition(observed: Observed) -> Condition:
    for cond in (observed.config_valid, observed.secrets, observed.gateway):
        if not cond.ok:
            return Condition("Ready", False, cond.reason, cond.message)
    return Condition("Ready", True, "EndpointReady", "The gateway serves this endpoint.")


def merge_conditions(
    previous: Sequence[dict[str, Any]], current: Sequence[Condition], generation: int, now: str
) -> list[dict[str, Any]]:
    by_type = {c.get("type"): c for c in previous}
    merged = []
    for cond in current:
        status = "True" if cond.ok else "False"
        before = by_type.get(cond.type)
        changed = before is None or before.get("status") != status
        merged.append(
            {
                "type": cond.type,
                "status": status,
                "reason": cond.reason,
                "message": cond.message,
                "observedGeneration": generation,
                "lastTransitionTime": now
                if changed or before is None
                else before["lastTransitionTime"],
            }
        )
    return merged


def render_status(observed: Observed, previous: dict[str, Any], now: str) -> dict[str, Any]:
    ready = ready_condition(observed)
    conditions = merge_conditions(
        previous.get("conditions") or [],
        [observed.config_valid, observed.secrets, observed.gateway, ready],
        observed.generation,
        now,
    )
    if not observed.config_valid.ok:
        config_update = "UPDATE_FAILED"
    elif not observed.gateway.ok and observed.gateway.reason == "RollingOut":
        config_update = "IN_PROGRESS"
    else:
        config_update = "NOT_UPDATING"
    return {
        "observedGeneration": observed.generation,
        "conditions": conditions,
        "state": {"ready": "READY" if ready.ok else "NOT_READY", "config_update": config_update},
        "url": observed.url,
        "task": observed.task,
        "entities": len(observed.entities),
        "served_entities": list(observed.entities),
    }


def transitions(previous: dict[str, Any], current: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(condition type, new status, message) for every condition whose status changed."""
    before = {c["type"]: c["status"] for c in previous.get("conditions") or []}
    return [
        (c["type"], c["status"], c["message"] or c["reason"])
        for c in current["conditions"]
        if before.get(c["type"]) != c["status"]
    ]
