"""Flame-graph folded stacks of a timeline (``FILE.folded``): one line per distinct stack,
``kind;outermost;...;innermost count``, for flamegraph.pl, speedscope or inferno. The kind is
``thread_created`` or ``getaddrinfo``; a stack of no Python frame is ``<native>``. Records
whose process's frames were not read are left out."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from thread_observer.sites import NATIVE
from thread_observer.timeline.model import Timeline

SUFFIX = ".folded"


def frame_text(label: str) -> str:
    """A frame as folded text: ';' separates frames, and the count follows the last space."""
    return label.replace(";", ",").replace(" ", "_") or "?"


def folded_stacks(timeline: Timeline) -> Counter[str]:
    stacks: Counter[str] = Counter()
    records = [("thread_created", lane) for lane in timeline.lanes if lane.site] + [
        ("getaddrinfo", lookup) for lookup in timeline.lookups if lookup.site
    ]
    for kind, record in records:
        frames = [frame_text(label) for label in reversed(record.stack)] or [NATIVE]
        stacks[";".join([kind, *frames])] += 1
    return stacks


def write_folded(timeline: Timeline, path: Path) -> None:
    lines = [f"{stack} {count}" for stack, count in sorted(folded_stacks(timeline).items())]
    path.write_text("".join(line + "\n" for line in lines))
