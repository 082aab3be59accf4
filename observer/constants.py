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


class Caller(enum.IntEnum):
    """Who called getaddrinfo: the ``caller`` label."""

    OTHER = 0
    EVENT_LOOP = 1

    @property
    def label(self) -> str:
        return self.name.lower()


class MapSize(enum.IntEnum):
    MAX_PROCESSES = 16384
    MAX_THREADS = 65536
    MAX_CREATORS = 16384
    MAX_KEYS = 65536
    MAX_HOSTS = 4096
    HOST_LENGTH = 64

    # Children forked but not yet running (handed from parent to child in a PID namespace).
    MAX_NEW_CHILDREN = 4096
    # The command line a process starts with: its first arguments, each truncated.
    MAX_ARGS = 16
    ARG_LENGTH = 64
    # The exec reports' ring buffer, in pages (a power of 2): 512 KiB, about 500 reports
    # between two polls.
    EXEC_RINGBUF_PAGES = 128


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


def bpf_cflags(track_new_processes: bool) -> list[str]:
    """The shared -D flags; each program adds its own FOLLOW_CHILDREN."""
    flags = [f"-DSTATE_{state.name}={state.value}" for state in ProcessState]
    flags += [f"-DCALLER_{caller.name}={caller.value}" for caller in Caller]
    # __members__, not iteration: equal sizes are aliases, which iterating an enum skips.
    flags += [f"-D{name}={size.value}" for name, size in MapSize.__members__.items()]
    flags.append(f"-DTRACK_NEW_PROCESSES={int(track_new_processes)}")
    return flags
