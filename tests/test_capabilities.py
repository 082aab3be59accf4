"""The checks of ``thread-observer check`` that read files, fed made-up mount tables and folders:
no root needed."""

from pathlib import Path

import pytest

from thread_observer import capabilities
from thread_observer.capabilities import check_tracefs, tracing_mount_points

# A mount table as /proc/self/mountinfo writes it: optional fields (shared:N) before the "-",
# a space in a mount point written as \040.
MOUNTINFO = """\
22 27 0:21 / /proc rw,relatime shared:12 - proc proc rw
23 27 0:22 / /sys rw,relatime shared:7 - sysfs sysfs rw
45 23 0:13 / /sys/kernel/tracing rw,relatime shared:19 - tracefs nodev rw
46 23 0:7 / /sys/kernel/debug rw,relatime - debugfs debugfs rw
47 27 0:40 / /mnt/trace\\040here rw,relatime - tracefs tracefs rw,mode=700
48 27 0:41 / /srv/tracefs rw,relatime - ext4 /dev/tracefs rw
"""


def test_tracing_mount_points_are_tracefs_mounts_and_debugfs_tracing_folders():
    assert tracing_mount_points(MOUNTINFO) == {
        "/sys/kernel/tracing",
        "/sys/kernel/debug/tracing",
        "/mnt/trace here",
    }
    assert tracing_mount_points("") == set()
    assert tracing_mount_points("not a mount table\n1 2 3\n") == set()


def mount_table(*mounts: tuple[Path, str]) -> str:
    return "".join(
        f"{n} 1 0:{n} / {path} rw,relatime - {kind} nodev rw\n"
        for n, (path, kind) in enumerate(mounts, start=40)
    )


def tracefs_folder(root: Path) -> Path:
    """A folder with tracefs's ``events`` inside."""
    (root / "events").mkdir(parents=True)
    return root


def test_readable_tracefs_is_ok_with_its_path(tmp_path):
    tracing = tracefs_folder(tmp_path / "tracing")
    result = check_tracefs([str(tmp_path / "absent"), str(tracing)], mountinfo="")
    assert (result.ok, result.detail) == (True, str(tracing))


def test_tracefs_mounted_at_a_folder_this_user_cannot_enter(tmp_path):
    tracing = tmp_path / "tracing"  # no events inside: what a user outside mode 0700 sees
    tracing.mkdir()
    table = mount_table((tmp_path / "proc", "proc"), (tracing, "tracefs"))
    result = check_tracefs(
        [str(tmp_path / "elsewhere"), str(tracing)], mountinfo=table, readable=lambda path: False
    )
    assert not result.ok
    assert result.detail.startswith(f"mounted at {tracing}, but not readable by this user (uid ")
    assert "run as root, or give this user access" in result.detail
    assert "not mounted" not in result.detail


def test_debugfs_mounted_at_a_folder_this_user_cannot_enter(tmp_path):
    debug = tmp_path / "debug"  # debugfs is 0700 too: its tracing folder is out of reach
    table = mount_table((debug, "debugfs"))
    candidates = [str(tmp_path / "tracing"), str(debug / "tracing")]  # the first not mounted
    result = check_tracefs(candidates, mountinfo=table, readable=lambda path: False)
    assert not result.ok
    assert result.detail.startswith(f"mounted at {debug}/tracing, but not readable by this user")


def test_tracefs_mounted_and_readable_without_events(tmp_path):
    tracing = tmp_path / "tracing"
    tracing.mkdir()
    table = mount_table((tracing, "tracefs"))
    result = check_tracefs([str(tracing)], mountinfo=table, readable=lambda path: True)
    assert not result.ok
    assert result.detail.startswith(f"mounted at {tracing}, but without {tracing}/events")


def test_tracefs_not_mounted_anywhere_looked_at(tmp_path):
    table = mount_table((tmp_path / "elsewhere", "tracefs"), (tmp_path / "data", "ext4"))
    result = check_tracefs(
        [str(tmp_path / "tracing"), str(tmp_path / "debug" / "tracing")],
        mountinfo=table,
        readable=lambda path: False,
    )
    assert not result.ok
    assert result.detail.startswith("not mounted: mount -t tracefs nodev /sys/kernel/tracing")


@pytest.mark.parametrize("text, level", [("2\n", 2), ("3\n", 3), ("-1\n", -1), ("x\n", None)])
def test_perf_event_paranoid_is_read_from_the_kernel(tmp_path, text, level):
    path = tmp_path / "perf_event_paranoid"
    path.write_text(text)
    assert capabilities.perf_event_paranoid(str(path)) == level
    assert capabilities.perf_event_paranoid(str(tmp_path / "none")) is None


@pytest.mark.parametrize("level", [None, -1, 0, 1, 2])
def test_perfmon_is_enough_up_to_paranoid_2(level):
    assert capabilities.paranoid_needs_sys_admin(level) is None


def test_paranoid_3_names_sys_admin_and_the_sysctl():
    said = capabilities.paranoid_needs_sys_admin(3)
    assert "kernel.perf_event_paranoid is 3" in said
    assert "add CAP_SYS_ADMIN" in said
    assert "kernel.perf_event_paranoid=2" in said


def test_without_sys_admin_at_paranoid_3_privileges_fail_and_say_why(monkeypatch):
    held = {capabilities.CAP_BPF, capabilities.CAP_PERFMON, capabilities.CAP_SYS_PTRACE}
    monkeypatch.setattr(capabilities, "effective_capabilities", lambda: sum(1 << c for c in held))
    monkeypatch.setattr(capabilities, "perf_event_paranoid", lambda: 3)
    result = capabilities.check_privileges()
    assert not result.ok
    assert result.detail.startswith("CAP_BPF and CAP_PERFMON, but kernel.perf_event_paranoid is 3")
    assert capabilities.bpf_problem().startswith("kernel.perf_event_paranoid is 3")
    # At 2 (upstream's default) the three capabilities are enough.
    monkeypatch.setattr(capabilities, "perf_event_paranoid", lambda: 2)
    assert capabilities.check_privileges().ok
