"""The rate-limit windows on their own: the same cases on the in-memory store and on a real
redis-server, all-or-nothing admission, exact counts under concurrency, one Redis round
trip per request, and (with a fake clock) how the windows free up."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import redis.asyncio

from servegate.auth.callers import Principal
from servegate.policy.limits import RateLimiter
from servegate.policy.windows import Check, MemoryWindows, RedisWindows, WindowStore
from servegate.spec import AiGatewayRateLimit
from tests.proxy.policy.conftest import RedisServer


@pytest.fixture(params=["memory", "redis"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[WindowStore]:
    if request.param == "memory":
        yield MemoryWindows()
        return
    server = RedisServer(tmp_path)
    windows = RedisWindows(server.url)
    try:
        yield windows
    finally:
        await windows.close()
        server.stop()


async def test_admission_is_all_or_nothing(store: WindowStore) -> None:
    roomy, tight = Check("{e}:a", 2, None), Check("{e}:b", 1, None)
    assert (await store.admit([roomy, tight])).admitted
    refused = await store.admit([roomy, tight])
    assert (refused.admitted, refused.refused, refused.kind) == (False, 1, "calls")
    assert 59 < refused.wait <= 60
    # the refused request was not counted in the roomy bucket: it still has one call left
    assert (await store.admit([roomy])).admitted
    assert not (await store.admit([roomy])).admitted


async def test_zero_calls_refuses_everything(store: WindowStore) -> None:
    verdict = await store.admit([Check("{e}:z", 0, None)])
    assert not verdict.admitted and verdict.wait == 60


async def test_token_room_charge_and_refusal(store: WindowStore) -> None:
    a, b = Check("{e}:ta", None, 100), Check("{e}:tb", None, 40)
    first = await store.admit([a, b])
    assert (first.admitted, first.room, first.tightest) == (True, 40, 1)
    assert 0 < first.wait <= 60
    await store.charge([("{e}:ta", 100), ("{e}:tb", 40)], 30)
    second = await store.admit([a, b])
    assert (second.room, second.tightest) == (10, 1)
    await store.charge([("{e}:ta", 100), ("{e}:tb", 40)], 500)  # clamped to each limit
    refused = await store.admit([a, b])
    assert (refused.admitted, refused.refused, refused.kind) == (False, 0, "tokens")
    assert refused.wait > 0
    assert (await store.admit([Check("{e}:tb", None, 40)])).admitted is False


async def test_limits_apply_exactly_under_concurrency(store: WindowStore) -> None:
    verdicts = await asyncio.gather(*(store.admit([Check("{e}:c", 10, None)]) for _ in range(60)))
    assert sum(v.admitted for v in verdicts) == 10


async def test_two_redis_clients_share_one_exact_limit(tmp_path: Path) -> None:
    server = RedisServer(tmp_path)
    pair = [RedisWindows(server.url), RedisWindows(server.url)]
    try:
        check = Check("{e}:shared", 25, None)
        verdicts = await asyncio.gather(*(pair[i % 2].admit([check]) for i in range(100)))
        assert sum(v.admitted for v in verdicts) == 25
    finally:
        for windows in pair:
            await windows.close()
        server.stop()


async def test_one_redis_round_trip_per_request(tmp_path: Path) -> None:
    """Three limits apply (endpoint, user, group) and each request costs one EVALSHA."""
    server = RedisServer(tmp_path)
    limiter = RateLimiter(server.url)
    rules = [
        AiGatewayRateLimit(key="endpoint", calls=1000, tokens=10**6, renewal_period="minute"),
        AiGatewayRateLimit(key="user", calls=100, renewal_period="minute"),
        AiGatewayRateLimit(key="user_group", calls=500, renewal_period="minute"),
    ]
    ana = Principal("ana", frozenset({"ds"}))
    probe = redis.asyncio.Redis.from_url(server.url)
    try:
        await limiter.admit("e", rules, ana)  # loads the script
        await probe.config_resetstat()
        for _ in range(20):
            assert await limiter.admit("e", rules, ana) is not None
        stats = await probe.info("commandstats")
        commands = {name.removeprefix("cmdstat_"): s["calls"] for name, s in stats.items()}
        assert commands.pop("evalsha") == 20
        # the rest ran inside the script (or is this test's own probing): no round trips
        inside = {"time", "lindex", "hmget", "lpush", "ltrim", "pexpire"}
        assert set(commands) - {"config|resetstat", "info"} == inside
    finally:
        await probe.aclose()
        await limiter.close()
        server.stop()


# ------------------------------------------------------------------ time, on a fake clock


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


async def test_moving_window_frees_a_call_exactly_sixty_seconds_later() -> None:
    clock = Clock(6000.0)
    windows = MemoryWindows(clock)
    check = Check("{e}:m", 2, None)
    assert (await windows.admit([check])).admitted
    clock.now += 30
    assert (await windows.admit([check])).admitted
    refused = await windows.admit([check])
    assert not refused.admitted and refused.wait == pytest.approx(30)
    clock.now += 29.9
    assert not (await windows.admit([check])).admitted
    clock.now += 0.2  # the first call is now more than 60 s old
    assert (await windows.admit([check])).admitted
    assert not (await windows.admit([check])).admitted


async def test_token_window_slides_into_the_next_minute() -> None:
    clock = Clock(6000.0)  # the start of a window
    windows = MemoryWindows(clock)
    check = Check("{e}:t", None, 100)
    await windows.charge([("{e}:t", 100)], 100)
    refused = await windows.admit([check])
    assert not refused.admitted and refused.wait == pytest.approx(60 + 0)  # 100 of 100 used
    clock.now += 60 + 15  # next window, a quarter in: 75 % of the 100 still count
    verdict = await windows.admit([check])
    assert verdict.admitted and verdict.room == 25
    clock.now += 60  # two windows later nothing counts
    assert (await windows.admit([check])).room == 100


async def test_idle_buckets_are_swept() -> None:
    clock = Clock(6000.0)
    windows = MemoryWindows(clock)
    for n in range(MemoryWindows.SWEEP_EVERY - 1):
        await windows.admit([Check(f"{{e}}:user:{n}", 5, 50)])
    clock.now += 180
    await windows.admit([Check("{e}:user:last", 5, 50)])  # the sweep runs here
    assert set(windows._calls) == {"{e}:user:last"}
    assert set(windows._tokens) == {"{e}:user:last"}


async def test_a_changed_limit_keeps_the_calls_already_counted() -> None:
    windows = MemoryWindows(Clock(6000.0))
    for _ in range(3):
        assert (await windows.admit([Check("{e}:k", 3, None)])).admitted
    assert (await windows.admit([Check("{e}:k", 4, None)])).admitted  # raised to 4: one more
    assert not (await windows.admit([Check("{e}:k", 4, None)])).admitted
    assert not (await windows.admit([Check("{e}:k", 2, None)])).admitted  # lowered
