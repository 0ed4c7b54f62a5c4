"""The AI21 Studio (J2 complete) simulator over real HTTP: paths, bearer auth, FastAPI-style
validation, deterministic completions and token lists, and the shared fault controls."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient

from servegate.simulators.ai21 import DEFAULT_AI21_API_KEY, create_ai21_app

pytestmark = pytest.mark.timeout(15)

Client = TestClient[Any, Any]
KEY = "ai21-test-key-42"
AUTH = {"Authorization": f"Bearer {KEY}"}
PATH = "/studio/v1/j2-mid/complete"


@pytest.fixture
async def client(aiohttp_client: Callable[..., Awaitable[Client]]) -> Client:
    return await aiohttp_client(create_ai21_app(api_keys=[KEY]))


async def _post(
    client: Client, body: Any, *, path: str = PATH, headers: dict[str, str] | None = None
) -> tuple[int, Any]:
    resp = await client.post(path, json=body, headers=AUTH if headers is None else headers)
    return resp.status, await resp.json()


async def test_completion_is_deterministic_with_token_lists(client: Client) -> None:
    status, body = await _post(client, {"prompt": "Life is like", "numResults": 2})
    assert status == 200
    assert isinstance(body["id"], str) and body["id"]
    assert body["prompt"]["text"] == "Life is like"
    assert [t["generatedToken"]["token"] for t in body["prompt"]["tokens"]] == [
        "Life",
        "▁is",
        "▁like",
    ]
    assert [t["textRange"] for t in body["prompt"]["tokens"]] == [
        {"start": 0, "end": 4},
        {"start": 4, "end": 7},
        {"start": 7, "end": 12},
    ]
    first, second = body["completions"]
    assert first["data"]["text"] == "Simulated completion from j2-mid for: Life is like"
    assert second["data"]["text"] == "Simulated completion from j2-mid for: Life is like [1]"
    assert first["finishReason"] == {"reason": "endoftext"}
    # Token rule: one per word, plus <|endoftext|> when the completion ended naturally.
    assert len(first["data"]["tokens"]) == 8 + 1
    assert first["data"]["tokens"][-1]["generatedToken"]["token"] == "<|endoftext|>"
    assert first["data"]["tokens"][0]["topTokens"] is None


@pytest.mark.parametrize(
    ("params", "text", "finish"),
    [
        pytest.param(
            {"maxTokens": 3},
            "Simulated completion from",
            {"reason": "length", "length": 3},
            id="maxTokens cuts",
        ),
        pytest.param(
            {"stopSequences": ["from", "xyz"]},
            "Simulated completion ",
            {"reason": "stop", "sequence": "from"},
            id="first stop sequence wins",
        ),
        pytest.param(
            {"maxTokens": 8},
            "Simulated completion from j2-mid for: Life is like",
            {"reason": "length", "length": 8},
            id="no room left for endoftext",
        ),
    ],
)
async def test_limits(
    client: Client, params: dict[str, Any], text: str, finish: dict[str, Any]
) -> None:
    status, body = await _post(client, {"prompt": "Life is like", **params})
    assert status == 200
    completion = body["completions"][0]
    assert (completion["data"]["text"], completion["finishReason"]) == (text, finish)
    assert all(
        t["generatedToken"]["token"] != "<|endoftext|>" for t in completion["data"]["tokens"]
    )


async def test_top_k_return_lists_alternatives(client: Client) -> None:
    _, body = await _post(client, {"prompt": "hi", "topKReturn": 3})
    top = body["completions"][0]["data"]["tokens"][0]["topTokens"]
    assert [t["token"] for t in top] == ["Simulated", "▁alt1", "▁alt2"]


@pytest.mark.parametrize(
    "headers",
    [
        pytest.param({}, id="missing"),
        pytest.param({"Authorization": "Bearer wrong"}, id="wrong key"),
        pytest.param({"Authorization": KEY}, id="no Bearer scheme"),
        pytest.param({"api-key": KEY}, id="Azure-style header"),
    ],
)
async def test_auth_is_checked(client: Client, headers: dict[str, str]) -> None:
    status, body = await _post(client, {"prompt": "x"}, headers=headers)
    assert (status, body) == (401, {"detail": "Forbidden: Bad or missing API token."})


async def test_default_key_is_the_documented_one(
    aiohttp_client: Callable[..., Awaitable[Client]],
) -> None:
    default = await aiohttp_client(create_ai21_app())
    headers = {"Authorization": f"Bearer {DEFAULT_AI21_API_KEY}"}
    assert (await _post(default, {"prompt": "x"}, headers=headers))[0] == 200


async def test_paths_models_and_methods(client: Client) -> None:
    assert await _post(client, {"prompt": "x"}, path="/studio/v1/gpt-4/complete") == (
        404,
        {"detail": "Not Found"},
    )
    assert await _post(client, {"prompt": "x"}, path="/studio/v1/j2-mid/completions") == (
        404,
        {"detail": "Not Found"},
    )
    resp = await client.get(PATH, headers=AUTH)
    assert (resp.status, await resp.json()) == (405, {"detail": "Method Not Allowed"})
    status, body = await _post(client, {"prompt": "x"}, path="/studio/v1/j2-mid/my-bot/complete")
    assert status == 200 and body["completions"][0]["data"]["text"].startswith(
        "Simulated completion from j2-mid"
    )


VALIDATION_CASES = [
    pytest.param(
        {"maxTokens": 5},
        [{"loc": ["body", "prompt"], "msg": "field required", "type": "value_error.missing"}],
        id="missing prompt",
    ),
    pytest.param(
        {"prompt": "x", "max_tokens": 5, "stream": True},
        [
            {"loc": ["body", "max_tokens"], "msg": "extra fields not permitted", "type": "value_error.extra"},
            {"loc": ["body", "stream"], "msg": "extra fields not permitted", "type": "value_error.extra"},
        ],
        id="OpenAI names leaking upstream",
    ),
    pytest.param(
        {"prompt": "x", "temperature": 1.5, "numResults": 0},
        [
            {
                "loc": ["body", "numResults"],
                "msg": "ensure this value is greater than or equal to 1",
                "type": "value_error.number.not_ge",
                "ctx": {"limit_value": 1},
            },
            {
                "loc": ["body", "temperature"],
                "msg": "ensure this value is less than or equal to 1.0",
                "type": "value_error.number.not_le",
                "ctx": {"limit_value": 1.0},
            },
        ],
        id="ranges",
    ),
    pytest.param(
        {"prompt": "x", "frequencyPenalty": 0.5, "presencePenalty": {"applyToNumbers": "no"}},
        [
            {"loc": ["body", "frequencyPenalty"], "msg": "value is not a valid dict", "type": "type_error.dict"},
            {"loc": ["body", "presencePenalty", "scale"], "msg": "field required", "type": "value_error.missing"},
            {
                "loc": ["body", "presencePenalty", "applyToNumbers"],
                "msg": "value could not be parsed to a boolean",
                "type": "type_error.bool",
            },
        ],
        id="penalties must be objects with a scale",
    ),
    pytest.param(
        {"prompt": 7, "stopSequences": "."},
        [
            {"loc": ["body", "prompt"], "msg": "str type expected", "type": "type_error.str"},
            {"loc": ["body", "stopSequences"], "msg": "value is not a valid list", "type": "type_error.list"},
        ],
        id="types",
    ),
]  # fmt: skip


@pytest.mark.parametrize(("body", "detail"), VALIDATION_CASES)
async def test_validation_is_fastapi_style(
    client: Client, body: dict[str, Any], detail: list[dict[str, Any]]
) -> None:
    assert await _post(client, body) == (422, {"detail": detail})


async def test_sdk_fields_are_tolerated_and_bad_json_refused(client: Client) -> None:
    status, _ = await _post(client, {"model": "j2-mid", "prompt": "x", "customModel": None})
    assert status == 200
    resp = await client.post(PATH, data=b"{not json", headers=AUTH)
    assert resp.status == 422
    assert (await resp.json())["detail"][0]["type"] == "value_error.jsondecode"


async def test_faults_use_ai21_bodies_and_requests_are_recorded(client: Client) -> None:
    await client.post("/_sim/faults", json={"model": "j2-mid", "status": 429, "times": 1,
                                            "headers": {"Retry-After": "3"}})  # fmt: skip
    resp = await client.post(PATH, json={"prompt": "x"}, headers=AUTH)
    assert (resp.status, await resp.json()) == (429, {"detail": "50 per 1 minute"})
    assert resp.headers["Retry-After"] == "3"
    assert (await _post(client, {"prompt": "x"}))[0] == 200  # times: 1 used up
    await client.post("/_sim/faults", json={"model": "j2-ultra", "status": 500})
    assert (await _post(client, {"prompt": "x"}))[0] == 200  # another model's fault
    recorded = (await (await client.get("/_sim/requests")).json())["requests"]
    assert recorded[0]["path"] == PATH
    assert recorded[0]["headers"]["authorization"] == f"Bearer {KEY}"
    assert recorded[0]["json"] == {"prompt": "x"}


async def test_cut_and_malformed_bodies(client: Client) -> None:
    await client.post("/_sim/faults", json={"stream_cut_after": 0, "times": 1})
    resp = await client.post(PATH, json={"prompt": "x"}, headers=AUTH)
    with pytest.raises(aiohttp.ClientPayloadError):
        await resp.read()
    await client.post("/_sim/faults", json={"malformed": True, "times": 1})
    resp = await client.post(PATH, json={"prompt": "x"}, headers=AUTH)
    assert resp.status == 200
    with pytest.raises(json.JSONDecodeError):
        await resp.json()
