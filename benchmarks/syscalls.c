/* Times, in a process nobody watches, the syscalls the DNS probe follows and a scheduler switch,
 * where the epoll mark runs: N write(2)s of one byte to /dev/null, N UDP sendto(2)s to a closed
 * loopback port (not 53), N socket(2) + close(2) pairs, and N round trips of one byte between
 * this process and a child over two pipes, both on one CPU (each side sleeps in read(2) until
 * the other writes, or is preempted by the side it wakes: two context switches per round
 * trip). Prints one JSON line of nanoseconds per operation, and the context switches of both
 * processes per round trip. */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static double now_ns(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec * 1e9 + t.tv_nsec;
}

static long context_switches(int who)
{
    struct rusage usage;
    getrusage(who, &usage);
    return usage.ru_nvcsw + usage.ru_nivcsw;
}

/* The round trips; returns nanoseconds per round trip (negative on failure) and sets
 * *switches to the context switches of both processes per round trip. */
static double pipe_round_trips(long count, double *switches)
{
    int there[2], back[2];
    if (pipe(there) || pipe(back))
        return -1;
    cpu_set_t one;
    CPU_ZERO(&one);
    CPU_SET(sched_getcpu(), &one);
    sched_setaffinity(0, sizeof(one), &one); /* the child inherits it */
    char byte = 0;
    pid_t child = fork();
    if (child < 0)
        return -1;
    if (child == 0) {
        for (long i = 0; i < count; i++)
            if (read(there[0], &byte, 1) != 1 || write(back[1], &byte, 1) != 1)
                _exit(1);
        _exit(0);
    }
    long before = context_switches(RUSAGE_SELF);
    double started = now_ns();
    for (long i = 0; i < count; i++)
        if (write(there[1], &byte, 1) != 1 || read(back[0], &byte, 1) != 1)
            return -1;
    double round_trip_ns = (now_ns() - started) / count;
    long mine = context_switches(RUSAGE_SELF) - before;
    int status;
    if (waitpid(child, &status, 0) != child || !WIFEXITED(status) || WEXITSTATUS(status))
        return -1;
    *switches = (double)(mine + context_switches(RUSAGE_CHILDREN)) / count;
    return round_trip_ns;
}

int main(int argc, char **argv)
{
    long count = argc > 1 ? atol(argv[1]) : 200000;
    int null = open("/dev/null", O_WRONLY);
    int udp = socket(AF_INET, SOCK_DGRAM, 0);
    struct sockaddr_in to = {.sin_family = AF_INET, .sin_port = htons(9)};
    inet_pton(AF_INET, "127.0.0.1", &to.sin_addr);
    char byte = 0;

    double started = now_ns();
    for (long i = 0; i < count; i++)
        if (write(null, &byte, 1) != 1)
            return 1;
    double write_ns = (now_ns() - started) / count;

    started = now_ns();
    for (long i = 0; i < count; i++)
        sendto(udp, &byte, 1, 0, (struct sockaddr *)&to, sizeof(to));
    double sendto_ns = (now_ns() - started) / count;

    started = now_ns();
    for (long i = 0; i < count; i++)
        close(socket(AF_INET, SOCK_DGRAM, 0));
    double socket_ns = (now_ns() - started) / count;

    double switches = 0;
    double round_trip_ns = pipe_round_trips(count, &switches);
    if (round_trip_ns < 0)
        return 1;

    printf("{\"write\": %.1f, \"sendto\": %.1f, \"socket_close\": %.1f, "
           "\"pipe_round_trip\": %.1f, \"switches_per_round_trip\": %.2f}\n",
           write_ns, sendto_ns, socket_ns, round_trip_ns, switches);
    return 0;
}
