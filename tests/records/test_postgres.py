"""The PostgreSQL sink against a real, private PostgreSQL server."""

from __future__ import annotations

import asyncio
import re
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import timedelta
from typing import Any

import asyncpg
import orjson

from servegate.records.pgschema import DDL, PAYLOAD_TABLE_SQL, USAGE_COLUMNS
from servegate.records.postgres import PostgresSink
from servegate.records.rows import (
    REQUEST_TOO_LARGE,
    RESPONSE_TOO_LARGE,
    PayloadTable,
    ServedEntityRow,
)
from servegate.records.writer import RecordWriter
from servegate.spec import ExternalModel
from tests.conftest import REPO
from tests.records.pg import PostgresServer
from tests.records.samples import T0, payload, until, usage

DOCS = REPO / "docs" / "records.md"


@asynccontextmanager
async def connect(dsn: str) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(dsn, timeout=10)
    try:
        yield conn
    finally:
        await conn.close()


def writer_for(dsn: str, schema: str, **settings: Any) -> RecordWriter:
    settings.setdefault("max_delay", 0.02)
    return RecordWriter(PostgresSink(dsn, schema=schema, connect_timeout=2), **settings)


async def test_migrations_are_idempotent_and_safe_at_once(
    postgres: PostgresServer, schema: str
) -> None:
    sinks = [PostgresSink(postgres.dsn, schema=schema) for _ in range(3)]
    assert await asyncio.gather(*(s.migrate() for s in sinks)) == [1, 1, 1]
    assert await sinks[0].migrate() == 1
    async with connect(postgres.dsn) as conn:
        steps = await conn.fetch(f"SELECT version, description FROM {schema}.schema_migrations")
        columns = await conn.fetch(
            "SELECT column_name FROM information_schema.columns "
            "WHERE table_schema = $1 AND table_name = 'endpoint_usage' ORDER BY ordinal_position",
            schema,
        )
    assert [tuple(s) for s in steps] == [(1, "endpoint_usage and served_entities")]
    assert tuple(c["column_name"] for c in columns) == USAGE_COLUMNS
    for sink in sinks:
        await sink.close()


async def test_writers_starting_together_share_one_schema(
    postgres: PostgresServer, schema: str
) -> None:
    writers = [writer_for(postgres.dsn, schema) for _ in range(2)]
    await asyncio.gather(*(w.start() for w in writers))
    writers[0].submit(usage(1))
    writers[1].submit(usage(2))
    await asyncio.gather(*(w.close() for w in writers))
    async with connect(postgres.dsn) as conn:
        count = await conn.fetchval(f"SELECT count(*) FROM {schema}.endpoint_usage")
        versions = await conn.fetchval(f"SELECT count(*) FROM {schema}.schema_migrations")
    assert (count, versions) == (2, 1)
    assert all(w.written == 1 and not any(w.dropped.values()) for w in writers)


async def test_rows_submitted_concurrently_arrive_exactly(
    postgres: PostgresServer, schema: str
) -> None:
    writer = writer_for(postgres.dsn, schema, batch_size=100)
    await writer.start()

    async def client(first: int) -> None:
        for i in range(first, first + 50):
            writer.submit(usage(i, endpoint=f"ep-{first % 3}"))
            await asyncio.sleep(0)  # interleave with the other clients and the writer

    await asyncio.gather(*(client(n * 50) for n in range(20)))
    await writer.close(timeout=10)
    assert writer.written == 1000 and not any(writer.dropped.values())
    async with connect(postgres.dsn) as conn:
        rows = await conn.fetch(f"SELECT * FROM {schema}.endpoint_usage")
    stored = {r["databricks_request_id"]: dict(r) for r in rows}
    assert len(rows) == len(stored) == 1000
    for i in (0, 1, 7, 42, 999):
        expected = usage(i, endpoint=f"ep-{(i // 50 * 50) % 3}").record()
        got = stored[f"req-{i}"]
        got["usage_context"] = got["usage_context"] and orjson.loads(got["usage_context"])
        assert got == expected


async def test_served_entities_keep_one_row_per_config(
    postgres: PostgresServer, schema: str
) -> None:
    def entity(entity: str, version: int, **changes: Any) -> ServedEntityRow:
        changes.setdefault("change_time", T0)
        model = ExternalModel.model_validate(
            {
                "name": "claude-3-5-sonnet",
                "provider": "anthropic",
                "task": "llm/v1/chat",
                "anthropic_config": {"anthropic_api_key": "{{secrets/a/key}}"},
            }
        )
        return ServedEntityRow.external(
            endpoint="chat",
            served_entity_name=entity,
            model=model,
            config_version=version,
            revision=f"rev{version}",
            **changes,
        )

    writer = writer_for(postgres.dsn, schema)
    await writer.start()
    writer.submit(entity("claude", 1))
    writer.submit(entity("claude", 2))
    await until(lambda: writer.written == 2)
    # another replica announces version 1 later; then the endpoint is deleted
    writer.submit(entity("claude", 1, change_time=T0 + timedelta(hours=1)))
    writer.submit(entity("claude", 2, endpoint_delete_time=T0 + timedelta(days=1)))
    await writer.close()
    async with connect(postgres.dsn) as conn:
        rows = await conn.fetch(
            f"SELECT * FROM {schema}.served_entities ORDER BY endpoint_config_version"
        )
    assert [r["endpoint_config_version"] for r in rows] == [1, 2]
    assert all(r["change_time"] == T0 for r in rows)
    assert [r["endpoint_delete_time"] for r in rows] == [None, T0 + timedelta(days=1)]
    assert rows[0]["served_entity_id"] == entity("claude", 1).served_entity_id
    assert orjson.loads(rows[0]["external_model_config"]) == {
        "provider": "anthropic",
        "name": "claude-3-5-sonnet",
        "task": "llm/v1/chat",
    }
    assert (rows[0]["entity_type"], rows[0]["entity_name"]) == (
        "EXTERNAL_MODEL",
        "claude-3-5-sonnet",
    )


async def test_payload_rows_go_to_the_catalogs_database(
    postgres: PostgresServer, schema: str
) -> None:
    catalog = f"cat_{uuid.uuid4().hex[:8]}"
    async with connect(postgres.dsn) as conn:
        await conn.execute(f'CREATE DATABASE "{catalog}"')
    target = PayloadTable(catalog.upper(), "Logs", "chat-bot")  # names fold to lower case
    missing = PayloadTable(f"nosuch_{uuid.uuid4().hex[:8]}", "logs", "chat")
    unusable = PayloadTable(catalog, 'logs"; DROP TABLE x; --', "chat")
    writer = writer_for(postgres.dsn, schema, batch_size=10)
    await writer.start()
    writer.submit(payload(1, target))
    writer.submit(payload(2, target, request="x" * 50, response="y" * 60, limit=40))
    writer.submit(payload(3, target, response="\x00 nul"))
    writer.submit(payload(4, missing))
    writer.submit(payload(5, unusable))
    writer.submit(usage(6))
    await writer.close()
    assert (writer.written, writer.dropped["sink_error"]) == (4, 2)
    async with connect(postgres.dsn_for(catalog)) as conn:
        rows = await conn.fetch(
            'SELECT * FROM logs."chat-bot_payload" ORDER BY databricks_request_id'
        )
        unquoted = await conn.fetchval(
            "SELECT count(*) FROM logs.\"chat-bot_payload\" WHERE request::jsonb ? 'messages'"
        )
    assert [r["databricks_request_id"] for r in rows] == ["req-1", "req-2", "req-3"]
    first = dict(rows[0])
    expected = payload(1, target).record()
    assert first == expected
    assert (rows[1]["request"], rows[1]["response"]) == (None, None)
    assert rows[1]["logging_error_codes"] == [REQUEST_TOO_LARGE, RESPONSE_TOO_LARGE]
    assert rows[2]["response"] == "\ufffd nul"  # PostgreSQL text cannot hold NUL
    assert unquoted == 2
    async with connect(postgres.dsn) as conn:
        assert await conn.fetchval(f"SELECT count(*) FROM {schema}.endpoint_usage") == 1


async def test_database_outage_drops_without_blocking_then_writing_resumes(
    private_postgres: PostgresServer, schema: str
) -> None:
    server = private_postgres
    writer = writer_for(
        server.dsn,
        schema,
        batch_size=10,
        max_queue=50,
        backoff_initial=0.05,
        backoff_max=0.2,
    )
    await writer.start()
    submitted = 0

    def submit_timed() -> float:
        nonlocal submitted
        started = time.perf_counter()
        writer.submit(usage(submitted))
        submitted += 1
        return time.perf_counter() - started

    for _ in range(10):
        submit_timed()
    await until(lambda: writer.written == 10, what="rows before the outage")

    server.stop()
    slowest = 0.0
    deadline = time.monotonic() + 10
    while not (writer.dropped["sink_error"] and writer.dropped["queue_full"]):
        assert time.monotonic() < deadline, f"no drops counted: {writer.dropped}"
        slowest = max(slowest, submit_timed())
        await asyncio.sleep(0.001)  # let the writer try (and fail) meanwhile
    assert slowest < 0.05, f"submit took {slowest:.4f} s while the database was down"

    server.start()
    before = writer.written
    for _ in range(5):
        submit_timed()
    await until(lambda: writer.written >= before + 5, within=10, what="writing to resume")
    await writer.close(timeout=10)
    async with connect(server.dsn) as conn:
        stored = await conn.fetchval(f"SELECT count(*) FROM {schema}.endpoint_usage")
    assert stored == writer.written
    assert writer.written + sum(writer.dropped.values()) == submitted


def test_the_docs_carry_the_ddl() -> None:
    assert DDL in DOCS.read_text()


async def test_pre_created_tables_and_the_documented_queries(postgres: PostgresServer) -> None:
    """The DDL run by hand lets a user without CREATE privileges record; the docs' queries
    run on the result."""
    suffix = uuid.uuid4().hex[:8]
    database, role = f"docs_{suffix}", f"gateway_{suffix}"
    async with connect(postgres.dsn) as conn:
        await conn.execute(f'CREATE DATABASE "{database}"')
        await conn.execute(f'CREATE ROLE "{role}" LOGIN')
    async with connect(postgres.dsn_for(database)) as conn:
        await conn.execute(DDL.split("-- each inference table")[0])
        await conn.execute("CREATE SCHEMA logs")
        await conn.execute(PAYLOAD_TABLE_SQL.format(table="logs.chat_payload"))
        for schema in ("servegate", "logs"):
            await conn.execute(
                f'GRANT USAGE ON SCHEMA {schema} TO "{role}"; '
                f'GRANT SELECT, INSERT, UPDATE ON ALL TABLES IN SCHEMA {schema} TO "{role}"'
            )
        await conn.execute(f'REVOKE CREATE ON SCHEMA public FROM "{role}", PUBLIC')

    dsn = f"postgresql://{role}@127.0.0.1:{postgres.port}/{database}"
    writer = RecordWriter(PostgresSink(dsn), max_delay=0.01)
    await writer.start()
    writer.submit(usage(1))
    writer.submit(payload(1, PayloadTable(database, "logs", "chat")))
    writer.submit(
        ServedEntityRow.external(
            endpoint="chat",
            served_entity_name="gpt",
            model=ExternalModel.model_validate(
                {
                    "name": "gpt-4o-mini",
                    "provider": "openai",
                    "task": "llm/v1/chat",
                    "openai_config": {"openai_api_key": "{{secrets/o/key}}"},
                }
            ),
            config_version=1,
            revision="rev1",
            change_time=T0,
        )
    )
    await writer.close()
    assert writer.written == 3 and not any(writer.dropped.values())

    blocks = re.findall(r"```sql\n(.*?)```", DOCS.read_text(), re.DOTALL)
    queries = [b for b in blocks if "CREATE TABLE" not in b]
    assert len(queries) >= 6
    async with connect(postgres.dsn_for(database)) as conn:
        for query in queries:
            for statement in filter(str.strip, query.split(";")):
                await conn.fetch(statement)
        tokens = await conn.fetchval(
            "SELECT sum(input_token_count + output_token_count) FROM servegate.endpoint_usage "
            "JOIN servegate.served_entities USING (served_entity_id)"
        )
    assert tokens == 3
