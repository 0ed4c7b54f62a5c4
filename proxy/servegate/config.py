"""Manifests on disk → one immutable ``RuntimeConfig``, rebuilt and swapped whole on change.

Everything a request needs is prepared here, at load time: validated specs, resolved secrets,
one translator per served entity and the traffic split. A request reads
``holder.current`` once and keeps that object to the end, so a reload never changes a
request (or a stream) in flight; the next request sees the new config.

Reload keeps the last good version of each endpoint: if an edit makes an endpoint's manifest
invalid, or breaks the YAML of its file, the endpoint keeps serving what it served before,
and GET shows the problem. An endpoint whose manifest is invalid from the start is listed as
NOT_READY with the reason.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import orjson

from servegate.policy.guardrails.engine import Guardrails
from servegate.policy.limits import endpoint_rules
from servegate.providers.base import Provider
from servegate.providers.registry import build_provider
from servegate.records.rows import PayloadTable, served_entity_id
from servegate.routing.split import TrafficSplit
from servegate.secretstore import MissingSecret, SecretStore
from servegate.spec import (
    AiGatewayRateLimit,
    ExternalModel,
    ServingEndpointSpec,
    Task,
    redacted_dump,
)
from servegate.spec.manifest import (
    CONFIG_VERSION,
    CREATED_MS,
    UPDATED_MS,
    LoadedEndpoint,
    ManifestError,
    load_manifests,
)
from servegate.transport.credentials import CredentialRegistry

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class EntityRuntime:
    name: str
    model: ExternalModel
    provider: Provider | None
    problem: str | None = None


@dataclass(frozen=True, slots=True)
class EndpointRuntime:
    name: str
    spec: ServingEndpointSpec
    source: str
    entities: dict[str, EntityRuntime]
    split: TrafficSplit
    config_version: int
    created_ms: int
    updated_ms: int
    spec_digest: str
    problems: tuple[str, ...] = ()
    rate_limits: tuple[AiGatewayRateLimit, ...] = ()
    fallback: bool = False
    """``ai_gateway.fallback_config.enabled``, read once at load."""
    rejected_update: str | None = None
    """Why the newest version on disk is not served (the last good one is)."""
    guardrails: Guardrails | None = None
    usage_tracking: bool = False
    payload_table: PayloadTable | None = None
    """Where the inference table (``inference_table_config``) goes, when enabled."""
    entity_ids: dict[str, str] = field(default_factory=dict)
    """``served_entity_id`` per entity: the key usage and payload rows join on."""

    @property
    def ready(self) -> bool:
        return not self.problems

    @property
    def task(self) -> Task:
        return self.spec.task


@dataclass(frozen=True, slots=True)
class InvalidEndpoint:
    """A named manifest that never validated: listed as NOT_READY, never served."""

    name: str
    source: str
    errors: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class RuntimeConfig:
    endpoints: dict[str, EndpointRuntime] = field(default_factory=dict)
    invalid: dict[str, InvalidEndpoint] = field(default_factory=dict)
    errors: tuple[ManifestError, ...] = ()
    generation: int = 0


class ConfigSource:
    """Where the config comes from: manifest paths, the secrets directory, token sources."""

    def __init__(
        self,
        paths: Sequence[Path],
        secrets: SecretStore,
        credentials: CredentialRegistry,
        *,
        judge: str | None = None,
    ) -> None:
        self.paths = list(paths)
        self.secrets = secrets
        self.credentials = credentials
        self.judge = judge
        """The endpoint that judges safety and topic guardrails (None: such guardrails
        make their endpoint invalid)."""

    def load(self, previous: RuntimeConfig | None = None) -> RuntimeConfig:
        """Read every manifest and build the next config (blocking file I/O: run off-loop)."""
        result = load_manifests(self.paths)
        for warning in result.warnings:
            log.warning("manifest: %s", warning)
        now_ms = int(time.time() * 1000)
        prev = previous or RuntimeConfig()
        endpoints = {
            loaded.name: self._build(loaded, prev.endpoints.get(loaded.name), now_ms)
            for loaded in result.endpoints
        }
        invalid: dict[str, InvalidEndpoint] = {}
        broken_files = {_file_of(err.source) for err in result.errors}
        for err in result.errors:
            log.error("invalid manifest: %s", err)
            if err.name is None or err.name in endpoints:
                continue
            if err.name in prev.endpoints:  # keep the last good version, say why
                kept = prev.endpoints[err.name]
                endpoints[err.name] = replace(kept, rejected_update=str(err))
            else:
                entry = invalid.get(err.name)
                errors = (*entry.errors, str(err)) if entry else (str(err),)
                invalid[err.name] = InvalidEndpoint(err.name, err.source, errors)
        for name, kept in prev.endpoints.items():  # a whole file failed to parse
            if (
                name not in endpoints
                and name not in invalid
                and _file_of(kept.source) in broken_files
            ):
                endpoints[name] = replace(kept, rejected_update=f"{kept.source}: file is invalid")
        return RuntimeConfig(endpoints, invalid, tuple(result.errors), prev.generation + 1)

    def _build(
        self, loaded: LoadedEndpoint, previous: EndpointRuntime | None, now_ms: int
    ) -> EndpointRuntime:
        spec = loaded.manifest.spec
        entities: dict[str, EntityRuntime] = {}
        problems: list[str] = []
        for entity in spec.entities:
            if entity.external_model is None:
                continue
            runtime = self._entity(entity.name, entity.external_model)
            entities[entity.name] = runtime
            if runtime.problem:
                problems.append(f"served entity '{entity.name}': {runtime.problem}")
        digest = spec_digest(spec)
        history = _history(loaded)
        if history is not None:  # an API-created endpoint: its manifest keeps the count
            version, created, updated = history
        elif previous is None:
            version, created, updated = 1, now_ms, now_ms
        elif previous.spec_digest == digest:
            version, created, updated = (
                previous.config_version,
                previous.created_ms,
                previous.updated_ms,
            )
        else:
            version, created, updated = previous.config_version + 1, previous.created_ms, now_ms
        gateway = spec.ai_gateway
        guardrails = Guardrails.of(gateway.guardrails if gateway else None)
        if guardrails is not None and guardrails.needs_judge and self.judge is None:
            problems.append(
                "guardrails: safety and valid_topics need a judge endpoint; start the gateway "
                "with --guardrail-judge ENDPOINT (see README, Guardrails)"
            )
        tracking = gateway.usage_tracking_config if gateway else None
        return EndpointRuntime(
            name=loaded.name,
            spec=spec,
            source=loaded.source,
            entities=entities,
            split=TrafficSplit(spec.routes()),
            config_version=version,
            created_ms=created,
            updated_ms=updated,
            spec_digest=digest,
            problems=tuple(problems),
            rate_limits=endpoint_rules(spec),
            fallback=bool(
                spec.ai_gateway
                and spec.ai_gateway.fallback_config
                and spec.ai_gateway.fallback_config.enabled
            ),
            guardrails=guardrails,
            usage_tracking=bool(tracking and tracking.enabled),
            payload_table=PayloadTable.of(
                gateway.inference_table_config if gateway else None, loaded.name
            ),
            entity_ids={e: served_entity_id(loaded.name, e, digest) for e in entities},
        )

    def _entity(self, name: str, model: ExternalModel) -> EntityRuntime:
        secrets: dict[str, str] = {}
        try:
            for credential in model.credentials():
                if credential.ref is not None:
                    secrets[credential.field] = self.secrets.read(credential.ref)
                elif credential.plaintext is not None:
                    secrets[credential.field] = credential.plaintext
            provider = build_provider(model, secrets, self.credentials)
        except MissingSecret as exc:
            return EntityRuntime(name, model, None, str(exc))
        except ValueError as exc:
            return EntityRuntime(name, model, None, str(exc))
        return EntityRuntime(name, model, provider)


def _history(loaded: LoadedEndpoint) -> tuple[int, int, int] | None:
    """(config_version, created ms, updated ms) from the annotations the control plane
    writes (control/statedir.py); None for manifests without them."""
    notes = loaded.manifest.metadata.annotations or {}
    try:
        return (
            int(notes[CONFIG_VERSION]),
            int(notes[CREATED_MS]),
            int(notes[UPDATED_MS]),
        )
    except (KeyError, ValueError):
        return None


def spec_digest(spec: ServingEndpointSpec) -> str:
    """The identity of a config: equal digests serve the same (secrets not included)."""
    return hashlib.sha256(
        orjson.dumps(redacted_dump(spec), option=orjson.OPT_SORT_KEYS)
    ).hexdigest()


def _file_of(source: str) -> str:
    return source.rsplit("#", 1)[0]


class ConfigHolder:
    """The one mutable cell: ``current`` is replaced whole, never edited."""

    def __init__(self, source: ConfigSource, initial: RuntimeConfig) -> None:
        self.source = source
        self.current = initial
