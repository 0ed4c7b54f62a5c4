"""The Azure OpenAI simulator against the openai SDK's AzureOpenAI client and raw HTTP."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import openai
import pytest
from aiohttp.test_utils import TestClient

from servegate.simulators import (
    COGNITIVE_SERVICES_AUDIENCE,
    TokenRegistry,
    control_of,
    create_azure_openai_app,
)

pytestmark = pytest.mark.timeout(15)

KEY = "azure-key-0123456789"
VERSION = "2024-10-21"
DEPLOYMENT = "chat-prod"
MESSAGES: Any = [{"role": "user", "content": "hello azure"}]
CHAT_PATH = f"/openai/deployments/{DEPLOYMENT}/chat/completions"


class FakeClock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def tokens(clock: FakeClock) -> TokenRegistry:
    return TokenRegistry(clock=clock)


@pytest.fixture
async def sim(aiohttp_client: Any, tokens: TokenRegistry) -> TestClient[Any, Any]:
    app = create_azure_openai_app(
        api_keys=[KEY],
        entra_tokens=tokens,
        deployments={DEPLOYMENT: "gpt-4o-2024-08-06", "embed": "text-embedding-3-small"},
    )
    return await aiohttp_client(app)  # type: ignore[no-any-return]


def azure_client(sim: TestClient[Any, Any], **auth: Any) -> openai.AsyncAzureOpenAI:
    return openai.AsyncAzureOpenAI(
        azure_endpoint=str(sim.make_url("")).rstrip("/"),
        api_version=VERSION,
        max_retries=0,
        timeout=10,
        **auth,
    )


@pytest.fixture
async def sdk(sim: TestClient[Any, Any]) -> AsyncIterator[openai.AsyncAzureOpenAI]:
    async with azure_client(sim, api_key=KEY) as client:
        yield client


def live_token(tokens: TokenRegistry, audience: str = COGNITIVE_SERVICES_AUDIENCE) -> str:
    issued = tokens.issue(client_id="c", tenant="t", audience=audience, lifetime_s=3599)
    return issued.access_token


async def test_chat_with_api_key(sim: TestClient[Any, Any], sdk: openai.AsyncAzureOpenAI) -> None:
    result = await sdk.chat.completions.create(model=DEPLOYMENT, messages=MESSAGES)

    sent = control_of(sim.app).requests()[0]
    assert sent["path"] == CHAT_PATH
    assert sent["query"] == {"api-version": VERSION}
    assert sent["headers"]["api-key"] == KEY
    assert "authorization" not in sent["headers"]
    assert result.model == "gpt-4o-2024-08-06"
    assert (
        result.choices[0].message.content
        == "Simulated reply from gpt-4o-2024-08-06 to: hello azure"
    )
    extra = result.model_extra or {}
    assert extra["prompt_filter_results"][0]["content_filter_results"]["hate"]["filtered"] is False
    choice_extra = result.choices[0].model_extra or {}
    assert "content_filter_results" in choice_extra


async def test_streaming_starts_with_the_prompt_filter_chunk(
    sdk: openai.AsyncAzureOpenAI,
) -> None:
    stream = await sdk.chat.completions.create(
        model=DEPLOYMENT, messages=MESSAGES, stream=True, stream_options={"include_usage": True}
    )
    chunks = [chunk async for chunk in stream]

    assert chunks[0].choices == []
    assert "prompt_filter_results" in (chunks[0].model_extra or {})
    text = "".join(c.choices[0].delta.content or "" for c in chunks[1:] if c.choices)
    assert text == "Simulated reply from gpt-4o-2024-08-06 to: hello azure"
    assert chunks[-1].choices == []
    assert chunks[-1].usage is not None


async def test_embeddings_and_completions(sdk: openai.AsyncAzureOpenAI) -> None:
    embedded = await sdk.embeddings.create(model="embed", input="some text")
    completed = await sdk.completions.create(model=DEPLOYMENT, prompt="Say hi")

    assert embedded.model == "text-embedding-3-small"
    assert len(embedded.data[0].embedding) == 8
    assert completed.choices[0].text == "Simulated completion from gpt-4o-2024-08-06 for: Say hi"


async def test_entra_bearer_token_is_accepted(
    sim: TestClient[Any, Any], tokens: TokenRegistry
) -> None:
    token = live_token(tokens)
    async with azure_client(sim, azure_ad_token=token) as client:
        result = await client.chat.completions.create(model=DEPLOYMENT, messages=MESSAGES)

    assert result.choices[0].finish_reason == "stop"
    assert control_of(sim.app).requests()[0]["headers"]["authorization"] == (f"Bearer {token}")


@pytest.mark.parametrize("problem", ["unknown", "expired", "wrong_audience"])
async def test_bad_bearer_tokens_are_refused(
    sim: TestClient[Any, Any], tokens: TokenRegistry, clock: FakeClock, problem: str
) -> None:
    if problem == "unknown":
        token = "not-a-token-we-issued"
    elif problem == "expired":
        token = live_token(tokens)
        clock.now += 3600
    else:
        token = live_token(tokens, "https://graph.microsoft.com")

    async with azure_client(sim, azure_ad_token=token) as client:
        with pytest.raises(openai.AuthenticationError) as caught:
            await client.chat.completions.create(model=DEPLOYMENT, messages=MESSAGES)

    assert caught.value.body == {
        "statusCode": 401,
        "message": "Unauthorized. Access token is missing, invalid, audience is incorrect "
        "(https://cognitiveservices.azure.com), or have expired.",
    }


async def test_wrong_api_key_gets_azures_401(sim: TestClient[Any, Any]) -> None:
    async with azure_client(sim, api_key="wrong") as client:
        with pytest.raises(openai.AuthenticationError) as caught:
            await client.chat.completions.create(model=DEPLOYMENT, messages=MESSAGES)

    assert isinstance(caught.value.body, dict)
    assert caught.value.body["code"] == "401"
    assert caught.value.body["message"].startswith(
        "Access denied due to invalid subscription key or wrong API endpoint."
    )


async def test_api_version_is_required_and_checked(sim: TestClient[Any, Any]) -> None:
    headers = {"api-key": KEY}
    body = {"messages": MESSAGES}

    missing = await sim.post(CHAT_PATH, json=body, headers=headers)
    unsupported = await sim.post(f"{CHAT_PATH}?api-version=2019-01-01", json=body, headers=headers)

    assert missing.status == 404
    assert await missing.json() == {"error": {"code": "404", "message": "Resource not found"}}
    assert unsupported.status == 400
    assert await unsupported.json() == {
        "error": {"code": "BadRequest", "message": "API version not supported"}
    }


async def test_unknown_deployment_and_path(sim: TestClient[Any, Any]) -> None:
    headers = {"api-key": KEY}
    query = f"?api-version={VERSION}"

    deployment = await sim.post(
        f"/openai/deployments/nope/chat/completions{query}", json={}, headers=headers
    )
    path = await sim.post(f"/openai/deployments/{DEPLOYMENT}/chat{query}", json={}, headers=headers)

    assert deployment.status == 404
    assert (await deployment.json())["error"]["code"] == "DeploymentNotFound"
    assert path.status == 404
    assert await path.json() == {"error": {"code": "404", "message": "Resource not found"}}


async def test_openai_validation_applies(sdk: openai.AsyncAzureOpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        await sdk.chat.completions.create(
            model=DEPLOYMENT, messages=MESSAGES, extra_body={"top_k": 2}
        )

    assert isinstance(caught.value.body, dict)
    assert caught.value.body["message"] == "Unrecognized request argument supplied: top_k"


async def test_rate_limit_fault_uses_azures_message(
    sim: TestClient[Any, Any], sdk: openai.AsyncAzureOpenAI
) -> None:
    await sim.post(
        "/_sim/faults",
        json={"model": DEPLOYMENT, "status": 429, "headers": {"Retry-After": "7"}, "times": 1},
    )

    with pytest.raises(openai.RateLimitError) as caught:
        await sdk.chat.completions.create(model=DEPLOYMENT, messages=MESSAGES)

    assert isinstance(caught.value.body, dict)
    assert caught.value.body["code"] == "429"
    assert caught.value.body["message"].startswith(
        f"Requests to the ChatCompletions_Create Operation under Azure OpenAI API version "
        f"{VERSION} have exceeded token rate limit"
    )
    assert "Please retry after 7 seconds." in caught.value.body["message"]
    assert caught.value.response.headers["retry-after"] == "7"
