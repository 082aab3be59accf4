"""Targets that are not CPython-on-glibc: musl (dynamic and static) and a plain glibc program."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.harness import REPO, exits_settled, observer, wait_until, workload
from thread_observer.timeline.lanes import build_timeline
from thread_observer.timeline.model import Recording

pytestmark = pytest.mark.bpf

SOURCE = Path(__file__).parent / "targets" / "native_target.c"

BUILDS = {
    "musl": ["musl-gcc", "-O2", "-pthread"],
    "musl-static": ["musl-gcc", "-O2", "-static", "-pthread"],
    "glibc": ["gcc", "-O2", "-pthread"],
}


@pytest.fixture(scope="module")
def binaries(tmp_path_factory):
    folder = tmp_path_factory.mktemp("native")
    built = {}
    for name, compiler in BUILDS.items():
        if shutil.which(compiler[0]) is None:
            continue
        built[name] = folder / f"target-{name}"
        subprocess.run([*compiler, "-o", str(built[name]), str(SOURCE)], check=True)
    return built


@pytest.mark.parametrize("libc", list(BUILDS))
def test_native_target_counted_exactly(libc, binaries, tmp_path):
    if libc not in binaries:
        pytest.skip(f"{BUILDS[libc][0]} is not installed (apt-get install musl-tools gcc)")
    with (
        workload([str(binaries[libc]), "17", "29"], native=True) as target,
        observer(["--pid", f"native={target.pid}", "--allow-non-python"], tmp_path) as running,
    ):
        target.go()
        truth = target.truth()
        assert truth == {"threads_started": 17, "getaddrinfo_calls": 29, "getaddrinfo_failures": 0}

        metrics = exits_settled(running, 17, target="native")
        created = metrics.labels(
            "thread_observer_threads_created_total", "creator", target="native"
        )
        # The start routine lies in the program itself: not CPython, so its own name.
        assert created == {binaries[libc].name: 17}
        assert metrics.value("thread_observer_getaddrinfo_calls_total", target="native") == 29
        assert metrics.value("thread_observer_getaddrinfo_failures_total", target="native") == 0


@pytest.mark.parametrize("libc", list(BUILDS))
def test_native_target_on_the_timeline(libc, binaries, tmp_path):
    """The timeline probes the same objects as the daemon: a statically linked program's own
    executable holds pthread_create and getaddrinfo."""
    if libc not in binaries:
        pytest.skip(f"{BUILDS[libc][0]} is not installed (apt-get install musl-tools gcc)")
    out = tmp_path / "native.json"
    timeline_run = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "thread_observer",
            "timeline",
            "--log-level",
            "info",
            "--output",
            str(out),
            "--",
            str(binaries[libc]),
            "17",
            "29",
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO,
    )
    # A libc other than the observer's own is probed once the program has mapped it: the
    # program waits for a line on stdin until then.
    marker = {"musl-static": str(binaries[libc]), "musl": "musl"}.get(libc)

    def probed() -> bool:
        line = timeline_run.stderr.readline()
        return marker is None or ("probes in" in line and marker in line)

    try:
        wait_until(probed, 30, "the program's libc to be probed")
        stdout, stderr = timeline_run.communicate("\n", timeout=60)
    finally:
        timeline_run.kill()
    assert timeline_run.returncode == 0, stderr
    truth = json.loads(stdout.splitlines()[-1])
    assert truth == {"threads_started": 17, "getaddrinfo_calls": 29, "getaddrinfo_failures": 0}
    timeline = build_timeline(Recording.load(out))
    created = [lane.creator for lane in timeline.lanes if lane.created]
    assert created == [binaries[libc].name] * 17
    assert len(timeline.lookups) == 29 and timeline.failures == 0
