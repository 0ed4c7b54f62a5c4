"""From the gateway's view of a request to the rows the writer stores.

The pipeline fills a :class:`RequestRecord` as the request moves along (who asked, which
entity answered, tokens, characters, the payloads when an inference table wants them,
which guardrail fired) and hands it here once the answer has ended, streamed or not,
answered or refused. :class:`Recorder` turns it into an ``endpoint_usage`` row and an
inference-table row, as the endpoint's ``ai_gateway`` asks, and keeps the
``served_entities`` dimension current on every config load.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime

from servegate.canonical.usage import Usage
from servegate.config import EndpointRuntime, RuntimeConfig
from servegate.records.metrics import Metrics
from servegate.records.rows import PayloadRow, ServedEntityRow, UsageRow
from servegate.records.writer import RecordWriter

log = logging.getLogger(__name__)


@dataclass(slots=True)
class RequestRecord:
    """One query, as the records see it. Filled by the pipeline."""

    request_id: str
    requester: str
    received: datetime
    client_request_id: str | None = None
    usage_context: dict[str, str] | None = None
    stream: bool = False
    entity: str | None = None
    usage: Usage | None = None
    input_characters: int = 0
    output_characters: int = 0
    request_body: bytes | None = None
    response_body: bytes | str | None = None
    upstream_ms: int = 0
    guardrail: str | None = None


class Recorder:
    def __init__(self, writer: RecordWriter, metrics: Metrics) -> None:
        self.writer = writer
        self.metrics = metrics

    def request(self, endpoint: EndpointRuntime, record: RequestRecord, status: int) -> None:
        entity_id = endpoint.entity_ids.get(record.entity) if record.entity else None
        if endpoint.usage_tracking:
            usage = record.usage
            self.writer.submit(
                UsageRow(
                    databricks_request_id=record.request_id,
                    client_request_id=record.client_request_id,
                    requester=record.requester,
                    status_code=status,
                    request_time=record.received,
                    input_token_count=usage.prompt_tokens if usage else 0,
                    output_token_count=usage.completion_tokens if usage else 0,
                    input_character_count=record.input_characters,
                    output_character_count=record.output_characters,
                    usage_context=record.usage_context or None,
                    request_streaming=record.stream,
                    served_entity_id=entity_id,
                    endpoint_name=endpoint.name,
                    guardrail=record.guardrail,
                )
            )
        if endpoint.payload_table is not None:
            self.writer.submit(
                PayloadRow.capped(
                    target=endpoint.payload_table,
                    databricks_request_id=record.request_id,
                    client_request_id=record.client_request_id,
                    request_time=record.received,
                    status_code=status,
                    execution_duration_ms=record.upstream_ms,
                    request=record.request_body,
                    response=record.response_body,
                    served_entity_id=entity_id,
                    requester=record.requester,
                )
            )
        self.metrics.record_queue_depth.set(self.writer.queue_depth)

    def config_loaded(self, previous: RuntimeConfig | None, current: RuntimeConfig) -> None:
        """A ``served_entities`` row per entity of each new or changed tracked endpoint,
        and a deletion row for each tracked endpoint that went away."""
        now = datetime.now(UTC)
        before = previous.endpoints if previous else {}
        for name, endpoint in current.endpoints.items():
            old = before.get(name)
            if not _tracked(endpoint) or (
                old is not None and old.spec_digest == endpoint.spec_digest
            ):
                continue
            for row in _entity_rows(endpoint, now):
                self.writer.submit(row)
        for name, gone in before.items():
            if name not in current.endpoints and _tracked(gone):
                for row in _entity_rows(gone, now, deleted=now):
                    self.writer.submit(row)


def _tracked(endpoint: EndpointRuntime) -> bool:
    return endpoint.usage_tracking or endpoint.payload_table is not None


def _entity_rows(
    endpoint: EndpointRuntime, now: datetime, deleted: datetime | None = None
) -> list[ServedEntityRow]:
    return [
        ServedEntityRow.external(
            endpoint=endpoint.name,
            served_entity_name=entity.name,
            model=entity.model,
            config_version=endpoint.config_version,
            revision=endpoint.spec_digest,
            change_time=now,
            endpoint_delete_time=deleted,
        )
        for entity in endpoint.entities.values()
    ]


def received_now() -> datetime:
    return datetime.now(UTC)
