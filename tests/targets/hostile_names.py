"""A target that resolves many distinct hostile host names: quotes, backslashes, newlines,
invalid UTF-8, very long ones. Run it where /etc/nsswitch.conf says ``hosts: files`` so that
every lookup fails locally (EAI_NONAME) and no query leaves the machine.

Handshake as the workloads: a ready line with the pid, a line on stdin to start, the ground
truth as JSON, then it waits for stdin to close.
"""

import json
import os
import socket
import sys
from collections import Counter


def hostile_names(count: int) -> list[bytes]:
    shapes = [
        b'quote"%d"',
        b"back\\slash\\%d",
        b"new\nline%d",
        b"\xff\xfe-not-utf8-%d",
        b'{label="x"} %d 1',
        b"%d" + b"x" * 300,
    ]
    return [shapes[i % len(shapes)].replace(b"%d", str(i).encode()) for i in range(count)]


def main() -> int:
    count = int(sys.argv[1]) if len(sys.argv) > 1 else 1000
    print(json.dumps({"ready": True, "pid": os.getpid()}), flush=True)
    sys.stdin.readline()
    errors = Counter()
    for name in hostile_names(count):
        try:
            socket.getaddrinfo(name, 80)
        except socket.gaierror as error:
            errors[error.errno] += 1
    names = {code: name for name, code in vars(socket).items() if name.startswith("EAI_")}
    print(
        json.dumps(
            {
                "threads_started": 0,
                "getaddrinfo_calls": count,
                "getaddrinfo_errors": {names[c]: n for c, n in errors.items()},
            }
        ),
        flush=True,
    )
    sys.stdin.read()
    return 0


if __name__ == "__main__":
    sys.exit(main())
