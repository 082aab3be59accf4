"""``python tests/with_two_live_thread_slots.py PYTHON -m thread_observer ARGS``: the observer
with two live-thread slots (python_stack.h) instead of thousands, so that most new threads find
their slot held and are kept in the map instead. A prefix for tests.harness's observer command."""

import sys
from pathlib import Path

# This checkout's observer, as `python -m thread_observer` run from it would import.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from thread_observer import bpf_backend  # noqa: E402
from thread_observer.cli import main  # noqa: E402

SLOTS = 2
every_cflag = bpf_backend.bpf_cflags


def two_slots(*args, **kwargs) -> list[str]:
    return [
        f"-DLIVE_THREAD_SLOTS={SLOTS}" if flag.startswith("-DLIVE_THREAD_SLOTS=") else flag
        for flag in every_cflag(*args, **kwargs)
    ]


bpf_backend.bpf_cflags = two_slots
sys.exit(main(sys.argv[4:]))
