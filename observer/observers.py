"""Keeping track of the watched processes and turning backend readings into snapshots.

:class:`ProcObserver` reads /proc only (live threads and processes); :class:`BpfObserver` adds
the eBPF probes (every thread created and ended, every getaddrinfo call).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import Counter
from dataclasses import dataclass, replace

import psutil

from observer import labels, procfs, pyruntime
from observer.bpf_backend import (
    RESOLVER_UPROBE_NAMES,
    UPROBE_NAMES,
    BpfProbes,
    RawCounts,
    attach_libc_of,
)
from observer.capabilities import uprobe_capability_hint
from observer.constants import ProcessState, StackFlag
from observer.labels import OTHER_HOSTS, HostLabels
from observer.model import Counts, ProcessRow, Snapshot
from observer.sites import SITES_PER_TARGET, ProcessSites
from observer.targets import PidTarget, RegexTarget, cmdline_of, match_target

log = logging.getLogger(__name__)

SCAN_INTERVAL = 1.0  # seconds between two full scans of /proc for new and gone processes
# Polls a process caught before its interpreter is initialised is looked at again (at the
# default interval, 10 s).
SITE_TRIES = 40

@dataclass
class TrackedProcess:
    pid: int
    target: str
    create_time: float
    generation: int = 0  # the kernel's, which tells a reused PID's processes apart
    resolver: procfs.AddressResolver | None = None
    executor_max_workers: int | None = None
    container_id: str = ""
    pod_uid: str = ""
    sites: ProcessSites | None = None  # its Python frames can be read
    sites_unavailable: str | None = None  # else why not (None while still looking)
    site_tries: int = 0

    def row(self, counts: Counts | None) -> ProcessRow:
        return ProcessRow(
            target=self.target, pid=self.pid, threads=live_threads(self.pid), counts=counts,
            executor_max_workers=self.executor_max_workers,
            container_id=self.container_id, pod_uid=self.pod_uid,
            sites_unavailable=self.sites_unavailable,
        )


def live_threads(pid: int) -> int:
    """num_threads from /proc/PID/stat: one short read, cheaper than parsing status."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            fields = stat.read().rsplit(b")", 1)[1].split()
        return int(fields[17])
    except (OSError, IndexError, ValueError):
        return 0


def create_time(pid: int) -> float | None:
    try:
        return psutil.Process(pid).create_time()
    except psutil.Error:
        return None


class ProcObserver:
    """Watches targets through /proc: processes and live threads, no event counts."""

    backend = "proc"

    def __init__(
        self,
        regex_targets: list[RegexTarget],
        pid_targets: list[PidTarget],
        allow_non_python: bool = False,
        containers_apart: bool = False,
    ) -> None:
        self.regex_targets = regex_targets
        self.pid_targets = {t.pid: t.name for t in pid_targets}
        self.allow_non_python = allow_non_python
        self.procs: dict[int, TrackedProcess] = {}
        self.retired: dict[tuple[str, str, str], Counts] = {}
        # Node mode: each container's processes are series of their own, and so are the
        # folded counts of its exited processes.
        self.containers_apart = containers_apart
        self.host_labels: dict[str, HostLabels] = {}
        # (thread sites, getaddrinfo sites) of each target
        self.site_labels: dict[str, tuple[HostLabels, HostLabels]] = {}
        self._lock = threading.Lock()
        self._last_scan = 0.0
        self._self_pid = os.getpid()
        # PIDs found not to be targets, not read again while they live. Only where the kernel
        # reports every exec (the bpf backend), since a process may exec into a target.
        self._rejected: set[int] = set()
        self._remember_rejections = False

    # Life cycle
    def start(self) -> None:
        if self.backend == "proc":
            log.warning("backend proc: live threads and processes from /proc only; threads "
                        "created, threads exited and getaddrinfo are not measured")
        with self._lock:
            self._scan()

    def poll(self) -> None:
        """Called every tick: finds new and gone processes."""
        with self._lock:
            self._poll_locked()

    def _poll_locked(self) -> None:
        if time.monotonic() - self._last_scan >= SCAN_INTERVAL:
            self._scan()

    def close(self) -> None:
        pass

    def watch_pid(self, pid: int, name: str) -> None:
        """Adds a process as a target now (the demo attaches to each scenario before it runs)."""
        with self._lock:
            self.pid_targets[pid] = name
            if pid not in self.procs:
                self._attach(pid, name)

    def unwatch_pid(self, pid: int) -> None:
        with self._lock:
            self.pid_targets.pop(pid, None)
            self._detach(pid)

    # Finding processes
    def classify(self, pid: int) -> str | None:
        """The target a process belongs to, or None."""
        if pid == self._self_pid:
            return None
        if pid in self.pid_targets:
            return self.pid_targets[pid]
        if not self.regex_targets:
            return None
        cmdline = cmdline_of(pid)
        target = match_target(self.regex_targets, cmdline) if cmdline else None
        if target is None:
            return None
        try:
            if not self.allow_non_python and not procfs.is_python(pid):
                return None
        except OSError:
            return None
        return target.name

    def _scan(self) -> None:
        self._last_scan = time.monotonic()
        for pid, tracked in list(self.procs.items()):
            if create_time(pid) != tracked.create_time:
                self._detach(pid)  # gone, or the PID now belongs to another process
        candidates = self._candidate_pids()
        self._rejected.intersection_update(candidates)
        for pid in candidates:
            if pid in self.procs or pid in self._rejected:
                continue
            target = self.classify(pid)
            if target is not None:
                self._attach(pid, target)
            elif self._remember_rejections:
                self._rejected.add(pid)

    def _candidate_pids(self) -> list[int]:
        if self.regex_targets:
            return psutil.pids()
        return [pid for pid in self.pid_targets if psutil.pid_exists(pid)]

    def _attach(self, pid: int, target: str) -> TrackedProcess | None:
        started = create_time(pid)
        if started is None:
            return None
        tracked = TrackedProcess(pid=pid, target=target, create_time=started)
        self._describe(tracked)
        self.procs[pid] = tracked
        log.info("attached pid %d to target %s", pid, target)
        return tracked

    def _describe(self, tracked: TrackedProcess) -> None:
        try:
            describe(tracked)
        except OSError as err:
            log.debug("process %d went away while attaching: %s", tracked.pid, err)

    def _detach(self, pid: int) -> None:
        tracked = self.procs.pop(pid, None)
        if tracked is None:
            return
        log.info("pid %d of target %s is gone", pid, tracked.target)
        # A --pid target ends with its process: a later process with that PID is not it.
        self.pid_targets.pop(pid, None)
        # Folded counts and host labels live only as long as their processes do.
        key = self.retire_key(tracked)
        if not any(self.retire_key(t) == key for t in self.procs.values()):
            self.retired.pop(key, None)
        if not self._has_processes(tracked.target):
            self.host_labels.pop(tracked.target, None)
            self.site_labels.pop(tracked.target, None)

    def _has_processes(self, target: str) -> bool:
        return any(tracked.target == target for tracked in self.procs.values())

    def retire_key(self, tracked: TrackedProcess) -> tuple[str, str, str]:
        if self.containers_apart:
            return tracked.target, tracked.container_id, tracked.pod_uid
        return tracked.target, "", ""

    # Reading
    def snapshot(self) -> Snapshot:
        with self._lock:
            return Snapshot(
                backend=self.backend,
                rows=[tracked.row(None) for tracked in self.procs.values()],
                targets=self.target_names(),
            )

    def target_names(self) -> list[str]:
        return sorted({t.name for t in self.regex_targets} | set(self.pid_targets.values()))


def describe(tracked: TrackedProcess) -> None:
    """Fills in what /proc tells about a newly attached process."""
    pid = tracked.pid
    mappings = procfs.read_maps(pid)
    exe = procfs.exe_path(pid)
    tracked.resolver = procfs.AddressResolver(pid, mappings, exe)
    tracked.container_id, tracked.pod_uid = procfs.container_identity(pid)
    try:
        allowed = len(psutil.Process(pid).cpu_affinity())
    except psutil.Error:
        allowed = os.cpu_count() or 1
    tracked.executor_max_workers = procfs.executor_default_max_workers(
        procfs.python_version(pid, mappings), os.cpu_count() or 1, allowed
    )


class BpfObserver(ProcObserver):
    """Adds the eBPF probes: counts from the kernel's maps, read at scrape time."""

    backend = "bpf"

    def __init__(self, *args, sites: bool = True, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.probes = BpfProbes(track_new_processes=bool(self.regex_targets), sites=sites)
        self._remember_rejections = True  # exec marks a process pending again
        # Counted once a scan, not per scrape: walking every map is the costly part of it.
        self.map_entries: dict[str, int] = {}
        self._unknown_sends_logged = 0

    def start(self) -> None:
        self.probes.load()
        if self.regex_targets:
            # New processes are counted from exec on: have the usual libc probed already.
            self._attach_libc(self._self_pid)
        super().start()

    def close(self) -> None:
        with self._lock:
            self.probes.close()

    def _poll_locked(self) -> None:
        forget: dict[int, int] = {}
        for tgid, (state, generation) in self.probes.states().items():
            tracked = self.procs.get(tgid)
            if tracked is not None and tracked.generation != generation:
                self._detach(tgid)  # the PID now belongs to another process
                tracked = None
            if state == ProcessState.PENDING:
                self._settle_pending(tgid, generation, forget)
            elif state == ProcessState.EXITED or tracked is None:
                if tracked is not None:
                    self._detach(tgid)
                forget[tgid] = generation
        self.probes.forget(forget)
        for tracked in self.procs.values():
            if tracked.sites is None and tracked.sites_unavailable is None:
                self._find_python(tracked)
        super()._poll_locked()

    def _scan(self) -> None:
        super()._scan()
        swept = self.probes.sweep()
        if swept:
            log.debug("swept %d counters of processes gone unseen", swept)
        self.map_entries = self.probes.map_entries()

    def _settle_pending(self, tgid: int, generation: int, forget: dict[int, int]) -> None:
        """A process that the kernel saw start a program (exec) or fork from a target."""
        self._rejected.discard(tgid)
        target = self.classify(tgid)
        tracked = self.procs.get(tgid)
        if tracked is not None and tracked.target != target:
            self._detach(tgid)  # it became another program
            tracked = None
        if target is None:
            forget[tgid] = generation
        elif tracked is None:
            if self._attach(tgid, target) is None:
                forget[tgid] = generation
        else:
            self.probes.set_state(tgid, ProcessState.WATCHED, generation)
            self._describe(tracked)  # new program image: new mappings
            tracked.sites, tracked.sites_unavailable, tracked.site_tries = None, None, 0
            self._find_python(tracked)

    def _attach(self, pid: int, target: str) -> TrackedProcess | None:
        tracked = super()._attach(pid, target)
        if tracked is None:
            return None
        tracked.generation = self.probes.watch(pid)
        self._attach_libc(pid)
        self._find_python(tracked)
        return tracked

    def _find_python(self, tracked: TrackedProcess) -> None:
        """Lets the probes read the process's Python frames, once its offsets check out."""
        if not self.probes.sites:
            tracked.sites_unavailable = "disabled"
            return
        tracked.site_tries += 1
        try:
            runtime = pyruntime.locate(tracked.pid, procfs.read_maps(tracked.pid))
        except pyruntime.NotReadyYet as err:
            if tracked.site_tries >= SITE_TRIES:
                self._no_sites(tracked, err.reason, str(err))
            return
        except pyruntime.SitesUnavailable as err:
            self._no_sites(tracked, err.reason, str(err))
            return
        except OSError as err:
            log.debug("process %d went away while reading its interpreter: %s", tracked.pid, err)
            return
        self.probes.set_python_process(tracked.pid, tracked.generation, runtime)
        tracked.sites = ProcessSites(pyruntime.CodeReader(tracked.pid, runtime).code)
        log.info("pid %d: Python %d.%d call sites read from its frames", tracked.pid,
                 *runtime.version)

    def _no_sites(self, tracked: TrackedProcess, reason: str, detail: str) -> None:
        tracked.sites_unavailable = reason
        log.warning("pid %d: Python call sites unavailable (%s): %s; caller=event_loop falls "
                    "back to the epoll mark", tracked.pid, reason, detail)

    def _attach_libc(self, pid: int) -> None:
        try:
            objects, attached = attach_libc_of(self.probes, pid)
        except OSError:
            return
        missing = sorted(set(UPROBE_NAMES) - attached)
        # Resolver functions a libc lacks (a static program holds only those it calls) are
        # nothing to count, not an attach error.
        absent = sorted(set(RESOLVER_UPROBE_NAMES) - attached)
        if absent:
            log.info("pid %d: no %s in %s (nothing to count there)", pid, ", ".join(absent),
                     objects)
        for probe in missing:
            self.probes.attach_errors[probe] += 1
        if missing:
            log.warning("pid %d: could not probe %s in %s%s", pid, ", ".join(missing), objects,
                        uprobe_capability_hint())

    def _detach(self, pid: int) -> None:
        tracked = self.procs.get(pid)
        if tracked is not None:
            final = self._counts({pid: tracked}).get(pid)
            key = self.retire_key(tracked)
            others = any(self.retire_key(t) == key and p != pid for p, t in self.procs.items())
            if final is not None and others:
                self.retired.setdefault(key, Counts()).add(final)
        super()._detach(pid)
        if tracked is not None:
            self.probes.forget({pid: tracked.generation})

    def _counts(self, procs: dict[int, TrackedProcess]) -> dict[int, Counts]:
        raw = self.probes.read_counts({pid: t.generation for pid, t in procs.items()})
        return {pid: resolve_counts(raw_counts, procs[pid]) for pid, raw_counts in raw.items()}

    def _executor_threads(self) -> dict[int, Counter[str]]:
        live = self.probes.live_thread_stacks({p: t.generation for p, t in self.procs.items()})
        return {pid: tracked.sites.executor_threads(live.get(pid, Counter()))
                for pid, tracked in self.procs.items() if tracked.sites is not None}

    def snapshot(self) -> Snapshot:
        with self._lock:
            counts = self._counts(self.procs)
            pools = self._executor_threads()
            rows = [t.row(counts.get(pid, empty_counts(t))) for pid, t in self.procs.items()]
            for row in rows:
                row.counts = self._bound_hosts(row.target, row.counts)
                row.executor_threads = pools.get(row.pid)
            return Snapshot(
                backend=self.backend,
                rows=rows,
                retired={key: self._bound_hosts(key[0], counts)
                         for key, counts in self.retired.items()},
                targets=self.target_names(),
                probes_attached=dict(self.probes.probes_attached),
                attach_errors=dict(self.probes.attach_errors),
                bpf_available=True,
                map_entries=self.map_entries,
                dns_unknown_socket_sends=self._dns_unknown_socket_sends(),
            )

    def _dns_unknown_socket_sends(self) -> int:
        sends = self.probes.dns_unknown_socket_sends()
        if sends > self._unknown_sends_logged:
            log.warning("%d sends to port 53 on sockets opened before their process was watched:"
                        " not counted in dns_queries_total", sends)
            self._unknown_sends_logged = sends
        return sends

    def _bound_hosts(self, target: str, counts: Counts) -> Counts:
        """Host and site labels bounded per target (the most counted first)."""
        hosts = self.host_labels.setdefault(target, HostLabels())
        counts = replace(counts, hosts=hosts.relabel(counts.hosts))
        threads, calls = self.site_labels.setdefault(
            target, (HostLabels(SITES_PER_TARGET), HostLabels(SITES_PER_TARGET)))
        if counts.threads_by_site is not None:
            counts.threads_by_site = threads.relabel(counts.threads_by_site)
        if counts.calls_by_site is not None:
            counts.calls_by_site = calls.relabel_calls(counts.calls_by_site)
        return counts


def empty_counts(tracked: TrackedProcess) -> Counts:
    """Counts of a process that has counted nothing yet."""
    return resolve_counts(RawCounts(), tracked)


def resolve_counts(raw: RawCounts, tracked: TrackedProcess) -> Counts:
    """Kernel counts with start routines turned into creator labels, and stacks into sites."""
    created: Counter[str] = Counter()
    for routine, count in raw.created_by_routine.items():
        created[creator_label(tracked, routine, created)] += count
    counts = Counts(
        threads_created=created, threads_exited=raw.threads_exited,
        getaddrinfo_calls=raw.calls, getaddrinfo_failures=raw.failures,
        duration_slots=raw.duration_slots, duration_sum_ns=raw.duration_sum_ns,
        hosts=raw.hosts, dns_queries=raw.dns_queries, resolver_calls=raw.resolver_calls,
    )
    if tracked.sites is not None:
        counts.threads_by_site = tracked.sites.threads_by_site(raw.thread_stacks)
        counts.calls_by_site = tracked.sites.calls_by_site(raw.call_stacks, StackFlag.EVENT_LOOP)
        for caller, dropped in raw.dropped_sites.items():
            if caller is None:
                counts.threads_by_site[OTHER_HOSTS] += dropped
            else:
                counts.calls_by_site[(OTHER_HOSTS, caller)] += dropped
            counts.site_stacks_dropped += dropped
    return counts


def creator_label(tracked: TrackedProcess, routine: int, seen: Counter[str]) -> str:
    if tracked.resolver is None:
        return labels.UNKNOWN_CREATOR
    return labels.bounded_creator(labels.creator(tracked.resolver, routine), seen)
