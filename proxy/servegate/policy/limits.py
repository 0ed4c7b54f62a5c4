"""AI Gateway rate limits (``ai_gateway.rate_limits``): calls and tokens per minute, per
endpoint, user, group and service principal, in memory or shared through Redis.

Which limits apply to a caller (every one that applies must pass):

* ``key: endpoint``: one bucket for all callers of the endpoint.
* ``key: user`` without ``principal``: the default per-user limit, one bucket per caller.
  An entry with ``principal: <name>`` replaces the default for that user.
* ``key: service_principal``: the same for service principals (callers whose auth entry
  says ``kind: service_principal``); a service principal with no such entry gets the
  default per-user limit.
* ``key: user_group`` with ``principal: <group>``: one bucket shared by the group's
  members. Without ``principal`` it is a default for every group, one bucket per group.
  A caller in several limited groups must pass each of their limits.

Windows come from the ``limits`` library (in Redis, atomic Lua scripts, so several
replicas share one limit without lost updates). Calls use a moving window: exactly N
calls in any 60 seconds, however the requests fall on the clock. Tokens use a
sliding-window counter (cheap for large counts; an approximation at window edges).
``Retry-After`` is the number of seconds until the window that refused the request frees
up. Limits are checked in order (endpoint, personal, groups) and a request refused by
one is not counted by those after it.

Calls are counted when a request is admitted. Tokens (input + output) are charged when
the response ends, streamed or not; a request is admitted while its token buckets have
room, and by default its ``max_tokens`` is capped to that room (less the estimated
prompt), so the provider itself stops the answer at the budget, with
``finish_reason: "length"`` and real usage, instead of overshooting
(``--token-limit-mode after`` only charges afterwards).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

from limits import RateLimitItemPerMinute
from limits.aio.storage import MemoryStorage, Storage
from limits.aio.strategies import MovingWindowRateLimiter, SlidingWindowCounterRateLimiter
from limits.storage import storage_from_string

from servegate.auth.callers import Principal
from servegate.ingress.errors import GatewayError
from servegate.spec import AiGatewayRateLimit, RateLimitKey, ServingEndpointSpec

log = logging.getLogger(__name__)

OnError = Literal["open", "closed"]
TokenLimitMode = Literal["cap", "after"]


class RateLimited(GatewayError):
    status = 429
    error_code = "REQUEST_LIMIT_EXCEEDED"


class LimitsUnavailable(GatewayError):
    status = 503
    error_code = "TEMPORARILY_UNAVAILABLE"


@dataclass(frozen=True, slots=True)
class Bucket:
    """One rule as it applies to one caller: the rule, and whose counter it uses."""

    rule: AiGatewayRateLimit
    scope: str  # "endpoint" | "user:<name>" | "sp:<name>" | "group:<name>"

    def describe(self, endpoint: str) -> str:
        who = {
            "endpoint": f"endpoint '{endpoint}'",
            "user": f"user '{self.scope[5:]}'",
            "sp": f"service principal '{self.scope[3:]}'",
            "group": f"group '{self.scope[6:]}'",
        }[self.scope.split(":", 1)[0]]
        return f"the rate limit for {who}"


def endpoint_rules(spec: ServingEndpointSpec) -> tuple[AiGatewayRateLimit, ...]:
    """Every rate limit of an endpoint, the legacy top-level form included (at load time)."""
    return tuple(_rules(spec))


def _rules(spec: ServingEndpointSpec) -> list[AiGatewayRateLimit]:
    gateway = spec.ai_gateway
    rules = list(gateway.rate_limits or []) if gateway else []
    for legacy in spec.rate_limits or []:  # the deprecated top-level form: calls only
        key = RateLimitKey.USER if legacy.key == "user" else RateLimitKey.ENDPOINT
        rules.append(AiGatewayRateLimit(calls=legacy.calls, key=key, renewal_period="minute"))
    return rules


def applicable(rules: Sequence[AiGatewayRateLimit], caller: Principal) -> list[Bucket]:
    """The buckets a request by ``caller`` must pass, by the precedence in the module doc."""
    buckets = [Bucket(r, "endpoint") for r in rules if r.key == RateLimitKey.ENDPOINT]
    personal_key = (
        RateLimitKey.SERVICE_PRINCIPAL
        if caller.kind == "service_principal"
        and any(r.key == RateLimitKey.SERVICE_PRINCIPAL for r in rules)
        else RateLimitKey.USER
    )
    personal = [r for r in rules if r.key == personal_key]
    own = [r for r in personal if r.principal == caller.name] or [
        r for r in personal if r.principal is None
    ]
    prefix = "sp" if personal_key == RateLimitKey.SERVICE_PRINCIPAL else "user"
    buckets += [Bucket(r, f"{prefix}:{caller.name}") for r in own]
    group_rules = [r for r in rules if r.key == RateLimitKey.USER_GROUP]
    for group in sorted(caller.groups):
        named = [r for r in group_rules if r.principal == group]
        chosen = named or [r for r in group_rules if r.principal is None]
        buckets += [Bucket(r, f"group:{group}") for r in chosen]
    return buckets


@dataclass
class Admission:
    """What admission decided: the token room left (None: no token limit) and what to charge."""

    endpoint: str
    token_buckets: Sequence[Bucket]
    token_room: int | None
    tightest: Bucket | None = None
    """The token bucket with the least room."""


class RateLimiter:
    def __init__(
        self,
        storage_url: str | None = None,
        *,
        on_error: OnError = "open",
        token_mode: TokenLimitMode = "cap",
        on_storage_error: Callable[[], None] | None = None,
    ) -> None:
        self.storage: Storage = MemoryStorage()
        if storage_url:
            storage = storage_from_string(_async_url(storage_url))
            if not isinstance(storage, Storage):
                raise ValueError(f"not an async rate-limit storage URL: {storage_url}")
            self.storage = storage
        self.calls = MovingWindowRateLimiter(self.storage)
        self.limiter = SlidingWindowCounterRateLimiter(self.storage)
        self.on_error = on_error
        self.token_mode = token_mode
        self._on_storage_error = on_storage_error or (lambda: None)

    async def admit(
        self, endpoint: str, rules: Sequence[AiGatewayRateLimit], caller: Principal
    ) -> Admission | None:
        """Count the call and check the token room; None when no limit applies."""
        if not rules:
            return None
        buckets = applicable(rules, caller)
        if not buckets:
            return None
        try:
            return await self._admit(endpoint, buckets)
        except GatewayError:
            raise
        except Exception as exc:  # storage down: the documented policy decides
            self._on_storage_error()
            log.warning("rate-limit storage failed (%s); failing %s", exc, self.on_error)
            if self.on_error == "closed":
                raise LimitsUnavailable(
                    "Rate limits cannot be checked right now; try again shortly.", retry_after=5
                ) from None
            return None

    async def _admit(self, endpoint: str, buckets: list[Bucket]) -> Admission:
        room: int | None = None
        tightest: Bucket | None = None
        for bucket in buckets:
            if bucket.rule.calls is not None:
                item = RateLimitItemPerMinute(bucket.rule.calls)
                if not await self.calls.hit(item, endpoint, bucket.scope, "calls"):
                    raise await self._refusal(item, endpoint, bucket, "calls")
        token_buckets = [b for b in buckets if b.rule.tokens is not None]
        for bucket in token_buckets:
            item = RateLimitItemPerMinute(bucket.rule.tokens or 0)
            stats = await self.limiter.get_window_stats(item, endpoint, bucket.scope, "tokens")
            if stats.remaining <= 0:
                raise await self._refusal(item, endpoint, bucket, "tokens")
            if room is None or stats.remaining < room:
                room, tightest = stats.remaining, bucket
        return Admission(endpoint, token_buckets, room, tightest)

    async def _refusal(
        self, item: RateLimitItemPerMinute, endpoint: str, bucket: Bucket, kind: str
    ) -> RateLimited:
        strategy = self.calls if kind == "calls" else self.limiter
        stats = await strategy.get_window_stats(item, endpoint, bucket.scope, kind)
        wait = max(1, math.ceil(stats.reset_time - time.time()))
        amount = bucket.rule.calls if kind == "calls" else bucket.rule.tokens
        return RateLimited(
            f"Request limit exceeded: {bucket.describe(endpoint)} allows {amount} {kind} "
            f"per minute; retry in {wait} s.",
            retry_after=wait,
        )

    async def cap(self, admission: Admission | None, prompt_tokens: int) -> int | None:
        """The ``max_tokens`` that keeps a request inside its token room (None: no cap).

        Raises RateLimited when even the prompt would not fit in the room left."""
        if admission is None or admission.token_room is None or self.token_mode != "cap":
            return None
        room = admission.token_room - prompt_tokens
        if room > 0 or admission.tightest is None:
            return max(room, 1)
        bucket = admission.tightest
        item = RateLimitItemPerMinute(bucket.rule.tokens or 0)
        raise await self._refusal(item, admission.endpoint, bucket, "tokens")

    async def charge(self, admission: Admission, tokens: int) -> None:
        """Charge a finished response's tokens to every token bucket that applied.

        A window never holds more than its limit, so a response that overshoots fills it
        (and the next request waits for it to free up) rather than borrowing ahead.
        """
        if tokens <= 0:
            return
        try:
            for bucket in admission.token_buckets:
                item = RateLimitItemPerMinute(bucket.rule.tokens or 0)
                ids = (admission.endpoint, bucket.scope, "tokens")
                stats = await self.limiter.get_window_stats(item, *ids)
                cost = min(tokens, stats.remaining)
                if cost > 0 and not await self.limiter.hit(item, *ids, cost=cost):
                    # another replica charged meanwhile: take what is left
                    stats = await self.limiter.get_window_stats(item, *ids)
                    if stats.remaining > 0:
                        await self.limiter.hit(item, *ids, cost=stats.remaining)
        except Exception as exc:
            self._on_storage_error()
            log.warning("could not charge %d tokens to the rate-limit storage: %s", tokens, exc)


def _async_url(url: str) -> str:
    """``redis://…`` → ``async+redis://…`` (the limits library's async Redis storage)."""
    return url if url.startswith("async+") else f"async+{url}"
