// getaddrinfo: calls, latency (log2 histogram), failures by EAI_* code, and whether the call
// was made on an event loop: a coroutine on the caller's Python stack (python_stack.h), or,
// where the frames cannot be read, a thread that has waited in epoll_wait/epoll_pwait/
// epoll_pwait2.
//
// Maps become metrics (observer/bpf_backend.py):
//   getaddrinfo_calls_total       {process, caller} -> count  thread_observer_getaddrinfo_calls_total
//   getaddrinfo_failures_total    {process, error} -> count   thread_observer_getaddrinfo_failures_total
//   getaddrinfo_duration_seconds  {process, slot} -> count    thread_observer_getaddrinfo_duration_seconds
//   getaddrinfo_duration_ns_sum   {process} -> ns             (its _sum)
//   getaddrinfo_host_calls_total  {process, host} -> count    thread_observer_getaddrinfo_host_calls_total
//                                    (bounded: when full, calls still count in the totals above)
//   getaddrinfo_calls_by_site_total {process, stack, caller} -> count (python_stack.h)
//                                             thread_observer_getaddrinfo_calls_by_site_total
#include "watched.h"
#include "python_stack.h"

#ifndef MAX_THREADS
#error "MAX_THREADS must be given as a -D cflag by observer/constants.py"
#endif
#ifndef MAX_KEYS
#error "MAX_KEYS must be given as a -D cflag by observer/constants.py"
#endif
#ifndef MAX_HOSTS
#error "MAX_HOSTS must be given as a -D cflag by observer/constants.py"
#endif
#ifndef HOST_LENGTH
#error "HOST_LENGTH must be given as a -D cflag by observer/constants.py"
#endif
#ifndef CALLER_OTHER
#error "CALLER_OTHER must be given as a -D cflag by observer/constants.py"
#endif
#ifndef CALLER_EVENT_LOOP
#error "CALLER_EVENT_LOOP must be given as a -D cflag by observer/constants.py"
#endif

struct caller_key {
    u32 tgid;
    u32 caller;
    u64 generation;
};

struct error_key {
    u32 tgid;
    s32 error;
    u64 generation;
};

struct slot_key {
    u32 tgid;
    u32 slot;  // bucket upper bound is 2^slot ns
    u64 generation;
};

struct host_key {
    u32 tgid;
    u32 reserved;
    u64 generation;
    char host[HOST_LENGTH];  // the name asked for, truncated; empty for a NULL node
};

struct call_in_progress {
    u64 started_ns;
    u32 caller;  // decided at entry, where the frames are read
    u32 reserved;
    char host[HOST_LENGTH];
};

BPF_HASH(getaddrinfo_calls_total, struct caller_key, u64, MAX_KEYS);
BPF_HASH(getaddrinfo_failures_total, struct error_key, u64, MAX_KEYS);
BPF_HASH(getaddrinfo_duration_seconds, struct slot_key, u64, MAX_KEYS);
BPF_HASH(getaddrinfo_duration_ns_sum, struct process_key, u64, MAX_PROCESSES);
BPF_HASH(getaddrinfo_host_calls_total, struct host_key, u64, MAX_HOSTS);
// tid -> the call in progress
BPF_TABLE("lru_hash", u32, struct call_in_progress, getaddrinfo_started, MAX_THREADS);
// tids that have waited in epoll: event-loop threads
BPF_TABLE("lru_hash", u32, u8, event_loop_threads, MAX_THREADS);

// bcc's increment() is not atomic, and two CPUs that find a key missing both store 1:
// lookup_or_try_init inserts only if absent, then the add is atomic. (It gives NULL when the
// map is full: that one count is lost, and a full host map does not stop the other counts.)
static __always_inline int add_call(struct caller_key *key)
{
    u64 zero = 0, *count = getaddrinfo_calls_total.lookup_or_try_init(key, &zero);
    if (count)
        __sync_fetch_and_add(count, 1);
    return 0;
}

static __always_inline int add_failure(struct error_key *key)
{
    u64 zero = 0, *count = getaddrinfo_failures_total.lookup_or_try_init(key, &zero);
    if (count)
        __sync_fetch_and_add(count, 1);
    return 0;
}

static __always_inline int add_duration(struct slot_key *bucket, struct process_key *process,
                                        u64 ns)
{
    u64 zero = 0, *count = getaddrinfo_duration_seconds.lookup_or_try_init(bucket, &zero);
    if (count)
        __sync_fetch_and_add(count, 1);
    u64 *sum = getaddrinfo_duration_ns_sum.lookup_or_try_init(process, &zero);
    if (sum)
        __sync_fetch_and_add(sum, ns);
    return 0;
}

static __always_inline int add_host(struct host_key *key)
{
    u64 zero = 0, *count = getaddrinfo_host_calls_total.lookup_or_try_init(key, &zero);
    if (count)
        __sync_fetch_and_add(count, 1);
    return 0;
}

int mark_event_loop_thread(void *ctx)
{
    u64 id = current_pid_tgid();
    u32 tid = (u32)id;
    if (!watched_generation(id >> 32))
        return 0;
    // Loops wait thousands of times a second: look before writing.
    if (event_loop_threads.lookup(&tid))
        return 0;
    u8 yes = 1;
    event_loop_threads.update(&tid, &yes);
    return 0;
}

int forget_thread(void *ctx)
{
    // Thread ids are reused: a new thread must not inherit an old one's event-loop mark.
    // Every exit on the host comes here: look first, as a lookup that misses (the usual
    // case) is cheaper than a delete, which takes the bucket's lock.
    u32 tid = (u32)current_pid_tgid();
    if (event_loop_threads.lookup(&tid))
        event_loop_threads.delete(&tid);
    if (getaddrinfo_started.lookup(&tid))
        getaddrinfo_started.delete(&tid);
    // Only watched processes have Python thread state here: one lookup for the rest.
    if (watched_generation(current_pid_tgid() >> 32))
        forget_python_thread(tid, (u32)bpf_get_current_pid_tgid());
    return 0;
}

// The caller label of a resolver call this thread makes now (getaddrinfo, and the functions of
// resolver.bpf.c): a coroutine on its Python stack decides, else its epoll mark. With sites, a
// stack that was read stays in the scratch key, and *stack_read says so.
static __always_inline u32 call_caller(u32 tgid, u32 tid, u64 generation, int *stack_read)
{
    int epoll_marked = event_loop_threads.lookup(&tid) != NULL;
    *stack_read = 0;
#if SITES
    struct site_key *site = site_scratch_key();
    if (site && read_python_stack(tgid, tid, generation, site, 1)) {
        *stack_read = 1;
        return caller_from_stack(site, epoll_marked);
    }
#endif
    return epoll_marked ? CALLER_EVENT_LOOP : CALLER_OTHER;
}

int getaddrinfo_entry(struct pt_regs *ctx)
{
    u64 id = current_pid_tgid();
    u32 tgid = id >> 32, tid = (u32)id;
    u64 generation = watched_generation(tgid);
    if (!generation)
        return 0;
    struct call_in_progress call = {.started_ns = bpf_ktime_get_ns()};
    int stack_read = 0;
    call.caller = call_caller(tgid, tid, generation, &stack_read);
#if SITES
    struct site_key *site = site_scratch_key();
    if (site && stack_read)
        add_call_site(site, call.caller);
#endif
    // A NULL or unreadable node leaves the name empty.
    bpf_probe_read_user_str(call.host, sizeof(call.host), (void *)PT_REGS_PARM1(ctx));
    getaddrinfo_started.update(&tid, &call);
    return 0;
}

static __always_inline u32 log2_slot(u64 ns)
{
    // Smallest slot with ns <= 2^slot.
    u32 slot = 0;
    for (int i = 0; i < 64; i++) {
        if ((1ULL << slot) >= ns)
            break;
        slot++;
    }
    return slot;
}

int getaddrinfo_return(struct pt_regs *ctx)
{
    u64 id = current_pid_tgid();
    u32 tgid = id >> 32, tid = (u32)id;
    struct call_in_progress *call = getaddrinfo_started.lookup(&tid);
    if (!call)
        return 0;  // entered before we attached, or not watched
    u64 ns = bpf_ktime_get_ns() - call->started_ns;
    u64 generation = watched_generation(tgid);
    if (!generation) {
        getaddrinfo_started.delete(&tid);
        return 0;  // forgotten while the call ran
    }
    struct host_key host = {.tgid = tgid, .generation = generation};
    __builtin_memcpy(host.host, call->host, sizeof(host.host));
    struct caller_key calls = {.tgid = tgid, .caller = call->caller, .generation = generation};
    getaddrinfo_started.delete(&tid);
    add_host(&host);
    add_call(&calls);

    int rc = PT_REGS_RC(ctx);
    if (rc != 0) {
        struct error_key error = {.tgid = tgid, .error = rc, .generation = generation};
        add_failure(&error);
    }

    struct slot_key bucket = {.tgid = tgid, .slot = log2_slot(ns), .generation = generation};
    struct process_key process = {.tgid = tgid, .generation = generation};
    add_duration(&bucket, &process, ns);
    return 0;
}
