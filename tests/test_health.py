"""/healthz (the poll loop is alive) and /readyz (probes attached, eBPF working where it was
wanted), without root: a fake observer, whose polls raise, complete or hang as a test says,
and a clock the test moves instead of sleeping."""

from __future__ import annotations

import asyncio
import os
import threading

from aiohttp.test_utils import TestClient, TestServer

from thread_observer.cli import build_parser
from thread_observer.health import (
    PollRecord,
    health_report,
    liveness_problem,
    readiness_problem,
    stuck_after,
)
from thread_observer.model import Snapshot
from thread_observer.server import Poller, make_app
from thread_observer.startup import make_observer
from thread_observer.web_config import BearerToken, WebConfig


def stuck(age: int, errors: int = 0, limit: int = 30) -> str:
    return (
        f"no poll completed for {age} s (the limit is {limit} s): the poll loop is stuck, or "
        f"every poll fails ({errors} failed since start; see the log)"
    )


STARTING = "starting: the first poll has not completed (targets not attached yet)"
NO_BPF = "the bpf backend cannot work here, running on /proc: no kernel headers"


class Clock:
    """Seconds that pass only when the test says so."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def record(interval: float = 0.25) -> tuple[PollRecord, Clock]:
    clock = Clock(1000.0)
    return PollRecord(interval, monotonic=clock, wall=lambda: 1_700_000_000.5), clock


def test_stuck_after_twenty_intervals_and_never_under_thirty_seconds():
    assert [stuck_after(interval) for interval in (0.25, 1.5, 2.5)] == [30.0, 30.0, 50.0]


def test_alive_until_no_poll_has_completed_for_the_limit():
    polls, clock = record()
    clock.now += 30
    assert liveness_problem(polls) is None
    clock.now += 0.5
    assert liveness_problem(polls) == stuck(30)
    polls.poll_completed()
    assert liveness_problem(polls) is None
    clock.now += 45
    assert liveness_problem(polls) == stuck(45)


def test_failed_polls_are_counted_and_do_not_keep_it_alive():
    polls, clock = record()
    for _ in range(4):
        clock.now += 10
        polls.poll_failed()
    assert (polls.completed, polls.errors, polls.last_completed_at) == (0, 4, None)
    assert liveness_problem(polls) == stuck(40, errors=4)


def test_a_long_interval_gives_the_loop_longer():
    polls, clock = record(interval=5.0)
    clock.now += 99
    assert liveness_problem(polls) is None
    clock.now += 2
    assert liveness_problem(polls) == stuck(101, limit=100)


def test_ready_after_the_first_poll_unless_ebpf_was_wanted_and_does_not_work():
    polls, clock = record()
    assert readiness_problem(polls, None) == STARTING
    polls.poll_completed()
    assert readiness_problem(polls, None) is None
    # --backend auto fell back to /proc: never ready, however well it polls.
    assert readiness_problem(polls, "no kernel headers") == NO_BPF
    clock.now += 31
    assert readiness_problem(polls, None) == stuck(31)


def test_health_report_keeps_status_first():
    polls, clock = record()
    polls.poll_failed()
    clock.now += 1.25
    assert health_report(None, "bpf", 3, polls) == {
        "status": "ok",
        "backend": "bpf",
        "processes": 3,
        "last_poll_age_seconds": 1.25,
        "poll_errors": 1,
        "reason": None,
    }
    assert list(health_report("why", "proc", 0, polls))[:2] == ["status", "backend"]
    assert health_report("why", "proc", 0, polls)["status"] == "failing"


class FakeObserver:
    """Polls as scripted ("raise" or "ok"), then hangs in its next poll until released."""

    def __init__(self, script=(), backend="proc", fallback_reason=None) -> None:
        self.script = list(script)
        self.backend = backend
        self.fallback_reason = fallback_reason
        self.procs = {}
        self.hanging = threading.Event()
        self.release = threading.Event()

    def poll(self) -> None:
        if not self.script:
            self.hanging.set()
            self.release.wait()
            return
        if self.script.pop(0) == "raise":
            raise RuntimeError("a bad poll")

    def wake_fd(self):
        return None

    def poll_soon(self) -> bool:
        return False

    def woken(self) -> bool:
        return False

    def snapshot(self) -> Snapshot:
        return Snapshot(backend=self.backend)

    def close(self) -> None:
        pass


def test_poller_records_failed_and_completed_polls():
    polls, _ = record()
    observer = FakeObserver(["raise", "ok", "raise", "ok"])
    poller = Poller(observer, 0.001, polls)
    poller.start()
    try:
        assert observer.hanging.wait(10)
        assert (polls.errors, polls.completed, polls.last_completed_at) == (2, 2, 1_700_000_000.5)
    finally:
        observer.release.set()
        poller.stop()


def serve_and_get(observer, polls, clock, steps, token_file=None):
    """Runs the real app around the observer; ``steps`` is a list of (seconds to move the
    clock by, path); returns each answer's status and body (JSON where it is) once the
    scripted polls are done."""

    async def run():
        config = WebConfig(token=BearerToken(str(token_file)) if token_file else None)
        app = make_app(observer, False, 0.25, web_config=config, polls=polls)
        async with TestClient(TestServer(app)) as client:
            loop = asyncio.get_running_loop()
            try:
                assert await loop.run_in_executor(None, observer.hanging.wait, 10)
                answers = []
                for seconds, path in steps:
                    clock.now += seconds
                    response = await client.get(path)
                    if response.content_type == "application/json":
                        answers.append((response.status, await response.json()))
                    else:
                        answers.append((response.status, await response.text()))
                return answers
            finally:
                observer.release.set()

    return asyncio.run(run())


def report(status, problem, age, errors=0, backend="proc"):
    return (
        status,
        {
            "status": "ok" if problem is None else "failing",
            "backend": backend,
            "processes": 0,
            "last_poll_age_seconds": age,
            "poll_errors": errors,
            "reason": problem,
        },
    )


def test_a_stuck_poller_fails_healthz_and_readyz_without_a_token(tmp_path):
    token_file = tmp_path / "token"
    token_file.write_text("s3cret")
    polls, clock = record()
    answers = serve_and_get(
        FakeObserver(["raise"]),
        polls,
        clock,
        [(0, "/metrics"), (0, "/healthz"), (0, "/readyz"), (31, "/healthz"), (0, "/readyz")],
        token_file,
    )
    assert answers == [
        (401, "401: a bearer token is required\n"),
        report(200, None, 0.0, errors=1),
        report(503, STARTING, 0.0, errors=1),
        report(503, stuck(31, errors=1), 31.0, errors=1),
        report(503, stuck(31, errors=1), 31.0, errors=1),
    ]


def test_ready_with_proc_asked_for_and_not_when_auto_fell_back_to_it():
    polls, clock = record()
    asked = serve_and_get(FakeObserver(["ok"]), polls, clock, [(2, "/readyz"), (0, "/healthz")])
    assert asked == [report(200, None, 2.0), report(200, None, 2.0)]
    polls, clock = record()
    fell_back = FakeObserver(["ok"], fallback_reason="no kernel headers")
    answers = serve_and_get(fell_back, polls, clock, [(2, "/readyz"), (0, "/healthz")])
    assert answers == [report(503, NO_BPF, 2.0), report(200, None, 2.0)]


def test_the_fallback_reason_is_kept_by_make_observer(monkeypatch):
    monkeypatch.setattr("thread_observer.startup.bpf_problem", lambda: "no kernel headers")
    own = ["run", "--pid", f"self={os.getpid()}"]
    observer = make_observer(build_parser().parse_args(own))
    assert (observer.backend, observer.fallback_reason) == ("proc", "no kernel headers")
    observer = make_observer(build_parser().parse_args([*own, "--backend", "proc"]))
    assert (observer.backend, observer.fallback_reason) == ("proc", None)
