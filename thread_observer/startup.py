"""Building an observer from the command's options, and the full check of this machine:
what the commands share below the command line itself."""

from __future__ import annotations

import argparse
import logging

from thread_observer.bpf_backend import BpfUnavailable, check_probes
from thread_observer.capabilities import CHECKS, Result, bpf_problem
from thread_observer.errors import UsageError
from thread_observer.kubernetes import PodNames, namespace_policy
from thread_observer.observers import BpfObserver, ProcObserver
from thread_observer.options import ObserverOptions
from thread_observer.targets import TargetError, resolve_pid_target

log = logging.getLogger("thread_observer")


def make_observer(options: ObserverOptions | argparse.Namespace, pod_names: PodNames | None = None):
    """The observer for the chosen backend, started; falls back to proc under auto.
    ``pod_names`` names pods for choosing them by namespace (node mode). Parsed arguments
    are taken too, for callers that parse a command line of their own (tests, benchmarks)."""
    if isinstance(options, argparse.Namespace):
        options = ObserverOptions.from_arguments(options)
    if not options.regex_targets and not options.pid_targets:
        raise UsageError("nothing to watch: give --target NAME=REGEX or --pid PID")
    settings = observer_settings(options, pod_names)
    if options.backend == "proc":
        return started(ProcObserver(**settings))
    problem = bpf_problem()
    if problem is None:
        try:
            return started(
                BpfObserver(
                    **settings,
                    sites=options.sites,
                    host_names=options.host_names,
                    dns_queries=options.dns_queries,
                    epoll_mark=options.epoll_mark,
                )
            )
        except BpfUnavailable as err:
            problem = str(err)
    if options.backend == "bpf":
        raise UsageError(f"the bpf backend cannot work here: {problem}")
    log.warning(
        "eBPF unavailable (%s): falling back to the proc backend: live threads and "
        "processes only; thread creation counts and getaddrinfo are NOT measured",
        problem,
    )
    observer = ProcObserver(**settings)
    observer.fallback_reason = problem
    return started(observer)


def observer_settings(options: ObserverOptions, pod_names: PodNames | None) -> dict:
    """What both backends' observers take; the --pid targets checked against /proc now."""
    try:
        pid_targets = [
            resolve_pid_target(target, options.allow_non_python) for target in options.pid_targets
        ]
    except TargetError as err:
        raise UsageError(str(err)) from None
    return {
        "regex_targets": list(options.regex_targets),
        "pid_targets": pid_targets,
        "allow_non_python": options.allow_non_python,
        "follow_children": options.follow_children,
        # Node mode (run --pod-labels) keeps each container's processes apart.
        "containers_apart": options.pod_labels,
        "pids_apart": options.label_pid,
        "series_grace": options.series_grace,
        "namespaces": namespace_policy(options, pod_names) if pod_names is not None else None,
    }


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
