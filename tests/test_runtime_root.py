"""The image's final stage without a container engine: a clean Debian 12 root made with
mmdebstrap, `deploy/setup.sh --runtime --install WHEEL` run in it as the Dockerfile runs it,
then the observer started from that root (chroot, with the host paths the DaemonSet mounts)
against a real target, counting exactly.

It downloads Debian's packages (about 200 MB) and takes a minute or two, so it runs only when
asked: THREAD_OBSERVER_ROOTFS_TEST=1. The Python dependencies are fetched on the host with
pip and installed in the root from those files, as a build without network would.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.harness import REPO, RunningObserver, free_port, wait_until, workload

pytestmark = [
    pytest.mark.bpf,
    pytest.mark.skipif(
        os.environ.get("THREAD_OBSERVER_ROOTFS_TEST") != "1",
        reason="downloads Debian's packages: set THREAD_OBSERVER_ROOTFS_TEST=1",
    ),
    pytest.mark.skipif(
        shutil.which("mmdebstrap") is None,
        reason="mmdebstrap is not installed (apt-get install mmdebstrap)",
    ),
    pytest.mark.timeout(1200),
]

VENV = "/opt/thread-observer/venv"
MIXED = [
    "-m",
    "workloads.mixed",
    "--threads",
    "7",
    "--loop-calls",
    "5",
    "--blocking-calls",
    "2",
    "--failures",
    "0",
    "--linger",
    "60",
]
# What the final stage must not carry.
DEVELOPMENT = [
    "usr/bin/gcc",
    "usr/bin/clang",
    "usr/bin/redis-server",
    "usr/bin/prometheus",
    "usr/bin/musl-gcc",
]
EXTRAS = ["matplotlib", "uvloop", "redis", "pytest"]


def run(command: list[str], **kwargs) -> subprocess.CompletedProcess:
    result = subprocess.run(command, capture_output=True, text=True, **kwargs)
    assert result.returncode == 0, f"{command[:3]}: {result.stdout[-2000:]}{result.stderr[-3000:]}"
    return result


def wheels(directory: Path) -> Path:
    """The package's wheel and its run-time dependencies' wheels."""
    run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(directory), str(REPO)],
        timeout=300,
    )
    (wheel,) = directory.glob("thread_observer-*.whl")
    run(
        [
            sys.executable,
            "-m",
            "pip",
            "download",
            "-q",
            "--only-binary=:all:",
            "-d",
            str(directory),
            str(wheel),
        ],
        timeout=300,
    )
    return wheel


def debian_root(root: Path, wheel_dir: Path, wheel: Path) -> None:
    install = (
        f'chroot "$1" env PIP_NO_INDEX=1 PIP_FIND_LINKS=/tmp/wheels bash '
        f"/opt/thread-observer/setup.sh --runtime --venv {VENV} "
        f"--install /tmp/wheels/{wheel.name}"
    )
    run(
        [
            "mmdebstrap",
            "--mode=root",
            "--variant=minbase",
            "bookworm",
            str(root),
            "http://deb.debian.org/debian",
            '--customize-hook=mkdir -p "$1/opt/thread-observer" "$1/tmp/wheels"',
            f"--customize-hook=upload {REPO}/deploy/setup.sh /opt/thread-observer/setup.sh",
            f'--customize-hook=cp {wheel_dir}/*.whl "$1/tmp/wheels/"',
            f"--customize-hook={install}",
            '--customize-hook=rm -rf "$1/tmp/wheels"',
        ],
        timeout=900,
    )


@contextmanager
def observer_in(root: Path, args: list[str], log_path: Path):
    """The root's observer in a mount namespace of its own, with the host's /proc, /sys
    (tracefs below it), /dev, /lib/modules and /usr/src, as the DaemonSet mounts them."""
    port = free_port()
    mounts = "; ".join(
        f"mkdir -p {root}{path} && mount --rbind {path} {root}{path}"
        for path in ("/proc", "/sys", "/dev", "/lib/modules", "/usr/src")
    )
    command = (
        f"{mounts}; exec chroot {root} {VENV}/bin/thread-observer run "
        f"--listen 127.0.0.1:{port} " + " ".join(args)
    )
    with open(log_path, "w") as log_file:
        process = subprocess.Popen(
            ["unshare", "--mount", "--propagation", "private", "sh", "-c", command],
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
    running = RunningObserver(process, port, log_path)
    try:
        wait_until(running.ready, 60, "the observer from the Debian root to serve /healthz")
        yield running
    finally:
        running.stop()


@contextmanager
def scratch_directory():
    """A temporary directory, removed only when nothing is mounted below it: the host's
    /proc, /sys and /dev are bind-mounted into the root (in a private mount namespace, which
    ends with the observer), and a removal through a leaked mount would reach the host's."""
    scratch = Path(tempfile.mkdtemp(prefix="thread-observer-root-"))
    try:
        yield scratch
    finally:
        mounted = [
            line.split()[4]
            for line in Path("/proc/self/mountinfo").read_text().splitlines()
            if line.split()[4].startswith(str(scratch))
        ]
        assert not mounted, f"left mounted, not removed: {mounted}"
        shutil.rmtree(scratch)


def test_runtime_setup_in_a_clean_debian_root_counts_exactly(tmp_path):
    with scratch_directory() as scratch:
        wheel_dir = scratch / "wheels"
        wheel = wheels(wheel_dir)
        root = scratch / "root"
        debian_root(root, wheel_dir, wheel)

        for path in DEVELOPMENT:
            assert not (root / path).exists(), path
        site = run(
            [
                "chroot",
                str(root),
                f"{VENV}/bin/python",
                "-c",
                "import importlib.util as u, sys; "
                "print(' '.join(m for m in sys.argv[1:] if u.find_spec(m)))",
                *EXTRAS,
            ]
        )
        assert site.stdout.split() == []

        with workload(MIXED) as target:
            with observer_in(
                root, ["--pid", f"mixed={target.pid}"], tmp_path / "thread_observer.log"
            ) as running:
                target.go()
                truth = target.truth()

                def settled():
                    metrics = running.scrape()
                    exited = metrics.value("thread_observer_threads_exited_total", target="mixed")
                    return metrics if exited == truth["threads_started"] else None

                metrics = wait_until(settled, 15, "every thread's exit to be counted")
                assert metrics.labels("thread_observer_build_info", "backend") == {"bpf": 1}
                assert metrics.labels(
                    "thread_observer_threads_created_total", "creator", target="mixed"
                ) == {"python": truth["threads_started"]}
                assert (
                    metrics.value(
                        "thread_observer_getaddrinfo_duration_seconds_count", target="mixed"
                    )
                    == truth["getaddrinfo_calls"]
                )
