"""The rows the gateway records: usage, served entities and inference-table payloads.

Column names and meanings are the platform's system and inference tables
(``databricks-api.md`` §6), so queries written for ``system.serving.endpoint_usage``,
``system.serving.served_entities`` and ``<catalog>.<schema>.<prefix>_payload`` carry over.
Workspace and account columns are left out: a gateway has neither.

Rows are frozen, slotted dataclasses: they are built on the request path, handed to the
record writer and read by a sink in the background, and nothing may change them meanwhile.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field, fields
from datetime import date, datetime
from typing import Any, ClassVar, Final, Literal

import orjson

from servegate.spec import ExternalModel, InferenceTableConfig

MAX_PAYLOAD_BYTES: Final = 1024 * 1024
"""Largest request or response body (UTF-8 bytes) kept in an inference table row.

The platform logs larger payloads as NULL with an error code (10 MiB today, 1 MiB in its
older docs). servegate keeps the lower figure: rows wait in memory until written, and a
PostgreSQL row of several megabytes per request is rarely what anyone wants to query.
"""

REQUEST_TOO_LARGE: Final = "MAX_REQUEST_SIZE_EXCEEDED"
RESPONSE_TOO_LARGE: Final = "MAX_RESPONSE_SIZE_EXCEEDED"

_ENTITY_NAMESPACE: Final = uuid.UUID("9ada7716-6c33-411e-a132-e007c6006e33")


def served_entity_id(endpoint: str, entity: str, revision: str) -> str:
    """The id joining usage and payload rows to their ``served_entities`` row.

    A UUIDv5 of (endpoint, entity, config revision), the revision being the digest of the
    endpoint's redacted spec: every replica computes the same id for the same config without
    coordinating, a restart keeps it, and a changed config gets a new id, as on the
    platform, where the dimension keeps one row per served-entity config change. (The
    config *version* number restarts at 1 in each process, so it cannot be the key.)
    """
    name = orjson.dumps([endpoint, entity, revision]).decode()
    return str(uuid.uuid5(_ENTITY_NAMESPACE, name))


@dataclass(frozen=True, slots=True)
class UsageRow:
    """One request, answered or refused (``endpoint_usage``, §6.1).

    ``endpoint_name`` and ``guardrail`` are servegate's additions: the first so usage can be
    grouped without a join, the second names the guardrail that refused the request (for
    example ``input_guardrail_triggered``), None when none did. ``served_entity_id`` is None
    when the request was refused before a served entity was chosen (a rate limit, a bad
    body).
    """

    TABLE: ClassVar[str] = "endpoint_usage"

    databricks_request_id: str
    client_request_id: str | None
    requester: str
    status_code: int
    request_time: datetime
    """When the request was received: an aware datetime in UTC."""
    input_token_count: int
    output_token_count: int
    input_character_count: int
    output_character_count: int
    usage_context: dict[str, str] | None
    request_streaming: bool
    served_entity_id: str | None
    endpoint_name: str
    guardrail: str | None = None

    @property
    def table(self) -> str:
        return self.TABLE

    def record(self) -> dict[str, Any]:
        return _columns(self)


EntityType = Literal["EXTERNAL_MODEL"]


@dataclass(frozen=True, slots=True)
class ServedEntityRow:
    """One served-entity config (``served_entities``, §6.2, the columns that apply).

    ``external_model_config`` holds the provider, model name and task, never a provider
    config: those hold credentials, or references to them. ``endpoint_delete_time`` is set
    on the row that records an endpoint's removal.
    """

    TABLE: ClassVar[str] = "served_entities"

    served_entity_id: str
    endpoint_name: str
    served_entity_name: str
    entity_name: str
    """The provider's model name, e.g. ``gpt-4o-mini``."""
    endpoint_config_version: int
    task: str
    external_model_config: dict[str, str]
    change_time: datetime
    endpoint_delete_time: datetime | None = None
    entity_type: EntityType = "EXTERNAL_MODEL"

    @classmethod
    def external(
        cls,
        *,
        endpoint: str,
        served_entity_name: str,
        model: ExternalModel,
        config_version: int,
        revision: str,
        change_time: datetime,
        endpoint_delete_time: datetime | None = None,
    ) -> ServedEntityRow:
        """The row for an external-model entity; reads only its provider, name and task."""
        provider, task = str(model.provider), str(model.task)
        return cls(
            served_entity_id=served_entity_id(endpoint, served_entity_name, revision),
            endpoint_name=endpoint,
            served_entity_name=served_entity_name,
            entity_name=model.name,
            endpoint_config_version=config_version,
            task=task,
            external_model_config={"provider": provider, "name": model.name, "task": task},
            change_time=change_time,
            endpoint_delete_time=endpoint_delete_time,
        )

    @property
    def table(self) -> str:
        return self.TABLE

    def record(self) -> dict[str, Any]:
        return _columns(self)


@dataclass(frozen=True, slots=True)
class PayloadTable:
    """Where an endpoint's inference table lives: ``<catalog>.<schema>.<prefix>_payload``."""

    catalog: str
    schema: str
    prefix: str

    @property
    def table_name(self) -> str:
        return f"{self.prefix}_payload"

    @property
    def qualified_name(self) -> str:
        return f"{self.catalog}.{self.schema}.{self.table_name}"

    @classmethod
    def of(cls, config: InferenceTableConfig | None, endpoint: str) -> PayloadTable | None:
        """The table an endpoint's ``inference_table_config`` names; None when disabled.

        The prefix defaults to the endpoint name, as on the platform.
        """
        if config is None or not config.enabled:
            return None
        if config.catalog_name is None or config.schema_name is None:
            return None  # the spec refuses this when enabled; never guess a target
        return cls(config.catalog_name, config.schema_name, config.table_name_prefix or endpoint)


@dataclass(frozen=True, slots=True)
class PayloadRow:
    """One request and its response, for an inference table (§6.3).

    ``request`` and ``response`` are the JSON texts as sent and returned (a stream's response
    aggregated), or None when over the size cap, with the reason in ``logging_error_codes``;
    build rows with :meth:`capped` to apply it. ``request_date`` is derived from
    ``request_time`` (its UTC date).
    """

    target: PayloadTable
    databricks_request_id: str
    client_request_id: str | None
    request_time: datetime
    status_code: int
    execution_duration_ms: int
    request: str | None
    response: str | None
    served_entity_id: str | None
    requester: str | None
    logging_error_codes: list[str] = field(default_factory=list)
    sampling_fraction: float = 1.0
    request_date: date = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "request_date", self.request_time.date())

    @classmethod
    def capped(
        cls,
        *,
        target: PayloadTable,
        databricks_request_id: str,
        client_request_id: str | None,
        request_time: datetime,
        status_code: int,
        execution_duration_ms: int,
        request: bytes | str | None,
        response: bytes | str | None,
        served_entity_id: str | None,
        requester: str | None,
        sampling_fraction: float = 1.0,
        limit: int = MAX_PAYLOAD_BYTES,
    ) -> PayloadRow:
        """A row whose request and response are each at most ``limit`` UTF-8 bytes.

        A larger payload is stored as NULL and the row says why
        (``MAX_REQUEST_SIZE_EXCEEDED``, ``MAX_RESPONSE_SIZE_EXCEEDED``), as on the platform:
        a truncated JSON text would be neither queryable nor honest. Bytes are decoded as
        UTF-8, any invalid sequence replaced.
        """
        codes: list[str] = []
        kept_request = cap_payload(request, limit)
        if kept_request is None and request is not None:
            codes.append(REQUEST_TOO_LARGE)
        kept_response = cap_payload(response, limit)
        if kept_response is None and response is not None:
            codes.append(RESPONSE_TOO_LARGE)
        return cls(
            target=target,
            databricks_request_id=databricks_request_id,
            client_request_id=client_request_id,
            request_time=request_time,
            status_code=status_code,
            execution_duration_ms=execution_duration_ms,
            request=kept_request,
            response=kept_response,
            served_entity_id=served_entity_id,
            requester=requester,
            logging_error_codes=codes,
            sampling_fraction=sampling_fraction,
        )

    @property
    def table(self) -> str:
        return self.target.qualified_name

    @property
    def size(self) -> int:
        """Characters of payload held (an estimate of the memory the row keeps)."""
        return len(self.request or "") + len(self.response or "")

    def record(self) -> dict[str, Any]:
        columns = _columns(self)
        del columns["target"]
        return columns


Row = UsageRow | ServedEntityRow | PayloadRow


def cap_payload(value: bytes | str | None, limit: int = MAX_PAYLOAD_BYTES) -> str | None:
    """``value`` as text when it fits in ``limit`` UTF-8 bytes, else None.

    Only text that might be over the limit is encoded to measure it: a character is at
    most four bytes, so short text is known to fit without copying it.
    """
    if value is None:
        return None
    if isinstance(value, bytes):
        return None if len(value) > limit else value.decode("utf-8", errors="replace")
    if len(value) > limit:
        return None
    if len(value) * 4 <= limit or len(value.encode("utf-8", errors="surrogatepass")) <= limit:
        return value
    return None


def _columns(row: UsageRow | ServedEntityRow | PayloadRow) -> dict[str, Any]:
    return {f.name: getattr(row, f.name) for f in fields(row)}
