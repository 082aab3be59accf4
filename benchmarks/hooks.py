"""Where the observer's epoll mark and DNS probe see their events, and their programs' names.

Where the kernel allows (``thread_observer.bpf_backend.choose_hooks``), the epoll mark is a raw
tracepoint on ``sched_switch`` and the DNS probe raw tracepoints on the socket layer's sends, so
no syscall tracepoint is attached; elsewhere both are the syscalls' own tracepoints, which,
while attached, send every syscall of every task on the host through the kernel's slower path.
A benchmark side can ask for the latter on any kernel (``SYSCALL_TRACEPOINTS`` among its
arguments), to show what the raw tracepoints change.
"""

from __future__ import annotations

import functools

from benchmarks.children import PYTHON, REPO
from thread_observer.bpf_backend import (
    DNS_TRACEPOINTS,
    SOCKET_SEND_PROBE_NAMES,
    SWITCH_PROBE_NAMES,
    SWITCH_PROGRAM,
    SYSCALL_HOOKS,
    Hooks,
    choose_hooks,
    kernel_btf,
)

# Among an observer side's arguments: run it as on a kernel without the raw tracepoints
# (tests/with_syscall_tracepoints.py, a prefix to its command). Not an observer flag.
SYSCALL_TRACEPOINTS = "(syscall tracepoints)"
SYSCALL_TRACEPOINTS_PREFIX = [PYTHON, str(REPO / "tests" / "with_syscall_tracepoints.py")]

# The programs, by their C function names (see program_name).
EPOLL_SYSCALL_PROGRAMS = ("mark_event_loop_thread",)
EPOLL_SWITCH_PROGRAMS = (SWITCH_PROGRAM,)
DNS_SYSCALL_PROGRAMS = tuple(
    "tracepoint__" + tracepoint.replace(":", "__") for tracepoint in DNS_TRACEPOINTS
)
# count_tcp_send is tail-called: the kernel counts its runs and time in its caller's.
DNS_SOCKET_PROGRAMS = (
    *(f"raw_tracepoint__{name}" for name in SOCKET_SEND_PROBE_NAMES),
    "count_tcp_send",
)
# Either way: only one set is loaded at a time.
DNS_PROGRAMS = (*DNS_SOCKET_PROGRAMS, *DNS_SYSCALL_PROGRAMS)
EPOLL_PROGRAMS = (*EPOLL_SWITCH_PROGRAMS, *EPOLL_SYSCALL_PROGRAMS)
RAW_TRACEPOINT_NAMES = (*SWITCH_PROBE_NAMES, *SOCKET_SEND_PROBE_NAMES)
# How the observer's log says where it sees each (for those it has on): a part of one line,
# "epoll waits seen ...; sends seen ...".
EPOLL_SAID, EPOLL_AT_SWITCH = "epoll waits seen ", "when a thread sleeps in one (sched_switch)"
SENDS_SAID, SENDS_AT_SOCKETS = "sends seen ", "at the socket layer"


def program_name(info: dict) -> str:
    """A program's C function name from ``bpftool prog show``: bcc gives the kernel the name
    without its ``raw_tracepoint__`` prefix, and bpftool shows the whole name (from BTF) only
    when the kernel's is cut at 15 characters, so ``raw_tracepoint__sched_switch`` shows as
    ``sched_switch``."""
    name = info.get("name", "")
    if info.get("type") == "raw_tracepoint" and name in RAW_TRACEPOINT_NAMES:
        return f"raw_tracepoint__{name}"
    return name


@functools.cache
def default_hooks() -> Hooks:
    """The hooks an observer without ``SYSCALL_TRACEPOINTS`` chooses on this kernel."""
    return choose_hooks(kernel_btf())


def hooks_of(arguments: list[str]) -> Hooks:
    return SYSCALL_HOOKS if SYSCALL_TRACEPOINTS in arguments else default_hooks()


def hooks_in_log(text: str) -> dict[str, bool]:
    """What the observer's log says of its hooks: ``epoll_at_switch`` and ``sends_at_sockets``
    (Hooks' fields), each only if the log says it (not with the epoll mark or the DNS probe
    off)."""
    said: dict[str, bool] = {}
    for line in text.splitlines():
        for part in line.split("; "):
            if EPOLL_SAID in part:
                said["epoll_at_switch"] = part.split(EPOLL_SAID, 1)[1].startswith(EPOLL_AT_SWITCH)
            elif SENDS_SAID in part:
                said["sends_at_sockets"] = part.split(SENDS_SAID, 1)[1].startswith(SENDS_AT_SOCKETS)
    return said


def differences(expected: Hooks, said: dict[str, bool]) -> list[str]:
    """The fields in which what an observer said differs from the hooks expected."""
    return [field for field, value in said.items() if getattr(expected, field) != value]


def epoll_hook(hooks: Hooks) -> str:
    return (
        "a raw tracepoint on sched_switch"
        if hooks.epoll_at_switch
        else "the epoll waits' syscall tracepoints"
    )


def dns_hook(hooks: Hooks) -> str:
    return (
        "raw tracepoints on the socket layer's sends, sock_send_length and tcp_sendmsg_locked"
        if hooks.sends_at_sockets
        else "the sends' syscall tracepoints, at the entry and exit of write, writev, sendto, "
        "sendmsg and sendmmsg"
    )


def describe(hooks: Hooks) -> str:
    """Which hooks, in a sentence's words."""
    return (
        f"the epoll mark (while a watched process's frames cannot be read) at "
        f"{epoll_hook(hooks)}, the DNS probe at {dns_hook(hooks)}"
    )


def has_syscall_tracepoints(hooks: Hooks, epoll_mark: bool = True, dns: bool = True) -> bool:
    """Whether an observer with these hooks (and its epoll mark and DNS probe on or off)
    attaches any syscall tracepoint."""
    return (epoll_mark and not hooks.epoll_at_switch) or (dns and not hooks.sends_at_sockets)
