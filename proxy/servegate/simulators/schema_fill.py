"""A deterministic example value for a JSON Schema.

Used where OpenAI would generate schema-conforming JSON: tool-call arguments (from
the function's ``parameters``) and ``response_format: json_schema`` replies. Strings
take a caller-supplied text (so replies still echo the prompt), enums their first
value, numbers 0, booleans false; ``$ref`` into ``$defs``/``definitions`` resolves
against the root schema. Depth is bounded so recursive schemas terminate.
"""

from __future__ import annotations

from typing import Any

__all__ = ["example_for_schema"]

_MAX_DEPTH = 8


def _resolve(ref: str, root: dict[str, Any]) -> dict[str, Any]:
    node: Any = root
    for part in ref.removeprefix("#/").split("/"):
        node = node.get(part) if isinstance(node, dict) else None
    return node if isinstance(node, dict) else {}


def _fill(schema: Any, text: str, root: dict[str, Any], depth: int) -> Any:
    if not isinstance(schema, dict) or depth > _MAX_DEPTH:
        return None
    if "$ref" in schema:
        return _fill(_resolve(str(schema["$ref"]), root), text, root, depth + 1)
    if "const" in schema:
        return schema["const"]
    if isinstance(schema.get("enum"), list) and schema["enum"]:
        return schema["enum"][0]
    for combinator in ("anyOf", "oneOf", "allOf"):
        options = schema.get(combinator)
        if isinstance(options, list) and options:
            non_null = [o for o in options if not (isinstance(o, dict) and o.get("type") == "null")]
            return _fill((non_null or options)[0], text, root, depth + 1)
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    if kind == "object" or (kind is None and "properties" in schema):
        props = schema.get("properties") or {}
        return {name: _fill(sub, text, root, depth + 1) for name, sub in props.items()}
    if kind == "array":
        items = schema.get("items")
        return [_fill(items, text, root, depth + 1)] if isinstance(items, dict) else []
    if kind == "string":
        return text
    if kind in ("integer", "number"):
        return 0
    if kind == "boolean":
        return False
    return None


def example_for_schema(schema: object, text: str) -> Any:
    """An instance of ``schema``; a schema that is not an object yields ``{}``."""
    if not isinstance(schema, dict):
        return {}
    value = _fill(schema, text, schema, 0)
    return {} if value is None and schema.get("type") != "null" else value
