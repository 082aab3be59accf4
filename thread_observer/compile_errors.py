"""What went wrong when bcc compiled or loaded a probe, in one line that names the kernel
feature behind it.

bcc writes clang's diagnostics and the verifier's log to the process's stderr (file descriptor
2, from C++), and raises a bare Exception that says only "Failed to compile BPF module". The
compile runs with fd 2 captured; the text is passed on to stderr unchanged, and summarised.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
import tempfile
from collections.abc import Callable, Iterator

# clang: a field the running kernel's tracepoint format does not have (bcc builds the
# tracepoint's struct from that format file).
MISSING_FIELD = re.compile(
    r"no member named '(?P<field>\w+)' in 'struct tracepoint__(?P<system>\w+?)__(?P<event>\w+)'"
)
CLANG_ERROR = re.compile(
    r"^(?:/virtual/main\.c|<\w[^>]*>|[\w/.-]+):\d+:\d+: (?:fatal )?error: (?P<text>.*)$"
)
# The verifier's log ends with the instruction count; the line before says why it refused.
VERIFIER_END = re.compile(r"^processed \d+ insns")
UNKNOWN_HELPER = re.compile(r"(?:unknown func|invalid func) (?P<helper>\S+)")


def summarize(text: str) -> str | None:
    """The first error of a compile or load, and the kernel feature behind it where known;
    None when the text holds none."""
    lines = text.splitlines()
    for line in lines:
        match = CLANG_ERROR.match(line.strip())
        if match is None:
            continue
        missing = MISSING_FIELD.search(match["text"])
        if missing:
            return (
                f"{match['text']}: this kernel's {missing['system']}:{missing['event']} "
                f"tracepoint has no field {missing['field']}"
            )
        return match["text"]
    for index, line in enumerate(lines):
        if VERIFIER_END.match(line) and index > 0:
            reason = lines[index - 1].strip()
            helper = UNKNOWN_HELPER.search(reason)
            if helper:
                return f"{reason}: this kernel has no helper {helper['helper']}"
            return f"the kernel's verifier refused a program: {reason}"
    return None


@contextlib.contextmanager
def captured_stderr() -> Iterator[Callable[[], str]]:
    """File descriptor 2 into a temporary file for the block; yields a function that reads
    what was written so far. Afterwards the text goes on to the real stderr, so nothing that
    bcc or another thread wrote meanwhile is lost."""
    with tempfile.TemporaryFile() as capture:
        sys.stderr.flush()
        saved = os.dup(2)
        os.dup2(capture.fileno(), 2)

        def read() -> str:
            capture.seek(0)
            return capture.read().decode(errors="replace")

        try:
            yield read
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            os.write(2, read().encode())
