"""``thread-observer check``: each prerequisite of the bpf backend, OK or what to do."""

from __future__ import annotations

import ctypes
import logging
import os
import platform
import sys
from collections.abc import Callable
from dataclasses import dataclass

CAP_SYS_ADMIN = 21
CAP_SYS_PTRACE = 19
CAP_PERFMON = 38
CAP_BPF = 39
BPF_MAP_CREATE = 0
BPF_MAP_TYPE_ARRAY = 2
SYS_BPF = {"x86_64": 321, "aarch64": 280}
TRACEFS = ("/sys/kernel/tracing", "/sys/kernel/debug/tracing")


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
    return has_capability(CAP_SYS_ADMIN) or (has_capability(CAP_BPF)
                                             and has_capability(CAP_PERFMON))


def check_privileges() -> Result:
    if os.geteuid() == 0 and has_capability(CAP_SYS_ADMIN):
        return Result("privileges", True, "root")
    if has_bpf_capabilities():
        detail = "CAP_BPF and CAP_PERFMON" if not has_capability(CAP_SYS_ADMIN) else "CAP_SYS_ADMIN"
        if not has_capability(CAP_SYS_PTRACE):
            return Result("privileges", False, f"{detail}, but CAP_SYS_PTRACE is missing: "
                          "needed to read other processes' /proc/PID/maps and root")
        return Result("privileges", True, detail)
    return Result("privileges", False, "not root and no CAP_BPF+CAP_PERFMON (or CAP_SYS_ADMIN): "
                  "run as root or grant CAP_BPF, CAP_PERFMON, CAP_SYS_PTRACE")


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
        return Result("bpf syscall", False, f"bpf(BPF_MAP_CREATE) failed: {os.strerror(err)} "
                      "(needs privileges; kernel.unprivileged_bpf_disabled; seccomp in containers)")
    os.close(fd)
    return Result("bpf syscall", True, "bpf(BPF_MAP_CREATE) works")


def tracefs_path() -> str | None:
    return next((p for p in TRACEFS if os.path.exists(f"{p}/events")), None)


def check_tracefs() -> Result:
    path = tracefs_path()
    if path:
        return Result("tracefs", True, path)
    return Result("tracefs", False, "not mounted: mount -t tracefs nodev /sys/kernel/tracing "
                  "(in a container, mount the host's /sys/kernel/tracing)")


def check_tracepoints() -> Result:
    path = tracefs_path()
    wanted = ["task/task_newtask", "sched/sched_process_exec", "sched/sched_process_exit",
              "syscalls/sys_enter_epoll_wait", "syscalls/sys_enter_epoll_pwait"]
    missing = [t for t in wanted if not path or not os.path.exists(f"{path}/events/{t}")]
    if missing:
        return Result("tracepoints", False, f"missing: {', '.join(missing)} "
                      "(needs CONFIG_FTRACE_SYSCALLS and tracefs)")
    return Result("tracepoints", True, ", ".join(wanted))


def check_uprobes() -> Result:
    if os.path.exists("/sys/bus/event_source/devices/uprobe"):
        return Result("uprobes", True, "perf uprobe PMU present")
    path = tracefs_path()
    if path and os.path.exists(f"{path}/uprobe_events"):
        return Result("uprobes", True, f"{path}/uprobe_events")
    return Result("uprobes", False, "kernel without CONFIG_UPROBES: getaddrinfo and "
                  "pthread_create cannot be probed")


def check_headers() -> Result:
    release = os.uname().release
    build = f"/lib/modules/{release}/build"
    if not os.path.exists(build):
        return Result("kernel headers", False, f"none at {build}: apt-get install "
                      f"linux-headers-{release}, or link Debian's linux-headers-amd64 there "
                      "(deploy/setup.sh does this)")
    target = os.path.realpath(build)
    note = "" if release in target else f" (for another kernel than {release}: fine for " \
        "the tracepoint and uprobe programs used here)"
    return Result("kernel headers", True, f"bcc uses {target}{note}")


def check_bcc() -> Result:
    try:
        import bcc
    except ImportError as err:
        return Result("bcc", False, f"cannot import bcc ({err}): apt-get install python3-bpfcc "
                      "and use a venv made with --system-site-packages on Debian's python3")
    version = getattr(bcc, "__version__", "?")
    return Result("bcc", True, f"bcc {version} from {os.path.dirname(bcc.__file__)}")


def check_probes() -> Result:
    """Compiles and attaches the real probes on this process's own libc."""
    from observer.bpf_backend import BpfProbes, BpfUnavailable
    from observer.procfs import libc_objects, read_maps

    probes = BpfProbes(track_new_processes=False)
    try:
        probes.load()
        for path in libc_objects(os.getpid(), read_maps(os.getpid())):
            info = os.stat(path)
            probes.attach_libc(path, (info.st_dev, info.st_ino))
        attached = dict(probes.probes_attached)
    except BpfUnavailable as err:
        return Result("probes", False, str(err))
    finally:
        probes.close()
    missing = [p for p in ("pthread_create", "getaddrinfo", "getaddrinfo_return", "task_newtask")
               if not attached.get(p)]
    if missing:
        hint = "" if has_capability(CAP_SYS_ADMIN) else (
            " (uprobes need CAP_SYS_ADMIN on this kernel: its uprobe PMU refuses CAP_PERFMON "
            "alone)")
        return Result("probes", False, f"not attached: {', '.join(missing)}{hint}")
    return Result("probes", True, "compiled and attached: " + ", ".join(sorted(attached)))


CHECKS: list[Callable[[], Result]] = [
    check_privileges, check_bpf_syscall, check_tracefs, check_tracepoints, check_uprobes,
    check_headers, check_bcc,
]


def run_checks() -> list[Result]:
    results = [check() for check in CHECKS]
    if all(r.ok for r in results):
        results.append(check_probes())
    else:
        results.append(Result("probes", False, "not tried: fix the above first"))
    return results


def main() -> int:
    # The attach lines of the probe check would only repeat what its result says.
    logging.getLogger("observer.bpf_backend").setLevel(logging.WARNING)
    results = run_checks()
    width = max(len(r.name) for r in results)
    for r in results:
        print(f"{'OK  ' if r.ok else 'FAIL'} {r.name:<{width}}  {r.detail}")
    if all(r.ok for r in results):
        print("\nthe bpf backend works here")
        return 0
    print("\nthe bpf backend cannot work here: fix the FAIL lines, or run with --backend proc "
          "(live threads only, no counts)", file=sys.stderr)
    return 1
