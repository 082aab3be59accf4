import ctypes
import os

import pytest

from thread_observer import procfs


@pytest.mark.parametrize(
    ("path", "exe", "creator"),
    [
        ("/usr/bin/python3.11", "/usr/bin/python3.11", "python"),
        ("/usr/lib/libpython3.12.so.1.0", "/usr/bin/python3.12", "python"),
        (
            "/opt/app/uvloop/loop.cpython-311-x86_64-linux-gnu.so",
            "/usr/bin/python3.11",
            "loop.cpython-311-x86_64-linux-gnu.so",
        ),
        ("/lib/x86_64-linux-gnu/libc.so.6", "/usr/bin/python3.11", "libc.so.6"),
        # A program that is not Python holds its own start routines.
        ("/usr/local/bin/server", "/usr/local/bin/server", "server"),
    ],
)
def test_classify_creator(path, exe, creator):
    assert procfs.classify_creator(path, exe) == creator


@pytest.mark.parametrize(
    ("version", "online", "allowed", "cap"),
    [
        ((3, 6), 2, 2, 10),
        ((3, 7), 8, 8, 40),
        ((3, 8), 2, 2, 6),
        ((3, 11), 64, 4, 32),
        ((3, 12), 2, 1, 6),  # before 3.13 the affinity mask is ignored
        ((3, 13), 8, 2, 6),  # 3.13 uses os.process_cpu_count()
        (None, 2, 2, None),
    ],
)
def test_executor_default_max_workers(version, online, allowed, cap):
    assert procfs.executor_default_max_workers(version, online, allowed) == cap


def test_cgroup_identity_from_kubernetes_paths():
    cid = "0123456789abcdef" * 4
    cgroup = (
        "0::/kubepods.slice/kubepods-burstable.slice/"
        "kubepods-burstable-pod1b4e28ba_2fa1_11d2_883f_0016d3cca427.slice/"
        f"cri-containerd-{cid}.scope\n"
    )
    assert procfs.parse_cgroup_identity(cgroup) == (cid, "1b4e28ba-2fa1-11d2-883f-0016d3cca427")
    assert procfs.parse_cgroup_identity("0::/user.slice\n") == ("", "")


def test_address_resolver_finds_libc_function_in_this_process():
    libc = ctypes.CDLL("libc.so.6")
    address = ctypes.cast(libc.getaddrinfo, ctypes.c_void_p).value
    pid = os.getpid()
    resolver = procfs.AddressResolver(pid, procfs.read_maps(pid), procfs.exe_path(pid))
    assert resolver.creator(address) == "libc.so.6"
    assert resolver.creator(0) == "unknown"
    assert resolver.creator(8) == "unknown"


def test_libc_objects_of_this_process():
    pid = os.getpid()
    names = {os.path.basename(p) for p in procfs.libc_objects(pid, procfs.read_maps(pid))}
    assert "libc.so.6" in names


def test_process_stat_of_this_process_is_stable():
    first, second = procfs.process_stat(os.getpid()), procfs.process_stat(os.getpid())
    assert first.state == "R"
    assert first.threads == len(os.listdir(f"/proc/{os.getpid()}/task"))
    assert first.started == second.started > 0


def test_a_zombie_and_a_reaped_process_have_ended_a_live_one_not():
    import subprocess
    import time

    from thread_observer.observers import create_time, ended, live_threads

    child = subprocess.Popen(["sleep", "60"])
    try:
        started = create_time(child.pid)
        assert not ended(child.pid, started)
        assert ended(child.pid, started + 1)  # its PID, another process's start
        assert live_threads(child.pid) == 1
        child.kill()
        # Not reaped yet: a zombie, whose exit mark an attach would have overwritten.
        deadline = time.monotonic() + 10
        while procfs.process_stat(child.pid).state != "Z" and time.monotonic() < deadline:
            time.sleep(0.01)
        assert ended(child.pid, started)
    finally:
        child.kill()
        child.wait()
    assert ended(child.pid, started)
    assert (
        procfs.process_stat(child.pid) is None or procfs.process_stat(child.pid).started != started
    )


def test_libc_objects_wait_for_the_loader_and_fall_back_to_a_static_executable():
    exe = procfs.exe_path(os.getpid())
    loader = procfs.Mapping(0x1000, 0x2000, "/usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2", True)
    program = procfs.Mapping(0x3000, 0x4000, exe, True)
    libc = procfs.Mapping(0x5000, 0x6000, "/usr/lib/x86_64-linux-gnu/libc.so.6", True)
    assert procfs.libc_objects(os.getpid(), [program, loader]) == []  # libraries not mapped yet
    assert procfs.libc_objects(os.getpid(), [program, loader, libc]) == [libc.path]
    assert procfs.libc_objects(os.getpid(), [program]) == [exe]  # statically linked
