"""Fallback (``ai_gateway.fallback_config.enabled``): which entities to try, and when.

The order starts at the entity the split chose and continues through ``served_entities``
in list order, wrapping, each entity tried once; entities at 0% traffic are valid
fallback-only targets. Only failures that another entity might not have fall back:
429 and 5xx from the provider, a connection error, a timeout. Other 4xx (a bad request,
bad credentials) would fail the same way everywhere, so they return at once.
"""

from __future__ import annotations

from collections.abc import Sequence

from servegate.ingress.errors import GatewayError


def attempt_order(entities: Sequence[str], first: str, *, enabled: bool) -> list[str]:
    if not enabled:
        return [first]
    start = list(entities).index(first)
    return [*entities[start:], *entities[:start]]


def falls_back(error: GatewayError) -> bool:
    return error.status == 429 or error.status >= 500
