"""Compiling and loading the probes in a short-lived child process, so that LLVM is never in
the daemon.

bcc compiles with LLVM and clang in the process that calls it, and they stay mapped and
resident (some 80 MiB, plus the heap they leave) for that process's life. The daemon instead
starts ``python -m thread_observer.probe_compiler``, which compiles, loads every program the
daemon asked for (each in every program type and attach type it may be attached as) and
hands the programs' and maps' file descriptors back over a Unix socket (SCM_RIGHTS), with
bcc's descriptions of the maps' C types and the log lines it wrote, and exits. What the
kernel loaded lives on in the daemon's descriptors (loaded_probes.py).
"""

from __future__ import annotations

import json
import logging
import os
import socket
import struct
import subprocess
import sys

from thread_observer import procfs
from thread_observer.loaded_probes import LoadedProbes, MapInfo

log = logging.getLogger(__name__)

LENGTH = struct.Struct("<Q")
FDS_PER_MESSAGE = 200  # under the kernel's SCM_MAX_FD (253)
FD_MARK = b"F"  # the byte each batch of descriptors rides on


class LoaderFailed(RuntimeError):
    """The child could not compile or load: its message, for BpfUnavailable."""


# The daemon's side
def load_in_child(
    files: tuple[str, ...], cflags: list[str], what: str, programs: list[tuple[str, int, int]]
) -> LoadedProbes:
    """Compiles ``files`` with ``cflags`` in a child and loads ``programs`` ((name, program
    type, expected attach type)) and the TRACEPOINT_PROBE/RAW_TRACEPOINT_PROBE ones, attached
    by nothing yet. Raises LoaderFailed with the child's message."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    command = [sys.executable, "-m", "thread_observer.probe_compiler", str(theirs.fileno())]
    with ours:
        child = subprocess.Popen(command, pass_fds=[theirs.fileno()], stdin=subprocess.DEVNULL)
        theirs.close()
        try:
            send_message(
                ours,
                {
                    "files": files,
                    "cflags": cflags,
                    "what": what,
                    "programs": programs,
                    "level": log.getEffectiveLevel(),
                },
            )
            answer = receive_message(ours)
            fds = receive_fds(ours, answer.get("fd_count", 0))
        except (OSError, ValueError) as err:
            child.kill()
            child.wait()
            raise LoaderFailed(
                f"compiling the {what} failed: the loader process broke off "
                f"({err}; exit status {child.returncode})"
            ) from None
    status = child.wait()
    replay_logs(answer.get("logs", []))
    if "error" in answer:
        raise LoaderFailed(answer["error"])
    log.info(
        "the %s were compiled and loaded by a child process (pid %d, exit status %d, peak RSS "
        "%.0f MiB); LLVM stays out of this one (RSS %.0f MiB)",
        what,
        child.pid,
        status,
        answer.get("peak_rss_mib", 0),
        procfs.own_rss_mib(),
    )
    return loaded_from(answer, fds)


def loaded_from(answer: dict, fds: list[int]) -> LoadedProbes:
    programs, refused = {}, {}
    for entry in answer["programs"]:
        key = (entry["name"], entry["type"], entry["attach_type"])
        if "fd" in entry:
            programs[key] = fds[entry["fd"]]
        else:
            refused[key] = entry["error"]
    maps = {
        entry["name"]: MapInfo(
            entry["name"],
            fds[entry["fd"]],
            entry["type"],
            entry["max_entries"],
            entry["key"],
            entry["leaf"],
            entry.get("event_fields"),
        )
        for entry in answer["maps"]
    }
    return LoadedProbes(programs, refused, maps, answer["autoload"])


def replay_logs(records: list) -> None:
    """The child's log lines, as if this process had written them."""
    for name, level, message in records:
        logging.getLogger(name).log(level, "%s", message)


# The wire: a length-prefixed JSON message, then the descriptors in batches.
def send_message(sock: socket.socket, message: dict) -> None:
    data = json.dumps(message).encode()
    sock.sendall(LENGTH.pack(len(data)) + data)


def receive_exactly(sock: socket.socket, size: int) -> bytes:
    chunks, left = [], size
    while left:
        chunk = sock.recv(min(left, 1 << 20))
        if not chunk:
            raise OSError("the other end closed the socket")
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def receive_message(sock: socket.socket) -> dict:
    (size,) = LENGTH.unpack(receive_exactly(sock, LENGTH.size))
    return json.loads(receive_exactly(sock, size))


def send_fds(sock: socket.socket, fds: list[int]) -> None:
    for start in range(0, len(fds), FDS_PER_MESSAGE):
        socket.send_fds(sock, [FD_MARK], fds[start : start + FDS_PER_MESSAGE])


def receive_fds(sock: socket.socket, count: int) -> list[int]:
    fds: list[int] = []
    while len(fds) < count:
        data, batch, _, _ = socket.recv_fds(sock, 1, FDS_PER_MESSAGE)
        if data != FD_MARK or not batch:
            for fd in batch:
                os.close(fd)
            raise OSError(f"expected {count} descriptors, got {len(fds)}")
        fds.extend(batch)
    return fds
