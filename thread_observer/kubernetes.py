"""Pod names for node mode: the namespace, pod and container a process runs in.

The target's cgroup gives its pod uid and container id (see ``procfs.parse_cgroup_identity``);
the kubelet's log directories turn them into names without asking the Kubernetes API:

    /var/log/pods/NAMESPACE_POD_UID/CONTAINER/0.log
    /var/log/containers/POD_NAMESPACE_CONTAINER-CONTAINERID.log   (symlinks into the above)

Every kubelet (containerd, CRI-O, cri-dockerd) writes both, whatever its cgroup driver, and the
names in them are Kubernetes object names (DNS labels and subdomains, which hold no `_`), so
splitting on `_` is unambiguous. The DaemonSet mounts /var/log/pods and /var/log/containers
read-only.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from thread_observer.errors import UsageError

log = logging.getLogger(__name__)

DEFAULT_LOG_DIR = "/var/log"
LABELS = ("namespace", "pod", "container")

# Kubernetes object names: a namespace and a container are DNS labels (63), a pod a DNS
# subdomain (253). Anything else in these directories is not the kubelet's and is ignored.
_NAME = r"[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?"
_UID = r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"
POD_DIR = re.compile(rf"^(?P<namespace>{_NAME})_(?P<pod>{_NAME})_(?P<uid>{_UID})$")
CONTAINER_LOG = re.compile(
    rf"^(?P<pod>{_NAME})_(?P<namespace>{_NAME})_(?P<container>{_NAME})-(?P<id>[0-9a-f]{{64}})\.log$"
)
# A directory that does not name a pod is read again at most this often.
RESCAN_SECONDS = 1.0
# A namespace's name as the API server accepts it (a DNS label)
NAMESPACE_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")


@dataclass(frozen=True)
class PodContainer:
    namespace: str = ""
    pod: str = ""
    container: str = ""

    def labels(self) -> list[str]:
        return [self.namespace, self.pod, self.container]


OUTSIDE = PodContainer()


# Flags that name Kubernetes namespaces (each repeatable): flag, destination, help.
NAMESPACE_FLAGS = (
    (
        "--namespace",
        "namespaces",
        "watch only matching processes in pods of this Kubernetes namespace "
        "(repeatable; processes outside any pod are then not watched)",
    ),
    (
        "--exclude-namespace",
        "excluded_namespaces",
        "do not watch processes in pods of this Kubernetes namespace (repeatable)",
    ),
    (
        "--no-hosts-namespace",
        "no_hosts_namespaces",
        "no getaddrinfo_host_calls_total series for processes in pods of this "
        "Kubernetes namespace (repeatable)",
    ),
)


def add_pod_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--pod-labels",
        action="store_true",
        help="node mode: add namespace, pod and container labels (empty outside Kubernetes) "
        "to every per-target series, named from the kubelet's log directories",
    )
    parser.add_argument(
        "--kubelet-log-dir",
        default=DEFAULT_LOG_DIR,
        metavar="DIR",
        help="where the kubelet writes pods/ and containers/ (default %(default)s)",
    )
    for flag, dest, help_text in NAMESPACE_FLAGS:
        parser.add_argument(
            flag,
            dest=dest,
            action="append",
            default=[],
            type=namespace_name,
            metavar="NS",
            help=help_text,
        )


def namespace_name(text: str) -> str:
    if not NAMESPACE_NAME.match(text):
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a Kubernetes namespace name (lower-case letters, digits and -, "
            "starting and ending with a letter or digit, at most 63)"
        )
    return text


def namespace_policy(options, pod_names: PodNames) -> NamespacePolicy | None:
    """The namespaces ``options`` (an ``ObserverOptions``, or parsed arguments, which name
    them alike) ask to watch, or None when they name none."""
    include = frozenset(options.namespaces)
    exclude = frozenset(options.excluded_namespaces)
    no_hosts = frozenset(options.no_hosts_namespaces)
    check_namespaces(include, exclude)
    if not (include or exclude or no_hosts):
        return None
    return NamespacePolicy(pod_names, include, exclude, no_hosts)


def check_namespaces(include: frozenset[str], exclude: frozenset[str]) -> None:
    both = sorted(include & exclude)
    if both:
        raise UsageError(f"--namespace and --exclude-namespace both name {', '.join(both)}")


def parse_pod_dir(name: str) -> tuple[str, str, str] | None:
    """(uid, namespace, pod) from a /var/log/pods entry."""
    found = POD_DIR.match(name)
    return (found["uid"], found["namespace"], found["pod"]) if found else None


def parse_container_log(name: str) -> tuple[str, PodContainer] | None:
    """(container id, names) from a /var/log/containers entry."""
    found = CONTAINER_LOG.match(name)
    if not found:
        return None
    return found["id"], PodContainer(found["namespace"], found["pod"], found["container"])


class PodNames:
    """Names pods and containers from the kubelet's log directories, caching what it found.

    A name once found is kept: a pod's uid and a container's id are never reused. An unknown
    id makes the directories be read again (at most once a second), since the kubelet links
    a container's log just after starting it.
    """

    def __init__(self, log_dir: str | Path = DEFAULT_LOG_DIR, clock=time.monotonic) -> None:
        self.pods_dir = Path(log_dir) / "pods"
        self.containers_dir = Path(log_dir) / "containers"
        self._clock = clock
        self._pods: dict[str, tuple[str, str]] = {}
        self._containers: dict[str, PodContainer] = {}
        self._scanned_at: float | None = None
        self._reported: set[tuple[str, str]] = set()
        # Scrapes may run at once, in several threads.
        self._lock = threading.Lock()

    def name(self, container_id: str, pod_uid: str) -> PodContainer:
        """The names of a process's container; OUTSIDE when its cgroup names no pod, and
        empty names (a container name, or all three) when the directories do not give them."""
        if not pod_uid and not container_id:
            return OUTSIDE
        with self._lock:
            return self._name(container_id, pod_uid)

    def namespace(self, container_id: str, pod_uid: str) -> str:
        """The namespace of a process's pod, "" when it is in none or the directories do not
        name it. Whether to watch a process is decided once, as it is found: a pod not known
        yet has the directories read at once, not at most once a second as for names."""
        if not pod_uid:
            return ""  # no pod: outside Kubernetes
        with self._lock:
            if self._lookup(container_id, pod_uid) is None:
                self._scanned_at = None
            return self._name(container_id, pod_uid).namespace

    def _name(self, container_id: str, pod_uid: str) -> PodContainer:
        found = self._lookup(container_id, pod_uid)
        if found is None:
            self._rescan()
            found = self._lookup(container_id, pod_uid)
        if found is None and not pod_uid:
            return OUTSIDE  # a container outside Kubernetes (Docker, Podman): no pod to name
        if found is None or not found.container:
            self._report_unnamed(container_id, pod_uid, found)
        return found or OUTSIDE

    def _lookup(self, container_id: str, pod_uid: str) -> PodContainer | None:
        if container_id in self._containers:
            return self._containers[container_id]
        if pod_uid in self._pods:
            # The pod is known but not (yet) its container's log link.
            namespace, pod = self._pods[pod_uid]
            return PodContainer(namespace, pod, "")
        return None

    def _rescan(self) -> None:
        now = self._clock()
        if self._scanned_at is not None and now - self._scanned_at < RESCAN_SECONDS:
            return
        self._scanned_at = now
        for name in _list(self.pods_dir):
            parsed = parse_pod_dir(name)
            if parsed:
                uid, namespace, pod = parsed
                self._pods[uid] = (namespace, pod)
        for name in _list(self.containers_dir):
            parsed = parse_container_log(name)
            if parsed:
                self._containers[parsed[0]] = parsed[1]

    def _report_unnamed(self, container_id: str, pod_uid: str, found: PodContainer | None) -> None:
        key = (container_id, pod_uid)
        if key in self._reported:
            return
        self._reported.add(key)
        missing = "container" if found else "pod"
        log.warning(
            "no %s name for container id %s, pod uid %s in %s and %s: its series carry "
            "empty labels (are the kubelet's log directories mounted?)",
            missing,
            container_id[:12] or "-",
            pod_uid or "-",
            self.pods_dir,
            self.containers_dir,
        )

    def forget(self, live: set[tuple[str, str]]) -> None:
        """Drops what is known of containers and pods no process is in any more."""
        ids = {container_id for container_id, _ in live}
        uids = {pod_uid for _, pod_uid in live}
        with self._lock:
            self._containers = {k: v for k, v in self._containers.items() if k in ids}
            self._pods = {k: v for k, v in self._pods.items() if k in uids}
            self._reported &= live


@dataclass(frozen=True)
class NamespacePolicy:
    """Which processes a node agent watches, and shows host names of, by their pod's
    namespace. A process outside any pod, or in a pod the kubelet's directories do not name,
    has no namespace: watched unless only some namespaces are."""

    pod_names: PodNames
    include: frozenset[str] = frozenset()
    exclude: frozenset[str] = frozenset()
    no_hosts: frozenset[str] = frozenset()

    def watches(self, container_id: str, pod_uid: str) -> bool:
        namespace = self._namespace(container_id, pod_uid)
        if self.include and namespace not in self.include:
            return False
        return namespace not in self.exclude

    def shows_hosts(self, container_id: str, pod_uid: str) -> bool:
        return self._namespace(container_id, pod_uid) not in self.no_hosts

    def _namespace(self, container_id: str, pod_uid: str) -> str:
        return self.pod_names.namespace(container_id, pod_uid)


def _list(directory: Path) -> list[str]:
    try:
        return os.listdir(directory)
    except OSError as err:
        log.debug("cannot list %s: %s", directory, err)
        return []
