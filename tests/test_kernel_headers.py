"""The kernel headers bcc compiles against: the host's, else the running kernel's own tarball
(CONFIG_IKHEADERS) unpacked for it. Real .tar.xz files and folders stand for
/sys/kernel/kheaders.tar.xz and /lib/modules; no root needed."""

from __future__ import annotations

import functools
import io
import logging
import os
import shutil
import stat
import tarfile
from pathlib import Path

import pytest

from thread_observer import bpf_backend, capabilities, kernel_headers
from thread_observer.bpf_backend import BpfUnavailable
from thread_observer.kernel_headers import BCC_KERNEL_SOURCE, FOLDER_PREFIX, prepare_kernel_headers
from thread_observer.preemption import PreemptGuard

RELEASE = "6.18.44-test"
KCONFIG = "include/linux/kconfig.h"
HEADERS = {
    KCONFIG: b"/* kconfig.h */\n",
    "include/linux/types.h": b"typedef int test_t;\n",
    "arch/x86/include/asm/ptrace.h": b"struct pt_regs;\n",
}


def add_file(archive: tarfile.TarFile, name: str, data: bytes, mode: int = 0o644) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mode = len(data), mode
    archive.addfile(info, io.BytesIO(data))


def add_special(archive: tarfile.TarFile, name: str, kind: bytes, **fields) -> None:
    info = tarfile.TarInfo(name)
    info.type = kind
    for key, value in fields.items():
        setattr(info, key, value)
    archive.addfile(info)


def make_tarball(path: Path, files: dict[str, bytes] = HEADERS, hostile_root: Path | None = None):
    """A .tar.xz as the kernel's; with ``hostile_root``, also members that must never be
    unpacked, aimed at that folder (so that an escape would be seen there, and harm nothing)."""
    with tarfile.open(path, "w:xz") as archive:
        add_special(archive, ".", tarfile.DIRTYPE, mode=0o777)
        for name, data in files.items():
            add_file(archive, f"./{name}", data)
        if hostile_root is not None:
            add_file(archive, str(hostile_root / "absolute.h"), b"escaped\n")
            add_file(archive, "../../dotdot.h", b"escaped\n")
            add_file(archive, "include/../../../../dotdot-deep.h", b"escaped\n")
            add_file(archive, "include/linux/setuid.h", b"#define X 1\n", mode=0o4777)
            add_special(archive, "include/linux/link.h", tarfile.SYMTYPE, linkname="/etc/passwd")
            add_special(archive, "include/linux/hard.h", tarfile.LNKTYPE, linkname="/etc/passwd")
            add_special(archive, "include/linux/null", tarfile.CHRTYPE, devmajor=1, devminor=3)
            add_special(archive, "include/linux/fifo", tarfile.FIFOTYPE)
    return path


class Machine:
    """A fake /lib/modules, a kheaders tarball path, a cache folder and the module's
    load/unload, recording each call."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.modules = root / "modules"
        (self.modules / RELEASE).mkdir(parents=True)
        self.kheaders = root / "sys" / "kheaders.tar.xz"
        self.kheaders.parent.mkdir()
        self.cache = root / "cache"
        self.cache.mkdir()
        self.module_tarball: Path | None = None  # what loading the module makes appear
        self.load_problem: str | None = None
        self.calls: list[str] = []
        self.environ: dict[str, str] = {}

    def load(self) -> str | None:
        self.calls.append("load")
        if self.load_problem is None and self.module_tarball is not None:
            shutil.copy(self.module_tarball, self.kheaders)
        return self.load_problem

    def unload(self) -> None:
        self.calls.append("unload")
        if self.module_tarball is not None:
            self.kheaders.unlink(missing_ok=True)

    def host(self, *folders: str, kconfig_in: str | None = None) -> None:
        for name in folders:
            (self.modules / RELEASE / name / "include" / "linux").mkdir(parents=True)
        if kconfig_in is not None:
            (self.modules / RELEASE / kconfig_in / KCONFIG).write_text("/* host */\n")

    def prepare(self, environ: dict[str, str] | None = None):
        return prepare_kernel_headers(
            RELEASE,
            str(self.modules),
            self.environ if environ is None else environ,
            kheaders=str(self.kheaders),
            cache=str(self.cache),
            load=self.load,
            unload=self.unload,
        )


@pytest.fixture
def machine(tmp_path) -> Machine:
    return Machine(tmp_path)


@pytest.fixture
def unpacks(monkeypatch) -> list[str]:
    """Every folder unpacked into."""
    done: list[str] = []
    real = kernel_headers.unpacked

    def counting(tarball: str, work: str) -> str:
        done.append(work)
        return real(tarball, work)

    monkeypatch.setattr(kernel_headers, "unpacked", counting)
    return done


def test_the_hosts_build_folder_when_it_has_no_source_folder(machine):
    machine.host("build", kconfig_in="build")
    make_tarball(machine.kheaders)
    headers = machine.prepare()
    assert headers.ok
    assert headers.path == str(machine.modules / RELEASE / "build")
    assert headers.detail == f"bcc uses {machine.modules / RELEASE / 'build'}"
    # bcc finds the host's by itself: nothing named for it, nothing unpacked or loaded.
    assert machine.environ == {}
    assert os.listdir(machine.cache) == []
    assert machine.calls == []


def test_the_hosts_source_folder_when_it_has_both_as_bccs_loader_picks(machine):
    machine.host("build", "source", kconfig_in="source")
    headers = machine.prepare()
    assert headers.path == str(machine.modules / RELEASE / "source")
    assert machine.environ == {}
    assert machine.calls == []


def test_a_build_folder_with_headers_beside_a_source_folder_without_is_not_the_hosts(machine):
    # bcc compiles against source whenever both folders are there: build's kconfig.h is moot.
    machine.host("build", "source", kconfig_in="build")
    make_tarball(machine.kheaders)
    headers = machine.prepare()
    assert headers.ok
    assert Path(headers.path).parent == machine.cache
    assert machine.environ[BCC_KERNEL_SOURCE] == headers.path


def test_the_host_for_another_kernel_says_so(machine, tmp_path):
    other = tmp_path / "linux-headers-6.1.0-57-amd64"
    (other / "include" / "linux").mkdir(parents=True)
    (other / KCONFIG).write_text("")
    (machine.modules / RELEASE / "build").symlink_to(other)
    headers = machine.prepare()
    assert headers.detail.startswith(f"bcc uses {other} (for another kernel than {RELEASE}")


def test_the_kernels_own_headers_unpacked_when_the_host_has_none(machine, tmp_path):
    make_tarball(machine.kheaders, hostile_root=tmp_path)
    headers = machine.prepare()
    assert headers.ok, headers.detail
    folder = Path(headers.path)
    assert folder.parent == machine.cache
    assert folder.name.startswith(f"{FOLDER_PREFIX}{RELEASE}-")
    assert machine.environ == {BCC_KERNEL_SOURCE: str(folder)}
    assert "running kernel's own headers" in headers.detail and str(folder) in headers.detail
    for name, data in HEADERS.items():
        assert (folder / name).read_bytes() == data
    assert machine.calls == []  # the tarball was there: no module loaded


def test_hostile_members_are_not_unpacked(machine, tmp_path):
    make_tarball(machine.kheaders, hostile_root=tmp_path)
    folder = Path(machine.prepare().path)
    assert not (tmp_path / "absolute.h").exists()
    assert not (tmp_path / "dotdot.h").exists() and not (machine.cache / "dotdot.h").exists()
    assert not list(tmp_path.rglob("dotdot-deep.h"))
    linux = folder / "include" / "linux"
    for name in ("link.h", "hard.h", "null", "fifo"):
        assert not os.path.lexists(linux / name), name
    unpacked = {str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()}
    assert unpacked == {*HEADERS, "include/linux/setuid.h"}
    # The archive's modes and owners are not taken: no set-id, nobody else may write.
    setuid = (linux / "setuid.h").stat()
    assert stat.S_IMODE(setuid.st_mode) == 0o755
    assert setuid.st_uid == os.geteuid()
    assert stat.S_IMODE(folder.stat().st_mode) & 0o022 == 0  # its "." was 0777
    assert os.listdir(machine.cache) == [folder.name]  # no half-made folder left


def test_a_second_call_reuses_the_folder(machine, unpacks):
    make_tarball(machine.kheaders)
    first = machine.prepare()
    mtime = os.stat(first.path).st_mtime_ns
    # Another process (a fresh environment) and this one again (BCC_KERNEL_SOURCE set).
    again = machine.prepare(environ={})
    same = machine.prepare()
    assert again.path == same.path == first.path
    assert same.detail == first.detail
    assert len(unpacks) == 1
    assert os.stat(first.path).st_mtime_ns == mtime
    assert os.listdir(machine.cache) == [Path(first.path).name]


def test_a_new_tarball_is_unpacked_anew(machine, unpacks):
    make_tarball(machine.kheaders)
    first = machine.prepare(environ={})
    make_tarball(machine.kheaders, {**HEADERS, "include/linux/new.h": b"/* rebuilt */\n"})
    second = machine.prepare(environ={})
    assert second.path != first.path
    assert (Path(second.path) / "include/linux/new.h").read_bytes() == b"/* rebuilt */\n"
    assert not (Path(first.path) / "include/linux/new.h").exists()
    assert len(unpacks) == 2


def expected_folder(machine: Machine) -> Path:
    digest = kernel_headers.digest(str(machine.kheaders))
    return machine.cache / f"{FOLDER_PREFIX}{RELEASE}-{digest}"


def planted(folder: Path) -> None:
    """A folder of the cache's name, with headers nobody should compile against."""
    (folder / "include" / "linux").mkdir(parents=True)
    (folder / KCONFIG).write_text("#error planted\n")


def test_an_own_folder_open_to_others_is_replaced(machine, unpacks):
    make_tarball(machine.kheaders)
    folder = expected_folder(machine)
    planted(folder)
    folder.chmod(0o777)
    headers = machine.prepare()
    assert headers.path == str(folder)
    assert (folder / KCONFIG).read_bytes() == HEADERS[KCONFIG]
    assert stat.S_IMODE(folder.stat().st_mode) & 0o022 == 0
    assert len(unpacks) == 1


def test_a_group_writable_folder_is_not_trusted(machine, unpacks):
    make_tarball(machine.kheaders)
    folder = expected_folder(machine)
    planted(folder)
    folder.chmod(0o770)
    assert machine.prepare().path == str(folder)
    assert (folder / KCONFIG).read_bytes() == HEADERS[KCONFIG]
    assert len(unpacks) == 1


def test_a_symlink_in_the_folders_place_is_not_followed(machine, tmp_path):
    make_tarball(machine.kheaders)
    elsewhere = tmp_path / "elsewhere"
    planted(elsewhere)
    expected_folder(machine).symlink_to(elsewhere)
    headers = machine.prepare()
    assert not os.path.islink(headers.path)
    assert (Path(headers.path) / KCONFIG).read_bytes() == HEADERS[KCONFIG]
    assert (elsewhere / KCONFIG).read_text() == "#error planted\n"


def owned_by_another(folder: Path, monkeypatch) -> None:
    """Makes ``folder`` another user's: really where this is root, else as this process
    sees it (its effective uid taken as another)."""
    if os.geteuid() == 0:
        os.chown(folder, 65534, 65534)
    else:
        uid = os.geteuid()
        monkeypatch.setattr(kernel_headers.os, "geteuid", lambda: uid + 1)


def test_another_users_folder_is_left_alone_for_one_of_a_new_name(machine, monkeypatch, caplog):
    make_tarball(machine.kheaders)
    folder = expected_folder(machine)
    planted(folder)
    owned_by_another(folder, monkeypatch)
    with caplog.at_level(logging.WARNING, logger="thread_observer.kernel_headers"):
        headers = machine.prepare()
    assert headers.ok
    assert headers.path != str(folder)
    assert Path(headers.path).parent == machine.cache
    assert (Path(headers.path) / KCONFIG).read_bytes() == HEADERS[KCONFIG]
    assert (folder / KCONFIG).read_text() == "#error planted\n"  # not touched
    assert machine.environ[BCC_KERNEL_SOURCE] == headers.path
    assert "another user's" in caplog.text


def test_the_module_is_loaded_only_without_the_tarball_and_unloaded_after(machine, tmp_path):
    machine.module_tarball = make_tarball(tmp_path / "module-made.tar.xz")
    headers = machine.prepare()
    assert headers.ok, headers.detail
    assert machine.calls == ["load", "unload"]
    assert not machine.kheaders.exists()  # unloaded
    assert (Path(headers.path) / KCONFIG).read_bytes() == HEADERS[KCONFIG]
    # Once the tarball is there (built in), the module is left alone.
    machine.calls.clear()
    shutil.copy(machine.module_tarball, machine.kheaders)
    assert machine.prepare(environ={}).path == headers.path
    assert machine.calls == []


def test_a_module_that_makes_no_tarball_is_unloaded_all_the_same(machine):
    headers = machine.prepare()
    assert not headers.ok
    assert "the module made none" in headers.detail
    assert machine.calls == ["load", "unload"]


def test_no_tarball_and_no_module_name_what_to_install(machine):
    machine.load_problem = "modprobe kheaders: FATAL: Module kheaders not found"
    headers = machine.prepare()
    assert not headers.ok and headers.path is None
    assert headers.detail.startswith(f"none at {machine.modules / RELEASE / 'build'}, ")
    assert f"no {machine.kheaders} (modprobe kheaders: FATAL: Module kheaders not found)" in (
        headers.detail
    )
    assert f"apt-get install linux-headers-{RELEASE}" in headers.detail
    assert "CONFIG_IKHEADERS" in headers.detail
    assert machine.calls == ["load"]  # nothing loaded, nothing to unload
    assert machine.environ == {}


def truncated(path: Path) -> None:
    make_tarball(path, {**HEADERS, "include/linux/big.h": os.urandom(200_000)})
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


@pytest.mark.parametrize(
    "spoil, error",
    [
        (lambda path: path.write_bytes(b"not an xz stream at all"), "not an lzma file"),
        (truncated, "cannot unpack"),
        (lambda path: make_tarball(path, {"include/linux/types.h": b""}), "kconfig.h"),
    ],
    ids=["garbage", "truncated", "no-kconfig"],
)
def test_a_corrupt_tarball_fails_and_leaves_nothing(machine, spoil, error):
    spoil(machine.kheaders)
    headers = machine.prepare()
    assert not headers.ok
    assert f"cannot unpack {machine.kheaders}: " in headers.detail
    assert error in headers.detail
    assert f"linux-headers-{RELEASE}" in headers.detail
    assert os.listdir(machine.cache) == []
    assert machine.environ == {}


def test_an_earlier_runs_folder_gone_from_the_environment_is_dropped(machine):
    machine.host("build", kconfig_in="build")
    gone = str(machine.cache / f"{FOLDER_PREFIX}{RELEASE}-0123456789abcdef")
    machine.environ[BCC_KERNEL_SOURCE] = gone
    headers = machine.prepare()
    assert headers.path == str(machine.modules / RELEASE / "build")
    assert BCC_KERNEL_SOURCE not in machine.environ  # bcc would take it over the host's


def test_headers_the_user_named_come_first_and_must_be_headers(machine, tmp_path):
    machine.host("build", kconfig_in="build")
    named = tmp_path / "my-headers"
    machine.environ[BCC_KERNEL_SOURCE] = str(named)
    refused = machine.prepare()
    assert not refused.ok
    assert f"{BCC_KERNEL_SOURCE} names {named}, which holds no include/linux/kconfig.h" in (
        refused.detail
    )
    planted(named)
    assert machine.prepare().path == str(named)
    assert machine.environ == {BCC_KERNEL_SOURCE: str(named)}


def test_check_headers_gives_the_detail(machine, monkeypatch):
    prepare = functools.partial(machine.prepare, environ=machine.environ)
    monkeypatch.setattr(capabilities, "prepare_kernel_headers", prepare)
    machine.load_problem = "no modprobe here to load the kheaders module"
    missing = capabilities.check_headers()
    assert (missing.name, missing.ok) == ("kernel headers", False)
    assert missing.detail == machine.prepare().detail
    assert "CONFIG_IKHEADERS" in missing.detail
    assert capabilities.headers_hint() == missing.detail
    if os.geteuid() == 0 or capabilities.has_bpf_capabilities():  # else privileges first
        assert capabilities.bpf_problem() == f"kernel headers: {missing.detail}"
    make_tarball(machine.kheaders)
    found = capabilities.check_headers()
    assert found.ok
    assert found.detail == kernel_headers.kheaders_detail(
        machine.environ[BCC_KERNEL_SOURCE], str(machine.kheaders)
    )


def test_headers_are_said_once(caplog):
    headers = kernel_headers.KernelHeaders("/nowhere/said-once", "bcc uses /nowhere/said-once")
    with caplog.at_level(logging.INFO, logger="thread_observer.kernel_headers"):
        kernel_headers.say_headers(headers)
        kernel_headers.say_headers(headers)
    said = [r.getMessage() for r in caplog.records if "said-once" in r.getMessage()]
    assert said == ["kernel headers: bcc uses /nowhere/said-once"]


class FakeBcc:
    """bcc, as far as compile_probes uses it: records BCC_KERNEL_SOURCE as the compile sees
    it (in ``environ``), and fails when told to."""

    def __init__(self, environ: dict[str, str], fail: bool) -> None:
        self.environ = environ
        self.fail = fail
        self.seen: list[str | None] = []

    def BPF(self, text: str, cflags: list[str]):  # noqa: N802 (bcc's name)
        self.seen.append(self.environ.get(BCC_KERNEL_SOURCE))
        if self.fail:
            raise Exception("Failed to compile BPF module <text>")
        return "compiled"


def fake_compile(monkeypatch, machine: Machine, fail: bool) -> FakeBcc:
    bcc = FakeBcc(machine.environ, fail)
    monkeypatch.setattr(bpf_backend, "import_bcc", lambda: bcc)
    monkeypatch.setattr(bpf_backend, "kernel_format_cflags", lambda btf=None: [])
    monkeypatch.setattr(bpf_backend, "pid_namespace_cflags", lambda: [])
    monkeypatch.setattr(bpf_backend, "preempt_guard", lambda btf: PreemptGuard(reason="faked"))
    monkeypatch.setattr(bpf_backend, "prepare_kernel_headers", machine.prepare)
    return bcc


def test_the_compile_names_the_kernels_own_headers_to_bcc_first(machine, monkeypatch, caplog):
    make_tarball(machine.kheaders)
    bcc = fake_compile(monkeypatch, machine, fail=False)
    with caplog.at_level(logging.INFO, logger="thread_observer.kernel_headers"):
        assert bpf_backend.compile_probes((), [], "timeline probe") == "compiled"
    assert bcc.seen == [machine.environ[BCC_KERNEL_SOURCE]]
    assert Path(bcc.seen[0]).parent == machine.cache
    assert f"running kernel's own headers ({machine.kheaders}), unpacked in {bcc.seen[0]}" in (
        caplog.text
    )


def test_a_compile_without_headers_says_what_to_install(machine, monkeypatch):
    bcc = fake_compile(monkeypatch, machine, fail=True)
    machine.load_problem = "no modprobe here to load the kheaders module"
    with pytest.raises(BpfUnavailable) as failed:
        bpf_backend.compile_probes((), [], "probes")
    message = str(failed.value)
    assert message.startswith("compiling the probes failed: ")
    assert f"apt-get install linux-headers-{RELEASE}" in message
    assert "CONFIG_IKHEADERS" in message
    assert bcc.seen == [None]
    assert machine.calls == ["load"]  # looked for once, the hint reusing what was found


def host_headers_as_kheaders(path: Path) -> Path | None:
    """A tarball laid out as the kernel's own (include/ and arch/x86/include/, generated
    headers and all), made from Debian's split headers package; None where there is none.
    It also holds a header of its own, that only a compile against it can find."""
    common = sorted(Path("/usr/src").glob("linux-headers-*-common"))
    if not common:
        return None
    arch = common[-1].with_name(common[-1].name.replace("-common", "-amd64"))
    with tarfile.open(path, "w:xz", preset=0) as archive:
        for folder in (common[-1], arch):  # arch's generated headers over common's
            for part in ("include", "arch/x86/include"):
                if (folder / part).is_dir():
                    archive.add(folder / part, arcname=part)
        add_file(archive, "include/linux/thread_observer_marker.h", b"#define MARKER 1917\n")
    return path


@pytest.mark.bpf
def test_bcc_compiles_against_the_unpacked_tarball(tmp_path, monkeypatch):
    tarball = host_headers_as_kheaders(tmp_path / "kheaders.tar.xz")
    if tarball is None:
        pytest.skip("no Debian headers package in /usr/src to make a kernel's tarball from")
    (tmp_path / "modules").mkdir()
    # Restored after the test: prepare_kernel_headers names the folder in os.environ itself.
    monkeypatch.setenv(BCC_KERNEL_SOURCE, "")
    monkeypatch.delenv(BCC_KERNEL_SOURCE)
    headers = prepare_kernel_headers(
        kheaders=str(tarball),
        modules=str(tmp_path / "modules"),
        cache=str(tmp_path),
        load=lambda: pytest.fail("the tarball is there: no module to load"),
    )
    assert headers.ok, headers.detail
    assert os.environ[BCC_KERNEL_SOURCE] == headers.path
    program = """
#include <linux/sched.h>
#include <linux/thread_observer_marker.h>
#if MARKER != 1917
#error not compiled against the unpacked tarball
#endif
int marked(struct pt_regs *ctx) { return MARKER; }
"""
    bpf = bpf_backend.import_bcc().BPF(text=program)
    try:
        assert bpf.load_func("marked", bpf.KPROBE).fd >= 0
    finally:
        bpf.cleanup()
