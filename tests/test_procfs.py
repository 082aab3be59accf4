import ctypes
import os

import pytest

from observer import procfs


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
