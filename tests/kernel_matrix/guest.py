"""Booting one kernel under qemu with the host's root filesystem, and running a command in it."""

from __future__ import annotations

import lzma
import os
import re
import shlex
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from tests.kernel_matrix.kernels import KEYRING, Unpacked

BUSYBOX = "/bin/busybox"  # Debian's busybox-static: one file, no libraries
# What the initramfs loads to mount the host's root: virtio-9p and what it needs. Modules a
# kernel has built in are skipped (modules.builtin).
ROOT_MODULES = ("virtio_pci", "9pnet_virtio", "9p")
# Runs in the initramfs: load the 9p modules, mount the host's root read-only, and hand over
# to the guest script of the checkout (TO_GUEST, from the kernel command line).
INIT = r"""#!/bin/busybox sh
/bin/busybox mkdir -p /proc /dev /newroot
/bin/busybox mount -t proc proc /proc
/bin/busybox mount -t devtmpfs devtmpfs /dev
for module in $(/bin/busybox cat /modules.order); do
    /bin/busybox insmod "/modules/$module" || echo "init: insmod $module failed"
done
/bin/busybox mount -t 9p -o trans=virtio,version=9p2000.L,ro,cache=loose,msize=512000 \
    hostroot /newroot || { echo "init: mounting the host's root failed"; /bin/busybox poweroff -f; }
/bin/busybox umount /proc
/bin/busybox umount /dev
exec /bin/busybox switch_root /newroot /bin/sh "$TO_GUEST"
"""
GUEST_SCRIPT = Path(__file__).resolve().with_name("guest.sh")
CHECKOUT = GUEST_SCRIPT.parent.parent.parent
# 9p shares as root sees them: owners and modes passed through, inodes of the host's several
# filesystems kept apart.
SHARE = "security_model=none,multidevs=remap"


@dataclass(frozen=True)
class Accelerator:
    """How qemu runs the guest: KVM where a nested guest really starts, else TCG (emulation,
    several times slower: ``time_scale`` stretches the suite's waits)."""

    name: str
    options: tuple[str, ...]
    time_scale: float


TCG = Accelerator("tcg", ("-accel", "tcg,thread=multi", "-cpu", "max"), 8.0)
# -arch-capabilities: with it, qemu aborts on MSR 0x10a in a nested guest.
KVM = Accelerator("kvm", ("-accel", "kvm", "-cpu", "host,-arch-capabilities"), 2.0)
# A guest that runs only ``true`` is back well within this under KVM (TCG: ~15 s).
KVM_PROBE_SECONDS = 40


def choose_accelerator(unpacked: Unpacked, scratch: Path) -> Accelerator:
    """KVM where /dev/kvm opens and a guest under it really boots and powers off (on some
    nested hosts KVM_CREATE_VM works and the guest then hangs), else TCG."""
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return TCG
    probe = boot(unpacked, "true", scratch, KVM_PROBE_SECONDS, KVM)
    return KVM if probe.exit_status == 0 else TCG


def qemu_skip_reason() -> str | None:
    """Why no kernel can be booted here, or None."""
    if shutil.which("qemu-system-x86_64") is None:
        return "qemu is not installed (apt-get install qemu-system-x86)"
    if not os.path.exists(BUSYBOX):
        return "busybox-static is not installed (apt-get install busybox-static)"
    if shutil.which("apt-get") is None or not os.path.exists(KEYRING):
        return "Debian's apt and archive keyring are needed to fetch kernels"
    if os.geteuid() != 0:
        return "the kernel matrix needs root (it exports / to the guest)"
    return None


def modinfo_depends(data: bytes) -> list[str]:
    """The ``depends=`` of a module's .modinfo section: the modules it needs loaded first."""
    match = re.search(rb"(?:^|\0)depends=([^\0]*)\0", data)
    if match is None or not match[1]:
        return []
    return match[1].decode().split(",")


def module_bytes(path: Path) -> bytes:
    data = path.read_bytes()
    return lzma.decompress(data) if path.suffix == ".xz" else data


def module_files(modules_dir: Path) -> dict[str, Path]:
    """Each module's file, by its name as the kernel knows it (``-`` and ``_`` alike)."""
    files = {}
    for path in modules_dir.rglob("*.ko*"):
        name = path.name.split(".ko")[0].replace("-", "_")
        files[name] = path
    return files


def load_order(unpacked: Unpacked, wanted: tuple[str, ...]) -> list[tuple[str, bytes]]:
    """The modules to insmod, dependencies first, with their (decompressed) contents."""
    modules_dir = unpacked.modules_root / unpacked.release
    files = module_files(modules_dir / "kernel")
    order: list[tuple[str, bytes]] = []
    seen: set[str] = set()

    def visit(name: str) -> None:
        name = name.replace("-", "_")
        if name in seen:
            return
        seen.add(name)
        if name not in files:
            return  # built in
        data = module_bytes(files[name])
        for dependency in modinfo_depends(data):
            visit(dependency)
        order.append((name + ".ko", data))

    for name in wanted:
        visit(name)
    return order


def cpio_entry(name: str, mode: int, data: bytes = b"") -> bytes:
    """One file of a newc cpio archive (the initramfs format)."""
    encoded = name.encode() + b"\0"
    fields = (0, mode, 0, 0, 1, 0, len(data), 0, 0, 0, 0, len(encoded), 0)
    header = b"070701" + b"".join(b"%08X" % field for field in fields)
    entry = header + encoded
    entry += b"\0" * (-len(entry) % 4)
    return entry + data + b"\0" * (-len(data) % 4)


def initramfs(unpacked: Unpacked) -> Path:
    """The kernel's initramfs: busybox, the root's modules and INIT (cached beside it)."""
    path = unpacked.root.parent / "initramfs.cpio"
    if path.exists():
        return path
    modules = load_order(unpacked, ROOT_MODULES)
    archive = [
        cpio_entry("bin", 0o40755),
        cpio_entry("modules", 0o40755),
        cpio_entry("bin/busybox", 0o100755, Path(BUSYBOX).read_bytes()),
        cpio_entry("init", 0o100755, INIT.encode()),
        cpio_entry("modules.order", 0o100644, "\n".join(n for n, _ in modules).encode() + b"\n"),
        *(cpio_entry(f"modules/{name}", 0o100644, data) for name, data in modules),
        cpio_entry("TRAILER!!!", 0),
    ]
    partial = path.with_suffix(".partial")
    partial.write_bytes(b"".join(archive))
    partial.rename(path)
    return path


@dataclass
class Boot:
    """What one guest printed and left in its results folder."""

    console: str
    results: Path
    seconds: float
    exit_status: int | None  # the guest command's, as it wrote it; None if it never finished

    def result(self, name: str) -> str:
        path = self.results / name
        return path.read_text() if path.exists() else ""


def boot(
    unpacked: Unpacked,
    command: str,
    results: Path,
    timeout: float,
    accelerator: Accelerator = TCG,
    memory: str = "4G",
    cpus: int = 2,
    keep: Path = CHECKOUT,
) -> Boot:
    """Boots the kernel, runs ``command`` (a shell command line) in the guest as root with the
    host's root filesystem, and powers off, or is stopped after ``timeout`` seconds.
    ``results`` is writable in the guest at the same path; the command's exit status is left
    there as ``exit_status``; ``keep`` (this checkout) stays visible at its path even under
    the guest's fresh /tmp."""
    shutil.rmtree(results, ignore_errors=True)
    results.mkdir(parents=True)
    (results / "command").write_text(command + "\n")
    environment = {
        "TO_GUEST": str(GUEST_SCRIPT),
        "TO_RESULTS": str(results),
        "TO_HEADERS": str(unpacked.root),
        "TO_RELEASE": unpacked.release,
        "TO_KEEP": str(keep),
    }
    append = " ".join(
        [
            "console=ttyS0",
            "panic=-1",
            "quiet",
            "loglevel=4",
            *(f"{key}={shlex.quote(value)}" for key, value in environment.items()),
        ]
    )
    qemu = [
        "qemu-system-x86_64",
        *accelerator.options,
        "-m", memory,
        "-smp", str(cpus),
        "-nographic",
        "-no-reboot",
        "-kernel", str(unpacked.vmlinuz),
        "-initrd", str(initramfs(unpacked)),
        "-append", append,
        "-virtfs", f"local,path=/,mount_tag=hostroot,readonly=on,{SHARE}",
        "-virtfs", f"local,path={results},mount_tag=results,{SHARE}",
    ]  # fmt: skip
    started = time.monotonic()
    with open(results / "console.log", "wb") as console:
        process = subprocess.Popen(qemu, stdin=subprocess.DEVNULL, stdout=console, stderr=console)
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    status_file = results / "exit_status"
    status = int(status_file.read_text()) if status_file.exists() else None
    return Boot(
        (results / "console.log").read_text(errors="replace"),
        results,
        time.monotonic() - started,
        status,
    )
