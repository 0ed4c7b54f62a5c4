"""The Vertex AI simulator over real HTTP: the JWT-bearer token endpoint (raw, and with
google-auth itself), bearer-token checks on the model endpoints, request validation,
deterministic answers, SSE framing, faults, and the translator's OAuth against it."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp.test_utils import TestClient
from cryptography.hazmat.primitives import serialization
from google.auth import crypt, jwt
from google.auth.transport.requests import Request
from google.oauth2 import service_account

from servegate.canonical.requests import parse_query
from servegate.ingress.errors import UpstreamError, UpstreamUnavailable
from servegate.providers.vertex import VertexProvider
from servegate.simulators.tokens import TokenRegistry
from servegate.simulators.vertex import (
    CLOUD_PLATFORM_SCOPE,
    EXAMPLE_ACCOUNT,
    JWT_BEARER_GRANT,
    create_vertex_app,
    generate_service_account,
)
from servegate.spec import ExternalModel, Task

pytestmark = pytest.mark.timeout(30)

INFO, KEY = generate_service_account(project_id="proj-1")
OTHER_INFO, _ = generate_service_account(project_id="proj-1", client_email=KEY.client_email)
STRANGER_INFO, _ = generate_service_account(project_id="proj-1")
GOOGLE_TOKEN_URI = "https://oauth2.googleapis.com/token"
PREFIX = "/v1/projects/proj-1/locations/us-central1/publishers/google/models"
Client = TestClient[Any, Any]


class Clock:
    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def tokens(clock: Clock) -> TokenRegistry:
    return TokenRegistry(clock=clock)


@pytest.fixture
def make_sim(aiohttp_client: Any, tokens: TokenRegistry) -> Callable[..., Any]:
    async def make(**options: Any) -> Client:
        app = create_vertex_app(accounts=[KEY], tokens=tokens, **options)
        return await aiohttp_client(app)  # type: ignore[no-any-return]

    return make


@pytest.fixture
async def sim(make_sim: Callable[..., Any]) -> Client:
    return await make_sim()  # type: ignore[no-any-return]


def assertion(info: dict[str, str] = INFO, *, kid: str | None = None, **claims: Any) -> str:
    now = int(time.time())
    payload = {
        "iss": info["client_email"],
        "scope": CLOUD_PLATFORM_SCOPE,
        "aud": GOOGLE_TOKEN_URI,
        "iat": now,
        "exp": now + 3600,
        **claims,
    }
    signer = crypt.RSASigner.from_service_account_info(info)
    return jwt.encode(signer, payload, key_id=kid).decode()  # type: ignore[no-untyped-call,no-any-return]


def grant(value: str | None = None, grant_type: str = JWT_BEARER_GRANT) -> dict[str, str]:
    return {"grant_type": grant_type, "assertion": value if value is not None else assertion()}


async def access_token(sim: Client, **claims: Any) -> str:
    resp = await sim.post("/token", data=grant(assertion(**claims)))
    assert resp.status == 200, await resp.text()
    return str((await resp.json())["access_token"])


async def call(sim: Client, path: str, body: Any, token: str | None = None) -> Any:
    headers = {"Authorization": f"Bearer {token or await access_token(sim)}"}
    return await sim.post(path, json=body, headers=headers)


HELLO = {"contents": [{"role": "user", "parts": [{"text": "hello there friend"}]}]}


# ---------------------------------------------------------------------- token grant


async def test_jwt_bearer_grant_issues_a_bearer_token(sim: Client, tokens: TokenRegistry) -> None:
    resp = await sim.post("/token", data=grant())
    body = await resp.json()
    assert resp.status == 200
    assert set(body) == {"access_token", "expires_in", "token_type"}
    assert (body["token_type"], body["expires_in"]) == ("Bearer", 3600)
    issued = tokens.lookup(body["access_token"])
    assert issued is not None
    assert (issued.client_id, issued.tenant, issued.audience) == (
        KEY.client_email,
        "proj-1",
        CLOUD_PLATFORM_SCOPE,
    )


async def test_google_auth_itself_gets_a_token(sim: Client) -> None:
    """The real client: it signs with the key and posts to the key's token_uri."""
    info = {**INFO, "token_uri": str(sim.make_url("/token"))}
    credentials = service_account.Credentials.from_service_account_info(  # type: ignore[no-untyped-call]
        info, scopes=[CLOUD_PLATFORM_SCOPE]
    )
    await asyncio.to_thread(credentials.refresh, Request())
    assert credentials.token
    resp = await call(sim, f"{PREFIX}/gemini-2.0-flash:generateContent", HELLO, credentials.token)
    assert resp.status == 200


TOKEN_REFUSALS = [
    pytest.param(
        grant(grant_type="client_credentials"),
        400,
        {
            "error": "unsupported_grant_type",
            "error_description": "Invalid grant_type: client_credentials",
        },
        id="wrong-grant-type",
    ),
    pytest.param(
        {"grant_type": JWT_BEARER_GRANT},
        400,
        {"error": "invalid_request", "error_description": "Missing required parameter: assertion"},
        id="no-assertion",
    ),
    pytest.param(
        grant(assertion(OTHER_INFO, kid=KEY.private_key_id)),
        400,
        {"error": "invalid_grant", "error_description": "Invalid JWT Signature."},
        id="signed-by-another-key",
    ),
    pytest.param(
        grant(assertion(OTHER_INFO)),
        400,
        {"error": "invalid_grant", "error_description": "Invalid JWT Signature."},
        id="unknown-key-id",
    ),
    pytest.param(
        grant(assertion(STRANGER_INFO)),
        400,
        {"error": "invalid_grant", "error_description": "Invalid grant: account not found"},
        id="unknown-account",
    ),
    pytest.param(
        grant(assertion(iat=int(time.time()) - 7200, exp=int(time.time()) - 3600)),
        400,
        {
            "error": "invalid_grant",
            "error_description": "Invalid JWT: Token must be a short-lived token (60 minutes) "
            "and in a reasonable timeframe. Check your iat and exp values in the JWT claim.",
        },
        id="expired-assertion",
    ),
    pytest.param(
        grant(assertion(exp=int(time.time()) + 7200)),
        400,
        {
            "error": "invalid_grant",
            "error_description": "Invalid JWT: Token must be a short-lived token (60 minutes) "
            "and in a reasonable timeframe. Check your iat and exp values in the JWT claim.",
        },
        id="assertion-lives-too-long",
    ),
    pytest.param(
        grant(assertion(aud="https://example.com/token")),
        400,
        {"error": "invalid_grant", "error_description": "Invalid JWT: Failed audience check."},
        id="wrong-audience",
    ),
    pytest.param(
        grant(assertion(scope="")),
        400,
        {
            "error": "invalid_scope",
            "error_description": "Invalid OAuth scope or ID token audience provided.",
        },
        id="no-scope",
    ),
    pytest.param(
        grant("not.a-jwt"),
        400,
        {"error": "invalid_grant", "error_description": "Invalid JWT: malformed."},
        id="malformed",
    ),
]


@pytest.mark.parametrize(("form", "status", "body"), TOKEN_REFUSALS)
async def test_token_refusals(sim: Client, form: dict[str, str], status: int, body: Any) -> None:
    resp = await sim.post("/token", data=form)
    assert (resp.status, await resp.json()) == (status, body)


async def test_token_endpoint_takes_only_forms(sim: Client) -> None:
    resp = await sim.post("/token", json=grant())
    assert resp.status == 400
    assert (await resp.json())["error"] == "invalid_request"


async def test_a_tampered_signature_is_refused(sim: Client) -> None:
    head, body, signature = assertion().split(".")
    flipped = ("A" if signature[5] != "A" else "B").join((signature[:5], signature[6:]))
    resp = await sim.post("/token", data=grant(f"{head}.{body}.{flipped}"))
    assert (await resp.json())["error_description"] == "Invalid JWT Signature."


# ------------------------------------------------------------------- bearer checks

AUTH_HINT = (
    "Expected OAuth 2 access token, login cookie or other valid authentication credential. "
    "See https://developers.google.com/identity/sign-in/web/devconsole-project."
)


async def test_missing_credentials(sim: Client) -> None:
    resp = await sim.post(f"{PREFIX}/gemini-2.0-flash:generateContent", json=HELLO)
    body = await resp.json()
    assert resp.status == 401
    assert body["error"]["status"] == "UNAUTHENTICATED"
    assert (
        body["error"]["message"]
        == f"Request is missing required authentication credential. {AUTH_HINT}"
    )
    assert body["error"]["details"][0]["reason"] == "CREDENTIALS_MISSING"


async def test_unknown_and_expired_tokens(sim: Client, clock: Clock) -> None:
    path = f"{PREFIX}/gemini-2.0-flash:generateContent"
    resp = await call(sim, path, HELLO, "ya29.not-issued-here")
    body = await resp.json()
    assert resp.status == 401
    assert (
        body["error"]["message"] == f"Request had invalid authentication credentials. {AUTH_HINT}"
    )
    token = await access_token(sim)
    assert (await call(sim, path, HELLO, token)).status == 200
    clock.now += 3601
    resp = await call(sim, path, HELLO, token)
    assert resp.status == 401
    assert (await resp.json())["error"]["details"][0]["reason"] == "ACCESS_TOKEN_EXPIRED"


async def test_a_token_without_cloud_platform_scope_is_forbidden(sim: Client) -> None:
    token = await access_token(sim, scope="https://www.googleapis.com/auth/devstorage.read_only")
    resp = await call(sim, f"{PREFIX}/gemini-2.0-flash:generateContent", HELLO, token)
    body = await resp.json()
    assert resp.status == 403
    assert body["error"]["message"] == "Request had insufficient authentication scopes."
    assert body["error"]["status"] == "PERMISSION_DENIED"


async def test_another_projects_resources_are_forbidden(sim: Client) -> None:
    path = "/v1/projects/someone-else/locations/us-central1/publishers/google/models/gemini-2.0-flash:generateContent"
    resp = await call(sim, path, HELLO)
    body = await resp.json()
    assert resp.status == 403
    assert body["error"]["message"].startswith("Permission 'aiplatform.endpoints.predict' denied")


@pytest.mark.parametrize(
    ("model_method", "status", "text"),
    [
        pytest.param(
            "gpt-4o:generateContent",
            404,
            "Publisher Model `projects/proj-1/locations/us-central1/publishers/google/models/gpt-4o` was not found",
            id="unknown-model",
        ),
        pytest.param(
            "gemini-2.0-flash:predict",
            400,
            "Gemini cannot be accessed through Vertex Predict/RawPredict API",
            id="gemini-via-predict",
        ),
        pytest.param(
            "text-bison:generateContent",
            400,
            "does not support generateContent",
            id="palm-via-generate",
        ),
        pytest.param("gemini-2.0-flash:chat", 404, "Method not found", id="unknown-method"),
    ],
)
async def test_model_and_method_routing(
    sim: Client, model_method: str, status: int, text: str
) -> None:
    resp = await call(sim, f"{PREFIX}/{model_method}", HELLO)
    assert resp.status == status
    assert text in (await resp.json())["error"]["message"]


async def test_models_option_restricts_the_catalogue(make_sim: Callable[..., Any]) -> None:
    sim = await make_sim(models=["gemini-2.0-flash"])
    assert (await call(sim, f"{PREFIX}/gemini-2.0-flash:generateContent", HELLO)).status == 200
    assert (await call(sim, f"{PREFIX}/gemini-1.5-pro:generateContent", HELLO)).status == 404


ENDPOINTS = "/v1/projects/proj-1/locations/us-central1/endpoints"


async def test_a_tuned_endpoint_answers_as_its_deployed_model(sim: Client) -> None:
    resp = await call(sim, f"{ENDPOINTS}/4567890123:generateContent", HELLO)
    body = await resp.json()
    assert resp.status == 200, body
    text = body["candidates"][0]["content"]["parts"][0]["text"]
    assert text == "Simulated reply from gemini-2.0-flash to: hello there friend"
    resp = await call(sim, f"{ENDPOINTS}/4567890123:streamGenerateContent?alt=sse", HELLO)
    assert resp.status == 200
    assert (await resp.read()).startswith(b"data: ")


@pytest.mark.parametrize(
    ("path", "status", "text"),
    [
        pytest.param(
            "/v1/projects/someone-else/locations/us-central1/endpoints/1:generateContent",
            403,
            "Permission 'aiplatform.endpoints.predict' denied on resource "
            "'//aiplatform.googleapis.com/projects/someone-else/locations/us-central1/endpoints/1'",
            id="other-project",
        ),
        pytest.param(f"{ENDPOINTS}/1:chat", 404, "Method not found", id="unknown-method"),
        pytest.param(
            f"{ENDPOINTS}/1:predict", 400, "Gemini cannot be accessed", id="tuned-gemini-predict"
        ),
        pytest.param(
            f"{ENDPOINTS}/99:generateContent",
            404,
            'Endpoint "projects/proj-1/locations/us-central1/endpoints/99" not found.',
            id="not-deployed",
        ),
        pytest.param(
            f"{ENDPOINTS}/2:generateContent", 400, "call :predict", id="embedder-generate"
        ),
    ],
)
async def test_endpoint_routing(
    make_sim: Callable[..., Any], path: str, status: int, text: str
) -> None:
    sim = await make_sim(endpoints={"1": "gemini-1.5-flash", "2": "text-embedding-004"})
    resp = await call(sim, path, HELLO)
    assert resp.status == status
    assert text in (await resp.json())["error"]["message"]


async def test_endpoints_take_the_same_bearer_checks(sim: Client) -> None:
    resp = await sim.post(f"{ENDPOINTS}/1:generateContent", json=HELLO)
    assert resp.status == 401
    resp = await call(sim, f"{ENDPOINTS}/1:generateContent", HELLO, "not-a-token")
    assert resp.status == 401
    token = await access_token(sim, scope="https://www.googleapis.com/auth/devstorage.read_only")
    assert (await call(sim, f"{ENDPOINTS}/1:generateContent", HELLO, token)).status == 403


async def test_an_embedding_endpoint_predicts(make_sim: Callable[..., Any]) -> None:
    sim = await make_sim(endpoints={"2": "text-embedding-004"})
    resp = await call(sim, f"{ENDPOINTS}/2:predict", {"instances": [{"content": "a b"}]})
    body = await resp.json()
    assert resp.status == 200, body
    assert body["predictions"][0]["embeddings"]["statistics"]["token_count"] == 2


async def test_endpoint_faults_match_the_endpoint_id(sim: Client) -> None:
    assert (await sim.post("/_sim/faults", json={"model": "77", "status": 429})).status == 200
    assert (await call(sim, f"{ENDPOINTS}/78:generateContent", HELLO)).status == 200
    assert (await call(sim, f"{ENDPOINTS}/77:generateContent", HELLO)).status == 429


# ---------------------------------------------------------------------- validation

INVALID_GEMINI = [
    pytest.param(
        {**HELLO, "max_tokens": 5},
        'Unknown name "max_tokens": Cannot find field.',
        id="openai-field",
    ),
    pytest.param(
        {**HELLO, "generationConfig": {"max_tokens": 5}},
        "Unknown name \"max_tokens\" at 'generation_config'",
        id="openai-field-in-config",
    ),
    pytest.param(
        {"contents": [{"role": "assistant", "parts": [{"text": "x"}]}]},
        "Please use a valid role: user, model.",
        id="assistant-role",
    ),
    pytest.param(
        {"contents": [{"role": "user", "parts": [{"text": ""}]}]},
        "empty text parameter",
        id="empty-text",
    ),
    pytest.param(
        {"contents": [{"role": "user", "parts": []}]}, "at least one parts field", id="no-parts"
    ),
    pytest.param({"contents": []}, "empty contents field", id="no-contents"),
    pytest.param(
        {**HELLO, "generationConfig": {"temperature": 3}},
        "temperature value of 3",
        id="temperature-range",
    ),
    pytest.param(
        {**HELLO, "generationConfig": {"responseSchema": {"type": "object"}}},
        "requires response_mime_type",
        id="schema-without-mime",
    ),
    pytest.param(
        {**HELLO, "tools": [{"functionDeclarations": [{"name": "bad name"}]}]},
        "Invalid function name",
        id="function-name",
    ),
]


@pytest.mark.parametrize(("body", "message"), INVALID_GEMINI)
async def test_gemini_request_validation(sim: Client, body: dict[str, Any], message: str) -> None:
    resp = await call(sim, f"{PREFIX}/gemini-2.0-flash:generateContent", body)
    error = (await resp.json())["error"]
    assert (resp.status, error["status"]) == (400, "INVALID_ARGUMENT")
    assert message in error["message"]


async def test_proto_names_are_accepted_as_protobuf_json_does(sim: Client) -> None:
    body = {**HELLO, "generation_config": {"max_output_tokens": 2}}
    resp = await call(sim, f"{PREFIX}/gemini-2.0-flash:generateContent", body)
    answer = await resp.json()
    assert resp.status == 200
    assert answer["candidates"][0]["finishReason"] == "MAX_TOKENS"


# ------------------------------------------------------------------------- answers


async def test_generate_content_answer_and_token_rule(sim: Client) -> None:
    body = {**HELLO, "systemInstruction": {"parts": [{"text": "be kind"}]}}
    resp = await call(sim, f"{PREFIX}/gemini-2.0-flash:generateContent", body)
    answer = await resp.json()
    assert resp.status == 200
    assert answer["candidates"] == [
        {
            "content": {
                "role": "model",
                "parts": [{"text": "Simulated reply from gemini-2.0-flash to: hello there friend"}],
            },
            "finishReason": "STOP",
        }
    ]
    assert answer["usageMetadata"] == {
        "promptTokenCount": 5,
        "candidatesTokenCount": 8,
        "totalTokenCount": 13,
    }
    assert answer["modelVersion"] == "gemini-2.0-flash"
    assert answer["responseId"] and answer["createTime"].endswith("Z")


async def test_generation_config_shapes_the_answer(sim: Client) -> None:
    config = {"candidateCount": 2, "maxOutputTokens": 3, "stopSequences": ["zzz"]}
    resp = await call(
        sim, f"{PREFIX}/gemini-2.0-flash:generateContent", {**HELLO, "generationConfig": config}
    )
    candidates = (await resp.json())["candidates"]
    assert [c.get("index") for c in candidates] == [None, 1]
    assert [c["content"]["parts"][0]["text"] for c in candidates] == ["Simulated reply from"] * 2
    assert [c["finishReason"] for c in candidates] == ["MAX_TOKENS"] * 2
    json_body = {**HELLO, "generationConfig": {"responseMimeType": "application/json"}}
    resp = await call(sim, f"{PREFIX}/gemini-2.0-flash:generateContent", json_body)
    text = (await resp.json())["candidates"][0]["content"]["parts"][0]["text"]
    assert orjson.loads(text) == {
        "reply": "Simulated reply from gemini-2.0-flash to: hello there friend"
    }


WEATHER = {
    "functionDeclarations": [
        {
            "name": "get_weather",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
        }
    ]
}


async def test_function_calling_round_trip(sim: Client) -> None:
    path = f"{PREFIX}/gemini-2.0-flash:generateContent"
    ask = {
        "contents": [{"role": "user", "parts": [{"text": "call get_weather"}]}],
        "tools": [WEATHER],
    }
    part = (await (await call(sim, path, ask)).json())["candidates"][0]["content"]["parts"][0]
    assert part == {"functionCall": {"name": "get_weather", "args": {"city": "call get_weather"}}}
    result = {"functionResponse": {"name": "get_weather", "response": {"content": "sunny"}}}
    follow_up = {
        "contents": [
            *ask["contents"],
            {"role": "model", "parts": [part]},
            {"role": "user", "parts": [result]},
        ],
        "tools": [WEATHER],
    }
    answer = await (await call(sim, path, follow_up)).json()
    assert answer["candidates"][0]["content"]["parts"][0]["text"].endswith(
        "to: the result of get_weather"
    )
    forced = {**HELLO, "tools": [WEATHER], "toolConfig": {"functionCallingConfig": {"mode": "ANY"}}}
    forced_part = (await (await call(sim, path, forced)).json())["candidates"][0]["content"][
        "parts"
    ][0]
    assert forced_part["functionCall"]["name"] == "get_weather"


async def test_sim_block_is_a_safety_stop(sim: Client) -> None:
    body = {"contents": [{"role": "user", "parts": [{"text": "sim:block this"}]}]}
    answer = await (await call(sim, f"{PREFIX}/gemini-2.0-flash:generateContent", body)).json()
    candidate = answer["candidates"][0]
    assert candidate["finishReason"] == "SAFETY" and "content" not in candidate


def sse_events(raw: bytes) -> list[dict[str, Any]]:
    """Vertex's framing: CRLF-separated ``data:`` events, nothing else, no terminator."""
    assert raw.endswith(b"\r\n\r\n")
    chunks = raw.split(b"\r\n\r\n")[:-1]
    assert all(chunk.startswith(b"data: ") and b"\n" not in chunk for chunk in chunks)
    return [orjson.loads(chunk[6:]) for chunk in chunks]


async def test_stream_generate_content_sse_framing(sim: Client) -> None:
    token = await access_token(sim)
    whole = await (
        await call(sim, f"{PREFIX}/gemini-2.0-flash:generateContent", HELLO, token)
    ).json()
    resp = await call(sim, f"{PREFIX}/gemini-2.0-flash:streamGenerateContent?alt=sse", HELLO, token)
    assert resp.status == 200
    assert resp.headers["Content-Type"].startswith("text/event-stream")
    events = sse_events(await resp.read())
    assert len(events) == 4
    text = "".join(e["candidates"][0]["content"]["parts"][0]["text"] for e in events)
    assert text == whole["candidates"][0]["content"]["parts"][0]["text"]
    assert [e["candidates"][0].get("finishReason") for e in events] == [None, None, None, "STOP"]
    assert events[-1]["usageMetadata"] == whole["usageMetadata"]
    assert events[0]["usageMetadata"]["candidatesTokenCount"] == 2


async def test_stream_without_alt_sse_is_a_json_array(sim: Client) -> None:
    resp = await call(sim, f"{PREFIX}/gemini-2.0-flash:streamGenerateContent", HELLO)
    events = await resp.json()
    assert isinstance(events, list) and events[-1]["candidates"][0]["finishReason"] == "STOP"


async def test_text_bison_predict(sim: Client) -> None:
    body = {"instances": [{"prompt": "Once upon"}], "parameters": {"candidateCount": 2}}
    answer = await (await call(sim, f"{PREFIX}/text-bison@002:predict", body)).json()
    assert [p["content"] for p in answer["predictions"]] == [
        "Simulated completion from text-bison@002 for: Once upon",
        "Simulated completion from text-bison@002 for: Once upon [1]",
    ]
    assert answer["predictions"][0]["safetyAttributes"]["blocked"] is False
    assert answer["metadata"]["tokenMetadata"] == {
        "inputTokenCount": {"totalTokens": 2},
        "outputTokenCount": {"totalTokens": 15},
    }


async def test_chat_bison_predict_and_alternation(sim: Client) -> None:
    body = {
        "instances": [{"context": "terse", "messages": [{"author": "user", "content": "hi bot"}]}]
    }
    answer = await (await call(sim, f"{PREFIX}/chat-bison:predict", body)).json()
    assert answer["predictions"][0]["candidates"] == [
        {"author": "bot", "content": "Simulated reply from chat-bison to: hi bot"}
    ]
    two = {
        "instances": [
            {"messages": [{"author": "user", "content": "a"}, {"author": "bot", "content": "b"}]}
        ]
    }
    resp = await call(sim, f"{PREFIX}/chat-bison:predict", two)
    assert resp.status == 400
    assert "odd number of messages" in (await resp.json())["error"]["message"]


async def test_embeddings_predict(sim: Client) -> None:
    body = {
        "instances": [{"content": "a b"}, {"content": "c", "task_type": "RETRIEVAL_QUERY"}],
        "parameters": {"outputDimensionality": 4},
    }
    answer = await (await call(sim, f"{PREFIX}/text-embedding-004:predict", body)).json()
    first = answer["predictions"][0]["embeddings"]
    assert len(first["values"]) == 4
    assert first["statistics"] == {"truncated": False, "token_count": 2}
    again = await (await call(sim, f"{PREFIX}/text-embedding-004:predict", body)).json()
    assert again["predictions"] == answer["predictions"]  # deterministic


@pytest.mark.parametrize(
    ("model", "body", "message"),
    [
        pytest.param(
            "text-bison",
            {"instances": [{"prompt": "x"}], "parameters": {"max_tokens": 1}},
            "Invalid parameter: max_tokens",
            id="palm-openai-parameter",
        ),
        pytest.param("text-bison", {"instances": []}, "at least one instance", id="no-instances"),
        pytest.param(
            "text-embedding-004",
            {"instances": [{"content": "x", "task_type": "NOPE"}]},
            "Invalid task_type",
            id="task-type",
        ),
        pytest.param(
            "text-embedding-004",
            {"instances": [{"text": "x"}]},
            'Unknown name "text"',
            id="embedding-field",
        ),
    ],
)
async def test_predict_validation(sim: Client, model: str, body: Any, message: str) -> None:
    resp = await call(sim, f"{PREFIX}/{model}:predict", body)
    assert resp.status == 400
    assert message in (await resp.json())["error"]["message"]


# -------------------------------------------------------------------------- faults


async def fault(sim: Client, **spec: Any) -> None:
    assert (await sim.post("/_sim/faults", json=spec)).status == 200


async def test_status_fault_gets_googles_error_body(sim: Client) -> None:
    token = await access_token(sim)
    await fault(sim, model="gemini-2.0-flash", status=429, headers={"Retry-After": "3"}, times=1)
    resp = await call(sim, f"{PREFIX}/gemini-2.0-flash:streamGenerateContent?alt=sse", HELLO, token)
    error = (await resp.json())["error"]
    assert (resp.status, resp.headers["Retry-After"]) == (429, "3")
    assert (error["code"], error["status"]) == (429, "RESOURCE_EXHAUSTED")
    assert error["message"].startswith("Resource exhausted. Please try again later.")
    assert (
        await call(sim, f"{PREFIX}/gemini-2.0-flash:generateContent", HELLO, token)
    ).status == 200


async def test_token_endpoint_faults_match_the_client_email(sim: Client) -> None:
    await fault(sim, model=KEY.client_email, status=500, times=1)
    resp = await sim.post("/token", data=grant())
    assert (resp.status, await resp.json()) == (
        500,
        {"error": "internal_failure", "error_description": "Backend Error"},
    )
    assert (await sim.post("/token", data=grant())).status == 200


async def test_stream_cut_drops_the_connection_early(sim: Client) -> None:
    token = await access_token(sim)
    await fault(sim, model="gemini-2.0-flash", stream_cut_after=2)
    resp = await call(sim, f"{PREFIX}/gemini-2.0-flash:streamGenerateContent?alt=sse", HELLO, token)
    received: list[bytes] = []

    async def collect() -> None:
        async for chunk in resp.content.iter_any():
            received.append(chunk)

    with pytest.raises(aiohttp.ClientPayloadError):
        await collect()
    assert b"".join(received).count(b"data: ") == 2


async def test_malformed_stream_event(sim: Client) -> None:
    token = await access_token(sim)
    await fault(sim, model="gemini-2.0-flash", malformed=True)
    resp = await call(sim, f"{PREFIX}/gemini-2.0-flash:streamGenerateContent?alt=sse", HELLO, token)
    chunks = (await resp.read()).split(b"\r\n\r\n")
    assert chunks[1] == b'data: {"candidates": ['


async def test_gate_parks_a_stream_until_opened(sim: Client) -> None:
    token = await access_token(sim)
    await fault(sim, model="gemini-2.0-flash", gate="g", gate_after=1)
    resp = await call(sim, f"{PREFIX}/gemini-2.0-flash:streamGenerateContent?alt=sse", HELLO, token)
    first = await asyncio.wait_for(resp.content.readuntil(b"\r\n\r\n"), 5)
    assert first.startswith(b"data: ")
    reading = asyncio.ensure_future(resp.read())
    await asyncio.sleep(0)
    assert not reading.done()
    await sim.post("/_sim/gates/g/open")
    rest = await asyncio.wait_for(reading, 5)
    assert rest.count(b"data: ") == 3


async def test_requests_are_recorded(sim: Client) -> None:
    await call(sim, f"{PREFIX}/gemini-2.0-flash:generateContent", HELLO)
    recorded = (await (await sim.get("/_sim/requests")).json())["requests"]
    assert [r["path"] for r in recorded] == ["/token", f"{PREFIX}/gemini-2.0-flash:generateContent"]
    assert recorded[0]["form"]["grant_type"] == JWT_BEARER_GRANT
    assert recorded[1]["json"] == HELLO
    assert recorded[1]["headers"]["authorization"].startswith("Bearer ")


# ------------------------------------------------ the translator's OAuth against it


def provider(
    sim: Client, info: dict[str, str] = INFO, token_uri: str | None = None
) -> VertexProvider:
    key = {**info, "token_uri": token_uri or str(sim.make_url("/token"))}
    external = ExternalModel.model_validate(
        {
            "name": "gemini-2.0-flash",
            "provider": "google-cloud-vertex-ai",
            "task": "llm/v1/chat",
            "google_cloud_vertex_ai_config": {
                "project_id": "proj-1",
                "region": "us-central1",
                "private_key": "{{secrets/gcp/sa}}",
                "vertex_api_base": str(sim.make_url("")),
            },
        }
    )
    return VertexProvider(external, {"private_key": orjson.dumps(key).decode()})


CHAT = {
    "messages": [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "call get_weather please"},
    ],
    "max_tokens": 40,
    "temperature": 0.5,
    "stop": ["zzz"],
    "tools": [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "parameters": WEATHER["functionDeclarations"][0]["parameters"],
            },
        }
    ],
    "tool_choice": "auto",
    "response_format": {"type": "text"},
}


async def test_translated_request_is_accepted_and_answer_translated(
    sim: Client, tokens: TokenRegistry
) -> None:
    vertex = provider(sim)
    query = parse_query(Task.CHAT, CHAT)
    vertex.check(query)
    request = await vertex.authorize(vertex.build_request(query))
    resp = await sim.session.post(request.url, data=request.body, headers=dict(request.headers))
    assert resp.status == 200, await resp.text()
    answer = vertex.parse_response(query, await resp.read()).body
    assert answer["choices"][0]["finish_reason"] == "tool_calls"
    assert answer["choices"][0]["message"]["tool_calls"][0]["function"]["name"] == "get_weather"
    assert tokens.issued_count == 1


async def test_token_is_fetched_once_and_shared(sim: Client, tokens: TokenRegistry) -> None:
    vertex = provider(sim)
    request = vertex.build_request(parse_query(Task.CHAT, HELLO_CHAT))
    signed = await asyncio.gather(*(vertex.authorize(request) for _ in range(5)))
    signed.append(await vertex.authorize(request))
    assert len({r.headers["Authorization"] for r in signed}) == 1
    assert tokens.issued_count == 1


async def test_token_is_refreshed_before_it_expires(
    make_sim: Callable[..., Any], tokens: TokenRegistry
) -> None:
    """google-auth calls a token stale 3 min 45 s before expiry: a 200 s token always is."""
    sim = await make_sim(token_lifetime_s=200)
    vertex = provider(sim)
    request = vertex.build_request(parse_query(Task.CHAT, HELLO_CHAT))
    first = await vertex.authorize(request)
    second = await vertex.authorize(request)
    assert first.headers["Authorization"] != second.headers["Authorization"]
    assert tokens.issued_count == 2


async def test_refused_grant_is_a_wrapped_401(sim: Client) -> None:
    vertex = provider(sim, STRANGER_INFO)
    with pytest.raises(UpstreamError) as raised:
        await vertex.authorize(vertex.build_request(parse_query(Task.CHAT, HELLO_CHAT)))
    assert (raised.value.status, raised.value.error_code) == (401, "UNAUTHENTICATED")
    assert raised.value.upstream_body == {
        "error": "invalid_grant",
        "error_description": "Invalid grant: account not found",
    }


async def test_unreachable_token_endpoint_is_unavailable(sim: Client) -> None:
    vertex = provider(sim, token_uri="http://127.0.0.1:9/token")  # nothing listens on 9
    with pytest.raises(UpstreamUnavailable, match="could not reach the OAuth token endpoint"):
        await vertex.authorize(vertex.build_request(parse_query(Task.CHAT, HELLO_CHAT)))


HELLO_CHAT = {"messages": [{"role": "user", "content": "hello"}]}


def test_example_key_belongs_to_the_default_account() -> None:
    """examples/secrets/gcp/service_account works against `create_vertex_app()` as is."""
    path = Path(__file__).resolve().parents[2] / "examples/secrets/gcp/service_account"
    info = orjson.loads(path.read_bytes())
    private = serialization.load_pem_private_key(info["private_key"].encode(), password=None)
    public = private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    assert public.decode() == EXAMPLE_ACCOUNT.public_key_pem
    assert (info["client_email"], info["private_key_id"], info["project_id"]) == (
        EXAMPLE_ACCOUNT.client_email,
        EXAMPLE_ACCOUNT.private_key_id,
        EXAMPLE_ACCOUNT.project_id,
    )
    assert info["token_uri"] == "http://127.0.0.1:8908/token"
    assert "SIMULATOR KEY" in info["_comment"]
