"""Ground truth recorded by a workload about itself, printed as one JSON line at the end.

The observer watches from outside; tests compare its figures with what the workload counted
from inside: every Python-level ``socket.getaddrinfo`` call (split by whether it ran on an
event-loop thread), every ``Thread.start``, and the peak of ``threading.active_count()``.
Calls that never reach Python (uvloop's libuv resolver) are counted by the workload itself
with :meth:`GroundTruth.count_native_getaddrinfo`.

Workloads run on every CPython from 3.6 on, so this module sticks to syntax 3.6 accepts.
"""

import asyncio
import json
import os
import socket
import sys
import threading


class GroundTruth:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.getaddrinfo_calls = 0
        self.getaddrinfo_on_loop = 0
        self.getaddrinfo_failures = 0
        self.getaddrinfo_errors = {}
        self.threads_started = 0
        self.python_threads_peak = threading.active_count()
        self._real_getaddrinfo = None
        self._real_start = None

    def install(self) -> "GroundTruth":
        """Wrap socket.getaddrinfo and Thread.start; returns self for chaining."""
        self._real_getaddrinfo = socket.getaddrinfo
        self._real_start = threading.Thread.start
        truth = self

        def counting_getaddrinfo(*args, **kwargs):
            truth._count_call(on_loop=_on_event_loop_thread())
            try:
                return truth._real_getaddrinfo(*args, **kwargs)
            except socket.gaierror as error:
                truth.count_native_getaddrinfo(calls=0, failures=1, error=eai_name(error.errno))
                raise

        def counting_start(thread, *args, **kwargs):
            truth._real_start(thread, *args, **kwargs)
            # Sampled after start returns: the new thread is alive then, so the peak is exact.
            with truth._lock:
                truth.threads_started += 1
                truth.python_threads_peak = max(
                    truth.python_threads_peak, threading.active_count()
                )

        socket.getaddrinfo = counting_getaddrinfo
        threading.Thread.start = counting_start
        return self

    def uninstall(self) -> None:
        if self._real_getaddrinfo is not None:
            socket.getaddrinfo = self._real_getaddrinfo
            threading.Thread.start = self._real_start

    def count_native_getaddrinfo(self, calls: int = 1, failures: int = 0, error=None) -> None:
        """For resolutions made below Python (libuv), which the wrapper cannot see.

        ``error`` names the ``EAI_*`` code of the failures, when known.
        """
        with self._lock:
            self.getaddrinfo_calls += calls
            self.getaddrinfo_failures += failures
            if failures and error:
                self.getaddrinfo_errors[error] = self.getaddrinfo_errors.get(error, 0) + failures

    def _count_call(self, on_loop: bool) -> None:
        with self._lock:
            self.getaddrinfo_calls += 1
            self.getaddrinfo_on_loop += int(on_loop)

    def as_dict(self, **extra) -> dict:
        with self._lock:
            peak = max(self.python_threads_peak, threading.active_count())
            data = {
                "getaddrinfo_calls": self.getaddrinfo_calls,
                "getaddrinfo_on_loop": self.getaddrinfo_on_loop,
                "getaddrinfo_failures": self.getaddrinfo_failures,
                "getaddrinfo_errors": dict(sorted(self.getaddrinfo_errors.items())),
                "threads_started": self.threads_started,
                "python_threads_peak": peak,
                "python": sys.version.split()[0],
                "pid": os.getpid(),
            }
        data.update(extra)
        return data

    def emit(self, stream=None, **extra) -> None:
        """Print the ground truth as one JSON line (the last line a workload prints)."""
        print(json.dumps(self.as_dict(**extra)), file=stream or sys.stdout, flush=True)


def eai_name(code) -> str:
    """``EAI_SERVICE`` for -8 on glibc: the name the observer labels failures with."""
    for name in dir(socket):
        if name.startswith("EAI_") and getattr(socket, name) == code:
            return name
    return f"EAI_{code}"


def _on_event_loop_thread() -> bool:
    # asyncio._get_running_loop is only re-exported from 3.7; events has it from 3.6.
    return asyncio.events._get_running_loop() is not None
