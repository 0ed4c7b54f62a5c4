"""The PostgreSQL tables of usage tracking and inference tables, and their migrations.

``endpoint_usage`` and ``served_entities`` live in one schema (``servegate`` by default) of
the database the gateway's DSN names; ``schema_migrations`` there records which versioned
steps have run. Every replica migrates at start: the steps run in one transaction under a
transaction-scoped advisory lock, so replicas starting together apply each step once and
the others wait, then find nothing to do.

Inference tables (``<prefix>_payload``) are created on first use, under an advisory lock
too, since their names come from endpoint configs. ``request`` and ``response`` are
``text``, not ``jsonb``: they hold what was sent and returned, which is not always JSON (an
upstream's error page), and ``jsonb`` would reorder keys and refuse a whole batch over one
odd payload. Queries cast (``request::jsonb``) where they need JSON.

PostgreSQL has no parameter for names, so names are checked against a strict pattern and
then double-quoted; names are lower-cased first, as Unity Catalog does, so that unquoted
SQL finds the tables.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from typing import Final

from servegate.records.rows import PayloadTable

DEFAULT_SCHEMA: Final = "servegate"

_NAME = re.compile(r"[a-z_][a-z0-9_-]*")
_MAX_NAME_BYTES: Final = 63  # PostgreSQL silently truncates longer names


def identifier(name: str) -> str:
    """``name`` lower-cased, if it is a safe PostgreSQL name; ValueError otherwise.

    Letters, digits, ``_`` and ``-`` (endpoint names, the default table prefix, may hold
    dashes), not starting with a digit or dash, at most 63 bytes.
    """
    lowered = name.lower()
    if not _NAME.fullmatch(lowered) or len(lowered.encode()) > _MAX_NAME_BYTES:
        raise ValueError(
            f"{name!r} is not a usable PostgreSQL name: use at most 63 letters, digits, "
            "'_' or '-', starting with a letter or '_'"
        )
    return lowered


def quote(name: str) -> str:
    """``name`` checked by :func:`identifier` and double-quoted, ready for SQL text."""
    return f'"{identifier(name)}"'


@dataclass(frozen=True, slots=True)
class PayloadTarget:
    """An inference table resolved to PostgreSQL: database, schema and table names."""

    database: str
    schema: str
    table: str

    @classmethod
    def of(cls, table: PayloadTable) -> PayloadTarget:
        """catalog → database, schema → schema, ``<prefix>_payload`` → table (ValueError
        when a name is not usable)."""
        return cls(
            identifier(table.catalog), identifier(table.schema), identifier(table.table_name)
        )


def lock_key(*parts: str) -> int:
    """A stable signed 64-bit advisory-lock key for a purpose and a name."""
    digest = hashlib.sha256("\x00".join(("servegate", *parts)).encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    description: str
    sql: str
    """DDL with ``{schema}`` standing for the quoted schema name."""


MIGRATIONS: Final = (
    Migration(
        1,
        "endpoint_usage and served_entities",
        """\
CREATE TABLE {schema}.served_entities (
    served_entity_id        text PRIMARY KEY,
    endpoint_name           text NOT NULL,
    served_entity_name      text NOT NULL,
    entity_type             text NOT NULL,
    entity_name             text NOT NULL,
    endpoint_config_version integer NOT NULL,
    task                    text NOT NULL,
    external_model_config   jsonb NOT NULL,
    change_time             timestamptz NOT NULL,
    endpoint_delete_time    timestamptz
);
CREATE TABLE {schema}.endpoint_usage (
    databricks_request_id   text NOT NULL,
    client_request_id       text,
    requester               text NOT NULL,
    status_code             integer NOT NULL,
    request_time            timestamptz NOT NULL,
    input_token_count       bigint NOT NULL,
    output_token_count      bigint NOT NULL,
    input_character_count   bigint NOT NULL,
    output_character_count  bigint NOT NULL,
    usage_context           jsonb,
    request_streaming       boolean NOT NULL,
    served_entity_id        text,
    endpoint_name           text NOT NULL,
    guardrail               text
);
CREATE INDEX endpoint_usage_request_time ON {schema}.endpoint_usage (request_time);
CREATE INDEX endpoint_usage_endpoint_time ON {schema}.endpoint_usage (endpoint_name, request_time);
""",
    ),
)

MIGRATIONS_TABLE_SQL: Final = """\
CREATE TABLE IF NOT EXISTS {schema}.schema_migrations (
    version     integer PRIMARY KEY,
    description text NOT NULL,
    applied_at  timestamptz NOT NULL DEFAULT now()
);
"""

PAYLOAD_TABLE_SQL: Final = """\
CREATE TABLE {table} (
    request_date            date NOT NULL,
    databricks_request_id   text NOT NULL,
    client_request_id       text,
    request_time            timestamptz NOT NULL,
    status_code             integer NOT NULL,
    sampling_fraction       double precision NOT NULL,
    execution_duration_ms   bigint NOT NULL,
    request                 text,
    response                text,
    served_entity_id        text,
    logging_error_codes     text[] NOT NULL,
    requester               text
);
CREATE INDEX ON {table} (request_date);
"""

USAGE_COLUMNS: Final = (
    "databricks_request_id",
    "client_request_id",
    "requester",
    "status_code",
    "request_time",
    "input_token_count",
    "output_token_count",
    "input_character_count",
    "output_character_count",
    "usage_context",
    "request_streaming",
    "served_entity_id",
    "endpoint_name",
    "guardrail",
)

ENTITY_COLUMNS: Final = (
    "served_entity_id",
    "endpoint_name",
    "served_entity_name",
    "entity_type",
    "entity_name",
    "endpoint_config_version",
    "task",
    "external_model_config",
    "change_time",
    "endpoint_delete_time",
)

PAYLOAD_COLUMNS: Final = (
    "request_date",
    "databricks_request_id",
    "client_request_id",
    "request_time",
    "status_code",
    "sampling_fraction",
    "execution_duration_ms",
    "request",
    "response",
    "served_entity_id",
    "logging_error_codes",
    "requester",
)


def upsert_entity_sql(schema: str) -> str:
    """Insert a served-entity row, or update it when another replica (or an earlier run)
    recorded it: the latest description wins, ``change_time`` keeps the first sighting."""
    table = f"{quote(schema)}.served_entities"
    columns = ", ".join(ENTITY_COLUMNS)
    values = ", ".join(f"${i}" for i in range(1, len(ENTITY_COLUMNS) + 1))
    updates = ", ".join(
        f"{c} = EXCLUDED.{c}"
        for c in ENTITY_COLUMNS
        if c not in {"served_entity_id", "change_time"}
    )
    return (
        f"INSERT INTO {table} ({columns}) VALUES ({values}) "
        f"ON CONFLICT (served_entity_id) DO UPDATE SET {updates}, "
        f"change_time = LEAST(served_entities.change_time, EXCLUDED.change_time)"
    )


def ddl(schema: str = DEFAULT_SCHEMA) -> str:
    """Every statement the gateway runs, as one script: for reading, or for pre-creating
    the tables where the gateway's database user may not run DDL (the ``INSERT`` lines
    tell the gateway the steps are done)."""
    quoted = quote(schema)
    parts = [f"CREATE SCHEMA IF NOT EXISTS {quoted};", MIGRATIONS_TABLE_SQL.format(schema=quoted)]
    for step in MIGRATIONS:
        description = step.description.replace("'", "''")
        parts.append(f"-- migration {step.version}: {step.description}")
        parts.append(step.sql.format(schema=quoted))
        parts.append(
            f"INSERT INTO {quoted}.schema_migrations (version, description) "
            f"VALUES ({step.version}, '{description}');\n"
        )
    parts.append("-- each inference table, created on first use")
    parts.append(PAYLOAD_TABLE_SQL.format(table='"<schema_name>"."<prefix>_payload"'))
    return "\n".join(parts)


DDL: Final = ddl()
