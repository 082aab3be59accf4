"""The eBPF probes: compiling, attaching, reading and pruning their maps.

This is the only module that imports bcc, and only inside functions, so that everything else
can be imported and tested without root.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import gc
import importlib.resources
import itertools
import logging
import os
import struct
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Container
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from elftools.common.exceptions import ELFError

from thread_observer import bpf_calls, procfs, pyruntime
from thread_observer.bpf_calls import lookup_batch
from thread_observer.capabilities import (
    BCC_HINT,
    SYS_BPF,
    Result,
    has_task_storage,
    headers_hint,
    kernel_version,
    task_registers_readable,
    uprobe_capability_hint,
)
from thread_observer.compile_errors import captured_stderr, summarize
from thread_observer.constants import (
    PROBED_RESOLVER_FUNCTIONS,
    Caller,
    MapSize,
    ProcessState,
    ResolverFunction,
    Transport,
    bpf_cflags,
    eai_name,
    resolver_entry_program,
)
from thread_observer.kernel_btf import Btf, BtfError, KernelField, field_cflags, running_kernel_btf
from thread_observer.kernel_headers import prepare_kernel_headers, say_headers
from thread_observer.labels import host_label
from thread_observer.loaded_probes import (
    KPROBE,
    NO_ATTACH_TYPE,
    RAW_TRACEPOINT,
    TRACEPOINT,
    LoadedProbes,
)
from thread_observer.preemption import guard_calls, preempt_guard
from thread_observer.probe_loader import LoaderFailed, load_in_child
from thread_observer.tracefs import missing_fields, tracepoint_fields

log = logging.getLogger(__name__)

PROBE_FILES = (
    "watched.h",
    "python_stack.h",
    "thread_state.h",
    "processes.bpf.c",
    "threads.bpf.c",
    "getaddrinfo.bpf.c",
    "dns.bpf.c",
    "resolver.bpf.c",
)
DNS_PROBE_FILE = "dns.bpf.c"
INIT_PID_NAMESPACE_INO = 0xEFFFFFFC
EPOLL_SYSCALLS = ("epoll_wait", "epoll_pwait", "epoll_pwait2")
# Tracepoints handled by functions that need no tracepoint arguments.
EPOLL_WAIT_PROGRAM = "mark_event_loop_thread"  # getaddrinfo.bpf.c's, at the epoll waits
PLAIN_TRACEPOINTS = [(f"syscalls:sys_enter_{name}", EPOLL_WAIT_PROGRAM) for name in EPOLL_SYSCALLS]
# Syscalls whose tracepoints dns.bpf.c uses, on entry and on exit: the sends only.
DNS_SYSCALLS = ("sendto", "write", "writev", "sendmsg", "sendmmsg")
DNS_TRACEPOINTS = (
    *(f"syscalls:sys_enter_{name}" for name in DNS_SYSCALLS),
    *(f"syscalls:sys_exit_{name}" for name in DNS_SYSCALLS),
)
# The kernel fields dns.bpf.c reads to learn what a send's fd is, at the running kernel's
# offsets (its BTF): fd -> file -> socket -> sock, and a TCP socket's write counters.
DNS_KERNEL_FIELDS = (
    KernelField("TASK_STRUCT_FILES", "task_struct", "files", 8),
    KernelField("FILES_STRUCT_FDT", "files_struct", "fdt", 8),
    KernelField("FDTABLE_MAX_FDS", "fdtable", "max_fds", 4),
    KernelField("FDTABLE_FD", "fdtable", "fd", 8),
    KernelField("FILE_F_INODE", "file", "f_inode", 8),
    KernelField("FILE_PRIVATE_DATA", "file", "private_data", 8),
    KernelField("INODE_I_MODE", "inode", "i_mode", 2),
    KernelField("INODE_I_INO", "inode", "i_ino", 8),
    KernelField("SOCKET_FILE", "socket", "file", 8),
    KernelField("SOCKET_SK", "socket", "sk", 8),
    KernelField("SOCK_SK_SOCKET", "sock", "sk_socket", 8),
    KernelField("SOCK_FAMILY", "sock", "__sk_common.skc_family", 2),
    KernelField("SOCK_PEER_PORT", "sock", "__sk_common.skc_dport", 2),
    KernelField("SOCK_TYPE", "sock", "sk_type", 2),
    KernelField("SOCK_PROTOCOL", "sock", "sk_protocol", 2),
    KernelField("TCP_SOCK_BYTES_SENT", "tcp_sock", "bytes_sent", 8),
    KernelField("TCP_SOCK_WRITE_SEQ", "tcp_sock", "write_seq", 4),
    KernelField("TCP_SOCK_SND_NXT", "tcp_sock", "snd_nxt", 4),
)
# The fields processes.bpf.c reads at a fork, in a PID namespace, to find the child's id there.
PIDNS_KERNEL_FIELDS = (
    KernelField("TASK_STRUCT_PID", "task_struct", "pid", 4),
    KernelField("TASK_STRUCT_TGID", "task_struct", "tgid", 4),
    KernelField("TASK_STRUCT_THREAD_PID", "task_struct", "thread_pid", 8),
    KernelField("PID_LEVEL", "pid", "level", 4),
    KernelField("UPID_NR", "upid", "nr", 4),
    KernelField("UPID_NS", "upid", "ns", 8),
    KernelField("PID_NAMESPACE_INUM", "pid_namespace", "ns.inum", 4),
)
# The new task's id, read at task_newtask's raw tracepoint (threads.bpf.c).
TASK_PID_FIELD = KernelField("NEWTASK_PID_OFFSET", "task_struct", "pid", 4)
# The fields processes.bpf.c reads at an exec to find the new program's arguments in its mm.
EXEC_KERNEL_FIELDS = (
    KernelField("TASK_STRUCT_MM", "task_struct", "mm", 8),
    KernelField("MM_STRUCT_ARG_START", "mm_struct", "arg_start", 8),
    KernelField("MM_STRUCT_ARG_END", "mm_struct", "arg_end", 8),
)
# Where processes.bpf.c finds, at an exec, the file the process starts and where its code lies:
# an interpreter already read in that file has its frames read from the first instruction.
PYTHON_BINARY_FIELDS = (
    KernelField("MM_STRUCT_START_CODE", "mm_struct", "start_code", 8),
    KernelField("MM_STRUCT_EXE_FILE", "mm_struct", "exe_file", 8),
    KernelField("FILE_F_INODE", "file", "f_inode", 8),
    KernelField("INODE_I_INO", "inode", "i_ino", 8),
    KernelField("INODE_I_SB", "inode", "i_sb", 8),
    KernelField("INODE_I_SIZE", "inode", "i_size", 8),
    KernelField("SUPER_BLOCK_S_DEV", "super_block", "s_dev", 4),
)
PYTHON_OBJECTS_MAP = "python_objects"
PYTHON_EXECUTABLES_MAP = "python_executables"
PYTHON_STARTING = "python_starting"  # processes.bpf.c's, at the interpreter's start
INITIALIZE_SYMBOL = "_PyRuntime_Initialize"  # called first by every way into an interpreter
# Where a kernel's sched_process_exit does not say that the thread ending is its process's last
# (its group_dead field is newer than Linux 6.12), the probes read it from the task: its
# signal_struct's count of live threads, which do_exit has already decremented.
EXIT_KERNEL_FIELDS = (
    KernelField("TASK_STRUCT_SIGNAL", "task_struct", "signal", 8),
    KernelField("SIGNAL_STRUCT_LIVE", "signal_struct", "live", 4),
)
# The tracepoints every configuration has, attached by bcc as it loads the programs.
THREAD_TRACEPOINTS = ("task:task_newtask", "sched:sched_process_exec", "sched:sched_process_exit")
MACRO_TRACEPOINTS = (*THREAD_TRACEPOINTS, *DNS_TRACEPOINTS)
# Where a forked child first returns to user space: in a PID namespace it takes its watch there.
CHILD_RETURNS = tuple(f"syscalls:sys_exit_{name}" for name in ("clone", "clone3", "fork", "vfork"))
MAPS = (
    "watched_tgids",
    "process_totals",
    "threads_created_total",
    "getaddrinfo_failures_total",
    "resolver_calls_total",
)
# dns.bpf.c's: left out with it (--no-dns-queries). The last is per thread, as its sends are
# seen: at the syscalls' tracepoints, or at the socket layer's.
DNS_MAPS = ("dns_queries_total", "dns_streams")
DNS_THREAD_MAPS = {False: "dns_send_calls", True: "dns_mmsg_progress"}
# Per-thread state (thread_state.h): in the tasks themselves where the kernel has task storage
# (nothing to walk, and it goes with each thread), else a map like the others.
THREAD_STATE_MAP = "thread_states"
SITE_MAPS = (
    "python_processes",
    "threads_created_by_site_total",
    "getaddrinfo_calls_by_site_total",
    "site_stacks_dropped_total",
)
# (symbol, BPF function, on return): the metrics' probes, and the timeline's.
UPROBES = (("pthread_create", "pthread_create_entry", False),)


@dataclass(frozen=True)
class SessionProbe:
    """Programs attached with a uprobe_multi link per object: ``session`` at entry and return
    as one uprobe session (Linux 6.13+), else ``entry`` and ``on_return`` with a link each."""

    session: str
    entry: str
    on_return: str


GETADDRINFO_PROBE = SessionProbe("getaddrinfo_session", "getaddrinfo_entry", "getaddrinfo_return")
# resolver.bpf.c's. Resolver functions a libc lacks (a static program holds only those it
# calls) are nothing to count, not an attach error.
RESOLVER_PROBE = SessionProbe("resolver_session", "resolver_entry", "resolver_return")
# Every uprobe program the metrics' probes may run, by BPF function name.
UPROBE_PROGRAMS = (
    *(function for _, function, _ in UPROBES),
    *(
        function
        for probe in (GETADDRINFO_PROBE, RESOLVER_PROBE)
        for function in (probe.session, probe.entry, probe.on_return)
    ),
)
# Every symbol looked for in a libc-like object.
LIBC_SYMBOLS = (
    *(symbol for symbol, _, _ in UPROBES),
    "getaddrinfo",
    *(function.label for function in PROBED_RESOLVER_FUNCTIONS),
)
TIMELINE_UPROBES = (
    ("pthread_create", "timeline_pthread_create", False),
    ("getaddrinfo", "timeline_getaddrinfo_entry", False),
    ("getaddrinfo", "timeline_getaddrinfo_return", True),
)


def uprobe_name(symbol: str, on_return: bool) -> str:
    return symbol + ("_return" if on_return else "")


UPROBE_NAMES = (
    *(uprobe_name(symbol, on_return) for symbol, _, on_return in UPROBES),
    *(uprobe_name("getaddrinfo", on_return) for on_return in (False, True)),
)
RESOLVER_UPROBE_NAMES = tuple(
    uprobe_name(f.label, on_return)
    for on_return in (False, True)
    for f in PROBED_RESOLVER_FUNCTIONS
)
DNS_PROBE_NAMES = tuple(t.split(":")[1] for t in DNS_TRACEPOINTS)
EPOLL_PROBE_NAMES = EPOLL_SYSCALLS
# The raw tracepoints that replace those syscall tracepoints where the kernel allows
# (current_syscall.h): the epoll mark at the scheduler's switch, and the DNS probe at the
# socket layer's sends.
SWITCH_PROBE_NAMES = ("sched_switch",)
SWITCH_PROGRAM = "mark_at_switch"  # getaddrinfo.bpf.c's, attached at sched_switch
MARK_LINGER = 5.0  # seconds the epoll mark stays attached after the last process needed it
SOCKET_SEND_PROBE_NAMES = ("sock_send_length", "tcp_sendmsg_locked")
PROBE_NAMES = (
    *(t.split(":")[1] for t in MACRO_TRACEPOINTS),
    *EPOLL_SYSCALLS,
    *SWITCH_PROBE_NAMES,
    *SOCKET_SEND_PROBE_NAMES,
    *UPROBE_NAMES,
    *RESOLVER_UPROBE_NAMES,
)


class BpfUnavailable(RuntimeError):
    """eBPF cannot work here; the message says what to do."""


@dataclass
class RawCounts:
    """One process's counters as the kernel keeps them (creators still as addresses)."""

    created_by_routine: Counter[int] = field(default_factory=Counter)
    threads_exited: int = 0
    calls: Counter[str] = field(default_factory=Counter)
    failures: Counter[str] = field(default_factory=Counter)
    duration_slots: Counter[int] = field(default_factory=Counter)
    duration_sum_ns: int = 0
    hosts: Counter[str] = field(default_factory=Counter)
    dns_queries: Counter[str] = field(default_factory=Counter)
    resolver_calls: Counter[tuple[str, str]] = field(default_factory=Counter)
    # (StackFlag bits, code object addresses innermost first) -> count
    thread_stacks: Counter[tuple[int, tuple[int, ...]]] = field(default_factory=Counter)
    call_stacks: Counter[tuple[int, tuple[int, ...]]] = field(default_factory=Counter)
    # Events counted as <other> because a by-site map was full: None for threads, else caller
    dropped_sites: Counter[str | None] = field(default_factory=Counter)
    sites_read: bool = False  # the process has by-site counters (its interpreter was found)


def stack_of(key) -> tuple[int, tuple[int, ...]]:
    codes = tuple(key.code)
    depth = next((i for i, code in enumerate(codes) if code == 0), len(codes))
    return key.flags, codes[:depth]


def _add_thread_stack(counts: RawCounts, key, value: int) -> None:
    counts.thread_stacks[stack_of(key)] += value


def _add_call_stack(counts: RawCounts, key, value: int) -> None:
    counts.call_stacks[stack_of(key)] += value


def _add_dropped(counts: RawCounts, key, value: int) -> None:
    counts.dropped_sites[Caller(key.kind - 1).label if key.kind else None] += value


def _add_created(counts: RawCounts, key, value: int) -> None:
    counts.created_by_routine[key.start_routine] += value


def _add_totals(counts: RawCounts, key, value) -> None:
    counts.threads_exited += value.threads_exited
    for caller, calls in zip(Caller, value.calls, strict=True):
        if calls:
            counts.calls[caller.label] += calls
    for slot, calls in enumerate(value.duration_slots):
        if calls:
            counts.duration_slots[slot] += calls
    counts.duration_sum_ns += value.duration_ns_sum


def _add_failure(counts: RawCounts, key, value: int) -> None:
    counts.failures[eai_name(key.error)] += value


def _add_host(counts: RawCounts, key, value: int) -> None:
    counts.hosts[host_label(bytes(key.host))] += value


def _add_dns_queries(counts: RawCounts, key, value: int) -> None:
    counts.dns_queries[Transport(key.transport).label] += value


def _add_resolver_call(counts: RawCounts, key, value: int) -> None:
    counts.resolver_calls[ResolverFunction(key.function).label, Caller(key.caller).label] += value


# Every map keyed by (tgid, generation, ...), and how its values add to a process's counts.
COUNTER_MAPS = {
    "process_totals": _add_totals,
    "threads_created_total": _add_created,
    "getaddrinfo_failures_total": _add_failure,
    "resolver_calls_total": _add_resolver_call,
}
DNS_COUNTER_MAPS = {"dns_queries_total": _add_dns_queries}
# Without them (--no-host-names) getaddrinfo reads no name, and this map is compiled out.
HOST_COUNTER_MAPS = {"getaddrinfo_host_calls_total": _add_host}
SITE_COUNTER_MAPS = {
    "threads_created_by_site_total": _add_thread_stack,
    "getaddrinfo_calls_by_site_total": _add_call_stack,
    "site_stacks_dropped_total": _add_dropped,
}


def probe_source(files: tuple[str, ...] = PROBE_FILES) -> str:
    """The probes as one translation unit: bcc rewrites map helpers only in its main file, so
    the header and the programs are joined (watched.h's include guard makes the programs'
    own ``#include "watched.h"`` a no-op)."""
    folder = importlib.resources.files("thread_observer.bpf")
    return "\n".join((folder / name).read_text() for name in files)


def raise_for_missing_fields(lacking: dict[str, list[str]]) -> None:
    """BpfUnavailable naming every tracepoint field the probe files read and this kernel's
    formats lack (``lacking``, as missing_fields gives them)."""
    if lacking:
        said = "; ".join(f"{name} reads {', '.join(fields)}" for name, fields in lacking.items())
        raise BpfUnavailable(f"this kernel's tracepoints lack fields the probes read: {said}")


def process_exit_cflags(fields: frozenset[str] | None, btf: Btf | BtfError) -> list[str]:
    """-D flags: how the probes tell a process's last thread ending (group dead) at
    sched_process_exit, from the tracepoint's own fields where it has group_dead, else from
    the task's signal_struct at the offsets of the kernel's BTF, else from the main thread's
    end (a process whose main thread ends before the others is then taken as ended early)."""
    if fields is None or "group_dead" in fields:
        return ["-DEXIT_GROUP_DEAD_FIELD=1"]
    try:
        return ["-DEXIT_GROUP_DEAD_FIELD=0", *kernel_cflags(btf, EXIT_KERNEL_FIELDS)]
    except BtfError as err:
        log.warning(
            "sched_process_exit has no group_dead field in this kernel and %s: a process is "
            "taken as ended when its main thread ends",
            err,
        )
        return ["-DEXIT_GROUP_DEAD_FIELD=0"]


def kernel_format_cflags(btf: Btf | BtfError | None = None) -> list[str]:
    """-D flags for the tracepoint fields this kernel may lack (bcc builds ``args`` from the
    running kernel's format files: a missing field would fail the whole compile)."""
    fields = tracepoint_fields("sched:sched_process_exit")
    if fields is not None and "group_dead" not in fields and btf is None:
        btf = kernel_btf()
    return process_exit_cflags(fields, btf)


def compile_probes(
    files: tuple[str, ...], cflags: list[str], what: str, btf: Btf | BtfError | None = None
):
    """Compiles and loads probe files as one BPF object (tracepoints attach on load)."""
    bcc = import_bcc()
    folder = importlib.resources.files("thread_observer.bpf")
    if btf is None:
        btf = kernel_btf()
    guard = preempt_guard(btf)
    cflags = [
        *cflags,
        *kernel_format_cflags(btf),
        *pid_namespace_cflags(),
        *guard.cflags(),
        f"-I{folder}",
    ]
    # Here, not only in the checks before: timeline (and a test's own probes) compile without
    # them, and bcc reads BCC_KERNEL_SOURCE at each compile. Without headers the compile is
    # still tried (bcc has ways of its own), its failure then saying what to install.
    headers = prepare_kernel_headers()
    say_headers(headers)
    started = time.monotonic()
    with captured_stderr() as diagnostics:
        try:
            bpf = bcc.BPF(text=probe_source(files), cflags=cflags)
        except Exception as err:  # bcc raises bare Exception for compile and load errors
            first = summarize(diagnostics())
            raise BpfUnavailable(
                f"compiling the {what} failed: {first or err} ({headers_hint(headers)})"
            ) from None
    compiled = time.monotonic() - started
    # Before anything of the module is loaded but its tracepoints (which bcc loads at once,
    # and which call no kfunc).
    guard_calls(bpf, guard)
    log.info("%s", guard.describe())
    rss_compiled = procfs.own_rss_mib()
    release_free_memory()
    log.info(
        "compiled the %s in %.2f s (RSS %.0f MiB, %.0f MiB once LLVM's freed memory is returned)",
        what,
        compiled,
        rss_compiled,
        procfs.own_rss_mib(),
    )
    return bpf


def load_probes(files: tuple[str, ...], cflags: list[str], programs: list) -> LoadedProbes:
    """The daemon's probes compiled and loaded in a child process (probe_loader.py: LLVM
    never in this one), their tracepoints attached here."""
    try:
        loaded = load_in_child(files, cflags, "probes", programs)
    except LoaderFailed as err:
        raise BpfUnavailable(str(err)) from None
    try:
        loaded.attach_autoload()
    except OSError as err:
        loaded.cleanup()
        raise BpfUnavailable(f"attaching the probes' tracepoints failed: {err}") from None
    return loaded


def watch_process(watched, tgid: int, target: int = 0) -> int:
    """Marks a process watched in a ``watched_tgids`` map, with the observer's number for its
    target (which its children inherit); returns its generation, the one the kernel gave it if
    it has one."""
    entry = watched.get(ctypes.c_uint32(tgid))
    generation = entry.generation if entry is not None else time.monotonic_ns()
    parent = entry.parent if entry is not None else 0
    watched[ctypes.c_uint32(tgid)] = watched.Leaf(ProcessState.WATCHED, target, generation, parent)
    return generation


def has_uprobe_multi_links() -> bool:
    """Whether the kernel attaches one program to many uprobes with a link (uprobe_multi,
    Linux 6.6), each with its attach cookie."""
    return kernel_version() >= (6, 6)


def has_uprobe_sessions() -> bool:
    """Whether the kernel runs one program at a function's entry and return, the return only
    where the entry asks for it (BPF_TRACE_UPROBE_SESSION, Linux 6.13)."""
    return kernel_version() >= (6, 13)


@dataclass(frozen=True)
class Hooks:
    """Where the epoll mark and the DNS probe see their events: at raw tracepoints that are no
    syscall's, reading the syscall from the task's saved registers (current_syscall.h), or at
    the syscalls' own tracepoints. While any syscall tracepoint is attached, every syscall of
    every task on the host takes the kernel's slower path."""

    epoll_at_switch: bool = False
    sends_at_sockets: bool = False

    def cflags(self, epoll_mark: bool) -> list[str]:
        return [
            f"-DEPOLL_MARK_AT_SWITCH={int(epoll_mark and self.epoll_at_switch)}",
            f"-DSENDS_AT_SOCKETS={int(self.sends_at_sockets)}",
        ]


SYSCALL_HOOKS = Hooks()
SYSCALL_HOOKED = "at the syscalls' tracepoints (every syscall of the host on the slower path)"


def choose_hooks(btf: Btf | BtfError) -> Hooks:
    """The raw tracepoints where the kernel has them: bpf_task_pt_regs (as task storage,
    Linux 5.15+ with BTF), on x86-64, whose registers current_syscall.h reads; for the sends,
    sock_send_length (6.3+) and tcp_sendmsg_locked (6.10+), which the kernel's BTF lists."""
    if not task_registers_readable() or isinstance(btf, BtfError):
        return SYSCALL_HOOKS
    sockets = all(btf.has_typedef(f"btf_trace_{name}") for name in SOCKET_SEND_PROBE_NAMES)
    return Hooks(epoll_at_switch=True, sends_at_sockets=sockets)


def in_pid_namespace() -> bool:
    return os.stat("/proc/self/ns/pid").st_ino != INIT_PID_NAMESPACE_INO


def pid_namespace_cflags() -> list[str]:
    """Our PID namespace (its device and inode), where the observer runs in one of its own."""
    if not in_pid_namespace():
        return []
    info = os.stat("/proc/self/ns/pid")
    return [f"-DPIDNS_DEV={info.st_dev}", f"-DPIDNS_INO={info.st_ino}"]


def forked_child_cflags(btf: Btf | BtfError) -> list[str]:
    """In a PID namespace: where processes.bpf.c reads a forked child's id in our namespace at
    sched_process_fork (CHILD_AT_FORK=1); without the kernel's BTF, none, and the child takes
    its id at its first return from the clone, at the syscalls' exit tracepoints."""
    if not in_pid_namespace():
        return []
    try:
        fields = kernel_cflags(btf, PIDNS_KERNEL_FIELDS)
        numbers = btf.array_offset("pid", "numbers")  # type: ignore[union-attr]
        upid = btf.struct_size("upid")  # type: ignore[union-attr]
    except BtfError as err:
        log.warning(
            "forked children take their ids at their first return from clone, fork or vfork "
            "(syscall tracepoints, every syscall of the host on the slower path): %s",
            err,
        )
        return ["-DCHILD_AT_FORK=0"]
    return [*fields, f"-DPID_NUMBERS={numbers}", f"-DUPID_SIZE={upid}", "-DCHILD_AT_FORK=1"]


def kernel_btf() -> Btf | BtfError:
    """The running kernel's BTF (parsing it takes about 0.25 s: once per load), or the error
    that says why it cannot be read."""
    try:
        return running_kernel_btf()
    except BtfError as err:
        return err


def kernel_cflags(btf: Btf | BtfError, fields: tuple[KernelField, ...]) -> list[str]:
    """-D flags: the running kernel's offset of each field a probe reads (BtfError if there
    is no BTF or it lacks one)."""
    if isinstance(btf, BtfError):
        raise btf
    return field_cflags(btf, fields)


def task_event_cflags(btf: Btf | BtfError) -> list[str]:
    """-D flags: a thread's or process's start, exec and end seen at raw tracepoints, which
    the kernel never skips for another program running on the CPU (probes/threads.bpf.c),
    where the kernel's BTF gives the new task's pid offset; else at the tracepoints."""
    try:
        offset = kernel_cflags(btf, (TASK_PID_FIELD,))[0].split("=")[1]
    except BtfError as err:
        log.warning(
            "threads and programs seen at the sched and task tracepoints, not their raw "
            "forms: %s; on a kernel that preempts kernel code, events that come while a map "
            "is read are skipped (bpf_program_misses_total counts them)",
            err,
        )
        return ["-DRAW_TASK_EVENTS=0"]
    return ["-DRAW_TASK_EVENTS=1", f"-DNEWTASK_PID_OFFSET={offset}"]


def exec_kernel_cflags(btf: Btf | BtfError) -> list[str]:
    """-D flags: where processes.bpf.c finds a new program's arguments; none, said in the
    log, where the kernel's BTF cannot tell (the reports then carry no arguments, and the
    command line as started is read from /proc)."""
    try:
        return kernel_cflags(btf, EXEC_KERNEL_FIELDS)
    except BtfError as err:
        log.warning(
            "command lines as started not read at exec: %s (a kernel built with "
            "CONFIG_DEBUG_INFO_BTF has it); /proc/PID/cmdline is read instead, after the "
            "process may have renamed itself",
            err,
        )
        return []


def python_binary_cflags(btf: Btf | BtfError) -> list[str]:
    """-D flags for processes.bpf.c to know, at an exec, an executable whose interpreter was
    read before; none (said in the log) where the kernel's BTF cannot tell."""
    try:
        return kernel_cflags(btf, PYTHON_BINARY_FIELDS)
    except BtfError as err:
        log.warning(
            "a new process's Python frames are read once its interpreter is found, not from "
            "its start: %s; until then, caller comes from the epoll mark",
            err,
        )
        return []


def import_bcc():
    try:
        import bcc
    except ImportError as err:
        raise BpfUnavailable(f"bcc is not importable ({err}): {BCC_HINT}") from None
    return bcc


@dataclass(frozen=True)
class WatchedEntry:
    """One process of the kernel's watched set."""

    state: ProcessState
    target: int  # the observer's number for its target, 0 for none yet
    generation: int
    parent: int = 0  # the parent of a child watched since its fork


@dataclass(frozen=True)
class ExecReport:
    """A process that started a program, with the arguments it was given."""

    tgid: int
    target: int
    generation: int
    arguments: list[str]


def exec_arguments(raw: bytes, length: int) -> list[str]:
    """The argument slots of an exec report, up to the first empty one."""
    arguments = []
    for start in range(0, len(raw), length):
        slot = raw[start : start + length].split(b"\0", 1)[0]
        if not slot:
            break
        arguments.append(slot.decode(errors="replace"))
    return arguments


# Counters the kernel keeps about what it could not do: self metrics.
KERNEL_DROPS = ("children_not_watched_total", "exec_reports_lost_total")
DNS_KERNEL_DROPS = ("dns_unknown_socket_sends_total",)


@dataclass(frozen=True)
class ProbeChoices:
    """What the user chose of the probes (``run``'s flags)."""

    track_new_processes: bool
    sites: bool = True
    follow_children: bool = True
    per_process: bool = False
    host_names: bool = True
    dns_queries: bool = True
    epoll_mark: bool = True

    @property
    def epoll_mark_on_demand(self) -> bool:
        """Where frames are read, the mark decides only for processes whose frames cannot be:
        it is attached while there is one, and otherwise no program runs at any context switch
        or epoll wait of the machine."""
        return self.epoll_mark and self.sites


@dataclass(frozen=True, eq=False)
class KernelFeatures:
    """What the running kernel offers the probes, found in one place (:meth:`detect`); a test
    or a benchmark builds one to plan the probes as on another kernel."""

    btf: Btf | BtfError  # the kernel's BTF, or why it cannot be read
    hooks: Hooks  # where the epoll mark and the DNS probe see their events
    task_storage: bool
    uprobe_multi: bool  # uprobe_multi links (6.6+)
    uprobe_sessions: bool  # uprobe sessions (6.13+)
    pid_namespace: bool  # the observer runs in a PID namespace of its own
    # A tracepoint's fields in this kernel ("system:event" -> names, None where unknown)
    tracepoint_fields: Callable[[str], frozenset[str] | None] = tracepoint_fields

    @classmethod
    def detect(cls) -> KernelFeatures:
        btf = kernel_btf()
        return cls(
            btf=btf,
            hooks=choose_hooks(btf),
            task_storage=has_task_storage(),
            uprobe_multi=has_uprobe_multi_links(),
            uprobe_sessions=has_uprobe_sessions(),
            pid_namespace=in_pid_namespace(),
        )


@dataclass(frozen=True)
class ProbeListing:
    """The maps read and the probes listed for the features on."""

    counter_maps: dict
    maps: tuple[str, ...]
    probe_names: tuple[str, ...]
    kernel_drop_names: tuple[str, ...]


def probe_listing(choices: ProbeChoices, hooks: Hooks, dns_queries: bool) -> ProbeListing:
    # Without dns.bpf.c, none of its tracepoints: no program runs at any process's write or
    # send; without the epoll mark, none at any process's epoll waits. Only the hooks chosen
    # are listed.
    sockets, switch = hooks.sends_at_sockets, hooks.epoll_at_switch
    dns_names = SOCKET_SEND_PROBE_NAMES if sockets else DNS_PROBE_NAMES
    epoll_names = SWITCH_PROBE_NAMES if switch else EPOLL_PROBE_NAMES
    mark_always = choices.epoll_mark and not choices.epoll_mark_on_demand
    left_out = (
        *(() if dns_queries else dns_names),
        *(() if mark_always else epoll_names),
        *(DNS_PROBE_NAMES if sockets else SOCKET_SEND_PROBE_NAMES),
        *(EPOLL_PROBE_NAMES if switch else SWITCH_PROBE_NAMES),
    )
    return ProbeListing(
        counter_maps={
            **COUNTER_MAPS,
            **(HOST_COUNTER_MAPS if choices.host_names else {}),
            **(DNS_COUNTER_MAPS if dns_queries else {}),
            **(SITE_COUNTER_MAPS if choices.sites else {}),
        },
        maps=(
            *MAPS,
            *(HOST_COUNTER_MAPS if choices.host_names else ()),
            *((*DNS_MAPS, DNS_THREAD_MAPS[sockets]) if dns_queries else ()),
            *(SITE_MAPS if choices.sites else ()),
        ),
        probe_names=tuple(name for name in PROBE_NAMES if name not in left_out),
        kernel_drop_names=(*KERNEL_DROPS, *(DNS_KERNEL_DROPS if dns_queries else ())),
    )


@dataclass(frozen=True)
class ProbePlan:
    """What one load compiles, loads, attaches and reads, decided once from the user's choices
    and the kernel's features: plain data (``plan_probes``)."""

    hooks: Hooks
    dns_queries: bool  # the DNS probe on: chosen, and possible on this kernel
    dns_left_out: bool  # chosen, but impossible here: its probes count as attach errors
    task_storage: bool
    child_at_fork: bool  # in a PID namespace, a forked child's id read at its fork
    files: tuple[str, ...]
    cflags: tuple[str, ...]
    # (name, program type, expected attach type): each way a program may be attached
    programs: tuple[tuple[str, int, int], ...]
    listing: ProbeListing


def plan_probes(choices: ProbeChoices, features: KernelFeatures) -> ProbePlan:
    """The plan for these choices on a kernel with these features; what it leaves out, and
    why, is said in the log."""
    btf, hooks = features.btf, features.hooks
    dns_flags, dns_queries = dns_cflags(btf, choices.dns_queries)
    exec_flags = exec_kernel_cflags(btf)
    binary_flags = python_binary_cflags(btf) if choices.sites else []
    cflags = [
        *dns_flags,
        *exec_flags,
        *binary_flags,
        *(forked_child_cflags(btf) if features.pid_namespace else []),
        *task_event_cflags(btf),
        *bpf_cflags(
            choices.track_new_processes, choices.sites, features.task_storage, choices.host_names
        ),
        f"-DFOLLOW_CHILDREN={int(choices.follow_children)}",
        *hooks.cflags(choices.epoll_mark),
    ]
    files, dns_queries = probe_files(dns_queries, hooks, features.tracepoint_fields)
    listing = probe_listing(choices, hooks, dns_queries)
    extra_maps = (
        *((PYTHON_OBJECTS_MAP,) if choices.sites else ()),
        # processes.bpf.c's python_executables
        *((PYTHON_EXECUTABLES_MAP,) if choices.sites and exec_flags and binary_flags else ()),
        *(() if features.task_storage else (THREAD_STATE_MAP,)),
        *(("forked_children",) if features.pid_namespace else ()),
    )
    listing = ProbeListing(
        listing.counter_maps,
        (*listing.maps, *extra_maps),
        listing.probe_names,
        listing.kernel_drop_names,
    )
    child_at_fork = "-DCHILD_AT_FORK=1" in cflags
    return ProbePlan(
        hooks=hooks,
        dns_queries=dns_queries,
        dns_left_out=choices.dns_queries and not dns_queries,
        task_storage=features.task_storage,
        child_at_fork=child_at_fork,
        files=files,
        cflags=tuple(cflags),
        programs=program_specs(choices, features, dns_queries, child_at_fork),
        listing=listing,
    )


def dns_cflags(btf: Btf | BtfError, wanted: bool) -> tuple[list[str], bool]:
    """dns.bpf.c's kernel field offsets, and whether the DNS probe stays on. A kernel without
    BTF has none to give: the probe is left out, said in the log."""
    if not wanted:
        log.info("DNS messages not followed (--no-dns-queries): no dns_queries_total")
        return [], False
    try:
        return kernel_cflags(btf, DNS_KERNEL_FIELDS), True
    except BtfError as err:
        log.warning(
            "DNS messages not followed: dns.bpf.c reads kernel structs at the offsets the "
            "kernel's BTF gives, and %s (a kernel built with CONFIG_DEBUG_INFO_BTF has it): "
            "no dns_queries_total",
            err,
        )
    return [], False


def probe_files(
    dns_queries: bool, hooks: Hooks, fields_of=tracepoint_fields
) -> tuple[tuple[str, ...], bool]:
    """The files to compile, and whether the DNS probe stays on: dns.bpf.c only where its
    sends are followed and, on the syscall tracepoints, where their formats have the fields it
    reads (bcc would fail the whole compile). A core file's missing field is said as the
    reason the backend fails."""
    files = tuple(f for f in PROBE_FILES if dns_queries or f != DNS_PROBE_FILE)
    lacking = missing_fields(files, fields_of)
    # At the socket layer dns.bpf.c reads no tracepoint's fields.
    dns_lacking = lacking.pop(DNS_PROBE_FILE, None)
    if dns_lacking and not hooks.sends_at_sockets:
        log.warning(
            "DNS messages not followed: this kernel's send tracepoints lack %s, which "
            "dns.bpf.c reads: no dns_queries_total",
            ", ".join(dns_lacking),
        )
        dns_queries = False
        files = tuple(f for f in files if f != DNS_PROBE_FILE)
    raise_for_missing_fields(lacking)
    return files, dns_queries


def program_specs(
    choices: ProbeChoices, features: KernelFeatures, dns_queries: bool, child_at_fork: bool
) -> tuple[tuple[str, int, int], ...]:
    """Every program this configuration may attach, as (name, program type, expected attach
    type), in each way it may be attached: a uprobe program on a uprobe_multi link or session
    is loaded apart from the same program on a perf event (the fallback next to another tool's
    uprobe, and the only way before Linux 6.6)."""
    plain, hooks = NO_ATTACH_TYPE, features.hooks
    getaddrinfo = (GETADDRINFO_PROBE.entry, GETADDRINFO_PROBE.on_return)
    uprobes = (*(function for _, function, _ in UPROBES), *getaddrinfo)
    specs = [(name, KPROBE, plain) for name in uprobes]
    if features.uprobe_multi:
        linked = (*uprobes, RESOLVER_PROBE.entry, RESOLVER_PROBE.on_return)
        linked += (PYTHON_STARTING,) if choices.sites else ()
        specs += [(name, KPROBE, BPF_TRACE_UPROBE_MULTI) for name in linked]
    else:
        entries = [resolver_entry_program(f) for f in PROBED_RESOLVER_FUNCTIONS]
        specs += [(name, KPROBE, plain) for name in (*entries, RESOLVER_PROBE.on_return)]
    if features.uprobe_sessions:
        sessions = (GETADDRINFO_PROBE.session, RESOLVER_PROBE.session)
        specs += [(name, KPROBE, BPF_TRACE_UPROBE_SESSION) for name in sessions]
    if choices.epoll_mark and hooks.epoll_at_switch:
        specs.append((SWITCH_PROGRAM, RAW_TRACEPOINT, plain))
    elif choices.epoll_mark:
        specs.append((EPOLL_WAIT_PROGRAM, TRACEPOINT, plain))
    if dns_queries and hooks.sends_at_sockets:
        specs.append(("count_tcp_send", RAW_TRACEPOINT, plain))
    if features.pid_namespace and not child_at_fork:
        specs.append(("adopt_forked_child", TRACEPOINT, plain))
    return tuple(specs)


class BpfProbes:
    """The probes. With ``per_process`` the uprobes are attached for each watched process (a
    perf event with its pid), so that no other process ever hits them: only where no process
    can join the watched set without being attached first (``--pid`` targets without their
    children). Otherwise they sit on the file for every process, and the programs filter."""

    def __init__(
        self,
        track_new_processes: bool,
        sites: bool = True,
        follow_children: bool = True,
        per_process: bool = False,
        host_names: bool = True,
        dns_queries: bool = True,
        epoll_mark: bool = True,
        features: KernelFeatures | None = None,
    ) -> None:
        self.choices = ProbeChoices(
            track_new_processes,
            sites,
            follow_children,
            per_process,
            host_names,
            dns_queries,
            epoll_mark,
        )
        self.features = features  # detected at load unless given
        self.plan: ProbePlan | None = None
        self.track_new_processes = track_new_processes
        self.epoll_mark = epoll_mark
        self.epoll_mark_on_demand = self.choices.epoll_mark_on_demand
        self._mark_attached = False
        self._mark_wanted_at = 0.0  # when a process last needed it (time.monotonic())
        self.per_process = per_process
        self.sites = sites
        self.host_names = host_names
        self.follow_children = follow_children
        self.hooks = SYSCALL_HOOKS  # chosen at load, from the kernel's BTF
        self._use_listing(probe_listing(self.choices, self.hooks, dns_queries), dns_queries)
        # Every probe is listed from the start, so one that failed to attach shows 0.
        self.probes_attached: Counter[str] = Counter(dict.fromkeys(self.probe_names, 0))
        self.attach_errors: Counter[str] = Counter(dict.fromkeys(self.probe_names, 0))
        self._exec_reports: list[ExecReport] = []
        self._bpf = None
        # (device, inode), or with per_process (device, inode, pid) -> the probes on it
        self._attached_objects: dict[tuple[int, ...], set[str]] = {}
        self._links: list[int] = []  # uprobe_multi link fds
        self._python_objects = 0  # python_objects' entries written (the next one's index)
        self._sessions = self._multi_links = False  # the kernel's, at load
        # per_process: pid -> its uprobes' event names and its uprobe_multi link fds
        self._process_events: dict[int, list[str]] = defaultdict(list)
        self._process_links: dict[int, list[int]] = defaultdict(list)
        self._detacher: ThreadPoolExecutor | None = None
        self._entries_seen: dict[str, int] = {}  # counter maps' entries after the last sweep
        self._readers: dict[str, MapReader] = {}
        # The watched set's last read: its raw bytes, its entries, and each entry by its bytes
        self._states_read: tuple = (None, {}, {})
        # (tgid, generation) -> the map entries last read for it, and its counts from them
        self._raw_counts: dict[tuple[int, int], tuple[tuple, RawCounts]] = {}
        # The watch epochs (thread_state.h): a new one after each change to the watched set,
        # in order, however many threads change it.
        self._epochs = itertools.count(1)
        self._epoch_lock = threading.Lock()

    # Loading
    def load(self) -> None:
        if self.per_process:
            self._detacher = ThreadPoolExecutor(max_workers=1, thread_name_prefix="uprobe-detach")
        features = self.features or KernelFeatures.detect()
        plan = plan_probes(self.choices, features)
        self._use_plan(plan, features)
        self._say_plan()
        self._bpf = load_probes(plan.files, list(plan.cflags), list(plan.programs))
        if self.dns_queries and self.hooks.sends_at_sockets:
            # dns.bpf.c's TCP sends are counted by a program of their own (a tail call).
            counter = self._bpf.load_func("count_tcp_send", RAW_TRACEPOINT)
            self._bpf["dns_tcp_counter"][ctypes.c_int(0)] = ctypes.c_int(counter.fd)
        for name in self._attached_on_load():
            self.probes_attached[name] += 1
        self._attach_plain_tracepoints(plan.child_at_fork)
        self._bpf["exec_reports"].open_ring_buffer(self._keep_exec_report)
        # The kernel's BTF, read for the flags above, is MiB of data now garbage.
        gc.collect()
        release_free_memory()

    def _use_plan(self, plan: ProbePlan, features: KernelFeatures) -> None:
        """Lists the probes and maps of the plan: every probe listed from the start, so one
        that fails to attach shows 0; a DNS probe left out as an attach error of each of its
        probes."""
        self.plan, self.hooks, self.task_storage = plan, plan.hooks, plan.task_storage
        self._sessions, self._multi_links = features.uprobe_sessions, features.uprobe_multi
        wanted = probe_listing(self.choices, plan.hooks, self.choices.dns_queries)
        for counter in (self.probes_attached, self.attach_errors):
            for name in set(counter) - set(wanted.probe_names):
                del counter[name]
            counter.update(dict.fromkeys(wanted.probe_names, 0))
        self._use_listing(plan.listing, plan.dns_queries)
        if plan.dns_left_out:
            for name in DNS_PROBE_NAMES:
                self.attach_errors[name] += 1

    def _use_listing(self, listing: ProbeListing, dns_queries: bool) -> None:
        self.dns_queries = dns_queries
        self.counter_maps = listing.counter_maps
        self.maps = listing.maps
        self.probe_names = listing.probe_names
        self.kernel_drop_names = listing.kernel_drop_names

    def _say_plan(self) -> None:
        """Logs what the plan leaves out, and where the hooks see their events."""
        self._say_hooks()
        if not self.task_storage:
            log.info("no task storage in this kernel (5.15+ with BTF): per-thread state in a map")
        if not self.host_names:
            log.info("host names not read (--no-host-names): no getaddrinfo_host_calls_total")
        if not self.epoll_mark:
            log.info(
                "threads not marked when they wait in epoll (--no-epoll-mark): caller from "
                "Python frames alone, other where they cannot tell"
            )

    def _attach_plain_tracepoints(self, child_at_fork: bool) -> None:
        """The tracepoints bcc does not attach on load: the epoll mark's when it is always on
        (at sched_switch, else at the epoll waits) and, in a PID namespace without the child's
        id at its fork, the clones' returns."""
        if self.epoll_mark and not self.epoll_mark_on_demand:
            self._attach_epoll_mark()
        plain = []
        if "forked_children" in self.maps:  # the plan's, in a PID namespace
            if child_at_fork:
                self.probes_attached["sched_process_fork"] += 1  # attached by bcc on load
            else:
                plain = [*plain, *((name, "adopt_forked_child") for name in CHILD_RETURNS)]
        for tracepoint, function in plain:
            self._attach_tracepoint(tracepoint, function)

    def _say_hooks(self) -> None:
        """Logs where the epoll mark and the DNS probe see their events, if they are on."""
        seen = []
        if self.epoll_mark:
            switch = self.hooks.epoll_at_switch
            where = "when a thread sleeps in one (sched_switch)" if switch else SYSCALL_HOOKED
            when = ", while a watched process's frames cannot be read"
            seen.append(f"epoll waits seen {where}{when if self.epoll_mark_on_demand else ''}")
        if self.dns_queries:
            sockets = self.hooks.sends_at_sockets
            where = "at the socket layer (sock_send_length, tcp_sendmsg_locked)"
            seen.append(f"sends seen {where if sockets else SYSCALL_HOOKED}")
        if seen:
            log.info("; ".join(seen))

    def _attached_on_load(self) -> list[str]:
        """The probes bcc attaches as it loads the programs (TRACEPOINT_PROBE and
        RAW_TRACEPOINT_PROBE in the C)."""
        names = [tracepoint.split(":")[1] for tracepoint in THREAD_TRACEPOINTS]
        if self.dns_queries:
            sockets = self.hooks.sends_at_sockets
            names += SOCKET_SEND_PROBE_NAMES if sockets else DNS_PROBE_NAMES
        return names

    def want_epoll_mark(self, unreadable: list[int]) -> None:
        """Attaches the epoll mark while some watched process's frames cannot be read (these
        pids), and detaches it once none has been for MARK_LINGER seconds (processes whose
        interpreter is still to be found come and go: the mark is not attached and detached
        for each); with the mark always on, or off, nothing."""
        if not self.epoll_mark_on_demand:
            return
        now = time.monotonic()
        if unreadable:
            self._mark_wanted_at = now
            if not self._mark_attached:
                self._attach_epoll_mark()
                log.info(
                    "epoll mark attached: %d watched process(es) (pid %d first) have frames "
                    "that cannot be read (yet), and caller=event_loop comes from it there",
                    len(unreadable),
                    unreadable[0],
                )
        elif self._mark_attached and now - self._mark_wanted_at >= MARK_LINGER:
            self._detach_epoll_mark()
            log.info(
                "epoll mark detached: the frames of every watched process are read; no program "
                "runs at context switches or epoll waits"
            )

    def python_placed(self, tgid: int, generation: int) -> bool:
        """Whether the probes can read the process's frames (its interpreter placed by user
        space, at its exec or as it started, or inherited at its fork)."""
        try:
            entry = self._bpf["python_processes"][ctypes.c_uint32(tgid)]
        except KeyError:
            return False
        return entry.generation == generation

    def _attach_epoll_mark(self) -> None:
        self._mark_attached = True
        if not self.hooks.epoll_at_switch:
            for tracepoint, function in PLAIN_TRACEPOINTS:
                self._attach_tracepoint(tracepoint, function)
            return
        try:
            self._bpf.attach_raw_tracepoint(tp=b"sched_switch", fn_name=SWITCH_PROGRAM.encode())
            self.probes_attached["sched_switch"] += 1
        except Exception as err:  # bcc raises a bare Exception
            self.attach_errors["sched_switch"] += 1
            log.warning("could not attach the epoll mark at sched_switch: %s", err)

    def _detach_epoll_mark(self) -> None:
        self._mark_attached = False
        if self.hooks.epoll_at_switch:
            if b"sched_switch" in self._bpf.raw_tracepoint_fds:
                self._bpf.detach_raw_tracepoint(tp=b"sched_switch")
        else:
            for tracepoint, _ in PLAIN_TRACEPOINTS:
                if tracepoint.encode() in self._bpf.tracepoint_fds:
                    self._bpf.detach_tracepoint(tp=tracepoint)
        # Off by design, not failed: not listed (an unattached probe listed reads as failed).
        for name in (*SWITCH_PROBE_NAMES, *EPOLL_PROBE_NAMES):
            self.probes_attached.pop(name, None)
            self.attach_errors.pop(name, None)

    def _keep_exec_report(self, ctx, data, size) -> None:
        report = self._bpf["exec_reports"].event(data)
        # ctypes cuts a char array field at its first NUL: read the slots' bytes whole.
        field = type(report).args
        slots = ctypes.string_at(ctypes.addressof(report) + field.offset, field.size)
        self._exec_reports.append(
            ExecReport(
                report.tgid,
                report.target,
                report.generation,
                exec_arguments(slots, MapSize.ARG_LENGTH),
            )
        )

    def exec_reports_fd(self) -> int:
        """The exec reports' ring buffer: readable while it holds reports not yet read."""
        return self._bpf["exec_reports"].map_fd

    def exec_reports(self) -> list[ExecReport]:
        """The programs started since the last call (read after :meth:`states`, every
        pending process seen there has its report here or in an earlier call)."""
        self._bpf.ring_buffer_consume()
        reports, self._exec_reports = self._exec_reports, []
        return reports

    def kernel_drops(self) -> dict[str, int]:
        """What the kernel could not do for lack of room, by counter name."""
        return {
            name: sum(value.value for value in self._bpf[name].values())
            for name in self.kernel_drop_names
        }

    def _attach_tracepoint(self, tracepoint: str, function: str) -> None:
        name = tracepoint.split(":")[1].removeprefix("sys_enter_")
        try:
            self._bpf.attach_tracepoint(tp=tracepoint, fn_name=function)
            self.probes_attached[name] += 1
        except Exception as err:
            # epoll_pwait2 is missing on kernels before 5.11: the others still work.
            self.attach_errors[name] += 1
            log.warning("could not attach tracepoint %s: %s", tracepoint, err)

    def program_fds(self) -> dict[str, int]:
        """File descriptors of the loaded programs by label (loaded_probes.py): the kernel's
        run statistics of each are in /proc/self/fdinfo/FD."""
        return self._bpf.program_fds() if self._bpf is not None else {}

    def attach_libc(self, path: str, device_inode: tuple[int, int], pid: int = -1) -> set[str]:
        """Uprobes on one libc-like object, once per file (uprobes are per inode), or with
        per_process once per file and process; returns the probes attached to it."""
        pid = pid if self.per_process else -1
        key = (*device_inode, pid) if self.per_process else device_inode
        if key not in self._attached_objects:
            self._attached_objects[key] = (
                {
                    uprobe_name(symbol, on_return)
                    for symbol, function, on_return in UPROBES
                    if self._attach_uprobe(path, symbol, function, on_return, pid)
                }
                | self._attach_getaddrinfo(path, pid)
                | self._attach_resolvers(path, pid)
            )
        return self._attached_objects[key]

    def detach_process(self, pid: int) -> None:
        """With per_process, takes a process's uprobes away (in the background: each detach
        waits for RCU grace periods, which must not hold up a poll)."""
        if not self.per_process or self._bpf is None:
            return
        for key in [k for k in self._attached_objects if k[-1] == pid]:
            del self._attached_objects[key]
        events = self._process_events.pop(pid, [])
        links = self._process_links.pop(pid, [])
        for link in links:
            self._links.remove(link)
        if events or links:
            self._detacher.submit(self._detach_events, events, links)

    def _detach_events(self, events: list[str], links: list[int]) -> None:
        for name in events:
            with contextlib.suppress(Exception):  # bcc raises bare Exception
                self._bpf.detach_uprobe_event(name)
        for link in links:
            os.close(link)

    def _attach_getaddrinfo(self, path: str, pid: int = -1) -> set[str]:
        offset = symbol_offset(path, "getaddrinfo")
        if offset is None:
            return set()
        symbols = {"getaddrinfo": (offset, 0)}
        if self._sessions:
            attached = self._attach_session_link(GETADDRINFO_PROBE, path, symbols, pid)
            if attached:
                return attached
        probe = GETADDRINFO_PROBE
        return {
            uprobe_name("getaddrinfo", on_return)
            for function, on_return in ((probe.entry, False), (probe.on_return, True))
            if self._attach_uprobe(path, "getaddrinfo", function, on_return, pid)
        }

    def _attach_resolvers(self, path: str, pid: int = -1) -> set[str]:
        """resolver.bpf.c on every resolver function the object has, one link per object."""
        found: dict[str, tuple[int, int]] = {}
        for function in PROBED_RESOLVER_FUNCTIONS:
            offset = symbol_offset(path, function.label)
            # Two names of one function (musl's res_search is res_query): the first names it.
            if offset is not None and offset not in (o for o, _ in found.values()):
                found[function.label] = (offset, int(function))
        if not found:
            return set()
        if self._sessions:
            attached = self._attach_session_link(RESOLVER_PROBE, path, found, pid)
            if attached:
                return attached
        if self._multi_links:
            return self._attach_link_pair(RESOLVER_PROBE, path, found, pid)
        return self._attach_resolver_uprobes(path, found, pid)

    def _attach_resolver_uprobes(
        self, path: str, found: dict[str, tuple[int, int]], pid: int
    ) -> set[str]:
        """Without uprobe_multi links: a uprobe and a uretprobe per function, the entry's
        program that function's own (no attach cookie to tell them apart)."""
        attached: set[str] = set()
        for name, (_, value) in found.items():
            entry = resolver_entry_program(ResolverFunction(value))
            for function, on_return in ((entry, False), (RESOLVER_PROBE.on_return, True)):
                if self._attach_uprobe(path, name, function, on_return, pid):
                    attached.add(uprobe_name(name, on_return))
                else:
                    self.attach_errors[uprobe_name(name, on_return)] += 1
        return attached

    def _attach_session_link(
        self, probe: SessionProbe, path: str, symbols: dict[str, tuple[int, int]], pid: int
    ) -> set[str]:
        """``probe`` on ``symbols`` ({name: (file offset, cookie)}) of one object as one uprobe
        session; returns the uprobe names attached, none if the kernel refused."""
        try:
            link = attach_uprobe_multi(self._bpf, probe.session, path, symbols, SESSION, pid)
        except OSError as err:
            # A uprobe of another tool on one of these functions, made with another reference
            # counter offset (bcc's Python tools pass an undefined one), refuses every other.
            log.warning(
                "could not attach %s in %s as a uprobe session (%s): an entry and a return "
                "probe instead",
                probe.session,
                path,
                err,
            )
            return set()
        self._keep_link(link, pid)
        log.info("attached %s in %s to %s", probe.session, path, ", ".join(symbols))
        return self._count_attached({uprobe_name(n, r) for n in symbols for r in (False, True)})

    def _attach_link_pair(
        self, probe: SessionProbe, path: str, symbols: dict[str, tuple[int, int]], pid: int
    ) -> set[str]:
        """``probe``'s entry and return programs on ``symbols``, a uprobe_multi link each."""
        attached: set[str] = set()
        for function, kind in ((probe.entry, ENTRY), (probe.on_return, RETURN)):
            names = {uprobe_name(name, kind == RETURN) for name in symbols}
            try:
                link = attach_uprobe_multi(self._bpf, function, path, symbols, kind, pid)
            except OSError as err:
                for name in names:
                    self.attach_errors[name] += 1
                log.warning(
                    "could not attach %s in %s (uprobe_multi links need Linux 6.6+): %s",
                    function,
                    path,
                    err,
                )
                continue
            self._keep_link(link, pid)
            attached |= names
            log.info("attached %s in %s to %s", function, path, ", ".join(symbols))
        return self._count_attached(attached)

    def _count_attached(self, names: set[str]) -> set[str]:
        for name in names:
            self.probes_attached[name] += 1
        return names

    def _keep_link(self, link: int, pid: int) -> None:
        self._links.append(link)
        if pid > 0:
            self._process_links[pid].append(link)

    def _attach_uprobe(
        self, path: str, symbol: str, function: str, on_return: bool, pid: int = -1
    ) -> bool:
        before, links = set(self._bpf.uprobe_fds), []
        if not attach_link_or_uprobe(self._bpf, links, path, symbol, function, on_return, pid):
            return False
        for link in links:
            self._keep_link(link, pid)
        if pid > 0:
            self._process_events[pid].extend(set(self._bpf.uprobe_fds) - before)
        self.probes_attached[uprobe_name(symbol, on_return)] += 1
        log.info("attached %s%s in %s", symbol, " (return)" if on_return else "", path)
        return True

    def close(self) -> None:
        if self._detacher is not None:
            self._detacher.shutdown(wait=True)
            self._detacher = None
        if self._bpf is not None:
            self._process_events.clear()
            self._process_links.clear()
            for link in self._links:
                os.close(link)
            self._links.clear()
            detach_all(self._bpf)
            self._bpf.cleanup()
            self._bpf = None
            self.probes_attached = Counter(dict.fromkeys(self.probe_names, 0))
            self._attached_objects.clear()
            self._readers.clear()
            self._states_read = (None, {}, {})
            self._raw_counts.clear()

    # The watched set
    def watch(self, tgid: int, target: int) -> int:
        """Marks a process watched with a target number (its children inherit it); returns its
        generation (kept if the kernel has one)."""
        generation = watch_process(self._bpf["watched_tgids"], tgid, target)
        self._watched_set_changed()
        return generation

    def set_state(self, tgid: int, entry: WatchedEntry) -> None:
        watched = self._bpf["watched_tgids"]
        watched[ctypes.c_uint32(tgid)] = watched.Leaf(
            entry.state, entry.target, entry.generation, entry.parent
        )
        self._watched_set_changed()

    def _watched_set_changed(self) -> None:
        """Threads look their process up in the watched set again at their next event: the
        copy of its generation they keep is good only in the epoch it was read in."""
        with self._epoch_lock:
            epochs = self._bpf["watch_epoch"]
            epochs[ctypes.c_int(0)] = epochs.Leaf(next(self._epochs))

    def states(self) -> dict[int, WatchedEntry]:
        """tgid -> its entry, for every process in the watched set. While the set is as it
        was at the last call, the same dict (not to be changed): nothing to look at again."""
        reader = self._reader("watched_tgids")
        keys, values, count = reader.raw()
        if (keys, values) == self._states_read[0]:
            return self._states_read[1]
        ks, vs = reader.key_size, reader.value_size
        known = self._states_read[2]
        entries = {}  # (key, value) bytes -> (tgid, entry): one made only for a changed entry
        for i in range(count):
            raw = (keys[i * ks : (i + 1) * ks], values[i * vs : (i + 1) * vs])
            entries[raw] = known.get(raw) or self._entry(*raw)
        states = dict(entries.values())
        self._states_read = ((keys, values), states, entries)
        return states

    def _entry(self, key: bytes, value: bytes) -> tuple[int, WatchedEntry]:
        table = self._bpf["watched_tgids"]
        tgid = table.Key.from_buffer_copy(key).value
        value = table.Leaf.from_buffer_copy(value)
        state = ProcessState(value.state)
        return tgid, WatchedEntry(state, value.target, value.generation, value.parent)

    def forget(self, processes: dict[int, int | None]) -> None:
        """Removes processes (tgid -> generation, None for any) from the watched set; their
        counters go at the next :meth:`sweep` (read by nobody meanwhile: a forgotten process
        is not asked for), which reads every counter map anyway, rather than at each call."""
        if not processes:
            return

        def matches(tgid: int, generation: int) -> bool:
            return tgid in processes and processes[tgid] in (None, generation)

        by_tgid = ["watched_tgids", *(["python_processes"] if self.sites else [])]
        for name in by_tgid:
            table = self._bpf[name]
            for tgid in processes:
                key = ctypes.c_uint32(tgid)
                value = table.get(key)
                if value is not None and matches(tgid, value.generation):
                    with contextlib.suppress(KeyError):  # gone meanwhile
                        del table[key]
        self._watched_set_changed()
        for key in [k for k in self._raw_counts if matches(*k)]:
            del self._raw_counts[key]

    def _owners(self, name: str) -> list[tuple[int, int, bytes]]:
        """(tgid, generation, key bytes) of every entry of a map keyed by process."""
        reader = self._reader(name)
        keys, _, count = reader.raw()
        size = reader.key_size
        tgid_at, generation_at = owner_offsets(reader.table.Key)
        return [
            (
                U32.unpack_from(keys, i * size + tgid_at)[0],
                U64.unpack_from(keys, i * size + generation_at)[0],
                keys[i * size : (i + 1) * size],
            )
            for i in range(count)
        ]

    def _delete(self, name: str, keys: list[bytes]) -> None:
        table = self._bpf[name]
        for key in keys:
            with contextlib.suppress(KeyError):  # gone meanwhile
                del table[table.Key.from_buffer_copy(key)]

    def _reader(self, name: str) -> MapReader:
        reader = self._readers.get(name)
        if reader is None:
            reader = self._readers[name] = MapReader(self._bpf[name])
        return reader

    def sweep(self) -> int:
        """Deletes counters of processes no longer in the watched set (an exited process whose
        PID was reused before user space saw it go); returns how many."""
        # Processes first seen after this instant may have counters but no entry yet in what
        # is read below: their generation (the same clock) is later, and they are kept.
        started = time.monotonic_ns()
        live = {tgid: entry.generation for tgid, entry in self.states().items()}

        def stale(tgid: int, generation: int) -> bool:
            return generation < started and live.get(tgid) != generation

        swept = 0
        self._entries_seen = {}
        for name in self.counter_maps:
            owners = self._owners(name)
            gone = [key for tgid, generation, key in owners if stale(tgid, generation)]
            self._delete(name, gone)
            swept += len(gone)
            self._entries_seen[name] = len(owners) - len(gone)
        for key in [k for k in self._raw_counts if stale(*k)]:
            del self._raw_counts[key]
        return swept

    def sweep_and_count(self) -> tuple[int, dict[str, int]]:
        """:meth:`sweep`, then :meth:`map_entries` without reading the counter maps again."""
        swept = self.sweep()
        seen = self._entries_seen
        return swept, {
            name: seen[name] if name in seen else self._reader(name).count() for name in self.maps
        }

    # Reading
    def read_counts(self, generations: dict[int, int]) -> dict[int, RawCounts]:
        """Counters of the given processes (tgid -> generation), by tgid (those with none are
        left out). A process whose counters are as at the last read gets the same RawCounts
        object (not to be changed): its counts need not be worked out again."""
        found: dict[int, list] = defaultdict(list)
        for index, name in enumerate(self.counter_maps):
            reader = self._reader(name)
            keys, values, count = reader.raw()
            ks, vs = reader.key_size, reader.value_size
            tgid_at, generation_at = owner_offsets(reader.table.Key)
            for i in range(count):
                tgid = U32.unpack_from(keys, i * ks + tgid_at)[0]
                if generations.get(tgid) == U64.unpack_from(keys, i * ks + generation_at)[0]:
                    found[tgid].append(
                        (index, keys[i * ks : (i + 1) * ks], values[i * vs : (i + 1) * vs])
                    )
        if self.sites:
            for tgid in self._python_tgids():
                if tgid in generations:
                    found[tgid].append(None)  # its by-site counters are read
        return {
            tgid: self._raw(tgid, generations[tgid], tuple(seen)) for tgid, seen in found.items()
        }

    def _python_tgids(self) -> list[int]:
        reader = self._reader("python_processes")
        keys, _, count = reader.raw()
        return [U32.unpack_from(keys, i * reader.key_size)[0] for i in range(count)]

    def _raw(self, tgid: int, generation: int, seen: tuple) -> RawCounts:
        """A process's counters from its map entries, made again only when they changed."""
        kept = self._raw_counts.get((tgid, generation))
        if kept is not None and kept[0] == seen:
            return kept[1]
        counts = RawCounts()
        adds = list(self.counter_maps.items())
        for entry in seen:
            if entry is None:
                counts.sites_read = True
                continue
            index, key, value = entry
            name, add = adds[index]
            table = self._bpf[name]
            value = scalar_or_struct(table.Leaf.from_buffer_copy(value))
            add(counts, table.Key.from_buffer_copy(key), value)
        self._raw_counts[(tgid, generation)] = (seen, counts)
        return counts

    def set_python_process(self, tgid: int, generation: int, runtime) -> None:
        """Lets the probes read this process's Python frames (python_stack.h)."""
        write_python_process(self._bpf["python_processes"], tgid, generation, runtime)

    def map_entries(self) -> dict[str, int]:
        """Entries in each map, to show they stay bounded."""
        return {name: self._reader(name).count() for name in self.maps}

    def learn_python_object(self, known: PythonObject, runtime) -> list[str]:
        """Lets every process that maps this object from now on have its frames read from
        its start (processes.bpf.c python_objects); returns the ways in the kernel allows
        ("exec", "start"), none where it allows neither or the table is full."""
        index = self._python_objects
        if PYTHON_OBJECTS_MAP not in self.maps or index >= MapSize.MAX_PYTHON_BINARIES:
            return []
        table = self._bpf[PYTHON_OBJECTS_MAP]
        process = dict(table.Leaf._fields_)["process"]
        executable = known.executable if PYTHON_EXECUTABLES_MAP in self.maps else None
        table[ctypes.c_int(index)] = table.Leaf(
            process(*python_process_fields(0, runtime, runtime.bias)),
            known.initialize[0] if known.initialize else 0,
            executable.code_start if executable else 0,
            executable.size if executable else 0,
            *known.pidns,
        )
        self._python_objects += 1
        ways = []
        if executable:
            executables = self._bpf[PYTHON_EXECUTABLES_MAP]
            key = executables.Key(executable.dev, executable.ino)
            executables[key] = ctypes.c_uint32(index)
            ways.append("exec")
        if known.initialize and self._multi_links:
            symbols = {INITIALIZE_SYMBOL: (known.initialize[1], index)}
            try:
                link = attach_uprobe_multi(self._bpf, PYTHON_STARTING, known.path, symbols, ENTRY)
            except OSError as err:
                log.warning("%s: not probed at %s: %s", known.path, INITIALIZE_SYMBOL, err)
            else:
                self._keep_link(link, -1)
                ways.append("start")
        return ways


U32 = struct.Struct("=I")
U64 = struct.Struct("=Q")


def owner_offsets(key_type) -> tuple[int, int]:
    """Where a per-process key holds its process's tgid and generation."""
    return key_type.tgid.offset, key_type.generation.offset


@dataclass(frozen=True)
class PythonExecutable:
    """An executable with the interpreter linked in, as the kernel knows the file at an exec."""

    dev: int  # its filesystem's device, as the kernel's dev_t (MAJOR << 20 | MINOR)
    ino: int
    size: int
    code_start: int  # the process's mm->start_code less the load bias


@dataclass(frozen=True)
class PythonObject:
    """An object holding an interpreter whose main interpreter lies in the object's data (3.11+),
    at addresses fixed relative to its load bias: as read in one process, readable in every
    process that maps it."""

    path: str  # as the observer opens it (under the process's root)
    identity: tuple[int, int, int]  # (st_dev, st_ino, st_size) of that file
    pidns: tuple[int, int]  # (st_dev, st_ino) of the PID namespace it was read in
    initialize: tuple[int, int] | None  # INITIALIZE_SYMBOL's (address as linked, file offset)
    executable: PythonExecutable | None  # where the interpreter is linked into the executable


def python_object(
    pid: int, runtime, mappings: list[procfs.Mapping], known: Container[tuple] = ()
) -> PythonObject | None:
    """The object holding the process's interpreter, where every process mapping it has the
    interpreter at the same place relative to it; None where the main interpreter lies outside
    the object's mappings (allocated, before 3.11), no way in is found, or the object is one
    of ``known`` ((identity, pidns) pairs: its symbols are not looked up again)."""
    path = runtime.object_path
    if not any(m.start <= runtime.threads_head < m.end for m in mappings if m.path == path):
        return None
    opened = procfs.path_in_root(pid, path, mappings)
    info, namespace = os.stat(opened), os.stat(f"/proc/{pid}/ns/pid")
    identity = (info.st_dev, info.st_ino, info.st_size)
    pidns = (namespace.st_dev, namespace.st_ino)
    if (identity, pidns) in known:
        return None
    symbols, _ = pyruntime.elf_symbols(opened, (INITIALIZE_SYMBOL,))
    offset = symbol_offset(opened, INITIALIZE_SYMBOL) if INITIALIZE_SYMBOL in symbols else None
    initialize = (symbols[INITIALIZE_SYMBOL], offset) if offset is not None else None
    executable = python_executable(pid, runtime) if path == procfs.exe_path(pid) else None
    if initialize is None and executable is None:
        return None
    return PythonObject(
        path=opened,
        identity=identity,
        pidns=pidns,
        initialize=initialize,
        executable=executable,
    )


def python_executable(pid: int, runtime) -> PythonExecutable | None:
    stat = procfs.process_stat(pid)
    if stat is None or not stat.code_start:
        return None
    info = os.stat(f"/proc/{pid}/exe")
    return PythonExecutable(
        dev=(os.major(info.st_dev) << 20) | os.minor(info.st_dev),
        ino=info.st_ino,
        size=info.st_size,
        code_start=(stat.code_start - runtime.bias) % ADDRESSES,
    )


def write_python_process(table, tgid: int, generation: int, runtime) -> None:
    """A ``python_processes`` entry (python_stack.h): where and how to read its frames."""
    table[ctypes.c_uint32(tgid)] = table.Leaf(*python_process_fields(generation, runtime))


ADDRESSES = 1 << 64


def python_process_fields(generation: int, runtime, base: int = 0) -> tuple:
    """A struct python_process's fields, in order; its addresses relative to ``base``
    (modulo 2^64, as the probes add it back)."""
    offsets = runtime.offsets
    return (
        generation,
        (runtime.threads_head - base) % ADDRESSES,
        offsets["tstate_next"],
        offsets["tstate_native_thread_id"],
        offsets["tstate_frame"],
        offsets["cframe_current_frame"],
        offsets["frame_previous"],
        offsets["frame_code"],
        offsets["frame_owner"],
        offsets["code_flags"],
        offsets["tstate_prev"],
        offsets["pthread_tid"],
        frame_read_size(offsets),
        *((address - base) % ADDRESSES for address in runtime.text),
        *runtime.pidns,
        pyruntime.tstate_read_size(offsets),
        offsets["tstate_datastack_chunk"],
        int(runtime.version >= (3, 11)),  # a coroutine runs in a frame its generator owns
    )


def frame_read_size(offsets: dict[str, int]) -> int:
    """Bytes of a frame the probes read at once: up to the end of its last field used."""
    return max(offsets["frame_code"] + 8, offsets["frame_previous"] + 8, offsets["frame_owner"] + 1)


def scalar_or_struct(leaf):
    """A map value as its adder takes it: an int for a counter, the struct for a struct."""
    return leaf.value if isinstance(leaf, ctypes._SimpleCData) else leaf


class MapReader:
    """Reads a hash map's entries whole, in batch syscalls (BPF_MAP_LOOKUP_BATCH, Linux 5.6+)
    into buffers kept from one read to the next: bcc's ``items_lookup_batch`` allocates and
    zeroes buffers for the map's maximum entries at every call (megabytes for the larger
    maps), and ``items()`` costs two syscalls a key. Falls back to ``items()`` where the
    kernel refuses batches."""

    FIRST_SIZE = 64  # entries the buffers hold at first; they double when a read fills them

    def __init__(self, table) -> None:
        self.table = table
        self.key_size = ctypes.sizeof(table.Key)
        self.value_size = ctypes.sizeof(table.Leaf)
        self._batched = True
        self._size = 0
        self._keys = self._values = None
        self._grow(self.FIRST_SIZE)

    def _grow(self, size: int) -> None:
        size = min(max(size, 1), max(self.table.max_entries, 1))
        keys = ctypes.create_string_buffer(size * self.key_size)
        values = ctypes.create_string_buffer(size * self.value_size)
        if self._keys is not None:
            ctypes.memmove(keys, self._keys, self._size * self.key_size)
            ctypes.memmove(values, self._values, self._size * self.value_size)
        self._size, self._keys, self._values = size, keys, values

    def raw(self) -> tuple[bytes, bytes, int]:
        """(keys, values, count): every entry's key and value bytes, end to end."""
        if self._batched:
            try:
                return self._read_batches()
            except OSError as err:
                log.debug("no batch reads of map %s (%s): one key at a time", self.table, err)
                self._batched = False
        items = self.table.items()
        return (
            b"".join(bytes(key) for key, _ in items),
            b"".join(bytes(value) for _, value in items),
            len(items),
        )

    def _read_batches(self) -> tuple[bytes, bytes, int]:
        fd = self.table.map_fd
        token_in, token_out, count = ctypes.c_uint32(0), ctypes.c_uint32(0), ctypes.c_uint32(0)
        total, started = 0, False
        while True:
            if total == self._size:
                self._grow(2 * self._size)  # full: the rest goes after what was read
                if total == self._size:
                    break  # the map's maximum: nothing more can be in it
            count.value = self._size - total
            result = lookup_batch(
                fd,
                ctypes.byref(token_in) if started else None,
                ctypes.byref(token_out),
                ctypes.byref(self._keys, total * self.key_size),
                ctypes.byref(self._values, total * self.value_size),
                ctypes.byref(count),
            )
            # libbpf returns -errno (and sets errno)
            error = -result if result < 0 else 0
            total += count.value
            if error == errno.ENOENT:
                break  # the last bucket was read
            if error == errno.ENOSPC and count.value == 0:
                self._grow(2 * self._size)  # one bucket holds more entries than the room left
                continue
            if error:
                raise OSError(error, os.strerror(error))
            if count.value == 0:
                break  # no progress (the kernel does not stop so): what was read is all
            token_in.value, started = token_out.value, True
        return (
            ctypes.string_at(self._keys, total * self.key_size),
            ctypes.string_at(self._values, total * self.value_size),
            total,
        )

    def entries(self) -> list[tuple[bytes, bytes]]:
        """(key bytes, value bytes) of every entry."""
        keys, values, count = self.raw()
        ks, vs = self.key_size, self.value_size
        return [(keys[i * ks : (i + 1) * ks], values[i * vs : (i + 1) * vs]) for i in range(count)]

    def items(self) -> list:
        """Every entry as the map's ctypes key and value, as bcc's ``items()`` gives them."""
        key_type, value_type = self.table.Key, self.table.Leaf
        return [
            (key_type.from_buffer_copy(key), value_type.from_buffer_copy(value))
            for key, value in self.entries()
        ]

    def count(self) -> int:
        return self.raw()[2]


def detach_all(bpf) -> None:
    """Detaches every uprobe and tracepoint at once: each detach waits for RCU grace periods
    (0.1 to 0.2 s apiece on this kernel), and detaches in flight together share them, which
    keeps SIGTERM quick with some forty attach points."""
    detaches = [(bpf.detach_uprobe_event, name) for name in list(bpf.uprobe_fds)]
    detaches += [(bpf.detach_tracepoint, name) for name in list(bpf.tracepoint_fds)]
    if not detaches:
        return
    with ThreadPoolExecutor(max_workers=len(detaches)) as pool:
        for future in [pool.submit(detach, name) for detach, name in detaches]:
            with contextlib.suppress(Exception):  # bcc raises bare Exception; cleanup() retries
                future.result()


# bpf(2) for what bcc 0.26 lacks: a uprobe_multi link (Linux 6.6+), whose per-symbol cookies
# the program reads with bpf_get_attach_cookie.
BPF_LINK_CREATE = 28
BPF_TRACE_UPROBE_MULTI = 48
BPF_TRACE_UPROBE_SESSION = 57
BPF_F_UPROBE_MULTI_RETURN = 1
BPF_PROG_TYPE_KPROBE = 2
# How a uprobe_multi link runs its program: (attach type, flags).
ENTRY = (BPF_TRACE_UPROBE_MULTI, 0)
RETURN = (BPF_TRACE_UPROBE_MULTI, BPF_F_UPROBE_MULTI_RETURN)
SESSION = (BPF_TRACE_UPROBE_SESSION, 0)


class UprobeMultiLink(ctypes.Structure):
    """``union bpf_attr``'s link_create with its uprobe_multi member (include/uapi/linux/bpf.h);
    the kernel zero-fills the rest of the union."""

    _fields_ = [
        ("prog_fd", ctypes.c_uint32),
        ("target_fd", ctypes.c_uint32),
        ("attach_type", ctypes.c_uint32),
        ("link_flags", ctypes.c_uint32),
        ("path", ctypes.c_uint64),
        ("offsets", ctypes.c_uint64),
        ("ref_ctr_offsets", ctypes.c_uint64),
        ("cookies", ctypes.c_uint64),
        ("cnt", ctypes.c_uint32),
        ("flags", ctypes.c_uint32),
        ("pid", ctypes.c_uint32),
    ]


def symbol_offset(path: str, symbol: str) -> int | None:
    """The file offset of a symbol, as uprobes take it (as bcc resolves it), or None. The
    symbols probed in a libc are read from a file in one pass (pyelftools reads a symbol table
    in tens of milliseconds)."""
    names = LIBC_SYMBOLS if symbol in LIBC_SYMBOLS else (symbol,)
    try:
        return pyruntime.symbol_file_offsets(path, names).get(symbol)
    except (OSError, ELFError):
        return None


def attach_uprobe_multi(
    bpf, function: str, path: str, symbols: dict, kind: tuple[int, int], pid: int = -1
) -> int:
    """Attaches ``function`` to each symbol in ``symbols`` ({name: (file offset, cookie)}),
    as ``kind`` (ENTRY, RETURN or SESSION), for every process that maps the file (or only
    process ``pid``); returns the link's fd. Raises OSError when the kernel refuses."""
    attach_type, flags = kind
    try:
        program = bpf.load_func(function, BPF_PROG_TYPE_KPROBE, attach_type=attach_type)
    except Exception as err:  # bcc raises bare Exception; a kernel without the attach type
        raise OSError(errno.EINVAL, f"loading {function}: {err}") from None
    count = len(symbols)
    raw_path = ctypes.create_string_buffer(path.encode())
    addresses = (ctypes.c_uint64 * count)(*(offset for offset, _ in symbols.values()))
    cookies = (ctypes.c_uint64 * count)(*(cookie for _, cookie in symbols.values()))
    attr = UprobeMultiLink(
        prog_fd=program.fd,
        attach_type=attach_type,
        path=ctypes.addressof(raw_path),
        offsets=ctypes.addressof(addresses),
        cookies=ctypes.addressof(cookies),
        cnt=count,
        flags=flags,
        pid=max(pid, 0),
    )
    return bpf_calls.syscall(SYS_BPF, BPF_LINK_CREATE, ctypes.byref(attr), ctypes.sizeof(attr))


def release_free_memory() -> None:
    """Compiling leaves tens of MiB that LLVM freed in glibc's heap: give them back (a
    sidecar's memory is what it holds, not what it once needed)."""
    with contextlib.suppress(OSError, AttributeError):  # not glibc
        ctypes.CDLL(None).malloc_trim(0)


def attach_uprobe(
    bpf, path: str, symbol: str, function: str, on_return: bool, pid: int = -1
) -> bool:
    """A uprobe (or uretprobe) for every process that maps the file, or only for process
    ``pid`` (the kernel then plants no breakpoint in any other); False if the file has no such
    symbol or the kernel refuses."""
    if isinstance(bpf, LoadedProbes):
        return attach_loaded_uprobe(bpf, path, symbol, function, on_return, pid)
    attach = bpf.attach_uretprobe if on_return else bpf.attach_uprobe
    with captured_stderr() as diagnostics:
        try:
            attach(name=path, sym=symbol, fn_name=function, pid=pid)
        except Exception as err:  # bcc raises bare Exception
            refused = summarize(diagnostics())
            if refused:
                log.warning("could not load %s for %s in %s: %s", function, symbol, path, refused)
            else:
                # glibc >= 2.34 keeps a libpthread.so.0 stub without pthread_create: not an
                # error unless no object of the process has the symbol (attach_libc_of).
                log.debug("no %s in %s: %s", symbol, path, err)
            return False
    return True


def attach_loaded_uprobe(
    loaded: LoadedProbes, path: str, symbol: str, function: str, on_return: bool, pid: int
) -> bool:
    """attach_uprobe for the daemon's probes (loaded_probes.py), without bcc."""
    offset = symbol_offset(path, symbol)
    if offset is None:
        log.debug("no %s in %s", symbol, path)  # as a glibc's libpthread stub: see above
        return False
    try:
        loaded.attach_uprobe_at(path, offset, function, on_return, pid)
    except OSError as err:
        log.warning("could not attach %s for %s in %s: %s", function, symbol, path, err)
        return False
    return True


def attach_link_or_uprobe(
    bpf, links: list[int], path: str, symbol: str, function: str, on_return: bool, pid: int = -1
) -> bool:
    """``function`` on ``symbol`` for every process (or only ``pid``): a uprobe_multi link
    (appended to ``links``), as every probe of ours is made, so that the daemon and the
    timeline run side by side (the kernel refuses two uprobes on one address with different
    reference counter offsets, and bcc's Python uprobes pass an undefined one); else, on a
    kernel without such links or next to a bcc tool's uprobe, a uprobe through bcc. False if
    neither attached."""
    offset = symbol_offset(path, symbol)
    if offset is None:
        return False
    try:
        kind = RETURN if on_return else ENTRY
        links.append(attach_uprobe_multi(bpf, function, path, {symbol: (offset, 0)}, kind, pid))
        return True
    except OSError as err:
        log.debug("no uprobe_multi link for %s in %s (%s): a uprobe instead", symbol, path, err)
    # Loaded for a link, the program cannot go to a perf event: bcc loads it anew.
    loaded = bpf.funcs.pop(function.encode(), None)
    if loaded is not None:
        os.close(loaded.fd)
    return attach_uprobe(bpf, path, symbol, function, on_return, pid)


def attach_libc_of(probes, pid: int) -> tuple[list[str], set[str]]:
    """Uprobes on the objects of a process that may hold pthread_create and getaddrinfo (its
    executable when no libc is mapped, as in a statically linked one), through ``probes``'s
    ``attach_libc(path, (device, inode))``; returns those objects and the probes attached.
    Raises OSError when the process is gone."""
    mappings = procfs.read_maps(pid)
    objects = procfs.libc_objects(pid, mappings)
    attached: set[str] = set()
    for path in objects:
        in_root = procfs.path_in_root(pid, path, mappings)
        try:
            info = os.stat(in_root)
        except OSError:
            continue
        attached |= probes.attach_libc(in_root, (info.st_dev, info.st_ino), pid)
    return objects, attached


def check_probes() -> Result:
    """Compiles and attaches the real probes on this process's own libc."""
    probes = BpfProbes(track_new_processes=False)
    try:
        probes.load()
        attach_libc_of(probes, os.getpid())
        attached = dict(probes.probes_attached)
    except BpfUnavailable as err:
        return Result("probes", False, str(err))
    finally:
        probes.close()
    missing = [
        p
        for p in ("pthread_create", "getaddrinfo", "getaddrinfo_return", "task_newtask")
        if not attached.get(p)
    ]
    if missing:
        return Result(
            "probes", False, f"not attached: {', '.join(missing)}{uprobe_capability_hint()}"
        )
    detail = "compiled and attached: " + ", ".join(sorted(p for p, n in attached.items() if n))
    absent = sorted(p for p, n in attached.items() if not n)
    if absent:
        detail += f"; not in this kernel or libc: {', '.join(absent)}"
    return Result("probes", True, detail)
