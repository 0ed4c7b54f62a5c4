"""The generated ServingEndpoint CRD: committed, valid, structural, and in step with pydantic.

No API server runs here, so each thing it would do is done by a library instead:
- the CRD object itself: `kubernetes_validate` (the apiextensions.k8s.io/v1 JSON schema);
- the structural-schema rules: `structural_violations` below;
- a custom resource against the CRD's schema: `jsonschema`, after `to_jsonschema` (below)
  translates the Kubernetes extensions and `prune_nulls` drops nulls as the server does;
- the CEL rules: `cel-python`, plus the two Kubernetes CEL library functions it lacks
  (`sum()` from the Kubernetes list library, `replace()` from cel-go's strings extension).
  cel-python does not type-check, so `undeclared_fields` checks that every field a rule
  names exists in the schema, as the server's compiler would.
Every object is also given to the pydantic model, so both sides must agree.
"""

from __future__ import annotations

import copy
import functools
import json
import re
import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import celpy
import jsonschema
import kubernetes_validate
import pytest
import yaml
from celpy import celtypes
from pydantic import BaseModel, ConfigDict, ValidationError

from servegate.spec import (
    AnthropicConfig,
    OpenAIConfig,
    ServingEndpointManifest,
    parse_secret_ref,
)
from servegate.spec import schema as schema_module
from servegate.spec.schema import (
    CRD_HEADER,
    SECRET_REF_PATTERN,
    crd_manifest,
    crd_schema,
    crd_yaml,
    print_crd,
    structural,
)

REPO = Path(__file__).resolve().parents[2]
CRD_DIR = REPO / "deploy" / "crds"
CRD_FILE = CRD_DIR / "servingendpoints.servegate.io.yaml"
KEY_REF = "{{secrets/openai/api_key}}"
PRESERVE = "x-kubernetes-preserve-unknown-fields"
INT_OR_STRING = "x-kubernetes-int-or-string"


@functools.cache
def schema() -> dict[str, Any]:
    return crd_schema()


# --- the committed file and the CRD object ---------------------------------------------


def test_committed_crd_is_current() -> None:
    assert CRD_FILE.read_text(encoding="utf-8") == crd_yaml(), (
        "deploy/crds is stale: run `servegate crd > deploy/crds/servingendpoints.servegate.io.yaml`"
    )


def test_crd_yaml_is_the_manifest_with_a_header(capsys: pytest.CaptureFixture[str]) -> None:
    text = crd_yaml()
    assert text.startswith(CRD_HEADER)
    assert "do not edit" in CRD_HEADER
    assert yaml.safe_load(text) == crd_manifest()
    assert "&id" not in text, "shared sub-objects became YAML anchors"
    print_crd()
    assert capsys.readouterr().out == text


@pytest.mark.parametrize("version", ["1.30", kubernetes_validate.latest_version()])
def test_crd_is_a_valid_apiextensions_v1_object(version: str) -> None:
    kubernetes_validate.validate(crd_manifest(), version, strict=True)


def test_crd_names_version_and_columns() -> None:
    spec = crd_manifest()["spec"]
    assert spec["group"] == "servegate.io"
    assert spec["scope"] == "Namespaced"
    assert spec["names"] == {
        "kind": "ServingEndpoint",
        "listKind": "ServingEndpointList",
        "plural": "servingendpoints",
        "singular": "servingendpoint",
        "shortNames": ["sep"],
        "categories": ["servegate"],
    }
    (version,) = spec["versions"]
    assert (version["name"], version["served"], version["storage"]) == ("v1alpha1", True, True)
    assert version["subresources"] == {"status": {}}
    columns = {
        column["name"].upper(): (column["jsonPath"], column["type"])
        for column in version["additionalPrinterColumns"]
    }
    assert columns == {
        "READY": (".status.state.ready", "string"),
        "TASK": (".status.task", "string"),
        "ENTITIES": (".status.entities", "integer"),
        "URL": (".status.url", "string"),
        "AGE": (".metadata.creationTimestamp", "date"),
    }


@pytest.mark.parametrize("folder", ["examples", "deploy/operator"])
def test_kubectl_parses_every_manifest_offline(tmp_path: Path, folder: str) -> None:
    """Every example and the plain install parse as kubectl reads them (no server: see
    below), one object per document, each named."""
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not installed")
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "KUBECONFIG": str(tmp_path / "none")}
    directory = REPO / folder
    args = [kubectl, "annotate", "--local", "-f", str(directory), "servegate.io/parsed=yes"]
    names = subprocess.run(
        [*args, "-o", "name"], env=env, capture_output=True, text=True, timeout=30, check=True
    ).stdout.split()
    documents = [
        doc
        for path in sorted(directory.glob("*.yaml"))
        for doc in yaml.safe_load_all(path.read_text())
        if doc
    ]
    assert len(names) == len(documents)
    kinds = {doc["kind"].lower() for doc in documents}
    assert {name.split("/")[0].split(".")[0] for name in names} == kinds


def test_kubectl_parses_the_crd_directory_offline(tmp_path: Path) -> None:
    # `kubectl apply/create --dry-run=client` still ask a server for discovery (verified:
    # "unable to recognize ... connection refused"); `annotate --local` parses and prints
    # the objects without one, which is what is wanted here.
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not installed")
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "KUBECONFIG": str(tmp_path / "none")}
    args = [kubectl, "annotate", "--local", "-f", str(CRD_DIR), "servegate.io/parsed=yes"]
    names = subprocess.run(
        [*args, "-o", "name"], env=env, capture_output=True, text=True, timeout=30, check=True
    )
    assert names.stdout.split() == [
        "customresourcedefinition.apiextensions.k8s.io/clusterkopfpeerings.kopf.dev",
        "customresourcedefinition.apiextensions.k8s.io/kopfpeerings.kopf.dev",
        "customresourcedefinition.apiextensions.k8s.io/servingendpoints.servegate.io",
    ]
    ours = CRD_DIR / "servingendpoints.servegate.io.yaml"
    single = [kubectl, "annotate", "--local", "-f", str(ours), "servegate.io/parsed=yes"]
    parsed = json.loads(
        subprocess.run(
            [*single, "-o", "json"], env=env, capture_output=True, text=True, timeout=30, check=True
        ).stdout
    )
    assert parsed["metadata"].pop("annotations") == {"servegate.io/parsed": "yes"}
    assert parsed == crd_manifest()


# --- structural schema ---------------------------------------------------------------------

_JUNCTORS = ("allOf", "anyOf", "oneOf", "not")
_VALUE_VALIDATIONS = frozenset(
    {
        "enum",
        "pattern",
        "format",
        "minimum",
        "maximum",
        "exclusiveMinimum",
        "exclusiveMaximum",
        "multipleOf",
        "minLength",
        "maxLength",
        "minItems",
        "maxItems",
        "uniqueItems",
        "minProperties",
        "maxProperties",
        "required",
        "properties",
        "items",
        *_JUNCTORS,
    }
)


def structural_violations(node: dict[str, Any], path: str = "", *, root: bool = True) -> list[str]:
    """What the API server's structural-schema check would reject, as `path: problem`.

    Every node has a `type` (or is int-or-string, or keeps unknown fields); there is no
    `$ref`; `properties` and `additionalProperties` exclude each other and the latter is a
    schema; inside `allOf`/`anyOf`/`oneOf`/`not` only value validations appear; the root's
    `metadata` may only constrain `name` and `generateName`.
    """
    found: list[str] = []
    where = path or "<root>"
    if "$ref" in node:
        found.append(f"{where}: $ref")
    if not node.get("type") and not (node.get(INT_OR_STRING) or node.get(PRESERVE)):
        found.append(f"{where}: no type")
    if node.get(INT_OR_STRING) and "type" in node:
        found.append(f"{where}: int-or-string with a type")
    if "properties" in node and "additionalProperties" in node:
        found.append(f"{where}: properties and additionalProperties")
    if isinstance(node.get("additionalProperties"), bool):
        found.append(f"{where}: additionalProperties is not a schema")
    for junctor in _JUNCTORS:
        if junctor in node:
            branches = node[junctor] if isinstance(node[junctor], list) else [node[junctor]]
            for branch in branches:
                found.extend(_junctor_violations(branch, f"{where}.{junctor}"))
    for name, sub in node.get("properties", {}).items():
        child = f"{path}.{name}" if path else name
        if root and name == "metadata":
            extra = set(sub) - {"type", "properties"} or set(sub.get("properties", {})) - {
                "name",
                "generateName",
            }
            if sub.get("type") != "object" or extra:
                found.append("metadata: may only be an object constraining name/generateName")
        found.extend(structural_violations(sub, child, root=False))
    if isinstance(node.get("items"), dict):
        found.extend(structural_violations(node["items"], f"{path}[]", root=False))
    if isinstance(node.get("additionalProperties"), dict):
        found.extend(structural_violations(node["additionalProperties"], f"{path}{{}}", root=False))
    return found


def _junctor_violations(branch: dict[str, Any], where: str) -> list[str]:
    found = [f"{where}: {key} inside a junctor" for key in branch if key not in _VALUE_VALIDATIONS]
    subs = list(branch.get("properties", {}).values())
    if isinstance(branch.get("items"), dict):
        subs.append(branch["items"])
    for junctor in _JUNCTORS:
        if junctor in branch:
            subs.extend(branch[junctor] if isinstance(branch[junctor], list) else [branch[junctor]])
    for sub in subs:
        found.extend(_junctor_violations(sub, where))
    return found


def test_crd_schema_is_structural() -> None:
    assert structural_violations(schema()) == []
    assert "$ref" not in json.dumps(schema()) and "$defs" not in json.dumps(schema())
    assert "nullable" not in json.dumps(schema())


@pytest.mark.parametrize(
    ("bad", "problem"),
    [
        ({"type": "object", "properties": {"a": {"description": "x"}}}, "a: no type"),
        ({"type": "object", "properties": {"a": {"$ref": "#/x", "type": "string"}}}, "a: $ref"),
        ({"type": "string", "anyOf": [{"type": "string"}]}, "<root>.anyOf: type inside"),
        (
            {"type": "object", "properties": {"metadata": {"type": "object", "required": ["x"]}}},
            "metadata: may only",
        ),
        ({"type": "object", "additionalProperties": True}, "not a schema"),
    ],
)
def test_the_structural_checker_catches(bad: dict[str, Any], problem: str) -> None:
    assert any(problem in violation for violation in structural_violations(bad))


# --- the converter --------------------------------------------------------------------------


class _Leaf(BaseModel):
    """A leaf."""

    model_config = ConfigDict(extra="allow")
    kind: str = "x"


class _Sample(BaseModel):
    model_config = ConfigDict(extra="forbid")
    leaf: _Leaf | None = None
    named: _Leaf = _Leaf()
    labels: dict[str, str] = {}
    count: int | None = None


def test_structural_conversion_rules() -> None:
    raw = _Sample.model_json_schema()
    converted = structural(raw, raw["$defs"])
    assert converted == {
        "type": "object",
        "properties": {
            "leaf": {
                "type": "object",
                PRESERVE: True,
                "description": "A leaf.",
                "properties": {"kind": {"type": "string"}},
            },
            "named": {
                "type": "object",
                PRESERVE: True,
                "description": "A leaf.",
                "properties": {"kind": {"type": "string"}},
            },
            "labels": {"type": "object", "additionalProperties": {"type": "string"}},
            "count": {"type": "integer"},
        },
    }
    assert structural({"const": "minute", "type": "string"}, {}) == {
        "type": "string",
        "enum": ["minute"],
    }
    assert structural({"type": "integer", "ge": 0, "le": 100}, {}) == {
        "type": "integer",
        "minimum": 0,
        "maximum": 100,
    }


@pytest.mark.parametrize(
    ("bad", "error"),
    [
        ({"anyOf": [{"type": "integer"}, {"type": "string"}]}, "anyOf"),
        ({"type": "string", "format": "uri"}, "keyword 'format'"),
        ({"description": "untyped"}, "without a type"),
        ({"$ref": "#/$defs/Loop"}, "recursive model 'Loop'"),
    ],
)
def test_structural_refuses_what_it_cannot_express(bad: dict[str, Any], error: str) -> None:
    loop = {"type": "object", "properties": {"next": {"$ref": "#/$defs/Loop"}}}
    with pytest.raises(ValueError, match=re.escape(error)):
        structural(bad, {"Loop": loop})


class _Unused(BaseModel):
    field: str = ""


@pytest.mark.parametrize(
    ("table", "entry", "error"),
    [
        ("_PROPERTY_PATCHES", ((AnthropicConfig, "anthropic_key"), {"maxLength": 1}), "no field"),
        ("_PROPERTY_REPLACEMENTS", ((AnthropicConfig, "api_base"), {"type": "string"}), "no field"),
        ("_RULES", (_Unused, []), "models not part of the spec: _Unused"),
    ],
)
def test_rule_tables_fail_loudly_when_the_models_change(
    monkeypatch: pytest.MonkeyPatch, table: str, entry: tuple[Any, Any], error: str
) -> None:
    monkeypatch.setattr(schema_module, table, {**getattr(schema_module, table), entry[0]: entry[1]})
    with pytest.raises((KeyError, ValueError), match=error):
        crd_schema()


def test_a_conditional_credential_pair_needs_its_condition(monkeypatch: pytest.MonkeyPatch) -> None:
    conditions = dict(schema_module._CONDITIONAL_PAIRS)
    del conditions[OpenAIConfig, "openai_api_key"]
    monkeypatch.setattr(schema_module, "_CONDITIONAL_PAIRS", conditions)
    with pytest.raises(ValueError, match=re.escape("OpenAIConfig.openai_api_key: say when")):
        crd_schema()


@pytest.mark.parametrize(
    "value",
    [
        "{{secrets/openai/api_key}}",
        "{{secrets/my.scope/key-1}}",
        "{{secrets/.hidden/key.}}",
        "{{secrets/./key}}",
        "{{secrets/a..b/key}}",
        "{{secrets/scope/key}} ",
        "{{secrets/scope}}",
        "{{ secrets/scope/key }}",
        "sk-live-123",
        "{{secrets/sco pe/key}}",
    ],
)
def test_secret_ref_pattern_matches_the_parser(value: str) -> None:
    assert bool(re.fullmatch(SECRET_REF_PATTERN, value)) == (parse_secret_ref(value) is not None)


# --- custom resources against the schema (jsonschema + CEL) ---------------------------------


def to_jsonschema(node: dict[str, Any]) -> dict[str, Any]:
    """Translate a Kubernetes structural schema into plain JSON Schema.

    - `x-kubernetes-int-or-string: true` becomes `type: [integer, string]`;
    - an object with `properties` and without `x-kubernetes-preserve-unknown-fields` gets
      `additionalProperties: false`: kubectl's default `--validate=strict` makes the server
      reject unknown fields there (it would otherwise prune them);
    - other `x-kubernetes-*` keys are dropped: CEL rules are checked by `cel_violations`.
    The schema has no `nullable`: `prune_nulls` removes nulls first, as the server does.
    """
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key == "properties":
            out[key] = {name: to_jsonschema(sub) for name, sub in value.items()}
        elif key in ("items", "additionalProperties"):
            out[key] = to_jsonschema(value)
        elif key == INT_OR_STRING:
            out["type"] = ["integer", "string"]
        elif not key.startswith("x-kubernetes-"):
            out[key] = value
    if "properties" in node and not node.get(PRESERVE):
        out["additionalProperties"] = False
    return out


def prune_nulls(value: Any, node: dict[str, Any] | None) -> Any:
    """Drop nulls of fields the schema knows and does not mark nullable, as the API server
    does (`PruneNonNullableNullsWithoutDefaults`) before it validates a custom resource."""
    if isinstance(value, dict):
        out = {}
        for key, item in value.items():
            sub = _child(node, key)
            if item is None and sub is not None and not sub.get("nullable"):
                continue
            out[key] = prune_nulls(item, sub)
        return out
    if isinstance(value, list):
        items = node.get("items") if node else None
        return [prune_nulls(item, items) for item in value]
    return value


def _child(node: dict[str, Any] | None, key: str) -> dict[str, Any] | None:
    if node is None:
        return None
    if key in node.get("properties", {}):
        sub: dict[str, Any] = node["properties"][key]
        return sub
    extra = node.get("additionalProperties")
    return extra if isinstance(extra, dict) else None


def _cel_sum(values: celtypes.ListType) -> celtypes.IntType:
    return celtypes.IntType(sum(values))


def _cel_replace(text: celtypes.StringType, old: str, new: str) -> celtypes.StringType:
    return celtypes.StringType(text.replace(old, new))


_CEL = celpy.Environment()
_KUBERNETES_FUNCTIONS = {"sum": _cel_sum, "replace": _cel_replace}


@functools.cache
def _program(rule: str) -> celpy.Runner:
    return _CEL.program(_CEL.compile(rule), functions=_KUBERNETES_FUNCTIONS)


def _rules(node: dict[str, Any]) -> list[dict[str, str]]:
    rules: list[dict[str, str]] = node.get("x-kubernetes-validations", [])
    return rules


def cel_violations(node: dict[str, Any], value: Any) -> list[str]:
    """The messages of the rules `value` breaks, each rule run on the value it sits on.

    A rule that fails to evaluate counts as broken (the server rejects then too), with
    the error appended so that a test expecting the message alone notices.
    """
    found: list[str] = []
    for rule in _rules(node):
        try:
            holds = _program(rule["rule"]).evaluate({"self": celpy.json_to_cel(value)})
        except celpy.CELEvalError as exc:
            found.append(f"{rule['message']} [evaluation error: {exc.args[0]}]")
            continue
        if holds is not True and holds != celtypes.BoolType(True):
            found.append(rule["message"])
    if isinstance(value, dict):
        for key, item in value.items():
            sub = _child(node, key)
            if sub is not None and item is not None:
                found.extend(cel_violations(sub, item))
    elif isinstance(value, list) and isinstance(node.get("items"), dict):
        for item in value:
            found.extend(cel_violations(node["items"], item))
    return found


def schema_violations(doc: dict[str, Any]) -> list[str]:
    """Everything the API server would refuse about `doc`, as messages."""
    pruned = prune_nulls(copy.deepcopy(doc), schema())
    validator = jsonschema.Draft202012Validator(to_jsonschema(schema()))
    found = [
        f"{'.'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(pruned)
    ]
    return found + cel_violations(schema(), pruned)


def pydantic_accepts(doc: dict[str, Any]) -> bool:
    try:
        ServingEndpointManifest.model_validate(doc)
    except ValidationError:
        return False
    return True


def _fields_named(rule: str) -> Iterator[tuple[str, list[str]]]:
    """(variable, field path) for each `var.a.b` in a rule, method calls excluded."""
    for match in re.finditer(r"\b([a-z]\w*)((?:\.[a-z_]\w*)+)(\(?)", rule):
        var, chain, call = match.groups()
        fields = chain.strip(".").split(".")
        if call:
            fields = fields[:-1]
        if fields:
            yield var, fields


def undeclared_fields(node: dict[str, Any], path: str = "") -> list[str]:
    """Fields that rules name but the schema does not declare (a compile error on the server).

    `self` is the node; a macro variable (`list.all(v, ...)`) is an item of that list, and
    `self.metadata.name`/`generateName` are always declared at the root.
    """
    found: list[str] = []
    for rule in _rules(node):
        text = rule["rule"]
        variables: dict[str, dict[str, Any]] = {"self": node}
        binding = r"\b(self(?:\.\w+)*)\.(?:all|exists|exists_one|map|filter)\((\w+),"
        for match in re.finditer(binding, text):
            target = _resolve(node, match.group(1).split(".")[1:])
            if target is not None and "items" in target:
                variables[match.group(2)] = target["items"]
        for var, fields in _fields_named(re.sub(r"'[^']*'", "''", text)):
            if var not in variables:
                continue
            if (
                not path
                and fields[:1] == ["metadata"]
                and fields[1:] in (["name"], ["generateName"])
            ):
                continue
            if _resolve(variables[var], fields) is None:
                found.append(f"{path or '<root>'}: {var}.{'.'.join(fields)} in {text!r}")
    for name, sub in node.get("properties", {}).items():
        found.extend(undeclared_fields(sub, f"{path}.{name}"))
    if isinstance(node.get("items"), dict):
        found.extend(undeclared_fields(node["items"], f"{path}[]"))
    return found


def _resolve(node: dict[str, Any], fields: list[str]) -> dict[str, Any] | None:
    current: dict[str, Any] | None = node
    for field in fields:
        if current is None:
            return None
        if field == "size":  # `x.size()` with the call already cut: not a field
            return current
        current = current.get("properties", {}).get(field)
    return current


def test_every_field_a_rule_names_is_declared() -> None:
    assert undeclared_fields(schema()) == []
    bad = {"type": "object", "properties": {"a": {"type": "string"}}}
    bad["x-kubernetes-validations"] = [{"rule": "has(self.b) || self.a == 'x'", "message": "m"}]
    assert undeclared_fields(bad) == ["<root>: self.b in \"has(self.b) || self.a == 'x'\""]


def test_every_rule_has_a_one_line_message() -> None:
    def walk(node: dict[str, Any]) -> Iterator[dict[str, str]]:
        yield from _rules(node)
        for sub in node.get("properties", {}).values():
            yield from walk(sub)
        if isinstance(node.get("items"), dict):
            yield from walk(node["items"])

    rules = list(walk(schema()))
    assert len(rules) > 20
    for rule in rules:
        assert rule["message"] and "\n" not in rule["message"]
        _program(rule["rule"])  # compiles


# --- objects -------------------------------------------------------------------------------


def entity(
    name: str | None = "gpt-a",
    *,
    model: str = "gpt-4o-mini",
    provider: str = "openai",
    task: str = "llm/v1/chat",
    **configs: Any,
) -> dict[str, Any]:
    if not configs:
        configs = {"openai_config": {"openai_api_key": KEY_REF}}
    external = {"name": model, "provider": provider, "task": task, **configs}
    return (
        {"external_model": external} if name is None else {"name": name, "external_model": external}
    )


def manifest(
    *entities: dict[str, Any], routes: list[dict[str, Any]] | None = None, **spec: Any
) -> dict[str, Any]:
    config: dict[str, Any] = {"served_entities": list(entities) or [entity()]}
    if routes is not None:
        config["traffic_config"] = {"routes": routes}
    return {
        "apiVersion": "servegate.io/v1alpha1",
        "kind": "ServingEndpoint",
        "metadata": {"name": "chat"},
        "spec": {"config": config, **spec},
    }


def route(target: str, share: int | str, field: str = "served_model_name") -> dict[str, Any]:
    return {field: target, "traffic_percentage": share}


def config_of(provider: str, field: str, config: dict[str, Any]) -> dict[str, Any]:
    return entity(provider=provider, **{field: config})


CANONICAL_CREATE_BODY = json.loads(
    """{"name":"chat","config":{"served_entities":[{"name":"gpt-4o-mini","external_model":{"name":"gpt-4o-mini","provider":"openai",
 "task":"llm/v1/chat","openai_config":{"openai_api_key":"{{secrets/my_scope/openai_key}}"}}}],
 "traffic_config":{"routes":[{"served_model_name":"gpt-4o-mini","traffic_percentage":100}]}},
 "ai_gateway":{"usage_tracking_config":{"enabled":true},"rate_limits":[{"calls":100,"key":"user","renewal_period":"minute"}],
 "guardrails":{"input":{"safety":true,"pii":{"behavior":"BLOCK"}},"output":{"pii":{"behavior":"MASK"}}},
 "fallback_config":{"enabled":true}},
 "tags":[{"key":"team","value":"gen-ai"}]}"""
)
"""databricks-api.md §1.7, verbatim."""


def _canonical_manifest() -> dict[str, Any]:
    body = dict(CANONICAL_CREATE_BODY)
    name = body.pop("name")
    return {
        "apiVersion": "servegate.io/v1alpha1",
        "kind": "ServingEndpoint",
        "metadata": {"name": name},
        "spec": body,
    }


def _example_documents() -> Iterator[Any]:
    for path in sorted((REPO / "examples").glob("*.yaml")):
        for index, doc in enumerate(yaml.safe_load_all(path.read_text(encoding="utf-8"))):
            if isinstance(doc, dict) and doc.get("kind") == "ServingEndpoint":
                yield pytest.param(doc, id=f"{path.name}#{index}")


AZURE = {
    "openai_api_base": "https://example.openai.azure.com",
    "openai_api_version": "2024-06-01",
    "openai_deployment_name": "gpt4o",
}
ENTRA = {"microsoft_entra_tenant_id": "t", "microsoft_entra_client_id": "c"}
BEDROCK = {"aws_region": "us-east-1", "bedrock_provider": "anthropic"}
GOOD = {
    "canonical create body": _canonical_manifest(),
    "string percentages and entity-name alias": manifest(
        entity("a"), entity("b"), routes=[route("a", "80"), route("b", "020", "served_entity_name")]
    ),
    "derived names routed": manifest(
        entity(None, model="gpt-4o.mini:1"),
        entity(None, model="gpt-4o"),
        routes=[route("gpt-4o-mini-1", 50), route("gpt-4o", 50)],
    ),
    "an entity without a route": manifest(entity("a"), entity("b"), routes=[route("a", 100)]),
    "explicit nulls mean unset": manifest(
        entity(
            openai_config={"openai_api_key": KEY_REF, "openai_api_key_plaintext": None},
            anthropic_config=None,
        ),
        description=None,
    ),
    "unknown fields are kept": manifest(
        entity(openai_config={"openai_api_key": KEY_REF, "future_field": {"x": 1}}),
        budget_policy_id="p1",
    ),
    "azure": manifest(
        entity(openai_config={"openai_api_type": "azure", "openai_api_key": KEY_REF, **AZURE})
    ),
    "azuread": manifest(
        entity(
            openai_config={
                "openai_api_type": "azuread",
                "microsoft_entra_client_secret_plaintext": "s3cret",
                **AZURE,
                **ENTRA,
            }
        )
    ),
    "bedrock with the default credential chain": manifest(
        config_of("amazon-bedrock", "amazon_bedrock_config", BEDROCK)
    ),
    "bedrock with access keys": manifest(
        config_of(
            "amazon-bedrock",
            "amazon_bedrock_config",
            {
                **BEDROCK,
                "aws_access_key_id": "{{secrets/aws/id}}",
                "aws_secret_access_key_plaintext": "secret",
            },
        )
    ),
    "custom with an api key header": manifest(
        config_of(
            "custom",
            "custom_provider_config",
            {
                "custom_provider_url": "http://127.0.0.1:8903/v1",
                "api_key_auth": {"key": "x-api-key", "value_plaintext": "k"},
            },
        )
    ),
    "vertex": manifest(
        config_of(
            "google-cloud-vertex-ai",
            "google_cloud_vertex_ai_config",
            {"project_id": "p", "region": "us-central1", "private_key": "{{secrets/gcp/key}}"},
        )
    ),
    "rate limits, inference table": manifest(
        ai_gateway={
            "rate_limits": [
                {"tokens": 1000, "key": "user", "principal": "a@b.c", "renewal_period": "minute"},
                {"calls": 5, "renewal_period": "minute"},
            ],
            "inference_table_config": {"enabled": True, "catalog_name": "c", "schema_name": "s"},
        },
        rate_limits=[{"calls": 1, "renewal_period": "minute"}],
    ),
}


@pytest.mark.parametrize(
    "doc", [*_example_documents(), *(pytest.param(d, id=k) for k, d in GOOD.items())]
)
def test_valid_objects_pass_the_crd_and_pydantic(doc: dict[str, Any]) -> None:
    assert schema_violations(doc) == []
    assert pydantic_accepts(doc)


def test_the_examples_are_all_checked() -> None:
    assert len(list(_example_documents())) >= 3


def _mutated(change: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
    doc = manifest()
    change(doc)
    return doc


def _external(doc: dict[str, Any]) -> dict[str, Any]:
    external: dict[str, Any] = doc["spec"]["config"]["served_entities"][0]["external_model"]
    return external


ENTRA_SECRET = "exactly one of microsoft_entra_client_secret or microsoft_entra_client_secret_plaintext is required when openai_api_type is azuread, and never both"
OPENAI_KEY = "exactly one of openai_api_key or openai_api_key_plaintext is required unless openai_api_type is azuread, and never both"
ONE_CONFIG = "exactly one provider config (<provider>_config) must be set"
UNIQUE = "served entity names must be unique (an unset name is external_model.name with '.' and ':' replaced by '-')"
REJECTED_BY_CEL: dict[str, tuple[dict[str, Any], str]] = {
    "config of another provider": (
        manifest(entity(provider="anthropic")),
        "the provider config must match provider: openai_config for openai,",
    ),
    "two configs": (
        manifest(
            entity(
                openai_config={"openai_api_key": KEY_REF},
                anthropic_config={"anthropic_api_key": KEY_REF},
            )
        ),
        ONE_CONFIG,
    ),
    "no config": (_mutated(lambda d: _external(d).pop("openai_config")), ONE_CONFIG),
    "routes summing to 90": (
        manifest(entity("a"), entity("b"), routes=[route("a", 60), route("b", "30")]),
        "traffic percentages must sum to 100",
    ),
    "duplicate entity names": (
        manifest(entity("a"), entity("a"), routes=[route("a", 100)]),
        UNIQUE,
    ),
    "duplicate derived names": (
        manifest(entity(None), entity(None), routes=[route("gpt-4o-mini", 100)]),
        UNIQUE,
    ),
    "missing api key": (
        manifest(entity(openai_config={"openai_api_base": "http://x"})),
        OPENAI_KEY,
    ),
    "doubled api key": (
        manifest(
            entity(openai_config={"openai_api_key": KEY_REF, "openai_api_key_plaintext": "k"})
        ),
        OPENAI_KEY,
    ),
    "missing anthropic key": (
        manifest(entity(provider="anthropic", anthropic_config={})),
        "exactly one of anthropic_api_key or anthropic_api_key_plaintext is required",
    ),
    "doubled palm key": (
        manifest(
            entity(
                provider="palm",
                palm_config={"palm_api_key": KEY_REF, "palm_api_key_plaintext": "k"},
            )
        ),
        "exactly one of palm_api_key or palm_api_key_plaintext is required",
    ),
    "doubled bearer token": (
        manifest(
            config_of(
                "custom",
                "custom_provider_config",
                {
                    "custom_provider_url": "http://h",
                    "bearer_token_auth": {"token": KEY_REF, "token_plaintext": "t"},
                },
            )
        ),
        "exactly one of token or token_plaintext is required",
    ),
    "azuread without a client secret": (
        manifest(entity(openai_config={"openai_api_type": "azuread", **AZURE, **ENTRA})),
        ENTRA_SECRET,
    ),
    "half an access key pair": (
        manifest(
            config_of(
                "amazon-bedrock",
                "amazon_bedrock_config",
                {**BEDROCK, "aws_access_key_id": "{{secrets/aws/id}}"},
            )
        ),
        "exactly one of aws_secret_access_key or aws_secret_access_key_plaintext is required once access keys are used, and never both",
    ),
    "two AWS auth styles": (
        manifest(
            config_of(
                "amazon-bedrock",
                "amazon_bedrock_config",
                {**BEDROCK, "instance_profile_arn": "arn:x", "uc_service_credential_name": "c"},
            )
        ),
        "at most one AWS auth style may be used (access keys, instance_profile_arn or uc_service_credential_name)",
    ),
    "custom with both auths": (
        manifest(
            config_of(
                "custom",
                "custom_provider_config",
                {
                    "custom_provider_url": "http://h",
                    "bearer_token_auth": {"token": KEY_REF},
                    "api_key_auth": {"key": "k", "value": KEY_REF},
                },
            )
        ),
        "exactly one of api_key_auth or bearer_token_auth is required",
    ),
    "azure without its fields": (
        manifest(entity(openai_config={"openai_api_type": "azure", "openai_api_key": KEY_REF})),
        "openai_api_type azure and azuread require openai_api_base, openai_api_version and openai_deployment_name",
    ),
    "entra fields with openai": (
        manifest(entity(openai_config={"openai_api_key": KEY_REF, **ENTRA})),
        "microsoft_entra_* fields only apply to openai_api_type azuread",
    ),
    "azuread without tenant": (
        manifest(
            entity(
                openai_config={
                    "openai_api_type": "azuread",
                    "microsoft_entra_client_secret": KEY_REF,
                    "microsoft_entra_client_id": "c",
                    **AZURE,
                }
            )
        ),
        "openai_api_type azuread requires microsoft_entra_tenant_id and microsoft_entra_client_id",
    ),
    "two entities without routes": (
        manifest(entity("a"), entity("b")),
        "traffic_config.routes is required with two or more served entities",
    ),
    "mixed tasks": (
        manifest(entity("a"), entity("b", task="llm/v1/completions"), routes=[route("a", 100)]),
        "all served entities of an endpoint must have the same task",
    ),
    "route to a missing entity": (
        manifest(entity("a"), routes=[route("b", 100)]),
        "every route must name a served entity of this endpoint",
    ),
    "two routes to one entity": (
        manifest(
            entity("a"), entity("b"), routes=[route("a", 50), route("a", 50, "served_entity_name")]
        ),
        "each served entity may have at most one route",
    ),
    "route without a target": (
        manifest(entity("a"), routes=[{"traffic_percentage": 100}]),
        "a route needs served_model_name (or served_entity_name)",
    ),
    "route names that differ": (
        manifest(
            entity("a"),
            routes=[
                {"served_model_name": "a", "served_entity_name": "b", "traffic_percentage": 100}
            ],
        ),
        "served_model_name and served_entity_name differ",
    ),
    "derived name with a slash": (
        manifest(entity(None, model="meta-llama/Llama-3.1-8B")),
        "the served entity name derived from external_model.name may only contain letters, digits, '-' and '_'; set name explicitly",
    ),
    "served_models": (
        manifest(**{"config": {"served_entities": [entity()], "served_models": [{"name": "m"}]}}),
        "served_models is not supported: external models go in served_entities",
    ),
    "rate limit without calls or tokens": (
        manifest(ai_gateway={"rate_limits": [{"renewal_period": "minute"}]}),
        "a rate limit needs calls, tokens or both",
    ),
    "principal on an endpoint limit": (
        manifest(
            ai_gateway={"rate_limits": [{"calls": 1, "principal": "a", "renewal_period": "minute"}]}
        ),
        "principal only applies to key user, user_group or service_principal",
    ),
    "inference table without a target": (
        manifest(ai_gateway={"inference_table_config": {"enabled": True, "catalog_name": "c"}}),
        "an enabled inference table requires catalog_name and schema_name",
    ),
    "a dotted endpoint name": (
        _mutated(lambda d: d["metadata"].update(name="my.endpoint")),
        "metadata.name is the endpoint name: at most 63 characters, without '.'",
    ),
}


@pytest.mark.parametrize(("doc", "message"), REJECTED_BY_CEL.values(), ids=REJECTED_BY_CEL.keys())
def test_cel_rules_reject_with_their_message(doc: dict[str, Any], message: str) -> None:
    violations = schema_violations(doc)
    assert any(v.startswith(message) and "evaluation error" not in v for v in violations), (
        violations
    )
    assert not pydantic_accepts(doc)


REJECTED_BY_SCHEMA: dict[str, tuple[dict[str, Any], str]] = {
    "unknown provider": (manifest(entity(provider="openai-compatible")), "is not one of"),
    "unknown task": (manifest(entity(task="llm/v1/images")), "is not one of"),
    "a percentage above 100": (manifest(routes=[route("gpt-a", 101)]), "greater than the maximum"),
    "a non-numeric percentage": (manifest(routes=[route("gpt-a", "all")]), "does not match"),
    "a float percentage string": (manifest(routes=[route("gpt-a", "100.0")]), "does not match"),
    "a raw key in a reference field": (
        manifest(entity(openai_config={"openai_api_key": "sk-live-123"})),
        "does not match",
    ),
    "an empty plaintext": (
        manifest(entity(openai_config={"openai_api_key_plaintext": ""})),
        "should be non-empty",
    ),
    "an entity name with a slash": (
        manifest(entity("a/b"), routes=[route("a/b", 100)]),
        "does not match",
    ),
    "sixteen entities": (
        manifest(
            *(entity(f"e{i}") for i in range(16)),
            routes=[route("e0", 100)],
        ),
        "is too long",
    ),
    "no served entities": (
        manifest(**{"config": {"served_entities": []}}),
        "should be non-empty",
    ),
    "a missing renewal period": (
        manifest(rate_limits=[{"calls": 1}]),
        "'renewal_period' is a required",
    ),
    "a renewal period of an hour": (
        manifest(rate_limits=[{"calls": 1, "renewal_period": "hour"}]),
        "is not one of",
    ),
    "a string call count": (
        manifest(rate_limits=[{"calls": "5", "renewal_period": "minute"}]),
        "is not of type",
    ),
    "a lowercase pii behaviour": (
        manifest(ai_gateway={"guardrails": {"input": {"pii": {"behavior": "block"}}}}),
        "is not one of",
    ),
    "no spec": (_mutated(lambda d: d.pop("spec")), "'spec' is a required"),
}


@pytest.mark.parametrize(
    ("doc", "message"), REJECTED_BY_SCHEMA.values(), ids=REJECTED_BY_SCHEMA.keys()
)
def test_schema_rejects(doc: dict[str, Any], message: str) -> None:
    violations = schema_violations(doc)
    assert any(message in v for v in violations), violations
    assert not pydantic_accepts(doc)


def test_unknown_top_level_fields_are_refused_by_strict_validation_only() -> None:
    # kubectl validates strictly by default, so the server refuses the field; the loader
    # ignores it (and a server with lax validation prunes it): neither ever reads it.
    doc = _mutated(lambda d: d.update(extra=1))
    assert any("Additional properties" in v for v in schema_violations(doc))
    assert pydantic_accepts(doc)


def test_enum_case_is_stricter_than_the_gateway() -> None:
    # The gateway lowercases openai_api_type and bedrock_provider (Databricks clients send
    # any case); in a manifest only the canonical lowercase form passes.
    doc = manifest(entity(openai_config={"openai_api_type": "OpenAI", "openai_api_key": KEY_REF}))
    assert pydantic_accepts(doc)
    assert any("is not one of" in v for v in schema_violations(doc))
