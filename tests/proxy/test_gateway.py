"""The gateway in-process against the OpenAI simulator over real HTTP: the query path,
streaming, errors and the read API. (Real client SDKs: test_clients.py.)"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import orjson
import pytest
from aiohttp import ClientSession
from aiohttp.test_utils import TestClient

from tests.conftest import (
    OPENAI_KEY,
    Workspace,
    endpoint_doc,
    openai_entity,
    write_auth_file,
    write_yaml,
)

Client = TestClient[Any, Any]


async def sim(openai_sim: str, method: str, path: str, body: Any = None) -> Any:
    async with (
        ClientSession() as session,
        session.request(method, openai_sim + path, json=body) as resp,
    ):
        return await resp.json()


def sse_lines(raw: bytes) -> list[str]:
    return [line for line in raw.decode().split("\n") if line]


@pytest.fixture
async def client(
    workspace: Workspace,
    openai_sim: str,
    in_process_app: Callable[..., Any],
    aiohttp_client: Callable[..., Awaitable[Client]],
) -> Client:
    base = openai_sim + "/v1"
    write_yaml(
        workspace.manifests / "endpoints.yaml",
        endpoint_doc("chat", [openai_entity("gpt-4o-mini", base)]),
        endpoint_doc(
            "split",
            [
                openai_entity("gpt-a", base, name="a"),
                openai_entity("gpt-b", base, name="b"),
            ],
            routes=[
                {"served_model_name": "a", "traffic_percentage": 50},
                {"served_model_name": "b", "traffic_percentage": "50"},
            ],
        ),
        endpoint_doc(
            "emb", [openai_entity("text-embedding-3-small", base, task="llm/v1/embeddings")]
        ),
        endpoint_doc(
            "comp", [openai_entity("gpt-3.5-turbo-instruct", base, task="llm/v1/completions")]
        ),
    )
    return await aiohttp_client(in_process_app())


async def test_chat_answers_with_served_model_name_and_usage(
    client: Client, openai_sim: str
) -> None:
    await sim(openai_sim, "DELETE", "/_sim/requests")
    resp = await client.post(
        "/serving-endpoints/chat/invocations",
        json={"messages": [{"role": "user", "content": "hello there"}], "max_tokens": 20},
    )
    assert resp.status == 200
    assert resp.headers["served-model-name"] == "gpt-4o-mini"
    assert resp.headers["x-request-id"]
    body = await resp.json()
    assert body["object"] == "chat.completion"
    assert body["choices"][0]["message"]["role"] == "assistant"
    assert (
        body["usage"]["total_tokens"]
        == body["usage"]["prompt_tokens"] + body["usage"]["completion_tokens"]
    )
    sent = (await sim(openai_sim, "GET", "/_sim/requests"))["requests"][-1]
    assert sent["path"] == "/v1/chat/completions"
    assert sent["headers"]["authorization"] == f"Bearer {OPENAI_KEY}"
    assert sent["json"]["model"] == "gpt-4o-mini"
    assert sent["json"]["max_tokens"] == 20


async def test_extra_params_are_merged_and_decoded(client: Client, openai_sim: str) -> None:
    await sim(openai_sim, "DELETE", "/_sim/requests")
    resp = await client.post(
        "/serving-endpoints/chat/invocations",
        json={
            "messages": [{"role": "user", "content": "hi"}],
            "extra_params": {"top_p": "0.5", "seed": "7", "user": "ana"},
            "client_request_id": "cr-1",
            "usage_context": {"app": "x"},
        },
    )
    assert resp.status == 200, await resp.text()
    sent = (await sim(openai_sim, "GET", "/_sim/requests"))["requests"][-1]["json"]
    assert sent["top_p"] == 0.5
    assert sent["seed"] == 7
    assert sent["user"] == "ana"
    for gateway_only in ("extra_params", "client_request_id", "usage_context"):
        assert gateway_only not in sent


async def test_stream_is_data_lines_only_with_usage_on_the_final_chunk(
    client: Client, openai_sim: str
) -> None:
    await sim(openai_sim, "DELETE", "/_sim/requests")
    resp = await client.post(
        "/serving-endpoints/chat/invocations",
        json={"messages": [{"role": "user", "content": "tell me a story"}], "stream": True},
    )
    assert resp.status == 200
    assert resp.headers["Content-Type"].startswith("text/event-stream")
    assert resp.headers["served-model-name"] == "gpt-4o-mini"
    lines = sse_lines(await resp.read())
    assert all(line.startswith("data: ") for line in lines)
    assert lines[-1] == "data: [DONE]"
    chunks = [orjson.loads(line[6:]) for line in lines[:-1]]
    assert all(chunk["choices"] for chunk in chunks), "no empty-choices chunk reaches the client"
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"
    assert chunks[-1]["usage"]["completion_tokens"] > 0
    sent = (await sim(openai_sim, "GET", "/_sim/requests"))["requests"][-1]["json"]
    assert sent["stream_options"] == {"include_usage": True}


async def test_stream_with_client_include_usage_passes_the_usage_chunk(client: Client) -> None:
    resp = await client.post(
        "/v1/chat/completions",
        json={
            "model": "chat",
            "messages": [{"role": "user", "content": "hi"}],
            "stream": True,
            "stream_options": {"include_usage": True},
        },
    )
    lines = sse_lines(await resp.read())
    last = orjson.loads(lines[-2][6:])
    assert last["choices"] == []
    assert last["usage"]["total_tokens"] > 0


async def test_embeddings_and_completions(client: Client) -> None:
    emb = await client.post("/serving-endpoints/emb/invocations", json={"input": ["a", "b"]})
    assert emb.status == 200
    data = (await emb.json())["data"]
    assert [d["index"] for d in data] == [0, 1]
    assert isinstance(data[0]["embedding"], list)
    comp = await client.post(
        "/v1/completions", json={"model": "comp", "prompt": "Say hi", "max_tokens": 5}
    )
    assert comp.status == 200
    assert (await comp.json())["object"] == "text_completion"


async def test_per_entity_route_bypasses_the_split(client: Client) -> None:
    for _ in range(5):
        resp = await client.post(
            "/serving-endpoints/split/served-models/b/invocations",
            json={"messages": [{"role": "user", "content": "hi"}]},
        )
        assert resp.headers["served-model-name"] == "b"
    resp = await client.post(
        "/serving-endpoints/split/served-models/zzz/invocations",
        json={"messages": [{"role": "user", "content": "hi"}]},
    )
    assert resp.status == 404
    assert (await resp.json())["error_code"] == "RESOURCE_DOES_NOT_EXIST"


async def test_split_reaches_both_entities(client: Client) -> None:
    seen = {"a": 0, "b": 0}
    for _ in range(200):
        resp = await client.post(
            "/serving-endpoints/split/invocations",
            json={"messages": [{"role": "user", "content": "x"}], "max_tokens": 1},
        )
        seen[resp.headers["served-model-name"]] += 1
    # 50/50 over 200 draws: 4 standard deviations is ±28.
    assert 72 <= seen["a"] <= 128, seen


BAD_REQUESTS = [
    pytest.param(
        "/serving-endpoints/nope/invocations",
        {"messages": []},
        404,
        "RESOURCE_DOES_NOT_EXIST",
        "nope",
        id="unknown-endpoint",
    ),
    pytest.param(
        "/serving-endpoints/chat/invocations",
        {"input": "x"},
        400,
        "BAD_REQUEST",
        "'messages'",
        id="wrong-task-body",
    ),
    pytest.param(
        "/serving-endpoints/chat/invocations",
        {"messages": [{"role": "user", "content": "x"}], "temperature": 5},
        400,
        "INVALID_PARAMETER_VALUE",
        "temperature",
        id="out-of-range",
    ),
    pytest.param(
        "/serving-endpoints/chat/invocations",
        {"messages": [{"role": "robot", "content": "x"}]},
        400,
        "INVALID_PARAMETER_VALUE",
        "messages[0].role",
        id="field-path",
    ),
    pytest.param(
        "/serving-endpoints/chat/invocations",
        {"messages": [{"role": "user", "content": "x"}], "top_k": 5},
        400,
        "BAD_REQUEST",
        "top_k",
        id="unsupported-param",
    ),
    pytest.param(
        "/serving-endpoints/chat/invocations",
        {"dataframe_records": [{"a": 1}]},
        400,
        "BAD_REQUEST",
        "dataframe_records",
        id="custom-model-format",
    ),
    pytest.param(
        "/v1/chat/completions",
        {"messages": [{"role": "user", "content": "x"}]},
        400,
        "BAD_REQUEST",
        "'model'",
        id="openai-route-without-model",
    ),
    pytest.param(
        "/v1/embeddings",
        {"model": "chat", "input": "x"},
        400,
        "BAD_REQUEST",
        "llm/v1/chat",
        id="openai-route-task-mismatch",
    ),
    pytest.param(
        "/v1/chat/completions",
        {"model": "ghost", "messages": [{"role": "user", "content": "x"}]},
        404,
        "RESOURCE_DOES_NOT_EXIST",
        "ghost",
        id="openai-unknown-model",
    ),
]


@pytest.mark.parametrize(("path", "body", "status", "code", "phrase"), BAD_REQUESTS)
async def test_client_mistakes_get_clear_errors(
    client: Client, path: str, body: Any, status: int, code: str, phrase: str
) -> None:
    resp = await client.post(path, json=body)
    assert resp.status == status
    error = await resp.json()
    assert error["error_code"] == code
    assert phrase in error["message"]


async def test_malformed_and_oversized_bodies(client: Client) -> None:
    resp = await client.post("/serving-endpoints/chat/invocations", data=b"{not json")
    assert resp.status == 400
    assert "not valid JSON" in (await resp.json())["message"]
    big = b'{"messages": [{"role": "user", "content": "' + b"x" * (4 * 1024 * 1024) + b'"}]}'
    resp = await client.post("/serving-endpoints/chat/invocations", data=big)
    assert resp.status == 413
    assert "4 MB" in (await resp.json())["message"]


async def test_unknown_route_and_method_are_json(client: Client) -> None:
    resp = await client.get("/no/such/path")
    assert resp.status == 404
    assert (await resp.json())["error_code"] == "RESOURCE_DOES_NOT_EXIST"
    resp = await client.get("/serving-endpoints/chat/invocations")
    assert resp.status == 405
    assert "POST" in (await resp.json())["message"]


UPSTREAM_FAULTS = [
    pytest.param(
        {"status": 429, "headers": {"Retry-After": "7"}},
        429,
        "REQUEST_LIMIT_EXCEEDED",
        "7",
        id="429",
    ),
    pytest.param({"status": 500}, 500, "INTERNAL_ERROR", None, id="500"),
    pytest.param({"status": 503}, 503, "TEMPORARILY_UNAVAILABLE", "1", id="503"),
    pytest.param({"status": 401}, 401, "UNAUTHENTICATED", None, id="401"),
]


@pytest.mark.parametrize(("fault", "status", "code", "retry_after"), UPSTREAM_FAULTS)
async def test_upstream_errors_are_wrapped_with_their_status(
    client: Client,
    openai_sim: str,
    fault: dict[str, Any],
    status: int,
    code: str,
    retry_after: str | None,
) -> None:
    await sim(openai_sim, "DELETE", "/_sim/faults")
    await sim(openai_sim, "POST", "/_sim/faults", {"model": "gpt-4o-mini", "times": 1, **fault})
    resp = await client.post(
        "/serving-endpoints/chat/invocations", json={"messages": [{"role": "user", "content": "x"}]}
    )
    assert resp.status == status
    body = await resp.json()
    assert body["error_code"] == code
    wrapped = orjson.loads(body["message"])
    assert wrapped["external_model_provider"] == "openai"
    assert "error" in wrapped["external_model_error"]
    assert resp.headers.get("Retry-After") == retry_after
    assert "Unexpected error" not in body["message"]


async def test_a_provider_message_never_makes_databricks_sdk_retry(
    client: Client, openai_sim: str
) -> None:
    """databricks-sdk retries any error whose message holds "Unexpected error": a provider's
    own text is passed on with that one phrase lower-cased, in a body and in a stream."""
    said = {"error": {"message": "Unexpected error occurred, sorry", "type": "server_error"}}
    await sim(
        openai_sim,
        "POST",
        "/_sim/faults",
        {"model": "gpt-4o-mini", "status": 500, "body": said, "times": 1},
    )
    resp = await client.post(
        "/serving-endpoints/chat/invocations", json={"messages": [{"role": "user", "content": "x"}]}
    )
    body = await resp.json()
    assert resp.status == 500
    assert "Unexpected error" not in body["message"]
    assert "unexpected error occurred, sorry" in body["message"]


async def test_upstream_timeout_is_504(
    workspace: Workspace,
    openai_sim: str,
    in_process_app: Callable[..., Any],
    aiohttp_client: Callable[..., Awaitable[Client]],
) -> None:
    from servegate.transport.client import Timeouts

    write_yaml(
        workspace.manifests / "e.yaml",
        endpoint_doc("slow", [openai_entity("slow-model", openai_sim + "/v1")]),
    )
    client = await aiohttp_client(
        in_process_app(timeouts=Timeouts(connect=2, first_byte=0.3, idle=0.3))
    )
    await sim(
        openai_sim, "POST", "/_sim/faults", {"model": "slow-model", "latency_ms": 3000, "times": 1}
    )
    resp = await client.post(
        "/serving-endpoints/slow/invocations", json={"messages": [{"role": "user", "content": "x"}]}
    )
    assert resp.status == 504
    assert (await resp.json())["error_code"] == "DEADLINE_EXCEEDED"


async def test_stream_cut_midway_ends_with_an_error_event_then_done(
    client: Client, openai_sim: str
) -> None:
    await sim(
        openai_sim,
        "POST",
        "/_sim/faults",
        {"model": "gpt-4o-mini", "stream_cut_after": 2, "times": 1},
    )
    resp = await client.post(
        "/serving-endpoints/chat/invocations",
        json={
            "messages": [{"role": "user", "content": "one two three four five six"}],
            "stream": True,
        },
    )
    assert resp.status == 200
    lines = sse_lines(await resp.read())
    assert lines[-1] == "data: [DONE]"
    last = orjson.loads(lines[-2][6:])
    assert last["error"]["code"] == "TEMPORARILY_UNAVAILABLE"
    assert all("error" not in orjson.loads(line[6:]) for line in lines[:-2])


async def test_malformed_upstream_body_is_502(client: Client, openai_sim: str) -> None:
    await sim(
        openai_sim, "POST", "/_sim/faults", {"model": "gpt-4o-mini", "malformed": True, "times": 1}
    )
    resp = await client.post(
        "/serving-endpoints/chat/invocations", json={"messages": [{"role": "user", "content": "x"}]}
    )
    assert resp.status == 502
    assert "not JSON" in (await resp.json())["message"]


async def test_read_api_shapes(client: Client) -> None:
    for path in ("/api/2.0/serving-endpoints", "/api/2.0/serving-endpoints/"):
        resp = await client.get(path, allow_redirects=False)  # both answered, no redirect
        assert resp.status == 200
        names = [ep["name"] for ep in (await resp.json())["endpoints"]]
        assert names == ["chat", "comp", "emb", "split"]
    for path in ("/api/2.0/serving-endpoints/split", "/api/2.0/serving-endpoints/split/"):
        resp = await client.get(path, allow_redirects=False)
        assert resp.status == 200
        ep = await resp.json()
        assert ep["state"] == {"ready": "READY", "config_update": "NOT_UPDATING"}
        assert ep["task"] == "llm/v1/chat"
        assert ep["config"]["config_version"] == 1
        assert ep["config"]["traffic_config"]["routes"] == [
            {"served_model_name": "a", "traffic_percentage": 50},
            {"served_model_name": "b", "traffic_percentage": 50},
        ]
        assert ep["creation_timestamp"] > 1_600_000_000_000  # epoch milliseconds
        assert ep["config"]["served_entities"][0]["state"]["deployment"] == "DEPLOYMENT_READY"
    resp = await client.get("/api/2.0/serving-endpoints/ghost")
    assert resp.status == 404
    resp = await client.get("/.well-known/databricks-config")
    assert resp.status == 404
    assert (await resp.json())["error_code"] == "RESOURCE_DOES_NOT_EXIST"
    models = await (await client.get("/v1/models")).json()
    assert [m["id"] for m in models["data"]] == ["chat", "comp", "emb", "split"]


async def test_missing_secret_makes_the_endpoint_not_ready_with_the_reason(
    workspace: Workspace,
    openai_sim: str,
    in_process_app: Callable[..., Any],
    aiohttp_client: Callable[..., Awaitable[Client]],
) -> None:
    entity = openai_entity("gpt-4o-mini", openai_sim + "/v1")
    entity["external_model"]["openai_config"]["openai_api_key"] = "{{secrets/team_a/missing_key}}"
    write_yaml(
        workspace.manifests / "e.yaml",
        endpoint_doc("broken", [entity]),
        endpoint_doc("fine", [openai_entity("gpt-4o-mini", openai_sim + "/v1")]),
    )
    client = await aiohttp_client(in_process_app())
    listed = {
        ep["name"]: ep
        for ep in (await (await client.get("/api/2.0/serving-endpoints")).json())["endpoints"]
    }
    assert listed["fine"]["state"]["ready"] == "READY"
    assert listed["broken"]["state"]["ready"] == "NOT_READY"
    assert "team_a" in listed["broken"]["state"]["message"]
    assert "missing_key" in listed["broken"]["state"]["message"]
    resp = await client.post(
        "/serving-endpoints/broken/invocations",
        json={"messages": [{"role": "user", "content": "x"}]},
    )
    assert resp.status == 503
    body = await resp.json()
    assert body["error_code"] == "TEMPORARILY_UNAVAILABLE"
    assert "team_a" in body["message"]
    assert resp.headers["Retry-After"].isdigit()


async def test_invalid_manifest_is_listed_and_others_serve(
    workspace: Workspace,
    openai_sim: str,
    in_process_app: Callable[..., Any],
    aiohttp_client: Callable[..., Awaitable[Client]],
) -> None:
    bad = endpoint_doc(
        "bad",
        [
            openai_entity("m", openai_sim + "/v1", name="x"),
            openai_entity("n", openai_sim + "/v1", name="y"),
        ],
    )
    write_yaml(
        workspace.manifests / "e.yaml",
        bad,
        endpoint_doc("good", [openai_entity("m", openai_sim + "/v1")]),
    )
    client = await aiohttp_client(in_process_app())
    bad_ep = await (await client.get("/api/2.0/serving-endpoints/bad")).json()
    assert bad_ep["state"]["ready"] == "NOT_READY"
    assert "traffic_config" in bad_ep["state"]["message"]
    ok = await client.post(
        "/serving-endpoints/good/invocations", json={"messages": [{"role": "user", "content": "x"}]}
    )
    assert ok.status == 200


async def test_auth_file_requires_a_known_bearer_token(
    workspace: Workspace,
    openai_sim: str,
    in_process_app: Callable[..., Any],
    aiohttp_client: Callable[..., Awaitable[Client]],
) -> None:
    write_yaml(
        workspace.manifests / "e.yaml",
        endpoint_doc("chat", [openai_entity("m", openai_sim + "/v1")]),
    )
    auth = write_auth_file(workspace.root / "auth.yaml", {"tok-ana": ("ana@example.com", ["ds"])})
    client = await aiohttp_client(in_process_app(auth_file=auth))
    query = {"messages": [{"role": "user", "content": "x"}]}
    for headers, message in [
        ({}, "Missing bearer token"),
        ({"Authorization": "Bearer wrong"}, "Invalid access token"),
    ]:
        resp = await client.post("/serving-endpoints/chat/invocations", json=query, headers=headers)
        assert resp.status == 401
        body = await resp.json()
        assert body["error_code"] == "UNAUTHENTICATED"
        assert message in body["message"]
    resp = await client.get("/api/2.0/serving-endpoints")
    assert resp.status == 401
    ok = await client.post(
        "/serving-endpoints/chat/invocations",
        json=query,
        headers={"Authorization": "Bearer tok-ana"},
    )
    assert ok.status == 200
    for public in ("/healthz", "/readyz", "/metrics", "/.well-known/databricks-config"):
        assert (await client.get(public)).status in (200, 404)


async def test_metrics_count_requests_and_tokens(client: Client) -> None:
    await client.post(
        "/serving-endpoints/chat/invocations",
        json={"messages": [{"role": "user", "content": "x y"}]},
    )
    text = await (await client.get("/metrics")).text()
    assert (
        'servegate_requests_total{endpoint="chat",provider="openai",served_entity="gpt-4o-mini",status="200",task="llm/v1/chat"}'
        in text
    )
    assert (
        'gen_ai_client_token_usage_sum{endpoint="chat",gen_ai_operation_name="chat",'
        'gen_ai_provider_name="openai",gen_ai_request_model="gpt-4o-mini",'
        'gen_ai_token_type="input",served_entity="gpt-4o-mini"}' in text
    )
    # One duration and one token series per request, not a servegate_* twin of each.
    assert "servegate_request_duration_seconds" not in text
    assert "servegate_tokens_total" not in text
