"""Where API-created endpoints are kept: the ``EndpointStore`` protocol and its errors.

The REST API (``ingress/control.py``) validates a write, has the auth decide (verb
``create``, ``update`` or ``delete``), moves plaintext credentials out of the spec
(``plaintext.py``), and then hands the result to a store. Two stores exist:

- :class:`servegate.control.statedir.LocalStore`: manifests in ``--state-dir`` that this
  gateway serves itself, so it reloads after each write;
- :class:`servegate.control.kubestore.KubernetesStore`: ServingEndpoint custom resources
  in the gateway's namespace (``--control-plane kubernetes``), which the operator renders
  into the ConfigMaps the gateway serves, some seconds later.

Either way the gateway serves a *copy* of what the store holds, and the copy may lag.
:class:`Stored` carries what is needed to tell whether it does: the digest the stored
version will have once served (``serves_as``), compared with the served endpoint's digest
(``pending.py``). A store reads everything in one go, so the spec, its change time and its
revision always belong to the same version.

Stores raise the platform's errors themselves (already exists, conflict, not found,
unavailable), because only they know what their backend's failures mean.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from servegate.auth.callers import AuthFileError
from servegate.control.plaintext import Extracted
from servegate.ingress.errors import GatewayError
from servegate.spec.manifest import CONFIG_VERSION, CREATED_BY, CREATED_MS, MANAGED_BY, UPDATED_MS


class ControlPlaneConfigError(AuthFileError):
    """The control plane cannot start as configured (``--control-plane kubernetes``
    without ``--auth kubernetes``, or beside ``--state-dir``). An ``AuthFileError``, so the
    CLI reports it as it reports a bad auth setup: one line, exit status 2."""


class AlreadyExists(GatewayError):
    status = 400
    error_code = "RESOURCE_ALREADY_EXISTS"


class Conflict(GatewayError):
    """Another write got there first, or the endpoint's last change is not served yet."""

    status = 409
    error_code = "RESOURCE_CONFLICT"


class StoreUnavailable(GatewayError):
    """The store cannot be reached or refuses the gateway itself. Nothing was written
    (or what was written has been undone): the client may simply try again."""

    status = 503
    error_code = "TEMPORARILY_UNAVAILABLE"

    def __init__(self, message: str, *, retry_after: int | None = 1) -> None:
        super().__init__(message, retry_after=retry_after)


@dataclass(frozen=True, slots=True)
class Stored:
    """One stored version of an endpoint."""

    name: str
    spec: dict[str, Any]
    """The spec as stored (secret references only, when the API wrote it)."""
    changed_ms: int
    """When this version was written (epoch ms): ``pending_config.start_time``."""
    created_ms: int
    """When the endpoint was created (epoch ms; 0 if unknown)."""
    revision: str
    """What a replace expects to still find (a resourceVersion; a file's identity)."""
    serves_as: str | None
    """The spec digest (``config.spec_digest``) the gateway will have once it serves this
    version; None when the spec is invalid (it will never serve)."""
    rejected: str | None = None
    """Why the platform refused this version, when it did (``config_update:
    UPDATE_FAILED``); the last good version keeps serving."""
    uid: str = ""
    """The object's identity in the store (a custom resource's ``metadata.uid``)."""
    raw: Mapping[str, Any] | None = field(default=None, repr=False, compare=False)
    """The store's own record as read (the custom resource), for its ``replace``."""


class EndpointStore(Protocol):
    """Keeps API-created endpoints. Every method may do I/O; all are async."""

    @property
    def reload_after_write(self) -> bool:
        """True when the gateway serves the store directly and should reload at once."""
        ...

    @property
    def authoritative(self) -> bool:
        """True when the store holds every endpoint of the gateway: one it does not hold
        does not exist (even while this process still serves it). False when the gateway
        also serves manifests of its own (``servegate serve PATH...``), which the API may
        read but not change."""
        ...

    async def manages(self, name: str) -> bool:
        """The store holds this endpoint (the API may change it)."""
        ...

    async def read(self, name: str) -> Stored | None:
        """The stored version, or None when the store does not hold the endpoint."""
        ...

    async def create(self, name: str, extracted: Extracted, creator: str) -> Stored:
        """Store a new endpoint and its credentials; ``AlreadyExists`` if the name is
        taken. On failure nothing is left behind that holds a credential."""
        ...

    async def replace(self, current: Stored, extracted: Extracted) -> Stored:
        """Store a new version of ``current``; ``Conflict`` if it changed meanwhile."""
        ...

    async def delete(self, name: str) -> None:
        """Remove the endpoint and its credentials; ``NotFound`` if it is not there."""
        ...


def first_history(creator: str) -> dict[str, str]:
    """The annotations of a newly created endpoint: version 1, created and updated now."""
    now = str(int(time.time() * 1000))
    return {
        MANAGED_BY: "api",
        CREATED_BY: creator,
        CONFIG_VERSION: "1",
        CREATED_MS: now,
        UPDATED_MS: now,
    }


def next_history(annotations: Mapping[str, str], *, changed: bool) -> dict[str, str]:
    """The annotations of a new version: ``config_version`` + 1 and updated now when the
    spec changed; the others kept as they are."""
    history = dict(annotations)
    if changed:
        try:
            version = int(history.get(CONFIG_VERSION, "1"))
        except ValueError:
            version = 1
        history[CONFIG_VERSION] = str(version + 1)
        history[UPDATED_MS] = str(int(time.time() * 1000))
    return history
