"""What the kernel holds for a process, through ``bpftool``: its attach points and its maps.

bpftool reads kernel objects, not the process, so it tells whether probes are attached yet (the
bcc tools print nothing to say so) and how many entries the maps really hold.
"""

from __future__ import annotations

import json
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

UPROBE_TYPES = ("uprobe", "uretprobe")


def _bpftool(*args: str) -> object:
    done = subprocess.run(
        ["bpftool", "-j", *args], capture_output=True, text=True, timeout=60, check=True
    )
    return json.loads(done.stdout or "null")


def attachments() -> list[dict]:
    """Every BPF program attached through a perf event (uprobes, tracepoints), with its owner."""
    return _bpftool("perf") or []


def attach_points_of(pid: int) -> int:
    return sum(1 for entry in attachments() if entry.get("pid") == pid)


def foreign_attachments(ours: set[int]) -> dict[str, int]:
    """Attach points held by other processes, by kind: another observer or tracer running on
    the machine adds its probes' cost to a measurement "without" ours."""
    kinds: dict[str, int] = {}
    for entry in attachments():
        if entry.get("pid") not in ours:
            kind = entry.get("fd_type", "other")
            kinds[kind] = kinds.get(kind, 0) + 1
    return kinds


def program(prog_id: int) -> dict:
    """``bpftool prog show`` of one program (``run_cnt``, ``run_time_ns`` with BPF stats on)."""
    return _bpftool("prog", "show", "id", str(prog_id))


def programs_of(pid: int) -> list[dict]:
    """``bpftool prog show`` of each program that ``pid`` holds (once per program): by the
    program and link file descriptors in its fdinfo, as ``bpftool perf`` lists no
    ``uprobe_multi`` link."""
    return [_bpftool("prog", "show", "id", str(prog_id)) for prog_id in sorted(prog_ids(pid))]


def prog_ids(pid: int) -> set[int]:
    ids = set()
    for fd_info in Path(f"/proc/{pid}/fdinfo").iterdir():
        try:
            found = re.search(r"^prog_id:\s+(\d+)", fd_info.read_text(), re.M)
        except OSError:
            continue
        if found:
            ids.add(int(found.group(1)))
    return ids


@dataclass
class MapEntries:
    name: str  # the kernel keeps the first 15 characters
    kind: str
    key_bytes: int
    max_entries: int
    entries: int


def maps_of(pid: int, prefixes: tuple[str, ...]) -> list[MapEntries]:
    """Maps used by the programs that ``pid`` attached, whose names start with a prefix."""
    map_ids = {map_id for info in programs_of(pid) for map_id in info.get("map_ids", [])}
    found = []
    for map_id in sorted(map_ids):
        info = _bpftool("map", "show", "id", str(map_id))
        if not info["name"].startswith(prefixes):
            continue
        dump = _bpftool("map", "dump", "id", str(map_id)) or []
        found.append(
            MapEntries(
                info["name"], info["type"], info["bytes_key"], info["max_entries"], len(dump)
            )
        )
    return sorted(found, key=lambda m: (m.name, m.key_bytes))
