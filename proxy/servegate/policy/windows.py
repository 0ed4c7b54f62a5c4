"""Rate-limit windows: every limit a request must pass, checked and counted in one step.

A request is admitted only if *all* its buckets have room, and then it is counted in all of
them; a request refused by one bucket is counted by none (no half-spent calls). In Redis
this is one Lua script, so one round trip per request however many limits apply, atomic
across replicas. In memory it is the same algorithm in Python, which needs no lock: the
event loop runs it without an ``await`` in between.

The windows (``period`` is 60 s, the only ``renewal_period`` the platform has):

* **Calls: a moving window.** Each bucket keeps the times of its last N admitted calls. A
  call is admitted when fewer than N fell in the last ``period`` seconds: exactly N calls
  in any 60 s, however they fall on the clock. Memory is N timestamps per active bucket.
* **Tokens: a sliding-window counter.** Each bucket keeps the tokens of the current fixed
  window and of the one before; usage is ``current + previous * (share of the previous
  window still inside the last period)``. Cheap for large counts, exact at window starts,
  and an estimate in between (the previous window's tokens are assumed evenly spread).

Redis uses its own clock (``TIME``), so replicas on hosts whose clocks disagree still
share one window. All keys of one endpoint carry the same hash tag (``{endpoint}``), so
the script's keys live in one slot, as Redis Cluster requires.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

PERIOD_SECONDS = 60

Kind = Literal["calls", "tokens"]


@dataclass(frozen=True, slots=True)
class Check:
    """One bucket to check: its key and its limits (None: not limited on that count)."""

    key: str
    calls: int | None
    tokens: int | None


@dataclass(frozen=True, slots=True)
class Verdict:
    """Admitted: ``room`` is the token room of the ``tightest`` bucket (None: no token
    limit) and ``wait`` the seconds until that room next grows. Refused: ``refused`` is the
    index of the bucket that said no, ``kind`` which count, ``wait`` when to retry."""

    admitted: bool
    refused: int = -1
    kind: Kind = "calls"
    wait: float = 0.0
    room: int | None = None
    tightest: int = -1


class WindowStore(Protocol):
    async def admit(self, checks: Sequence[Check]) -> Verdict: ...

    async def charge(self, charges: Sequence[tuple[str, int]], tokens: int) -> None:
        """Add ``tokens`` to each ``(key, token_limit)`` bucket, never past its limit."""
        ...

    async def close(self) -> None: ...


# ----------------------------------------------------------------------------- in memory


@dataclass(slots=True)
class _TokenWindow:
    window: int = 0
    current: int = 0
    previous: int = 0

    def roll(self, window: int) -> None:
        if window == self.window:
            return
        self.previous = self.current if window == self.window + 1 else 0
        self.current, self.window = 0, window

    def used(self, now: float) -> float:
        elapsed = now / PERIOD_SECONDS - self.window
        return self.current + self.previous * (1 - elapsed)

    def wait(self, now: float, limit: int) -> float:
        """Seconds until usage drops below ``limit`` (nothing else being charged)."""
        elapsed = now / PERIOD_SECONDS - self.window
        if self.current < limit:
            if self.previous <= 0:
                return 0.0
            need = 1 - (limit - self.current) / self.previous
            return max(0.0, need - elapsed) * PERIOD_SECONDS
        return (1 - elapsed + 1 - limit / self.current) * PERIOD_SECONDS

    def room_grows_in(self, now: float) -> float:
        elapsed = now / PERIOD_SECONDS - self.window
        return (1 - elapsed) * PERIOD_SECONDS


class MemoryWindows:
    """The windows of one process. Idle buckets are swept so that many distinct callers
    do not grow memory without bound."""

    SWEEP_EVERY = 4096

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._calls: dict[str, deque[float]] = {}
        self._tokens: dict[str, _TokenWindow] = {}
        self._until_sweep = self.SWEEP_EVERY

    async def admit(self, checks: Sequence[Check]) -> Verdict:
        now = self._clock()
        window = int(now // PERIOD_SECONDS)
        room: int | None = None
        tightest, grows_in = -1, 0.0
        for index, check in enumerate(checks):
            if check.calls is not None:
                times = self._calls.get(check.key)
                if check.calls == 0:
                    return Verdict(False, index, "calls", PERIOD_SECONDS)
                if times is not None and len(times) >= check.calls:
                    oldest = times[-check.calls]
                    if oldest > now - PERIOD_SECONDS:
                        return Verdict(False, index, "calls", oldest + PERIOD_SECONDS - now)
            if check.tokens is not None:
                tokens = self._tokens.setdefault(check.key, _TokenWindow(window))
                tokens.roll(window)
                left = math.floor(check.tokens - tokens.used(now))
                if left <= 0:
                    return Verdict(False, index, "tokens", tokens.wait(now, check.tokens))
                if room is None or left < room:
                    room, tightest, grows_in = left, index, tokens.room_grows_in(now)
        for check in checks:
            if check.calls is not None:
                times = self._calls.get(check.key)
                if times is None or times.maxlen != check.calls:  # new, or the limit changed
                    times = self._calls[check.key] = deque(times or (), maxlen=check.calls)
                times.append(now)
        self._until_sweep -= 1
        if self._until_sweep <= 0:
            self._sweep(now, window)
        return Verdict(True, wait=grows_in, room=room, tightest=tightest)

    async def charge(self, charges: Sequence[tuple[str, int]], tokens: int) -> None:
        now = self._clock()
        window = int(now // PERIOD_SECONDS)
        for key, limit in charges:
            bucket = self._tokens.setdefault(key, _TokenWindow(window))
            bucket.roll(window)
            bucket.current += max(0, min(tokens, math.floor(limit - bucket.used(now))))

    async def close(self) -> None:
        return None

    def _sweep(self, now: float, window: int) -> None:
        self._until_sweep = self.SWEEP_EVERY
        stale = [k for k, t in self._calls.items() if not t or t[-1] <= now - PERIOD_SECONDS]
        for key in stale:
            del self._calls[key]
        for key in [k for k, w in self._tokens.items() if w.window < window - 1]:
            del self._tokens[key]


# ----------------------------------------------------------------------------- in Redis

# KEYS: per bucket, its calls list and its tokens hash. ARGV[1]: the period; then per
# bucket its calls limit and its tokens limit (-1: none). Floats are returned as strings:
# Redis would truncate Lua numbers to integers.
_SHARED_LUA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local period = tonumber(ARGV[1])
local window = math.floor(now / period)

local function tokens_window(key)
  local w = redis.call('HMGET', key, 'w', 'cur', 'prev')
  local win, cur, prev = tonumber(w[1]), tonumber(w[2]) or 0, tonumber(w[3]) or 0
  if win ~= window then
    if win == window - 1 then prev = cur else prev = 0 end
    cur = 0
  end
  local elapsed = now / period - window
  return cur, prev, elapsed, cur + prev * (1 - elapsed)
end
"""

_ADMIT_LUA = (
    _SHARED_LUA
    + """
local room, tightest, grows = -1, -1, 0
for i = 1, #KEYS / 2 do
  local calls, tokens = tonumber(ARGV[2 * i]), tonumber(ARGV[2 * i + 1])
  if calls >= 0 then
    if calls == 0 then return {0, i - 1, 'calls', string.format('%.6f', period)} end
    local oldest = redis.call('LINDEX', KEYS[2 * i - 1], calls - 1)
    if oldest and tonumber(oldest) > now - period then
      return {0, i - 1, 'calls', string.format('%.6f', tonumber(oldest) + period - now)}
    end
  end
  if tokens >= 0 then
    local cur, prev, elapsed, used = tokens_window(KEYS[2 * i])
    local left = math.floor(tokens - used)
    if left <= 0 then
      local wait
      if cur < tokens then
        wait = math.max(0, 1 - (tokens - cur) / prev - elapsed) * period
      else
        wait = (1 - elapsed + 1 - tokens / cur) * period
      end
      return {0, i - 1, 'tokens', string.format('%.6f', wait)}
    end
    if room < 0 or left < room then
      room, tightest, grows = left, i - 1, (1 - elapsed) * period
    end
  end
end
for i = 1, #KEYS / 2 do
  local calls = tonumber(ARGV[2 * i])
  if calls > 0 then
    redis.call('LPUSH', KEYS[2 * i - 1], string.format('%.6f', now))
    redis.call('LTRIM', KEYS[2 * i - 1], 0, calls - 1)
    redis.call('PEXPIRE', KEYS[2 * i - 1], period * 1000)
  end
end
return {1, tightest, string.format('%d', room), string.format('%.6f', grows)}
"""
)

# KEYS: the tokens hashes to charge. ARGV[1]: the period, ARGV[2]: the tokens, then the
# limit of each key.
_CHARGE_LUA = (
    _SHARED_LUA
    + """
local tokens = tonumber(ARGV[2])
for i = 1, #KEYS do
  local limit = tonumber(ARGV[2 + i])
  local cur, prev, elapsed, used = tokens_window(KEYS[i])
  local cost = math.max(0, math.min(tokens, math.floor(limit - used)))
  redis.call('HSET', KEYS[i], 'w', string.format('%d', window),
    'cur', string.format('%d', cur + cost), 'prev', string.format('%d', prev))
  redis.call('PEXPIRE', KEYS[i], period * 2000)
end
return 1
"""
)


class RedisWindows:
    """The same windows in Redis, shared by every replica that uses the same server."""

    def __init__(self, url: str, *, timeout: float = 1.0) -> None:
        from redis.asyncio import Redis
        from redis.asyncio.retry import Retry
        from redis.backoff import NoBackoff

        # One retry only: it rescues a pooled connection that went stale (Redis
        # restarted); anything longer would hold requests while Redis is down.
        self._redis = Redis.from_url(
            url,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            retry=Retry(NoBackoff(), 1),
        )
        self._admit = self._redis.register_script(_ADMIT_LUA)
        self._charge = self._redis.register_script(_CHARGE_LUA)

    async def admit(self, checks: Sequence[Check]) -> Verdict:
        keys: list[str] = []
        args: list[int] = [PERIOD_SECONDS]
        for check in checks:
            keys += [f"servegate:{check.key}:calls", f"servegate:{check.key}:tokens"]
            args += [_or_none(check.calls), _or_none(check.tokens)]
        reply = await self._admit(keys=keys, args=args)
        if int(reply[0]) == 0:
            kind: Kind = "calls" if reply[2] == b"calls" else "tokens"
            return Verdict(False, int(reply[1]), kind, float(reply[3]))
        room = int(reply[2])
        return Verdict(
            True, wait=float(reply[3]), room=None if room < 0 else room, tightest=int(reply[1])
        )

    async def charge(self, charges: Sequence[tuple[str, int]], tokens: int) -> None:
        keys = [f"servegate:{key}:tokens" for key, _ in charges]
        await self._charge(keys=keys, args=[PERIOD_SECONDS, tokens, *(lim for _, lim in charges)])

    async def close(self) -> None:
        await self._redis.aclose()


def _or_none(limit: int | None) -> int:
    return -1 if limit is None else limit
