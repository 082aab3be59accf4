"""Benchmarks of thread-observer: what it costs a watched service, what the observer itself costs,
whether its counts can be trusted, and how far it scales.

``python -m benchmarks`` (``make bench``) measures every figure in one run, side by side, and
writes them to ``BENCHMARKS.md``; ``--quick`` is a shorter run of the same measurements. These are
benchmarks, not tests: nothing here passes or fails, the report says which goals were met.
"""
