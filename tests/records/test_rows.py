"""Record rows (ids, size caps, table names) and the log sink."""

from __future__ import annotations

import logging
from datetime import date

import orjson
import pytest

from servegate.records.logsink import LOGGER_NAME, LogSink
from servegate.records.rows import (
    REQUEST_TOO_LARGE,
    RESPONSE_TOO_LARGE,
    PayloadTable,
    ServedEntityRow,
    cap_payload,
    served_entity_id,
)
from servegate.records.writer import RecordWriter
from servegate.spec import ExternalModel, InferenceTableConfig
from tests.records.samples import T0, payload, usage

TARGET = PayloadTable("main", "logs", "chat")


def test_served_entity_ids_are_stable_and_distinct() -> None:
    one = served_entity_id("chat", "gpt", "rev1")
    assert one == served_entity_id("chat", "gpt", "rev1")
    others = {
        served_entity_id("chat", "gpt", "rev2"),
        served_entity_id("chat", "gpt-4", "rev1"),
        served_entity_id("chat-gpt", "", "rev1"),
        served_entity_id("chat", "gpt", "rev11"),
    }
    assert one not in others and len(others) == 4


def test_served_entity_row_never_carries_the_provider_config() -> None:
    model = ExternalModel.model_validate(
        {
            "name": "gpt-4o-mini",
            "provider": "openai",
            "task": "llm/v1/chat",
            "openai_config": {"openai_api_key_plaintext": "sk-SECRET-canary"},
        }
    )
    row = ServedEntityRow.external(
        endpoint="chat",
        served_entity_name="gpt",
        model=model,
        config_version=3,
        revision="rev3",
        change_time=T0,
    )
    assert row.served_entity_id == served_entity_id("chat", "gpt", "rev3")
    assert row.external_model_config == {
        "provider": "openai",
        "name": "gpt-4o-mini",
        "task": "llm/v1/chat",
    }
    assert (row.entity_type, row.entity_name, row.task) == (
        "EXTERNAL_MODEL",
        "gpt-4o-mini",
        "llm/v1/chat",
    )
    assert b"SECRET" not in orjson.dumps(row.record())


@pytest.mark.parametrize(
    ("value", "limit", "kept"),
    [
        (None, 10, None),
        ("x" * 10, 10, "x" * 10),
        ("x" * 11, 10, None),
        ("é" * 5, 10, "é" * 5),  # 10 bytes
        ("é" * 6, 10, None),  # 6 characters, 12 bytes
        ("€" * 3, 10, "€" * 3),
        (b"abc", 3, "abc"),
        (b"abcd", 3, None),
        (b"\xff", 3, "\ufffd"),
    ],
)
def test_payload_cap_counts_utf8_bytes(
    value: str | bytes | None, limit: int, kept: str | None
) -> None:
    assert cap_payload(value, limit) == kept


def test_oversized_payloads_become_null_with_their_codes() -> None:
    row = payload(1, TARGET, request="x" * 20, response="y" * 5, limit=10)
    assert (row.request, row.response, row.logging_error_codes) == (
        None,
        "y" * 5,
        [REQUEST_TOO_LARGE],
    )
    row = payload(1, TARGET, request=b"{}", response="y" * 20, limit=10)
    assert (row.request, row.response, row.logging_error_codes) == (
        "{}",
        None,
        [RESPONSE_TOO_LARGE],
    )
    row = payload(1, TARGET, request="x" * 20, response="y" * 20, limit=10)
    assert row.logging_error_codes == [REQUEST_TOO_LARGE, RESPONSE_TOO_LARGE]
    assert row.request_date == date(2025, 3, 1) and row.size == 0


def test_payload_table_follows_the_inference_table_config() -> None:
    enabled = InferenceTableConfig(enabled=True, catalog_name="ml", schema_name="logs")
    assert PayloadTable.of(enabled, "chat") == PayloadTable("ml", "logs", "chat")
    assert PayloadTable.of(enabled, "chat").qualified_name == "ml.logs.chat_payload"  # type: ignore[union-attr]
    named = enabled.model_copy(update={"table_name_prefix": "bot"})
    assert PayloadTable.of(named, "chat") == PayloadTable("ml", "logs", "bot")
    assert PayloadTable.of(InferenceTableConfig(enabled=False), "chat") is None
    assert PayloadTable.of(None, "chat") is None


async def test_log_sink_writes_one_json_line_per_row(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER_NAME)
    writer = RecordWriter(LogSink(), max_delay=0.01)
    await writer.start()
    writer.submit(usage(4))
    writer.submit(payload(4, TARGET))
    await writer.close()
    lines = [r.getMessage() for r in caplog.records if r.name == LOGGER_NAME]
    assert len(lines) == 2 and all("\n" not in line for line in lines)
    first, second = (orjson.loads(line) for line in lines)
    assert first["table"] == "endpoint_usage"
    assert first["request_time"] == "2025-03-01T12:00:04Z"
    assert first["usage_context"] == {"end_user_to_charge": "team-0"}
    assert (
        first["input_token_count"] == 4 and first["served_entity_id"] == usage(4).served_entity_id
    )
    assert second["table"] == "main.logs.chat_payload" and "target" not in second
    assert second["request_date"] == "2025-03-01" and second["logging_error_codes"] == []
    assert orjson.loads(second["request"])["messages"][0]["content"] == "hi 4"
