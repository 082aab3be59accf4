"""A small HTTP server on loopback for the workloads to fetch: aiohttp's when importable.

On interpreters without aiohttp (the stdlib scenarios run on 3.6 too) it falls back to a
minimal asyncio server. It prints ``{"port": N}`` once listening, and serves until SIGTERM,
SIGINT or, with ``--exit-on-stdin-eof``, until its parent closes stdin or dies.

examples:
  python -m workloads.http_server --port 0
  python -m workloads.http_server --impl asyncio --port 8080
"""

import argparse
import asyncio
import json
import os
import signal
import sys

BODY = b"ok\n"


def build_parser():
    parser = argparse.ArgumentParser(
        prog="python -m workloads.http_server",
        description=__doc__.split("\n\n")[0],
        epilog=__doc__.split("\n\n", 2)[2],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port (default)")
    parser.add_argument("--impl", choices=("auto", "aiohttp", "asyncio"), default="auto")
    parser.add_argument("--exit-on-stdin-eof", action="store_true")
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    impl = args.impl
    if impl == "auto":
        impl = "aiohttp" if _has_aiohttp() else "asyncio"
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    try:
        loop.run_until_complete(_serve(args, impl))
    finally:
        loop.close()
    return 0


async def _serve(args, impl) -> None:
    loop = asyncio.get_event_loop()
    stopped = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stopped.set)
    if args.exit_on_stdin_eof:
        _stop_on_stdin_eof(loop, stopped)
    start = _start_aiohttp if impl == "aiohttp" else _start_asyncio
    port, stop = await start(args.host, args.port)
    print(json.dumps({"port": port, "impl": impl, "pid": os.getpid()}), flush=True)
    try:
        await stopped.wait()
    finally:
        await stop()


def _stop_on_stdin_eof(loop, stopped) -> None:
    fd = sys.stdin.fileno()

    def on_readable():
        if not os.read(fd, 4096):
            loop.remove_reader(fd)
            stopped.set()

    loop.add_reader(fd, on_readable)


async def _start_aiohttp(host, port):
    from aiohttp import web

    async def hello(request):
        return web.Response(body=BODY, content_type="text/plain")

    app = web.Application()
    app.router.add_get("/", hello)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    return runner.addresses[0][1], runner.cleanup


async def _start_asyncio(host, port):
    server = await asyncio.start_server(_answer, host, port)

    async def stop():
        server.close()
        await server.wait_closed()

    return server.sockets[0].getsockname()[1], stop


async def _answer(reader, writer) -> None:
    try:
        while (await reader.readline()) not in (b"\r\n", b"\n", b""):
            pass
        head = "HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n"
        head += "Connection: close\r\n\r\n"
        writer.write(head.format(len(BODY)).encode("ascii") + BODY)
        await writer.drain()
    except ConnectionError:
        pass
    finally:
        writer.close()


def _has_aiohttp() -> bool:
    try:
        import aiohttp  # noqa: F401
    except ImportError:
        return False
    return True


if __name__ == "__main__":
    sys.exit(main())
