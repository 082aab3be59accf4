"""Writing a timeline: what is written follows the file's name."""

from __future__ import annotations

from pathlib import Path

from thread_observer.timeline.folded import SUFFIX as FOLDED_SUFFIX
from thread_observer.timeline.folded import write_folded
from thread_observer.timeline.html import render_html
from thread_observer.timeline.model import Timeline, Window, window_of
from thread_observer.timeline.render import render_picture
from thread_observer.timeline.trace import is_trace_path, write_trace


def render(timeline: Timeline, path: Path, window: Window | None = None) -> None:
    """A picture (.png, .svg), the interactive page (.html), a Chrome trace (.trace.json) or
    folded stacks (.folded); ``window`` is the part shown (the trace and the stacks always hold
    everything)."""
    window = window or window_of(timeline)
    if is_trace_path(path):
        write_trace(timeline, path)
    elif path.suffix.lower() == FOLDED_SUFFIX:
        write_folded(timeline, path)
    elif path.suffix.lower() == ".html":
        path.write_text(render_html(timeline, window))
    else:
        render_picture(timeline, path, window)
