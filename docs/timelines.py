"""Draws the README's timelines with thread-observer itself (as root).

The same client on asyncio and on uvloop: 30 requests to ``localhost``, at most 3 in flight,
each resolving the name and opening a new connection to a local HTTP server. The server runs
beside the recording, so the pictures hold the client's threads only.

    sudo .venv/bin/python docs/timelines.py
"""

import subprocess
import sys
from pathlib import Path

from workloads.servers import http_server

ROOT = Path(__file__).resolve().parent.parent

TITLE = "{loop}: 30 requests to localhost, 3 in flight, a new connection each"


def main() -> int:
    with http_server() as port:
        for loop in ("asyncio", "uvloop"):
            output = ROOT / "docs" / f"timeline-{loop}.png"
            subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "thread_observer",
                    "timeline",
                    "--output",
                    str(output),
                    "--title",
                    TITLE.format(loop=loop),
                    "--",
                    sys.executable,
                    "-m",
                    "workloads.semaphore_burst",
                    "--loop",
                    loop,
                    "--requests",
                    "30",
                    "--concurrency",
                    "3",
                    "--port",
                    str(port),
                ],
                cwd=ROOT,
                check=True,
                stdout=subprocess.DEVNULL,
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
