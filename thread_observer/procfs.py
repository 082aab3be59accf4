"""What /proc tells about a target: its mappings, libc, interpreter and container.

Paths inside a target are opened through ``/proc/PID/root`` so targets in other mount
namespaces (containers) work.
"""

from __future__ import annotations

import contextlib
import os
import re
from bisect import bisect_right
from dataclasses import dataclass
from pathlib import Path

PROC = Path("/proc")

# Objects that may hold pthread_create and getaddrinfo: glibc (libpthread before 2.34), musl
# (Debian maps it as libc.so, Alpine as ld-musl-ARCH.so.1).
LIBC_NAME = re.compile(
    r"^(libc\.so(\.6)?|libc-[\d.]+\.so|libpthread\.so\.0|libpthread-[\d.]+\.so"
    r"|libc\.musl-[\w-]+\.so\.1|ld-musl-[\w-]+\.so\.1)$"
)
PYTHON_EXE = re.compile(r"^python(\d+(\.\d+)?)?[a-z]*$")
# glibc's dynamic loader: mapped by the kernel at exec, before any library.
LOADER_NAME = re.compile(r"^ld-linux[\w.-]*\.so(\.\d+)?$")
LIBPYTHON = re.compile(r"^libpython(\d+)\.(\d+)")
PYTHON_VERSION_IN_NAME = re.compile(r"python(\d+)\.(\d+)")
CONTAINER_ID = re.compile(r"([0-9a-f]{64})")
POD_UID = re.compile(
    r"pod([0-9a-f]{8}[-_][0-9a-f]{4}[-_][0-9a-f]{4}[-_][0-9a-f]{4}[-_][0-9a-f]{12})"
)


@dataclass(frozen=True)
class Mapping:
    start: int
    end: int
    path: str
    executable: bool
    inode: int = 0  # of the mapped file (0: not known)


def read_maps(pid: int) -> list[Mapping]:
    """File-backed mappings of a process, sorted by start address."""
    mappings = []
    # Paths are untrusted bytes: replace what is not UTF-8 so labels stay valid text.
    with open(PROC / str(pid) / "maps", errors="replace") as maps:
        for line in maps:
            fields = line.split(maxsplit=5)
            if len(fields) < 6 or not fields[5].startswith("/"):
                continue
            start, end = (int(x, 16) for x in fields[0].split("-"))
            path = fields[5].rstrip("\n").removesuffix(" (deleted)")
            mappings.append(Mapping(start, end, path, "x" in fields[1], int(fields[4])))
    mappings.sort(key=lambda m: m.start)
    return mappings


def own_rss_mib(field: str = "VmRSS") -> float:
    """This process's resident memory (or another /proc/self/status size), in MiB (0 where
    /proc says nothing)."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) / 1024
    return 0.0


def own_peak_rss_mib() -> float:
    """The most resident memory this process has had, in MiB."""
    return own_rss_mib("VmHWM")


CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class ProcessStat:
    """What /proc/PID/stat says of a process's life."""

    state: str  # R, S, D, Z (zombie), X (dead)...
    parent: int
    threads: int
    started: float  # seconds from boot to its start: with its PID, who it is
    code_start: int = 0  # its mm's start_code (0 where the kernel does not show it)


def process_stat(pid: int) -> ProcessStat | None:
    """One read of /proc/PID/stat; None if the process is gone. Its start time counts from
    boot (psutil's create_time adds a boot time that moves by a second at times with the
    clock: a process would seem to be another)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as file:  # a plain path: pathlib costs more here
            fields = file.read().rsplit(b")", 1)[1].split()
        return ProcessStat(
            fields[0].decode(),
            int(fields[1]),
            int(fields[17]),
            int(fields[19]) / CLOCK_TICKS,
            int(fields[23]),
        )
    except (OSError, IndexError, ValueError):
        return None


def parent_pid(pid: int) -> int | None:
    """The parent's PID, or None if the process is gone."""
    stat = process_stat(pid)
    return stat.parent if stat is not None else None


def exe_path(pid: int) -> str:
    return os.readlink(PROC / str(pid) / "exe").removesuffix(" (deleted)")


def path_in_root(pid: int, path: str, mappings: list[Mapping] | None = None) -> str:
    """The target's file as seen from here. Its maps name a file from the root of its mount
    namespace, which /proc/PID/root reaches (a container's), unless the process runs chrooted
    below it; there, when that root is ours too (a chroot on this machine), the path names the
    file here as it is. Given the process's mappings, the one holding the mapped inode is
    taken."""
    through_root = f"/proc/{pid}/root{path}"
    inode = next((m.inode for m in mappings or () if m.path == path and m.inode), 0)
    if inode:
        for candidate in (through_root, path):
            with contextlib.suppress(OSError):
                if os.stat(candidate).st_ino == inode:
                    return candidate
    return through_root


def libc_objects(pid: int, mappings: list[Mapping]) -> list[str]:
    """Paths (in the target's namespace) of the objects that may hold pthread_create and
    getaddrinfo; a statically linked target holds them in its executable. None (an empty
    list) while the dynamic loader has not mapped the libraries yet: a program just started."""
    found = sorted({m.path for m in mappings if LIBC_NAME.match(os.path.basename(m.path))})
    if found:
        return found
    if loader_busy(mappings):
        return []
    return [exe_path(pid)]


def loader_busy(mappings: list[Mapping]) -> bool:
    """Whether glibc's dynamic loader is still mapping the program's libraries: it is mapped
    (the kernel maps it at exec) and libc is not. The loader maps the libraries one whole
    library after the other, in the order the program names them, and linkers name libc last:
    until it is mapped the others (libpython) may be missing or mapped in part."""
    # From the top of the address space down, libc first: the loader maps the libraries
    # there, above what the program maps later (its extension modules).
    if any(LIBC_NAME.match(os.path.basename(m.path)) for m in reversed(mappings)):
        return False
    return any(LOADER_NAME.match(os.path.basename(m.path)) for m in reversed(mappings))


def is_python(pid: int, mappings: list[Mapping] | None = None) -> bool:
    if PYTHON_EXE.match(os.path.basename(exe_path(pid))):
        return True
    maps = mappings if mappings is not None else read_maps(pid)
    return any(LIBPYTHON.match(os.path.basename(m.path)) for m in maps)


def python_version(pid: int, mappings: list[Mapping]) -> tuple[int, int] | None:
    """The interpreter's version from its libpython or executable name."""
    for m in mappings:
        found = LIBPYTHON.match(os.path.basename(m.path))
        if found:
            return int(found[1]), int(found[2])
    found = PYTHON_VERSION_IN_NAME.search(os.path.basename(exe_path(pid)))
    return (int(found[1]), int(found[2])) if found else None


class AddressResolver:
    """Finds which object holds an address in one process; the creator label."""

    def __init__(self, pid: int, mappings: list[Mapping], exe: str) -> None:
        self.pid = pid
        self.exe = exe
        self._load(mappings)

    def _load(self, mappings: list[Mapping]) -> None:
        self._mappings = [m for m in mappings if m.executable]
        self._starts = [m.start for m in self._mappings]

    def refresh(self) -> None:
        self._load(read_maps(self.pid))

    def find(self, address: int) -> Mapping | None:
        index = bisect_right(self._starts, address) - 1
        if index >= 0 and address < self._mappings[index].end:
            return self._mappings[index]
        return None

    def creator(self, address: int) -> str:
        """``python`` when CPython holds the start routine, else the holder's basename."""
        if address == 0:
            return "unknown"
        mapping = self.find(address)
        if mapping is None:
            try:
                self.refresh()  # a library loaded since the last read
            except OSError:
                return "unknown"
            mapping = self.find(address)
        if mapping is None:
            return "unknown"
        return classify_creator(mapping.path, self.exe)


def classify_creator(path: str, exe: str) -> str:
    name = os.path.basename(path)
    if (path == exe and PYTHON_EXE.match(name)) or LIBPYTHON.match(name):
        return "python"
    return name


def container_identity(pid: int) -> tuple[str, str]:
    """(container id, pod uid) from the target's cgroup, or empty strings."""
    try:
        cgroup = (PROC / str(pid) / "cgroup").read_text(errors="replace")
    except OSError:
        return "", ""
    return parse_cgroup_identity(cgroup)


def parse_cgroup_identity(cgroup: str) -> tuple[str, str]:
    """Container runtimes put a 64-hex-digit id, and the kubelet the pod uid, in the path."""
    container = CONTAINER_ID.findall(cgroup)
    pod = POD_UID.search(cgroup)
    return (container[-1] if container else ""), (pod[1].replace("_", "-") if pod else "")


def executor_default_max_workers(
    version: tuple[int, int] | None, cpus_online: int, cpus_allowed: int
) -> int | None:
    """ThreadPoolExecutor's default max_workers for an interpreter version."""
    if version is None or version < (3, 5):
        return None
    if version >= (3, 13):
        return min(32, cpus_allowed + 4)  # os.process_cpu_count(): the affinity mask
    if version >= (3, 8):
        return min(32, cpus_online + 4)
    return cpus_online * 5
