"""Weighted random choice of the served entity that answers a request (``traffic_config``).

Built once per config load; ``choose`` is one random draw and a bisect. Entities at 0% are
never chosen here: they receive traffic only through fallback or the per-entity route.
"""

from __future__ import annotations

import bisect
import random
from collections.abc import Mapping
from itertools import accumulate


class TrafficSplit:
    def __init__(self, routes: Mapping[str, int], rng: random.Random | None = None) -> None:
        weighted = [(name, pct) for name, pct in routes.items() if pct > 0]
        if not weighted:
            raise ValueError("traffic_config routes no traffic to any served entity")
        self.names = [name for name, _ in weighted]
        self._cumulative = list(accumulate(pct for _, pct in weighted))
        self._total = self._cumulative[-1]
        self._rng = rng or random.Random()

    def choose(self) -> str:
        point = self._rng.random() * self._total
        return self.names[bisect.bisect_right(self._cumulative, point)]
