/* A native target with its own ground truth: N threads (created and joined one by one) and
 * M getaddrinfo("localhost") calls, after a ready line and a line on stdin; then it prints
 * the truth as JSON and waits for stdin to close. Built with gcc (glibc) and musl-gcc. */
#include <netdb.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

static void *nothing(void *arg) { return arg; }

static int make_threads(int count)
{
    int made = 0;
    for (int i = 0; i < count; i++) {
        pthread_t thread;
        if (pthread_create(&thread, NULL, nothing, NULL) == 0) {
            pthread_join(thread, NULL);
            made++;
        }
    }
    return made;
}

static int resolve(int count, int *failures)
{
    struct addrinfo hints, *result;
    memset(&hints, 0, sizeof(hints));
    hints.ai_socktype = SOCK_STREAM;
    for (int i = 0; i < count; i++) {
        if (getaddrinfo("localhost", "80", &hints, &result) == 0)
            freeaddrinfo(result);
        else
            (*failures)++;
    }
    return count;
}

int main(int argc, char **argv)
{
    int threads = argc > 1 ? atoi(argv[1]) : 10;
    int calls = argc > 2 ? atoi(argv[2]) : 10;
    char line[64];
    printf("{\"ready\": true, \"pid\": %d}\n", getpid());
    fflush(stdout);
    if (!fgets(line, sizeof(line), stdin))
        return 1;
    int failures = 0;
    int made = make_threads(threads);
    int resolved = resolve(calls, &failures);
    printf("{\"threads_started\": %d, \"getaddrinfo_calls\": %d, \"getaddrinfo_failures\": %d}\n",
           made, resolved, failures);
    fflush(stdout);
    while (fgets(line, sizeof(line), stdin))
        ;
    return 0;
}
