"""Empty programs on getaddrinfo, attached as the observer attaches its own: what any probe
costs before it does anything (sections 8 and 9)."""

from __future__ import annotations

import contextlib
import errno
import os
import time
from collections.abc import Iterator

from benchmarks import storm
from benchmarks.children import Children
from benchmarks.observer_process import Observer
from thread_observer import procfs
from thread_observer.bpf_backend import (
    ENTRY,
    RETURN,
    SESSION,
    attach_uprobe_multi,
    import_bcc,
    symbol_offset,
)

EMPTY_SOURCE = """
int empty_session(struct pt_regs *ctx) { return 0; }
int empty_entry(struct pt_regs *ctx) { return 0; }
int empty_return(struct pt_regs *ctx) { return 0; }
"""
# Each kind's programs and how each is linked: a uprobe session (one link, a run at entry
# and one at return, Linux 6.13+), or a pair (an entry and a return program, a uprobe_multi
# link each, Linux 6.6+), as the observer attaches its own.
KINDS = {
    "session": (("empty_session", SESSION),),
    "pair": (("empty_entry", ENTRY), ("empty_return", RETURN)),
}
EMPTY_PROGRAMS = {kind: tuple(function for function, _ in links) for kind, links in KINDS.items()}
ATTACH_PATIENCE = 60.0  # seconds


class EmptyProbes:
    """Empty programs on getaddrinfo, compiled once, attached for one process at a time (see
    KINDS). Never through bcc's perf-event uprobes: those cost more than links, and their
    undefined reference counter offset makes the kernel refuse other uprobes there."""

    def __init__(self) -> None:
        self.bpf = import_bcc().BPF(text=EMPTY_SOURCE)

    @contextlib.contextmanager
    def attached(self, kind: str, pid: int) -> Iterator[storm.ProgramStats]:
        """``kind`` ("session" or "pair") on every libc object of ``pid`` that has getaddrinfo;
        yields what gives the programs' (runs, ns) by name."""
        links: list[int] = []
        try:
            found = False
            for path in procfs.libc_objects(pid, procfs.read_maps(pid)):
                in_root = procfs.path_in_root(pid, path)
                offset = symbol_offset(in_root, "getaddrinfo")
                if offset is None:
                    continue
                found = True
                symbols = {"getaddrinfo": (offset, 0)}
                # A session's entry returning 0 asks for the return: both run, as the
                # observer's do.
                for function, how in KINDS[kind]:
                    links.append(self._link(function, in_root, symbols, how, pid))
            if not found:
                raise RuntimeError(f"no getaddrinfo in the objects of process {pid}")
            yield lambda: self.stats(kind)
        finally:
            for link in links:
                os.close(link)

    def _link(self, function: str, path: str, symbols: dict, how: tuple[int, int], pid: int) -> int:
        """A uprobe_multi link; while another tool's uprobe on the same address was made with
        another reference counter offset (bcc's Python uprobes pass an undefined one), the
        kernel refuses it: tried again until that uprobe is gone."""
        deadline = time.monotonic() + ATTACH_PATIENCE
        while True:
            try:
                return attach_uprobe_multi(self.bpf, function, path, symbols, how, pid)
            except OSError as err:
                if err.errno not in (errno.EINVAL, errno.EBUSY) or time.monotonic() > deadline:
                    raise OSError(
                        err.errno,
                        f"could not attach {function} to getaddrinfo in {path}: "
                        f"{err.strerror} for {ATTACH_PATIENCE:.0f} s (the kernel also refuses it "
                        "next to another tool's uprobe made with another reference counter "
                        "offset)",
                    ) from None
                time.sleep(0.5)

    def stats(self, kind: str) -> dict[str, tuple[int, int]]:
        mine = storm.program_stats(os.getpid())
        return {name: mine[name] for name in EMPTY_PROGRAMS[kind] if name in mine}

    def close(self) -> None:
        self.bpf.cleanup()


@contextlib.contextmanager
def empty_probes() -> Iterator[EmptyProbes]:
    probes = EmptyProbes()
    try:
        yield probes
    finally:
        probes.close()


@contextlib.contextmanager
def observed(children: Children, pid: int, arguments: list[str]) -> Iterator[storm.ProgramStats]:
    """The observer on process ``pid`` (``--pid``, with ``arguments``); yields what gives its
    programs' (runs, ns) by name."""
    args = ["--pid", f"storm={pid}", "--allow-non-python", *arguments]
    with Observer(children, args) as observer:
        observer.wait_ready(storm.ATTACH_TIMEOUT)
        time.sleep(0.3)  # the compile's aftermath
        yield lambda: storm.program_stats(observer.pid)


@contextlib.contextmanager
def side_attached(
    side: str, children: Children, pid: int, probes: EmptyProbes, observers: dict[str, list[str]]
) -> Iterator[storm.ProgramStats]:
    """A benchmark's side on process ``pid``: the observer with ``observers[side]`` as its
    arguments, an empty kind of KINDS, or nothing; yields what gives its programs' (runs, ns)
    by name."""
    if side in observers:
        with observed(children, pid, observers[side]) as stats:
            yield stats
    elif side in KINDS:
        with probes.attached(side, pid) as stats:
            yield stats
    else:
        yield dict
