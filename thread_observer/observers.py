"""Keeping track of the watched processes and turning backend readings into snapshots.

:class:`ProcObserver` reads /proc only (live threads and processes); :class:`BpfObserver` adds
the eBPF probes (every thread created and ended, every getaddrinfo call).
"""

from __future__ import annotations

import logging
import operator
import os
import threading
import time
from collections import Counter
from dataclasses import dataclass, replace

import psutil
from elftools.common.exceptions import ELFError

from thread_observer import labels, procfs, pyruntime
from thread_observer.bpf_backend import (
    RESOLVER_UPROBE_NAMES,
    UPROBE_NAMES,
    BpfProbes,
    ExecReport,
    RawCounts,
    WatchedEntry,
    attach_libc_of,
    pid_namespace_cflags,
    python_object,
)
from thread_observer.capabilities import uprobe_capability_hint
from thread_observer.constants import ProcessState, StackFlag
from thread_observer.executors import ExecutorReader
from thread_observer.kubernetes import NamespacePolicy
from thread_observer.labels import OTHER_HOSTS, HostLabels
from thread_observer.model import Counts, Executor, ProcessRow, SeriesKey, Snapshot
from thread_observer.retired import DEFAULT_GRACE_SECONDS, RetiredCounts
from thread_observer.sites import EVENT_LOOP, OTHER, SITES_PER_TARGET, ProcessSites
from thread_observer.targets import (
    OTHER_TARGET,
    PidTarget,
    RegexTarget,
    TargetNames,
    TargetNumbers,
    cmdline_of,
    first_match,
)

log = logging.getLogger(__name__)

SCAN_INTERVAL = 1.0  # seconds between two full scans of /proc for new and gone processes
# With the bpf backend the kernel reports new programs (exec), forks of watched processes and
# exits in the watched set: the /proc scan is only a safety net, this often.
SAFETY_SCAN_INTERVAL = 10.0
# Seconds between two sweeps of counters of processes gone unseen (and counts of the maps'
# entries).
HOUSEKEEPING_INTERVAL = 1.0
# Seconds a newly attached process is looked at in /proc at every poll: attached at the
# instant it exited, its exit mark in the kernel was overwritten by the attach.
FRESH_SECONDS = 1.0
# Children attached per poll at most: a fork storm must not hold the scrape's lock for long.
MAX_ADOPTIONS_PER_POLL = 64
# Polls a process caught before its interpreter is mapped or initialised, just forked (its
# thread list still its parent's), or changing while it was read, is looked at again (at the
# default interval, 10 s) before it is reported.
SITE_TRIES = 40
# A process's live threads are read from /proc at each scrape until its counts have stayed the
# same this many seconds, then again every THREADS_REREAD seconds (see _live_threads).
THREADS_SETTLE = 1.0
THREADS_REREAD = 10.0


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
    inherited: bool = False  # in its target as a descendant, not by its own match
    hosts_shown: bool = True  # False in a namespace whose host names are not exported
    sites: ProcessSites | None = None  # its Python frames can be read
    executors: ExecutorReader | None = None  # and its thread pools with them
    sites_unavailable: str | None = None  # else why not (None while still looking)
    site_tries: int = 0

    def row(self, counts: Counts | None, threads: int | None = None) -> ProcessRow:
        return ProcessRow(
            target=self.target,
            pid=self.pid,
            threads=live_threads(self.pid) if threads is None else threads,
            counts=counts,
            executor_max_workers=self.executor_max_workers,
            container_id=self.container_id,
            pod_uid=self.pod_uid,
            sites_unavailable=self.sites_unavailable,
        )


def live_threads(pid: int) -> int:
    """The process's threads: the link count of /proc/PID/task is 2 plus its threads (the
    kernel's num_threads), one stat() where /proc/PID/stat makes the kernel write out
    fifty-two fields."""
    try:
        return max(os.stat(f"/proc/{pid}/task").st_nlink - 2, 0)
    except OSError:
        return 0


def mappings_or_none(pid: int) -> list[procfs.Mapping] | None:
    """The process's file-backed mappings, None if it is gone (none at all once it exits)."""
    try:
        return procfs.read_maps(pid)
    except OSError:
        return None


def create_time(pid: int) -> float | None:
    """When the process started (seconds from boot), None if it is gone."""
    stat = procfs.process_stat(pid)
    return stat.started if stat is not None else None


def ended(pid: int, started: float) -> bool:
    """Whether the process started at ``started`` has exited: gone, its PID another
    process's, or a zombie whose threads have all ended (a zombie main thread alone is not
    the end of its process)."""
    stat = procfs.process_stat(pid)
    if stat is None or stat.started != started:
        return True
    return stat.state in ("Z", "X") and stat.threads <= 1


class ProcObserver:
    """Watches targets through /proc: processes and live threads, no event counts."""

    backend = "proc"
    # Why this backend runs rather than bpf, which --backend auto wanted (set by
    # startup.make_observer); None when it is the backend asked for. /readyz tells it.
    fallback_reason: str | None = None

    def __init__(
        self,
        regex_targets: list[RegexTarget],
        pid_targets: list[PidTarget],
        allow_non_python: bool = False,
        containers_apart: bool = False,
        follow_children: bool = True,
        pids_apart: bool = False,
        series_grace: float = DEFAULT_GRACE_SECONDS,
        namespaces: NamespacePolicy | None = None,
    ) -> None:
        self.regex_targets = regex_targets
        self.pid_targets = {t.pid: t.name for t in pid_targets}
        self.follow_children = follow_children
        self.names = TargetNames()
        self.overflowed = 0  # processes put under OTHER_TARGET (a name template's cap)
        # tgid -> (generation, the command line it was started with), from the exec reports
        self.started_cmdlines: dict[int, tuple[int, str]] = {}
        self.allow_non_python = allow_non_python
        self.procs: dict[int, TrackedProcess] = {}
        # Node mode: each container's processes are series of their own, and so are the
        # folded counts of its exited processes; with --label-pid, each process's.
        self.containers_apart = containers_apart
        self.pids_apart = pids_apart
        self.retired = RetiredCounts(series_grace, self._permanent)
        self.namespaces = namespaces
        self.host_labels: dict[str, HostLabels] = {}
        # (thread sites, getaddrinfo sites) of each target
        self.site_labels: dict[str, tuple[HostLabels, HostLabels]] = {}
        self._lock = threading.Lock()
        self._last_scan = 0.0
        self._self_pid = os.getpid()
        # PIDs found not to be targets, not read again while they live. Only where the kernel
        # reports every exec (the bpf backend), since a process may exec into a target.
        self._rejected: set[int] = set()
        # Matched processes caught before their loader mapped their libraries -> until when
        # whether they are Python is asked again (_is_python).
        self._loading: dict[int, float] = {}
        self._remember_rejections = False

    # Life cycle
    def start(self) -> None:
        if self.backend == "proc":
            log.warning(
                "backend proc: live threads and processes from /proc only; threads "
                "created, threads exited and getaddrinfo are not measured"
            )
        with self._lock:
            self._scan()

    def poll(self) -> None:
        """Called every tick: finds new and gone processes."""
        with self._lock:
            self._poll_locked()

    def _poll_locked(self) -> None:
        if time.monotonic() - self._last_scan >= self.scan_interval():
            self._scan()

    def scan_interval(self) -> float:
        return SCAN_INTERVAL

    def wake_fd(self) -> int | None:
        """A file descriptor readable when the kernel has news; see :meth:`woken`."""
        return None

    def woken(self) -> bool:
        """Takes the news that made :meth:`wake_fd` readable; whether a poll should come at
        once rather than at the end of its interval."""
        return False

    def poll_soon(self) -> bool:
        """Whether the next poll should come at once rather than after the interval."""
        return False

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
        """The target a process belongs to by its own match, or None."""
        if pid == self._self_pid:
            return None
        if pid in self.pid_targets:
            return self.pid_targets[pid]
        if not self.regex_targets:
            return None
        started = self.started_cmdlines.get(pid, (0, None))[1]
        target = self.match_cmdlines(started, cmdline_of(pid))
        if target is None:
            return None
        if not (self.allow_non_python or self._is_python(pid)):
            return None
        return target if self._in_watched_namespace(pid, target) else None

    def _in_watched_namespace(self, pid: int, target: str) -> bool:
        """Whether a matched process runs where the node agent was told to watch (its pod's
        namespace, from its cgroup and the kubelet's directories)."""
        if self.namespaces is None:
            return True
        container_id, pod_uid = procfs.container_identity(pid)
        if self.namespaces.watches(container_id, pod_uid):
            return True
        log.debug("pid %d matches target %s outside the namespaces watched", pid, target)
        return False

    def _is_python(self, pid: int) -> bool:
        """Whether a matched process is Python. One caught at its exec, before the loader has
        mapped its libraries, cannot say yet (an embedded interpreter, uWSGI's, is in
        libpython): it is remembered in _loading and asked again at the next polls."""
        try:
            mappings = procfs.read_maps(pid)
            if procfs.is_python(pid, mappings):
                self._loading.pop(pid, None)
                return True
            if procfs.loader_busy(mappings):
                self._loading.setdefault(pid, time.monotonic() + FRESH_SECONDS)
                return False
        except OSError:
            pass
        self._loading.pop(pid, None)
        return False

    def _still_loading(self, pid: int) -> bool:
        """Matched, but its loader was busy when asked whether it is Python: not decided yet,
        for at most FRESH_SECONDS (a process held there, by a debugger, is then let go)."""
        until = self._loading.get(pid)
        if until is not None and time.monotonic() < until:
            return True
        self._loading.pop(pid, None)
        return False

    def match_cmdlines(self, *cmdlines: str | None) -> str | None:
        """The target name matching the command line a process started with or the one it
        shows now (tried in that order), or None."""
        found = first_match(self.regex_targets, cmdlines)
        return self.names.name(*found) if found else None

    def _scan(self) -> None:
        self._last_scan = time.monotonic()
        for pid, tracked in list(self.procs.items()):
            if create_time(pid) != tracked.create_time:
                self._detach(pid)  # gone, or the PID now belongs to another process
        candidates = self._candidate_pids()
        self._rejected.intersection_update(candidates)
        now = time.monotonic()
        self._loading = {pid: until for pid, until in self._loading.items() if until > now}
        for pid in candidates:
            if pid in self.procs or pid in self._rejected:
                continue
            target = self.classify(pid)
            inherited = target is None and self._parent_target(pid)
            if target or inherited:
                self._attach(pid, target or inherited, inherited=bool(inherited))
            elif self._remember_rejections and not self._still_loading(pid):
                self._rejected.add(pid)

    def _parent_target(self, pid: int) -> str | None:
        """The target of a process's parent when that one is attached (a child the kernel
        did not hand a target: forked before its parent was matched)."""
        if not self.follow_children:
            return None
        parent = self.procs.get(procfs.parent_pid(pid) or 0)
        return parent.target if parent is not None else None

    def _candidate_pids(self) -> list[int]:
        if self.regex_targets:
            return psutil.pids()
        return [pid for pid in self.pid_targets if psutil.pid_exists(pid)]

    def _attach(self, pid: int, target: str, inherited: bool = False) -> TrackedProcess | None:
        started = create_time(pid)
        if started is None:
            return None
        tracked = TrackedProcess(pid=pid, target=target, create_time=started, inherited=inherited)
        self.overflowed += target == OTHER_TARGET
        self._describe(tracked)
        self.procs[pid] = tracked
        self.retired.live(self.retire_key(tracked))
        log.info(
            "attached pid %d to target %s%s", pid, target, " (a descendant)" if inherited else ""
        )
        return tracked

    def _describe(self, tracked: TrackedProcess) -> None:
        try:
            describe(tracked)
        except OSError as err:
            log.debug("process %d went away while attaching: %s", tracked.pid, err)
        if self.namespaces is not None:
            tracked.hosts_shown = self.namespaces.shows_hosts(tracked.container_id, tracked.pod_uid)

    def _detach(self, pid: int) -> None:
        tracked = self.procs.pop(pid, None)
        if tracked is None:
            return
        log.info("pid %d of target %s is gone", pid, tracked.target)
        # A --pid target ends with its process: a later process with that PID is not it.
        self.pid_targets.pop(pid, None)
        self._forget_target_if_empty(tracked)

    def _forget_target_if_empty(self, tracked: TrackedProcess) -> None:
        key = self.retire_key(tracked)
        if not self._has_key(key):
            self.retired.idle(key)
        self._forget_labels_if_unused(tracked.target)

    def _forget_labels_if_unused(self, target: str) -> None:
        # Host and site labels live as long as a series of the target may show them: a label
        # admitted again in another order would move counts between series.
        if self._has_processes(target) or any(k.target == target for k in self.retired.counts):
            return
        self.host_labels.pop(target, None)
        self.site_labels.pop(target, None)

    def _has_key(self, key: SeriesKey) -> bool:
        return any(self.retire_key(t) == key for t in self.procs.values())

    def _has_processes(self, target: str) -> bool:
        return any(tracked.target == target for tracked in self.procs.values())

    def retire_key(self, tracked: TrackedProcess) -> SeriesKey:
        key = SeriesKey(tracked.target)
        if self.containers_apart:
            key = key._replace(container_id=tracked.container_id, pod_uid=tracked.pod_uid)
        if self.pids_apart:
            key = key._replace(pid=tracked.pid)
        return key

    @property
    def named(self) -> set[str]:
        """The targets named on the command line or by watch_pid: their series live as long
        as the observer (a name template's names come and go with their processes)."""
        named = {t.name for t in self.regex_targets if not t.is_template}
        return named | set(self.pid_targets.values())

    def _permanent(self, key: SeriesKey) -> bool:
        """A named target's own series (not a container's or a process's): kept for the
        observer's life."""
        return key == SeriesKey(key.target) and key.target in self.named

    def expire_series(self) -> None:
        """Drops the series whose grace period has passed, and labels no series needs."""
        for key in self.retired.expire():
            log.debug("series %s gone after its grace period", key)
            self._forget_labels_if_unused(key.target)

    # Reading
    def snapshot(self) -> Snapshot:
        with self._lock:
            self.expire_series()
            return Snapshot(
                backend=self.backend,
                rows=[tracked.row(None) for tracked in self.procs.values()],
                targets=self.target_names(),
            )

    def target_names(self) -> list[str]:
        """The configured names (a name template's names appear with their processes)."""
        return sorted(self.named)


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
    """Adds the eBPF probes: counts from the kernel's maps, read at scrape time.

    A target is a process tree: the kernel watches a watched process's children from their
    fork, with its parent's target number (:class:`TargetNumbers`); here they are attached
    when first seen, re-matched when they start a program, and, if they ended unseen, their
    counts are folded into their target's retired totals.
    """

    backend = "bpf"

    def __init__(
        self,
        *args,
        sites: bool = True,
        host_names: bool = True,
        dns_queries: bool = True,
        epoll_mark: bool = True,
        **kwargs,
    ) -> None:
        super().__init__(*args, **kwargs)
        # Uprobes for the watched processes only, where every one of them is attached before
        # it is watched: --pid targets without their children.
        per_process = not self.regex_targets and not self.follow_children
        self.probes = BpfProbes(
            track_new_processes=bool(self.regex_targets),
            sites=sites,
            host_names=host_names,
            dns_queries=dns_queries,
            epoll_mark=epoll_mark,
            follow_children=self.follow_children,
            per_process=per_process,
        )
        self.numbers = TargetNumbers()
        self._remember_rejections = True  # exec marks a process pending again
        # Counted once a second, not per scrape: walking every map is the costly part of it.
        self.map_entries: dict[str, int] = {}
        self._unknown_sends_logged = 0
        self._last_housekeeping = 0.0
        self._in_pid_namespace = bool(pid_namespace_cflags())
        # The watched set as read by a poll that found nothing to do in it: read the same
        # again, there is nothing to do either.
        self._quiet_states: dict[int, WatchedEntry] | None = None
        # Exec reports taken since the last poll
        self._reports: list[ExecReport] = []
        # Some were read before the kernel marked their process pending: poll again soon.
        self._reports_ahead = False
        # pid -> until when it is looked at in /proc at every poll (see FRESH_SECONDS)
        self._fresh: dict[int, float] = {}
        self._binaries: set[tuple] = set()  # interpreter objects made known to the probes
        # Fresh pids whose libraries were not mapped yet when they were attached
        self._libc_pending: set[int] = set()
        # pid -> ((raw counts, sites reader, creator resolver, generation), its counts)
        self._resolved: dict[int, tuple[tuple, Counts]] = {}
        # pid -> (its raw counts then, its live threads, when read, when its counts changed)
        self._threads_read: dict[int, tuple[RawCounts, int, float, float]] = {}

    def start(self) -> None:
        self.probes.load()
        if self.regex_targets:
            # New processes are counted from exec on: have the usual libc probed already.
            self._attach_libc(self._self_pid)
        super().start()

    def close(self) -> None:
        with self._lock:
            self.probes.close()

    def scan_interval(self) -> float:
        # In a PID namespace a fork of a process not yet matched is not reported by the
        # kernel (its id there is unknown to the parent's tracepoint): the scan finds it.
        return SCAN_INTERVAL if self._in_pid_namespace else SAFETY_SCAN_INTERVAL

    def wake_fd(self) -> int | None:
        """The exec reports' ring buffer: a program that may be a target's is attached at
        once, not at the end of the interval."""
        return self.probes.exec_reports_fd()

    def woken(self) -> bool:
        """True if a program just started may be a target's (other programs, the machine's
        usual execs, wait for the poll at the end of the interval)."""
        with self._lock:
            return any(self._may_be_target(report) for report in self._take_reports())

    def _may_be_target(self, report: ExecReport) -> bool:
        if report.target or report.tgid in self.procs:
            return True  # a watched process (a target's child) started a program
        started = self.started_cmdlines[report.tgid][1]
        return first_match(self.regex_targets, (started, cmdline_of(report.tgid))) is not None

    def _take_reports(self) -> list[ExecReport]:
        reports = self.probes.exec_reports()
        for report in reports:
            self.started_cmdlines[report.tgid] = (report.generation, " ".join(report.arguments))
        self._reports += reports
        return reports

    def poll_soon(self) -> bool:
        return self._reports_ahead

    def _poll_locked(self) -> None:
        states = self.probes.states()
        # After the states: every pending process seen there has its report by now.
        self._take_reports()
        reports, self._reports = self._reports, []
        # A report is written just before its process is marked pending: one read in between
        # is seen at the next poll, which comes soon.
        self._reports_ahead = any(
            (entry := states.get(report.tgid)) is None or entry.generation != report.generation
            for report in reports
        )
        if states is not self._quiet_states:
            self._quiet_states = None if self._settle(states) else states
        self._settle_execs(reports, states)
        self._look_at_fresh()
        for tracked in self.procs.values():
            if tracked.sites is None and tracked.sites_unavailable is None:
                self._find_python(tracked)
        # The epoll mark decides caller only where frames cannot: it runs only while needed.
        self.probes.want_epoll_mark(self._frames_unreadable())
        super()._poll_locked()
        if time.monotonic() - self._last_housekeeping >= HOUSEKEEPING_INTERVAL:
            self._housekeeping()

    def _settle(self, states: dict[int, WatchedEntry]) -> bool:
        """Acts on the watched set's entries; False if there was nothing to do."""
        forget: dict[int, int] = {}
        ended: dict[int, TrackedProcess] = {}  # their counts are read in one pass
        adoptions = 0
        acted = False
        # In the order the kernel first saw them (PIDs wrap around), so that a parent matched
        # in this poll is attached before its children.
        for tgid, entry in sorted(states.items(), key=lambda item: item[1].generation):
            tracked = self.procs.get(tgid)
            if (
                entry.state == ProcessState.WATCHED
                and tracked is not None
                and tracked.generation == entry.generation
            ):
                continue  # the usual case: nothing to do
            acted = True
            if tracked is not None and tracked.generation != entry.generation:
                self._detach(tgid)  # the PID now belongs to another process
                tracked = None
            if entry.state == ProcessState.PENDING:
                self._settle_pending(tgid, entry, forget)
            elif entry.state == ProcessState.EXITED:
                ended[tgid] = tracked or self._unseen(tgid, entry)
                forget[tgid] = entry.generation
            elif tracked is None:
                # Bounded work per poll (a fork storm): the rest are counted meanwhile, and
                # adopted at the next polls or folded in when they end.
                adoptions += 1
                if adoptions <= MAX_ADOPTIONS_PER_POLL and not self._adopt(tgid, entry):
                    forget[tgid] = entry.generation
        if any(ended.values()):
            self._retire(ended)
        self._forget(forget)
        return acted

    def _settle_execs(self, reports: list[ExecReport], states: dict[int, WatchedEntry]) -> None:
        """Programs started by attached processes whose entry reads watched, not pending: a
        watch written from an older look at a process (its command line read just before its
        exec) overwrites the pending mark of the exec; the exec's report still tells."""
        forget: dict[int, int] = {}
        for report in reports:
            tracked = self.procs.get(report.tgid)
            entry = states.get(report.tgid)
            if (
                tracked is not None
                and entry is not None
                and entry.state == ProcessState.WATCHED
                and tracked.generation == entry.generation == report.generation
            ):
                self._settle_pending(report.tgid, entry, forget)
        self._forget(forget)

    def _forget(self, forget: dict[int, int]) -> None:
        """Processes (tgid -> generation) out of the kernel's watched set, and their command
        lines out of ours."""
        self.probes.forget(forget)
        for tgid, generation in forget.items():
            if self.started_cmdlines.get(tgid, (None,))[0] == generation:
                del self.started_cmdlines[tgid]

    def _look_at_fresh(self) -> None:
        """Ends newly attached processes that /proc shows gone: attached at the instant they
        exited, their exit mark was overwritten (a process marked exited is ended by the poll
        before it gets here). Probes the libraries of those attached before their loader had
        mapped them."""
        now = time.monotonic()
        for pid, until in list(self._fresh.items()):
            tracked = self.procs.get(pid)
            if tracked is None or ended(pid, tracked.create_time):
                if tracked is not None:
                    log.debug("pid %d ended as it was attached", pid)
                    self._detach(pid)
                del self._fresh[pid]
                self._libc_pending.discard(pid)
            elif now >= until:
                del self._fresh[pid]
                if pid in self._libc_pending:
                    self._attach_libc(pid)  # not fresh any more: says what is missing
            elif pid in self._libc_pending:
                self._attach_libc(pid)

    def _scan(self) -> None:
        super()._scan()
        self._housekeeping()

    def _housekeeping(self) -> None:
        """Once a second: counters of processes gone unseen, the maps' entry counts, and
        command lines of processes no longer watched."""
        self._last_housekeeping = time.monotonic()
        self.expire_series()
        swept, self.map_entries = self.probes.sweep_and_count()
        if swept:
            log.debug("swept %d counters of processes gone unseen", swept)
        # Reports of processes the kernel no longer watches (forgotten before their report).
        for tgid in [t for t in self.started_cmdlines if t not in self.procs]:
            if not psutil.pid_exists(tgid):
                del self.started_cmdlines[tgid]

    def _inherited_target(self, entry: WatchedEntry) -> str | None:
        return self.numbers.name(entry.target) if self.follow_children else None

    def _adopt(self, tgid: int, entry: WatchedEntry) -> bool:
        """A child the kernel watches since its fork: attached to its own match, else to its
        parent's target. False if it has no target; True if it is attached, or gone (its exit
        is handled at the next poll)."""
        inherited = self._inherited_target(entry)
        if inherited is None:
            return False
        own = self.classify(tgid)
        # Its libc is its parent's, probed already: a fork has its parent's mappings.
        if self._attach(tgid, own or inherited, inherited=own is None, probe_libc=False) is None:
            log.debug("pid %d of target %s ended before it was attached", tgid, inherited)
        return True

    def _unseen(self, tgid: int, entry: WatchedEntry) -> TrackedProcess | None:
        """A process that ended before user space attached it (a child that lived a few
        milliseconds), as if it had been attached; None if it had no target."""
        started = self.started_cmdlines.get(tgid)
        started_cmdline = started[1] if started and started[0] == entry.generation else None
        target = self.match_cmdlines(started_cmdline) or self._inherited_target(entry)
        if target is None:
            return None
        # A fork shares its parent's mappings (a new program's are unknown: creator unknown)
        # and its container.
        parent = self.procs.get(entry.parent)
        gone = TrackedProcess(pid=tgid, target=target, create_time=0.0, generation=entry.generation)
        if parent is not None:
            gone.resolver = None if started_cmdline else parent.resolver
            gone.container_id, gone.pod_uid = parent.container_id, parent.pod_uid
            gone.hosts_shown = parent.hosts_shown
        return gone

    def _retire(self, ended: dict[int, TrackedProcess | None]) -> None:
        """Processes that ended: their counts go to their target's retired totals (while it
        has processes), read from the maps in one pass; the kernel forgets them after."""
        processes = {tgid: tracked for tgid, tracked in ended.items() if tracked is not None}
        finals = self._counts(processes)
        for tgid, tracked in processes.items():
            if tgid in self.procs:
                self._detach(tgid, finals.get(tgid), forget_in_kernel=False)
            elif tgid in finals:
                key = self.retire_key(tracked)
                self.retired.add(key, finals[tgid])
                if not self._has_key(key):
                    self.retired.idle(key)
                self.overflowed += tracked.target == OTHER_TARGET

    def _settle_pending(self, tgid: int, entry: WatchedEntry, forget: dict[int, int]) -> None:
        """A process that the kernel saw start a program (exec), or fork from a process not
        yet matched: it belongs to its own match, else (a descendant) to its target so far."""
        self._rejected.discard(tgid)
        tracked = self.procs.get(tgid)
        own = self.classify(tgid)
        inherited = None
        if tracked is None or tracked.inherited:
            inherited = self._inherited_target(entry) or self._parent_target(tgid)
        elif own is None:
            # Matched on its parent's command line between its fork and its exec (a poll
            # woken by another exec can fall there): still a descendant of its parent's target.
            inherited = self._parent_target(tgid)
        target = own or inherited
        if target is None and tracked is None and self._still_loading(tgid):
            return  # left pending, counted from its exec: decided at a later poll
        if target is None:
            if tracked is not None:
                self._detach(tgid)  # it became another program
            forget[tgid] = entry.generation
        elif tracked is None:
            self._attach(tgid, target, inherited=own is None)  # None: gone, seen exiting next
        else:
            if tracked.target != target:
                # It moves with all its counts: a child that starts another target's program.
                log.info("pid %d moves from target %s to %s", tgid, tracked.target, target)
                old = replace(tracked)
                tracked.target = target
                self.retired.live(self.retire_key(tracked))
                self._forget_target_if_empty(old)
            tracked.inherited = own is None
            self.probes.set_state(
                tgid,
                WatchedEntry(
                    ProcessState.WATCHED,
                    self.numbers.number(target),
                    entry.generation,
                    entry.parent,
                ),
            )
            self._fresh[tgid] = time.monotonic() + FRESH_SECONDS
            self._describe(tracked)  # new program image: new mappings
            tracked.sites, tracked.sites_unavailable, tracked.site_tries = None, None, 0
            self._find_python(tracked)

    def _attach(
        self, pid: int, target: str, inherited: bool = False, probe_libc: bool = True
    ) -> TrackedProcess | None:
        tracked = super()._attach(pid, target, inherited)
        if tracked is None:
            return None
        tracked.generation = self.probes.watch(pid, self.numbers.number(target))
        self._fresh[pid] = time.monotonic() + FRESH_SECONDS
        if probe_libc:
            self._attach_libc(pid)
        self._find_python(tracked)
        return tracked

    def _find_python(self, tracked: TrackedProcess) -> None:
        """Lets the probes read the process's Python frames, once its offsets check out."""
        if not self.probes.sites:
            tracked.sites_unavailable = "disabled"
            return
        tracked.site_tries += 1
        mappings = None
        try:
            mappings = procfs.read_maps(tracked.pid)
            runtime = pyruntime.locate(tracked.pid, mappings)
        except pyruntime.SitesUnavailable as err:
            self._not_found(tracked, err, mappings)
            return
        except OSError as err:  # its /proc files gone, or one of them unreadable
            self._not_found(tracked, pyruntime.ReadFailed("unreadable", str(err)), mappings)
            return
        self.probes.set_python_process(tracked.pid, tracked.generation, runtime)
        self._learn_binary(tracked.pid, runtime, mappings)
        codes = pyruntime.CodeReader(tracked.pid, runtime)
        tracked.sites = ProcessSites(codes.code)
        tracked.executors = ExecutorReader(tracked.pid, runtime, codes)
        log.info(
            "pid %d: Python %d.%d call sites read from its frames", tracked.pid, *runtime.version
        )

    def _frames_unreadable(self) -> list[int]:
        """Watched processes whose frames cannot tell caller now: those whose frames cannot be
        read, and those whose interpreter is still to be found (unless the kernel placed it
        at their start: a known interpreter, or a fork's inherited one)."""
        return [
            t.pid
            for t in self.procs.values()
            if t.sites_unavailable
            or (t.sites is None and not self.probes.python_placed(t.pid, t.generation))
        ]

    def _learn_binary(self, pid: int, runtime, mappings: list[procfs.Mapping]) -> None:
        """Makes the object holding the process's interpreter known to the probes, once: the
        next processes that map it have their frames read from their start."""
        try:
            known = python_object(pid, runtime, mappings, self._binaries)
        except (OSError, ELFError) as err:  # it ended
            log.debug("pid %d: its interpreter's object not learnt: %s", pid, err)
            return
        if known is None:
            return
        self._binaries.add((known.identity, known.pidns))
        ways = self.probes.learn_python_object(known, runtime)
        if ways:
            log.info(
                "pid %d: %s known: processes that map it have their frames read from their "
                "start (%s)",
                pid,
                runtime.object_path,
                " and ".join(
                    {"exec": "at their exec", "start": "as the interpreter starts"}[w] for w in ways
                ),
            )

    def _not_found(
        self,
        tracked: TrackedProcess,
        err: pyruntime.SitesUnavailable,
        mappings: list[procfs.Mapping] | None,
    ) -> None:
        """Reports why a process's frames cannot be read, unless it ended, or may be read at
        the next polls (up to SITE_TRIES): one not ready yet, one whose mappings changed while
        it was read (it started a program, or loaded a library), and one that a read failed in
        while fresh (attached or started a program within FRESH_SECONDS: in its exec, whose
        report comes at the next poll)."""
        last_try = tracked.site_tries >= SITE_TRIES
        if isinstance(err, pyruntime.NotReadyYet) and not last_try:
            return
        now = mappings_or_none(tracked.pid)
        # An exiting process has no mappings left before it is a zombie.
        if now == [] or ended(tracked.pid, tracked.create_time):
            log.debug("process %d went away while reading its interpreter: %s", tracked.pid, err)
            return
        changing = now != mappings or (
            isinstance(err, pyruntime.ReadFailed) and self._is_fresh(tracked.pid)
        )
        if changing and not last_try:
            log.debug("pid %d changed while its interpreter was read: %s", tracked.pid, err)
            return
        self._no_sites(tracked, err.reason, str(err))

    def _is_fresh(self, pid: int) -> bool:
        return self._fresh.get(pid, 0.0) > time.monotonic()

    def _no_sites(self, tracked: TrackedProcess, reason: str, detail: str) -> None:
        tracked.sites_unavailable = reason
        fallback = "the epoll mark" if self.probes.epoll_mark else "none: caller=other"
        log.warning(
            "pid %d: Python call sites unavailable (%s): %s; caller=event_loop falls back to %s",
            tracked.pid,
            reason,
            detail,
            fallback,
        )

    def _attach_libc(self, pid: int) -> None:
        try:
            objects, attached = attach_libc_of(self.probes, pid)
        except OSError:
            return
        self._libc_pending.discard(pid)
        if not objects and pid in self._fresh:
            # Caught between its exec and its loader's mapping of the libraries: tried again
            # at the next polls (see _look_at_fresh).
            self._libc_pending.add(pid)
            return
        missing = sorted(set(UPROBE_NAMES) - attached)
        # Resolver functions a libc lacks (a static program holds only those it calls) are
        # nothing to count, not an attach error.
        absent = sorted(set(RESOLVER_UPROBE_NAMES) - attached)
        if absent:
            log.info(
                "pid %d: no %s in %s (nothing to count there)", pid, ", ".join(absent), objects
            )
        for probe in missing:
            self.probes.attach_errors[probe] += 1
        if missing:
            log.warning(
                "pid %d: could not probe %s in %s%s",
                pid,
                ", ".join(missing),
                objects or "its libraries (its loader had not mapped them within a second)",
                uprobe_capability_hint(),
            )

    def _detach(self, pid: int, final: Counts | None = None, forget_in_kernel: bool = True) -> None:
        tracked = self.procs.get(pid)
        if tracked is not None:
            if final is None:
                final = self._counts({pid: tracked}).get(pid)
            if final is not None:
                self.retired.add(self.retire_key(tracked), final)
        super()._detach(pid)
        self._resolved.pop(pid, None)
        self._threads_read.pop(pid, None)
        self.probes.detach_process(pid)
        if tracked is not None:
            if forget_in_kernel:
                self.probes.forget({pid: tracked.generation})
            self.started_cmdlines.pop(pid, None)

    def _counts(self, procs: dict[int, TrackedProcess]) -> dict[int, Counts]:
        return self._resolve_all(self._raw_counts(procs), procs)

    def _raw_counts(self, procs: dict[int, TrackedProcess]) -> dict[int, RawCounts]:
        return self.probes.read_counts({pid: t.generation for pid, t in procs.items()})

    def _resolve_all(
        self, raw: dict[int, RawCounts], procs: dict[int, TrackedProcess]
    ) -> dict[int, Counts]:
        return {pid: self._resolve(raw_counts, procs[pid]) for pid, raw_counts in raw.items()}

    def _resolve(self, raw: RawCounts, tracked: TrackedProcess) -> Counts:
        """resolve_counts, again only when the kernel's counts (the probes give the same
        object while they are unchanged) or the process's readers changed: most processes
        count nothing between two scrapes."""
        key = (raw, tracked.sites, tracked.resolver, tracked.generation)
        kept = self._resolved.get(tracked.pid)
        if kept is not None and same(kept[0], key):
            return kept[1]
        counts = resolve_counts(raw, tracked)
        if self.procs.get(tracked.pid) is tracked:  # not one that ended unseen
            self._resolved[tracked.pid] = (key, counts)
        return counts

    def _read_executors(self, raw: dict[int, RawCounts]) -> dict[int, list[Executor]]:
        """Each process's thread pools as they are now (where its frames can be read)."""
        found = {}
        for pid, tracked in self.procs.items():
            if tracked.executors is None:
                continue
            created = sum(raw.get(pid, NO_COUNTS).created_by_routine.values())
            try:
                found[pid] = tracked.executors.read(created)
            except pyruntime.SitesUnavailable as err:  # it ended, or its memory went away
                log.debug("pid %d: executors not read: %s", pid, err)
        return found

    def snapshot(self) -> Snapshot:
        with self._lock:
            self.expire_series()
            raw = self._raw_counts(self.procs)
            counts = self._resolve_all(raw, self.procs)
            executors = self._read_executors(raw)
            rows = [
                t.row(
                    counts[pid] if pid in counts else self._resolve(NO_COUNTS, t),
                    self._live_threads(t, raw.get(pid, NO_COUNTS)),
                )
                for pid, t in self.procs.items()
            ]
            for row in rows:
                row.counts = self._bound_hosts(row.target, row.counts)
                row.executors = executors.get(row.pid)
            return Snapshot(
                backend=self.backend,
                rows=rows,
                retired={
                    key: self._bound_hosts(key.target, counts)
                    for key, counts in self.retired.counts.items()
                },
                targets=self.target_names(),
                probes_attached=dict(self.probes.probes_attached),
                attach_errors=dict(self.probes.attach_errors),
                bpf_available=True,
                map_entries=self.map_entries,
                losses=self._said(
                    {**self.probes.kernel_drops(), "target_names_overflowed_total": self.overflowed}
                ),
                dns_queries=self.probes.dns_queries,
            )

    def _live_threads(self, tracked: TrackedProcess, raw: RawCounts) -> int:
        """A process's live threads, read from /proc again only while its counts changed in
        the last THREADS_SETTLE seconds (the kernel counted something in it: a thread made or
        ended among others; a thread counted as ended may still be listed in /proc for a
        moment), and THREADS_REREAD seconds after the last read (should the kernel have
        dropped an event): a stat() per process and scrape was most of a scrape's CPU with
        1,000 processes."""
        now = time.monotonic()
        kept = self._threads_read.get(tracked.pid)
        if kept is not None and kept[0] is raw:
            _, threads, read_at, changed = kept
            if read_at - changed >= THREADS_SETTLE and now - read_at < THREADS_REREAD:
                return threads  # read once the counts had settled, and not long ago
        else:
            changed = now
        threads = live_threads(tracked.pid)
        self._threads_read[tracked.pid] = (raw, threads, now, changed)
        return threads

    def _said(self, losses: dict[str, int]) -> dict[str, int]:
        """Losses, with a warning when DNS sends went uncounted since the last one."""
        sends = losses.get("dns_unknown_socket_sends_total", 0)
        if sends > self._unknown_sends_logged:
            log.warning(
                "%d writes to TCP streams to port 53 written before their process was watched:"
                " not counted in dns_queries_total",
                sends,
            )
            self._unknown_sends_logged = sends
        return losses

    def _bound_hosts(self, target: str, counts: Counts) -> Counts:
        """Host and site labels bounded per target (the most counted first)."""
        if not counts.hosts and not counts.threads_by_site and not counts.calls_by_site:
            return counts  # nothing to bound (most processes): no copy
        hosts = self.host_labels.setdefault(target, HostLabels())
        counts = replace(counts, hosts=hosts.relabel(counts.hosts))
        threads, calls = self.site_labels.setdefault(
            target, (HostLabels(SITES_PER_TARGET), HostLabels(SITES_PER_TARGET))
        )
        if counts.threads_by_site is not None:
            counts.threads_by_site = threads.relabel(counts.threads_by_site)
        if counts.calls_by_site is not None:
            counts.calls_by_site = calls.relabel_calls(counts.calls_by_site)
        return counts


# Counts of a process that has counted nothing yet (never changed)
NO_COUNTS = RawCounts()


def same(kept: tuple, now: tuple) -> bool:
    """Whether two tuples (of one length) hold the same objects."""
    return all(map(operator.is_, kept, now))


def resolve_counts(raw: RawCounts, tracked: TrackedProcess) -> Counts:
    """Kernel counts with start routines turned into creator labels, and stacks into sites."""
    created: Counter[str] = Counter()
    for routine, count in raw.created_by_routine.items():
        created[creator_label(tracked, routine, created)] += count
    counts = Counts(
        threads_created=created,
        threads_exited=raw.threads_exited,
        getaddrinfo_calls=raw.calls,
        getaddrinfo_failures=raw.failures,
        duration_slots=raw.duration_slots,
        duration_sum_ns=raw.duration_sum_ns,
        hosts=raw.hosts if tracked.hosts_shown else Counter(),
        dns_queries=raw.dns_queries,
        resolver_calls=raw.resolver_calls,
    )
    if tracked.sites is not None:
        counts.threads_by_site = tracked.sites.threads_by_site(raw.thread_stacks)
        counts.calls_by_site = tracked.sites.calls_by_site(raw.call_stacks, StackFlag.EVENT_LOOP)
        # The plain counter agrees with the by-site one: plain asyncio callbacks moved over.
        moved = tracked.sites.callbacks_on_loop(raw.call_stacks, StackFlag.EVENT_LOOP)
        if moved:
            counts.getaddrinfo_calls = Counter(raw.calls)
            counts.getaddrinfo_calls[EVENT_LOOP] += moved
            counts.getaddrinfo_calls[OTHER] -= moved
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
