"""The endpoint spec: entity and traffic rules, AI gateway, convenience views, redaction."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest
from pydantic import ValidationError

from servegate.spec import (
    PiiBehavior,
    Provider,
    RateLimitKey,
    ServingEndpointSpec,
    Task,
    parse_spec,
    redacted_dump,
    validation_errors,
)

CANARY = "sk-CANARY-123"
REF = "{{secrets/my_scope/openai_key}}"

# databricks-api.md §1.7, verbatim.
CANONICAL = json.loads(
    """{"name":"chat","config":{"served_entities":[{"name":"gpt-4o-mini","external_model":{"name":"gpt-4o-mini","provider":"openai",
 "task":"llm/v1/chat","openai_config":{"openai_api_key":"{{secrets/my_scope/openai_key}}"}}}],
 "traffic_config":{"routes":[{"served_model_name":"gpt-4o-mini","traffic_percentage":100}]}},
 "ai_gateway":{"usage_tracking_config":{"enabled":true},"rate_limits":[{"calls":100,"key":"user","renewal_period":"minute"}],
 "guardrails":{"input":{"safety":true,"pii":{"behavior":"BLOCK"}},"output":{"pii":{"behavior":"MASK"}}},
 "fallback_config":{"enabled":true}},
 "tags":[{"key":"team","value":"gen-ai"}]}"""
)


def entity(
    name: str | None = None, *, model: str = "gpt-4o-mini", task: str = "llm/v1/chat"
) -> dict[str, Any]:
    served: dict[str, Any] = {
        "external_model": {
            "name": model,
            "provider": "openai",
            "task": task,
            "openai_config": {"openai_api_key_plaintext": CANARY},
        }
    }
    if name is not None:
        served["name"] = name
    return served


def routes(**shares: Any) -> dict[str, Any]:
    return {
        "routes": [{"served_model_name": n, "traffic_percentage": p} for n, p in shares.items()]
    }


def spec_data(*entities: dict[str, Any], traffic: dict[str, Any] | None = None) -> dict[str, Any]:
    config: dict[str, Any] = {"served_entities": list(entities)}
    if traffic is not None:
        config["traffic_config"] = traffic
    return {"config": config}


def spec_issues(data: dict[str, Any]) -> list[tuple[str, str]]:
    with pytest.raises(ValidationError) as info:
        parse_spec(data)
    assert CANARY not in str(info.value)
    assert CANARY not in repr(info.value.errors(include_input=False))
    return [(issue.field, issue.message) for issue in validation_errors(info.value, prefix="spec")]


def test_canonical_body_validates_and_round_trips() -> None:
    spec = parse_spec(CANONICAL)
    assert spec.task is Task.CHAT
    assert spec.entities[0].external_model.provider is Provider.OPENAI
    assert spec.routes() == {"gpt-4o-mini": 100}
    gateway = spec.ai_gateway
    assert gateway is not None
    assert gateway.rate_limits is not None
    assert gateway.guardrails is not None
    assert gateway.rate_limits[0].key is RateLimitKey.USER
    assert gateway.guardrails.input is not None
    assert gateway.guardrails.input.pii is not None
    assert gateway.guardrails.input.pii.behavior is PiiBehavior.BLOCK

    dumped = redacted_dump(spec)
    expected = {k: v for k, v in copy.deepcopy(CANONICAL).items() if k != "name"}
    openai_config = expected["config"]["served_entities"][0]["external_model"]["openai_config"]
    openai_config.update(openai_api_type="openai", openai_api_base="https://api.openai.com/v1")
    assert dumped == expected
    assert json.loads(json.dumps(dumped)) == dumped
    assert parse_spec(dumped) == spec


def test_redacted_dump_removes_plaintext_and_keeps_references() -> None:
    data = spec_data(entity("a"), entity("b", model="gpt-4o"), traffic=routes(a=50, b=50))
    data["config"]["served_entities"][1]["external_model"]["openai_config"] = {
        "openai_api_key": REF
    }
    spec = parse_spec(data)
    dumped = redacted_dump(spec)
    text = json.dumps(dumped)
    assert CANARY not in text
    assert "****" not in text
    assert "_plaintext" not in text
    assert REF in text
    assert CANARY not in repr(spec)
    assert CANARY not in str(spec)
    # The secret is still there for the gateway to use.
    assert [(name, c.field, c.plaintext) for name, c in spec.credentials()] == [
        ("a", "openai_api_key", CANARY),
        ("b", "openai_api_key", None),
    ]


def test_single_entity_without_traffic_config_gets_100() -> None:
    spec = parse_spec(spec_data(entity()))
    assert spec.routes() == {"gpt-4o-mini": 100}
    assert redacted_dump(spec)["config"]["traffic_config"] == {
        "routes": [{"served_model_name": "gpt-4o-mini", "traffic_percentage": 100}]
    }


@pytest.mark.parametrize(
    ("model", "expected"),
    [
        ("gpt-4o:mini.x", "gpt-4o-mini-x"),
        ("claude-3.5-sonnet", "claude-3-5-sonnet"),
        ("anthropic.claude-3-haiku-20240307-v1:0", "anthropic-claude-3-haiku-20240307-v1-0"),
    ],
    ids=["colon-and-dot", "dots", "bedrock-id"],
)
def test_default_entity_name(model: str, expected: str) -> None:
    spec = parse_spec(spec_data(entity(model=model)))
    assert spec.entities[0].name == expected
    assert spec.routes() == {expected: 100}


@pytest.mark.parametrize(
    ("value", "expected"),
    [("90", 90), (90, 90), ("0", 0), (90.0, 90)],
    ids=["numeric-string", "int", "zero-string", "integral-float"],
)
def test_traffic_percentage_accepts(value: Any, expected: int) -> None:
    spec = parse_spec(
        spec_data(entity("a"), entity("b"), traffic=routes(a=value, b=str(100 - expected)))
    )
    assert spec.routes() == {"a": expected, "b": 100 - expected}
    assert redacted_dump(spec)["config"]["traffic_config"]["routes"][0]["traffic_percentage"] == (
        expected
    )


@pytest.mark.parametrize(
    "value",
    ["abc", "9.5", 9.5, True, "", " 90", "101", -1, None],
    ids=[
        "word",
        "decimal-string",
        "float",
        "bool",
        "empty",
        "space",
        "over-100",
        "negative",
        "null",
    ],
)
def test_traffic_percentage_rejects(value: Any) -> None:
    assert spec_issues(spec_data(entity("a"), traffic=routes(a=value))) == [
        (
            "spec.config.traffic_config.routes[0].traffic_percentage",
            "traffic_percentage must be an integer from 0 to 100",
        )
    ]


def test_unrouted_entity_gets_zero_percent() -> None:
    spec = parse_spec(spec_data(entity("a"), entity("b"), traffic=routes(a=100)))
    assert spec.routes() == {"a": 100, "b": 0}


def test_served_entity_name_alias_is_emitted_as_served_model_name() -> None:
    traffic = {"routes": [{"served_entity_name": "a", "traffic_percentage": 100}]}
    spec = parse_spec(spec_data(entity("a"), traffic=traffic))
    assert spec.routes() == {"a": 100}
    route = redacted_dump(spec)["config"]["traffic_config"]["routes"][0]
    assert route["served_model_name"] == "a"


def test_config_name_is_accepted_and_unknown_fields_round_trip() -> None:
    data = spec_data(entity("a"))
    data["config"]["name"] = "chat"
    data["route_optimized"] = False
    data["email_notifications"] = {"on_update_failure": ["a@b.c"]}
    data["config"]["served_entities"][0]["environment_vars"] = {"TOKEN": REF}
    dumped = redacted_dump(parse_spec(data))
    assert dumped["route_optimized"] is False
    assert dumped["email_notifications"] == {"on_update_failure": ["a@b.c"]}
    assert dumped["config"]["served_entities"][0]["environment_vars"] == {"TOKEN": REF}


def _with(data: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    """Set a dotted path (list indices as numbers) in a copy of `data`."""
    data = copy.deepcopy(data)
    *parents, last = path.split(".")
    node: Any = data
    for part in parents:
        node = node[int(part)] if part.isdigit() else node[part]
    node[int(last) if last.isdigit() else last] = value
    return data


ONE = spec_data(entity("a"))
TWO = spec_data(entity("a"), entity("b"), traffic=routes(a=50, b=50))

RULES: list[tuple[str, dict[str, Any], str, str]] = [
    (
        "sum-not-100",
        spec_data(entity("a"), entity("b"), traffic=routes(a=50, b=40)),
        "spec.config.traffic_config.routes",
        "traffic percentages must sum to 100, got 90",
    ),
    (
        "empty-routes",
        spec_data(entity("a"), traffic={"routes": []}),
        "spec.config.traffic_config.routes",
        "got 0",
    ),
    (
        "route-to-unknown-entity",
        spec_data(entity("a"), entity("b"), traffic=routes(a=50, c=50)),
        "spec.config.traffic_config.routes[1]",
        "route names served entity 'c', which does not exist",
    ),
    (
        "two-routes-one-entity",
        spec_data(
            entity("a"),
            entity("b"),
            traffic={
                "routes": [
                    {"served_model_name": "a", "traffic_percentage": 50},
                    {"served_entity_name": "a", "traffic_percentage": 50},
                ]
            },
        ),
        "spec.config.traffic_config.routes[1]",
        "served entity 'a' has more than one route",
    ),
    (
        "route-without-name",
        spec_data(entity("a"), traffic={"routes": [{"traffic_percentage": 100}]}),
        "spec.config.traffic_config.routes[0]",
        "a route needs served_model_name",
    ),
    (
        "route-names-disagree",
        spec_data(
            entity("a"),
            traffic={
                "routes": [
                    {"served_model_name": "a", "served_entity_name": "b", "traffic_percentage": 100}
                ]
            },
        ),
        "spec.config.traffic_config.routes[0]",
        "differ",
    ),
    (
        "two-entities-no-traffic",
        spec_data(entity("a"), entity("b")),
        "spec.config.traffic_config",
        "add traffic_config.routes",
    ),
    (
        "mixed-tasks",
        spec_data(
            entity("gpt-a"),
            entity("emb", task="llm/v1/embeddings"),
            traffic=routes(**{"gpt-a": 100}),
        ),
        "spec.config.served_entities[1].external_model.task",
        "all served entities of an endpoint must have the same task; "
        "gpt-a is llm/v1/chat, emb is llm/v1/embeddings",
    ),
    (
        "duplicate-entity-name",
        spec_data(entity("a"), entity("a"), traffic=routes(a=100)),
        "spec.config.served_entities[1].name",
        "duplicate served entity name 'a'",
    ),
    (
        "duplicate-default-name",
        spec_data(entity(model="m.1"), entity(model="m:1"), traffic=routes(**{"m-1": 100})),
        "spec.config.served_entities[1].name",
        "duplicate served entity name 'm-1'",
    ),
    (
        "bad-entity-name",
        spec_data(entity("a b")),
        "spec.config.served_entities[0].name",
        "may only contain letters, digits, '-' and '_'",
    ),
    (
        "bad-derived-name",
        spec_data(entity(model="org/model")),
        "spec.config.served_entities[0].name",
        "derived from external_model.name",
    ),
    (
        "no-external-model",
        spec_data(entity("a"), {"entity_name": "catalog.schema.model", "entity_version": "1"}),
        "spec.config.served_entities[1]",
        "servegate serves external models only; served_entities[1] has no external_model",
    ),
    (
        "no-entities",
        spec_data(),
        "spec.config.served_entities",
        "1 to 15 served entities, got 0",
    ),
    (
        "sixteen-entities",
        spec_data(*(entity(f"e{i}") for i in range(16)), traffic=routes(e0=100)),
        "spec.config.served_entities",
        "got 16",
    ),
    (
        "served-models",
        _with(ONE, "config.served_models", [{"model_name": "m", "model_version": "1"}]),
        "spec.config.served_models",
        "external models go in served_entities",
    ),
    (
        "unknown-provider",
        _with(ONE, "config.served_entities.0.external_model.provider", "azure-openai"),
        "spec.config.served_entities[0].external_model.provider",
        "unknown provider 'azure-openai'; allowed values: openai, anthropic, cohere, "
        "amazon-bedrock, google-cloud-vertex-ai, ai21labs, databricks-model-serving, custom, palm",
    ),
    (
        "unknown-task",
        _with(ONE, "config.served_entities.0.external_model.task", "llm/v1/rerank"),
        "spec.config.served_entities[0].external_model.task",
        "allowed values: llm/v1/chat, llm/v1/completions, llm/v1/embeddings",
    ),
    (
        "config-for-other-provider",
        _with(
            ONE,
            "config.served_entities.0.external_model.anthropic_config",
            {"anthropic_api_key": REF},
        ),
        "spec.config.served_entities[0].external_model.anthropic_config",
        "provider is openai, so only openai_config may be set, not anthropic_config",
    ),
    (
        "missing-provider-config",
        _with(ONE, "config.served_entities.0.external_model.openai_config", None),
        "spec.config.served_entities[0].external_model.openai_config",
        "provider openai requires openai_config",
    ),
    (
        "credential-pair",
        _with(
            ONE,
            "config.served_entities.0.external_model.openai_config.openai_api_key",
            REF,
        ),
        "spec.config.served_entities[0].external_model.openai_config",
        "exactly one of openai_api_key or openai_api_key_plaintext is required",
    ),
    (
        "raw-key-in-reference-field",
        _with(
            ONE,
            "config.served_entities.0.external_model.openai_config",
            {"openai_api_key": CANARY},
        ),
        "spec.config.served_entities[0].external_model.openai_config.openai_api_key",
        "{{secrets/<scope>/<key>}}",
    ),
    (
        "rate-limit-without-calls-or-tokens",
        {**ONE, "ai_gateway": {"rate_limits": [{"key": "user", "renewal_period": "minute"}]}},
        "spec.ai_gateway.rate_limits[0]",
        "a rate limit needs calls, tokens or both",
    ),
    (
        "rate-limit-principal-on-endpoint-key",
        {
            **ONE,
            "ai_gateway": {
                "rate_limits": [{"calls": 1, "principal": "a@b.c", "renewal_period": "minute"}]
            },
        },
        "spec.ai_gateway.rate_limits[0].principal",
        "principal only applies to key user, user_group or service_principal",
    ),
    (
        "rate-limit-negative",
        {**ONE, "ai_gateway": {"rate_limits": [{"calls": -1, "renewal_period": "minute"}]}},
        "spec.ai_gateway.rate_limits[0].calls",
        "greater than or equal to 0",
    ),
    (
        "rate-limit-bool",
        {**ONE, "ai_gateway": {"rate_limits": [{"tokens": True, "renewal_period": "minute"}]}},
        "spec.ai_gateway.rate_limits[0].tokens",
        "valid integer",
    ),
    (
        "rate-limit-hourly",
        {**ONE, "ai_gateway": {"rate_limits": [{"calls": 1, "renewal_period": "hour"}]}},
        "spec.ai_gateway.rate_limits[0].renewal_period",
        "'minute'",
    ),
    (
        "rate-limit-unknown-key",
        {
            **ONE,
            "ai_gateway": {"rate_limits": [{"calls": 1, "key": "ip", "renewal_period": "minute"}]},
        },
        "spec.ai_gateway.rate_limits[0].key",
        "'service_principal'",
    ),
    (
        "pii-unknown-behavior",
        {**ONE, "ai_gateway": {"guardrails": {"output": {"pii": {"behavior": "REDACT"}}}}},
        "spec.ai_gateway.guardrails.output.pii.behavior",
        "'NONE', 'BLOCK' or 'MASK'",
    ),
    (
        "inference-table-without-target",
        {**ONE, "ai_gateway": {"inference_table_config": {"enabled": True, "catalog_name": "c"}}},
        "spec.ai_gateway.inference_table_config",
        "requires schema_name",
    ),
    (
        "fallback-without-enabled",
        {**ONE, "ai_gateway": {"fallback_config": {}}},
        "spec.ai_gateway.fallback_config.enabled",
        "Field required",
    ),
    (
        "legacy-rate-limit-key",
        {**ONE, "rate_limits": [{"calls": 1, "key": "user_group", "renewal_period": "minute"}]},
        "spec.rate_limits[0].key",
        "'user' or 'endpoint'",
    ),
    (
        "tag-without-key",
        {**ONE, "tags": [{"value": "x"}]},
        "spec.tags[0].key",
        "Field required",
    ),
    (
        "config-not-a-mapping",
        {"config": [1]},
        "spec.config",
        "expected a mapping",
    ),
]


@pytest.mark.parametrize(
    ("data", "field", "phrase"),
    [case[1:] for case in RULES],
    ids=[case[0] for case in RULES],
)
def test_rule(data: dict[str, Any], field: str, phrase: str) -> None:
    found = spec_issues(data)
    assert [f for f, _ in found] == [field], found
    assert phrase in found[0][1]
    assert not found[0][1].startswith("Value error")


def test_valid_ai_gateway_shapes() -> None:
    data = {
        **TWO,
        "ai_gateway": {
            "rate_limits": [
                {
                    "tokens": 1000,
                    "key": "user_group",
                    "principal": "ml",
                    "renewal_period": "minute",
                },
                {"calls": 5, "key": "service_principal", "renewal_period": "minute"},
            ],
            "inference_table_config": {"enabled": False},
            "guardrails": {"input": {"invalid_keywords": ["x"], "valid_topics": ["y"]}},
        },
        "rate_limits": [{"calls": 3, "renewal_period": "minute"}],
        "description": "two models",
    }
    spec = parse_spec(data)
    assert isinstance(spec, ServingEndpointSpec)
    dumped = redacted_dump(spec)
    assert dumped["rate_limits"] == [{"calls": 3, "renewal_period": "minute", "key": "endpoint"}]
    assert dumped["ai_gateway"]["rate_limits"][1]["key"] == "service_principal"
    assert dumped["description"] == "two models"


def test_parse_spec_drops_top_level_name() -> None:
    spec = parse_spec({**ONE, "name": "chat"})
    assert "name" not in redacted_dump(spec)
