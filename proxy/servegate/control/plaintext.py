"""Move literal credentials out of a spec before it is stored anywhere.

A create or update body may carry ``openai_api_key_plaintext: sk-…``. The platform stores
that value encrypted and never echoes it. Here every such field becomes a secret
reference, ``openai_api_key: "{{secrets/<endpoint>-credentials/<entity>.<path>}}"``, and
the value goes to the endpoint's own secret scope: files under the secrets directory
locally, a Secret owned by the ServingEndpoint in a cluster. No plaintext ever reaches a
manifest, a custom resource, a GET or a log line.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

from servegate.spec.endpoint import default_entity_name
from servegate.spec.secrets import PLAINTEXT_SUFFIX, SecretRef, parse_secret_ref


def scope_for(endpoint: str) -> str:
    """The secret scope that holds an API-created endpoint's credentials."""
    return f"{endpoint}-credentials"


@dataclass(frozen=True, slots=True)
class Extracted:
    """A spec with references only, and the values they point to (key → value)."""

    spec: dict[str, Any]
    scope: str
    secrets: dict[str, str] = field(default_factory=dict)

    def referenced_keys(self) -> set[str]:
        """Every key of ``scope`` the spec refers to (new or kept from before)."""
        return referenced_keys(self.spec, self.scope)


def referenced_keys(spec: dict[str, Any], scope: str) -> set[str]:
    """Every key of ``scope`` that ``spec`` refers to."""
    return {ref.key for ref in _refs(spec) if ref.scope == scope}


def extract(endpoint: str, spec: dict[str, Any]) -> Extracted:
    """Replace each ``X_plaintext`` under a served entity's ``external_model`` by ``X``, a
    reference into the endpoint's scope. ``spec`` itself is not changed."""
    scope = scope_for(endpoint)
    out = copy.deepcopy(spec)
    secrets: dict[str, str] = {}
    for entity in out.get("config", {}).get("served_entities") or []:
        model = entity.get("external_model") if isinstance(entity, dict) else None
        if not isinstance(model, dict):
            continue
        name = str(entity.get("name") or default_entity_name(str(model.get("name", ""))))
        _move(model, name, scope, secrets, path=())
    return Extracted(out, scope, secrets)


def _move(
    node: dict[str, Any], entity: str, scope: str, secrets: dict[str, str], path: tuple[str, ...]
) -> None:
    for key in list(node):
        value = node[key]
        if isinstance(value, dict):
            _move(value, entity, scope, secrets, (*path, key))
        elif key.endswith(PLAINTEXT_SUFFIX) and isinstance(value, str) and value:
            field_name = key.removesuffix(PLAINTEXT_SUFFIX)
            secret_key = ".".join((entity, *path, field_name))
            secrets[secret_key] = value
            del node[key]
            node[field_name] = str(SecretRef(scope, secret_key))


def _refs(value: object) -> list[SecretRef]:
    if isinstance(value, str):
        ref = parse_secret_ref(value)
        return [ref] if ref is not None else []
    if isinstance(value, dict):
        return [r for item in value.values() for r in _refs(item)]
    if isinstance(value, list):
        return [r for item in value for r in _refs(item)]
    return []
