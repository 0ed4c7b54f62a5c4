"""One endpoint → its ConfigMap (the manifest the gateway reads) and its plaintext Secret.

Config is spread one ConfigMap per endpoint, each holding one key ``<endpoint>.yaml``:
a single object per namespace would grow toward the ~1 MiB object limit as endpoints are
added, while one endpoint's manifest is a few KiB. Each ConfigMap is owned by its
ServingEndpoint, so deleting the endpoint deletes its config through garbage collection.

The ConfigMap holds exactly the document ``servegate serve`` takes, with references only:
every ``*_plaintext`` credential is moved into an operator-owned Secret and replaced by a
``{{secrets/<that secret>/<key>}}`` reference, so no plaintext ever reaches a ConfigMap.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import yaml

from servegate.spec import API_VERSION, KIND, ServingEndpointSpec, redacted_dump
from servegate.spec.secrets import SecretRef
from servegate_operator.naming import config_map_name, plaintext_secret_name
from servegate_operator.render.labels import labels


@dataclass(frozen=True)
class RenderedEndpoint:
    name: str
    config_map: dict[str, Any]
    plaintext_secret: dict[str, Any] | None
    refs: tuple[SecretRef, ...]
    """Every secret the gateway must mount for this endpoint (plaintext ones included)."""
    moved_plaintext: tuple[str, ...] = field(default=())
    """``entity.field`` of each plaintext credential moved into the owned Secret."""


def render_endpoint(name: str, namespace: str, spec: ServingEndpointSpec) -> RenderedEndpoint:
    document = redacted_dump(spec)
    entities = {e["name"]: e for e in document["config"]["served_entities"]}
    refs: list[SecretRef] = []
    plaintext: dict[str, str] = {}
    scope = plaintext_secret_name(name)
    for entity_name, credential in spec.credentials():
        if credential.ref is not None:
            refs.append(credential.ref)
            continue
        key = f"{entity_name}.{credential.field}"
        plaintext[key] = credential.plaintext or ""
        ref = SecretRef(scope, key)
        refs.append(ref)
        _set_reference(entities[entity_name], credential.field, str(ref))
    manifest = {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "metadata": {"name": name},
        "spec": document,
    }
    config_map = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": config_map_name(name),
            "namespace": namespace,
            "labels": labels("endpoint-config", endpoint=name),
        },
        "data": {f"{name}.yaml": yaml.safe_dump(manifest, sort_keys=False)},
    }
    secret = None
    if plaintext:
        secret = {
            "apiVersion": "v1",
            "kind": "Secret",
            "type": "Opaque",
            "metadata": {
                "name": scope,
                "namespace": namespace,
                "labels": labels("endpoint-plaintext", endpoint=name),
            },
            "stringData": plaintext,
        }
    unique_refs = tuple(dict.fromkeys(refs))
    return RenderedEndpoint(name, config_map, secret, unique_refs, tuple(plaintext))


def _set_reference(entity: dict[str, Any], field_path: str, reference: str) -> None:
    """Put ``reference`` where the plaintext was: ``<provider>_config.<field>`` (dotted)."""
    external = entity["external_model"]
    config_key = next(
        k for k in external if k.endswith("_config") and isinstance(external[k], dict)
    )
    target: dict[str, Any] = external[config_key]
    *parents, leaf = field_path.split(".")
    for parent in parents:
        target = target.setdefault(parent, {})
    target[leaf] = reference
