"""A target that resolves in one of many ways, with the handshake of the harness: a ready
line, a line on stdin, then the work, then a JSON line with what it did, then it waits for
stdin to close. Run inside workloads.private_dns's namespace.

    python -m tests.targets.dns_client MODE COUNT [NAME]
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import sys

RESPONDER = ("127.0.0.1", 53)


def query(name: str, qtype: str = "A") -> bytes:
    from dnslib import DNSRecord

    return DNSRecord.question(name, qtype).pack()


def connect_send(count: int, name: str) -> None:
    """c-ares's way: a connected UDP socket, send and recv."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
        udp.connect(RESPONDER)
        for _ in range(count):
            udp.send(query(name))
            udp.recv(4096)


def sendto(count: int, name: str) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
        for _ in range(count):
            udp.sendto(query(name), RESPONDER)
            udp.recvfrom(4096)


def tcp(count: int, name: str) -> None:
    """DNS over TCP written in awkward pieces: the length prefix split from its message, split
    in two; then five messages in one write, then three in six iovecs: count + 8 messages."""
    with socket.create_connection(RESPONDER) as stream:
        messages = [query(name) for _ in range(count)]
        framed = [len(m).to_bytes(2, "big") + m for m in messages]
        for index, message in enumerate(framed):
            if index % 3 == 0:
                stream.sendall(message[:1])
                stream.sendall(message[1:])
            elif index % 3 == 1:
                stream.sendmsg([message[:2], message[2:]])
            else:
                stream.sendall(message)
        receive_answers(stream, count)
        stream.sendall(b"".join(framed[i % count] for i in range(5)))
        receive_answers(stream, 5)
        pieces = [
            piece for i in range(3) for piece in (framed[i % count][:2], framed[i % count][2:])
        ]
        stream.sendmsg(pieces)
        receive_answers(stream, 3)


def framed(name: str) -> bytes:
    message = query(name)
    return len(message).to_bytes(2, "big") + message


def tcp_on_a_reused_fd(count: int, name: str) -> dict:
    """A stream left inside a message (its length prefix written, its body never), closed; then
    a new stream on the same fd with count messages. Returns the messages begun: count + 2."""
    with socket.create_connection(RESPONDER) as first:
        first.sendall(framed(name))
        receive_answers(first, 1)
        first.sendall(len(query(name)).to_bytes(2, "big"))
        fd = first.fileno()
    with socket.create_connection(RESPONDER) as second:
        assert second.fileno() == fd, "the new stream did not get the closed one's fd"
        for _ in range(count):
            second.sendall(framed(name))
        receive_answers(second, count)
    return {"messages_begun": count + 2}


def opened_before(mode: str, name: str):
    """The socket of an early_* mode, connected to the responder and, for TCP, written to,
    before the ready line (before any observer watches the process)."""
    if mode == "early_connect_send":
        udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        udp.connect(RESPONDER)
        return udp
    if mode == "early_tcp":
        stream = socket.create_connection(RESPONDER)
        stream.sendall(framed(name))
        receive_answers(stream, 1)
        return stream
    return None


def early_connect_send(count: int, name: str, udp: socket.socket) -> None:
    with udp:
        for _ in range(count):
            udp.send(query(name))
            udp.recv(4096)


def early_tcp(count: int, name: str, stream: socket.socket) -> None:
    with stream:
        for _ in range(count):
            stream.sendall(framed(name))
        receive_answers(stream, count)


def receive_answers(stream: socket.socket, count: int) -> None:
    for _ in range(count):
        size = int.from_bytes(stream.recv(2, socket.MSG_WAITALL), "big")
        stream.recv(size, socket.MSG_WAITALL)


def getaddrinfo(count: int, name: str) -> None:
    for _ in range(count):
        socket.getaddrinfo(name, 80, type=socket.SOCK_STREAM)


def gethostbyname_ex(count: int, name: str) -> None:
    for _ in range(count):
        socket.gethostbyname_ex(name)


def gethostbyaddr(count: int, address: str) -> None:
    for _ in range(count):
        socket.gethostbyaddr(address)


def getnameinfo(count: int, address: str) -> None:
    for _ in range(count):
        socket.getnameinfo((address, 80), 0)


def aiodns_queries(count: int, name: str) -> None:
    import aiodns

    async def run():
        resolver = aiodns.DNSResolver(nameservers=[RESPONDER[0]])
        for _ in range(count):
            await resolver.query_dns(name, "A")

    asyncio.run(run())


def grpc_calls(count: int, name: str) -> None:
    """A grpcio client with its default resolver (c-ares), a new channel per call, to a server
    in this process."""
    from concurrent import futures

    import grpc

    def echo(request, context):
        return request

    handler = grpc.method_handlers_generic_handler(
        "Echo", {"Call": grpc.unary_unary_rpc_method_handler(echo)}
    )
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2), handlers=[handler])
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    for _ in range(count):
        with grpc.insecure_channel(f"{name}:{port}") as channel:
            assert channel.unary_unary("/Echo/Call")(b"ping", timeout=10) == b"ping"
    server.stop(None)


MODES = {
    "connect_send": connect_send,
    "sendto": sendto,
    "tcp": tcp,
    "getaddrinfo": getaddrinfo,
    "gethostbyname_ex": gethostbyname_ex,
    "gethostbyaddr": gethostbyaddr,
    "getnameinfo": getnameinfo,
    "aiodns": aiodns_queries,
    "grpc": grpc_calls,
    "tcp_on_a_reused_fd": tcp_on_a_reused_fd,
}
# Modes that use a socket made before the ready line (opened_before).
EARLY_MODES = {"early_connect_send": early_connect_send, "early_tcp": early_tcp}


def main() -> int:
    mode, count, name = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    early = opened_before(mode, name)
    print(json.dumps({"ready": True, "pid": os.getpid()}), flush=True)
    sys.stdin.readline()
    if mode in EARLY_MODES:
        done = EARLY_MODES[mode](count, name, early)
    else:
        done = MODES[mode](count, name)
    print(
        json.dumps({"threads_started": 0, "mode": mode, "count": count, **(done or {})}), flush=True
    )
    sys.stdin.read()
    return 0


if __name__ == "__main__":
    sys.exit(main())
