"""Targets that are not CPython-on-glibc: musl (dynamic and static) and a plain glibc program."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from tests.harness import exits_settled, observer, workload

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
    with workload([str(binaries[libc]), "17", "29"], native=True) as target, \
            observer(["--pid", f"native={target.pid}", "--allow-non-python"],
                     tmp_path) as running:
        target.go()
        truth = target.truth()
        assert truth == {"threads_started": 17, "getaddrinfo_calls": 29,
                         "getaddrinfo_failures": 0}

        metrics = exits_settled(running, 17, target="native")
        created = metrics.labels("thread_observer_threads_created_total", "creator",
                                 target="native")
        # The start routine lies in the program itself: not CPython, so its own name.
        assert created == {binaries[libc].name: 17}
        assert metrics.value("thread_observer_getaddrinfo_calls_total", target="native") == 29
        assert metrics.value("thread_observer_getaddrinfo_failures_total",
                             target="native") == 0
