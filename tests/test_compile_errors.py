"""Compile and load failures summarised to one line that names the kernel feature behind them:
real texts that bcc wrote on Debian's 6.1, 6.12 and this machine's kernel."""

from __future__ import annotations

import os

import pytest

from thread_observer.compile_errors import captured_stderr, summarize

GROUP_DEAD = """\
/virtual/main.c:1270:15: error: no member named 'group_dead' in 'struct tracepoint__sched__sched_process_exit'
    if (args->group_dead)
        ~~~~  ^
1 error generated.
"""
GET_CURRENT = """\
In file included from /virtual/main.c:2:
<built-in>:329:33: note: expanded from here
/virtual/main.c:876:10: error: conflicting types for 'get_current'
    u64 *current = watch_epoch.lookup(&zero);
4 warnings and 1 error generated.
"""
UNBOUNDED = """\
bpf: Failed to load program: Permission denied
0: R1=ctx(off=0,imm=0) R10=fp0
151: (db) lock *(u64 *)(r1 +32) += r3
R1 unbounded memory access, make sure to bounds check any such access
processed 124 insns (limit 1000000) max_states_per_insn 0 total_states 9 peak_states 9 mark_read 8
"""
UNKNOWN_HELPER = """\
bpf: Failed to load program: Invalid argument
0: (85) call bpf_get_attach_cookie#174
unknown func bpf_get_attach_cookie#174
processed 1 insns (limit 1000000) max_states_per_insn 0 total_states 0 peak_states 0 mark_read 0
"""


@pytest.mark.parametrize(
    ("text", "summary"),
    [
        (
            GROUP_DEAD,
            "no member named 'group_dead' in 'struct tracepoint__sched__sched_process_exit': "
            "this kernel's sched:sched_process_exit tracepoint has no field group_dead",
        ),
        (GET_CURRENT, "conflicting types for 'get_current'"),
        (
            UNBOUNDED,
            "the kernel's verifier refused a program: R1 unbounded memory access, make sure to "
            "bounds check any such access",
        ),
        (
            UNKNOWN_HELPER,
            "unknown func bpf_get_attach_cookie#174: this kernel has no helper "
            "bpf_get_attach_cookie#174",
        ),
        ("warning: something harmless\n", None),
    ],
    ids=["missing-field", "clang-error", "verifier", "helper", "none"],
)
def test_the_first_error_and_its_kernel_feature(text, summary):
    assert summarize(text) == summary


def test_captured_text_is_read_and_then_passed_on(capfd):
    with captured_stderr() as read:
        os.write(2, b"from C++\n")
        assert read() == "from C++\n"
    assert capfd.readouterr().err == "from C++\n"
