"""A real ``thread-observer run`` as a child, reached over HTTP on loopback like Prometheus."""

from __future__ import annotations

import json
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from benchmarks.children import PYTHON, Children, cpu_seconds, memory_mib
from benchmarks.hooks import (
    SYSCALL_TRACEPOINTS,
    SYSCALL_TRACEPOINTS_PREFIX,
    differences,
    hooks_in_log,
    hooks_of,
)
from workloads.servers import free_port

READY_TIMEOUT = 120.0


class ObserverFailed(RuntimeError):
    """The observer exited or did not answer; the message carries the end of its log."""


class Metrics:
    """One parsed /metrics page."""

    def __init__(self, text: str) -> None:
        self.samples = [s for f in text_string_to_metric_families(text) for s in f.samples]

    def value(self, name: str, **labels: str) -> float:
        """Sum of the samples of that name whose labels include ``labels`` (0 when none)."""
        return sum(
            s.value
            for s in self.samples
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())
        )

    def pids(self, target: str) -> set[int]:
        return {
            int(s.labels["pid"])
            for s in self.samples
            if s.name == "thread_observer_target_info" and s.labels.get("target") == target
        }


class Observer:
    """``python -m thread_observer run ARGS --listen 127.0.0.1:PORT``, timed from its launch. With
    ``hooks.SYSCALL_TRACEPOINTS`` among ARGS, through tests/with_syscall_tracepoints.py: the
    epoll mark and the DNS probe at the syscalls' tracepoints, as on a kernel without the raw
    tracepoints the observer prefers."""

    def __init__(self, children: Children, args: list[str]) -> None:
        self._children = children
        self.expected_hooks = hooks_of(args)
        prefix = SYSCALL_TRACEPOINTS_PREFIX if SYSCALL_TRACEPOINTS in args else []
        args = [arg for arg in args if arg != SYSCALL_TRACEPOINTS]
        self.port = free_port()
        # Kept open as long as the observer runs; stop() closes and removes it.
        self._log = tempfile.NamedTemporaryFile(  # noqa: SIM115
            prefix="observer-", suffix=".log", delete=False
        )
        self.log_path = Path(self._log.name)
        command = [
            *prefix,
            *[PYTHON, "-m", "thread_observer", "run", "--listen", f"127.0.0.1:{self.port}", *args],
        ]
        self.launched = time.monotonic()
        self.process: subprocess.Popen = children.spawn(
            command, stdout=self._log, stderr=subprocess.STDOUT
        )
        self.pid = self.process.pid
        self.ready_after: float | None = None

    def __enter__(self) -> Observer:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def get(self, path: str, timeout: float = 10.0) -> bytes:
        url = f"http://127.0.0.1:{self.port}{path}"
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.read()

    def health(self) -> dict | None:
        """The /healthz answer, or None while it does not answer yet."""
        self._check_alive()
        try:
            return json.loads(self.get("/healthz", timeout=5.0))
        except OSError:
            return None

    def wait_ready(self, timeout: float = READY_TIMEOUT) -> float:
        """Seconds from launch to /healthz answering."""
        deadline = self.launched + timeout
        while self.health() is None:
            if time.monotonic() > deadline:
                raise ObserverFailed(f"no /healthz after {timeout:.0f}s\n{self.log_tail()}")
            time.sleep(0.01)
        self.ready_after = time.monotonic() - self.launched
        said = self.hooks()
        if differences(self.expected_hooks, said):
            raise ObserverFailed(
                f"the observer says {said}, the benchmark expected {self.expected_hooks}"
            )
        return self.ready_after

    def hooks(self) -> dict[str, bool]:
        """Where the observer says its epoll mark and DNS probe see their events (Hooks'
        fields, for those it has on)."""
        return hooks_in_log(self.log_path.read_text(errors="replace"))

    def scrape(self) -> Metrics:
        self._check_alive()
        try:
            return Metrics(self.get("/metrics").decode())
        except urllib.error.HTTPError as err:
            raise ObserverFailed(f"/metrics answered {err.code}\n{self.log_tail()}") from None

    def cpu_seconds(self) -> float:
        return cpu_seconds(self.pid)

    def memory_mib(self) -> dict[str, float]:
        return memory_mib(self.pid)

    def stop(self) -> None:
        if self.process.poll() is None:
            self._children.end(self.process, grace=10.0)
        self._log.close()
        self.log_path.unlink(missing_ok=True)

    def log_tail(self, lines: int = 15) -> str:
        self._log.flush()
        text = self.log_path.read_text(errors="replace").splitlines()
        return "\n".join(text[-lines:])

    def _check_alive(self) -> None:
        if self.process.poll() is not None:
            raise ObserverFailed(
                f"observer exited with status {self.process.returncode}\n{self.log_tail()}"
            )
