"""Building an observer from the command line's options, and the full check of this machine:
what the commands share below the command line itself."""

from __future__ import annotations

import argparse
import logging

from thread_observer.bpf_backend import BpfUnavailable, check_probes
from thread_observer.capabilities import CHECKS, Result, bpf_problem
from thread_observer.errors import UsageError
from thread_observer.kubernetes import PodNames, namespace_policy
from thread_observer.observers import BpfObserver, ProcObserver
from thread_observer.retired import DEFAULT_GRACE_SECONDS
from thread_observer.targets import (
    TargetError,
    parse_pid_target,
    parse_regex_target,
    resolve_pid_target,
)

log = logging.getLogger("thread_observer")


def make_observer(args: argparse.Namespace, pod_names: PodNames | None = None):
    """The observer for the chosen backend, started; falls back to proc under auto.
    ``pod_names`` names pods for choosing them by namespace (node mode)."""
    try:
        regex_targets = [parse_regex_target(text) for text in args.target]
        pid_targets = [
            resolve_pid_target(parse_pid_target(text), args.allow_non_python) for text in args.pid
        ]
    except TargetError as err:
        raise UsageError(str(err)) from None
    if not regex_targets and not pid_targets:
        raise UsageError("nothing to watch: give --target NAME=REGEX or --pid PID")
    if not getattr(args, "epoll_mark", True) and not getattr(args, "sites", True):
        raise UsageError(
            "--no-epoll-mark needs the Python frames to tell a call on the event loop: "
            "it cannot go with --no-sites"
        )
    options = {
        "regex_targets": regex_targets,
        "pid_targets": pid_targets,
        "allow_non_python": args.allow_non_python,
        "follow_children": not getattr(args, "no_children", False),
        # Node mode (run --pod-labels) keeps each container's processes apart.
        "containers_apart": getattr(args, "pod_labels", False),
        "pids_apart": getattr(args, "label_pid", False),
        "series_grace": getattr(args, "series_grace", DEFAULT_GRACE_SECONDS),
        "namespaces": namespace_policy(args, pod_names) if pod_names is not None else None,
    }
    if args.backend == "proc":
        return started(ProcObserver(**options))
    problem = bpf_problem()
    if problem is None:
        try:
            return started(
                BpfObserver(
                    **options,
                    sites=getattr(args, "sites", True),
                    host_names=getattr(args, "host_names", True),
                    dns_queries=getattr(args, "dns_queries", True),
                    epoll_mark=getattr(args, "epoll_mark", True),
                )
            )
        except BpfUnavailable as err:
            problem = str(err)
    if args.backend == "bpf":
        raise UsageError(f"the bpf backend cannot work here: {problem}")
    log.warning(
        "eBPF unavailable (%s): falling back to the proc backend: live threads and "
        "processes only; thread creation counts and getaddrinfo are NOT measured",
        problem,
    )
    observer = ProcObserver(**options)
    observer.fallback_reason = problem
    return started(observer)


def started(observer):
    observer.start()
    return observer


def run_checks() -> list[Result]:
    """Every check of :mod:`thread_observer.capabilities`, then the probes compiled and attached."""
    results = [check() for check in CHECKS]
    if all(r.ok for r in results):
        results.append(check_probes())
    else:
        results.append(Result("probes", False, "not tried: fix the above first"))
    return results
