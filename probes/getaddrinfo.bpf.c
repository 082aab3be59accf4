// getaddrinfo: calls, latency (log2 histogram), failures by EAI_* code, and whether the call
// was made on an event loop: a coroutine on the caller's Python stack (python_stack.h), or,
// where the frames cannot be read, a thread that has waited in epoll_wait/epoll_pwait/
// epoll_pwait2 (the epoll mark: where the kernel allows, a thread that has slept in one, seen
// at the scheduler's switch; else any call, seen at the syscalls' tracepoints).
//
// One program, getaddrinfo_session, runs at entry and at return (a uprobe session, Linux
// 6.13+): its entry asks for the return only for a call it started, so a process that is not
// watched runs it once per call, and no return probe is planted in it. Where sessions are
// missing, getaddrinfo_entry and getaddrinfo_return are attached as a uprobe and a uretprobe.
//
// Maps become metrics (thread_observer/bpf_backend.py):
//   process_totals (thread_state.h)  {process} -> calls by caller, histogram slots, sum
//                         thread_observer_getaddrinfo_calls_total, ..._duration_seconds
//   getaddrinfo_failures_total    {process, error} -> count   thread_observer_getaddrinfo_failures_total
//   getaddrinfo_host_calls_total  {process, host} -> count    thread_observer_getaddrinfo_host_calls_total
//                                    (bounded: when full, calls still count in the totals above;
//                                     compiled out with HOST_NAMES=0, --no-host-names)
//   getaddrinfo_calls_by_site_total {process, stack, caller} -> count (python_stack.h)
//                                             thread_observer_getaddrinfo_calls_by_site_total
#include "watched.h"
#include "python_stack.h"
#include "thread_state.h"

#ifndef EPOLL_MARK_AT_SWITCH
#error "EPOLL_MARK_AT_SWITCH comes from thread_observer/bpf_backend.py (Hooks)"
#endif
#if EPOLL_MARK_AT_SWITCH
#include "current_syscall.h"
#endif

#ifndef MAX_KEYS
#error "MAX_KEYS must be given as a -D cflag by thread_observer/constants.py"
#endif
#ifndef MAX_HOSTS
#error "MAX_HOSTS must be given as a -D cflag by thread_observer/constants.py"
#endif
#ifndef HOST_LENGTH
#error "HOST_LENGTH must be given as a -D cflag by thread_observer/constants.py"
#endif
#ifndef HOST_NAMES
#error "HOST_NAMES must be given as a -D cflag (0 or 1) by thread_observer/constants.py"
#endif
#ifndef CALLER_OTHER
#error "CALLER_OTHER must be given as a -D cflag by thread_observer/constants.py"
#endif
#ifndef CALLER_EVENT_LOOP
#error "CALLER_EVENT_LOOP must be given as a -D cflag by thread_observer/constants.py"
#endif
#ifndef ENTRY_IP_SLACK
#error "ENTRY_IP_SLACK must be given as a -D cflag by thread_observer/constants.py"
#endif

struct error_key {
    u32 tgid;
    s32 error;
    u64 generation;
};

#if HOST_NAMES
struct host_key {
    u32 tgid;
    u32 reserved;
    u64 generation;
    char host[HOST_LENGTH];  // the name asked for, truncated; empty for a NULL node
};

BPF_HASH(getaddrinfo_host_calls_total, struct host_key, u64, MAX_HOSTS);
#endif
BPF_HASH(getaddrinfo_failures_total, struct error_key, u64, MAX_KEYS);

// bcc's increment() is not atomic, and two CPUs that find a key missing both store 1:
// lookup_or_try_init inserts only if absent, then the add is atomic. (It gives NULL when the
// map is full: that one count is lost, and a full host map does not stop the other counts.)
static __always_inline int add_failure(struct error_key *key)
{
    u64 zero = 0, *count = getaddrinfo_failures_total.lookup_or_try_init(key, &zero);
    if (count)
        __sync_fetch_and_add(count, 1);
    return 0;
}

#if HOST_NAMES
// Counted by name at entry, where the name is at hand (the totals follow at return). A NULL or
// unreadable node leaves the name empty. Reading the caller's memory is the costliest step of
// a call (about 110 ns here, whatever the length): --no-host-names leaves it out.
static __always_inline void count_host(struct pt_regs *ctx, u32 tgid, u64 generation)
{
    struct host_key key = {.tgid = tgid, .generation = generation};
    bpf_probe_read_user_str(key.host, sizeof(key.host), (void *)PT_REGS_PARM1(ctx));
    u64 zero = 0, *count = getaddrinfo_host_calls_total.lookup_or_try_init(&key, &zero);
    if (count)
        __sync_fetch_and_add(count, 1);
}
#endif

static __always_inline void mark_event_loop(void)
{
    u64 id = current_pid_tgid(), generation;
    // Loops wait thousands of times a second: look before writing.
    struct thread_state *state = watched_thread(id >> 32, (u32)id, &generation);
    if (state && !state->event_loop)
        state->event_loop = 1;
}

#if EPOLL_MARK_AT_SWITCH
// A thread is marked when it goes to sleep inside epoll_wait, epoll_pwait or epoll_pwait2: the
// scheduler switches away from it there, as from any event loop with nothing to run. No syscall
// tracepoint is needed (current_syscall.h). A wait that returns at once marks nothing: a loop
// is marked at its first idle moment. Attached by user space at the raw tracepoint only while
// it decides something: while a watched process's frames cannot be read.
int mark_at_switch(struct bpf_raw_tracepoint_args *ctx)
{
    // (bool preempt, prev, next, prev_state), run as prev: a preempted task did not choose to
    // sleep, and may be in an interrupt whose vector sits where a syscall's number would.
    if (ctx->args[0])
        return 0;
    u64 number = syscall_number(current_user_regs());
    if (number == __NR_epoll_wait || number == __NR_epoll_pwait || number == __NR_epoll_pwait2)
        mark_event_loop();
    return 0;
}
#else
// Attached to the sys_enter tracepoints of the three epoll waits.
int mark_event_loop_thread(void *ctx)
{
    mark_event_loop();
    return 0;
}
#endif

// The caller label of a resolver call this thread makes now (getaddrinfo, and the functions of
// resolver.bpf.c): a coroutine on its Python stack decides, else its epoll mark. With sites, a
// stack that was read stays in the scratch key, and *stack_read says so.
static __always_inline u32 call_caller(u32 tgid, u32 tid, u64 generation,
                                       struct thread_state *state, int *stack_read)
{
    int epoll_marked = state->event_loop;
    *stack_read = 0;
#if SITES
    struct site_key *site = site_scratch_key();
    if (site && read_python_stack(tgid, tid, &state->python_thread_state, generation, site, 1)) {
        *stack_read = 1;
        return caller_from_stack(site, epoll_marked);
    }
#endif
    return epoll_marked ? CALLER_EVENT_LOOP : CALLER_OTHER;
}

// Entry: 1 when a watched call started and its return must be seen.
static __always_inline int start_getaddrinfo(struct pt_regs *ctx)
{
    u64 id = current_pid_tgid();
    u32 tgid = id >> 32, tid = (u32)id;
    u64 generation;
    struct thread_state *state = watched_thread(tgid, tid, &generation);
    if (!state)
        return 0;
    int stack_read = 0;
    u32 caller = call_caller(tgid, tid, generation, state, &stack_read);
#if SITES
    struct site_key *site = site_scratch_key();
    if (site && stack_read)
        add_call_site(site, caller);
#endif
#if HOST_NAMES
    count_host(ctx, tgid, generation);
#endif
    state->call_caller = caller;
    state->call_generation = generation;
    state->call_started_ns = bpf_ktime_get_ns();
    return 1;
}

static __always_inline u64 log2_slot(u64 ns)
{
    // Smallest slot with ns <= 2^slot: the bit length of ns - 1, found in six steps rather
    // than a loop of up to 64 (0 and 1 ns are slot 0).
    if (ns <= 1)
        return 0;
    u64 v = ns - 1;
    u64 slot = 0, shift;
    shift = (v > 0xFFFFFFFFULL) << 5; v >>= shift; slot |= shift;
    shift = (v > 0xFFFF) << 4; v >>= shift; slot |= shift;
    shift = (v > 0xFF) << 3; v >>= shift; slot |= shift;
    shift = (v > 0xF) << 2; v >>= shift; slot |= shift;
    shift = (v > 0x3) << 1; v >>= shift; slot |= shift;
    return (slot | (v >> 1)) + 1;
}

// Return: the call ends, and is counted under the generation it started in (a process
// forgotten meanwhile has its counters swept in user space).
static __always_inline void end_getaddrinfo(struct pt_regs *ctx)
{
    u64 id = current_pid_tgid();
    u32 tgid = id >> 32, tid = (u32)id;
    struct thread_state *state = this_thread(tid, 0);
    if (!state || !state->call_started_ns)
        return;  // entered before we attached, or not watched
    u64 ns = bpf_ktime_get_ns() - state->call_started_ns;
    u64 generation = state->call_generation;
    u32 caller = state->call_caller;
    state->call_started_ns = 0;

    int rc = PT_REGS_RC(ctx);
    if (rc != 0) {
        struct error_key error = {.tgid = tgid, .error = rc, .generation = generation};
        add_failure(&error);
    }

    struct process_totals *totals = totals_of(tgid, generation);
    if (!totals)
        return;
    // Bounded in the register that indexes: clang checks the bound on a copy of the index
    // before its last "+ 1", which verifiers before 6.8 cannot relate to the index (Linux 6.1
    // refuses "unbounded memory access"); the empty asm makes the slot one opaque value.
    u64 slot = log2_slot(ns);
    asm volatile("" : "+r"(slot));
    if (slot > DURATION_SLOTS - 1)
        slot = DURATION_SLOTS - 1;
    __sync_fetch_and_add(&totals->calls[caller & (CALLERS - 1)], 1);
    __sync_fetch_and_add(&totals->duration_slots[slot], 1);
    __sync_fetch_and_add(&totals->duration_ns_sum, ns);
}

static __always_inline int getaddrinfo_entry_body(struct pt_regs *ctx)
{
    start_getaddrinfo(ctx);
    return 0;
}
UPROBE_PROGRAM(getaddrinfo_entry, getaddrinfo_entry_body)

static __always_inline int getaddrinfo_return_body(struct pt_regs *ctx)
{
    end_getaddrinfo(ctx);
    return 0;
}
UPROBE_PROGRAM(getaddrinfo_return, getaddrinfo_return_body)

// At entry the instruction pointer is the probed address (or just past its breakpoint); at
// return it is the caller's return address, never that close to the function's start.
static __always_inline int at_entry(struct pt_regs *ctx)
{
    return PT_REGS_IP(ctx) - bpf_get_func_ip(ctx) <= ENTRY_IP_SLACK;
}

static __always_inline int getaddrinfo_session_body(struct pt_regs *ctx)
{
    if (at_entry(ctx))
        return start_getaddrinfo(ctx) ? 0 : 1;  // nonzero: no return probe for this call
    end_getaddrinfo(ctx);
    return 0;
}
UPROBE_PROGRAM(getaddrinfo_session, getaddrinfo_session_body)
