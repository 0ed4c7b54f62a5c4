"""The GenAI metrics (OpenTelemetry semantic conventions, as Prometheus) after a known
sequence of requests: two answers, one stream, one provider error and one client error."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
from aiohttp import web
from aiohttp.test_utils import TestClient
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import Workspace, endpoint_doc, openai_entity, write_yaml

Client = TestClient[Any, Any]
CHAT = {"messages": [{"role": "user", "content": "one two three"}]}


def samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(
    all_samples: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str
) -> float:
    """The sum over every sample of ``name`` whose labels include ``labels``."""
    wanted = set(labels.items())
    return sum(v for (n, have), v in all_samples.items() if n == name and wanted <= have)


async def test_genai_metrics_after_a_known_sequence(
    workspace: Workspace,
    openai_sim: str,
    in_process_app: Callable[..., web.Application],
    aiohttp_client: Callable[..., Awaitable[Client]],
) -> None:
    write_yaml(
        workspace.manifests / "chat.yaml",
        endpoint_doc("chat", [openai_entity("gpt-4o-mini", openai_sim + "/v1")]),
    )
    client = await aiohttp_client(in_process_app())
    path = "/serving-endpoints/chat/invocations"
    for _ in range(2):
        assert (await client.post(path, json=CHAT)).status == 200
    stream = await client.post(path, json={**CHAT, "stream": True})
    assert stream.status == 200
    await stream.read()
    async with aiohttp.ClientSession() as s:  # the next upstream call fails with a 500
        await s.post(openai_sim + "/_sim/faults", json={"status": 500, "times": 1})
    assert (await client.post(path, json=CHAT)).status == 500
    assert (await client.post(path, json={"messages": []})).status == 400  # never reaches one

    seen = samples(await (await client.get("/metrics")).text())
    genai = {"gen_ai_operation_name": "chat", "gen_ai_provider_name": "openai",
             "gen_ai_request_model": "gpt-4o-mini", "endpoint": "chat"}  # fmt: skip
    duration = "gen_ai_server_request_duration_seconds_count"
    assert value(seen, duration, **genai) == 4
    assert value(seen, duration, **genai, status_class="2xx", stream="false") == 2
    assert value(seen, duration, **genai, status_class="2xx", stream="true") == 1
    assert value(seen, duration, **genai, status_class="5xx", error_type="500") == 1
    tokens = "gen_ai_client_token_usage"
    assert value(seen, f"{tokens}_count", **genai, gen_ai_token_type="input") == 3
    assert value(seen, f"{tokens}_sum", **genai, gen_ai_token_type="input") > 0
    assert value(seen, f"{tokens}_sum", **genai, gen_ai_token_type="output") > 0
    assert value(seen, "gen_ai_server_time_to_first_token_seconds_count", **genai) == 1
    assert value(seen, "gen_ai_server_time_per_output_token_seconds_count", **genai) == 1
    assert value(seen, "gen_ai_client_operation_duration_seconds_count", **genai) == 4
    assert value(seen, "servegate_gateway_overhead_seconds_count", endpoint="chat") == 4
    assert value(seen, "servegate_upstream_errors_total", status_class="5xx") == 1
    assert value(seen, "servegate_requester_requests_total") == 0  # off by default
