"""Real container images for the tests, made with podman and no registry: the base image that
deploy/Dockerfile names (``debian:12-slim``) is a Debian 12 root made with mmdebstrap from
Debian's archive and imported under that name, then the Dockerfile is built on it as a registry
build would be, and a service image (the same base with Debian's python3) runs the workloads.

Everything lives in a podman store of its own (``--root``/``--runroot`` below the cache), so the
tests never see or shadow the machine's own images and containers; images stay there between
runs, each tagged by a hash of what it is made from:

    python -m tests.container_images    # builds (or finds) the images and prints them
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import resource
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
CACHE = Path(
    os.environ.get("THREAD_OBSERVER_CONTAINER_CACHE", "/var/cache/thread-observer/containers")
)
RUN_ROOT = Path("/run/thread-observer-containers")
MIRROR = "http://deb.debian.org/debian"
DOCKERFILE = REPO / "deploy" / "Dockerfile"
# What deploy/Dockerfile's FROM lines name, as a registry would resolve it.
BASE = "docker.io/library/debian:12-slim"
IMAGE = "localhost/thread-observer"
SERVICE = "localhost/thread-observer-service"
# What the Dockerfile's build reads (its COPY sources): the image's tag hashes them.
SOURCES = ("pyproject.toml", "README.md", "LICENSE", "thread_observer", "probes", "workloads")
# Debian's slim images (debian:12-slim) leave these out of every package installed, in the image
# and in images built on it (dpkg's path-exclude), and keep no downloaded packages.
SLIM_DPKG = """\
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/groff/*
path-exclude /usr/share/info/*
path-exclude /usr/share/lintian/*
path-exclude /usr/share/linda/*
path-exclude /usr/share/locale/*
path-include /usr/share/locale/locale.alias
"""
CLEAN = "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb "
CLEAN += "/var/cache/apt/*.bin || true"
SLIM_APT = f"""\
DPkg::Post-Invoke {{ "{CLEAN}"; }};
APT::Update::Post-Invoke {{ "{CLEAN}"; }};
Dir::Cache::pkgcache "";
Dir::Cache::srcpkgcache "";
Acquire::Languages "none";
"""
# mmdebstrap's minbase of bookworm carries usrmerge and the full perl it needs: debian:12-slim
# has usr-is-merged instead (the /usr is merged either way).
NOT_IN_SLIM = (
    "usrmerge libfile-find-rule-perl libnumber-compare-perl libtext-glob-perl perl "
    "perl-modules-5.36 libperl5.36 libgdbm-compat4"
)
# A service resolves from /etc/hosts only: a lookup never leaves the machine.
SERVICE_CONTAINERFILE = """\
FROM {base}
RUN apt-get update -q \\
 && apt-get install -y -q --no-install-recommends python3 \\
 && rm -rf /var/lib/apt/lists/* \\
 && echo 'hosts: files' > /etc/nsswitch.conf
WORKDIR /srv
"""


class EngineUnavailable(Exception):
    """No container engine can build or run containers here: the message says why."""


@dataclass(frozen=True)
class Built:
    tag: str
    id: str
    digest: str
    size: int  # bytes, as `podman image inspect` reports it
    seconds: float  # how long making it took here (0 when it was found in the store)


class Podman:
    """Rootful podman on the tests' own store, with the OCI runtime that works on this machine
    (crun refuses cgroup v1 hierarchies with controllers on the unified one, runc does not)
    and resource limits no higher than this process's (the engine's defaults, 1048576 open
    files, need CAP_SYS_RESOURCE to raise them)."""

    def __init__(self, runtime: str) -> None:
        self.runtime = runtime
        self.prefix = [
            "podman",
            "--root", str(CACHE / "storage"),
            "--runroot", str(RUN_ROOT / "storage"),
            "--tmpdir", str(RUN_ROOT / "libpod"),
            "--runtime", runtime,
            "--cgroup-manager", "cgroupfs",
            "--events-backend", "file",
        ]  # fmt: skip

    def command(self, *args: str) -> list[str]:
        return [*self.prefix, *args]

    def __call__(self, *args: str, timeout: float = 120, check: bool = True):
        result = subprocess.run(
            self.command(*args), capture_output=True, text=True, timeout=timeout
        )
        if check and result.returncode != 0:
            raise AssertionError(
                f"podman {' '.join(args[:3])} exited {result.returncode}:\n"
                f"{result.stdout[-3000:]}{result.stderr[-3000:]}"
            )
        return result

    @staticmethod
    def limits() -> list[str]:
        files = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        processes = min(resource.getrlimit(resource.RLIMIT_NPROC)[0], 16384)
        return ["--ulimit", f"nofile={files}:{files}", "--ulimit", f"nproc={processes}:{processes}"]

    def exists(self, tag: str) -> bool:
        return self("image", "exists", tag, check=False).returncode == 0

    def inspect(self, tag: str, seconds: float = 0.0) -> Built:
        (image,) = json.loads(self("image", "inspect", tag).stdout)
        return Built(tag, image["Id"], image.get("Digest", ""), int(image["Size"]), seconds)

    def config(self, tag: str) -> dict:
        (image,) = json.loads(self("image", "inspect", tag).stdout)
        return image["Config"]


def digest(paths: list[Path], *extra: str) -> str:
    """A hash of these files' (and folders' files') paths and contents, caches left out."""
    h = hashlib.sha256()
    for text in extra:
        h.update(text.encode() + b"\0")
    for path in paths:
        files = sorted(path.rglob("*")) if path.is_dir() else [path]
        for file in files:
            if file.is_file() and "__pycache__" not in file.parts and file.suffix != ".pyc":
                h.update(str(file.relative_to(REPO)).encode() + b"\0")
                h.update(file.read_bytes() + b"\0")
    return h.hexdigest()[:16]


def base_image(podman: Podman) -> Built:
    """Debian 12 made with mmdebstrap (minbase, slim's exclusions), imported as the base the
    Dockerfile names. Remade each ISO week, for Debian's security updates."""
    year, week, _ = datetime.date.today().isocalendar()
    options = [
        "--variant=minbase",
        "--include=usr-is-merged",
        *(f"--dpkgopt={line.replace(' ', '=', 1)}" for line in SLIM_DPKG.splitlines()),
        f"--customize-hook=printf '%s' '{SLIM_DPKG}' > \"$1/etc/dpkg/dpkg.cfg.d/slim\"",
        f"--customize-hook=printf '%s' '{SLIM_APT}' > \"$1/etc/apt/apt.conf.d/slim\"",
        f'--customize-hook=chroot "$1" dpkg --purge {NOT_IN_SLIM}',
        '--customize-hook=rm -rf "$1/var/cache/apt/"*.bin "$1/var/lib/apt/lists/"*',
    ]
    tag = f"localhost/debian-mmdebstrap:12-{year}w{week:02d}-{digest([], *options)[:8]}"
    if not podman.exists(tag):
        if shutil.which("mmdebstrap") is None:
            raise EngineUnavailable("mmdebstrap is not installed (apt-get install mmdebstrap)")
        started = time.monotonic()
        with tempfile.TemporaryDirectory(prefix="thread-observer-base-", dir="/var/tmp") as d:
            tarball = Path(d) / "root.tar"
            result = subprocess.run(
                ["mmdebstrap", *options, "bookworm", str(tarball), MIRROR],
                capture_output=True,
                text=True,
                timeout=900,
            )
            if result.returncode != 0:
                raise AssertionError(f"mmdebstrap failed:\n{result.stderr[-3000:]}")
            podman("import", "--change", 'CMD ["bash"]', str(tarball), tag, timeout=300)
        seconds = time.monotonic() - started
        keep_only(podman, tag)
    else:
        seconds = 0.0
    podman("tag", tag, BASE)
    return podman.inspect(tag, seconds)


def pip_trust() -> list[str]:
    """Where PyPI is reached through a proxy that signs with its own CA (the host's pip is told
    of it by PIP_CERT), the build's pip is told the same by a pip.conf mounted in each RUN step.
    Nothing of it is in the image but the empty files buildah leaves as mount points."""
    cert = os.environ.get("PIP_CERT")
    if not cert or not Path(cert).is_file():
        return []
    CACHE.mkdir(parents=True, exist_ok=True)
    conf = CACHE / "pip-build.conf"
    conf.write_text("[global]\ncert = /etc/pip-build-ca.crt\n")
    return ["-v", f"{cert}:/etc/pip-build-ca.crt:ro", "-v", f"{conf}:/etc/pip.conf:ro"]


def keep_only(podman: Podman, tag: str) -> None:
    """Removes the other tags of this image's repository and the layers only they used: each
    change of the sources makes a new image, and the old ones would fill the disk."""
    repository = tag.rsplit(":", 1)[0]
    listed = podman("images", "--format", "{{.Repository}}:{{.Tag}}", repository).stdout.split()
    stale = sorted({t for t in listed if t.startswith(f"{repository}:") and t != tag})
    if stale:
        podman("rmi", "--force", *stale, check=False)
        podman("image", "prune", "--force", check=False)


def build(podman: Podman, tag: str, containerfile: Path, context: Path) -> Built:
    started = time.monotonic()
    with tempfile.NamedTemporaryFile("r", prefix="thread-observer-iid-") as iid:
        podman(
            "build",
            "--pull=never",
            "--network=host",  # apt and pip reach Debian's archive and PyPI
            *podman.limits(),
            *pip_trust(),
            "--iidfile", iid.name,
            "-f", str(containerfile),
            "-t", tag,
            str(context),
            timeout=1800,
        )  # fmt: skip
    seconds = time.monotonic() - started
    keep_only(podman, tag)
    return podman.inspect(tag, seconds)


def observer_image(podman: Podman) -> Built:
    """deploy/Dockerfile built on the base, tagged by a hash of the base image, the Dockerfile,
    .dockerignore, deploy/setup.sh and the package sources: built once per change."""
    base = base_image(podman)
    key = digest(
        [DOCKERFILE, REPO / ".dockerignore", REPO / "deploy" / "setup.sh"]
        + [REPO / s for s in SOURCES],
        base.id,
    )
    tag = f"{IMAGE}:test-{key}"
    if podman.exists(tag):
        return podman.inspect(tag)
    return build(podman, tag, DOCKERFILE, REPO)


def service_image(podman: Podman) -> Built:
    """The base with Debian's python3 and nothing else: a containerized Python service with
    its own root, libc and interpreter. The workloads are mounted into it, read-only."""
    base = base_image(podman)
    text = SERVICE_CONTAINERFILE.format(base=base.tag)
    tag = f"{SERVICE}:test-{digest([], text)}"
    if podman.exists(tag):
        return podman.inspect(tag)
    with tempfile.TemporaryDirectory(prefix="thread-observer-service-") as d:
        (Path(d) / "Containerfile").write_text(text)
        return build(podman, tag, Path(d) / "Containerfile", Path(d))


def seccomp_profile(default: Path = Path("/usr/share/containers/seccomp.json")) -> Path:
    """The engine's default seccomp profile, with bpf and perf_event_open allowed to a
    container holding CAP_BPF and CAP_PERFMON (as recent Docker's default profile allows
    them), not only to one holding CAP_SYS_ADMIN (podman 4.3's): the observer runs with the
    three capabilities it needs and no others."""
    profile = json.loads(default.read_text())
    wanted = {"bpf": "CAP_BPF", "perf_event_open": "CAP_PERFMON"}
    for rule in profile["syscalls"]:
        if rule.get("action") == "SCMP_ACT_ERRNO" and rule.get("excludes", {}).get("caps"):
            rule["names"] = [name for name in rule["names"] if name not in wanted]
    for name, cap in wanted.items():
        profile["syscalls"].append(
            {"names": [name], "action": "SCMP_ACT_ALLOW", "includes": {"caps": [cap]}}
        )
    CACHE.mkdir(parents=True, exist_ok=True)
    path = CACHE / "seccomp-bpf-perfmon.json"
    path.write_text(json.dumps(profile, indent=1))
    return path


def engine() -> Podman:
    """Podman with the first OCI runtime that starts a container here; EngineUnavailable with
    each runtime's error when none does."""
    if shutil.which("podman") is None:
        raise EngineUnavailable(
            "podman is not installed (deploy/setup.sh --extras test installs podman, runc and "
            "mmdebstrap)"
        )
    errors = []
    for runtime in ("crun", "runc"):
        if shutil.which(runtime) is None:
            errors.append(f"{runtime}: not installed")
            continue
        podman = Podman(runtime)
        base = base_image(podman)
        probe = podman(
            "run", "--rm", "--network=none", *podman.limits(), base.tag, "true", check=False
        )
        if probe.returncode == 0:
            return podman
        errors.append(f"{runtime}: {probe.stderr.strip().splitlines()[-1:]}")
    raise EngineUnavailable("podman cannot start a container here: " + "; ".join(errors))


if __name__ == "__main__":
    found = engine()
    for made in (base_image(found), observer_image(found), service_image(found)):
        print(
            f"{made.tag}  id {made.id[:19]}  digest {made.digest}  "
            f"{made.size / 1e6:.0f} MB  {made.seconds:.0f}s"
        )
