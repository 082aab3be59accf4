"""``python tests/with_syscall_tracepoints.py PYTHON -m thread_observer ARGS``: the observer as on a
kernel without the raw tracepoints it prefers (before 5.15, without BTF, not x86-64, or without
sock_send_length and tcp_sendmsg_locked), where the epoll mark and the DNS probe use the
syscalls' tracepoints, and in a PID namespace a forked child takes its id at its first return
from the clone. A prefix for tests.harness's observer command."""

import sys
from pathlib import Path

# This checkout's observer, as `python -m thread_observer` run from it would import.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from thread_observer import bpf_backend  # noqa: E402
from thread_observer.cli import main  # noqa: E402

bpf_backend.choose_hooks = lambda btf: bpf_backend.SYSCALL_HOOKS
bpf_backend.forked_child_cflags = lambda btf: (
    ["-DCHILD_AT_FORK=0"] if bpf_backend.in_pid_namespace() else []
)
sys.exit(main(sys.argv[4:]))
