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

Every limit that applies is checked and counted in one step: in Redis one Lua script, so
one round trip per request, atomic across replicas (windows.py has the windows: a moving
window for calls, exactly N in any 60 s; a sliding-window counter for tokens). A request
refused by one limit is counted by none. ``Retry-After`` is the number of seconds until the
limit that refused the request has room again. Each rule keeps its own counters, keyed by
its position in the endpoint's list, so two rules never share a bucket.

Calls are counted when a request is admitted. Tokens (input + output) are charged when
the response ends, streamed or not; a request is admitted while its token buckets have
room, and by default its ``max_tokens`` is capped to that room (less the estimated
prompt), so the provider itself stops the answer at the budget, with
``finish_reason: "length"`` and real usage, instead of overshooting
(``--token-limit-mode after`` only charges afterwards). Charging is one more round trip,
made when the response has ended, and only for endpoints with token limits.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

from servegate.auth.callers import Principal
from servegate.ingress.errors import GatewayError
from servegate.policy.windows import Check, Kind, MemoryWindows, RedisWindows, WindowStore
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
    index: int = 0
    """The rule's position in the endpoint's list: each rule counts on its own."""

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
    indexed = list(enumerate(rules))
    buckets = [Bucket(r, "endpoint", i) for i, r in indexed if r.key == RateLimitKey.ENDPOINT]
    personal_key = (
        RateLimitKey.SERVICE_PRINCIPAL
        if caller.kind == "service_principal"
        and any(r.key == RateLimitKey.SERVICE_PRINCIPAL for r in rules)
        else RateLimitKey.USER
    )
    personal = [(i, r) for i, r in indexed if r.key == personal_key]
    own = [(i, r) for i, r in personal if r.principal == caller.name] or [
        (i, r) for i, r in personal if r.principal is None
    ]
    prefix = "sp" if personal_key == RateLimitKey.SERVICE_PRINCIPAL else "user"
    buckets += [Bucket(r, f"{prefix}:{caller.name}", i) for i, r in own]
    group_rules = [(i, r) for i, r in indexed if r.key == RateLimitKey.USER_GROUP]
    for group in sorted(caller.groups):
        named = [(i, r) for i, r in group_rules if r.principal == group]
        chosen = named or [(i, r) for i, r in group_rules if r.principal is None]
        buckets += [Bucket(r, f"group:{group}", i) for i, r in chosen]
    return buckets


@dataclass
class Admission:
    """What admission decided: the token room left (None: no token limit) and what to charge."""

    endpoint: str
    token_charges: Sequence[tuple[str, int]]
    """The (window key, token limit) of each token bucket that applied."""
    token_room: int | None
    tightest: Bucket | None = None
    """The token bucket with the least room."""
    room_grows_in: float = 0.0
    """Seconds until that room next grows (the refusal's Retry-After)."""


class RateLimiter:
    """Admission and charging for every endpoint, on one window store."""

    def __init__(
        self,
        storage_url: str | None = None,
        *,
        on_error: OnError = "open",
        token_mode: TokenLimitMode = "cap",
        on_storage_error: Callable[[], None] | None = None,
        windows: WindowStore | None = None,
    ) -> None:
        self.windows: WindowStore = windows or (
            RedisWindows(storage_url) if storage_url else MemoryWindows()
        )
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
        checks = [Check(_key(endpoint, b), b.rule.calls, b.rule.tokens) for b in buckets]
        try:
            verdict = await self.windows.admit(checks)
        except Exception as exc:  # storage down: the documented policy decides
            self._on_storage_error()
            log.warning("rate-limit storage failed (%s); failing %s", exc, self.on_error)
            if self.on_error == "closed":
                raise LimitsUnavailable(
                    "Rate limits cannot be checked right now; try again shortly.", retry_after=5
                ) from None
            return None
        if not verdict.admitted:
            raise _refusal(endpoint, buckets[verdict.refused], verdict.kind, verdict.wait)
        charges = [(c.key, c.tokens) for c in checks if c.tokens is not None]
        tightest = buckets[verdict.tightest] if verdict.tightest >= 0 else None
        return Admission(endpoint, charges, verdict.room, tightest, verdict.wait)

    def cap(self, admission: Admission | None, prompt_tokens: int) -> int | None:
        """The ``max_tokens`` that keeps a request inside its token room (None: no cap).

        Raises RateLimited when even the prompt would not fit in the room left."""
        if admission is None or admission.token_room is None or self.token_mode != "cap":
            return None
        room = admission.token_room - prompt_tokens
        if room > 0 or admission.tightest is None:
            return max(room, 1)
        raise _refusal(admission.endpoint, admission.tightest, "tokens", admission.room_grows_in)

    async def charge(self, admission: Admission, tokens: int) -> None:
        """Charge a finished response's tokens to every token bucket that applied.

        A window never holds more than its limit, so a response that overshoots fills it
        (and the next request waits for it to free up) rather than borrowing ahead.
        """
        if tokens <= 0 or not admission.token_charges:
            return
        try:
            await self.windows.charge(admission.token_charges, tokens)
        except Exception as exc:
            self._on_storage_error()
            log.warning("could not charge %d tokens to the rate-limit storage: %s", tokens, exc)

    async def close(self) -> None:
        await self.windows.close()


def _key(endpoint: str, bucket: Bucket) -> str:
    """``{endpoint}:<scope>:<rule>``: the braces are Redis Cluster's hash tag."""
    return f"{{{endpoint}}}:{bucket.scope}:{bucket.index}"


def _refusal(endpoint: str, bucket: Bucket, kind: Kind, wait: float) -> RateLimited:
    seconds = max(1, math.ceil(wait))
    amount = bucket.rule.calls if kind == "calls" else bucket.rule.tokens
    return RateLimited(
        f"Request limit exceeded: {bucket.describe(endpoint)} allows {amount} {kind} "
        f"per minute; retry in {seconds} s.",
        retry_after=seconds,
    )
