"""The kernel headers bcc compiles the probes against: the host's (a headers package under
/lib/modules/RELEASE), else the running kernel's own (CONFIG_IKHEADERS:
/sys/kernel/kheaders.tar.xz, built in or in the ``kheaders`` module), unpacked into a private
folder that ``BCC_KERNEL_SOURCE`` then names.

Debian's bcc 0.26 can use the kernel's tarball by itself, but only through the shell: it runs
``modprobe kheaders`` and ``tar -xf`` (which needs ``xz``) at every compile, and on this
machine it did not use a copy already unpacked in ``$TMPDIR/kheaders-RELEASE``. A runtime
image has neither ``modprobe`` nor ``xz``; Python's ``tarfile`` reads xz itself, and doing it
here lets ``check`` and the log say which headers were used.
"""

from __future__ import annotations

import hashlib
import logging
import lzma
import os
import shutil
import subprocess
import tarfile
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

log = logging.getLogger(__name__)

MODULES = "/lib/modules"
KHEADERS = "/sys/kernel/kheaders.tar.xz"
KHEADERS_MODULE = "kheaders"
BCC_KERNEL_SOURCE = "BCC_KERNEL_SOURCE"
FOLDER_PREFIX = "thread-observer-kheaders-"


@dataclass(frozen=True)
class KernelHeaders:
    """The folder bcc compiles against (None: there is none) and what to say about it."""

    path: str | None
    detail: str

    @property
    def ok(self) -> bool:
        return self.path is not None


def has_kconfig(folder: str) -> bool:
    """Whether bcc takes ``folder`` as kernel headers: bcc's loader.cc checks for this one file
    (a leftover build folder without headers fails it)."""
    return os.path.isfile(os.path.join(folder, "include", "linux", "kconfig.h"))


def host_headers(release: str, modules: str = MODULES) -> str:
    """The folder bcc compiles against by itself, as loader.cc picks it: ``source`` when both
    ``build`` and ``source`` are folders (Debian splits its headers so), else ``build``."""
    kdir = os.path.join(modules, release)
    both = all(os.path.isdir(os.path.join(kdir, name)) for name in ("build", "source"))
    return os.path.join(kdir, "source" if both else "build")


def install_hint(release: str) -> str:
    return (
        f"apt-get install linux-headers-{release}, or link Debian's linux-headers-amd64 there "
        "(make setup does this), or run a kernel built with CONFIG_IKHEADERS (its own headers "
        f"in {KHEADERS}; modprobe {KHEADERS_MODULE} where it is a module, which needs "
        "CAP_SYS_MODULE)"
    )


def safe_members(archive: tarfile.TarFile) -> Iterator[tarfile.TarInfo]:
    """The archive's plain files and folders that stay inside the folder unpacked into: the
    kernel's tarball holds nothing else, and a link or device in one is not to be trusted.
    Its ``.`` is left out: the folder is this process's own, private until renamed."""
    for member in archive:
        name = os.path.normpath(member.name)
        outside = os.path.isabs(name) or name == ".." or name.startswith("../")
        inside = name != "." and not outside
        if inside and (member.isfile() or member.isdir()):
            yield tamed(member)


def tamed(member: tarfile.TarInfo) -> tarfile.TarInfo:
    """The member owned by this user, without set-id or group and world write bits: as root,
    tarfile (before its "data" filter) gives each file the owner and mode the archive names."""
    member.uid, member.gid, member.uname, member.gname = os.geteuid(), os.getegid(), "", ""
    member.mode &= 0o755
    return member


def new_folder(folder: str) -> str:
    """A fresh private (0700) folder beside ``folder``, named after it."""
    return tempfile.mkdtemp(prefix=os.path.basename(folder) + ".", dir=os.path.dirname(folder))


def unpacked(tarball: str, work: str) -> str:
    """Unpacks the tarball into ``work`` (removed again when that fails or holds no headers)."""
    started = time.monotonic()
    try:
        with tarfile.open(tarball, "r:xz") as archive:
            # The "data" filter where this Python has it (3.12, and backported to 3.8.17+,
            # 3.11.4+): it also refuses modes and owners that make no sense for headers.
            extra = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
            archive.extractall(work, members=safe_members(archive), **extra)
        if not has_kconfig(work):
            raise tarfile.ReadError("no include/linux/kconfig.h in it")
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    log.info("unpacked %s into %s in %.1f s", tarball, work, time.monotonic() - started)
    return work


def unpack(tarball: str, folder: str) -> None:
    """Unpacks into a fresh private folder first, then renames it: a folder of that name is
    always whole, and another observer unpacking at the same time loses nothing."""
    work = unpacked(tarball, new_folder(folder))
    try:
        os.rename(work, folder)
    except OSError:
        shutil.rmtree(work, ignore_errors=True)
        if not own_folder(folder):  # else another observer renamed its copy there first
            raise


def cached_copy(tarball: str, folder: str) -> str:
    """The folder holding the tarball's headers: ``folder`` once unpacked there (by this run or
    an earlier one). A folder of that name that cannot be trusted is replaced when this user's;
    another user's (made in a shared temporary folder first) is left alone for one of a new
    name, unpacked anew at each start."""
    if own_folder(folder):
        return folder
    if os.path.lexists(folder):
        if os.lstat(folder).st_uid != os.geteuid():
            log.warning("%s is another user's: the kernel's headers are unpacked elsewhere", folder)
            return unpacked(tarball, new_folder(folder))
        remove(folder)
    unpack(tarball, folder)
    return folder


def remove(path: str) -> None:
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path)
    else:
        os.unlink(path)


def own_folder(folder: str) -> bool:
    """A folder this user made and nobody else may write to, holding headers: a copy left by
    an earlier run (or by another observer, racing this one) that is safe to compile with."""
    try:
        info = os.lstat(folder)
    except OSError:
        return False
    private = info.st_uid == os.geteuid() and not info.st_mode & 0o022
    return os.path.isdir(folder) and not os.path.islink(folder) and private and has_kconfig(folder)


def digest(path: str) -> str:
    with open(path, "rb") as file:
        return hashlib.sha256(file.read()).hexdigest()[:16]


def load_module() -> str | None:
    """Loads the kheaders module (which needs CAP_SYS_MODULE); why not, or None."""
    modprobe = shutil.which("modprobe")
    if modprobe is None:
        return f"no modprobe here to load the {KHEADERS_MODULE} module"
    done = subprocess.run([modprobe, KHEADERS_MODULE], capture_output=True, text=True, timeout=60)
    if done.returncode != 0:
        return f"modprobe {KHEADERS_MODULE}: {done.stderr.strip() or done.returncode}"
    return None


def unload_module() -> None:
    # The module holds the whole tarball in kernel memory; bcc unloads it after unpacking too.
    modprobe = shutil.which("modprobe")
    if modprobe:
        subprocess.run([modprobe, "-r", KHEADERS_MODULE], capture_output=True, timeout=60)


def kernel_own_headers(
    release: str,
    kheaders: str = KHEADERS,
    cache: str | None = None,
    load: Callable[[], str | None] = load_module,
    unload: Callable[[], None] = unload_module,
) -> KernelHeaders:
    """The running kernel's own headers, unpacked into ``cache`` (the temporary folder when
    None) under a name holding the tarball's digest, so a new kernel build is unpacked anew.
    The module is loaded only where the tarball is missing, and unloaded again after."""
    present = os.path.exists(kheaders)
    problem = None if present else load()
    try:
        if problem is not None or not os.path.exists(kheaders):
            return KernelHeaders(None, f"no {kheaders} ({problem or 'the module made none'})")
        folder = os.path.join(cache or tempfile.gettempdir(), FOLDER_PREFIX + release)
        folder = cached_copy(kheaders, f"{folder}-{digest(kheaders)}")
    except (OSError, tarfile.TarError, lzma.LZMAError, EOFError) as err:
        return KernelHeaders(None, f"cannot unpack {kheaders}: {err}")
    finally:
        if not present and problem is None:
            unload()
    return KernelHeaders(folder, kheaders_detail(folder, kheaders))


def kheaders_detail(folder: str, kheaders: str = KHEADERS) -> str:
    return f"bcc uses the running kernel's own headers ({kheaders}), unpacked in {folder}"


def host_detail(folder: str, release: str) -> str:
    target = os.path.realpath(folder)
    if release in target:
        return f"bcc uses {target}"
    return (
        f"bcc uses {target} (for another kernel than {release}: fine for the tracepoint and "
        "uprobe programs used here)"
    )


def prepare_kernel_headers(
    release: str | None = None,
    modules: str = MODULES,
    environ: dict[str, str] | os._Environ = os.environ,
    kheaders: str = KHEADERS,
    **own_headers,
) -> KernelHeaders:
    """Finds the headers for bcc, unpacking the kernel's own where the host has none, and
    names them in ``BCC_KERNEL_SOURCE`` for every later compile of this process. Idempotent:
    a second call finds the folder the first one named. ``own_headers``: for
    :func:`kernel_own_headers`."""
    release = release or os.uname().release
    named = environ.get(BCC_KERNEL_SOURCE)
    if named and not os.path.basename(named).startswith(FOLDER_PREFIX):
        return named_headers(named)
    if named and own_folder(named):
        return KernelHeaders(named, kheaders_detail(named, kheaders))
    if named:  # an earlier run's copy, named in the environment it left to this process
        del environ[BCC_KERNEL_SOURCE]
    host = host_headers(release, modules)
    if has_kconfig(host):
        return KernelHeaders(host, host_detail(host, release))
    own = kernel_own_headers(release, kheaders, **own_headers)
    if not own.ok:
        build = os.path.join(modules, release, "build")
        return KernelHeaders(None, f"none at {build}, {own.detail}: {install_hint(release)}")
    environ[BCC_KERNEL_SOURCE] = own.path
    return own


def named_headers(folder: str) -> KernelHeaders:
    """Headers the user named: bcc takes them over any other (and, without kconfig.h, goes to
    the kernel's tarball by itself, which this check would not have looked at)."""
    if has_kconfig(folder):
        return KernelHeaders(folder, f"bcc uses {folder} ({BCC_KERNEL_SOURCE})")
    return KernelHeaders(
        None,
        f"{BCC_KERNEL_SOURCE} names {folder}, which holds no include/linux/kconfig.h: "
        "name a kernel's headers there, or unset it",
    )


_said: set[str] = set()


def say_headers(headers: KernelHeaders) -> None:
    """Logs which headers bcc compiles against, once a process: each set of probes (and
    ``check``, after ``run``'s own look) compiles anew."""
    if headers.detail not in _said:
        _said.add(headers.detail)
        log.info("kernel headers: %s", headers.detail)
