/* Times the syscalls the DNS probe follows, in a process nobody watches: N write(2)s of one
 * byte to /dev/null, N UDP sendto(2)s to a closed loopback port (not 53), N socket(2) +
 * close(2) pairs. Prints one JSON line of nanoseconds per operation. */
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static double now_ns(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec * 1e9 + t.tv_nsec;
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

    printf("{\"write\": %.1f, \"sendto\": %.1f, \"socket_close\": %.1f}\n", write_ns, sendto_ns,
           socket_ns);
    return 0;
}
