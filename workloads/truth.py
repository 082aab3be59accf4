"""Ground truth recorded by a workload about itself, printed as one JSON line at the end.

The observer watches from outside; tests compare its figures with what the workload counted
from inside, through a trace function (no wrapper frame on the stack the observer reads): every
Python-level ``socket.getaddrinfo`` call (split by whether it ran on an
event-loop thread), every ``Thread.start``, and the peak of ``threading.active_count()``.
Calls that never reach Python (uvloop's libuv resolver) are counted by the workload itself
with :meth:`GroundTruth.count_native_getaddrinfo`.
A workload that sets its own trace function after this one replaces it.

Workloads run on every CPython from 3.6 on, so this module sticks to syntax 3.6 accepts.
"""

import asyncio
import json
import os
import socket
import sys
import threading


class GroundTruth:
    def __init__(self, on_count=None) -> None:
        """``on_count(truth)`` is called after each thread or lookup counted, under the lock."""
        self._on_count = on_count
        self._previous_tracers = None
        self.restart()

    def restart(self) -> None:
        """From zero, with a new lock: in a forked child, which counts under its own PID."""
        self._lock = threading.Lock()
        self.getaddrinfo_calls = 0
        self.getaddrinfo_on_loop = 0
        self.getaddrinfo_failures = 0
        self.getaddrinfo_errors = {}
        self.threads_started = 0
        self.python_threads_peak = threading.active_count()

    def install(self) -> "GroundTruth":
        """Count through a trace function on every thread; returns self for chaining.

        A trace function, not wrappers: a wrapper would be a frame of its own on the stack at
        the very C call the observer reads, and the observer would name it as the call site.
        The tracer runs at a function's start and around its exceptions, never during the call.
        """
        self._previous_tracers = (sys.gettrace(), getattr(threading, "_trace_hook", None))
        sys.settrace(self._trace)
        threading.settrace(self._trace)
        return self

    def uninstall(self) -> None:
        if self._previous_tracers is not None:
            sys.settrace(self._previous_tracers[0])
            threading.settrace(self._previous_tracers[1])
            self._previous_tracers = None

    def _trace(self, frame, event, arg):
        """The global tracer: only the two functions counted get a local one."""
        if event != "call":
            return None
        if frame.f_code is _GETADDRINFO_CODE:
            self._count_call(on_loop=_on_event_loop_thread())
            return self._trace_lookup
        if frame.f_code is _THREAD_START_CODE:
            return self._trace_start
        return None

    def _trace_lookup(self, frame, event, arg):
        if event == "exception" and isinstance(arg[1], socket.gaierror):
            self.count_native_getaddrinfo(calls=0, failures=1, error=eai_name(arg[1].errno))
        return self._trace_lookup

    def _trace_start(self, frame, event, arg):
        # Counted when start returns with the thread started: the new thread is alive then,
        # so the peak is exact (and a start that failed is not counted).
        if event == "return" and frame.f_locals["self"]._started.is_set():
            with self._lock:
                self.threads_started += 1
                self.python_threads_peak = max(self.python_threads_peak, threading.active_count())
                self._counted()
        return self._trace_start

    def _counted(self) -> None:
        if self._on_count is not None:
            self._on_count(self)

    def count_native_getaddrinfo(self, calls: int = 1, failures: int = 0, error=None) -> None:
        """For resolutions made below Python (libuv), which the trace function cannot see.

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
            self._counted()

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


def count_into_folder(folder) -> GroundTruth:
    """Counts this process's threads and lookups into ``FOLDER/PID.json``, rewritten at each
    one; a forked child starts again from zero under its own PID."""

    def write(truth):
        counts = {
            "threads": truth.threads_started,
            "getaddrinfo": truth.getaddrinfo_calls,
            "getaddrinfo_on_loop": truth.getaddrinfo_on_loop,
        }
        path = os.path.join(folder, f"{os.getpid()}.json")
        with open(path + ".tmp", "w") as out:
            json.dump(counts, out)
        os.replace(path + ".tmp", path)

    truth = GroundTruth(on_count=write).install()
    os.register_at_fork(after_in_child=truth.restart)
    return truth


def eai_name(code) -> str:
    """``EAI_SERVICE`` for -8 on glibc: the name the observer labels failures with."""
    for name in dir(socket):
        if name.startswith("EAI_") and getattr(socket, name) == code:
            return name
    return f"EAI_{code}"


_GETADDRINFO_CODE = socket.getaddrinfo.__code__
_THREAD_START_CODE = threading.Thread.start.__code__


def _on_event_loop_thread() -> bool:
    # asyncio._get_running_loop is only re-exported from 3.7; events has it from 3.6.
    return asyncio.events._get_running_loop() is not None
