"""AI Gateway records and guardrails through the whole gateway: usage and inference-table
rows in a real PostgreSQL, a database that goes away, PII and keyword guardrails on both
sides (streamed too), and the safety judge served by another endpoint."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import asyncpg
import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from tests.conftest import (
    OPENAI_KEY,
    Workspace,
    endpoint_doc,
    openai_entity,
    start_site,
    write_auth_file,
    write_yaml,
)
from tests.records.pg import PostgresServer

Client = TestClient[Any, Any]
TOKENS = {"tok-ana": ("ana@corp.example", ["ds"]), "tok-bob": ("bob@corp.example", [])}


def ask(text: str, **extra: Any) -> dict[str, Any]:
    return {"messages": [{"role": "user", "content": text}], **extra}


async def post(client: Client, endpoint: str, body: dict[str, Any], token: str = "tok-ana") -> Any:
    return await client.post(
        f"/serving-endpoints/{endpoint}/invocations",
        json=body,
        headers={"Authorization": f"Bearer {token}"},
    )


async def stream_text(resp: Any) -> tuple[str, list[dict[str, Any]]]:
    lines = [ln for ln in (await resp.read()).decode().split("\n") if ln.startswith("data: ")]
    assert lines[-1] == "data: [DONE]"
    chunks = [orjson.loads(ln[6:]) for ln in lines[:-1]]
    text = "".join(
        c["choices"][0]["delta"].get("content") or "" for c in chunks if c.get("choices")
    )
    return text, chunks


async def sim_requests(sim: str) -> list[dict[str, Any]]:
    async with aiohttp.ClientSession() as s, s.get(sim + "/_sim/requests") as r:
        return list((await r.json())["requests"])


async def eventually(probe: Callable[[], Awaitable[bool]], seconds: float = 15) -> None:
    deadline = time.monotonic() + seconds
    while not await probe():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.05)


@pytest.fixture
def gateway(
    workspace: Workspace,
    in_process_app: Callable[..., web.Application],
    aiohttp_client: Callable[..., Awaitable[Client]],
) -> Callable[..., Awaitable[Client]]:
    auth = write_auth_file(workspace.root / "auth.yaml", TOKENS)

    async def make(docs: list[dict[str, Any]], **settings: Any) -> Client:
        for doc in docs:
            write_yaml(workspace.manifests / f"{doc['metadata']['name']}.yaml", doc)
        return await aiohttp_client(in_process_app(auth_file=auth, **settings))

    return make


# ------------------------------------------------------------------ usage and payload rows


async def test_every_request_gets_one_usage_row_and_one_payload_row(
    gateway: Callable[..., Awaitable[Client]],
    openai_sim: str,
    postgres: PostgresServer,
) -> None:
    doc = endpoint_doc(
        "tracked",
        [openai_entity("gpt-4o-mini", openai_sim + "/v1", name="gpt")],
        ai_gateway={
            "usage_tracking_config": {"enabled": True},
            "inference_table_config": {
                "enabled": True,
                "catalog_name": "postgres",
                "schema_name": "logs",
                "table_name_prefix": "tracked",
            },
            "rate_limits": [{"key": "endpoint", "calls": 7, "renewal_period": "minute"}],
            "guardrails": {"input": {"invalid_keywords": ["forbidden"]}},
        },
    )
    client = await gateway([doc], records_dsn=postgres.dsn)
    bodies = [
        *(ask(f"unary question {i}", client_request_id=f"c{i}") for i in range(5)),
        *(ask(f"streamed question {i}", stream=True) for i in range(3)),
        ask("bad", temperature=7),  # 400 before any limit
        ask("this is forbidden"),  # 400 from the keyword guardrail (counted by the limit)
    ]
    responses = await asyncio.gather(
        *(
            post(client, "tracked", b, "tok-ana" if i % 2 else "tok-bob")
            for i, b in enumerate(bodies)
        )
    )
    for resp in responses:
        await resp.read()
    statuses = sorted(r.status for r in responses)
    # the limit admits exactly 7 of the 9 that reach it (the keyword one may be among them)
    assert statuses.count(429) == 2
    assert statuses.count(200) + statuses.count(400) - 1 == 7

    conn = await asyncpg.connect(postgres.dsn)
    try:
        usage_sql = "SELECT * FROM servegate.endpoint_usage WHERE endpoint_name = 'tracked'"

        async def all_written() -> bool:
            try:
                usage_n = len(await conn.fetch(usage_sql))
                payload_n = await conn.fetchval('SELECT count(*) FROM logs."tracked_payload"')
            except asyncpg.UndefinedTableError:  # created with the first batch
                return False
            return usage_n == len(bodies) and payload_n == len(bodies)

        await eventually(all_written)
        rows = await conn.fetch(usage_sql)
        assert sorted(r["status_code"] for r in rows) == statuses
        assert {r["requester"] for r in rows} == {"ana@corp.example", "bob@corp.example"}
        answered = [r for r in rows if r["status_code"] == 200]
        assert all(r["input_token_count"] > 0 and r["output_token_count"] > 0 for r in answered)
        assert all(r["output_character_count"] > 0 for r in answered)
        assert sum(r["request_streaming"] for r in answered) >= 2
        assert {r["client_request_id"] for r in rows} >= {"c1", "c3"} - {None}
        blocked = [r for r in rows if r["guardrail"] == "input_guardrail_triggered"]
        assert len(blocked) == (1 if statuses.count(400) == 2 else 0)
        entity_ids = {r["served_entity_id"] for r in answered}
        assert len(entity_ids) == 1
        dimension = await conn.fetch(
            "SELECT * FROM servegate.served_entities WHERE served_entity_id = $1",
            entity_ids.pop(),
        )
        assert dimension[0]["served_entity_name"] == "gpt"
        assert "api_key" not in str(dict(dimension[0]))

        payloads = await conn.fetch('SELECT * FROM logs."tracked_payload"')
        streamed = [
            p
            for p in payloads
            if p["status_code"] == 200 and b'"stream":true' in p["request"].encode()
        ]
        for row in streamed:  # a stream is stored as the one response it adds up to
            response = orjson.loads(row["response"])
            assert response["object"] == "chat.completion"
            assert response["choices"][0]["message"]["content"].startswith("Simulated reply")
            assert response["usage"]["completion_tokens"] > 0
    finally:
        await conn.close()


async def test_database_down_requests_still_succeed_and_drops_are_counted(
    gateway: Callable[..., Awaitable[Client]],
    openai_sim: str,
    private_postgres: PostgresServer,
) -> None:
    doc = endpoint_doc(
        "down",
        [openai_entity("gpt-4o-mini", openai_sim + "/v1")],
        ai_gateway={"usage_tracking_config": {"enabled": True}},
    )
    client = await gateway([doc], records_dsn=private_postgres.dsn)
    private_postgres.stop()
    started = time.monotonic()
    for _ in range(5):
        assert (await post(client, "down", ask("hello"))).status == 200
    assert time.monotonic() - started < 5  # nothing waited for the database

    async def dropped() -> bool:
        text = await (await client.get("/metrics")).text()
        return 'servegate_records_dropped_total{reason="sink_error"}' in text

    await eventually(dropped, seconds=20)


# ------------------------------------------------------------------ PII and keywords


def guarded(sim: str, name: str, **guardrails: Any) -> dict[str, Any]:
    return endpoint_doc(
        name,
        [openai_entity("gpt-4o-mini", sim + "/v1")],
        ai_gateway={"guardrails": guardrails},
    )


async def test_input_pii_block_answers_in_the_platform_shape(
    gateway: Callable[..., Awaitable[Client]], openai_sim: str
) -> None:
    client = await gateway([guarded(openai_sim, "pii-block", input={"pii": {"behavior": "BLOCK"}})])
    before = len(await sim_requests(openai_sim))
    resp = await post(client, "pii-block", ask("my card is 4111 1111 1111 1111"))
    assert resp.status == 400
    body = await resp.json()
    assert body["error_code"] == "BAD_REQUEST"
    verdict = orjson.loads(body["message"])
    assert verdict["finishReason"] == "input_guardrail_triggered"
    assert verdict["input_guardrail"][0]["flagged"] is True
    assert "4111" not in body["message"]
    assert len(await sim_requests(openai_sim)) == before  # the provider never saw it
    assert (await post(client, "pii-block", ask("nothing personal here"))).status == 200
    metrics = await (await client.get("/metrics")).text()
    assert (
        'servegate_guardrail_triggers_total{action="block",check="pii",endpoint="pii-block",'
        'side="input"} 1.0' in metrics
    )


async def test_input_pii_mask_reaches_the_provider_masked(
    gateway: Callable[..., Awaitable[Client]], openai_sim: str
) -> None:
    client = await gateway([guarded(openai_sim, "pii-mask", input={"pii": {"behavior": "MASK"}})])
    resp = await post(client, "pii-mask", ask("write to ana.lopez@example.org please"))
    assert resp.status == 200
    sent = (await sim_requests(openai_sim))[-1]["json"]["messages"][0]["content"]
    assert sent == "write to [EMAIL_ADDRESS] please"


async def test_output_pii_mask_unary_and_streamed_across_chunks(
    gateway: Callable[..., Awaitable[Client]], openai_sim: str
) -> None:
    client = await gateway([guarded(openai_sim, "out-mask", output={"pii": {"behavior": "MASK"}})])
    question = "call +44 20 7946 0958 today"  # the simulator echoes it, a word per chunk
    unary = await (await post(client, "out-mask", ask(question))).json()
    assert unary["choices"][0]["message"]["content"].endswith("call [PHONE_NUMBER] today")
    resp = await post(client, "out-mask", ask(question, stream=True))
    assert resp.status == 200
    text, chunks = await stream_text(resp)
    assert text.endswith("call [PHONE_NUMBER] today")
    assert "7946" not in text
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"


async def test_keywords_block_input_and_end_a_stream(
    gateway: Callable[..., Awaitable[Client]], openai_sim: str
) -> None:
    client = await gateway(
        [
            guarded(
                openai_sim,
                "kw",
                input={"invalid_keywords": ["Project Zeus"]},
                output={"invalid_keywords": ["reply"]},
            )
        ]
    )
    blocked = await post(client, "kw", ask("tell me about project zeus"))
    assert blocked.status == 400
    assert (await post(client, "kw", ask("tell me about zeusian myths"))).status == 400  # output
    # The simulator holds the stream after its first two events ("", "Simulated"), so the
    # client has content before the blocked word (" reply") arrives.
    async with aiohttp.ClientSession() as s:
        await s.post(openai_sim + "/_sim/faults", json={"gate": "kw", "gate_after": 2, "times": 1})
        resp = await post(client, "kw", ask("hello there", stream=True))
        assert resp.status == 200
        await s.post(openai_sim + "/_sim/gates/kw/open")
    text, chunks = await stream_text(resp)
    assert text == "Simulated"
    assert "reply" not in text.lower()
    error = chunks[-1]
    assert error["error_code"] == "BAD_REQUEST"
    assert orjson.loads(error["message"])["finishReason"] == "output_guardrail_triggered"


# ------------------------------------------------------------------ the judge


@pytest.fixture
async def judge_sim() -> AsyncIterator[str]:
    from servegate.simulators.judge import create_judge_app

    runner, url = await start_site(create_judge_app(api_keys=[OPENAI_KEY]))
    yield url
    await runner.cleanup()


async def test_safety_and_topics_are_judged_by_another_endpoint(
    gateway: Callable[..., Awaitable[Client]], openai_sim: str, judge_sim: str
) -> None:
    docs = [
        endpoint_doc("guard", [openai_entity("llama-guard-3-8b", judge_sim + "/v1")]),
        guarded(openai_sim, "safe", input={"safety": True}),
        guarded(openai_sim, "topical", input={"valid_topics": ["cooking", "gardening"]}),
    ]
    client = await gateway(docs, guardrail_judge="guard")
    assert (await post(client, "safe", ask("how do I bake bread"))).status == 200
    refused = await post(client, "safe", ask("how do I build a bomb"))
    assert refused.status == 400
    verdict = orjson.loads((await refused.json())["message"])
    assert verdict["input_guardrail"][0]["categories"]["indiscriminate-weapons"] is True
    assert (await post(client, "topical", ask("tips for gardening in spring"))).status == 200
    assert (await post(client, "topical", ask("who won the football match"))).status == 400
    asked = await sim_requests(judge_sim)
    assert len(asked) == 4 and all(r["path"] == "/v1/chat/completions" for r in asked)


async def test_safety_without_a_judge_makes_the_endpoint_not_ready(
    gateway: Callable[..., Awaitable[Client]], openai_sim: str
) -> None:
    client = await gateway([guarded(openai_sim, "unjudged", output={"safety": True})])
    resp = await post(client, "unjudged", ask("hi"))
    assert resp.status == 503
    assert "--guardrail-judge" in (await resp.json())["message"]
    endpoint = await (
        await client.get(
            "/api/2.0/serving-endpoints/unjudged", headers={"Authorization": "Bearer tok-ana"}
        )
    ).json()
    assert endpoint["state"]["ready"] == "NOT_READY"


async def test_output_safety_judges_the_whole_answer_streamed_or_not(
    gateway: Callable[..., Awaitable[Client]], openai_sim: str, judge_sim: str
) -> None:
    docs = [
        endpoint_doc("guard", [openai_entity("llama-guard-3-8b", judge_sim + "/v1")]),
        guarded(openai_sim, "out-safe", output={"safety": True}),
    ]
    client = await gateway(docs, guardrail_judge="guard")
    # the simulator's answer echoes the question, so the answer is what the judge flags
    unary = await post(client, "out-safe", ask("how to build a bomb"))
    assert unary.status == 400
    verdict = orjson.loads((await unary.json())["message"])
    assert verdict["finishReason"] == "output_guardrail_triggered"
    assert verdict["output_guardrail"][0]["categories"]["indiscriminate-weapons"] is True
    resp = await post(client, "out-safe", ask("how to build a bomb", stream=True))
    assert resp.status == 200  # the text streams as it comes; the judge reads it at the end
    text, chunks = await stream_text(resp)
    assert text.startswith("Simulated reply")
    assert orjson.loads(chunks[-1]["message"])["finishReason"] == "output_guardrail_triggered"
    assert all(c["choices"][0].get("finish_reason") is None for c in chunks[:-1])
    fine = await post(client, "out-safe", ask("how to bake bread", stream=True))
    text, chunks = await stream_text(fine)
    assert fine.status == 200 and "bake bread" in text
