"""Turning kernel values into label values: the ``creator`` of a thread and the ``host`` of a
getaddrinfo call. Strings from targets are bounded in number and length here, and always come
out as valid exposition text."""

from __future__ import annotations

import re
from collections import Counter

from thread_observer.procfs import AddressResolver

MAX_CREATORS_PER_PROCESS = 32  # creator label values are bounded: the rest become "other"
MAX_CREATOR_LENGTH = 96
HOSTS_PER_TARGET = 20
MAX_HOST_LENGTH = 128
OTHER_HOSTS = "<other>"
OTHER_CREATORS = "other"
UNKNOWN_CREATOR = "unknown"
ABI_TAG = re.compile(r"\.cpython-[\w-]+|\.abi3")


def host_label(raw: bytes) -> str:
    """A host name from a target as a safe label value: decoded with replacement characters,
    control characters shown as escapes, empty (a NULL node) as ``<none>``."""
    text = raw.split(b"\0", 1)[0].decode("utf-8", errors="replace")
    text = "".join(c if c.isprintable() else f"\\x{ord(c):02x}" for c in text)
    return text or "<none>"


class HostLabels:
    """Bounds the ``host`` label of one target: the first names it resolves (the most called
    first) get series of their own for as long as the target lives, later ones count as
    ``<other>``. Admission never changes afterwards, so every series stays monotonic."""

    def __init__(self, limit: int = HOSTS_PER_TARGET) -> None:
        self.limit = limit
        self.admitted: set[str] = set()

    def relabel(self, hosts: Counter[str]) -> Counter[str]:
        self.admit(hosts)
        relabelled: Counter[str] = Counter()
        for host, count in hosts.items():
            relabelled[self.label(host)] += count
        return relabelled

    def admit(self, hosts: Counter[str]) -> None:
        for host, _ in sorted(hosts.items(), key=lambda item: (-item[1], item[0])):
            if len(self.admitted) >= self.limit:
                break
            self.admitted.add(host[:MAX_HOST_LENGTH])

    def label(self, host: str) -> str:
        label = host[:MAX_HOST_LENGTH]
        return label if label in self.admitted else OTHER_HOSTS

    def relabel_calls(self, calls: Counter[tuple[str, str]]) -> Counter[tuple[str, str]]:
        """The same bound for (site, caller) keys, admitted by site: the ``site`` label."""
        by_site: Counter[str] = Counter()
        for (site, _), count in calls.items():
            by_site[site] += count
        self.admit(by_site)
        relabelled: Counter[tuple[str, str]] = Counter()
        for (site, caller), count in calls.items():
            relabelled[(self.label(site), caller)] += count
        return relabelled


def creator(resolver: AddressResolver | None, routine: int) -> str:
    """A thread's start routine as a creator: ``python`` (CPython), the basename of the
    object that holds it, or ``unknown`` (no resolver, no routine, no mapping)."""
    if resolver is None:
        return UNKNOWN_CREATOR
    return resolver.creator(routine)[:MAX_CREATOR_LENGTH]


def bounded_creator(name: str, seen: Counter[str]) -> str:
    """``other`` for a new creator once a process has MAX_CREATORS_PER_PROCESS of them."""
    if name not in seen and len(seen) >= MAX_CREATORS_PER_PROCESS:
        return OTHER_CREATORS
    return name


def short_creator(name: str) -> str:
    """``loop.so`` for uvloop's ``loop.cpython-311-x86_64-linux-gnu.so``: labels stay short."""
    return ABI_TAG.sub("", name)
