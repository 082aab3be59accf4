"""A bare HTTP/1.0 GET over asyncio streams, for scenarios that must run on the stdlib alone."""

import asyncio

from workloads.loops import close_writer


async def http_get(host, port, path="/") -> int:
    """GET ``path`` from ``host`` (an address: resolving is the caller's business); the status."""
    reader, writer = await asyncio.open_connection(host, port)
    try:
        request = f"GET {path} HTTP/1.0\r\nHost: {host}\r\nConnection: close\r\n\r\n"
        writer.write(request.encode("ascii"))
        await writer.drain()
        response = await reader.read()
    finally:
        await close_writer(writer)
    return int(response.split(b" ", 2)[1])
