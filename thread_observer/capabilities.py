"""What the bpf backend needs from this machine, each checked: privileges, the bpf syscall,
tracefs, tracepoints, uprobes, kernel headers, bcc; and the hint texts telling what to fix.

``thread-observer check`` prints these; the observers and the tests ask the same functions.
"""

from __future__ import annotations

import ctypes
import os
import platform
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from thread_observer.kernel_headers import KernelHeaders, prepare_kernel_headers

CAP_SYS_ADMIN = 21
CAP_SYS_PTRACE = 19
CAP_PERFMON = 38
CAP_BPF = 39
BPF_MAP_CREATE = 0
BPF_MAP_TYPE_ARRAY = 2
SYS_BPF = {"x86_64": 321, "aarch64": 280}
TRACEFS = ("/sys/kernel/tracing", "/sys/kernel/debug/tracing")
MOUNTINFO = "/proc/self/mountinfo"


@dataclass
class Result:
    name: str
    ok: bool
    detail: str
    required: bool = True


def effective_capabilities() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("CapEff:"):
                return int(line.split()[1], 16)
    return 0


def has_capability(cap: int) -> bool:
    return bool(effective_capabilities() >> cap & 1)


def has_bpf_capabilities() -> bool:
    return has_capability(CAP_SYS_ADMIN) or (
        has_capability(CAP_BPF) and has_capability(CAP_PERFMON)
    )


PERF_EVENT_PARANOID = "/proc/sys/kernel/perf_event_paranoid"


def perf_event_paranoid(path: str = PERF_EVENT_PARANOID) -> int | None:
    try:
        with open(path) as file:
            return int(file.read().strip())
    except (OSError, ValueError):
        return None


def paranoid_needs_sys_admin(paranoid: int | None) -> str | None:
    """Why CAP_PERFMON is not enough here, or None. Debian's and Ubuntu's kernels carry a patch
    (CONFIG_SECURITY_PERF_EVENTS_RESTRICT) whose paranoid level 3, their default, lets only
    CAP_SYS_ADMIN call perf_event_open, which attaches the tracepoints and uprobes."""
    if paranoid is None or paranoid <= 2:
        return None
    return (
        f"kernel.perf_event_paranoid is {paranoid}: this kernel lets only CAP_SYS_ADMIN call "
        "perf_event_open (Debian's and Ubuntu's default); add CAP_SYS_ADMIN, or set "
        "kernel.perf_event_paranoid=2 on the node"
    )


def perfmon_not_enough() -> str | None:
    """Why this process, without CAP_SYS_ADMIN, cannot attach the probes here; None when it
    holds CAP_SYS_ADMIN or the kernel lets CAP_PERFMON do."""
    if has_capability(CAP_SYS_ADMIN):
        return None
    return paranoid_needs_sys_admin(perf_event_paranoid())


def check_privileges() -> Result:
    if os.geteuid() == 0 and has_capability(CAP_SYS_ADMIN):
        return Result("privileges", True, "root")
    if has_bpf_capabilities():
        detail = "CAP_BPF and CAP_PERFMON" if not has_capability(CAP_SYS_ADMIN) else "CAP_SYS_ADMIN"
        needs_sys_admin = perfmon_not_enough()
        if needs_sys_admin:
            return Result("privileges", False, f"{detail}, but {needs_sys_admin}")
        if not has_capability(CAP_SYS_PTRACE):
            return Result(
                "privileges",
                False,
                f"{detail}, but CAP_SYS_PTRACE is missing: "
                "needed to read other processes' /proc/PID/maps and root",
            )
        return Result("privileges", True, detail)
    return Result(
        "privileges",
        False,
        "not root and no CAP_BPF+CAP_PERFMON (or CAP_SYS_ADMIN): "
        "run as root or grant CAP_BPF, CAP_PERFMON, CAP_SYS_PTRACE",
    )


def check_bpf_syscall() -> Result:
    number = SYS_BPF.get(platform.machine())
    if number is None:
        return Result("bpf syscall", False, f"unknown architecture {platform.machine()}")
    libc = ctypes.CDLL(None, use_errno=True)
    # union bpf_attr for BPF_MAP_CREATE: map_type, key_size, value_size, max_entries.
    attr = (ctypes.c_uint32 * 32)(BPF_MAP_TYPE_ARRAY, 4, 4, 1)
    fd = libc.syscall(number, BPF_MAP_CREATE, ctypes.byref(attr), ctypes.sizeof(attr))
    if fd < 0:
        err = ctypes.get_errno()
        return Result(
            "bpf syscall",
            False,
            f"bpf(BPF_MAP_CREATE) failed: {os.strerror(err)} "
            "(needs privileges; kernel.unprivileged_bpf_disabled; seccomp in containers)",
        )
    os.close(fd)
    return Result("bpf syscall", True, "bpf(BPF_MAP_CREATE) works")


def tracefs_path(candidates: Sequence[str] = TRACEFS) -> str | None:
    """The first of ``candidates`` where this process sees tracefs's events."""
    return next((p for p in candidates if os.path.exists(f"{p}/events")), None)


def _unescape_mount_field(field: str) -> str:
    # The kernel writes a space, tab, newline or backslash in a mount point as \ooo (octal).
    return re.sub(r"\\([0-7]{3})", lambda octal: chr(int(octal[1], 8)), field)


def tracing_mount_points(mountinfo: str) -> set[str]:
    """Where a mount table (the text of /proc/PID/mountinfo) has tracefs: each tracefs mount
    point, and the ``tracing`` folder of each debugfs one, where the kernel mounts tracefs when
    it is first entered."""
    points = set()
    for line in mountinfo.splitlines():
        # ID PARENT MAJOR:MINOR ROOT MOUNT_POINT OPTIONS [OPTIONAL...] - TYPE SOURCE OPTIONS
        fields = line.split()
        if "-" not in fields[6:]:
            continue
        separator = fields.index("-", 6)
        if separator + 1 >= len(fields):
            continue
        mount_point, kind = _unescape_mount_field(fields[4]), fields[separator + 1]
        if kind == "tracefs":
            points.add(mount_point)
        elif kind == "debugfs":
            points.add(f"{mount_point.rstrip('/')}/tracing")
    return points


def _readable(path: str) -> bool:
    return os.access(path, os.R_OK | os.X_OK, effective_ids=True)


def check_tracefs(
    candidates: Sequence[str] = TRACEFS,
    mountinfo: str | None = None,
    readable: Callable[[str], bool] = _readable,
) -> Result:
    """tracefs where bcc looks for it; else whether it is mounted there all the same (tracefs
    is mode 0700 by default: only root enters it) or not at all. ``mountinfo``: the mount
    table's text, /proc/self/mountinfo's when None."""
    path = tracefs_path(candidates)
    if path:
        return Result("tracefs", True, path)
    if mountinfo is None:
        try:
            with open(MOUNTINFO) as table:
                mountinfo = table.read()
        except OSError:
            mountinfo = ""
    mounted = tracing_mount_points(mountinfo)
    for candidate in candidates:
        if candidate not in mounted:
            continue
        if not readable(candidate):
            return Result(
                "tracefs",
                False,
                f"mounted at {candidate}, but not readable by this user (uid {os.geteuid()}): "
                "run as root, or give this user access (tracefs's mount options gid= and mode=)",
            )
        return Result(
            "tracefs",
            False,
            f"mounted at {candidate}, but without {candidate}/events "
            "(a kernel without tracepoint events)",
        )
    return Result(
        "tracefs",
        False,
        "not mounted: mount -t tracefs nodev /sys/kernel/tracing "
        "(in a container, mount the host's /sys/kernel/tracing)",
    )


def kernel_version() -> tuple[int, int]:
    numbers = os.uname().release.split("-")[0].split(".")
    try:
        return int(numbers[0]), int(numbers[1])
    except (IndexError, ValueError):
        return 0, 0


def has_task_storage() -> bool:
    """Whether uprobe and tracepoint programs can keep state in the task (task storage and
    bpf_get_current_task_btf for every tracing program: Linux 5.15 is the first long-term
    kernel with both), which needs the kernel's BTF."""
    return kernel_version() >= (5, 15) and os.path.exists("/sys/kernel/btf/vmlinux")


def task_registers_readable() -> bool:
    """Whether a program on a tracepoint that is no syscall's can read which syscall the task
    is in (bpf_task_pt_regs on a BTF-typed task, which comes with task storage), from registers
    laid out as the probes know them (x86-64)."""
    return platform.machine() == "x86_64" and has_task_storage()


def check_tracepoints() -> Result:
    path = tracefs_path()
    if path is None:
        return Result("tracepoints", False, "not looked for: tracefs lists them (see its line)")
    wanted = ["task/task_newtask", "sched/sched_process_exec", "sched/sched_process_exit"]
    if not task_registers_readable():  # else epoll waits are seen at sched_switch
        wanted += ["syscalls/sys_enter_epoll_wait", "syscalls/sys_enter_epoll_pwait"]
    missing = [t for t in wanted if not os.path.exists(f"{path}/events/{t}")]
    if missing:
        return Result(
            "tracepoints",
            False,
            f"missing: {', '.join(missing)} (needs CONFIG_FTRACE_SYSCALLS)",
        )
    return Result("tracepoints", True, ", ".join(wanted))


def check_uprobes() -> Result:
    if os.path.exists("/sys/bus/event_source/devices/uprobe"):
        return Result("uprobes", True, "perf uprobe PMU present")
    path = tracefs_path()
    if path and os.path.exists(f"{path}/uprobe_events"):
        return Result("uprobes", True, f"{path}/uprobe_events")
    return Result(
        "uprobes",
        False,
        "kernel without CONFIG_UPROBES: getaddrinfo and pthread_create cannot be probed",
    )


def headers_hint(headers: KernelHeaders | None = None) -> str:
    """What bcc compiled against, or what to install: added to a failed compile's message.
    ``headers``: those the compile was given (looked for anew when None)."""
    return (headers or prepare_kernel_headers()).detail


def check_headers() -> Result:
    """The host's headers, else the kernel's own unpacked for bcc (see kernel_headers)."""
    headers = prepare_kernel_headers()
    return Result("kernel headers", headers.ok, headers.detail)


BCC_HINT = (
    "apt-get install python3-bpfcc, and run from a virtual environment made with "
    "--system-site-packages on Debian's python3 (make setup does both)"
)


def check_bcc() -> Result:
    try:
        import bcc
    except ImportError as err:
        return Result("bcc", False, f"cannot import bcc ({err}): {BCC_HINT}")
    version = getattr(bcc, "__version__", "?")
    return Result("bcc", True, f"bcc {version} from {os.path.dirname(bcc.__file__)}")


UPROBES_NEED_SYS_ADMIN = (
    "uprobes may need CAP_SYS_ADMIN: perf_event_open of the uprobe PMU "
    "refuses CAP_PERFMON alone on some kernels"
)


def uprobe_capability_hint() -> str:
    """Added where uprobes failed to attach: empty when CAP_SYS_ADMIN is there."""
    return "" if has_capability(CAP_SYS_ADMIN) else f" ({UPROBES_NEED_SYS_ADMIN})"


CHECKS: list[Callable[[], Result]] = [
    check_privileges,
    check_bpf_syscall,
    check_tracefs,
    check_tracepoints,
    check_uprobes,
    check_headers,
    check_bcc,
]


def bpf_problem() -> str | None:
    """Why the bpf backend cannot work, found cheaply before compiling anything."""
    if os.geteuid() != 0 and not has_bpf_capabilities():
        return (
            "not root and without CAP_BPF+CAP_PERFMON (or CAP_SYS_ADMIN): run as root, "
            "or grant those capabilities"
        )
    needs_sys_admin = perfmon_not_enough()
    if needs_sys_admin:
        return needs_sys_admin
    headers = check_headers()
    return None if headers.ok else f"kernel headers: {headers.detail}"
