"""The record writer against in-memory sinks: batching, drops, failures, shutdown."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence

import pytest

from servegate.records.rows import PayloadTable, Row
from servegate.records.writer import DropReason, RecordWriter, SinkError
from tests.records.samples import payload, until, usage


class MemorySink:
    """Keeps batches; can be held shut (``gate``) or made to fail the next N batches."""

    def __init__(self) -> None:
        self.batches: list[list[Row]] = []
        self.attempts: list[float] = []
        self.gate = asyncio.Event()
        self.gate.set()
        self.failures: list[Exception] = []
        self.opened = self.closed = False

    async def open(self) -> None:
        self.opened = True

    async def write(self, rows: Sequence[Row]) -> None:
        self.attempts.append(time.monotonic())
        await self.gate.wait()
        if self.failures:
            raise self.failures.pop(0)
        self.batches.append(list(rows))

    async def close(self) -> None:
        self.closed = True

    @property
    def rows(self) -> list[Row]:
        return [row for batch in self.batches for row in batch]


async def test_batches_by_size_then_by_delay() -> None:
    sink = MemorySink()
    writer = RecordWriter(sink, batch_size=10, max_delay=0.2)
    await writer.start()
    assert sink.opened
    started = time.monotonic()
    for i in range(25):
        writer.submit(usage(i))
    await until(lambda: writer.written == 25, what="25 rows written")
    assert [len(b) for b in sink.batches] == [10, 10, 5]
    assert time.monotonic() - started >= 0.2  # the short batch waited for max_delay
    assert sink.rows == [usage(i) for i in range(25)]  # in order, unchanged
    await writer.close()
    assert sink.closed and writer.queue_depth == 0


async def test_a_lone_row_is_written_after_max_delay() -> None:
    sink = MemorySink()
    writer = RecordWriter(sink, batch_size=100, max_delay=0.05)
    await writer.start()
    writer.submit(usage(1))
    await until(lambda: writer.written == 1, within=2, what="the row")
    await writer.close()


async def test_full_queue_drops_and_counts() -> None:
    sink = MemorySink()
    sink.gate.clear()
    drops: list[tuple[DropReason, int]] = []
    writer = RecordWriter(
        sink,
        max_queue=5,
        batch_size=2,
        max_delay=0.01,
        on_dropped=lambda r, n: drops.append((r, n)),
    )
    await writer.start()
    for i in range(20):
        writer.submit(usage(i))
    assert writer.queue_depth == 5
    assert writer.dropped["queue_full"] == 15
    assert drops == [("queue_full", 1)] * 15
    sink.gate.set()
    await until(lambda: writer.written == 5, what="the queued rows")
    await writer.close()
    assert writer.dropped == {"queue_full": 15, "sink_error": 0, "shutdown": 0, "closed": 0}


async def test_payload_bytes_bound_the_queue() -> None:
    sink = MemorySink()
    sink.gate.clear()
    writer = RecordWriter(sink, max_pending_bytes=3000, batch_size=100)
    await writer.start()
    target = PayloadTable("main", "logs", "chat")
    body = "x" * 1000
    for i in range(4):
        writer.submit(payload(i, target, request=body, response=body))  # 2000 characters each
    writer.submit(usage(9))  # usage rows are counted, not weighed
    assert writer.queue_depth == 2
    assert writer.dropped["queue_full"] == 3
    sink.gate.set()
    await writer.close()
    assert writer.written == 2


async def test_sink_failures_are_counted_and_writing_resumes() -> None:
    sink = MemorySink()
    sink.failures = [ConnectionError("down"), ConnectionError("still down")]
    written: list[int] = []
    writer = RecordWriter(
        sink,
        batch_size=10,
        max_delay=0.01,
        backoff_initial=0.05,
        backoff_max=0.1,
        on_written=written.append,
    )
    await writer.start()
    for i in range(30):
        writer.submit(usage(i))
    await until(lambda: writer.written == 10, what="the third batch")
    assert writer.dropped["sink_error"] == 20
    gaps = [b - a for a, b in zip(sink.attempts, sink.attempts[1:], strict=False)]
    assert gaps[0] >= 0.05 and gaps[1] >= 0.1  # backed off, doubling up to the cap
    writer.submit(usage(99))
    await until(lambda: writer.written == 11, what="a row after recovery")
    assert sum(written) == 11
    await writer.close()


async def test_a_partial_sink_failure_counts_only_the_lost_rows() -> None:
    sink = MemorySink()
    sink.failures = [SinkError("one database down", failed=3)]
    writer = RecordWriter(sink, batch_size=10, max_delay=0.01, backoff_initial=0.01)
    await writer.start()
    for i in range(10):
        writer.submit(usage(i))
    await until(lambda: writer.dropped["sink_error"] == 3, what="the partial failure")
    assert writer.written == 7
    await writer.close()


async def test_rows_the_sink_refuses_for_good_do_not_slow_the_rest() -> None:
    sink = MemorySink()
    sink.failures = [SinkError("no such database", failed=10, retry_later=False)]
    writer = RecordWriter(sink, batch_size=10, max_delay=0.01, backoff_initial=30)
    await writer.start()
    for i in range(20):
        writer.submit(usage(i))
    await until(lambda: writer.written == 10, within=2, what="the next batch, without backoff")
    assert writer.dropped["sink_error"] == 10
    await writer.close()


async def test_close_flushes_what_is_queued() -> None:
    sink = MemorySink()
    writer = RecordWriter(sink, batch_size=4, max_delay=30)
    await writer.start()
    for i in range(7):
        writer.submit(usage(i))
    started = time.monotonic()
    await asyncio.gather(
        writer.close(timeout=5), writer.close(timeout=5)
    )  # one close, awaited twice
    assert time.monotonic() - started < 2  # close does not wait out max_delay
    assert writer.written == 7 and sink.closed
    writer.submit(usage(8))
    assert writer.dropped["closed"] == 1


async def test_close_gives_up_after_its_timeout_and_counts_the_rest() -> None:
    sink = MemorySink()
    sink.gate.clear()  # a sink that never answers
    writer = RecordWriter(sink, batch_size=2, max_delay=0.01)
    await writer.start()
    for i in range(5):
        writer.submit(usage(i))
    await until(lambda: len(sink.attempts) == 1, what="the first batch")
    started = time.monotonic()
    await writer.close(timeout=0.2)
    assert time.monotonic() - started < 2.5
    assert writer.written == 0
    assert writer.dropped["shutdown"] == 5  # the batch cut short and the three queued


async def test_submit_never_raises_nor_waits() -> None:
    def broken(reason: DropReason, count: int) -> None:
        raise RuntimeError("metrics are broken")

    sink = MemorySink()
    sink.gate.clear()
    writer = RecordWriter(sink, max_queue=1, on_dropped=broken)
    await writer.start()
    started = time.monotonic()
    for i in range(1000):
        writer.submit(usage(i))
    assert time.monotonic() - started < 0.5
    assert writer.dropped["queue_full"] == 999
    sink.gate.set()
    await writer.close()


def test_settings_are_checked() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        RecordWriter(MemorySink(), batch_size=0)
