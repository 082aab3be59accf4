// DNS queries on the wire: every message a watched process sends to port 53, whoever sends it
// (glibc, musl, c-ares, any code), over UDP and TCP.
//
// Where the kernel has the tracepoints (SENDS_AT_SOCKETS: sock_send_length, Linux 6.3+, and
// tcp_sendmsg_locked, 6.10+, with bpf_task_pt_regs on x86-64), sends are seen at the socket
// layer: no syscall tracepoint is attached, which would send every syscall of every task on
// the host through the kernel's slower path, and a write to a file or a pipe runs nothing.
// sock_send_length fires once per message a socket sent, after the send, in the sender, with
// the socket and what was sent or the error; the syscall it fires in, and that syscall's
// buffers and destination, are read from the sender's saved registers (current_syscall.h).
// Elsewhere the send syscalls' tracepoints are used: a send is looked at on entry (the fd, the
// buffers, the destination) and counted on exit, once the kernel has said how much it sent.
// Only the sends of watched processes run more than a lookup in the watched set, and a failed
// send is no query. No state is learned from socket(), connect() or close(): a socket opened
// before its process was watched is known as well as any other.
// - UDP: one query per send/sendto/write/writev/sendmsg to port 53 (the socket's peer, or the
//   address given), one per message that sendmmsg sent (glibc sends A and AAAA in one). No
//   state is kept per socket.
// - TCP: DNS messages carry a 2-byte length prefix; the bytes written to a port-53 peer are
//   followed through those prefixes, so each message counts once however it is split into
//   writes and iovecs (glibc writes length and message as separate iovecs). Where a stream is
//   in its messages is kept per socket, keyed by the socket's inode number, which no later
//   socket reuses (unlike its fd, or its struct sock's address). A stream is followed from its
//   first byte only: one first seen after bytes were written to it has no known boundary.
//
// The kernel structs are read at offsets found in the running kernel's BTF
// (thread_observer/kernel_btf.py), given as -D flags: the installed headers may be another kernel's.
//
// Maps become metrics (thread_observer/bpf_backend.py):
//   dns_queries_total  {process, transport} -> count  thread_observer_dns_queries_total
//   dns_unknown_socket_sends_total [0] -> count        thread_observer_dns_unknown_socket_sends_total
//       (writes to TCP streams to port 53 first seen mid-stream, opened and written before
//       their process was watched, or written by a call whose buffers cannot be read (io_uring,
//       sendfile, splice): their messages are not counted above)
#include "watched.h"

#if !defined(TRANSPORT_UDP) || !defined(TRANSPORT_TCP)
#error "TRANSPORT_UDP and TRANSPORT_TCP come from thread_observer/constants.py"
#endif
#ifndef MAX_SOCKETS
#error "MAX_SOCKETS comes from thread_observer/constants.py"
#endif
#ifndef MAX_KEYS
#error "MAX_KEYS comes from thread_observer/constants.py"
#endif
#ifndef TCP_SOCK_SND_NXT
#error "the kernel struct offsets come from thread_observer/bpf_backend.py (DNS_KERNEL_FIELDS)"
#endif
#ifndef SENDS_AT_SOCKETS
#error "SENDS_AT_SOCKETS comes from thread_observer/bpf_backend.py (Hooks)"
#endif
#if SENDS_AT_SOCKETS
#include "current_syscall.h"
#endif

#define DNS_PORT 53
#define AF_INET 2
#define AF_INET6 10
#define SOCK_STREAM 1
#define SOCK_DGRAM 2
#define PROTOCOL_TCP 6          // IPPROTO_TCP
#define MODE_TYPE_MASK 0170000  // S_IFMT
#define MODE_SOCKET 0140000     // S_IFSOCK
#define MAX_STEPS 32        // TCP: prefixes and bodies followed per write
#define MAX_MESSAGES 8     // sendmmsg messages looked at per call (glibc sends 2)

// How the buffers of a send are described; internal to this file.
#define SEND_PLAIN 1   // write, send, sendto: one buffer
#define SEND_IOVEC 2   // writev: an iovec array
#define SEND_MSG 3     // sendmsg: one msghdr
#define SEND_MMSG 4    // sendmmsg: an mmsghdr array

struct dns_stream {
    u8 in_prefix;    // between the two bytes of a length prefix
    u8 prefix_high;  // the first byte of that prefix
    u16 reserved;
    u32 body_left;   // bytes of the current message still to come
};

struct transport_key {
    u32 tgid;
    u32 transport;
    u64 generation;
};

struct send_call {
    u64 buffer;      // user pointer: the data, iovecs, msghdr or mmsghdrs
    u64 count;       // bytes, iovecs or messages
    u64 stream;      // TCP: the socket's inode number, its key in dns_streams
    u32 kind;        // SEND_*
    u32 transport;   // TRANSPORT_UDP or TRANSPORT_TCP
    u32 to_dns;      // UDP: the destination is port 53 (for SEND_MMSG: the socket's peer is)
    u32 reserved;
};

// What a send's fd is, when it is a socket.
struct socket_facts {
    u64 inode_number;
    u64 sock;         // kernel address of its struct sock
    u16 family;
    u16 type;
    u16 protocol;
    u16 peer_port;    // network order; 0 when not connected
};

// What user space passes (uapi layouts, stable across kernels).
struct user_iovec {
    u64 base;
    u64 len;
};

struct user_msghdr_head {
    u64 name;
    u32 namelen;
    u32 pad;
    u64 iov;
    u64 iovlen;
};

#define MMSGHDR_SIZE 64  // struct mmsghdr: a 56-byte msghdr, then msg_len, padded

BPF_HASH(dns_queries_total, struct transport_key, u64, MAX_KEYS);
BPF_ARRAY(dns_unknown_socket_sends_total, u64, 1);
// socket inode number -> where its TCP stream to port 53 is in its messages
BPF_TABLE("lru_hash", u64, struct dns_stream, dns_streams, MAX_SOCKETS);

// Insert-if-absent, then an atomic add (bcc's increment() is not atomic).
static __always_inline int add_queries(struct transport_key *key, u64 queries)
{
    if (!queries)
        return 0;
    u64 zero = 0, *count = dns_queries_total.lookup_or_try_init(key, &zero);
    if (count)
        __sync_fetch_and_add(count, queries);
    return 0;
}

static __always_inline void add_unknown_socket_send(void)
{
    int index = 0;
    u64 *count = dns_unknown_socket_sends_total.lookup(&index);
    if (count)
        __sync_fetch_and_add(count, 1);
}

// Whether a user sockaddr is an INET or INET6 address with port 53.
static __always_inline int is_dns_address(u64 address)
{
    u16 head[2] = {};  // family, port (network order): the same place in both families
    if (!address || bpf_probe_read_user(head, sizeof(head), (void *)address))
        return 0;
    return (head[0] == AF_INET || head[0] == AF_INET6) &&
           head[1] == __builtin_bswap16(DNS_PORT);
}

// What a socket is: its inode's number, its family, type, protocol and peer port.
static __always_inline void read_sock(u64 sock, u64 inode, struct socket_facts *facts)
{
    facts->inode_number = kernel_pointer(inode + INODE_I_INO);
    facts->sock = sock;
    bpf_probe_read_kernel(&facts->family, 2, (void *)(sock + SOCK_FAMILY));
    bpf_probe_read_kernel(&facts->type, 2, (void *)(sock + SOCK_TYPE));
    bpf_probe_read_kernel(&facts->protocol, 2, (void *)(sock + SOCK_PROTOCOL));
    bpf_probe_read_kernel(&facts->peer_port, 2, (void *)(sock + SOCK_PEER_PORT));
}

// Whether nothing was ever written to a TCP socket: no byte sent (bytes_sent counts payload,
// not the SYN), and none waiting in its send queue (write_seq is the sequence number after the
// last byte written, snd_nxt after the last one sent).
static __always_inline int stream_untouched(u64 sock)
{
    u64 bytes_sent = 1;
    u32 write_seq = 0, snd_nxt = 1;
    bpf_probe_read_kernel(&bytes_sent, sizeof(bytes_sent), (void *)(sock + TCP_SOCK_BYTES_SENT));
    bpf_probe_read_kernel(&write_seq, sizeof(write_seq), (void *)(sock + TCP_SOCK_WRITE_SEQ));
    bpf_probe_read_kernel(&snd_nxt, sizeof(snd_nxt), (void *)(sock + TCP_SOCK_SND_NXT));
    return bytes_sent == 0 && write_seq == snd_nxt;
}

// A TCP stream to port 53, followed from its first byte on: 1 if it is (from now on, if
// nothing was ever written to it), 0 for one first seen mid-stream.
static __always_inline int follow_stream(struct socket_facts *facts)
{
    if (dns_streams.lookup(&facts->inode_number))
        return 1;
    if (!stream_untouched(facts->sock))
        return 0;
    struct dns_stream fresh = {};
    dns_streams.insert(&facts->inode_number, &fresh);
    return 1;
}

// Follows `sent` bytes of a TCP stream through DNS length prefixes; returns the messages that
// begin in them. The bytes are in `count` iovecs at `iov`, or at `iov` itself when `plain`.
// One step is one length prefix, one piece of one, or the part of a message body within one
// iovec: steps run out only for writes of more than MAX_STEPS / 2 messages.
static __always_inline u64 stream_messages(struct dns_stream *stream, u64 iov, u64 count,
                                           u64 sent, int plain)
{
    u64 messages = 0, index = 0, offset = 0;
    struct user_iovec vec = {};
    int loaded = 0;
    for (int step = 0; step < MAX_STEPS; step++) {
        if (!loaded) {
            if (!sent || index >= count)
                break;
            if (plain) {
                vec.base = iov;
                vec.len = sent;
            } else if (bpf_probe_read_user(&vec, sizeof(vec),
                                           (void *)(iov + index * sizeof(vec)))) {
                break;
            }
            vec.len = vec.len < sent ? vec.len : sent;
            sent -= vec.len;
            offset = 0;
            loaded = 1;
        }
        u64 left = vec.len - offset;
        if (!left) {
            index++;
            loaded = 0;
            continue;
        }
        u8 bytes[2] = {};
        if (stream->body_left) {
            u64 take = left < stream->body_left ? left : stream->body_left;
            stream->body_left -= take;
            offset += take;
        } else if (stream->in_prefix) {  // the prefix's second byte, split from its first
            bpf_probe_read_user(bytes, 1, (void *)(vec.base + offset));
            offset += 1;
            stream->in_prefix = 0;
            stream->body_left = ((u32)stream->prefix_high << 8) | bytes[0];
        } else if (left < 2) {
            messages++;  // a message begins with its length prefix
            bpf_probe_read_user(bytes, 1, (void *)(vec.base + offset));
            offset += 1;
            stream->in_prefix = 1;
            stream->prefix_high = bytes[0];
        } else {
            messages++;
            bpf_probe_read_user(bytes, 2, (void *)(vec.base + offset));
            offset += 2;
            stream->body_left = ((u32)bytes[0] << 8) | bytes[1];
        }
    }
    return messages;
}

// One copy of stream_messages per program: the verifier walks each copy's loop apart.
static __always_inline u64 tcp_messages(struct send_call *call, struct dns_stream *stream,
                                        u64 sent)
{
    u64 iov = call->buffer, count = call->count;
    if (call->kind == SEND_PLAIN) {
        count = 1;
    } else if (call->kind == SEND_MSG) {
        struct user_msghdr_head head = {};
        if (bpf_probe_read_user(&head, sizeof(head), (void *)call->buffer))
            return 0;
        iov = head.iov;
        count = head.iovlen;
    } else if (call->kind != SEND_IOVEC) {
        return 0;  // sendmmsg on a stream socket: no DNS library does it
    }
    return stream_messages(stream, iov, count, sent, call->kind == SEND_PLAIN);
}

// tid -> the send call in progress, until it is counted
BPF_TABLE("lru_hash", u32, struct send_call, dns_send_calls, MAX_THREADS);

// UDP messages of a sendmmsg that went to port 53: the first `sent` ones were sent.
static __always_inline u64 mmsg_queries(struct send_call *call, long sent)
{
    u64 queries = 0;
    // No early exit: a loop whose trip count depends on `sent` is runtime-unrolled by clang
    // into a shape the verifier follows without bound ("sequence of 8193 jumps").
#pragma unroll
    for (int i = 0; i < MAX_MESSAGES; i++) {
        u64 name = 0;
        if (i >= sent ||
            bpf_probe_read_user(&name, sizeof(name), (void *)(call->buffer + i * MMSGHDR_SIZE)))
            continue;
        queries += name ? is_dns_address(name) : call->to_dns;
    }
    return queries;
}

// Counts the send call a thread has in progress (dns_send_calls), now that `ret` says what
// it sent: at the syscall's exit, or after the socket's send.
static __always_inline int count_send(long ret)
{
    u64 id = current_pid_tgid();
    u32 tid = (u32)id, tgid = id >> 32;
    struct send_call *found = dns_send_calls.lookup(&tid);
    if (!found)
        return 0;
    struct send_call call = *found;
    dns_send_calls.delete(&tid);
    if (ret < 0)
        return 0;
    u64 generation = watched_generation(tgid);
    if (!generation)
        return 0;
    u64 queries;
    if (call.transport == TRANSPORT_UDP) {
        queries = call.kind == SEND_MMSG ? mmsg_queries(&call, ret) : call.to_dns;
    } else {
        struct dns_stream *stream = dns_streams.lookup(&call.stream);
        if (!stream)
            return 0;
        queries = tcp_messages(&call, stream, ret);
    }
    struct transport_key counter = {.tgid = tgid, .transport = call.transport,
                                    .generation = generation};
    add_queries(&counter, queries);
    return 0;
}

#if !SENDS_AT_SOCKETS
// The send syscalls' tracepoints: a send is looked at on entry and counted on exit.

// The socket behind a fd of the current process: task->files->fdt->fd[fd] is the file; a
// socket's inode is a socket's (S_IFSOCK), and its private_data the struct socket that points
// back to the file (a socket file opened by path with O_PATH has none). Returns 0 if the fd is
// no socket.
static __always_inline int find_socket(u32 fd, struct socket_facts *facts)
{
    u64 files = kernel_pointer(bpf_get_current_task() + TASK_STRUCT_FILES);
    u64 table = files ? kernel_pointer(files + FILES_STRUCT_FDT) : 0;
    u32 max_fds = 0;
    if (!table || bpf_probe_read_kernel(&max_fds, sizeof(max_fds),
                                        (void *)(table + FDTABLE_MAX_FDS)) || fd >= max_fds)
        return 0;
    u64 file = kernel_pointer(kernel_pointer(table + FDTABLE_FD) + (u64)fd * sizeof(u64));
    u64 inode = file ? kernel_pointer(file + FILE_F_INODE) : 0;
    u16 mode = 0;
    if (!inode || bpf_probe_read_kernel(&mode, sizeof(mode), (void *)(inode + INODE_I_MODE)) ||
        (mode & MODE_TYPE_MASK) != MODE_SOCKET)
        return 0;
    u64 socket = kernel_pointer(file + FILE_PRIVATE_DATA);
    if (!socket || kernel_pointer(socket + SOCKET_FILE) != file)
        return 0;
    u64 sock = kernel_pointer(socket + SOCKET_SK);
    if (!sock)
        return 0;
    read_sock(sock, inode, facts);
    return 1;
}

// Entry of every send: keep what the exit needs when the socket may carry DNS queries.
static __always_inline int enter_send(u32 fd, u32 kind, u64 buffer, u64 count, u64 address)
{
    u64 id = current_pid_tgid();
    u32 tid = (u32)id;
    if (!is_watched(id >> 32))
        return 0;
    struct socket_facts facts = {};
    if (!find_socket(fd, &facts) || (facts.family != AF_INET && facts.family != AF_INET6))
        return 0;
    int peer_is_dns = facts.peer_port == __builtin_bswap16(DNS_PORT);
    struct send_call call = {.buffer = buffer, .count = count, .kind = kind};
    if (facts.type == SOCK_DGRAM) {
        if (kind == SEND_MSG && buffer) {
            struct user_msghdr_head head = {};
            if (bpf_probe_read_user(&head, sizeof(head), (void *)buffer) == 0)
                address = head.name;
        }
        // An address given to a connected UDP socket is where the datagram goes.
        call.to_dns = kind == SEND_MMSG || !address ? peer_is_dns : is_dns_address(address);
        if (kind != SEND_MMSG && !call.to_dns)
            return 0;
        call.transport = TRANSPORT_UDP;
    } else if (facts.type == SOCK_STREAM && facts.protocol == PROTOCOL_TCP) {
        // An address given to a connected TCP socket is ignored.
        if (!peer_is_dns)
            return 0;
        if (!follow_stream(&facts)) {
            add_unknown_socket_send();
            return 0;
        }
        call.transport = TRANSPORT_TCP;
        call.stream = facts.inode_number;
    } else {
        return 0;
    }
    dns_send_calls.update(&tid, &call);
    return 0;
}

TRACEPOINT_PROBE(syscalls, sys_enter_sendto)
{
    return enter_send(args->fd, SEND_PLAIN, (u64)args->buff, args->len, (u64)args->addr);
}
TRACEPOINT_PROBE(syscalls, sys_enter_write)
{
    return enter_send(args->fd, SEND_PLAIN, (u64)args->buf, args->count, 0);
}
TRACEPOINT_PROBE(syscalls, sys_enter_writev)
{
    return enter_send(args->fd, SEND_IOVEC, (u64)args->vec, args->vlen, 0);
}
TRACEPOINT_PROBE(syscalls, sys_enter_sendmsg)
{
    return enter_send(args->fd, SEND_MSG, (u64)args->msg, 1, 0);
}
TRACEPOINT_PROBE(syscalls, sys_enter_sendmmsg)
{
    return enter_send(args->fd, SEND_MMSG, (u64)args->mmsg, args->vlen, 0);
}
TRACEPOINT_PROBE(syscalls, sys_exit_sendto) { return count_send(args->ret); }
TRACEPOINT_PROBE(syscalls, sys_exit_write) { return count_send(args->ret); }
TRACEPOINT_PROBE(syscalls, sys_exit_writev) { return count_send(args->ret); }
TRACEPOINT_PROBE(syscalls, sys_exit_sendmsg) { return count_send(args->ret); }
TRACEPOINT_PROBE(syscalls, sys_exit_sendmmsg) { return count_send(args->ret); }

#else
// The socket layer's tracepoints, in the sender, with the syscall read from its registers.

#define UIO_MAXIOV 1024  // the most messages one sendmmsg sends

// sendmmsg: which of its messages a send is. The kernel sends them in order and stops at the
// first that fails; per thread, the vector of the call in progress and its next index.
struct mmsg_progress {
    u64 vector;
    u32 next;
    u32 reserved;
};
BPF_TABLE("lru_hash", u32, struct mmsg_progress, dns_mmsg_progress, MAX_THREADS);
// A TCP send to a followed stream is counted by a program of its own (count_tcp_send), reached
// by a tail call with the send in dns_send_calls, as the syscall tracepoints' exit counts it:
// inlined here, the stream's loop is walked once per path into it, past the verifier's limit
// of a million instructions.
BPF_PROG_ARRAY(dns_tcp_counter, 1);  // [0]: count_tcp_send, set by thread_observer/bpf_backend.py

// A socket a process opened (one with a file: a kernel socket, e.g. NFS's, sends for no
// process), of the INET or INET6 family.
static __always_inline int user_socket(u64 sock, struct socket_facts *facts)
{
    u64 socket = kernel_pointer(sock + SOCK_SK_SOCKET);
    u64 file = socket ? kernel_pointer(socket + SOCKET_FILE) : 0;
    u64 inode = file ? kernel_pointer(file + FILE_F_INODE) : 0;
    if (!inode)
        return 0;
    read_sock(sock, inode, facts);
    return facts->family == AF_INET || facts->family == AF_INET6;
}

// Before the first byte of a TCP send is queued, under the socket's lock: a stream to port 53
// that nothing was ever written to is followed from here on.
RAW_TRACEPOINT_PROBE(tcp_sendmsg_locked)
{
    // (const struct sock *sk, const struct msghdr *msg, const struct sk_buff *skb, int goal)
    struct socket_facts facts = {};
    if (is_watched(current_pid_tgid() >> 32) && user_socket(ctx->args[0], &facts) &&
        facts.peer_port == __builtin_bswap16(DNS_PORT))
        follow_stream(&facts);  // one first seen mid-stream counts at its sends
    return 0;
}

// The index of this message in the thread's sendmmsg of `vlen` messages at `vector`.
static __always_inline u64 mmsg_index(u32 tid, u64 vector, u64 vlen, long ret)
{
    vlen = vlen < UIO_MAXIOV ? vlen : UIO_MAXIOV;
    struct mmsg_progress *progress = dns_mmsg_progress.lookup(&tid);
    u64 index = progress && progress->vector == vector && progress->next < vlen ? progress->next
                                                                                : 0;
    if (ret < 0 || index + 1 >= vlen) {
        dns_mmsg_progress.delete(&tid);
    } else {
        struct mmsg_progress next = {.vector = vector, .next = index + 1};
        dns_mmsg_progress.update(&tid, &next);
    }
    return index;
}

// A user msghdr's destination (msg_name, its first field); 0 for none.
static __always_inline u64 message_name(u64 msghdr)
{
    u64 name = 0;
    if (msghdr)
        bpf_probe_read_user(&name, sizeof(name), (void *)msghdr);
    return name;
}

// The send syscall the thread is in, as the send syscalls' tracepoints describe theirs: its
// kind, buffer and count, and the address sendto gives. 0 for a send from elsewhere (io_uring,
// sendfile, splice), whose buffers are in no register.
static __always_inline u32 send_of_syscall(struct pt_regs *regs, struct send_call *call,
                                           u64 *address)
{
    u64 number = syscall_number(regs);
    call->buffer = syscall_argument(regs, 1);
    call->count = syscall_argument(regs, 2);
    *address = number == __NR_sendto ? syscall_argument(regs, 4) : 0;
    call->kind = number == __NR_sendto || number == __NR_write ? SEND_PLAIN
                 : number == __NR_writev                       ? SEND_IOVEC
                 : number == __NR_sendmsg                      ? SEND_MSG
                 : number == __NR_sendmmsg                     ? SEND_MMSG
                                                               : 0;
    return call->kind;
}

// UDP: 1 if the datagram just sent went to port 53. The address given to sendto, sendmsg or
// sendmmsg decides, even on a connected socket; else the socket's peer.
static __always_inline u64 udp_query(struct socket_facts *facts, struct pt_regs *regs, u32 tid,
                                     long ret)
{
    struct send_call call = {};
    u64 address = 0;
    u32 kind = send_of_syscall(regs, &call, &address);
    if (kind == SEND_MSG)
        address = message_name(call.buffer);
    else if (kind == SEND_MMSG)
        address = message_name(
            call.buffer + mmsg_index(tid, call.buffer, call.count, ret) * MMSGHDR_SIZE);
    if (ret < 0)
        return 0;
    return address ? is_dns_address(address) : facts->peer_port == __builtin_bswap16(DNS_PORT);
}

// TCP: a send of `sent` bytes to a port-53 stream, handed to count_tcp_send.
static __always_inline void tcp_sent(struct bpf_raw_tracepoint_args *ctx,
                                     struct transport_key *key, struct socket_facts *facts,
                                     struct pt_regs *regs, long sent)
{
    if (facts->protocol != PROTOCOL_TCP || facts->peer_port != __builtin_bswap16(DNS_PORT) ||
        sent <= 0)
        return;
    if (!dns_streams.lookup(&facts->inode_number)) {
        add_unknown_socket_send();
        return;
    }
    struct send_call call = {.stream = facts->inode_number, .transport = TRANSPORT_TCP};
    u64 address;  // ignored: a connected TCP socket's peer is where its bytes go
    u32 kind = send_of_syscall(regs, &call, &address);
    if (!kind || kind == SEND_MMSG) {
        // io_uring, sendfile, splice (or sendmmsg, which no DNS library uses on a stream): the
        // bytes are not followed, and where the stream is in its messages is lost with them.
        dns_streams.delete(&facts->inode_number);
        add_unknown_socket_send();
        return;
    }
    u32 tid = current_pid_tgid();  // as count_send looks it up
    dns_send_calls.update(&tid, &call);
    dns_tcp_counter.call(ctx, 0);
    dns_send_calls.delete(&tid);  // reached only if the tail call failed
}

// The tail of sock_send_length for a TCP send to a followed stream: the DNS messages that
// begin in the bytes it sent.
int count_tcp_send(struct bpf_raw_tracepoint_args *ctx)
{
    return count_send((int)ctx->args[1]);
}

// After every message a socket sent, in the sender: count what went to port 53.
RAW_TRACEPOINT_PROBE(sock_send_length)
{
    // (struct sock *sk, int ret, int flags): ret is the bytes sent, or the error
    u64 id = current_pid_tgid();
    u32 tgid = id >> 32;
    u64 generation = watched_generation(tgid);
    struct socket_facts facts = {};
    if (!generation || !user_socket(ctx->args[0], &facts))
        return 0;
    long ret = (int)ctx->args[1];
    struct pt_regs *regs = current_user_regs();
    struct transport_key key = {.tgid = tgid, .generation = generation};
    if (facts.type == SOCK_DGRAM) {
        key.transport = TRANSPORT_UDP;
        return add_queries(&key, udp_query(&facts, regs, (u32)id, ret));
    }
    if (facts.type == SOCK_STREAM)
        tcp_sent(ctx, &key, &facts, regs, ret);
    return 0;
}
#endif
