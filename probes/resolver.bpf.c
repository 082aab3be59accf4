// Every libc resolver entry point a watched process calls (gethostbyname_r, getnameinfo, ...):
// a uprobe on entry counts the call by function and caller, a uretprobe ends it. Calls a
// resolver function makes to another (glibc's gethostbyname calls gethostbyname_r, musl's
// gethostbyaddr_r calls getnameinfo) are not counted again: each thread's outermost call in
// progress is known by the stack pointer it returns to (thread_state.h), and an entry below it
// is a call from within. getaddrinfo is counted by getaddrinfo.bpf.c, whose call in progress
// tells the calls made from within it (glibc's getaddrinfo of an AF_INET name calls
// gethostbyname2_r), and whose call_caller() decides the caller label as for getaddrinfo:
// that file comes first.
//
// One uprobe_multi link per libc object (Linux 6.6+) attaches resolver_session to every
// function, each symbol's attach cookie its ResolverFunction value (thread_observer/constants.py):
// one program for every function, and one detach per object instead of one per symbol (each
// detach waits for RCU grace periods). As a session (Linux 6.13+) its entry asks for the
// return only for an outermost call it counted; without sessions, resolver_entry and
// resolver_return get a link each. bcc 0.26 cannot make such links; thread_observer/bpf_backend.py
// does. Kernels before 6.6 have no uprobe_multi links (and before 5.15 no attach cookies):
// there each function gets a plain uprobe on resolver_entry_ID, a program of its own whose
// ResolverFunction value is built in, and a uretprobe on resolver_return.
//
// Parameters (-D cflags from thread_observer/constants.py): MAX_KEYS, FOR_EACH_RESOLVER_FUNCTION(X)
// (X(ID) for each probed function's ResolverFunction value).
//
// Maps become metrics (thread_observer/bpf_backend.py):
//   resolver_calls_total  {process, function, caller} -> count  thread_observer_resolver_calls_total
#include "watched.h"
#include "thread_state.h"

#ifndef MAX_KEYS
#error "MAX_KEYS comes from thread_observer/constants.py"
#endif
#ifndef FOR_EACH_RESOLVER_FUNCTION
#error "FOR_EACH_RESOLVER_FUNCTION comes from thread_observer/constants.py"
#endif

struct resolver_key {
    u32 tgid;
    u32 function;
    u32 caller;
    u32 reserved;
    u64 generation;
};

BPF_HASH(resolver_calls_total, struct resolver_key, u64, MAX_KEYS);

static __always_inline int add_resolver_call(struct resolver_key *key)
{
    u64 zero = 0, *count = resolver_calls_total.lookup_or_try_init(key, &zero);
    if (count)
        __sync_fetch_and_add(count, 1);
    return 0;
}

// Entry: 1 when an outermost call was counted and its return must be seen.
static __always_inline int start_resolver_call(struct pt_regs *ctx, u32 function)
{
    u64 id = current_pid_tgid();
    u32 tgid = id >> 32, tid = (u32)id;
    u64 generation;
    struct thread_state *state = watched_thread(tgid, tid, &generation);
    if (!state || state->call_started_ns)
        return 0;  // made from within getaddrinfo
    // Below the outer call's frame: made from within it (or a second symbol at the same
    // address). At or above it: the outer call has ended.
    if (state->resolver_returns_to > PT_REGS_SP(ctx))
        return 0;
    // On entry the stack pointer points at the return address: the call returns to sp + 8.
    state->resolver_returns_to = PT_REGS_SP(ctx) + 8;
    int stack_read = 0;
    struct resolver_key key = {.tgid = tgid, .function = function,
                               .caller = call_caller(tgid, tid, generation, state, &stack_read),
                               .generation = generation};
    add_resolver_call(&key);
    return 1;
}

static __always_inline void end_resolver_call(struct pt_regs *ctx)
{
    struct thread_state *state = this_thread((u32)current_pid_tgid(), 0);
    if (state && state->resolver_returns_to == PT_REGS_SP(ctx))
        state->resolver_returns_to = 0;
}

static __always_inline int resolver_entry_body(struct pt_regs *ctx)
{
    start_resolver_call(ctx, bpf_get_attach_cookie(ctx));
    return 0;
}
UPROBE_PROGRAM(resolver_entry, resolver_entry_body)

#define RESOLVER_ENTRY(ID)                                                  \
    static __always_inline int resolver_entry_body_##ID(struct pt_regs *ctx) \
    {                                                                       \
        start_resolver_call(ctx, ID);                                       \
        return 0;                                                           \
    }                                                                       \
    UPROBE_PROGRAM(resolver_entry_##ID, resolver_entry_body_##ID)
FOR_EACH_RESOLVER_FUNCTION(RESOLVER_ENTRY)

static __always_inline int resolver_return_body(struct pt_regs *ctx)
{
    end_resolver_call(ctx);
    return 0;
}
UPROBE_PROGRAM(resolver_return, resolver_return_body)

static __always_inline int resolver_session_body(struct pt_regs *ctx)
{
    if (at_entry(ctx))
        return start_resolver_call(ctx, bpf_get_attach_cookie(ctx)) ? 0 : 1;  // nonzero: no return probe for this call
    end_resolver_call(ctx);
    return 0;
}
UPROBE_PROGRAM(resolver_session, resolver_session_body)
