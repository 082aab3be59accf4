"""DNS queries on the wire and libc's resolver entry points, against a private responder.

Every target runs in a network namespace with only loopback (workloads.private_dns), with its
own resolv.conf naming a responder on 127.0.0.1:53 there, which counts what it receives: that
count is the ground truth, and no query can leave the machine.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests import harness
from tests.harness import observer, wait_until, workload
from workloads.private_dns import PrivateDns

pytestmark = pytest.mark.bpf

NAME = "service.test"
ADDRESS = "127.0.0.2"  # not in /etc/hosts: its reverse lookup asks the responder
CLIENT = [sys.executable, "-m", "tests.targets.dns_client"]
TARGETS = Path(__file__).parent / "targets"
# Where the observer sees sends: the observer's command prefix for each.
SEND_HOOKS = {"socket layer": [], "syscall tracepoints": harness.SYSCALL_TRACEPOINTS}


@pytest.fixture(params=list(SEND_HOOKS))
def send_hooks(request, monkeypatch) -> str:
    """Each test that takes it runs once per way of seeing sends: at the socket layer's
    tracepoints (sock_send_length, tcp_sendmsg_locked) and at the send syscalls'."""
    if request.param == "socket layer":
        harness.skip_unless_raw_tracepoints("sends_at_sockets")
    monkeypatch.setattr(harness, "OBSERVER_PREFIX", SEND_HOOKS[request.param])
    return request.param


@contextmanager
def watched_client(dns: PrivateDns, tmp_path: Path, argv: list[str], allow_non_python=False):
    """A target in the namespace, watched by an observer from its first instruction on."""
    with workload(dns.command(argv), native=True) as target:
        flags = ["--allow-non-python"] if allow_non_python else []
        with observer(["--pid", f"client={target.pid}", *flags], tmp_path) as running:
            target.go()
            yield target, running, target.truth()


def queries_seen(running, target: str = "client") -> dict[str, int]:
    metrics = running.scrape()
    return {
        transport: metrics.value(
            "thread_observer_dns_queries_total", target=target, transport=transport
        )
        for transport in ("udp", "tcp")
    }


def assert_observer_saw_what_the_responder_received(running, dns: PrivateDns) -> dict:
    """The counts are exact: the observer's equal the responder's (read until both settle)."""
    seen: list = []

    def equal():
        seen[:] = [dns.received(), queries_seen(running)]
        return seen[0] == seen[1]

    try:
        wait_until(equal, 5, "the observer's counts to equal the responder's")
    except AssertionError as timeout:
        raise AssertionError(f"{timeout}: responder, observer = {seen}\n{running.log()}") from None
    return seen[0]


@pytest.mark.parametrize(
    ("mode", "expected"),
    [
        ("connect_send", {"udp": 7, "tcp": 0}),  # c-ares's way
        ("sendto", {"udp": 5, "tcp": 0}),
        ("tcp", {"udp": 0, "tcp": 14}),  # 6 in awkward pieces, 5 in one write, 3 in 6 iovecs
        ("getaddrinfo", {"udp": 8, "tcp": 0}),  # glibc: A and AAAA in one sendmmsg, 4 times
    ],
)
def test_queries_counted_exactly_however_they_are_sent(mode, expected, send_hooks, tmp_path):
    count = {"connect_send": 7, "sendto": 5, "tcp": 6, "getaddrinfo": 4}[mode]
    with (
        PrivateDns(tmp_path, {NAME: ADDRESS}) as dns,
        watched_client(dns, tmp_path, [*CLIENT, mode, str(count), NAME]) as (_, running, _),
    ):
        assert assert_observer_saw_what_the_responder_received(running, dns) == expected


def test_single_request_mode_sends_a_and_aaaa_one_after_the_other(send_hooks, tmp_path):
    with (
        PrivateDns(tmp_path, {NAME: ADDRESS}, options=("single-request",)) as dns,
        watched_client(dns, tmp_path, [*CLIENT, "getaddrinfo", "3", NAME]) as (_, running, _),
    ):
        assert assert_observer_saw_what_the_responder_received(running, dns) == {"udp": 6, "tcp": 0}


def test_truncated_answers_fall_back_to_tcp(send_hooks, tmp_path):
    with (
        PrivateDns(tmp_path, {NAME: ADDRESS}, truncate_udp=True) as dns,
        watched_client(dns, tmp_path, [*CLIENT, "getaddrinfo", "2", NAME]) as (_, running, _),
    ):
        received = assert_observer_saw_what_the_responder_received(running, dns)
        assert received["udp"] > 0 and received["tcp"] > 0


def test_a_dropped_query_and_its_retry_are_both_counted(tmp_path):
    options = ("timeout:1", "attempts:2")
    with (
        PrivateDns(tmp_path, {NAME: ADDRESS}, options=options, drop_first=1) as dns,
        watched_client(dns, tmp_path, [*CLIENT, "getaddrinfo", "1", NAME]) as (_, running, _),
    ):
        received = assert_observer_saw_what_the_responder_received(running, dns)
        assert received["udp"] > 2  # A and AAAA, then again after the timeout


def unknown_socket_sends(running) -> float | None:
    return running.scrape().value("thread_observer_dns_unknown_socket_sends_total")


def test_a_udp_socket_connected_before_the_watch_is_counted_exactly(send_hooks, tmp_path):
    with (
        PrivateDns(tmp_path, {NAME: ADDRESS}) as dns,
        watched_client(dns, tmp_path, [*CLIENT, "early_connect_send", "6", NAME]) as (
            _,
            running,
            _,
        ),
    ):
        assert assert_observer_saw_what_the_responder_received(running, dns) == {"udp": 6, "tcp": 0}
        assert unknown_socket_sends(running) == 0


def test_a_tcp_stream_written_before_the_watch_is_an_unknown_socket_not_a_count(
    send_hooks, tmp_path
):
    with (
        PrivateDns(tmp_path, {NAME: ADDRESS}) as dns,
        watched_client(dns, tmp_path, [*CLIENT, "early_tcp", "4", NAME]) as (_, running, _),
    ):
        assert dns.received() == {"udp": 0, "tcp": 1 + 4}  # one before the watch, 4 after
        wait_until(lambda: unknown_socket_sends(running) == 4, 5, "4 unknown socket sends")
        assert queries_seen(running) == {"udp": 0, "tcp": 0}


def test_a_new_tcp_stream_on_a_reused_fd_starts_afresh(send_hooks, tmp_path):
    with (
        PrivateDns(tmp_path, {NAME: ADDRESS}) as dns,
        watched_client(dns, tmp_path, [*CLIENT, "tcp_on_a_reused_fd", "5", NAME]) as (
            _,
            running,
            truth,
        ),
    ):
        assert truth["messages_begun"] == 7
        assert dns.received() == {"udp": 0, "tcp": 6}  # the one left unfinished never arrives
        expected = {"udp": 0, "tcp": truth["messages_begun"]}
        wait_until(lambda: queries_seen(running) == expected, 5, f"{expected}")
        assert unknown_socket_sends(running) == 0


def test_aiodns_queries_from_c_ares(tmp_path):
    with (
        PrivateDns(tmp_path, {NAME: ADDRESS}) as dns,
        watched_client(dns, tmp_path, [*CLIENT, "aiodns", "9", NAME]) as (_, running, _),
    ):
        assert assert_observer_saw_what_the_responder_received(running, dns) == {"udp": 9, "tcp": 0}


def resolver_calls(running, target: str = "client") -> dict[str, int]:
    """Calls by function, callers added up; functions never called left out."""
    calls: dict[str, int] = {}
    for sample in running.scrape().samples:
        if (
            sample.name == "thread_observer_resolver_calls_total"
            and sample.labels["target"] == target
            and sample.value
        ):
            function = sample.labels["function"]
            calls[function] = calls.get(function, 0) + int(sample.value)
    return calls


# CPython's gethostbyname_ex calls getaddrinfo first (to check the name; glibc's getaddrinfo
# calls gethostbyname2_r from within, not counted again), then gethostbyname_r; gethostbyaddr
# of an address literal calls gethostbyaddr_r only; getnameinfo calls getaddrinfo, then
# getnameinfo (which calls glibc's gethostbyaddr_r in turn: from within, not counted).
@pytest.mark.parametrize(
    ("mode", "argument", "expected"),
    [
        ("gethostbyname_ex", NAME, {"getaddrinfo": 4, "gethostbyname_r": 4}),
        ("gethostbyaddr", ADDRESS, {"gethostbyaddr_r": 4}),
        ("getnameinfo", ADDRESS, {"getaddrinfo": 4, "getnameinfo": 4}),
    ],
)
def test_python_resolver_functions_counted_exactly(mode, argument, expected, tmp_path):
    with (
        PrivateDns(tmp_path, {NAME: ADDRESS}) as dns,
        watched_client(dns, tmp_path, [*CLIENT, mode, "4", argument]) as (_, running, _),
    ):
        assert_observer_saw_what_the_responder_received(running, dns)
        assert resolver_calls(running) == expected


NATIVE_BUILDS = {"glibc": ["gcc", "-O2"], "musl": ["musl-gcc", "-O2"]}
# Each function a different number of times, in the order of resolver_target.c.
NATIVE_CALLS = {
    "getaddrinfo": 2,
    "gethostbyname": 3,
    "gethostbyname_r": 4,
    "gethostbyname2": 5,
    "gethostbyname2_r": 6,
    "gethostbyaddr": 7,
    "gethostbyaddr_r": 8,
    "getnameinfo": 9,
    "res_query": 10,
    "res_search": 11,
}


def expected_native_calls(libc: str) -> dict[str, int]:
    """musl's res_search is its res_query (one address): counted under the first name."""
    if libc != "musl":
        return NATIVE_CALLS
    expected = {k: v for k, v in NATIVE_CALLS.items() if k != "res_search"}
    expected["res_query"] += NATIVE_CALLS["res_search"]
    return expected


@pytest.mark.parametrize("libc", list(NATIVE_BUILDS))
def test_native_resolver_functions_counted_exactly_per_function(libc, tmp_path):
    compiler = NATIVE_BUILDS[libc]
    if shutil.which(compiler[0]) is None:
        pytest.skip(f"{compiler[0]} is not installed (apt-get install musl-tools gcc)")
    binary = tmp_path / f"resolver-{libc}"
    subprocess.run([*compiler, "-o", str(binary), str(TARGETS / "resolver_target.c")], check=True)
    argv = [str(binary), NAME, ADDRESS, *map(str, NATIVE_CALLS.values())]
    with (
        PrivateDns(tmp_path, {NAME: ADDRESS}) as dns,
        watched_client(dns, tmp_path, argv, allow_non_python=True) as (_, running, truth),
    ):
        assert {k: v for k, v in truth.items() if k != "threads_started"} == NATIVE_CALLS
        assert_observer_saw_what_the_responder_received(running, dns)
        assert resolver_calls(running) == expected_native_calls(libc)


def test_aiohttp_with_async_resolver_puts_queries_on_the_wire_and_calls_no_libc(tmp_path):
    argv = [
        sys.executable,
        "-m",
        "workloads.aiohttp_aiodns",
        "--host",
        NAME,
        "--requests",
        "6",
        "--wait-stdin",
        "--linger",
        "60",
    ]
    with (
        PrivateDns(tmp_path, {NAME: "127.0.0.1"}) as dns,
        watched_client(dns, tmp_path, argv) as (_, running, truth),
    ):
        assert truth["responses_ok"] == 6 and truth["async_resolutions"] == 6
        assert truth["getaddrinfo_calls"] == 0
        received = assert_observer_saw_what_the_responder_received(running, dns)
        assert received["udp"] > 0
        assert resolver_calls(running) == {}  # not one libc lookup


def test_port_53_traffic_of_unwatched_processes_is_not_counted(tmp_path):
    with (
        PrivateDns(tmp_path, {NAME: ADDRESS}) as dns,
        watched_client(dns, tmp_path, [*CLIENT, "connect_send", "3", NAME]) as (_, running, _),
    ):
        wait_until(lambda: queries_seen(running) == {"udp": 3, "tcp": 0}, 5, "3 queries")
        unwatched = subprocess.run(
            dns.command([*CLIENT, "sendto", "5", NAME]),
            input="\n\n",
            capture_output=True,
            text=True,
            check=True,
        )
        assert '"count": 5' in unwatched.stdout
        assert dns.received() == {"udp": 8, "tcp": 0}
        assert queries_seen(running) == {"udp": 3, "tcp": 0}


def test_a_dns_server_target_does_not_count_its_answers_as_queries(tmp_path):
    with (
        PrivateDns(tmp_path, {NAME: ADDRESS}) as dns,
        observer(
            ["--pid", f"server={dns.responder.pid}", "--allow-non-python"], tmp_path
        ) as running,
    ):
        for mode in ("sendto", "tcp"):  # answers from port 53 over UDP and TCP
            subprocess.run(
                dns.command([*CLIENT, mode, "4", NAME]),
                input="\n\n",
                capture_output=True,
                text=True,
                check=True,
            )
        assert dns.received() == {"udp": 4, "tcp": 4 + 8}
        assert queries_seen(running, "server") == {"udp": 0, "tcp": 0}


def test_grpc_client_with_its_default_c_ares_resolver(tmp_path):
    pytest.importorskip("grpc", reason="grpcio is not installed (pip install grpcio)")
    with (
        PrivateDns(tmp_path, {NAME: "127.0.0.1"}) as dns,
        watched_client(dns, tmp_path, [*CLIENT, "grpc", "5", NAME]) as (_, running, _),
    ):
        received = assert_observer_saw_what_the_responder_received(running, dns)
        assert received["udp"] > 0
