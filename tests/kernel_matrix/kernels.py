"""Which kernels the matrix boots, fetched from Debian's archive and unpacked into a cache."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

CACHE = Path(os.environ.get("THREAD_OBSERVER_KERNEL_CACHE", "/var/cache/thread-observer/kernels"))
MIRROR = "http://deb.debian.org/debian"
KEYRING = "/usr/share/keyrings/debian-archive-keyring.gpg"


@dataclass(frozen=True)
class Kernel:
    """A Debian suite's kernel: ``linux-image-amd64`` of that suite, whatever version the
    archive has today (the cache is keyed by that version)."""

    name: str  # a short name for test ids and the README table
    suite: str
    distribution: str  # what runs it in production, for the README table
    # Whether `make test` runs the CI-size kernel suite there (else check alone), and the tests
    # of it left out there, each a known failure said in README (*Kernels*).
    ci_suite: bool = True
    ci_known_failures: tuple[str, ...] = ()


KERNELS = (
    Kernel("5.10", "bullseye", "Debian 11 (Amazon Linux 2 runs 5.10 too)"),
    Kernel("6.1", "bookworm", "Debian 12"),
    Kernel("6.12", "trixie", "Debian 13"),
    # PREEMPT(lazy): a uprobe program can be preempted there unless it turns preemption off
    # (probes/preemption.h); tests/test_preemption.py is the suite's test of that. In a PID
    # namespace with children watched at their fork, one of 30 worker threads' creations goes
    # uncounted there (README, Kernels): open.
    Kernel(
        "sid",
        "sid",
        "Debian unstable, the newest Debian ships",
        ci_known_failures=(
            "tests/test_pid_namespace.py::test_forked_workers_count_in_their_parents_target_"
            "inside_a_namespace[at-fork]",
        ),
    ),
)


def by_name(names: list[str]) -> list[Kernel]:
    known = {kernel.name: kernel for kernel in KERNELS}
    unknown = [name for name in names if name not in known]
    if unknown:
        raise SystemExit(f"unknown kernels {unknown}: choose from {sorted(known)}")
    return [known[name] for name in names]


class Archive:
    """apt-get on Debian's archive with lists of its own, so that the machine's sources and
    its package state are never touched."""

    def __init__(self, root: Path = CACHE / "apt") -> None:
        self.root = root
        self.options = [
            "-o", "Dir::Etc::sourcelist=/dev/null",
            "-o", f"Dir::Etc::sourceparts={root / 'sources'}",
            "-o", f"Dir::State::Lists={root / 'lists'}",
            "-o", f"Dir::Cache={root / 'cache'}",
            "-o", "Dir::State::status=/dev/null",
            "-o", "APT::Sandbox::User=root",
            "-q",
        ]  # fmt: skip

    def update(self) -> None:
        for folder in ("sources", "lists/partial", "cache/archives/partial"):
            (self.root / folder).mkdir(parents=True, exist_ok=True)
        suites = " ".join(sorted({kernel.suite for kernel in KERNELS}))
        (self.root / "sources" / "matrix.sources").write_text(
            f"Types: deb\nURIs: {MIRROR}\nSuites: {suites}\nComponents: main\n"
            f"Signed-By: {KEYRING}\n"
        )
        subprocess.run(["apt-get", *self.options, "update"], check=True, capture_output=True)

    def show(self, package: str, suite: str) -> dict[str, str]:
        """The fields of ``package`` as ``suite`` has it."""
        output = subprocess.run(
            ["apt-cache", *self.options, "show", f"{package}/{suite}"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
        fields: dict[str, str] = {}
        for line in output.split("\n\n")[0].splitlines():
            if ": " in line and not line.startswith(" "):
                key, value = line.split(": ", 1)
                fields[key] = value
        return fields

    def download(self, packages: list[str], folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            ["apt-get", *self.options, "download", *packages],
            cwd=folder,
            check=True,
            capture_output=True,
        )

    def download_closure(self, packages: list[str], suite: str, folder: Path) -> None:
        """The packages and everything they depend on (not what they recommend), as ``suite``
        has them: what a root of that suite needs to run them."""
        (folder / "partial").mkdir(parents=True, exist_ok=True)
        subprocess.run(
            [
                "apt-get", *self.options,
                "-o", f"APT::Default-Release={suite}",
                "-o", f"Dir::Cache::archives={folder}",
                "-o", "Debug::NoLocking=1",  # no package of this machine is touched
                "install", "--download-only", "--no-install-recommends", "-y", *packages,
            ],
            check=True,
            capture_output=True,
        )  # fmt: skip
        shutil.rmtree(folder / "partial")


# What a kernel's packages depend on that the guest needs: the image (on sid, its binary and
# modules packages) and the headers (arch and common). Not kbuild, compilers or linux-base.
KERNEL_PACKAGES = ("linux-image", "linux-binary", "linux-modules", "linux-headers")


def linux_dependencies(depends: str) -> list[str]:
    """The versioned ``linux-*`` packages a metapackage names: ``linux-image-6.1.0-50-amd64
    (= 6.1.176-1)`` -> ``linux-image-6.1.0-50-amd64=6.1.176-1``."""
    found = []
    for alternative in depends.split(","):
        match = re.match(r"\s*(linux-[^\s|(]+)\s*\(= ([^)]+)\)", alternative)
        if match:
            found.append(f"{match[1]}={match[2]}")
    return found


@dataclass(frozen=True)
class Unpacked:
    """One kernel unpacked: its release (``uname -r``), vmlinuz, modules and headers."""

    kernel: Kernel
    version: str  # the Debian package version
    root: Path  # the packages unpacked here (boot/, usr/lib/modules/, usr/src/)

    @property
    def release(self) -> str:
        return next(self.modules_root.iterdir()).name

    @property
    def modules_root(self) -> Path:
        for candidate in ("usr/lib/modules", "lib/modules"):
            if (self.root / candidate).is_dir():
                return self.root / candidate
        raise FileNotFoundError(f"no modules in {self.root}")

    @property
    def vmlinuz(self) -> Path:
        found = sorted(self.root.glob("boot/vmlinuz-*")) + sorted(self.root.rglob("vmlinuz"))
        if not found:
            raise FileNotFoundError(f"no vmlinuz in {self.root}")
        return found[0]


def fetch(kernel: Kernel, archive: Archive) -> Unpacked:
    """The kernel image, its modules and its headers, unpacked; downloaded only when the
    suite's version is not in the cache yet."""
    image = archive.show("linux-image-amd64", kernel.suite)
    headers = archive.show("linux-headers-amd64", kernel.suite)
    version = image["Version"]
    root = CACHE / kernel.suite / version / "root"
    if (root.parent / "complete").exists():
        return Unpacked(kernel, version, root)
    wanted = linux_dependencies(image["Depends"]) + linux_dependencies(headers["Depends"])
    # The image package may be a metapackage of its own (sid: binary + modules), and the
    # headers' arch package names its common one: one more level of each.
    for package in list(wanted):
        fields = archive.show(package.partition("=")[0], kernel.suite)
        wanted += [
            dependency
            for dependency in linux_dependencies(fields.get("Depends", ""))
            if dependency.startswith(KERNEL_PACKAGES) and dependency not in wanted
        ]
    debs = root.parent / "debs"
    shutil.rmtree(root.parent, ignore_errors=True)
    archive.download(wanted, debs)
    root.mkdir(parents=True)
    for deb in sorted(debs.glob("*.deb")):
        subprocess.run(["dpkg-deb", "-x", str(deb), str(root)], check=True)
    shutil.rmtree(debs)
    (root.parent / "complete").write_text(" ".join(wanted) + "\n")
    return Unpacked(kernel, version, root)
