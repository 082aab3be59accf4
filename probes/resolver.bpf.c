// Every libc resolver entry point a watched process calls (gethostbyname_r, getnameinfo, ...):
// a uprobe on entry counts the call by function and caller, a uretprobe ends it. Calls a
// resolver function makes to another (glibc's gethostbyname calls gethostbyname_r, musl's
// gethostbyaddr_r calls getnameinfo) are not counted again: each thread's outermost call in
// progress is known by the stack pointer it returns to, and an entry below it is a call from
// within. getaddrinfo is counted by getaddrinfo.bpf.c, whose call-in-progress map
// (getaddrinfo_started) tells the calls made from within it (glibc's getaddrinfo of an AF_INET
// name calls gethostbyname2_r), and whose call_caller() decides the caller label as for
// getaddrinfo: that file comes first.
//
// Both programs are attached with one uprobe_multi link per libc object (Linux 6.6+), each
// symbol's attach cookie its ResolverFunction value (observer/constants.py): one program for
// every function, and one detach per object instead of one per symbol (each detach waits for
// RCU grace periods). bcc 0.26 cannot make such links; observer/bpf_backend.py does.
//
// Parameters (-D cflags from observer/constants.py): MAX_KEYS, MAX_THREADS.
//
// Maps become metrics (observer/bpf_backend.py):
//   resolver_calls_total  {process, function, caller} -> count  thread_observer_resolver_calls_total
#include "watched.h"

#ifndef MAX_KEYS
#error "MAX_KEYS comes from observer/constants.py"
#endif

struct resolver_key {
    u32 tgid;
    u32 function;
    u32 caller;
    u32 reserved;
    u64 generation;
};

BPF_HASH(resolver_calls_total, struct resolver_key, u64, MAX_KEYS);
// tid -> the stack pointer its outermost resolver call in progress returns to
BPF_TABLE("lru_hash", u32, u64, resolver_calls_in_progress, MAX_THREADS);

static __always_inline int add_resolver_call(struct resolver_key *key)
{
    u64 zero = 0, *count = resolver_calls_total.lookup_or_try_init(key, &zero);
    if (count)
        __sync_fetch_and_add(count, 1);
    return 0;
}

int resolver_entry(struct pt_regs *ctx)
{
    u64 id = current_pid_tgid();
    u32 tgid = id >> 32, tid = (u32)id;
    u64 generation = watched_generation(tgid);
    if (!generation)
        return 0;
    // On entry the stack pointer points at the return address: the call returns to sp + 8.
    u64 returns_to = PT_REGS_SP(ctx) + 8;
    if (getaddrinfo_started.lookup(&tid))
        return 0;  // made from within getaddrinfo
    u64 *outer = resolver_calls_in_progress.lookup(&tid);
    // Below the outer call's frame: made from within it (or a second symbol at the same
    // address). At or above it: the outer call has ended.
    if (outer && *outer > PT_REGS_SP(ctx))
        return 0;
    resolver_calls_in_progress.update(&tid, &returns_to);
    int stack_read = 0;
    struct resolver_key key = {.tgid = tgid, .function = bpf_get_attach_cookie(ctx),
                               .caller = call_caller(tgid, tid, generation, &stack_read),
                               .generation = generation};
    return add_resolver_call(&key);
}

int resolver_return(struct pt_regs *ctx)
{
    u32 tid = (u32)current_pid_tgid();
    u64 *outer = resolver_calls_in_progress.lookup(&tid);
    if (outer && *outer == PT_REGS_SP(ctx))
        resolver_calls_in_progress.delete(&tid);
    return 0;
}

int forget_resolver_thread(void *ctx)
{
    // A new thread with this id runs on another stack: it must not inherit the record.
    u32 tid = (u32)current_pid_tgid();
    if (resolver_calls_in_progress.lookup(&tid))
        resolver_calls_in_progress.delete(&tid);
    return 0;
}
