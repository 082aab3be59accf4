"""The observer's own costs and health: its process (client_python's collectors), its BPF
programs' run time and run count as the kernel accounts them (ebpf_exporter's way), and its
poll loop's errors and progress."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from pathlib import Path

from prometheus_client import PlatformCollector, ProcessCollector
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from thread_observer.constants import metric_name
from thread_observer.health import PollRecord

log = logging.getLogger(__name__)

BPF_STATS_SYSCTL = Path("/proc/sys/kernel/bpf_stats_enabled")
FDINFO = Path("/proc/self/fdinfo")


def process_collectors() -> list[Collector]:
    """process_* (CPU, memory, open fds, start time) and python_info, as every client_python
    exporter has them (not registered anywhere yet)."""
    return [ProcessCollector(registry=None), PlatformCollector(registry=None)]


def parse_fdinfo(text: str) -> dict[str, str]:
    """/proc/PID/fdinfo/FD of a BPF program: "key:\\tvalue" lines (prog_id, run_time_ns,
    run_cnt since Linux 5.1)."""
    fields = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep:
            fields[key.strip()] = value.strip()
    return fields


def bpf_stats_enabled(path: Path = BPF_STATS_SYSCTL) -> bool:
    try:
        return path.read_text().strip() == "1"
    except OSError:
        return False


class BpfProgramCollector(Collector):
    """Run count and run time of each of the observer's BPF programs, read from the kernel's
    fdinfo of their file descriptors. The kernel counts only while kernel.bpf_stats_enabled is
    1 (it costs a little on every run): otherwise the two families are absent, not zero, and
    the log says why once."""

    def __init__(
        self,
        program_fds: Callable[[], dict[str, int]],
        stats_enabled: Callable[[], bool] = bpf_stats_enabled,
        fdinfo: Path = FDINFO,
    ) -> None:
        self._program_fds = program_fds
        self._stats_enabled = stats_enabled
        self._fdinfo = fdinfo
        self._said_off = False
        self._misses_said: dict[str, int] = {}

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        fields = self._fields()
        yield self._misses(fields)
        enabled = self._stats_enabled()
        yield GaugeMetricFamily(
            metric_name("bpf_stats_enabled"),
            "1 when kernel.bpf_stats_enabled is on and the BPF programs' run time is counted",
            value=int(enabled),
        )
        if not enabled:
            if not self._said_off:
                log.info(
                    "kernel.bpf_stats_enabled is 0: the probes' own run time is not "
                    "counted (sysctl -w kernel.bpf_stats_enabled=1 to count it)"
                )
                self._said_off = True
            return
        self._said_off = False
        runs = CounterMetricFamily(
            metric_name("bpf_program_runs"),
            "Runs of each BPF program of the observer",
            labels=["program"],
        )
        seconds = CounterMetricFamily(
            metric_name("bpf_program_run_seconds"),
            "Time spent running each BPF program of the observer",
            labels=["program"],
        )
        for program, info in fields.items():
            try:
                count, nanoseconds = int(info["run_cnt"]), int(info["run_time_ns"])
            except (KeyError, ValueError) as err:
                log.debug("no run statistics for BPF program %s: %s", program, err)
                continue
            runs.add_metric([program], count)
            seconds.add_metric([program], nanoseconds / 1e9)
        yield from (runs, seconds)

    def _fields(self) -> dict[str, dict[str, str]]:
        """Each program's fdinfo fields (programs whose fdinfo cannot be read left out)."""
        found = {}
        for program, fd in sorted(self._program_fds().items()):
            try:
                found[program] = parse_fdinfo((self._fdinfo / str(fd)).read_text())
            except OSError as err:
                log.debug("no fdinfo for BPF program %s: %s", program, err)
        return found

    def _misses(self, fields: dict[str, dict[str, str]]) -> Metric:
        """Runs the kernel skipped (recursion_misses, Linux 5.12+): a kprobe or tracepoint
        program does not run while another such program runs on that CPU, nor a raw tracepoint
        program inside itself. Each is an event the counts miss: counted whatever
        bpf_stats_enabled says."""
        misses = CounterMetricFamily(
            metric_name("bpf_program_misses"),
            "Runs of each BPF program the kernel skipped (another program was running on that "
            "CPU): events the counts miss",
            labels=["program"],
        )
        skipped = {}
        for program, info in fields.items():
            if "recursion_misses" in info:
                skipped[program] = int(info["recursion_misses"])
                misses.add_metric([program], skipped[program])
        self._say_misses(skipped)
        return misses

    def _say_misses(self, skipped: dict[str, int]) -> None:
        """A warning when the kernel skipped runs since the last one said."""
        rising = {p: n for p, n in skipped.items() if n > self._misses_said.get(p, 0)}
        if rising:
            log.warning(
                "the kernel skipped runs of BPF programs (another program or a map syscall "
                "held the CPU), events not counted: %s",
                ", ".join(f"{p} {n}" for p, n in sorted(rising.items())),
            )
            self._misses_said.update(rising)


class PollCollector(Collector):
    """The poll loop's record: polls that raised, and when the last one completed, so that a
    failing or stuck loop shows in Prometheus as it does on /healthz. The time is absent until
    the first poll completes, never a 0 that reads as 1970."""

    def __init__(self, record: PollRecord) -> None:
        self._record = record

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        yield CounterMetricFamily(
            metric_name("poll_errors"),
            "Polls that raised an error (each logged with its traceback)",
            value=self._record.errors,
        )
        completed_at = self._record.last_completed_at
        if completed_at is not None:
            yield GaugeMetricFamily(
                metric_name("last_poll_timestamp_seconds"),
                "Unix time of the last completed poll",
                value=completed_at,
            )
