"""The record writer: usage and payload rows leave the request path through a bounded queue.

Recording must never slow or fail a request. ``submit`` appends to an in-memory queue and
returns; it never waits and never raises. A background task takes rows off in batches
(``batch_size`` rows, or whatever arrived within ``max_delay`` of the first) and hands each
batch to a :class:`Sink`.

When something gives, rows are dropped and counted, never waited for:

* ``queue_full``: the queue holds ``max_queue`` rows (or ``max_pending_bytes`` of payload
  text) because the sink is slower than the traffic, or down;
* ``sink_error``: the sink failed a batch, or part of one (database down, a timeout, an
  inference table whose database does not exist). The rows are not retried, since retrying
  would hold them in memory for as long as the outage lasts. Instead, when the sink seems
  down (the whole batch failed, and not for a reason a retry cannot fix), the writer waits
  before the next batch, doubling the wait from ``backoff_initial`` up to ``backoff_max``,
  so writing resumes within ``backoff_max`` of the database coming back, with whatever
  queued meanwhile. A failure confined to some rows (one misconfigured inference table)
  does not slow the others;
* ``shutdown``: still queued when ``close`` ran out of time;
* ``closed``: submitted after the writer closed.

The counts are attributes (``written``, ``dropped``, ``queue_depth``) and, when given,
callbacks (``on_written``, ``on_dropped``), for the gateway's metrics. Use the writer from
the event loop's thread only.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import Final, Literal, Protocol

from servegate.records.rows import PayloadRow, Row

log = logging.getLogger(__name__)

DropReason = Literal["queue_full", "sink_error", "shutdown", "closed"]
DROP_REASONS: Final[tuple[DropReason, ...]] = ("queue_full", "sink_error", "shutdown", "closed")
_REPORT_EVERY = 10.0  # seconds between warnings about dropped rows


class Sink(Protocol):
    """Where batches go. ``write`` raises when rows were lost (:class:`SinkError` when only
    some were); the writer counts them."""

    async def open(self) -> None:
        """Prepare (connect, migrate); should not raise because a database is down."""

    async def write(self, rows: Sequence[Row]) -> None: ...

    async def close(self) -> None: ...


class SinkError(Exception):
    """``failed`` rows of a batch were lost, the others written. ``retry_later``: the sink
    seems down, so the writer should wait before the next batch."""

    def __init__(self, message: str, failed: int, *, retry_later: bool = True) -> None:
        super().__init__(message)
        self.failed = failed
        self.retry_later = retry_later


class RecordWriter:
    def __init__(
        self,
        sink: Sink,
        *,
        max_queue: int = 10_000,
        max_pending_bytes: int = 256 * 1024 * 1024,
        batch_size: int = 500,
        max_delay: float = 1.0,
        write_timeout: float = 30.0,
        backoff_initial: float = 0.5,
        backoff_max: float = 30.0,
        on_written: Callable[[int], None] | None = None,
        on_dropped: Callable[[DropReason, int], None] | None = None,
    ) -> None:
        if max_queue < 1 or batch_size < 1:
            raise ValueError("max_queue and batch_size must be at least 1")
        self.sink = sink
        self.max_queue = max_queue
        self.max_pending_bytes = max_pending_bytes
        self.batch_size = batch_size
        self.max_delay = max_delay
        self.write_timeout = write_timeout
        self.backoff_initial = backoff_initial
        self.backoff_max = backoff_max
        self._on_written = on_written
        self._on_dropped = on_dropped
        self.written = 0
        self.dropped: dict[DropReason, int] = dict.fromkeys(DROP_REASONS, 0)
        self._queue: deque[Row] = deque()
        self._pending_bytes = 0
        self._has_rows = asyncio.Event()
        self._batch_full = asyncio.Event()
        self._closing = asyncio.Event()
        self._closed = False
        self._done = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._backoff = 0.0
        self._reported: dict[DropReason, int] = dict.fromkeys(DROP_REASONS, 0)
        self._last_report = self._last_failure_log = -_REPORT_EVERY
        self._failures_logged: set[str] = set()

    @property
    def queue_depth(self) -> int:
        return len(self._queue)

    def submit(self, row: Row) -> None:
        """Queue a row for writing; O(1), never waits, never raises (drops and counts)."""
        try:
            if self._closed:
                self._drop("closed", 1)
                return
            size = row.size if isinstance(row, PayloadRow) else 0
            if len(self._queue) >= self.max_queue or (
                size and self._pending_bytes + size > self.max_pending_bytes
            ):
                self._drop("queue_full", 1)
                return
            self._queue.append(row)
            self._pending_bytes += size
            self._has_rows.set()
            if len(self._queue) >= self.batch_size:
                self._batch_full.set()
        except Exception:  # never reached by design; a request must not fail for a record
            self._failed_once("submit")

    async def start(self) -> None:
        """Open the sink and start the background writer."""
        if self._task is not None:
            return
        await self.sink.open()
        self._task = asyncio.create_task(self._run(), name="servegate-record-writer")

    async def close(self, timeout: float = 5.0) -> None:  # noqa: ASYNC109
        """Write what is queued, within ``timeout`` seconds, then close the sink.

        A parameter rather than the caller's ``asyncio.timeout``: on time-out the writer
        still counts what it gives up and closes the sink, which cancelling it could not.

        Rows submitted while closing are still written; rows left when time runs out are
        dropped (``shutdown``), as is everything queued if the writer was never started.
        """
        if self._closing.is_set():  # closed, or closing in another task: wait for that
            await self._done.wait()
            return
        self._closing.set()
        self._has_rows.set()
        self._batch_full.set()
        deadline = time.monotonic() + timeout
        if self._task is not None:
            task, self._task = self._task, None
            try:
                await asyncio.wait_for(asyncio.shield(task), timeout)
            except TimeoutError:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            except Exception:
                log.exception("record writer: the background writer failed")
        self._closed = True
        if self._queue:
            self._drop("shutdown", len(self._queue))
            self._queue.clear()
            self._pending_bytes = 0
        self._report_drops(force=True)
        try:
            await asyncio.wait_for(self.sink.close(), max(deadline - time.monotonic(), 1.0))
        except Exception as exc:
            log.warning("record sink did not close cleanly: %r", exc)
        finally:
            self._done.set()

    async def _run(self) -> None:
        while True:
            if not self._queue:
                if self._closing.is_set():
                    return
                self._has_rows.clear()
                await self._has_rows.wait()
                continue
            if len(self._queue) < self.batch_size and not self._closing.is_set():
                self._batch_full.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._batch_full.wait(), self.max_delay)
            batch = self._take()
            if await self._write(batch):
                self._backoff = 0.0
            elif not self._closing.is_set():
                self._backoff = min(max(self._backoff * 2, self.backoff_initial), self.backoff_max)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._closing.wait(), self._backoff)
            self._report_drops()

    def _take(self) -> list[Row]:
        count = min(self.batch_size, len(self._queue))
        batch = [self._queue.popleft() for _ in range(count)]
        self._pending_bytes -= sum(r.size for r in batch if isinstance(r, PayloadRow))
        return batch

    async def _write(self, batch: list[Row]) -> bool:
        """Hand one batch to the sink and count the outcome; False when the sink seems down."""
        try:
            await asyncio.wait_for(self.sink.write(batch), self.write_timeout)
        except asyncio.CancelledError:  # close() ran out of time mid-batch
            self._drop("shutdown", len(batch))
            raise
        except SinkError as exc:
            failed = min(max(exc.failed, 0), len(batch))
            self._count_written(len(batch) - failed)
            self._drop("sink_error", failed)
            self._warn(f"record sink lost {failed} of {len(batch)} rows: {exc}")
            return not (failed and exc.retry_later)
        except Exception as exc:
            self._drop("sink_error", len(batch))
            self._warn(f"record sink failed; {len(batch)} rows dropped: {exc!r}")
            return False
        self._count_written(len(batch))
        return True

    def _count_written(self, count: int) -> None:
        if count <= 0:
            return
        self.written += count
        if self._on_written is not None:
            try:
                self._on_written(count)
            except Exception:
                self._failed_once("the on_written callback")

    def _drop(self, reason: DropReason, count: int) -> None:
        if count <= 0:
            return
        self.dropped[reason] += count
        if self._on_dropped is not None:
            try:
                self._on_dropped(reason, count)
            except Exception:
                self._failed_once("the on_dropped callback")

    def _failed_once(self, what: str) -> None:
        """Log an unexpected failure once: it may repeat on every request."""
        if what not in self._failures_logged:
            self._failures_logged.add(what)
            log.exception("record writer: %s failed (logged once)", what)

    def _warn(self, message: str) -> None:
        """Say why a batch failed, at most every few seconds (the drop counts say how often):
        a database outage or a misconfigured table would otherwise log once per batch."""
        now = time.monotonic()
        if now - self._last_failure_log >= _REPORT_EVERY:
            self._last_failure_log = now
            log.warning("%s", message)
        else:
            log.debug("%s", message)

    def _report_drops(self, *, force: bool = False) -> None:
        """Warn about rows dropped since the last warning, at most every few seconds: one
        log line per dropped row would flood the log just when something is wrong."""
        now = time.monotonic()
        if not force and now - self._last_report < _REPORT_EVERY:
            return
        new = {r: self.dropped[r] - self._reported[r] for r in DROP_REASONS}
        if any(new.values()):
            detail = ", ".join(f"{n} {r}" for r, n in new.items() if n)
            log.warning("record writer dropped rows: %s", detail)
            self._reported = dict(self.dropped)
            self._last_report = now
