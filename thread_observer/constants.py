"""Constants shared by the BPF programs and the daemon, defined once here.

The BPF C receives them as ``-D`` cflags (:func:`bpf_cflags`), so the two sides cannot drift.
"""

from __future__ import annotations

import enum

METRIC_PREFIX = "thread_observer"


def metric_name(name: str) -> str:
    """The full name of one of this exporter's metrics."""
    return f"{METRIC_PREFIX}_{name}"


class ProcessState(enum.IntEnum):
    """Values of the ``watched_tgids`` map."""

    PENDING = 1  # new process, counted from exec, not yet matched against the targets
    WATCHED = 2
    EXITED = 3  # its last thread ended; user space folds its counts and forgets it


class LabelEnum(enum.IntEnum):
    """A kernel value whose label value is its lower-case name."""

    @property
    def label(self) -> str:
        return self.name.lower()


class Caller(LabelEnum):
    """Who called getaddrinfo: the ``caller`` label."""

    OTHER = 0
    EVENT_LOOP = 1


class Transport(LabelEnum):
    """How a DNS query went: the ``transport`` label of ``dns_queries_total``."""

    UDP = 1
    TCP = 2


class ResolverFunction(LabelEnum):
    """libc resolver entry points: the ``function`` label of ``resolver_calls_total``.

    getaddrinfo is counted by its own probe; the others are probed where the libc has them
    (musl has no getaddrinfo_a and no res_n* functions, and its res_search is res_query), the
    value being each uprobe's attach cookie.
    """

    GETADDRINFO = 0
    GETHOSTBYNAME = 1
    GETHOSTBYNAME_R = 2
    GETHOSTBYNAME2 = 3
    GETHOSTBYNAME2_R = 4
    GETHOSTBYADDR = 5
    GETHOSTBYADDR_R = 6
    GETNAMEINFO = 7
    GETADDRINFO_A = 8
    RES_QUERY = 9
    RES_SEARCH = 10
    RES_QUERYDOMAIN = 11
    RES_SEND = 12
    RES_NQUERY = 13
    RES_NSEARCH = 14
    RES_NQUERYDOMAIN = 15
    RES_NSEND = 16


# Probed by resolver.bpf.c (getaddrinfo has its own probe).
PROBED_RESOLVER_FUNCTIONS = tuple(f for f in ResolverFunction if f != ResolverFunction.GETADDRINFO)


class MapSize(enum.IntEnum):
    MAX_PROCESSES = 16384
    MAX_THREADS = 65536
    MAX_CREATORS = 16384
    MAX_KEYS = 65536
    MAX_HOSTS = 4096
    HOST_LENGTH = 64
    MAX_SOCKETS = 32768
    # Executables whose interpreter is known (processes.bpf.c python_templates): one per
    # Python binary of a node (a container image's is another file).
    MAX_PYTHON_BINARIES = 256

    # Children forked but not yet running (handed from parent to child in a PID namespace).
    MAX_NEW_CHILDREN = 4096
    # The command line a process starts with: its first arguments, each truncated.
    MAX_ARGS = 16
    ARG_LENGTH = 64
    # The exec reports' ring buffer, in pages (a power of 2): 512 KiB, about 500 reports
    # between two polls.
    EXEC_RINGBUF_PAGES = 128
    # An argument longer than its slot is read on to its end, to find the next one: in
    # ARGUMENT_SCAN bytes at a time, enough times for the kernel's longest argument
    # (MAX_ARG_STRLEN, 128 KiB).
    ARGUMENT_SCAN = 4096
    MAX_ARGUMENT_SCANS = 33


# getaddrinfo's latency slots kept per process: slot s counts calls of <= 2^s ns, up to the
# histogram's last bucket (thread_observer/histogram.py LAST_SLOT, 2^34 ns), and one slot more for
# every longer call.
DURATION_SLOTS = 36
# A uprobe session program runs at entry and at return: at entry its instruction pointer is
# the probed address, or past it by at most a breakpoint instruction (x86's int3 is 1 byte,
# arm64's brk 4).
ENTRY_IP_SLACK = 8


class SiteLimit(enum.IntEnum):
    """Bounds of the Python stack reading in the kernel (probes/python_stack.h)."""

    STACK_DEPTH = 16  # code objects kept per stack (a power of two)
    MAX_FRAMES_WALKED = 64  # frames looked at for a coroutine before giving up
    MAX_THREADS_WALKED = 256  # thread states looked at to find the caller's
    MAX_SITE_STACKS = 16384  # distinct (process, stack) keys per by-site map
    FRAME_HEADER_SIZE = 128  # the buffer a frame's header is read into (a power of two)
    FRAME_READ_SIZE = 80  # bytes of a frame read at once: previous, code and owner lie inside
    # The owner byte of frames with no code of their own: the C stack's entry frame (3.12,
    # 3.13: FRAME_OWNED_BY_CSTACK, 3); in 3.14 the interpreter's entry frame (3) and a C
    # stack's frame (FRAME_OWNED_BY_CSTACK, 4).
    FRAME_OWNED_BY_CSTACK = 3
    FRAME_OWNED_BY_CSTACK_3_14 = 4
    # 3.14 frames hold their code as a _PyStackRef, which tags the reference in its low bits
    # (Py_TAG_BITS). Objects are at least 8-aligned: a plain pointer has these bits clear.
    FRAME_CODE_TAG_BITS = 7
    FRAME_OWNED_BY_GENERATOR = 1  # a generator's or coroutine's frame (3.11+)
    # A thread state's first bytes, read at once (a power of two, past its last field used).
    TSTATE_READ_SIZE = 512
    # Bytes of a thread's data stack read at once, with the frames inside (a power of two):
    # a read costs about the same up to a few KiB.
    FRAME_WINDOW_SIZE = 4096
    # CO_COROUTINE | CO_ITERABLE_COROUTINE | CO_ASYNC_GENERATOR
    CO_COROUTINE_FLAGS = 0x80 | 0x100 | 0x200


class StackFlag(enum.IntFlag):
    """The ``flags`` of a by-site key: what was learnt reading the stack."""

    FRAMES_READ = 1  # the thread has a PyThreadState and its frames were read
    COROUTINE = 2  # a coroutine or async generator frame is on the stack
    TRUNCATED = 4  # MAX_FRAMES_WALKED reached before the outermost frame
    EVENT_LOOP = 8  # getaddrinfo: the call was counted caller=event_loop
    PROCESS_READ = 16  # timeline: the process's frames are read (no frame: a native caller)
    # The whole thread list was walked without this thread (or only with its frameless state
    # before it runs): it has no Python frame, so no coroutine (a native thread, such as
    # grpcio's, however it waits).
    NO_THREAD_STATE = 32


# glibc's and musl's EAI_* codes (netdb.h); both agree on these values.
EAI_NAMES = {
    -1: "EAI_BADFLAGS",
    -2: "EAI_NONAME",
    -3: "EAI_AGAIN",
    -4: "EAI_FAIL",
    -5: "EAI_NODATA",
    -6: "EAI_FAMILY",
    -7: "EAI_SOCKTYPE",
    -8: "EAI_SERVICE",
    -9: "EAI_ADDRFAMILY",
    -10: "EAI_MEMORY",
    -11: "EAI_SYSTEM",
    -12: "EAI_OVERFLOW",
    -100: "EAI_INPROGRESS",
    -101: "EAI_CANCELED",
    -102: "EAI_NOTCANCELED",
    -103: "EAI_ALLDONE",
    -104: "EAI_INTR",
    -105: "EAI_IDN_ENCODE",
}


def eai_name(code: int) -> str:
    return EAI_NAMES.get(code, "EAI_OTHER")


def resolver_entry_program(function: ResolverFunction) -> str:
    """resolver.bpf.c's entry program for one function alone, for kernels whose uprobes carry
    no attach cookie to tell the functions apart."""
    return f"resolver_entry_{function.value}"


def resolver_functions_cflag() -> str:
    """FOR_EACH_RESOLVER_FUNCTION(X): X(value) for each probed function, from which
    resolver.bpf.c makes those programs."""
    ids = " ".join(f"X({function.value})" for function in PROBED_RESOLVER_FUNCTIONS)
    return f"-DFOR_EACH_RESOLVER_FUNCTION(X)={ids}"


def bpf_cflags(
    track_new_processes: bool,
    sites: bool = False,
    task_storage: bool = False,
    host_names: bool = True,
) -> list[str]:
    """The shared -D flags; each program adds its own FOLLOW_CHILDREN. ``task_storage``: the
    kernel keeps per-thread state in the task (thread_state.h). ``host_names``: getaddrinfo
    reads the name asked for and counts calls by it."""
    flags = [f"-DSTATE_{state.name}={state.value}" for state in ProcessState]
    flags += [f"-DCALLER_{caller.name}={caller.value}" for caller in Caller]
    # __members__, not iteration: equal sizes are aliases, which iterating an enum skips.
    flags += [f"-D{name}={size.value}" for name, size in MapSize.__members__.items()]
    flags += [f"-DTRANSPORT_{transport.name}={transport.value}" for transport in Transport]
    flags.append(f"-DCALLERS={len(Caller)}")
    flags.append(f"-DDURATION_SLOTS={DURATION_SLOTS}")
    flags.append(f"-DENTRY_IP_SLACK={ENTRY_IP_SLACK}")
    flags.append(f"-DTRACK_NEW_PROCESSES={int(track_new_processes)}")
    flags.append(f"-DTASK_STORAGE={int(task_storage)}")
    flags.append(f"-DSITES={int(sites)}")
    flags.append(f"-DHOST_NAMES={int(host_names)}")
    flags.append(resolver_functions_cflag())
    if sites:
        flags += [f"-D{name}={limit.value}" for name, limit in SiteLimit.__members__.items()]
        flags += [f"-DSTACK_{flag.name}={flag.value}" for flag in StackFlag]
    return flags
