"""Converting the kernel's log2 latency histogram to Prometheus buckets."""

from __future__ import annotations

import math
from collections.abc import Mapping

# Slots 10 (1.024 µs) to 34 (17 s) become buckets: finer ones would only add empty series.
FIRST_SLOT = 10
LAST_SLOT = 34


def log2_to_buckets(
    slots: Mapping[int, int], first: int = FIRST_SLOT, last: int = LAST_SLOT
) -> list[tuple[float, int]]:
    """Cumulative ``(upper bound in seconds, count)`` pairs, ending with ``+Inf``, from
    ``{slot: count}`` where slot ``s`` counts durations ``<= 2**s`` ns."""
    buckets = [
        (2**slot / 1e9, sum(n for s, n in slots.items() if s <= slot))
        for slot in range(first, last + 1)
    ]
    buckets.append((math.inf, sum(slots.values())))
    return buckets


def quantile(q: float, buckets: list[tuple[float, int]]) -> float | None:
    """The q-quantile of cumulative ``(upper bound, count)`` buckets, interpolated linearly
    inside its bucket as Prometheus's histogram_quantile does; None without observations."""
    total = buckets[-1][1] if buckets else 0
    if total == 0:
        return None
    rank = q * total
    lower_bound, lower_count = 0.0, 0
    for bound, count in buckets:
        if count >= rank:
            if math.isinf(bound):
                return lower_bound  # above the last finite bucket: its bound is all we know
            share = (rank - lower_count) / (count - lower_count) if count > lower_count else 1
            return lower_bound + (bound - lower_bound) * share
        lower_bound, lower_count = bound, count
    return lower_bound
