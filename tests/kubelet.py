"""A Kubernetes node as the kubelet lays it out, made here for real: pod cgroups (systemd
driver, containerd scopes) and the kubelet's pod log directories."""

from __future__ import annotations

import contextlib
import secrets
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")
# The cgroup v2 hierarchy (mounted at /sys/fs/cgroup itself on a pure v2 host, at .../unified on
# a hybrid one), and v1 hierarchies the kubelet's systemd driver creates pod cgroups in too.
# Controllers that hold limits (memory, cpu) are left alone.
V1_HIERARCHIES = ("pids", "systemd")


@dataclass(frozen=True)
class Pod:
    namespace: str
    name: str
    container: str
    uid: str
    container_id: str

    @classmethod
    def new(cls, namespace: str, name: str, container: str) -> Pod:
        return cls(namespace, name, container, str(uuid.uuid4()), secrets.token_hex(32))

    def cgroup_path(self) -> str:
        """kubepods.slice/.../cri-containerd-ID.scope, as the systemd cgroup driver names it."""
        uid = self.uid.replace("-", "_")
        return (
            f"kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{uid}.slice/"
            f"cri-containerd-{self.container_id}.scope"
        )


def kubelet_logs(root: Path, pods: list[Pod]) -> Path:
    """ROOT/pods/NAMESPACE_POD_UID/CONTAINER/0.log and the ROOT/containers/ links to them."""
    for pod in pods:
        log_dir = root / "pods" / f"{pod.namespace}_{pod.name}_{pod.uid}" / pod.container
        log_dir.mkdir(parents=True)
        (log_dir / "0.log").write_text("")
        link = (
            root / "containers" / f"{pod.name}_{pod.namespace}_{pod.container}-"
            f"{pod.container_id}.log"
        )
        link.parent.mkdir(exist_ok=True)
        link.symlink_to(log_dir / "0.log")
    return root


def writable_hierarchies() -> list[Path]:
    """The cgroup v2 hierarchy and the v1 ones above, where this host mounts them."""
    found = []
    for path in [CGROUP_ROOT / "unified", CGROUP_ROOT]:
        if (path / "cgroup.subtree_control").exists():
            found.append(path)
            break
    found += [
        CGROUP_ROOT / name for name in V1_HIERARCHIES if (CGROUP_ROOT / name / "tasks").exists()
    ]
    return found


@contextlib.contextmanager
def pod_cgroups(pods: list[Pod]) -> Iterator[dict[Pod, list[Path]]]:
    """Creates each pod's cgroup in every hierarchy; removes them (and their empty parents
    this made) afterwards, once the processes moved into them have exited."""
    made: list[Path] = []
    cgroups: dict[Pod, list[Path]] = {}
    try:
        for pod in pods:
            cgroups[pod] = []
            for hierarchy in writable_hierarchies():
                path = hierarchy
                for part in pod.cgroup_path().split("/"):
                    path = path / part
                    if not path.exists():
                        path.mkdir()
                        made.append(path)
                cgroups[pod].append(path)
        yield cgroups
    finally:
        for path in reversed(made):
            with contextlib.suppress(OSError):
                path.rmdir()


def move(pid: int, cgroups: list[Path]) -> None:
    for cgroup in cgroups:
        (cgroup / "cgroup.procs").write_text(str(pid))
