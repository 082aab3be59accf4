"""The life of a series of exited processes' counts (observer.retired), on a fake clock: no
root, no probes."""

from __future__ import annotations

import subprocess
import sys
import uuid
from collections import Counter

import pytest

from tests.harness import wait_until
from thread_observer.model import Counts, SeriesKey
from thread_observer.observers import ProcObserver
from thread_observer.retired import RetiredCounts
from thread_observer.targets import parse_regex_target

GRACE = 300.0
NAMED = SeriesKey("api")
TEMPLATE_VALUE = SeriesKey("checkout")  # a name template's value: comes and goes


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def retired_counts(clock: FakeClock) -> RetiredCounts:
    return RetiredCounts(GRACE, lambda key: key == NAMED, clock)


def counts(created: int, calls: int) -> Counts:
    return Counts(
        threads_created=Counter({"python": created}),
        threads_exited=created,
        getaddrinfo_calls=Counter({"other": calls}),
    )


def test_a_permanent_series_never_expires():
    clock = FakeClock()
    retired = retired_counts(clock)
    retired.add(NAMED, counts(3, 5))
    retired.idle(NAMED)
    clock.now += 1e9
    assert retired.expire() == []
    assert retired.counts[NAMED] == counts(3, 5)


def test_an_idle_series_expires_exactly_at_the_grace_period():
    clock = FakeClock()
    retired = retired_counts(clock)
    retired.add(TEMPLATE_VALUE, counts(3, 5))
    retired.idle(TEMPLATE_VALUE)
    clock.now += GRACE - 0.001
    assert retired.expire() == []
    assert TEMPLATE_VALUE in retired.counts
    clock.now += 0.001
    assert retired.expire() == [TEMPLATE_VALUE]
    assert TEMPLATE_VALUE not in retired.counts
    assert retired.expire() == []  # gone once, not reported again


def test_a_live_process_cancels_the_expiry():
    clock = FakeClock()
    retired = retired_counts(clock)
    retired.add(TEMPLATE_VALUE, counts(3, 5))
    retired.idle(TEMPLATE_VALUE)
    clock.now += GRACE / 2
    retired.live(TEMPLATE_VALUE)  # a new process of the series was attached
    clock.now += GRACE * 10
    assert retired.expire() == []
    assert retired.counts[TEMPLATE_VALUE] == counts(3, 5)


def test_idle_again_restarts_the_grace_period():
    clock = FakeClock()
    retired = retired_counts(clock)
    retired.add(TEMPLATE_VALUE, counts(1, 1))
    retired.idle(TEMPLATE_VALUE)
    clock.now += GRACE - 1
    retired.live(TEMPLATE_VALUE)
    retired.add(TEMPLATE_VALUE, counts(2, 2))  # that process ended too
    retired.idle(TEMPLATE_VALUE)
    clock.now += GRACE - 1  # past the first grace period's end, not the second's
    assert retired.expire() == []
    clock.now += 1
    assert retired.expire() == [TEMPLATE_VALUE]


def test_counts_of_a_series_add_up_and_series_stay_apart():
    clock = FakeClock()
    retired = retired_counts(clock)
    for created, calls in [(1, 10), (2, 20), (4, 40)]:
        retired.add(NAMED, counts(created, calls))
    retired.add(TEMPLATE_VALUE, counts(8, 80))
    assert retired.counts == {NAMED: counts(7, 70), TEMPLATE_VALUE: counts(8, 80)}


def test_a_zero_grace_period_drops_an_idle_series_at_the_next_expiry():
    clock = FakeClock()
    retired = RetiredCounts(0.0, lambda key: False, clock)
    retired.add(TEMPLATE_VALUE, counts(1, 1))
    retired.idle(TEMPLATE_VALUE)
    assert retired.expire() == [TEMPLATE_VALUE]


# The observer's side: which series are permanent, and when a series goes idle. ProcObserver
# reads /proc only; a child of this process is readable without root.


@pytest.fixture
def sleeper():
    """A process to attach, with a tag on its command line that no other process has."""
    tag = uuid.uuid4().hex[:12]
    process = subprocess.Popen(
        [sys.executable, "-X", f"tag={tag}", "-X", "app=checkout", "-c", "print(); input()"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    try:
        # Running Python code: its interpreter is mapped, for the observer to see it is one.
        assert process.stdout.readline() == b"\n"
        yield process, tag
    finally:
        process.kill()
        process.wait()
        process.stdin.close()
        process.stdout.close()


def observed(targets: list[str], clock: FakeClock, **options) -> ProcObserver:
    observer = ProcObserver([parse_regex_target(t) for t in targets], [], **options)
    # The clock of its series' lives (time.monotonic otherwise), for the test to move.
    observer.retired = RetiredCounts(observer.retired.grace, observer._permanent, clock)
    return observer


def end(process: subprocess.Popen, observer: ProcObserver) -> None:
    process.kill()
    process.wait()
    # Its next scan (once a second) finds it gone.
    wait_until(lambda: observer.poll() or not observer.procs, 10, "the process to be dropped")


@pytest.mark.parametrize(
    "target, name, permanent",
    [
        ("api=-X tag=TAG", "api", True),
        ("{app}=-X tag=TAG -X app=(?P<app>\\w+)", "checkout", False),
    ],
    ids=["named", "template"],
)
def test_only_a_named_targets_series_outlives_the_grace_period(sleeper, target, name, permanent):
    process, tag = sleeper
    clock = FakeClock()
    observer = observed([target.replace("TAG", tag)], clock, series_grace=GRACE)
    observer.start()
    assert [t.target for t in observer.procs.values()] == [name]
    key = SeriesKey(name)
    observer.retired.add(key, counts(3, 5))  # what the bpf backend folds in at its end
    end(process, observer)
    assert observer.procs == {}
    clock.now += GRACE
    observer.snapshot()  # a scrape drops the series whose grace period has passed
    assert (key in observer.retired.counts) is permanent


def test_with_label_pid_even_a_named_targets_series_goes(sleeper):
    """A pid's series comes and goes with its process: a named target's too."""
    process, tag = sleeper
    clock = FakeClock()
    observer = observed([f"api=-X tag={tag}"], clock, series_grace=GRACE, pids_apart=True)
    observer.start()
    assert list(observer.procs) == [process.pid]
    key = SeriesKey("api", pid=process.pid)
    observer.retired.add(key, counts(3, 5))
    end(process, observer)
    clock.now += GRACE - 1
    observer.snapshot()
    assert key in observer.retired.counts
    clock.now += 1
    observer.snapshot()
    assert key not in observer.retired.counts
    assert observer.target_names() == ["api"]  # still exported, at 0, without a pid
