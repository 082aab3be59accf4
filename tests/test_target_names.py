"""Which target a process belongs to: its command line as started (caught at exec, before it
can rename itself) and name templates taking values from the regex's named groups."""

from __future__ import annotations

import re
import subprocess
import uuid
from contextlib import ExitStack
from pathlib import Path

import pytest

from tests.harness import observer, settled, wait_until, workload

pytestmark = pytest.mark.bpf

TREE = ["-m", "workloads.process_tree", "--linger", "60"]


def totals_settled(running, target: str, threads: int, calls: int) -> None:
    settled(
        running,
        {
            "thread_observer_threads_created_total": threads,
            "thread_observer_threads_exited_total": threads,
            "thread_observer_getaddrinfo_calls_total": calls,
        },
        target=target,
    )


def processes(running, target: str) -> float | None:
    return running.scrape().value("thread_observer_processes", target=target)


def test_a_process_that_renames_itself_at_once_is_matched_by_its_original_arguments(tmp_path):
    pytest.importorskip("setproctitle")
    tag = uuid.uuid4().hex[:12]
    title = f"renamed-{uuid.uuid4().hex[:8]}"
    with observer(["--target", f"gunicornish=python.*-X tag={tag}"], tmp_path) as running:
        for run in range(1, 4):  # every run, not by luck of timing
            command = [
                "-X",
                f"tag={tag}",
                *TREE,
                "--rename",
                title,
                "--workers",
                "1",
                "--threads",
                "3",
                "--lookups",
                "2",
            ]
            with workload(command) as root:
                # Renamed before its ready line: /proc shows only the new title.
                cmdline = Path(f"/proc/{root.pid}/cmdline").read_bytes()
                assert cmdline.rstrip(b"\0") == title.encode()
                wait_until(
                    lambda: processes(running, "gunicornish") == 1,
                    10,
                    "the renamed process to be matched",
                )
                root.go()
                truth = root.truth()
                assert (truth["worker_threads"], truth["worker_getaddrinfo_calls"]) == (3, 2)
                # A named target's counts add up over its processes' lives.
                totals_settled(running, "gunicornish", 3 * run, 2 * run)
            wait_until(lambda: processes(running, "gunicornish") == 0, 10, "it to be dropped")


def test_a_name_template_gives_a_target_per_value(tmp_path):
    tag = uuid.uuid4().hex[:12]
    apps = {"alpha": 1, "beta": 2, "gamma": 3}  # app -> threads and lookups of its worker
    template = f"{{app}}=python.*-X tag={tag} -X app=(?P<app>\\w+)"
    with observer(["--target", template], tmp_path) as running, ExitStack() as stack:
        roots = {
            app: stack.enter_context(
                workload(
                    [
                        "-X",
                        f"tag={tag}",
                        "-X",
                        f"app={app}",
                        *TREE,
                        "--workers",
                        "1",
                        "--threads",
                        str(n),
                        "--lookups",
                        str(n),
                    ]
                )
            )
            for app, n in apps.items()
        }
        for app in apps:
            wait_until(lambda app=app: processes(running, app) == 1, 10, f"{app} attached")
        for root in roots.values():
            root.go()
        truths = {app: root.truth() for app, root in roots.items()}
        for app, n in apps.items():
            assert truths[app]["worker_threads"] == n
            totals_settled(running, app, n, n)
        metrics = running.scrape()
        assert set(metrics.labels("thread_observer_processes", "target")) == set(apps)


def test_a_name_template_holds_its_cap_with_a_thousand_names(tmp_path):
    tag = uuid.uuid4().hex[:8]
    template = f"{{n}}=cap{tag}-(?P<n>\\d+)"
    with observer(["--target", template, "--allow-non-python"], tmp_path) as running:
        # 1,000 cheap processes, each named by its last argument, waiting on one pipe.
        shells = [
            subprocess.Popen(["sh", "-c", "read x", f"cap{tag}-{i}"], stdin=subprocess.PIPE)
            for i in range(1000)
        ]
        try:
            metrics = wait_until(
                lambda: attached_all(running, 1000), 60, "every process to be attached"
            )
            names = metrics.labels("thread_observer_processes", "target")
            numbered = {name for name in names if re.fullmatch(r"\d+", name)}
            assert len(numbered) == 100
            assert all(names[name] == 1 for name in numbered)
            assert names["<other>"] == 900
            assert metrics.value("thread_observer_target_names_overflowed_total") == 900
            assert "later ones count as <other>" in running.log()
        finally:
            for shell in shells:
                shell.stdin.close()
            for shell in shells:
                shell.wait()


def attached_all(running, count: int):
    metrics = running.scrape()
    total = sum(metrics.labels("thread_observer_processes", "target").values())
    return metrics if total == count else None


@pytest.mark.parametrize(
    "arguments",
    [
        ["a", "b" * 63, "c" * 64],
        ["x" * 9000, "after"],  # read on past several scratch reads
        [f"arg{i}" for i in range(20)],  # past MAX_ARGS
        ["before", "", "after"],  # an empty argument ends the list
    ],
    ids=["lengths", "long", "many", "empty"],
)
def test_exec_reports_carry_each_argument_truncated_in_its_slot(arguments):
    from thread_observer.bpf_backend import BpfProbes
    from thread_observer.constants import MapSize

    probes = BpfProbes(track_new_processes=True, sites=False)
    try:
        probes.load()
        started = subprocess.Popen(["/bin/sh", "-c", 'exec "$@"', "sh", "/bin/true", *arguments])
        started.wait()
        reports = [r for r in probes.exec_reports() if r.tgid == started.pid]
    finally:
        probes.close()
    kept = []
    for argument in ["/bin/true", *arguments][: MapSize.MAX_ARGS]:
        if not argument:
            break
        kept.append(argument[: MapSize.ARG_LENGTH - 1])
    assert len(reports) == 2  # the shell's own exec, then /bin/true's
    assert reports[1].arguments == kept
