import math

import pytest

from thread_observer.histogram import log2_to_buckets, quantile


@pytest.mark.parametrize(
    ("slots", "first", "last", "expected"),
    [
        ({}, 0, 2, [(1e-9, 0), (2e-9, 0), (4e-9, 0), (math.inf, 0)]),
        # slot s counts durations <= 2**s ns: it lands in the bucket le=2**s ns and above.
        ({1: 3}, 0, 2, [(1e-9, 0), (2e-9, 3), (4e-9, 3), (math.inf, 3)]),
        ({0: 1, 2: 2}, 0, 2, [(1e-9, 1), (2e-9, 1), (4e-9, 3), (math.inf, 3)]),
        # Faster than the first bucket: counted in it; slower than the last: only in +Inf.
        ({0: 5, 40: 1}, 10, 11, [(1.024e-6, 5), (2.048e-6, 5), (math.inf, 6)]),
        ({10: 1, 11: 1}, 10, 11, [(1.024e-6, 1), (2.048e-6, 2), (math.inf, 2)]),
    ],
)
def test_log2_to_buckets(slots, first, last, expected):
    buckets = log2_to_buckets(slots, first, last)
    assert [b for b, _ in buckets] == pytest.approx([b for b, _ in expected])
    assert [n for _, n in buckets] == [n for _, n in expected]


def test_default_buckets_span_microseconds_to_seconds():
    buckets = log2_to_buckets({14: 2})  # 2**14 ns = 16.4 µs, a typical /etc/hosts lookup
    assert buckets[0][0] == pytest.approx(1.024e-6)
    assert buckets[-2][0] == pytest.approx(17.179869184)
    counts = [n for _, n in buckets]
    assert counts == sorted(counts)  # cumulative
    assert dict(buckets)[2**14 / 1e9] == 2
    assert dict(buckets)[2**13 / 1e9] == 0


@pytest.mark.parametrize(
    ("q", "buckets", "expected"),
    [
        (0.5, [(1.0, 0), (2.0, 4), (4.0, 4), (math.inf, 4)], 1.5),
        (0.99, [(1.0, 0), (2.0, 4), (4.0, 4), (math.inf, 4)], 1.99),
        (0.5, [(1.0, 2), (2.0, 2), (math.inf, 2)], 0.5),
        (0.5, [(1.0, 0), (math.inf, 3)], 1.0),  # only +Inf: the last finite bound
        (0.5, [(1.0, 0), (math.inf, 0)], None),
    ],
)
def test_quantile_interpolates_like_prometheus(q, buckets, expected):
    result = quantile(q, buckets)
    if expected is None:
        assert result is None
    else:
        assert result == pytest.approx(expected)
