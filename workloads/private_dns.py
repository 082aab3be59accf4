"""A private DNS set-up: a network namespace with only loopback, a DNS responder on
127.0.0.1:53 inside it that counts every query it receives, and a command prefix that runs a
program there with its own ``/etc/resolv.conf``, ``/etc/hosts`` and ``/etc/nsswitch.conf``.

No query can leave the machine: the namespace has no interface but ``lo`` (checked when it is
made), and the program's resolver configuration names only the responder.

    with PrivateDns(folder, answers={"service.test": "127.0.0.1"}) as dns:
        subprocess.run(dns.command(["python", "-c", "import socket; ..."]))
        dns.received()  # {"udp": 2, "tcp": 0}

The responder is ``python -m workloads.private_dns`` (dnslib): it answers A and PTR queries of
the names it is given (AAAA: no data; other names: NXDOMAIN), can answer UDP truncated (the
client retries over TCP) and drop the first UDP queries (the client retries after its
timeout). Each line on its stdin gets one JSON line of counts; EOF stops it. Needs root (ip
netns, mount) and Python 3.8+.
"""

from __future__ import annotations

import argparse
import json
import socket
import subprocess
import sys
import threading
import uuid
from pathlib import Path

# Mounts the given files over the resolver configuration, then runs the program: in the mount
# namespace that `ip netns exec` makes (propagation to the host is off there).
MOUNT_AND_RUN = (
    'mount --bind "$1" /etc/resolv.conf && mount --bind "$2" /etc/hosts && '
    'mount --bind "$3" /etc/nsswitch.conf && shift 3 && exec "$@"'
)


class PrivateDns:
    def __init__(
        self,
        folder: Path,
        answers: dict[str, str],
        options: tuple[str, ...] = (),
        truncate_udp: bool = False,
        drop_first: int = 0,
        hosts: dict[str, str] | None = None,
    ) -> None:
        self.folder = Path(folder)
        self.answers = answers
        self.options = options
        self.truncate_udp = truncate_udp
        self.drop_first = drop_first
        self.hosts = {"localhost": "127.0.0.1", **(hosts or {})}
        self.namespace = f"thread-observer-dns-{uuid.uuid4().hex[:8]}"
        self.responder: subprocess.Popen | None = None

    def __enter__(self) -> PrivateDns:
        subprocess.run(["ip", "netns", "add", self.namespace], check=True)
        try:
            subprocess.run(["ip", "-n", self.namespace, "link", "set", "lo", "up"], check=True)
            self._check_only_loopback()
            self._write_configuration()
            self._start_responder()
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, *exc) -> None:
        if self.responder is not None:
            self.responder.stdin.close()
            try:
                self.responder.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.responder.kill()
                self.responder.wait()
            self.responder.stdout.close()
            self.responder = None
        subprocess.run(["ip", "netns", "delete", self.namespace], check=False)

    def _check_only_loopback(self) -> None:
        links = json.loads(
            subprocess.run(
                ["ip", "-n", self.namespace, "-j", "link", "show"],
                capture_output=True,
                text=True,
                check=True,
            ).stdout
        )
        names = [link["ifname"] for link in links]
        if names != ["lo"]:
            raise RuntimeError(f"namespace {self.namespace} has {names}, not only lo")

    def _write_configuration(self) -> None:
        options = f"options {' '.join(self.options)}\n" if self.options else ""
        (self.folder / "resolv.conf").write_text(f"nameserver 127.0.0.1\n{options}")
        (self.folder / "hosts").write_text(
            "".join(f"{address} {name}\n" for name, address in self.hosts.items())
        )
        (self.folder / "nsswitch.conf").write_text("hosts: files dns\n")

    def _start_responder(self) -> None:
        command = [
            "ip",
            "netns",
            "exec",
            self.namespace,
            sys.executable,
            "-m",
            "workloads.private_dns",
        ]
        for name, address in self.answers.items():
            command += ["--answer", f"{name}={address}"]
        if self.truncate_udp:
            command.append("--truncate-udp")
        command += ["--drop-first", str(self.drop_first)]
        self.responder = subprocess.Popen(
            command,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            cwd=Path(__file__).resolve().parent.parent,
        )
        line = self.responder.stdout.readline()
        if not line or not json.loads(line).get("ready"):
            raise RuntimeError(f"the DNS responder did not start ({self.responder.poll()})")

    def command(self, argv: list[str]) -> list[str]:
        """``argv`` run inside the namespace with the private resolver configuration (the
        process keeps its PID through every exec)."""
        files = [str(self.folder / name) for name in ("resolv.conf", "hosts", "nsswitch.conf")]
        return [
            "ip",
            "netns",
            "exec",
            self.namespace,
            "sh",
            "-c",
            MOUNT_AND_RUN,
            "sh",
            *files,
            *argv,
        ]

    def received(self) -> dict[str, int]:
        """Queries the responder has received so far, by transport."""
        self.responder.stdin.write("\n")
        self.responder.stdin.flush()
        return json.loads(self.responder.stdout.readline())


# The responder, run inside the namespace.
class Responder:
    def __init__(self, answers: dict[str, str], truncate_udp: bool, drop_first: int) -> None:
        self.answers = {name.rstrip(".").lower(): address for name, address in answers.items()}
        self.pointers = {reverse_name(address): name for name, address in answers.items()}
        self.truncate_udp = truncate_udp
        self.drop_first = drop_first
        self.counts = {"udp": 0, "tcp": 0}
        self.lock = threading.Lock()

    def count(self, transport: str) -> int:
        with self.lock:
            self.counts[transport] += 1
            return self.counts[transport]

    def reply(self, data: bytes, over_udp: bool) -> bytes | None:
        from dnslib import PTR, QTYPE, RCODE, RR, A, DNSRecord  # the responder's only need

        request = DNSRecord.parse(data)
        reply = request.reply()
        name = str(request.q.qname).rstrip(".").lower()
        if over_udp and self.truncate_udp:
            reply.header.tc = 1
        elif request.q.qtype == QTYPE.A and name in self.answers:
            reply.add_answer(RR(request.q.qname, QTYPE.A, rdata=A(self.answers[name]), ttl=0))
        elif request.q.qtype == QTYPE.PTR and name in self.pointers:
            reply.add_answer(RR(request.q.qname, QTYPE.PTR, rdata=PTR(self.pointers[name]), ttl=0))
        elif name not in self.answers and name not in self.pointers:
            reply.header.rcode = RCODE.NXDOMAIN
        return reply.pack()

    def serve_udp(self, server: socket.socket) -> None:
        while True:
            data, client = server.recvfrom(4096)
            if self.count("udp") <= self.drop_first:
                continue
            server.sendto(self.reply(data, over_udp=True), client)

    def serve_tcp(self, server: socket.socket) -> None:
        while True:
            connection, _ = server.accept()
            threading.Thread(target=self.serve_connection, args=(connection,), daemon=True).start()

    def serve_connection(self, connection: socket.socket) -> None:
        with connection:
            while True:
                head = receive_exactly(connection, 2)
                if head is None:
                    return
                message = receive_exactly(connection, int.from_bytes(head, "big"))
                if message is None:
                    return
                self.count("tcp")
                answer = self.reply(message, over_udp=False)
                connection.sendall(len(answer).to_bytes(2, "big") + answer)


def receive_exactly(connection: socket.socket, size: int) -> bytes | None:
    data = b""
    while len(data) < size:
        chunk = connection.recv(size - len(data))
        if not chunk:
            return None
        data += chunk
    return data


def reverse_name(address: str) -> str:
    return ".".join(reversed(address.split("."))) + ".in-addr.arpa"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="a counting DNS responder on 127.0.0.1:53")
    parser.add_argument("--answer", action="append", default=[], metavar="NAME=ADDRESS")
    parser.add_argument("--truncate-udp", action="store_true")
    parser.add_argument("--drop-first", type=int, default=0)
    args = parser.parse_args(argv)
    responder = Responder(
        dict(a.split("=", 1) for a in args.answer), args.truncate_udp, args.drop_first
    )
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind(("127.0.0.1", 53))
    tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    tcp.bind(("127.0.0.1", 53))
    tcp.listen(16)
    threading.Thread(target=responder.serve_udp, args=(udp,), daemon=True).start()
    threading.Thread(target=responder.serve_tcp, args=(tcp,), daemon=True).start()
    print(json.dumps({"ready": True}), flush=True)
    for _ in sys.stdin:
        with responder.lock:
            print(json.dumps(responder.counts), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
