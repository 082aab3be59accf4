// Which syscall the current task is in, and its arguments, from the user registers its entry
// into the kernel saved at the top of its kernel stack (bpf_task_pt_regs, Linux 5.15+ with
// BTF). A program on a tracepoint that is no syscall's (the scheduler's, a socket's) can so tell
// which syscall it fires in without a syscall tracepoint, which, while attached, sends every
// syscall of every task on the host through the kernel's slower path.
//
// x86-64 only: observer/bpf_backend.py (socket_hooks) uses these programs there, and the
// syscall tracepoints elsewhere.
#ifndef THREAD_OBSERVER_CURRENT_SYSCALL_H
#define THREAD_OBSERVER_CURRENT_SYSCALL_H

#include <asm/unistd.h>

#define NOT_A_SYSCALL ((u64)-1)

static __always_inline struct pt_regs *current_user_regs(void)
{
    return (struct pt_regs *)bpf_task_pt_regs(bpf_get_current_task_btf());
}

// The syscall number (orig_ax). Only meaningful while the task is inside a syscall: a task
// switched out in an interrupt or a fault has its vector or error code there, so callers
// look only where a syscall is certain (a voluntary sleep, a socket's send).
static __always_inline u64 syscall_number(struct pt_regs *regs)
{
    u64 number = NOT_A_SYSCALL;
    bpf_probe_read_kernel(&number, sizeof(number), &regs->orig_ax);
    return number;
}

// Argument `index` (0 to 5) of the syscall in progress, by the x86-64 syscall convention.
static __always_inline u64 syscall_argument(struct pt_regs *regs, int index)
{
    u64 value = 0;
    void *where = index == 0   ? (void *)&regs->di
                  : index == 1 ? (void *)&regs->si
                  : index == 2 ? (void *)&regs->dx
                  : index == 3 ? (void *)&regs->r10
                  : index == 4 ? (void *)&regs->r8
                               : (void *)&regs->r9;
    bpf_probe_read_kernel(&value, sizeof(value), where);
    return value;
}

#endif
