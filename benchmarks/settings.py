"""How much of each measurement a run makes: the full run (about 12 minutes on 2 cores) and
``--quick`` (about 3)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Settings:
    name: str
    # Overhead on the target: A/B rounds, each measuring every benchmark once per side.
    overhead_rounds: int
    micro_seconds: float
    http_seconds: float
    http_concurrency: int
    # Storm: events per run, and runs of each tool.
    storm_calls: int
    storm_threads: int
    storm_repeats: int
    # Accuracy.
    long_threads: int
    long_lifetime: float
    short_threads: int
    # Scale.
    scale_processes: int
    scrapes: int
    attach_samples: int
    # Start-up: observer launches in each mode.
    startup_samples: int


FULL = Settings(
    name="full",
    overhead_rounds=12,
    micro_seconds=1.5,
    http_seconds=2.5,
    http_concurrency=4,
    storm_calls=1_000_000,
    storm_threads=100_000,
    storm_repeats=3,
    long_threads=12,
    long_lifetime=2.5,
    short_threads=3000,
    scale_processes=100,
    scrapes=200,
    attach_samples=6,
    startup_samples=4,
)

QUICK = Settings(
    name="quick",
    overhead_rounds=4,
    micro_seconds=0.75,
    http_seconds=1.25,
    http_concurrency=4,
    storm_calls=300_000,
    storm_threads=30_000,
    storm_repeats=1,
    long_threads=6,
    long_lifetime=2.0,
    short_threads=1000,
    scale_processes=100,
    scrapes=200,
    attach_samples=3,
    startup_samples=2,
)
