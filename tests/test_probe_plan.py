"""The probe plan is plain data decided from the user's choices and the kernel's features:
table-tested per kernel generation without root, from each kernel's real tracepoint formats."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from tests.test_kernel_matrix import FORMATS, formats_of
from thread_observer import bpf_backend
from thread_observer.bpf_backend import (
    BPF_TRACE_UPROBE_MULTI,
    BPF_TRACE_UPROBE_SESSION,
    SYSCALL_HOOKS,
    Hooks,
    KernelFeatures,
    ProbeChoices,
    plan_probes,
)
from thread_observer.kernel_btf import BtfError, running_kernel_btf
from thread_observer.loaded_probes import KPROBE, NO_ATTACH_TYPE, RAW_TRACEPOINT, TRACEPOINT


def kernel_btf_or_skip():
    try:
        return running_kernel_btf()
    except BtfError as err:
        pytest.skip(f"the offsets come from this kernel's BTF, and {err}")


def generation(name: str, btf) -> KernelFeatures:
    """Each generation as Debian's kernels of the matrix are (their formats in tests/data):
    what decides the plan is the features, and the struct offsets from this kernel's BTF."""
    folder = {
        "5.10": "5.10.0-32-amd64",
        "6.1": "6.1.0-50-amd64",
        "6.12": "6.12.117+deb13-amd64",
        "6.18": "6.18.44-fc-v1272",
    }[name]
    features = {
        # task storage and bpf_task_pt_regs are 5.15+: the syscalls' tracepoints
        "5.10": (SYSCALL_HOOKS, False, False, False),
        # sched_switch for the epoll mark; sock_send_length is 6.3+
        "6.1": (Hooks(epoll_at_switch=True), True, False, False),
        "6.12": (Hooks(epoll_at_switch=True, sends_at_sockets=True), True, True, False),
        "6.18": (Hooks(epoll_at_switch=True, sends_at_sockets=True), True, True, True),
    }[name]
    hooks, task_storage, multi, sessions = features
    return KernelFeatures(
        btf=btf,
        hooks=hooks,
        task_storage=task_storage,
        uprobe_multi=multi,
        uprobe_sessions=sessions,
        pid_namespace=False,
        tracepoint_fields=formats_of(FORMATS / folder),
    )


def programs_of(plan, attach_type: int) -> set[str]:
    return {name for name, kind, attached in plan.programs if attached == attach_type}


@pytest.mark.parametrize("name", ["5.10", "6.1", "6.12", "6.18"])
def test_the_programs_loaded_are_each_way_the_kernel_lets_them_be_attached(name):
    plan = plan_probes(ProbeChoices(True), generation(name, kernel_btf_or_skip()))
    multi, sessions = (
        programs_of(plan, BPF_TRACE_UPROBE_MULTI),
        programs_of(plan, BPF_TRACE_UPROBE_SESSION),
    )
    plain = {n for n, kind, a in plan.programs if kind == KPROBE and a == NO_ATTACH_TYPE}
    # Always a perf-event form of the libc probes: the fallback next to another tool's uprobe.
    assert {"pthread_create_entry", "getaddrinfo_entry", "getaddrinfo_return"} <= plain
    if name in ("5.10", "6.1"):  # no uprobe_multi: each resolver function its own entry
        assert not multi and not sessions
        assert "resolver_return" in plain and len(plain) > 4
    else:
        assert multi == {
            "pthread_create_entry",
            "getaddrinfo_entry",
            "getaddrinfo_return",
            "resolver_entry",
            "resolver_return",
            "python_starting",
        }
        assert plain == {"pthread_create_entry", "getaddrinfo_entry", "getaddrinfo_return"}
    assert sessions == ({"getaddrinfo_session", "resolver_session"} if name == "6.18" else set())
    mark = ("mark_event_loop_thread", TRACEPOINT) if name == "5.10" else ("mark_at_switch",)
    assert any((n, k)[: len(mark)] == mark for n, k, _ in plan.programs)
    tcp_counter = ("count_tcp_send", RAW_TRACEPOINT, NO_ATTACH_TYPE)
    assert (tcp_counter in plan.programs) == (name in ("6.12", "6.18"))


@pytest.mark.parametrize("name", ["5.10", "6.1", "6.12", "6.18"])
def test_the_maps_and_probes_listed_follow_the_hooks_and_task_storage(name):
    features = generation(name, kernel_btf_or_skip())
    plan = plan_probes(ProbeChoices(True), features)
    maps, probes = plan.listing.maps, plan.listing.probe_names
    assert ("thread_states" in maps) == (name == "5.10")
    assert "python_objects" in maps and "forked_children" not in maps
    sockets = features.hooks.sends_at_sockets
    assert ("sock_send_length" in probes) == sockets
    assert ("sys_enter_sendto" in probes) == (not sockets)
    # The epoll mark is attached on demand (sites on): listed only while attached.
    assert "sched_switch" not in probes and "epoll_wait" not in probes
    assert plan.dns_queries and not plan.dns_left_out
    assert ("-DCHILD_AT_FORK=1" in plan.cflags) is False  # not in a PID namespace


def test_a_send_tracepoint_field_missing_leaves_only_the_dns_probe_out():
    features = generation("5.10", kernel_btf_or_skip())
    folder = FORMATS / "5.10.0-32-amd64"
    lacking = replace(
        features, tracepoint_fields=formats_of(folder, "syscalls:sys_enter_sendto.fd")
    )
    plan = plan_probes(ProbeChoices(True), lacking)
    assert not plan.dns_queries and plan.dns_left_out
    assert "dns.bpf.c" not in plan.files and "threads.bpf.c" in plan.files
    assert "dns_queries_total" not in plan.listing.maps
    assert not [n for n, _, _ in plan.programs if n == "count_tcp_send"]


def test_without_btf_the_plan_says_what_it_leaves_out_and_keeps_the_rest(caplog):
    features = replace(generation("6.18", None), btf=BtfError("no BTF here"))
    plan = plan_probes(ProbeChoices(True), features)
    assert plan.dns_left_out and not plan.dns_queries
    assert "-DRAW_TASK_EVENTS=0" in plan.cflags
    assert "python_executables" not in plan.listing.maps  # found at exec only through BTF
    assert "DNS messages not followed" in caplog.text


def test_in_a_pid_namespace_forked_children_are_followed(monkeypatch):
    monkeypatch.setattr(bpf_backend, "in_pid_namespace", lambda: True)
    features = replace(generation("6.18", kernel_btf_or_skip()), pid_namespace=True)
    plan = plan_probes(ProbeChoices(True), features)
    assert "forked_children" in plan.listing.maps
    assert "-DCHILD_AT_FORK=1" in plan.cflags and plan.child_at_fork
    without_btf = replace(features, btf=BtfError("no BTF here"))
    plan = plan_probes(ProbeChoices(True), without_btf)
    assert ("adopt_forked_child", TRACEPOINT, NO_ATTACH_TYPE) in plan.programs


def test_choices_the_user_made_shape_the_plan():
    features = generation("6.18", kernel_btf_or_skip())
    lean = ProbeChoices(True, sites=False, host_names=False, dns_queries=False, epoll_mark=True)
    plan = plan_probes(lean, features)
    assert "dns.bpf.c" not in plan.files and not plan.dns_left_out
    assert "python_objects" not in plan.listing.maps
    assert "getaddrinfo_host_calls_total" not in plan.listing.maps
    # Without sites the epoll mark is on all the time: listed from the start.
    assert "sched_switch" in plan.listing.probe_names
    assert "python_starting" not in {n for n, _, _ in plan.programs}


def test_the_real_kernel_features_are_detected_in_one_place():
    features = KernelFeatures.detect()
    assert isinstance(features.hooks, Hooks)
    assert isinstance(features.uprobe_multi, bool) and isinstance(features.task_storage, bool)
    assert Path("/proc/self/ns/pid").exists()
