// A storm of getaddrinfo("localhost") calls and pthread_create/join pairs, as cheap as a
// target can make them, so that the probes' cost per event dominates what is measured.
//
// usage: storm CALLS THREADS RESOLVERS CREATORS
//   CALLS getaddrinfo calls split over RESOLVERS threads, THREADS create+join pairs split
//   over CREATORS threads. Prints {"ready": true, "pid": N}, waits for a line on stdin, runs,
//   prints its own counts as JSON, then waits for stdin to close so it can still be scraped.
#include <netdb.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

struct share {
    long count;
    long done;
    long failed;
    double finished;  // seconds from the start
};

static double started;

static void *nothing(void *arg) { return arg; }

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static void *resolve(void *arg)
{
    struct share *share = arg;
    struct addrinfo hints;
    memset(&hints, 0, sizeof(hints));
    hints.ai_socktype = SOCK_STREAM;
    for (long i = 0; i < share->count; i++) {
        struct addrinfo *result = NULL;
        // "localhost" comes from /etc/hosts: no query ever leaves the machine.
        if (getaddrinfo("localhost", "80", &hints, &result) == 0)
            freeaddrinfo(result);
        else
            share->failed++;
        share->done++;
    }
    share->finished = now() - started;
    return NULL;
}

static void *create(void *arg)
{
    struct share *share = arg;
    for (long i = 0; i < share->count; i++) {
        pthread_t thread;
        if (pthread_create(&thread, NULL, nothing, NULL) != 0) {
            share->failed++;
            continue;
        }
        pthread_join(thread, NULL);
        share->done++;
    }
    share->finished = now() - started;
    return NULL;
}

int main(int argc, char **argv)
{
    if (argc != 5) {
        fprintf(stderr, "usage: %s CALLS THREADS RESOLVERS CREATORS\n", argv[0]);
        return 2;
    }
    long calls = atol(argv[1]), threads = atol(argv[2]);
    int resolvers = atoi(argv[3]), creators = atoi(argv[4]);
    int workers = resolvers + creators;
    if (workers < 1 || resolvers < 0 || creators < 0)
        return 2;
    struct share *shares = calloc(workers, sizeof(*shares));
    pthread_t *ids = calloc(workers, sizeof(*ids));
    char line[64];

    printf("{\"ready\": true, \"pid\": %d}\n", getpid());
    fflush(stdout);
    if (!fgets(line, sizeof(line), stdin))
        return 1;
    started = now();
    for (int i = 0; i < workers; i++) {
        int resolver = i < resolvers;
        long total = resolver ? calls : threads, parts = resolver ? resolvers : creators;
        long index = resolver ? i : i - resolvers;
        shares[i].count = total / parts + (index < total % parts);
        pthread_create(&ids[i], NULL, resolver ? resolve : create, &shares[i]);
    }
    // The workers count too: every thread the process created.
    long resolved = 0, created = workers, failed = 0;
    double resolving = 0, creating = 0;
    for (int i = 0; i < workers; i++) {
        pthread_join(ids[i], NULL);
        failed += shares[i].failed;
        if (i < resolvers) {
            resolved += shares[i].done;
            resolving = shares[i].finished > resolving ? shares[i].finished : resolving;
        } else {
            created += shares[i].done;
            creating = shares[i].finished > creating ? shares[i].finished : creating;
        }
    }
    printf("{\"getaddrinfo_calls\": %ld, \"getaddrinfo_seconds\": %.6f, "
           "\"threads_created\": %ld, \"threads_seconds\": %.6f, \"failures\": %ld, "
           "\"seconds\": %.6f}\n",
           resolved, resolving, created, creating, failed, now() - started);
    fflush(stdout);
    while (fgets(line, sizeof(line), stdin))
        ;
    return 0;
}
