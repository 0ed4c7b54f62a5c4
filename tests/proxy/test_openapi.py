"""The per-endpoint OpenAPI document: valid OpenAPI, served by the gateway, and true.

"True" is checked with schemathesis against a real gateway in front of the OpenAI
simulator: for every operation of every task's document, generated requests (schema-valid
ones and invalid ones) never get a 5xx, and every response has a documented status,
content type, headers and body schema. Generation is derandomized and bounded, so the run
is the same every time and stays well under a minute.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import hypothesis
import pytest
import requests
import schemathesis
from aiohttp import web
from openapi_spec_validator import validate
from schemathesis import GenerationMode

from servegate.app import GatewaySettings, create_app
from servegate.ingress.openapi import ERROR_STATUSES, openapi_document
from servegate.simulators.openai import create_openai_app
from servegate.spec.endpoint import Task
from servegate.transport.client import Timeouts
from tests.conftest import (
    OPENAI_KEY,
    BackgroundLoop,
    Workspace,
    endpoint_doc,
    openai_entity,
    start_site,
    write_yaml,
)

ENDPOINTS = {Task.CHAT: "chat", Task.COMPLETIONS: "comp", Task.EMBEDDINGS: "emb"}
MODELS = {
    Task.CHAT: "gpt-4o-mini",
    Task.COMPLETIONS: "gpt-3.5-turbo-instruct",
    Task.EMBEDDINGS: "text-embedding-3-small",
}
CHECKS = [
    schemathesis.checks.not_a_server_error,
    schemathesis.checks.status_code_conformance,
    schemathesis.checks.content_type_conformance,
    schemathesis.checks.response_headers_conformance,
    schemathesis.checks.response_schema_conformance,
]
EXAMPLES = {GenerationMode.POSITIVE: 60, GenerationMode.NEGATIVE: 40}
# The simulator answers `n` choices and `dimensions`-long vectors however large the number
# (OpenAI refuses n > 128): a generated n of 10**9 would fill the memory of the test
# process, not test the gateway. Larger values are lowered to this (still valid) bound.
SIMULATOR_BOUND = 8


def bounded(case: schemathesis.Case[Any]) -> schemathesis.Case[Any]:
    if isinstance(case.body, dict):
        for key in ("n", "dimensions"):
            value = case.body.get(key)
            if isinstance(value, int) and not isinstance(value, bool) and value > SIMULATOR_BOUND:
                case.body[key] = SIMULATOR_BOUND
    return case


@pytest.mark.parametrize("task", list(Task))
def test_document_is_valid_openapi(task: Task) -> None:
    document = openapi_document("my-endpoint_1", task, ("a", "b"))
    validate(document)
    assert document["openapi"].startswith("3.1")
    paths = document["paths"]
    assert "/serving-endpoints/my-endpoint_1/invocations" in paths
    assert "/serving-endpoints/my-endpoint_1/served-models/{entity}/invocations" in paths
    route = {Task.CHAT: "chat/completions", Task.COMPLETIONS: "completions"}.get(task, "embeddings")
    assert {f"/serving-endpoints/{route}", f"/v1/{route}"} <= paths.keys()
    responses = paths["/serving-endpoints/my-endpoint_1/invocations"]["post"]["responses"]
    assert {str(s) for s in ERROR_STATUSES} <= responses.keys()
    assert {"400", "401", "403", "404", "413", "429", "502", "503", "504"} <= responses.keys()
    assert document["components"]["schemas"]["Error"]["required"] == ["error_code", "message"]
    assert document["security"] == [{"bearerAuth": []}]
    assert document["components"]["securitySchemes"]["bearerAuth"]["scheme"] == "bearer"


def test_request_schema_is_the_validating_model() -> None:
    """The chat body's schema is the pydantic model's: a change there changes the document."""
    schemas = openapi_document("chat", Task.CHAT)["components"]["schemas"]
    body = schemas["QueryRequest"]
    assert body["required"] == ["messages"]
    assert body["properties"]["messages"]["minItems"] == 1
    assert {"extra_params", "client_request_id", "usage_context"} <= body["properties"].keys()
    assert "user" in schemas["ChatMessage"]["properties"]["role"]["enum"]


def test_document_without_entities_has_no_entity_route() -> None:
    paths = openapi_document("e", Task.EMBEDDINGS)["paths"]
    assert not any("served-models" in path for path in paths)
    assert "text/event-stream" not in paths["/v1/embeddings"]["post"]["responses"]["200"]["content"]


@dataclass
class Running:
    url: str
    loop: BackgroundLoop


@pytest.fixture(scope="module")
def gateway(
    tmp_path_factory: pytest.TempPathFactory, background_loop: BackgroundLoop
) -> Iterator[Running]:
    workspace = Workspace(tmp_path_factory.mktemp("openapi"))
    sim_runner, sim_url = background_loop.run(start_site(create_openai_app(api_keys={OPENAI_KEY})))
    write_yaml(
        workspace.manifests / "endpoints.yaml",
        *(
            endpoint_doc(name, [openai_entity(MODELS[task], sim_url + "/v1", task=str(task))])
            for task, name in ENDPOINTS.items()
        ),
    )
    settings = GatewaySettings(
        paths=(workspace.manifests,),
        secrets_dir=workspace.secrets,
        watch=False,
        timeouts=Timeouts(connect=2, first_byte=5, idle=5),
    )

    async def start() -> tuple[web.AppRunner, str]:
        return await start_site(create_app(settings))

    runner, url = background_loop.run(start())
    yield Running(url, background_loop)
    background_loop.run(runner.cleanup())
    background_loop.run(sim_runner.cleanup())


def fetch_document(gateway: Running, name: str) -> dict[str, Any]:
    resp = requests.get(f"{gateway.url}/api/2.0/serving-endpoints/{name}/openapi", timeout=10)
    assert resp.status_code == 200
    assert resp.headers["Content-Type"].startswith("application/json")
    document: dict[str, Any] = resp.json()
    return document


def test_gateway_serves_the_document(gateway: Running) -> None:
    document = fetch_document(gateway, "chat")
    validate(document)
    assert document == openapi_document("chat", Task.CHAT, (MODELS[Task.CHAT],))
    missing = requests.get(f"{gateway.url}/api/2.0/serving-endpoints/nope/openapi", timeout=10)
    assert missing.status_code == 404
    assert missing.json()["error_code"] == "RESOURCE_DOES_NOT_EXIST"


@pytest.mark.parametrize("task", list(Task))
@pytest.mark.parametrize("mode", list(EXAMPLES), ids=lambda mode: str(mode.value))
def test_gateway_conforms_to_its_document(
    gateway: Running, task: Task, mode: GenerationMode
) -> None:
    schema = schemathesis.openapi.from_dict(fetch_document(gateway, ENDPOINTS[task]))
    # The /v1 route runs the same handler as /serving-endpoints: one of the two suffices.
    operations = [
        operation
        for operation in (result.ok() for result in schema.get_all_operations())  # type: ignore[union-attr]
        if "/v1/" not in operation.path
    ]
    assert len(operations) == 3
    with requests.Session() as session:
        for operation in operations:

            @hypothesis.settings(
                max_examples=EXAMPLES[mode],
                derandomize=True,
                database=None,
                deadline=None,
                suppress_health_check=list(hypothesis.HealthCheck),
            )
            @hypothesis.given(case=operation.as_strategy(generation_mode=mode).map(bounded))
            def run(case: schemathesis.Case[Any]) -> None:
                case.call_and_validate(
                    base_url=gateway.url, session=session, checks=CHECKS, timeout=10
                )

            run()
