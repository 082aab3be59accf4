// Uprobe programs run with preemption off where the kernel lets a program say so.
//
// The kernel runs a uprobe program (plain or uprobe_multi) under migrate_disable only, outside
// the per-CPU bpf_prog_active guard of kprobes and tracepoints. On a kernel that preempts
// kernel code (PREEMPT, and PREEMPT_LAZY, the default of Linux 6.13+ builds such as Debian's
// 7.x), another thread on the same CPU can then run the same program before the first one
// ends. Both share what is per CPU: the per-CPU scratch maps of python_stack.h, and, since
// 6.13, the program's own stack (a program with a large stack gets a per-CPU private stack).
// A kernel oops was seen that way (a pointer spilled to that stack overwritten by another run
// of resolver_session). Every uprobe program therefore runs its body between the
// bpf_preempt_disable and bpf_preempt_enable kfuncs (Linux 6.10+).
//
// bcc 0.26 cannot call kfuncs: the two calls are compiled as calls to helpers with
// placeholder numbers, which thread_observer/preemption.py rewrites into kfunc calls (the
// kernel's BTF id of each function) before any program is loaded.
//
// Parameters (-D cflags from thread_observer/preemption.py): PREEMPT_GUARD (1 where the kernel
// has the kfuncs), and then PREEMPT_DISABLE_PLACEHOLDER and PREEMPT_ENABLE_PLACEHOLDER.
#ifndef THREAD_OBSERVER_PREEMPTION_H
#define THREAD_OBSERVER_PREEMPTION_H

#ifndef PREEMPT_GUARD
#error "PREEMPT_GUARD must be given as a -D cflag by thread_observer/preemption.py"
#endif

#if PREEMPT_GUARD
#if !defined(PREEMPT_DISABLE_PLACEHOLDER) || !defined(PREEMPT_ENABLE_PLACEHOLDER)
#error "the placeholders come from thread_observer/preemption.py with PREEMPT_GUARD"
#endif
static void (*preempt_guard_disable)(void) = (void *)PREEMPT_DISABLE_PLACEHOLDER;
static void (*preempt_guard_enable)(void) = (void *)PREEMPT_ENABLE_PLACEHOLDER;
#define PREEMPT_OFF() preempt_guard_disable()
#define PREEMPT_ON() preempt_guard_enable()
#else
#define PREEMPT_OFF()
#define PREEMPT_ON()
#endif

// A uprobe program NAME whose work is BODY(ctx) (an __always_inline function returning int):
// every return of BODY passes through PREEMPT_ON, which the verifier checks.
#define UPROBE_PROGRAM(NAME, BODY)     \
    int NAME(struct pt_regs *ctx)      \
    {                                  \
        PREEMPT_OFF();                 \
        int guarded_result = BODY(ctx); \
        PREEMPT_ON();                  \
        return guarded_result;         \
    }

#endif
