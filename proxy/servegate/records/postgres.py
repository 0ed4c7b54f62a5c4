"""The PostgreSQL sink: usage, served entities and inference tables, through asyncpg.

Where rows go:

* ``endpoint_usage`` and ``served_entities``: the schema given (``servegate`` by default)
  of the database the DSN names, created and migrated at start (see ``pgschema``);
* an inference table ``<catalog>.<schema>.<prefix>_payload``: the database named
  ``catalog`` on the DSN's server, schema ``schema``, table ``<prefix>_payload``. The DSN
  names the server and its credentials; the catalog picks the database, as it picks a
  catalog on the platform. The database must exist (``CREATE DATABASE`` cannot run inside
  a transaction and needs a privilege the gateway should not hold); the schema and the
  table are created on first use. Rows for a missing database are dropped and counted.

Each batch is written in one transaction per database: usage and payload rows with
``COPY`` (one round trip for the lot), served entities with an upsert. A database that
fails loses its part of the batch only; its connection pool is then closed, and the next
batch opens a new one (and re-checks schema and tables), so writing resumes by itself
once the server is back. Pools are opened lazily, so a database that is down at start
does not stop the gateway.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, TypeAlias

import asyncpg
import orjson

from servegate.records.pgschema import (
    DEFAULT_SCHEMA,
    MIGRATIONS,
    MIGRATIONS_TABLE_SQL,
    PAYLOAD_COLUMNS,
    PAYLOAD_TABLE_SQL,
    USAGE_COLUMNS,
    PayloadTarget,
    identifier,
    lock_key,
    quote,
    upsert_entity_sql,
)
from servegate.records.rows import PayloadRow, Row, ServedEntityRow, UsageRow
from servegate.records.writer import SinkError

if TYPE_CHECKING:
    from asyncpg.pool import PoolConnectionProxy

log = logging.getLogger(__name__)

Connection: TypeAlias = "PoolConnectionProxy[asyncpg.Record]"  # generic in the stubs only
_MAIN = None  # the pools key of the DSN's own database (payload rows use the catalog)


class PostgresSink:
    def __init__(
        self,
        dsn: str,
        *,
        schema: str = DEFAULT_SCHEMA,
        pool_size: int = 2,
        connect_timeout: float = 5.0,
        command_timeout: float = 30.0,
    ) -> None:
        self.dsn = dsn
        self.schema = identifier(schema)
        self.pool_size = pool_size
        self.connect_timeout = connect_timeout
        self.command_timeout = command_timeout
        self._pools: dict[str | None, asyncpg.Pool] = {}
        self._migrated = False
        self._payload_tables: set[PayloadTarget] = set()
        self._bad_names: set[tuple[str, str, str]] = set()
        self._upsert = upsert_entity_sql(self.schema)

    async def open(self) -> None:
        """Migrate now if the database is reachable; else log, and retry before each write."""
        try:
            await self.migrate()
        except Exception as exc:
            self._discard(_MAIN)
            log.warning("records database not ready (%r); will retry before writing", exc)

    async def migrate(self) -> int:
        """Apply the migrations this gateway knows; returns the database's schema version.

        Raises when the database cannot be reached or refuses the DDL.
        """
        pool = await self._pool(_MAIN)
        async with pool.acquire(timeout=self.connect_timeout) as conn, conn.transaction():
            version = await _migrate(conn, self.schema)
        self._migrated = True
        return version

    async def write(self, rows: Sequence[Row]) -> None:
        groups: dict[str | None, list[Row]] = {}
        lost = 0
        for row in rows:
            if isinstance(row, PayloadRow):
                target = self._target(row)
                if target is None:
                    lost += 1
                    continue
                groups.setdefault(target.database, []).append(row)
            else:
                groups.setdefault(_MAIN, []).append(row)
        errors: list[str] = []
        wrote = down = False
        for database, group in groups.items():
            try:
                await self._write_group(database, group)
                wrote = True
            except Exception as exc:
                lost += len(group)
                errors.append(f"database {database or '(DSN)'}: {exc!r}")
                self._discard(database)
                down = down or not isinstance(exc, asyncpg.InvalidCatalogNameError)
        if lost:
            # Back off only when the server seems down: not over a database that does not
            # exist or an unusable name, which waiting will not fix, and not when another
            # database just took its rows.
            message = "; ".join(errors) or "unusable inference-table names"
            raise SinkError(message, lost, retry_later=down and not wrote)

    async def close(self) -> None:
        pools, self._pools = list(self._pools.values()), {}
        for pool in pools:
            try:
                await asyncio.wait_for(pool.close(), self.connect_timeout)
            except Exception:
                pool.terminate()

    def _target(self, row: PayloadRow) -> PayloadTarget | None:
        try:
            return PayloadTarget.of(row.target)
        except ValueError as exc:
            names = (row.target.catalog, row.target.schema, row.target.prefix)
            if names not in self._bad_names:  # say it once per table, not once per row
                self._bad_names.add(names)
                log.error("inference table %s: %s", row.target.qualified_name, exc)
            return None

    async def _pool(self, database: str | None) -> asyncpg.Pool:
        pool = self._pools.get(database)
        if pool is None:
            pool = await asyncpg.create_pool(
                self.dsn,
                database=database,
                min_size=0,
                max_size=self.pool_size,
                timeout=self.connect_timeout,
                command_timeout=self.command_timeout,
            )
            self._pools[database] = pool
        return pool

    def _discard(self, database: str | None) -> None:
        """Forget a database's pool and what was checked there, after a failure: the next
        batch reconnects and checks again (the server may have restarted, or a table gone)."""
        pool = self._pools.pop(database, None)
        if pool is not None:
            pool.terminate()
        if database is None:
            self._migrated = False
        self._payload_tables = {t for t in self._payload_tables if t.database != database}

    async def _write_group(self, database: str | None, rows: list[Row]) -> None:
        usage = [_usage_record(r) for r in rows if isinstance(r, UsageRow)]
        entities = [_entity_record(r) for r in rows if isinstance(r, ServedEntityRow)]
        payloads: dict[PayloadTarget, list[tuple[Any, ...]]] = {}
        for row in rows:
            if isinstance(row, PayloadRow):
                target = PayloadTarget.of(row.target)
                payloads.setdefault(target, []).append(_payload_record(row))
        if (usage or entities) and not self._migrated:
            await self.migrate()
        pool = await self._pool(database)
        created: list[PayloadTarget] = []
        async with pool.acquire(timeout=self.connect_timeout) as conn, conn.transaction():
            if usage:
                await conn.copy_records_to_table(
                    "endpoint_usage", schema_name=self.schema, columns=USAGE_COLUMNS, records=usage
                )
            if entities:
                await conn.executemany(self._upsert, entities)
            for target, records in payloads.items():
                if target not in self._payload_tables:
                    await _create_payload_table(conn, target)
                    created.append(target)
                await conn.copy_records_to_table(
                    target.table,
                    schema_name=target.schema,
                    columns=PAYLOAD_COLUMNS,
                    records=records,
                )
        self._payload_tables.update(created)  # only once committed


async def _migrate(conn: Connection, schema: str) -> int:
    """Apply missing steps. Everything that exists is looked up before it is created, so a
    database user without the CREATE privilege works on tables created for it."""
    await conn.execute("SELECT pg_advisory_xact_lock($1)", lock_key("migrate", schema))
    await _create_schema(conn, schema)
    quoted = quote(schema)
    if await conn.fetchval("SELECT to_regclass($1)", f"{quoted}.schema_migrations") is None:
        await conn.execute(MIGRATIONS_TABLE_SQL.format(schema=quoted))
    rows = await conn.fetch(f"SELECT version FROM {quoted}.schema_migrations")
    applied: set[int] = {int(r["version"]) for r in rows}
    for step in MIGRATIONS:
        if step.version in applied:
            continue
        await conn.execute(step.sql.format(schema=quoted))
        await conn.execute(
            f"INSERT INTO {quoted}.schema_migrations (version, description) VALUES ($1, $2)",
            step.version,
            step.description,
        )
        applied.add(step.version)
        log.info("records database: schema %s migrated to version %d", schema, step.version)
    newest = max(step.version for step in MIGRATIONS)
    if max(applied) > newest:
        log.warning(
            "records database: schema %s is at version %d, newer than this gateway's %d",
            schema,
            max(applied),
            newest,
        )
    return max(applied)


async def _create_schema(conn: Connection, schema: str) -> None:
    """Create a schema unless it exists. Checked first: ``CREATE SCHEMA IF NOT EXISTS`` needs
    the CREATE privilege on the database even when the schema is already there."""
    exists = await conn.fetchval("SELECT 1 FROM pg_namespace WHERE nspname = $1", schema)
    if not exists:
        await conn.execute(f"CREATE SCHEMA {quote(schema)}")


async def _create_payload_table(conn: Connection, target: PayloadTarget) -> None:
    """Create an inference table unless it exists, serialised with other replicas."""
    await conn.execute(
        "SELECT pg_advisory_xact_lock($1)", lock_key("payload", target.schema, target.table)
    )
    await _create_schema(conn, target.schema)
    name = f"{quote(target.schema)}.{quote(target.table)}"
    if await conn.fetchval("SELECT to_regclass($1)", name) is None:
        await conn.execute(PAYLOAD_TABLE_SQL.format(table=name))
        log.info("records database %s: created inference table %s", target.database, name)


def _usage_record(row: UsageRow) -> tuple[Any, ...]:
    return (
        _text(row.databricks_request_id),
        _opt(row.client_request_id),
        _text(row.requester),
        row.status_code,
        row.request_time,
        row.input_token_count,
        row.output_token_count,
        row.input_character_count,
        row.output_character_count,
        _json(row.usage_context),
        row.request_streaming,
        _opt(row.served_entity_id),
        _text(row.endpoint_name),
        _opt(row.guardrail),
    )


def _entity_record(row: ServedEntityRow) -> tuple[Any, ...]:
    return (
        row.served_entity_id,
        _text(row.endpoint_name),
        _text(row.served_entity_name),
        row.entity_type,
        _text(row.entity_name),
        row.endpoint_config_version,
        _text(row.task),
        _json(row.external_model_config),
        row.change_time,
        row.endpoint_delete_time,
    )


def _payload_record(row: PayloadRow) -> tuple[Any, ...]:
    return (
        row.request_date,
        _text(row.databricks_request_id),
        _opt(row.client_request_id),
        row.request_time,
        row.status_code,
        row.sampling_fraction,
        row.execution_duration_ms,
        _opt(row.request),
        _opt(row.response),
        _opt(row.served_entity_id),
        [_text(code) for code in row.logging_error_codes],
        _opt(row.requester),
    )


def _text(value: str) -> str:
    """Text PostgreSQL accepts: no NUL characters, no lone surrogates. One bad value would
    otherwise fail the whole batch, so it is mended (U+FFFD) instead."""
    if "\x00" in value:
        value = value.replace("\x00", "\ufffd")
    if not value.isascii():
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            value = value.encode("utf-8", errors="replace").decode("utf-8")
    return value


def _opt(value: str | None) -> str | None:
    return None if value is None else _text(value)


def _json(mapping: dict[str, str] | None) -> str | None:
    """A string map as ``jsonb`` input (jsonb refuses NUL even escaped, hence ``_text``)."""
    if mapping is None:
        return None
    return orjson.dumps({_text(str(k)): _text(str(v)) for k, v in mapping.items()}).decode()
