// Which syscall the current task is in, and its arguments, from the user registers its entry
// into the kernel saved at the top of its kernel stack (bpf_task_pt_regs, Linux 5.15+ with
// BTF). A program on a tracepoint that is no syscall's (the scheduler's, a socket's) can so tell
// which syscall it fires in without a syscall tracepoint, which, while attached, sends every
// syscall of every task on the host through the kernel's slower path.
//
// x86-64 only: thread_observer/bpf_backend.py (choose_hooks) uses these programs there, and the
// syscall tracepoints elsewhere.
#ifndef THREAD_OBSERVER_CURRENT_SYSCALL_H
#define THREAD_OBSERVER_CURRENT_SYSCALL_H

#include <asm/unistd.h>

static __always_inline struct pt_regs *current_user_regs(void)
{
    return (struct pt_regs *)bpf_task_pt_regs(bpf_get_current_task_btf());
}

// The syscall number (orig_ax). Only meaningful while the task is inside a syscall: a task
// switched out in an interrupt or a fault has its vector or error code there, so callers
// look only where a syscall is certain (a voluntary sleep, a socket's send). The registers are
// read directly (bpf_task_pt_regs's pointer is typed by the kernel's BTF; the verifier makes
// the loads fault-safe): about 50 ns less per run than bpf_probe_read_kernel, on every context
// switch of the host.
static __always_inline u64 syscall_number(struct pt_regs *regs)
{
    return regs->orig_ax;
}

// Argument `index` (0 to 5) of the syscall in progress, by the x86-64 syscall convention.
static __always_inline u64 syscall_argument(struct pt_regs *regs, int index)
{
    return index == 0   ? regs->di
           : index == 1 ? regs->si
           : index == 2 ? regs->dx
           : index == 3 ? regs->r10
           : index == 4 ? regs->r8
                        : regs->r9;
}

#endif
