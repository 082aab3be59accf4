"""The kernel's BPF interfaces the daemon uses once its probes are loaded: maps, attaching
programs (perf events, raw tracepoints) and the ring buffer, over file descriptors.

Through libbpf (Debian's libbpf1, which bcc itself depends on) and perf_event_open(2), never
through bcc: bcc's Python module loads libbcc, which links LLVM and clang, and merely mapping
and running them holds some 80 MiB of a process's memory for its whole life. The compile happens
in a short-lived child (probe_loader.py) that hands the loaded programs and maps over.
"""

from __future__ import annotations

import ctypes
import errno
import functools
import os
import platform
import re

from thread_observer.capabilities import tracefs_path

# linux/bpf.h's map types that need telling apart here.
BPF_MAP_TYPE_PERCPU_HASH = 5
BPF_MAP_TYPE_PERCPU_ARRAY = 6
BPF_MAP_TYPE_ARRAY = 2
BPF_MAP_TYPE_PROG_ARRAY = 3
BPF_MAP_TYPE_LRU_PERCPU_HASH = 10
BPF_MAP_TYPE_RINGBUF = 27
ARRAY_TYPES = (BPF_MAP_TYPE_ARRAY, BPF_MAP_TYPE_PROG_ARRAY, BPF_MAP_TYPE_PERCPU_ARRAY)
PERCPU_TYPES = (BPF_MAP_TYPE_PERCPU_HASH, BPF_MAP_TYPE_PERCPU_ARRAY, BPF_MAP_TYPE_LRU_PERCPU_HASH)
BPF_ANY = 0

# perf_event_open(2)
SYS_PERF_EVENT_OPEN = {"x86_64": 298, "aarch64": 241}
PERF_TYPE_TRACEPOINT = 2
PERF_FLAG_FD_CLOEXEC = 8
PERF_EVENT_IOC_ENABLE = 0x2400
PERF_EVENT_IOC_SET_BPF = 0x40042408  # _IOW('$', 8, __u32)
PERF_ATTR_SIZE = 112  # PERF_ATTR_SIZE_VER5 (Linux 4.1): every field used here, on every kernel
UPROBE_PMU = "/sys/bus/event_source/devices/uprobe"

# The ctypes types of the C types bcc describes maps with (bcc's own table).
C_TYPES = {
    "_Bool": ctypes.c_bool,
    "char": ctypes.c_char,
    "wchar_t": ctypes.c_wchar,
    "unsigned char": ctypes.c_ubyte,
    "short": ctypes.c_short,
    "unsigned short": ctypes.c_ushort,
    "int": ctypes.c_int,
    "unsigned int": ctypes.c_uint,
    "long": ctypes.c_long,
    "unsigned long": ctypes.c_ulong,
    "long long": ctypes.c_longlong,
    "unsigned long long": ctypes.c_ulonglong,
    "float": ctypes.c_float,
    "double": ctypes.c_double,
    "long double": ctypes.c_longdouble,
    "__int128": ctypes.c_int64 * 2,
    "unsigned __int128": ctypes.c_uint64 * 2,
}


class BpfCallError(OSError):
    """A BPF or perf call the kernel refused (errno and what was asked)."""


def ctype_of(desc):
    """The ctypes type of a map's key or value from bcc's JSON description of its C type
    (``[name, [fields...], "struct" | "struct_packed" | "union"]`` or a scalar's name), as
    bcc's Python module builds it: the same layout, field names and anonymous members."""
    if isinstance(desc, str):
        return C_TYPES[desc]
    anonymous: list[str] = []
    fields = [_field_of(member, anonymous) for member in desc[1]]
    kind = desc[2] if len(desc) > 2 else "struct"
    base = ctypes.Union if kind == "union" else ctypes.Structure
    namespace = {"_anonymous_": anonymous, "_fields_": fields}
    if kind == "struct_packed":
        namespace["_pack_"] = 1
    return type(str(desc[0]), (base,), namespace)


def _field_of(member: list, anonymous: list[str]) -> tuple:
    if len(member) == 2:
        return (member[0], ctype_of(member[1]))
    name, kind, extra = member
    if isinstance(extra, list):  # an array: bcc keeps the first dimension
        return (name, ctype_of(kind) * extra[0])
    if isinstance(extra, int):  # a bit field
        return (name, ctype_of(kind), extra)
    if extra in ("union", "struct", "struct_packed"):  # a nested struct or union
        if not name:
            name = f"__anon{len(anonymous)}"
            anonymous.append(name)
        return (name, ctype_of(member))
    raise ValueError(f"cannot decode the C type {member!r}")


@functools.cache
def possible_cpus() -> int:
    """How many CPUs the kernel may bring up: the length of a per-CPU map's value list."""
    with open("/sys/devices/system/cpu/possible") as file:
        return max(int(part.split("-")[-1]) for part in file.read().strip().split(",")) + 1


@functools.cache
def libbpf() -> ctypes.CDLL:
    try:
        lib = ctypes.CDLL("libbpf.so.1", use_errno=True)
    except OSError as err:
        message = f"libbpf.so.1 not found ({err}): apt-get install libbpf1"
        raise BpfCallError(errno.ENOENT, message) from None
    pointer, u32p = ctypes.c_void_p, ctypes.POINTER(ctypes.c_uint32)
    signatures = {
        "bpf_map_lookup_elem": [ctypes.c_int, pointer, pointer],
        "bpf_map_update_elem": [ctypes.c_int, pointer, pointer, ctypes.c_uint64],
        "bpf_map_delete_elem": [ctypes.c_int, pointer],
        "bpf_map_get_next_key": [ctypes.c_int, pointer, pointer],
        "bpf_map_lookup_batch": [ctypes.c_int, pointer, pointer, pointer, pointer, u32p, pointer],
        "bpf_raw_tracepoint_open": [ctypes.c_char_p, ctypes.c_int],
        "ring_buffer__new": [ctypes.c_int, pointer, pointer, pointer],
        "ring_buffer__consume": [pointer],
        "ring_buffer__free": [pointer],
    }
    for name, arguments in signatures.items():
        function = getattr(lib, name)
        function.argtypes = arguments
        function.restype = ctypes.c_void_p if name == "ring_buffer__new" else ctypes.c_int
    return lib


def checked(result: int, what: str) -> int:
    """libbpf 1.x returns -errno on failure."""
    if result < 0:
        raise BpfCallError(-result, f"{what}: {os.strerror(-result)}")
    return result


def lookup(fd: int, key, value) -> bool:
    """Fills ``value`` with the entry for ``key``; False where there is none."""
    result = libbpf().bpf_map_lookup_elem(fd, ctypes.byref(key), ctypes.byref(value))
    if result == -errno.ENOENT:
        return False
    checked(result, "looking up a map entry")
    return True


def update(fd: int, key, value) -> None:
    result = libbpf().bpf_map_update_elem(fd, ctypes.byref(key), ctypes.byref(value), BPF_ANY)
    checked(result, "updating a map entry")


def delete(fd: int, key) -> bool:
    """Deletes the entry for ``key``; False where there was none."""
    result = libbpf().bpf_map_delete_elem(fd, ctypes.byref(key))
    if result == -errno.ENOENT:
        return False
    checked(result, "deleting a map entry")
    return True


def next_key(fd: int, key, following) -> bool:
    """Fills ``following`` with the key after ``key`` (the first with ``key`` None)."""
    after = ctypes.byref(key) if key is not None else None
    result = libbpf().bpf_map_get_next_key(fd, after, ctypes.byref(following))
    if result == -errno.ENOENT:
        return False
    checked(result, "walking a map's keys")
    return True


def lookup_batch(fd: int, token_in, token_out, keys, values, count) -> int:
    """BPF_MAP_LOOKUP_BATCH: -errno or 0, as libbpf returns it (the caller tells ENOENT, the
    last batch, from ENOSPC, a bucket larger than the room given)."""
    return libbpf().bpf_map_lookup_batch(fd, token_in, token_out, keys, values, count, None)


def open_raw_tracepoint(name: str, program_fd: int) -> int:
    """Attaches a program to a raw tracepoint; returns the attachment's fd."""
    result = libbpf().bpf_raw_tracepoint_open(name.encode(), program_fd)
    return checked(result, f"attaching to raw tracepoint {name}")


class PerfEventAttr(ctypes.Structure):
    """The head of ``struct perf_event_attr`` (include/uapi/linux/perf_event.h) up to
    PERF_ATTR_SIZE_VER5; a uprobe's path and offset are config1 and config2."""

    _fields_ = [
        ("type", ctypes.c_uint32),
        ("size", ctypes.c_uint32),
        ("config", ctypes.c_uint64),
        ("sample_period", ctypes.c_uint64),
        ("sample_type", ctypes.c_uint64),
        ("read_format", ctypes.c_uint64),
        ("flags", ctypes.c_uint64),
        ("wakeup_events", ctypes.c_uint32),
        ("bp_type", ctypes.c_uint32),
        ("config1", ctypes.c_uint64),
        ("config2", ctypes.c_uint64),
        ("rest", ctypes.c_uint8 * (PERF_ATTR_SIZE - 64)),
    ]


@functools.cache
def libc() -> ctypes.CDLL:
    lib = ctypes.CDLL(None, use_errno=True)
    lib.syscall.restype = ctypes.c_long
    return lib


def syscall(numbers: dict[str, int], *arguments) -> int:
    """A system call by its number on this machine (``numbers`` by architecture), for what
    neither Python nor libbpf 1.1 offers; raises BpfCallError with errno where it fails."""
    number = numbers.get(platform.machine())
    if number is None:
        raise BpfCallError(errno.ENOSYS, f"no system call number for {platform.machine()}")
    result = libc().syscall(number, *arguments)
    if result < 0:
        error = ctypes.get_errno()
        raise BpfCallError(error, os.strerror(error))
    return result


def perf_event_open(attr: PerfEventAttr, pid: int) -> int:
    """An event for one process, or with pid -1 for every process (then on CPU 0, which the
    kernel asks for; a tracing event's program runs on every CPU)."""
    attr.size = PERF_ATTR_SIZE
    cpu = 0 if pid == -1 else -1
    try:
        return syscall(SYS_PERF_EVENT_OPEN, ctypes.byref(attr), pid, cpu, -1, PERF_FLAG_FD_CLOEXEC)
    except BpfCallError as err:
        raise BpfCallError(err.errno, f"perf_event_open: {err.strerror}") from None


def run_on_event(event_fd: int, program_fd: int) -> int:
    """Attaches a program to a perf event and enables it; closes the event if either fails."""
    import fcntl  # stdlib; here so that the module's import stays light

    try:
        fcntl.ioctl(event_fd, PERF_EVENT_IOC_SET_BPF, program_fd)
        fcntl.ioctl(event_fd, PERF_EVENT_IOC_ENABLE, 0)
    except OSError as err:
        os.close(event_fd)
        message = f"attaching a program to a perf event: {err.strerror}"
        raise BpfCallError(err.errno, message) from None
    return event_fd


def tracepoint_id(tracepoint: str) -> int:
    """A tracepoint's id (``category:name``), from tracefs."""
    root = tracefs_path()
    if root is None:
        raise BpfCallError(errno.ENOENT, "no tracefs: tracepoints cannot be attached")
    category, name = tracepoint.split(":")
    try:
        with open(f"{root}/events/{category}/{name}/id") as file:
            return int(file.read())
    except OSError as err:
        raise BpfCallError(err.errno, f"no tracepoint {tracepoint} ({err.strerror})") from None


def attach_tracepoint(tracepoint: str, program_fd: int) -> int:
    """A program on a tracepoint for every process; returns the perf event's fd."""
    attr = PerfEventAttr(type=PERF_TYPE_TRACEPOINT, config=tracepoint_id(tracepoint))
    attr.sample_period, attr.wakeup_events = 1, 1
    return run_on_event(perf_event_open(attr, -1), program_fd)


@functools.cache
def uprobe_pmu() -> tuple[int, int, int]:
    """The uprobe PMU's type, the config bit that makes a uprobe a uretprobe, and the shift of
    the reference counter offset in config (sysfs: "config:0", "config:32-63")."""
    try:
        with open(f"{UPROBE_PMU}/type") as file:
            pmu = int(file.read())
        bits = []
        for name in ("retprobe", "ref_ctr_offset"):
            with open(f"{UPROBE_PMU}/format/{name}") as file:
                bits.append(int(file.read().strip().split(":")[1].split("-")[0]))
    except (OSError, ValueError, IndexError) as err:
        raise BpfCallError(errno.ENOENT, f"no uprobe PMU in this kernel ({err})") from None
    return pmu, bits[0], bits[1]


def attach_uprobe(
    path: str, offset: int, on_return: bool, program_fd: int, pid: int, ref_ctr_offset: int = 0
) -> int:
    """A program on a uprobe (or uretprobe) at a file offset, for every process that maps the
    file (pid -1) or only one; returns the perf event's fd."""
    pmu, return_bit, ref_ctr_shift = uprobe_pmu()
    raw_path = ctypes.create_string_buffer(path.encode())
    config = (1 << return_bit if on_return else 0) | ref_ctr_offset << ref_ctr_shift
    attr = PerfEventAttr(type=pmu, config=config)
    attr.sample_period, attr.wakeup_events = 1, 1
    attr.config1, attr.config2 = ctypes.addressof(raw_path), offset
    return run_on_event(perf_event_open(attr, pid), program_fd)


# The kernel's complaint when a uprobe's reference counter offset differs from the one of the
# uprobes already at that place (kernel/events/uprobes.c).
REF_CTR_MISMATCH = re.compile(
    r"ref_ctr_offset mismatch\. inode: 0x([0-9a-f]+) offset: 0x([0-9a-f]+) "
    r"ref_ctr_offset\(old\): 0x([0-9a-f]+)"
)


def held_ref_ctr_offset(path: str, offset: int, attach) -> int | None:
    """The reference counter offset of the uprobes already at ``offset`` of ``path``, as the
    kernel tells it in its log when ``attach()`` is refused for another; None where the log
    cannot be read or says nothing of it. (A uprobe made by bcc's Python tools carries an
    undefined one: bcc 0.26's binding declares bpf_attach_uprobe without that argument.)"""
    try:
        inode = os.stat(path).st_ino
        kmsg = os.open("/dev/kmsg", os.O_RDONLY | os.O_NONBLOCK)
    except OSError:
        return None
    try:
        os.lseek(kmsg, 0, os.SEEK_END)  # only what the refusal below writes
        try:
            os.close(attach())
            return None  # accepted after all: nothing held
        except OSError:
            pass
        return ref_ctr_in_log(kmsg, inode, offset)
    finally:
        os.close(kmsg)


def ref_ctr_in_log(kmsg: int, inode: int, offset: int) -> int | None:
    while True:
        try:
            record = os.read(kmsg, 8192).decode(errors="replace")
        except BlockingIOError:
            return None
        except OSError:  # EPIPE: records overwritten since; read on
            continue
        found = REF_CTR_MISMATCH.search(record)
        if found and (int(found[1], 16), int(found[2], 16)) == (inode, offset):
            return int(found[3], 16)


SAMPLE_CALLBACK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t)


class RingBuffer:
    """libbpf's consumer of a BPF ring buffer map: each record to ``callback(ctx, data, size)``
    (bcc's signature; ctx is always None)."""

    def __init__(self, map_fd: int, callback) -> None:
        def sample(ctx, data, size) -> int:
            callback(None, data, size)
            return 0

        self._sample = SAMPLE_CALLBACK(sample)  # kept: libbpf calls it for the buffer's life
        self._buffer = libbpf().ring_buffer__new(map_fd, self._sample, None, None)
        if not self._buffer:
            error = ctypes.get_errno()
            raise BpfCallError(error, f"opening a ring buffer: {os.strerror(error)}")

    def consume(self) -> int:
        return checked(libbpf().ring_buffer__consume(self._buffer), "reading a ring buffer")

    def close(self) -> None:
        if self._buffer:
            libbpf().ring_buffer__free(self._buffer)
            self._buffer = None
