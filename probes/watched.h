// The set of watched processes, shared by every probe: filtering happens here, in the kernel,
// so events of other processes cost one hash lookup and nothing in user space.
//
// Every watched process has a generation (the time it was first seen, never 0), and every
// counter's key carries it: when a PID is reused, the new process's counts never mix with the
// old one's, even before user space has noticed the old one is gone.
//
// A target is a process tree: a process forked by a watched one is watched at once, in the
// kernel, with its parent's target (FOLLOW_CHILDREN), so that it is counted from its first
// instruction even if it lives a millisecond. User space keeps the target names; the kernel
// only hands a target's number down.
//
// Parameters (-D cflags): STATE_PENDING, STATE_WATCHED, STATE_EXITED, MAX_PROCESSES,
// MAX_NEW_CHILDREN and TRACK_NEW_PROCESSES from thread_observer/constants.py (bpf_cflags),
// FOLLOW_CHILDREN from the program that includes this file, and PIDNS_DEV/PIDNS_INO from
// thread_observer/bpf_backend.py (pid_namespace_cflags) when the observer runs in a PID namespace of
// its own (a container), so that ids match what it sees in /proc.
#ifndef THREAD_OBSERVER_WATCHED_H
#define THREAD_OBSERVER_WATCHED_H

#include <uapi/linux/ptrace.h>
#include "preemption.h"

#ifndef MAX_PROCESSES
#error "MAX_PROCESSES must be given as a -D cflag by thread_observer/constants.py"
#endif
#ifndef EXIT_GROUP_DEAD_FIELD
#error "EXIT_GROUP_DEAD_FIELD must be given as a -D cflag by thread_observer/bpf_backend.py"
#endif
#ifndef STATE_PENDING
#error "STATE_PENDING must be given as a -D cflag by thread_observer/constants.py"
#endif
#ifndef STATE_WATCHED
#error "STATE_WATCHED must be given as a -D cflag by thread_observer/constants.py"
#endif
#ifndef STATE_EXITED
#error "STATE_EXITED must be given as a -D cflag by thread_observer/constants.py"
#endif
#ifndef TRACK_NEW_PROCESSES
#error "TRACK_NEW_PROCESSES must be given as a -D cflag by thread_observer/constants.py"
#endif
#ifndef FOLLOW_CHILDREN
#error "FOLLOW_CHILDREN must be given as a -D cflag (0 or 1) by the program's loader"
#endif
#ifndef MAX_NEW_CHILDREN
#error "MAX_NEW_CHILDREN must be given as a -D cflag by thread_observer/constants.py"
#endif

struct watched_process {
    u32 state;  // PENDING: counted from its start, until user space has read its command
                // line and decided whether a target matches it
    u32 target;  // the observer's number for its target; 0 while none is decided
    u64 generation;
    u32 parent;  // for a child watched since its fork: its parent's process id, else 0
    u32 reserved;
};

// The key of per-process counters.
struct process_key {
    u32 tgid;
    u32 reserved;
    u64 generation;
};

BPF_HASH(watched_tgids, u32, struct watched_process, MAX_PROCESSES);
#ifdef PIDNS_INO
// Host id of a forked child -> the watch it inherits, until the child runs.
BPF_TABLE("lru_hash", u32, struct watched_process, forked_children, MAX_NEW_CHILDREN);
#endif
// Children of watched processes that could not be watched (the watched set was full).
BPF_ARRAY(children_not_watched_total, u64, 1);

// Process and thread ids as the observer sees them: 0 for tasks outside its PID namespace.
static __always_inline u64 current_pid_tgid(void)
{
#ifdef PIDNS_INO
    struct bpf_pidns_info ns = {};
    if (bpf_get_ns_current_pid_tgid(PIDNS_DEV, PIDNS_INO, &ns, sizeof(ns)))
        return 0;
    return ((u64)ns.tgid << 32) | ns.pid;
#else
    return bpf_get_current_pid_tgid();
#endif
}

// The process's generation, or 0 when it is not watched.
static __always_inline u64 watched_generation(u32 tgid)
{
    struct watched_process *process = watched_tgids.lookup(&tgid);
    return process ? process->generation : 0;
}

static __always_inline int is_watched(u32 tgid)
{
    return watched_generation(tgid) != 0;
}

// A process that starts a program (or is forked from a watched one) becomes pending. A new
// process, or one whose PID belonged to an exited process, gets a new generation.
static __always_inline void mark_pending(u32 tgid, int new_process)
{
    struct watched_process *old = watched_tgids.lookup(&tgid);
    struct watched_process process = {.state = STATE_PENDING};
    if (old && !new_process && old->state != STATE_EXITED)
        process.generation = old->generation;
    else
        process.generation = bpf_ktime_get_ns();
    watched_tgids.update(&tgid, &process);
}

static __always_inline void count_child_not_watched(void)
{
    u32 zero = 0;
    u64 *count = children_not_watched_total.lookup(&zero);
    if (count)
        __sync_fetch_and_add(count, 1);
}

// A fork of a watched process with a target: the child is watched with that target from its
// first instruction, under a generation of its own. Called in the parent (task:task_newtask),
// where child_pid is the child's id in the host's PID namespace. Returns 0 when the parent has
// no target to hand down.
static __always_inline int inherit_watch(u32 parent_tgid, struct watched_process *parent,
                                         u32 child_pid)
{
    if (!FOLLOW_CHILDREN || !parent->target || parent->state == STATE_EXITED)
        return 0;
    struct watched_process child = {
        .state = STATE_WATCHED, .target = parent->target, .generation = bpf_ktime_get_ns(),
        .parent = parent_tgid,
    };
#ifdef PIDNS_INO
    // The child's id in our namespace is not known here: it takes its watch before it first
    // runs (processes.bpf.c, adopt).
    if (forked_children.update(&child_pid, &child))
#else
    if (watched_tgids.update(&child_pid, &child))
#endif
        count_child_not_watched();
    return 1;
}

// A kernel word (a pointer, an unsigned long) at an address; 0 when it cannot be read.
static __always_inline u64 kernel_pointer(u64 address)
{
    u64 value = 0;
    bpf_probe_read_kernel(&value, sizeof(value), (void *)address);
    return value;
}

// Whether the thread ending at sched_process_exit is its process's last. Kernels newer than
// 6.12 say so in the tracepoint (group_dead); before, do_exit has already taken the thread off
// its signal_struct's live count (kernel/exit.c: atomic_dec_and_test(&tsk->signal->live)
// comes before trace_sched_process_exit), so a count of 0 says the same. Without the kernel's
// BTF to place those fields, the main thread's end stands for the process's.
#if EXIT_GROUP_DEAD_FIELD
#define GROUP_DEAD(args) ((args)->group_dead)
#elif defined(TASK_STRUCT_SIGNAL)
static __always_inline int group_dead_from_signal(void)
{
    u64 signal = kernel_pointer(bpf_get_current_task() + TASK_STRUCT_SIGNAL);
    int live = 1;
    if (signal)
        bpf_probe_read_kernel(&live, sizeof(live), (void *)(signal + SIGNAL_STRUCT_LIVE));
    return live == 0;
}
#define GROUP_DEAD(args) group_dead_from_signal()
#else
#define GROUP_DEAD(args) ((u32)bpf_get_current_pid_tgid() == bpf_get_current_pid_tgid() >> 32)
#endif

#endif
