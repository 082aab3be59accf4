"""``thread-observer timeline``: every thread's life and every getaddrinfo call, as a picture.

The one place where per-event records are right: a lane per thread over time needs each
creation, exit and call with its instant, not counters. :mod:`thread_observer.timeline.recorder`
records them, :mod:`thread_observer.timeline.lanes` turns them into lanes and
:mod:`thread_observer.timeline.render` draws them.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from thread_observer.arguments import add_target_arguments, positive_float
from thread_observer.bpf_backend import BpfUnavailable
from thread_observer.errors import UsageError
from thread_observer.targets import (
    TargetError,
    parse_pid_target,
    parse_regex_target,
    resolve_pid_target,
)
from thread_observer.timeline.lanes import build_timeline
from thread_observer.timeline.model import EventKind, Recording, window_of
from thread_observer.timeline.recorder import (
    GatedCommand,
    Recorder,
    TimelineProbes,
    record,
    stop_on_signals,
)
from thread_observer.timeline.trace import SUFFIX as TRACE_SUFFIX
from thread_observer.timeline.trace import is_trace_path

OUTPUT_KINDS = (".png", ".svg", ".html", ".json", ".folded")
EPILOG = """examples:
  thread-observer timeline --output run.png -- python3 client.py          # from its start
  thread-observer timeline -o run.html -o run.png --json -- python3 -m workloads.semaphore_burst
  thread-observer timeline --output api.svg --pid 4242 --seconds 10       # a running process
  thread-observer timeline --output api.png --target api='python.*server\\.py' --seconds 30
  thread-observer timeline --input run.json --output run.svg              # draw a recording again
  thread-observer timeline --input run.json -o zoom.png --from 0.55 --to 0.7   # a part of it
  thread-observer timeline -o run.trace.json -- python3 client.py   # for ui.perfetto.dev

The output format follows the extension: .png and .svg (a picture), .html (interactive, with
tooltips, zoom and pan, self-contained), .trace.json (Chrome Trace Event format: open it in
ui.perfetto.dev, chrome://tracing or speedscope), .json (the raw events, each thread creation
and lookup with its Python site and stack), .folded (flame-graph folded stacks). With
-- COMMAND, its stdin, stdout and exit status are passed through; a command that fails is said
so on the picture.
"""


# Command line
def add_parser(subparsers, parents) -> None:
    """The ``timeline`` subcommand."""
    parser = subparsers.add_parser(
        "timeline",
        help="draw thread lifetimes and getaddrinfo calls over time",
        description="Record every thread created and ended and every getaddrinfo call of a "
        "command or of running processes, and draw them as lanes over time.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        parents=list(parents),
    )
    parser.add_argument(
        "--output",
        "-o",
        action="append",
        required=True,
        metavar="FILE",
        help="where to write: .png, .svg, .html, .trace.json (Chrome trace), "
        ".json or .folded (repeatable)",
    )
    parser.add_argument(
        "--json", action="store_true", help="also write the raw events to the first FILE with .json"
    )
    parser.add_argument(
        "--folded",
        action="store_true",
        help="also write flame-graph folded stacks (the Python stacks of "
        "threads created and lookups) to the first FILE with .folded",
    )
    add_target_arguments(parser)
    parser.add_argument(
        "--input",
        type=Path,
        metavar="EVENTS.json",
        help="draw a recording saved with --json instead of recording",
    )
    parser.add_argument(
        "--seconds",
        type=positive_float,
        metavar="S",
        help="stop recording after S seconds (default: when the command or "
        "the processes exit, or on Ctrl-C)",
    )
    parser.add_argument(
        "--children",
        action="store_true",
        help="also record the processes the command forks (--pid and "
        "--target processes' children are recorded unless --no-children)",
    )
    parser.add_argument("--title", help="title of the picture (default: the command line)")
    parser.add_argument(
        "--from",
        dest="from_seconds",
        type=non_negative_float,
        metavar="S",
        help="show from S seconds after the start (the HTML page opens "
        "there and zooms out; PNG and SVG are cropped)",
    )
    parser.add_argument(
        "--to",
        dest="to_seconds",
        type=positive_float,
        metavar="S",
        help="show up to S seconds after the start",
    )
    parser.add_argument(
        "command",
        nargs="*",
        metavar="-- COMMAND ARGS",
        help="run this command and record it from its start",
    )
    parser.set_defaults(func=run)


def non_negative_float(text: str) -> float:
    """0 or more: where ``--from`` starts."""
    return 0.0 if _is_zero(text) else positive_float(text)


def _is_zero(text: str) -> bool:
    try:
        return float(text) == 0
    except ValueError:
        return False


def run(args: argparse.Namespace) -> int:
    outputs = output_paths(args.output, args.json, args.folded)
    if args.input is not None:
        if args.command or args.pid or args.target:
            raise UsageError(
                "--input draws a saved recording: give no command, --pid or --target with it"
            )
        recording = Recording.load(args.input)
        recording.command = args.title or recording.command
        return write_outputs(recording, outputs, args)
    return record_and_write(args, outputs)


def output_paths(names: list[str], with_json: bool, with_folded: bool = False) -> list[Path]:
    paths = [Path(name) for name in names]
    for path in paths:
        if path.suffix.lower() not in OUTPUT_KINDS:
            raise UsageError(
                f"--output {path}: the extension must be one of {', '.join(OUTPUT_KINDS)}"
            )
        if not path.parent.is_dir():
            raise UsageError(f"--output {path}: no such directory {path.parent}")
    first = paths[0]
    stem = first.name[: -len(TRACE_SUFFIX)] if is_trace_path(first) else first.stem
    raw = [path for path in paths if path.suffix.lower() == ".json" and not is_trace_path(path)]
    if with_json and not raw:
        paths.append(first.with_name(stem + ".json"))
    if with_folded and not [path for path in paths if path.suffix.lower() == ".folded"]:
        paths.append(first.with_name(stem + ".folded"))
    return paths


def write_outputs(recording: Recording, outputs: list[Path], args) -> int:
    from thread_observer.timeline.outputs import render
    from thread_observer.timeline.render import outcome_text

    timeline = build_timeline(recording)
    window = window_of(timeline, args.from_seconds, args.to_seconds)
    for path in outputs:
        try:
            if path.suffix.lower() == ".json" and not is_trace_path(path):
                recording.save(path)
            else:
                render(timeline, path, window)
        except OSError as err:
            raise UsageError(f"cannot write {path}: {err.strerror or err}") from None
    print(
        f"thread-observer: {timeline.threads_created} threads created, "
        f"{len(timeline.lookups)} getaddrinfo calls ({timeline.failures} failed), "
        f"{timeline.lost_events} events lost: wrote {', '.join(map(str, outputs))}",
        file=sys.stderr,
    )
    if timeline.failed:
        print(
            f"thread-observer: {outcome_text(timeline)}: the picture is of a failed run",
            file=sys.stderr,
        )
    return 0


def record_and_write(args: argparse.Namespace, outputs: list[Path]) -> int:
    if bool(args.command) == bool(args.pid or args.target):
        raise UsageError("record either a command (after --) or --pid/--target processes")
    try:
        regex_targets = [parse_regex_target(text) for text in args.target]
        # What the metrics daemon checks too: there, Python, and readable (or why not).
        args.pid = [
            resolve_pid_target(parse_pid_target(text), args.allow_non_python).pid
            for text in args.pid
        ]
    except TargetError as err:
        raise UsageError(str(err)) from None
    # --pid and --target processes are trees, as for the observer; a command's children on ask.
    follow_children = (args.children or bool(args.pid or regex_targets)) and not args.no_children
    probes = TimelineProbes(follow_children, bool(regex_targets))
    recorder = Recorder(probes, regex_targets, args.allow_non_python)
    try:
        probes.load(recorder.handle)
    except BpfUnavailable as err:
        raise UsageError(f"eBPF cannot work here: {err}") from None
    try:
        # The usual libc, probed before anything runs: a new program's first calls count.
        recorder.attach_libc_of(os.getpid())
        if args.command:
            return record_command(args, probes, recorder, outputs)
        return record_processes(args, probes, recorder, outputs)
    finally:
        probes.close()


def record_command(args, probes: TimelineProbes, recorder: Recorder, outputs: list[Path]) -> int:
    command = GatedCommand(args.command)
    try:
        recorder.watch(command.pid)
    except Exception:
        command.abort()
        raise
    deadline = _deadline(args.seconds)
    try:
        with stop_on_signals() as stopped:
            # The gate's own exec can reach the probe after its pid was marked watched.
            recorder.since_ns = start_ns = time.monotonic_ns()
            command.release()
            record(
                probes,
                recorder,
                lambda: (
                    stopped.set or command.process.poll() is not None or time.monotonic() > deadline
                ),
            )
        # The picture starts at the exec, not at the gate's start-up before it.
        start_ns = min(
            (e.time_ns for e in recorder.events if e.kind == EventKind.PROCESS_EXEC.label),
            default=start_ns,
        )
        recording = finish(args, probes, recorder, start_ns, " ".join(args.command))
        recording.exit_status = command.status()  # None: still running (--seconds, Ctrl-C)
        status = write_outputs(recording, outputs, args)
    finally:
        probes.close()  # the command may run on after --seconds: detach now
        code = command.wait()
    return code or status


def record_processes(args, probes: TimelineProbes, recorder: Recorder, outputs: list[Path]) -> int:
    start_ns = time.monotonic_ns()
    for pid in args.pid:
        if not os.path.exists(f"/proc/{pid}"):
            raise UsageError(f"--pid {pid}: no such process")
        recorder.watch(pid, existing=True)
    if recorder.regex_targets:
        recorder.find_targets()
    deadline = _deadline(args.seconds)
    with stop_on_signals() as stopped:

        def done() -> bool:
            # --pid alone ends with its processes; a --target waits for new ones.
            gone = not recorder.regex_targets and not any(map(_alive, recorder.alive))
            return stopped.set or gone or time.monotonic() > deadline

        record(probes, recorder, done)
    names = [f"pid {pid}" for pid in args.pid] + [f"--target {t}" for t in args.target]
    recording = finish(args, probes, recorder, start_ns, ", ".join(names))
    return write_outputs(recording, outputs, args)


def _alive(pid: int) -> bool:
    return os.path.exists(f"/proc/{pid}")


def _deadline(seconds: float | None) -> float:
    return time.monotonic() + seconds if seconds else float("inf")


def finish(
    args, probes: TimelineProbes, recorder: Recorder, start_ns: int, command: str
) -> Recording:
    now = time.monotonic_ns()
    # When everything recorded has exited, the picture ends there, not at the next poll; a
    # --target recording runs for as long as it was asked to, quiet or not.
    done = not recorder.alive and not recorder.regex_targets
    end_ns = (recorder.last_exit_ns() or now) if done else now
    recorder.name_live_threads(end_ns)
    return Recording(args.title or command, start_ns, end_ns, probes.lost_events(), recorder.events)
