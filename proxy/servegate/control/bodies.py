"""The platform's write bodies (``databricks-api.md`` §1) → ServingEndpoint specs.

Every write produces a whole new spec, validated with the one spec model, so the API can
never store what ``kubectl apply`` or ``servegate validate`` would refuse. What clients
really send is tolerated, as the platform tolerates it: ``config.name`` (the SDK's
required field), a top-level ``task`` (old MLflow), ``route_optimized: false`` (MLflow's
legacy path), traffic percentages as strings, and fields that do not apply to external
models (``email_notifications``, ``budget_policy_id`` …), which are dropped.

Errors are 400 ``INVALID_PARAMETER_VALUE`` naming the field path; values are never echoed
(a body may hold plaintext keys).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from servegate.ingress.errors import InvalidParameter
from servegate.spec import ServingEndpointSpec
from servegate.spec.manifest import ENDPOINT_NAME_RE, validation_errors

# Top-level create fields kept in the spec; the rest is accepted and dropped.
SPEC_FIELDS = ("config", "ai_gateway", "tags", "description", "rate_limits")
# Accepted, meaningless for an external-model endpoint.
IGNORED_FIELDS = frozenset(
    {
        "name",
        "task",
        "route_optimized",
        "budget_policy_id",
        "email_notifications",
        "telemetry_config",
        "uc_system_metrics_export_state",
        "usage_policy_id",
    }
)


@dataclass(frozen=True, slots=True)
class EndpointWrite:
    """A validated write: the endpoint's name and its whole new spec (as JSON data, with
    any plaintext credentials still in it: ``plaintext.py`` moves them out)."""

    name: str
    spec: dict[str, Any]


def create_body(body: object) -> EndpointWrite:
    data = _object(body, "The request body")
    name = data.get("name")
    if not isinstance(name, str) or not name:
        raise InvalidParameter("name: required, a string of letters, digits, '-' and '_'.")
    if not ENDPOINT_NAME_RE.fullmatch(name):
        raise InvalidParameter(
            f"name: '{name[:80]}' is not a valid endpoint name: use 1 to 63 letters, "
            "digits, '-' and '_'."
        )
    if data.get("route_optimized") is True:
        raise InvalidParameter("route_optimized: not supported for external-model endpoints.")
    unknown = sorted(k for k in data if k not in SPEC_FIELDS and k not in IGNORED_FIELDS)
    if unknown:
        raise InvalidParameter(f"{unknown[0]}: unknown field for a serving endpoint.")
    if "config" not in data:
        raise InvalidParameter(
            "config: required: an external-model endpoint needs its served_entities."
        )
    spec = {k: copy.deepcopy(data[k]) for k in SPEC_FIELDS if k in data}
    spec["config"] = _core_config(spec["config"], "config")
    return EndpointWrite(name, validate(spec))


def config_body(current: Mapping[str, Any], body: object) -> dict[str, Any]:
    """``PUT …/config``: the served entities and traffic config replaced."""
    config = _core_config(body, "The request body")
    spec = {**copy.deepcopy(dict(current)), "config": config}
    return validate(spec)


def ai_gateway_body(current: Mapping[str, Any], body: object) -> dict[str, Any]:
    """``PUT …/ai-gateway``: the whole ``ai_gateway`` block replaced."""
    gateway = _object(body, "The request body")
    spec = {**copy.deepcopy(dict(current)), "ai_gateway": copy.deepcopy(dict(gateway))}
    if not gateway:
        spec.pop("ai_gateway")
    return validate(spec)


def rate_limits_body(current: Mapping[str, Any], body: object) -> dict[str, Any]:
    """``PUT …/rate-limits`` (legacy): the top-level ``rate_limits`` replaced."""
    data = _object(body, "The request body")
    limits = data.get("rate_limits", [])
    if not isinstance(limits, list):
        raise InvalidParameter("rate_limits: must be a list.")
    spec = copy.deepcopy(dict(current))
    if limits:
        spec["rate_limits"] = copy.deepcopy(limits)
    else:
        spec.pop("rate_limits", None)
    return validate(spec)


def tags_body(current: Mapping[str, Any], body: object) -> dict[str, Any]:
    """``PATCH …/tags``: ``add_tags`` (set or replace by key), then ``delete_tags`` (keys)."""
    data = _object(body, "The request body")
    add, delete = data.get("add_tags") or [], data.get("delete_tags") or []
    if not isinstance(add, list) or not all(isinstance(t, dict) for t in add):
        raise InvalidParameter("add_tags: must be a list of {key, value} objects.")
    if not isinstance(delete, list) or not all(isinstance(k, str) for k in delete):
        raise InvalidParameter("delete_tags: must be a list of tag keys.")
    tags: dict[str, Any] = {t["key"]: t for t in current.get("tags") or [] if "key" in t}
    for index, tag in enumerate(add):
        if not isinstance(tag.get("key"), str):
            raise InvalidParameter(f"add_tags[{index}].key: required, a string.")
        tags[tag["key"]] = {k: tag[k] for k in ("key", "value") if k in tag}
    for key in delete:
        tags.pop(key, None)
    spec = {**copy.deepcopy(dict(current)), "tags": list(tags.values())}
    return validate(spec)


def validate(spec: dict[str, Any]) -> dict[str, Any]:
    """``spec`` if the spec model accepts it, else InvalidParameter naming the field."""
    try:
        ServingEndpointSpec.model_validate(spec)
    except ValidationError as exc:
        issues = validation_errors(exc)[:3]
        raise InvalidParameter(
            "Invalid endpoint configuration: "
            + "; ".join(f"{i.field or 'body'}: {i.message}" for i in issues)
        ) from None
    return spec


def _core_config(value: object, what: str) -> dict[str, Any]:
    """EndpointCoreConfigInput: ``name`` (redundant) and legacy custom-model keys go."""
    config = dict(_object(value, what))
    config.pop("name", None)
    if config.get("served_models"):
        raise InvalidParameter(
            "config.served_models: custom models are not served here; use served_entities "
            "with external_model."
        )
    config.pop("served_models", None)
    return copy.deepcopy(config)


def _object(value: object, what: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise InvalidParameter(f"{what} must be a JSON object.")
    return value
