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
