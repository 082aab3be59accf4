"""Constants shared by the BPF programs and the daemon, defined once here.

The BPF C receives them as ``-D`` cflags (:func:`bpf_cflags`), so the two sides cannot drift.
"""

from __future__ import annotations

import enum

METRIC_PREFIX = "thread_observer"


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


class Transport(enum.IntEnum):
    """How a DNS query went: the ``transport`` label of ``dns_queries_total``."""

    UDP = 1
    TCP = 2

    @property
    def label(self) -> str:
        return self.name.lower()


class ResolverFunction(enum.IntEnum):
    """libc resolver entry points: the ``function`` label of ``resolver_calls_total``.

    getaddrinfo is counted by its own probe; the others each get a uprobe where the libc has
    them (glibc 2.36 has all; musl has no getaddrinfo_a and no res_n* functions).
    """

    GETADDRINFO = 0
    GETADDRINFO_A = 1
    GETHOSTBYNAME = 2
    GETHOSTBYNAME_R = 3
    GETHOSTBYNAME2 = 4
    GETHOSTBYNAME2_R = 5
    GETHOSTBYADDR = 6
    GETHOSTBYADDR_R = 7
    GETNAMEINFO = 8
    RES_QUERY = 9
    RES_SEARCH = 10
    RES_QUERYDOMAIN = 11
    RES_SEND = 12
    RES_NQUERY = 13
    RES_NSEARCH = 14
    RES_NQUERYDOMAIN = 15
    RES_NSEND = 16

    @property
    def label(self) -> str:
        return self.name.lower()


# Probed by resolver.bpf.c (getaddrinfo has its own probe).
PROBED_RESOLVER_FUNCTIONS = tuple(f for f in ResolverFunction if f != ResolverFunction.GETADDRINFO)


class MapSize(enum.IntEnum):
    MAX_PROCESSES = 16384
    MAX_THREADS = 65536
    MAX_CREATORS = 16384
    MAX_KEYS = 65536
    MAX_HOSTS = 4096
    HOST_LENGTH = 64
    MAX_SOCKETS = 32768  # distinct values: an IntEnum alias would be left out of the cflags)


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
    flags = [f"-DSTATE_{state.name}={state.value}" for state in ProcessState]
    flags += [f"-DCALLER_{caller.name}={caller.value}" for caller in Caller]
    flags += [f"-D{size.name}={size.value}" for size in MapSize]
    flags += [f"-DTRANSPORT_{transport.name}={transport.value}" for transport in Transport]
    resolvers = " ".join(f"X({f.label},{f.value})" for f in PROBED_RESOLVER_FUNCTIONS)
    flags.append(f"-DRESOLVER_FUNCTIONS={resolvers}")
    flags.append(f"-DTRACK_NEW_PROCESSES={int(track_new_processes)}")
    return flags
