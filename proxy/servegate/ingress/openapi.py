"""The OpenAPI 3.1 document of one serving endpoint: how to query it, and what comes back.

``GET /api/2.0/serving-endpoints/{name}/openapi`` serves it (databricks-sdk's
``get_open_api``). It is rendered from the endpoint's name, task and served entities alone,
so it is pure and cached. Request schemas come from the pydantic models that validate query
bodies (``canonical/requests.py``), plus the fields the gateway keeps for itself, so the
document cannot drift from what is accepted. Response schemas follow the OpenAI shapes the
translators build (``canonical/responses.py``); they require only what every provider's
answer carries, since OpenAI-format upstreams are passed through with their own extras.
Errors are the platform's ``{"error_code", "message"}`` with the statuses the gateway sends.
"""

from __future__ import annotations

import copy
import functools
from typing import Any

import orjson
from pydantic import BaseModel

from servegate.canonical.requests import ChatRequest, CompletionsRequest, EmbeddingsRequest
from servegate.spec.endpoint import Task

OPENAPI_VERSION = "3.1.0"
_SCHEMAS = "#/components/schemas/"
_MODELS: dict[Task, type[BaseModel]] = {
    Task.CHAT: ChatRequest,
    Task.COMPLETIONS: CompletionsRequest,
    Task.EMBEDDINGS: EmbeddingsRequest,
}
_OPENAI_PATHS = {
    Task.CHAT: "chat/completions",
    Task.COMPLETIONS: "completions",
    Task.EMBEDDINGS: "embeddings",
}
_RESPONSES = {
    Task.CHAT: "ChatCompletion",
    Task.COMPLETIONS: "Completion",
    Task.EMBEDDINGS: "Embeddings",
}
# Status → (when, example error_code). 413 keeps BAD_REQUEST, as the platform does.
ERROR_STATUSES: dict[int, tuple[str, str]] = {
    400: ("Invalid body or parameter; the message names the field.", "INVALID_PARAMETER_VALUE"),
    401: ("Missing or unknown bearer token.", "UNAUTHENTICATED"),
    403: ("The caller may not query this endpoint, or the provider refused.", "PERMISSION_DENIED"),
    404: ("Unknown endpoint or served entity.", "RESOURCE_DOES_NOT_EXIST"),
    413: ("Body over 4 MB.", "BAD_REQUEST"),
    429: (
        "A rate limit (AI Gateway or the provider's); see Retry-After.",
        "REQUEST_LIMIT_EXCEEDED",
    ),
    502: ("The provider is unreachable or answered garbage.", "TEMPORARILY_UNAVAILABLE"),
    503: (
        "The endpoint is not ready, or the provider is; see Retry-After.",
        "TEMPORARILY_UNAVAILABLE",
    ),
    504: ("The provider did not answer in time.", "DEADLINE_EXCEEDED"),
}
_RETRY_AFTER = (429, 503)


def openapi_document(name: str, task: Task, entities: tuple[str, ...] = ()) -> dict[str, Any]:
    """The document for endpoint ``name`` serving ``task`` (a fresh dict every call)."""
    return copy.deepcopy(_document(name, task, tuple(entities)))


def openapi_json(name: str, task: Task, entities: tuple[str, ...] = ()) -> bytes:
    """The document as JSON bytes (rendered once per name, task and entities)."""
    return orjson.dumps(_document(name, task, tuple(entities)))


@functools.lru_cache(maxsize=256)
def _document(name: str, task: Task, entities: tuple[str, ...]) -> dict[str, Any]:
    schemas = _request_schemas(task)
    schemas.update(_response_schemas(task))
    schemas["Error"] = _ERROR_SCHEMA
    response = _RESPONSES[task]
    query = _operation(
        f"Query endpoint '{name}' ({task}); the traffic split (and fallbacks) apply.",
        "QueryRequest",
        response,
        task,
        operation_id="query",
    )
    paths: dict[str, Any] = {f"/serving-endpoints/{name}/invocations": {"post": query}}
    if entities:
        entity_query = _operation(
            f"Query one served entity of '{name}', bypassing the traffic split.",
            "QueryRequest",
            response,
            task,
            operation_id="queryServedEntity",
        )
        entity_query["parameters"] = [
            {
                "name": "entity",
                "in": "path",
                "required": True,
                "description": "The served entity's name.",
                "schema": {"type": "string", "enum": list(entities)},
            }
        ]
        paths[f"/serving-endpoints/{name}/served-models/{{entity}}/invocations"] = {
            "post": entity_query
        }
    for base in ("/serving-endpoints", "/v1"):
        paths[f"{base}/{_OPENAI_PATHS[task]}"] = {
            "post": _operation(
                f"The OpenAI-compatible route; 'model' names the endpoint ('{name}').",
                "OpenAIRequest",
                response,
                task,
                operation_id=f"openai{'V1' if base == '/v1' else ''}",
            )
        }
    schemas["OpenAIRequest"] = {
        "allOf": [{"$ref": _SCHEMAS + "QueryRequest"}],
        "type": "object",
        "required": ["model"],
        "properties": {"model": {"const": name, "description": "The serving endpoint's name."}},
    }
    return {
        "openapi": OPENAPI_VERSION,
        "info": {
            "title": f"Serving endpoint '{name}'",
            "version": "1",
            "description": f"How to query serving endpoint '{name}' ({task}) through servegate.",
        },
        "servers": [{"url": "/"}],
        "security": [{"bearerAuth": []}],
        "paths": paths,
        "components": {
            "schemas": schemas,
            "securitySchemes": {
                "bearerAuth": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "A token from the gateway's auth file (Authorization: Bearer).",
                }
            },
            "headers": {
                "ServedModelName": {
                    "description": "The served entity that answered.",
                    "schema": {"type": "string"},
                },
                "RetryAfter": {
                    "description": "Whole seconds to wait before retrying.",
                    "schema": {"type": "string", "pattern": "^[0-9]+$"},
                },
            },
        },
    }


def _operation(
    summary: str, request: str, response: str, task: Task, *, operation_id: str
) -> dict[str, Any]:
    ok: dict[str, Any] = {"application/json": {"schema": {"$ref": _SCHEMAS + response}}}
    if task != Task.EMBEDDINGS:
        ok["text/event-stream"] = {
            "schema": {
                "description": 'With "stream": true. One event (OpenAPI 3.1 reads the schema '
                "of an event stream per event): 'data: <chunk JSON>' lines only, no event "
                "names, and 'data: [DONE]' last.",
                "type": "object",
                "required": ["data"],
                "properties": {
                    "data": {"type": "string"},
                    "event": {"const": "message", "description": "The default: none is sent."},
                },
            }
        }
    responses: dict[str, Any] = {
        "200": {
            "description": "The answer, in OpenAI's shape.",
            "headers": {"served-model-name": {"$ref": "#/components/headers/ServedModelName"}},
            "content": ok,
        }
    }
    for status, (when, code) in ERROR_STATUSES.items():
        body: dict[str, Any] = {
            "schema": {"$ref": _SCHEMAS + "Error"},
            "example": {"error_code": code, "message": when},
        }
        entry: dict[str, Any] = {"description": when, "content": {"application/json": body}}
        if status in _RETRY_AFTER:
            entry["headers"] = {"Retry-After": {"$ref": "#/components/headers/RetryAfter"}}
        responses[str(status)] = entry
    responses["default"] = {
        "description": "A provider's own error status, passed on; the message is the JSON "
        'string {"external_model_provider", "external_model_error"}.',
        "content": {"application/json": {"schema": {"$ref": _SCHEMAS + "Error"}}},
    }
    return {
        "operationId": operation_id,
        "summary": summary,
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": {"$ref": _SCHEMAS + request}}},
        },
        "responses": responses,
    }


def _request_schemas(task: Task) -> dict[str, Any]:
    """The task's pydantic model as JSON Schema, its definitions lifted into components."""
    schema = _MODELS[task].model_json_schema(ref_template=_SCHEMAS + "{model}")
    schemas: dict[str, Any] = schema.pop("$defs", {})
    properties = schema.setdefault("properties", {})
    properties.update(copy.deepcopy(_GATEWAY_FIELDS))
    schema["description"] = (
        "The query body. Parameters not listed pass through to the provider where it takes "
        "them; one it is known to reject gets a 400 naming it."
    )
    schemas["QueryRequest"] = schema
    return schemas


_GATEWAY_FIELDS: dict[str, Any] = {
    "extra_params": {
        "type": "object",
        "description": "More parameters (databricks-sdk sends strings); JSON-looking "
        'strings are decoded ("0.5" becomes 0.5) and merged into the body.',
    },
    "client_request_id": {"type": "string", "description": "Kept by the gateway, not forwarded."},
    "usage_context": {
        "type": "object",
        "additionalProperties": {"type": "string"},
        "description": "Kept by the gateway, not forwarded.",
    },
}
_ERROR_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["error_code", "message"],
    "properties": {
        "error_code": {
            "type": "string",
            "description": "BAD_REQUEST, INVALID_PARAMETER_VALUE, UNAUTHENTICATED, "
            "PERMISSION_DENIED, RESOURCE_DOES_NOT_EXIST, REQUEST_LIMIT_EXCEEDED, "
            "TEMPORARILY_UNAVAILABLE, DEADLINE_EXCEEDED, ...",
        },
        "message": {"type": "string"},
    },
}


def _nullable(schema: dict[str, Any]) -> dict[str, Any]:
    return {"anyOf": [schema, {"type": "null"}]}


_USAGE: dict[str, Any] = {
    "type": "object",
    "required": ["prompt_tokens", "total_tokens"],
    "properties": {
        "prompt_tokens": {"type": "integer", "minimum": 0},
        "completion_tokens": {"type": "integer", "minimum": 0},
        "total_tokens": {"type": "integer", "minimum": 0},
    },
}
_FINISH_REASON = _nullable({"type": "string"})
_TOOL_CALL: dict[str, Any] = {
    "type": "object",
    "properties": {
        "id": _nullable({"type": "string"}),
        "type": {"type": "string"},
        "function": {
            "type": "object",
            "properties": {
                "name": _nullable({"type": "string"}),
                "arguments": {"type": "string"},
            },
        },
    },
}


def _response_schemas(task: Task) -> dict[str, Any]:
    usage = {"Usage": _USAGE}
    if task == Task.EMBEDDINGS:
        vector = {
            "anyOf": [
                {"type": "array", "items": {"type": "number"}},
                {"type": "string", "description": "base64 float32, with encoding_format base64"},
            ]
        }
        return usage | {
            "Embeddings": {
                "type": "object",
                "required": ["data"],
                "properties": {
                    "object": {"type": "string"},
                    "model": {"type": "string"},
                    "data": {
                        "type": "array",
                        "items": {
                            "type": "object",
                            "required": ["embedding"],
                            "properties": {
                                "object": {"type": "string"},
                                "index": {"type": "integer"},
                                "embedding": vector,
                            },
                        },
                    },
                    "usage": _nullable({"$ref": _SCHEMAS + "Usage"}),
                },
            }
        }
    if task == Task.CHAT:
        choice = {
            "type": "object",
            "required": ["message"],
            "properties": {
                "index": {"type": "integer"},
                "message": {
                    "type": "object",
                    "properties": {
                        "role": {"type": "string"},
                        "content": _nullable({"type": "string"}),
                        "tool_calls": _nullable({"type": "array", "items": _TOOL_CALL}),
                    },
                },
                "finish_reason": _FINISH_REASON,
            },
        }
        name = "ChatCompletion"
    else:
        choice = {
            "type": "object",
            "required": ["text"],
            "properties": {
                "index": {"type": "integer"},
                "text": {"type": "string"},
                "finish_reason": _FINISH_REASON,
            },
        }
        name = "Completion"
    return usage | {
        name: {
            "type": "object",
            "required": ["choices"],
            "properties": {
                "id": _nullable({"type": "string"}),
                "object": {"type": "string"},
                "created": {"type": "integer"},
                "model": {"type": "string"},
                "choices": {"type": "array", "items": choice},
                "usage": _nullable({"$ref": _SCHEMAS + "Usage"}),
            },
        }
    }
