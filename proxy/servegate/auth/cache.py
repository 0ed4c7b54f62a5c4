"""Short-lived memory of review answers, so a busy caller costs the API server nothing.

Every query would otherwise make one TokenReview and one SubjectAccessReview. Answers are
kept briefly, each in a bounded ``cachetools.TTLCache`` (least recently used entries go
first when full, expired ones are never returned):

- positive answers (a valid token, an allowed query) for ``positive_ttl`` seconds: the
  delay before a revoked token or a removed RoleBinding takes effect;
- negative answers for ``negative_ttl`` seconds, usually shorter: a caller retrying a bad
  token or a forbidden endpoint in a loop is answered from memory, yet a grant that was
  just added is seen soon.

Failures (the API server is down) are never cached: the next request asks again.
Concurrent misses on one key share one review (no stampede when a popular token's entry
expires under load), and a caller that disconnects does not cancel the review others wait
for.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass
from typing import Generic, TypeVar

from cachetools import TTLCache

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")

Clock = Callable[[], float]
Review = Callable[[], Awaitable[tuple[bool, V]]]
"""A review: ``(True, value)`` for a positive answer, ``(False, value)`` for a negative one."""


@dataclass(frozen=True)
class CachePolicy:
    positive_ttl: float = 60.0
    negative_ttl: float = 10.0
    maxsize: int = 10_000
    """Per cache (positive and negative each), so memory stays bounded whatever callers send."""


class ReviewCache(Generic[K, V]):
    def __init__(self, policy: CachePolicy, clock: Clock = time.monotonic) -> None:
        self._positive: TTLCache[K, V] = TTLCache(policy.maxsize, policy.positive_ttl, timer=clock)
        self._negative: TTLCache[K, V] = TTLCache(policy.maxsize, policy.negative_ttl, timer=clock)
        self._inflight: dict[K, asyncio.Task[tuple[bool, V]]] = {}

    async def get(self, key: K, review: Review[V]) -> tuple[bool, V]:
        """The cached answer for ``key``, or the answer of ``review()`` (then cached)."""
        for positive, cache in ((True, self._positive), (False, self._negative)):
            try:
                return positive, cache[key]
            except KeyError:
                pass
        task = self._inflight.get(key)
        if task is None:
            task = asyncio.create_task(self._review(key, review))
            task.add_done_callback(_consume_exception)
            self._inflight[key] = task
        return await asyncio.shield(task)

    async def _review(self, key: K, review: Review[V]) -> tuple[bool, V]:
        try:
            positive, value = await review()
        finally:
            self._inflight.pop(key, None)
        # No await between the pop and these writes: no request can slip between them.
        (self._negative if positive else self._positive).pop(key, None)
        (self._positive if positive else self._negative)[key] = value
        return positive, value

    def clear(self) -> None:
        self._positive.clear()
        self._negative.clear()

    def cancel(self) -> None:
        """Cancel the reviews in flight (on shutdown)."""
        for task in list(self._inflight.values()):
            task.cancel()
        self._inflight.clear()


def _consume_exception(task: asyncio.Task[object]) -> None:
    """Mark a failed review's exception as seen: when every waiter has gone (disconnected
    clients), asyncio would otherwise log "exception was never retrieved"."""
    if not task.cancelled():
        task.exception()
