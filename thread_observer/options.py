"""The observer's options: one frozen value, built and checked once from a command's arguments.

``run``, ``top`` and ``demo`` each parse a different set of flags; each turns what it parsed
into an :class:`ObserverOptions` at once, and everything below the command takes that value,
never the parsed arguments. An option a command has no flag for keeps the default here, so no
reader needs a fallback of its own.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, fields

from thread_observer.arguments import DEFAULT_BACKEND, parse_listen
from thread_observer.errors import UsageError
from thread_observer.kubernetes import DEFAULT_LOG_DIR, check_namespaces
from thread_observer.retired import DEFAULT_GRACE_SECONDS
from thread_observer.targets import (
    PidTarget,
    RegexTarget,
    TargetError,
    parse_pid_target,
    parse_regex_target,
)

# A field takes the parsed value of the flag whose destination has its name, except that
# --target, --pid and --no-children become regex_targets, pid_targets and follow_children,
# and that these repeatable flags' lists become sets.
NAMESPACE_FIELDS = ("namespaces", "excluded_namespaces", "no_hosts_namespaces")


@dataclass(frozen=True)
class ObserverOptions:
    """What the observer watches and measures, how its series are labelled, where it serves
    and where it logs. The defaults are ``run``'s."""

    # What to watch. A pid is resolved (does it exist, is it Python) when the observer starts.
    regex_targets: tuple[RegexTarget, ...] = ()
    pid_targets: tuple[PidTarget, ...] = ()
    allow_non_python: bool = False
    follow_children: bool = True
    backend: str = DEFAULT_BACKEND
    # What to measure (the bpf backend)
    sites: bool = True
    host_names: bool = True
    dns_queries: bool = True
    epoll_mark: bool = True
    # Series and labels
    label_pid: bool = False
    series_grace: float = DEFAULT_GRACE_SECONDS
    pod_labels: bool = False
    kubelet_log_dir: str = DEFAULT_LOG_DIR
    namespaces: frozenset[str] = frozenset()
    excluded_namespaces: frozenset[str] = frozenset()
    no_hosts_namespaces: frozenset[str] = frozenset()
    # Serving; interval is the seconds between two looks at the processes (top's frames)
    listen: str = "0.0.0.0:9097"
    interval: float = 0.25
    bearer_token_file: str | None = None
    tls_cert_file: str | None = None
    tls_key_file: str | None = None
    # Logs: where records go besides stderr or top's status line
    log_file: str | None = None

    def __post_init__(self) -> None:
        parse_listen(self.listen)  # a bad address fails now, not once the probes are attached
        if not self.epoll_mark and not self.sites:
            raise UsageError(
                "--no-epoll-mark needs the Python frames to tell a call on the event loop: "
                "it cannot go with --no-sites"
            )
        check_namespaces(self.namespaces, self.excluded_namespaces)
        if bool(self.tls_cert_file) != bool(self.tls_key_file):
            raise UsageError("--tls-cert-file and --tls-key-file go together")

    @classmethod
    def from_arguments(cls, args: argparse.Namespace) -> ObserverOptions:
        """The options a command's parsed arguments give; UsageError for a bad value."""
        given = vars(args)
        values = {f.name: given[f.name] for f in fields(cls) if f.name in given}
        values.update(parsed_targets(given))
        if "no_children" in given:
            values["follow_children"] = not given["no_children"]
        for name in NAMESPACE_FIELDS:
            if name in given:
                values[name] = frozenset(given[name])
        return cls(**values)

    @property
    def address(self) -> tuple[str, int]:
        """(host, port) to listen on."""
        return parse_listen(self.listen)

    @property
    def wants_pod_names(self) -> bool:
        """Whether pods need naming: for labels, or to choose processes by namespace."""
        named = self.namespaces or self.excluded_namespaces or self.no_hosts_namespaces
        return self.pod_labels or bool(named)


def parsed_targets(given: dict) -> dict:
    """The --target and --pid flags given, as ``regex_targets`` and ``pid_targets``."""
    values = {}
    try:
        if "target" in given:
            values["regex_targets"] = tuple(parse_regex_target(t) for t in given["target"])
        if "pid" in given:
            values["pid_targets"] = tuple(parse_pid_target(t) for t in given["pid"])
    except TargetError as err:
        raise UsageError(str(err)) from None
    return values
