// Processes starting programs: the command line each one starts with, and what exec does to
// its watch.
//
// A process may rename itself as soon as it runs (setproctitle, as gunicorn does), so
// /proc/PID/cmdline read later may no longer show what it was started as. At
// sched:sched_process_exec the new program has not run yet: its arguments are in its fresh
// mm, NUL-separated in [mm->arg_start, mm->arg_end), as the kernel laid them out (a script's
// interpreter first, as /proc/PID/cmdline shows them). They are read there, with no program
// at any syscall, and reported through a ring buffer before the process is marked pending:
// when user space sees the pending state, the report is already in the buffer.
//
// Events become (thread_observer/bpf_backend.py):
//   exec_reports            ring buffer: {tgid, generation, arguments}, read at every poll
//   exec_reports_lost_total reports dropped because the ring buffer was full
//
// Parameters (-D cflags from thread_observer/constants.py): MAX_ARGS, ARG_LENGTH,
// EXEC_RINGBUF_PAGES, ARGUMENT_SCAN, MAX_ARGUMENT_SCANS, plus watched.h's; and from the
// running kernel's BTF (thread_observer/bpf_backend.py EXEC_KERNEL_FIELDS) TASK_STRUCT_MM,
// MM_STRUCT_ARG_START and MM_STRUCT_ARG_END: without them the reports carry no arguments
// and user space reads /proc instead.
#include "watched.h"
#include "python_stack.h"
#include "thread_state.h"

#ifndef MAX_ARGS
#error "MAX_ARGS must be defined (thread_observer/constants.py MapSize)"
#endif
#ifndef RAW_TASK_EVENTS
#error "RAW_TASK_EVENTS must be given as a -D cflag by thread_observer/bpf_backend.py"
#endif
#ifndef ARG_LENGTH
#error "ARG_LENGTH must be defined (thread_observer/constants.py MapSize)"
#endif
#ifndef EXEC_RINGBUF_PAGES
#error "EXEC_RINGBUF_PAGES must be defined (thread_observer/constants.py MapSize)"
#endif
#ifndef ARGUMENT_SCAN
#error "ARGUMENT_SCAN must be defined (thread_observer/constants.py MapSize)"
#endif
#ifndef MAX_ARGUMENT_SCANS
#error "MAX_ARGUMENT_SCANS must be defined (thread_observer/constants.py MapSize)"
#endif

// Slot i holds argument i, truncated to ARG_LENGTH - 1 bytes; an empty slot ends the list.
struct exec_report {
    u32 tgid;
    u32 target;  // the target it had before the exec, 0 for none
    u64 generation;
    char args[MAX_ARGS * ARG_LENGTH];
};

BPF_RINGBUF_OUTPUT(exec_reports, EXEC_RINGBUF_PAGES);
BPF_ARRAY(exec_reports_lost_total, u64, 1);

#ifdef TASK_STRUCT_MM
struct argument_scan {
    char bytes[ARGUMENT_SCAN];
};
// Where an argument longer than a slot is read on to find its end: too large for the stack.
BPF_PERCPU_ARRAY(argument_scan_scratch, struct argument_scan, 1);

// Just past the NUL of the argument at ``arg`` (``end`` if it cannot be found): an argument
// is at most MAX_ARG_STRLEN (128 KiB) long, MAX_ARGUMENT_SCANS reads of the scratch.
static __always_inline u64 argument_end(u64 arg, u64 end, char *scan)
{
    for (int i = 0; i < MAX_ARGUMENT_SCANS && arg < end; i++) {
        long copied = bpf_probe_read_user_str(scan, ARGUMENT_SCAN, (void *)arg);
        if (copied <= 0)
            return end;
        if (copied < ARGUMENT_SCAN)
            return arg + copied;
        arg += ARGUMENT_SCAN - 1;  // the last byte copied is the helper's NUL, not the string's
    }
    return end;
}

// The first MAX_ARGS arguments of the program the current task has just started, each in its
// slot as execve's argv gave them: the same limits whatever the arguments' lengths.
static __always_inline void read_arguments(char *args)
{
    u64 mm = kernel_pointer(bpf_get_current_task() + TASK_STRUCT_MM);
    u64 arg = mm ? kernel_pointer(mm + MM_STRUCT_ARG_START) : 0;
    u64 end = mm ? kernel_pointer(mm + MM_STRUCT_ARG_END) : 0;
    u32 zero = 0;
    struct argument_scan *scan = argument_scan_scratch.lookup(&zero);
    for (int i = 0; i < MAX_ARGS; i++) {
        char *slot = args + i * ARG_LENGTH;
        slot[0] = 0;
        if (!scan || arg >= end)
            continue;
        long copied = bpf_probe_read_user_str(slot, ARG_LENGTH, (void *)arg);
        if (copied <= 1) {  // unreadable, or an empty argument (which would end the list)
            slot[0] = 0;
            arg = end;
        } else if (copied < ARG_LENGTH) {
            arg += copied;
        } else {
            arg = argument_end(arg, end, scan->bytes);
        }
    }
}
#else
static __always_inline void read_arguments(char *args)
{
    args[0] = 0;  // no offsets for the kernel's structs: user space reads /proc instead
}
#endif

static __always_inline void report_exec(u32 tgid, struct watched_process *process)
{
    struct exec_report *report = exec_reports.ringbuf_reserve(sizeof(struct exec_report));
    if (!report) {
        u32 zero = 0;
        u64 *lost = exec_reports_lost_total.lookup(&zero);
        if (lost)
            __sync_fetch_and_add(lost, 1);
        return;
    }
    report->tgid = tgid;
    report->target = process->target;
    report->generation = process->generation;
    read_arguments(report->args);
    exec_reports.ringbuf_submit(report, 0);
}

#if SITES
// Interpreters read once in some process whose offsets user space checked (3.11+: the main
// interpreter, whose thread list the probes walk, lies in the object's data): every process
// that maps the same object has its interpreter at the same place relative to the object's
// load bias, so its frames can be read from the start, long before user space finds it (a
// lookup in its first milliseconds is told by its frames, not the epoll mark). An object
// holds for the processes of the PID namespace it was learnt in, whose ids its thread states
// hold. Two ways in, by what the kernel allows:
// - an executable with the interpreter linked in, at the exec: the file the process starts
//   (its filesystem's device and inode as the kernel knows them, with its size: a file
//   rewritten in place keeps its inode) is looked up in python_executables, and the load bias
//   is mm->start_code less the object's own (needs MM_STRUCT_START_CODE, MM_STRUCT_EXE_FILE,
//   FILE_F_INODE, INODE_I_INO, INODE_I_SB, INODE_I_SIZE, SUPER_BLOCK_S_DEV from the kernel's
//   BTF: thread_observer/bpf_backend.py PYTHON_BINARY_FIELDS);
// - any object, libpython included (mapped wherever the loader likes), as the interpreter
//   starts: python_starting runs at its _PyRuntime_Initialize, before any Python code, from a
//   uprobe_multi link (Linux 6.6+) whose cookie is the object's index.
struct python_object {
    struct python_process process;  // threads_head, text_start, text_end less the load bias
    u64 initialize;  // _PyRuntime_Initialize's address in the object, as linked
    u64 code_start;  // the executable's start_code as linked (0: not an executable)
    u64 size;        // the executable's size
    u64 pidns_dev;   // the PID namespace of the process it was learnt in
    u64 pidns_ino;
};

BPF_ARRAY(python_objects, struct python_object, MAX_PYTHON_BINARIES);

// The process's interpreter placed by the object's load bias, in the PID namespace it was
// learnt in.
static __always_inline void place_python(u32 tgid, u64 generation, struct python_object *known,
                                         u64 bias)
{
    struct bpf_pidns_info ns = {};
    if (bpf_get_ns_current_pid_tgid(known->pidns_dev, known->pidns_ino, &ns, sizeof(ns)))
        return;
    struct python_process process = known->process;
    process.generation = generation;
    process.threads_head += bias;
    process.text_start += bias;
    process.text_end += bias;
    python_processes.update(&tgid, &process);
}

static __always_inline int python_starting_body(struct pt_regs *ctx)
{
    u32 tgid = current_pid_tgid() >> 32;
    u64 generation = tgid ? watched_generation(tgid) : 0;
    if (!generation)
        return 0;
    struct python_process *placed = python_processes.lookup(&tgid);
    if (placed && placed->generation == generation)
        return 0;  // placed at its exec, or by user space
    u32 index = bpf_get_attach_cookie(ctx);
    struct python_object *known = python_objects.lookup(&index);
    if (known && known->initialize)
        place_python(tgid, generation, known, bpf_get_func_ip(ctx) - known->initialize);
    return 0;
}
UPROBE_PROGRAM(python_starting, python_starting_body)

#if defined(MM_STRUCT_EXE_FILE) && defined(TASK_STRUCT_MM)
struct python_executable {
    u64 dev;  // the kernel's dev_t of its filesystem (MAJOR << 20 | MINOR)
    u64 ino;
};

BPF_HASH(python_executables, struct python_executable, u32, MAX_PYTHON_BINARIES);

static __always_inline void python_at_exec(u32 tgid, u64 generation)
{
    u64 mm = kernel_pointer(bpf_get_current_task() + TASK_STRUCT_MM);
    u64 file = mm ? kernel_pointer(mm + MM_STRUCT_EXE_FILE) : 0;
    u64 inode = file ? kernel_pointer(file + FILE_F_INODE) : 0;
    u64 sb = inode ? kernel_pointer(inode + INODE_I_SB) : 0;
    if (!sb)
        return;
    u32 dev = 0;
    bpf_probe_read_kernel(&dev, sizeof(dev), (void *)(sb + SUPER_BLOCK_S_DEV));
    struct python_executable executable = {.dev = dev, .ino = kernel_pointer(inode + INODE_I_INO)};
    u32 *index = python_executables.lookup(&executable);
    struct python_object *known = index ? python_objects.lookup(index) : 0;
    if (!known || !known->code_start || known->size != kernel_pointer(inode + INODE_I_SIZE))
        return;
    u64 start_code = kernel_pointer(mm + MM_STRUCT_START_CODE);
    place_python(tgid, generation, known, start_code - known->code_start);
}
#else
static __always_inline void python_at_exec(u32 tgid, u64 generation) {}
#endif
#else
static __always_inline void python_at_exec(u32 tgid, u64 generation) {}
#endif

static __always_inline int process_exec(void)
{
    // A new program: counted from here, classified by its command line in user space. A
    // watched process keeps its target (a child stays in its parent's) and its generation
    // until user space has seen what it became.
    u64 id = current_pid_tgid();
    u32 tgid = id >> 32;
    struct watched_process *old = tgid ? watched_tgids.lookup(&tgid) : 0;
    if (old)
        forget_python_process(tgid);  // a new image: its interpreter is found again
    // Its process's generation may change below: the thread's copy is dropped (no process
    // has id 0), whatever the epoch, so that its next event looks it up again; and so is its
    // PyThreadState, of the old image.
    struct thread_state *state = this_thread((u32)id, 0);
    if (state) {
        state->tgid = 0;
        state->python_thread_state = 0;
    }
    if (tgid && (old || TRACK_NEW_PROCESSES)) {
        struct watched_process process = {.state = STATE_PENDING};
        if (old && old->state != STATE_EXITED) {
            process.target = old->target;
            process.generation = old->generation;
            process.parent = old->parent;
        } else {
            process.generation = bpf_ktime_get_ns();
        }
        report_exec(tgid, &process);
        watched_tgids.update(&tgid, &process);
        python_at_exec(tgid, process.generation);
    }
    return 0;
}

// A raw tracepoint where threads.bpf.c's are (RAW_TASK_EVENTS: see there why).
#if RAW_TASK_EVENTS
RAW_TRACEPOINT_PROBE(sched_process_exec)
{
    return process_exec();
}
#else
TRACEPOINT_PROBE(sched, sched_process_exec)
{
    return process_exec();
}
#endif

#ifdef PIDNS_INO
// A forked child takes the watch its parent handed it (forked_children), under its id in our
// namespace, before it runs any code of its own.
static __always_inline void adopt(u32 host_tgid, u32 tgid)
{
    struct watched_process *child = forked_children.lookup(&host_tgid);
    if (!child)
        return;
    if (tgid && watched_tgids.update(&tgid, child))
        count_child_not_watched();
    forked_children.delete(&host_tgid);
}

#ifndef CHILD_AT_FORK
#error "CHILD_AT_FORK comes from thread_observer/bpf_backend.py (pid_namespace_cflags)"
#endif
#if CHILD_AT_FORK
#define MAX_PID_LEVELS 8  // nested PID namespaces looked through for ours

// At sched_process_fork, in the parent, after the child is made and before it first runs:
// the child's id in our namespace is read from its struct pid, whose numbers[] holds one per
// namespace it is in, from the host's down (ours is the one whose inode is PIDNS_INO), at the
// offsets the kernel's BTF gives. No syscall tracepoint.
RAW_TRACEPOINT_PROBE(sched_process_fork)
{
    // (struct task_struct *parent, struct task_struct *child)
    u64 task = ctx->args[1];
    u32 host_pid = 0, host_tgid = 0, level = 0;
    bpf_probe_read_kernel(&host_pid, sizeof(host_pid), (void *)(task + TASK_STRUCT_PID));
    bpf_probe_read_kernel(&host_tgid, sizeof(host_tgid), (void *)(task + TASK_STRUCT_TGID));
    if (!host_pid || host_pid != host_tgid || !forked_children.lookup(&host_tgid))
        return 0;  // a new thread, or a child no watched process made
    u64 pid = kernel_pointer(task + TASK_STRUCT_THREAD_PID);
    if (!pid || bpf_probe_read_kernel(&level, sizeof(level), (void *)(pid + PID_LEVEL)))
        return 0;
#pragma unroll
    for (u32 i = 0; i < MAX_PID_LEVELS; i++) {
        u64 upid = pid + PID_NUMBERS + i * UPID_SIZE;
        u32 inum = 0, nr = 0;
        if (i > level)
            break;
        bpf_probe_read_kernel(&inum, sizeof(inum),
                              (void *)(kernel_pointer(upid + UPID_NS) + PID_NAMESPACE_INUM));
        if (inum != PIDNS_INO)
            continue;
        bpf_probe_read_kernel(&nr, sizeof(nr), (void *)(upid + UPID_NR));
        adopt(host_tgid, nr);
        break;
    }
    return 0;
}
#else
// Without the kernel's BTF: at the child's first return to user space, from the clone,
// clone3, fork or vfork it was created by (it returns 0 there, before running any code of its
// own), attached to those syscalls' exit tracepoints.
struct syscall_exit {
    u64 common;
    s32 syscall_nr;
    u32 padding;
    s64 ret;
};

int adopt_forked_child(struct syscall_exit *ctx)
{
    if (ctx->ret != 0)
        return 0;
    u64 host = bpf_get_current_pid_tgid();
    if ((u32)host != host >> 32)
        return 0;  // a new thread, not a new process
    adopt(host >> 32, current_pid_tgid() >> 32);
    return 0;
}
#endif
#endif
