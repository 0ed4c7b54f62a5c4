"""Rows for the record tests, and a bounded wait."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from datetime import UTC, datetime

from servegate.records.rows import PayloadRow, PayloadTable, UsageRow, served_entity_id

T0 = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)
ENTITY_ID = served_entity_id("chat", "gpt", "rev1")


def usage(i: int, *, endpoint: str = "chat", **changes: object) -> UsageRow:
    fields: dict[str, object] = {
        "databricks_request_id": f"req-{i}",
        "client_request_id": f"client-{i}" if i % 2 else None,
        "requester": f"user{i % 3}@example.com",
        "status_code": 200 if i % 5 else 429,
        "request_time": T0.replace(second=i % 60),
        "input_token_count": i,
        "output_token_count": 2 * i,
        "input_character_count": 4 * i,
        "output_character_count": 8 * i,
        "usage_context": {"end_user_to_charge": f"team-{i % 4}"} if i % 3 else None,
        "request_streaming": i % 2 == 0,
        "served_entity_id": ENTITY_ID,
        "endpoint_name": endpoint,
        "guardrail": "input_guardrail_triggered" if i % 7 == 0 else None,
    }
    fields.update(changes)
    return UsageRow(**fields)  # type: ignore[arg-type]


def payload(i: int, target: PayloadTable, **changes: object) -> PayloadRow:
    fields: dict[str, object] = {
        "target": target,
        "databricks_request_id": f"req-{i}",
        "client_request_id": None,
        "request_time": T0,
        "status_code": 200,
        "execution_duration_ms": 40 + i,
        "request": f'{{"messages": [{{"role": "user", "content": "hi {i}"}}]}}',
        "response": f'{{"choices": [{{"message": {{"content": "hello {i}"}}}}]}}',
        "served_entity_id": ENTITY_ID,
        "requester": "ana@example.com",
    }
    fields.update(changes)
    return PayloadRow.capped(**fields)  # type: ignore[arg-type]


async def until(condition: Callable[[], bool], within: float = 5.0, what: str = "") -> None:
    """Poll ``condition`` until it holds; fail after ``within`` seconds."""
    deadline = time.monotonic() + within
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {within} s waiting for {what or condition}")
        await asyncio.sleep(0.01)
