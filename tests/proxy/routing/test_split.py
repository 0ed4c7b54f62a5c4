"""The weighted split follows traffic_config."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from servegate.routing.split import TrafficSplit


@pytest.mark.parametrize(
    "routes",
    [
        pytest.param({"a": 80, "b": 20}, id="80-20"),
        pytest.param({"a": 50, "b": 30, "c": 20}, id="50-30-20"),
        pytest.param({"a": 1, "b": 99}, id="1-99"),
        pytest.param({"a": 70, "fallback-only": 0, "b": 30}, id="with-0%"),
    ],
)
def test_shares_over_10000_requests_stay_within_2_points(routes: dict[str, int]) -> None:
    split = TrafficSplit(routes, rng=random.Random(20261122))
    counts = Counter(split.choose() for _ in range(10_000))
    for name, pct in routes.items():
        assert abs(counts[name] / 100 - pct) <= 2, (name, counts)
    assert counts["fallback-only"] == 0


def test_no_traffic_anywhere_is_rejected() -> None:
    with pytest.raises(ValueError, match="no traffic"):
        TrafficSplit({"a": 0})
