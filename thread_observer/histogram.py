"""Converting the kernel's log2 latency histogram to Prometheus buckets."""

from __future__ import annotations

import math
from collections.abc import Mapping
from itertools import accumulate

# Slots 10 (1.024 µs) to 34 (17 s) become buckets: finer ones would only add empty series.
FIRST_SLOT = 10
LAST_SLOT = 34


def log2_to_buckets(
    slots: Mapping[int, int], first: int = FIRST_SLOT, last: int = LAST_SLOT
) -> list[tuple[float, int]]:
    """Cumulative ``(upper bound in seconds, count)`` pairs, ending with ``+Inf``, from
    ``{slot: count}`` where slot ``s`` counts durations ``<= 2**s`` ns."""
    counts = cumulative_counts(slots, first, last)
    bounds = [2**slot / 1e9 for slot in range(first, last + 1)]
    return list(zip([*bounds, math.inf], counts, strict=True))


def cumulative_counts(
    slots: Mapping[int, int], first: int = FIRST_SLOT, last: int = LAST_SLOT
) -> list[int]:
    """The counts of ``log2_to_buckets``, bucket by bucket, then the total: one pass over the
    slots rather than one per bucket (a scrape makes a histogram per series)."""
    at_slot = [0] * (last - first + 1)
    total = 0
    for slot, count in slots.items():
        total += count
        if slot <= last:
            at_slot[max(slot - first, 0)] += count  # faster than the first: counted in it
    return [*accumulate(at_slot), total]


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
