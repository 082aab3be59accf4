"""A CPython this machine has no package of (Debian sid's python3.14), run in a root of its own
as a container runs its interpreter: its own libc and libraries, unpacked from Debian's archive
into a cache, entered with chroot. The observer then finds the interpreter and the libc through
/proc/PID/root, as it does a container's.

    python -m tests.debian_python 3.14    # unpacks it (cached) and prints the command
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from tests.kernel_matrix.kernels import CACHE, Archive

PYTHONS_CACHE = CACHE.parent / "pythons"
REPO = Path(__file__).resolve().parent.parent
# The root resolves host names from its own /etc/hosts only: a lookup never leaves the machine.
NSSWITCH = "hosts: files\n"
HOSTS = "127.0.0.1 localhost\n::1 localhost ip6-localhost\n"
# sh -c script of the command: in a mount namespace of its own, a private /tmp, this checkout
# at its own path inside the root (so code objects name the files the tests expect; bound after
# the /tmp, which would hide a checkout under /tmp), /proc and /dev, then the interpreter,
# chrooted. $0 is the root, $1 the checkout, $2 the interpreter.
ENTER = (
    "root=$0 repo=$1 python=$2 && shift 2"
    ' && mount -t tmpfs tmpfs "$root/tmp" && mkdir -p "$root$repo"'
    ' && mount --bind "$repo" "$root$repo" && mount -t proc proc "$root/proc"'
    ' && mount --rbind /dev "$root/dev"'
    ' && PYTHONPATH=$repo exec chroot "$root" "$python" "$@"'
)


@dataclass(frozen=True)
class DebianPython:
    version: str  # "3.14"
    suite: str
    package_version: str  # of python3.X in that suite
    root: Path

    @property
    def interpreter(self) -> str:
        return f"/usr/bin/python{self.version}"

    @property
    def command(self) -> Path:
        """An executable that runs this interpreter in its root with the arguments it is given
        (the process keeps its pid through each exec: the tests watch it by pid)."""
        return self.root.parent / f"python{self.version}"


def fetch(version: str = "3.14", suite: str = "sid", archive: Archive | None = None):
    """The interpreter unpacked with what it depends on (cached by the package's version), and
    the command that runs it."""
    archive = archive or Archive()
    archive.update()
    package = f"python{version}"
    package_version = archive.show(package, suite)["Version"]
    root = PYTHONS_CACHE / suite / f"{package}_{package_version}" / "root"
    python = DebianPython(version, suite, package_version, root)
    if not (root.parent / "complete").exists():
        unpack(archive, package, suite, root)
    write_command(python)
    return python


def unpack(archive: Archive, package: str, suite: str, root: Path) -> None:
    shutil.rmtree(root.parent, ignore_errors=True)
    debs = root.parent / "debs"
    archive.download_closure([package], suite, debs)
    root.mkdir(parents=True)
    for deb in sorted(debs.glob("*.deb")):
        subprocess.run(["dpkg-deb", "-x", str(deb), str(root)], check=True)
    shutil.rmtree(debs)
    # Debian's merged /usr: the top-level links come from packages not unpacked here.
    for top in ("bin", "sbin", "lib", "lib64"):
        if not (root / top).exists():
            (root / top).symlink_to(f"usr/{top}")
    for folder in ("proc", "dev", "tmp"):
        (root / folder).mkdir(exist_ok=True)
    (root / "etc" / "nsswitch.conf").write_text(NSSWITCH)
    (root / "etc" / "hosts").write_text(HOSTS)
    (root.parent / "complete").write_text(f"{package} from {suite}\n")


def write_command(python: DebianPython) -> None:
    (python.root / str(REPO).lstrip("/")).mkdir(parents=True, exist_ok=True)
    script = (
        "#!/bin/sh\n"
        f"# Debian {python.suite}'s python{python.version} {python.package_version}, in its root.\n"
        f"exec unshare --mount sh -c '{ENTER}' '{python.root}' '{REPO}' "
        f"'{python.interpreter}' \"$@\"\n"
    )
    python.command.write_text(script)
    python.command.chmod(0o755)


if __name__ == "__main__":
    found = fetch(*sys.argv[1:2])
    print(found.command)
    os.execv(found.command, [str(found.command), "-c", "import sys; print(sys.version)"])
