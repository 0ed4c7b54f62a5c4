"""Is a stored endpoint served yet? ``config_update: IN_PROGRESS`` and ``pending_config``.

The gateway answers from the config it has loaded, which is a copy of what the store holds
and can lag behind it: another worker wrote the state dir and this one's watcher has not
reloaded yet, or, in a cluster, the operator has not rendered the new ServingEndpoint yet
or kubelet has not refreshed the mounted ConfigMap. The platform reports that window as
``config_update: IN_PROGRESS`` with the new config under ``pending_config``, and refuses
another update until it closes; clients (``create_and_wait``, ``update_config_and_wait``)
poll for it.

The test is one comparison: the digest the stored version will have once served
(``Stored.serves_as``, computed by the store, which knows how its versions are turned into
what the gateway loads) against the digest of the endpoint this process serves. Equal
digests mean the same config serves, whatever the version counters say.
"""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

from servegate.config import EndpointRuntime, spec_digest
from servegate.control.store import Stored
from servegate.spec import ServingEndpointSpec, redacted_dump


def served_digest(spec: dict[str, Any]) -> str | None:
    """The digest a manifest with this spec has once loaded; None when it is invalid."""
    try:
        return spec_digest(ServingEndpointSpec.model_validate(spec))
    except (ValidationError, ValueError):
        return None


def pending_config(stored: Stored, served: EndpointRuntime | None) -> dict[str, Any] | None:
    """The stored config when this process does not serve it yet; None when it does, or
    when it never will (invalid, or refused by the platform: that is UPDATE_FAILED)."""
    if stored.serves_as is None or stored.rejected is not None:
        return None
    if served is not None and served.spec_digest == stored.serves_as:
        return None
    config = redacted_dump(ServingEndpointSpec.model_validate(stored.spec)).get("config", {})
    return {
        "served_entities": config.get("served_entities", []),
        "traffic_config": config.get("traffic_config", {"routes": []}),
        "config_version": (served.config_version + 1) if served else 1,
        "start_time": stored.changed_ms,
    }
