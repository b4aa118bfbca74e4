/*
 * testresolver.c: getaddrinfo() for the specs, loaded with LD_PRELOAD into
 * a child interpreter. The name in ACQ_SPEC_HOST resolves to 127.0.0.1
 * after ACQ_SPEC_DELAY_MS milliseconds (a resolver a network away), and
 * each lookup of it appends a line to the file ACQ_SPEC_LOOKUPS; every
 * other name goes to the C library. Test code only: built into .tmp/,
 * never installed, never part of acquire.so.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <fcntl.h>
#include <netdb.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

typedef int (*getaddrinfo_fn)(const char *, const char *, const struct addrinfo *,
                              struct addrinfo **);

int getaddrinfo(const char *node, const char *service, const struct addrinfo *hints,
                struct addrinfo **res) {
    getaddrinfo_fn real = (getaddrinfo_fn)dlsym(RTLD_NEXT, "getaddrinfo");
    const char *host = getenv("ACQ_SPEC_HOST");
    if (real == NULL) return EAI_SYSTEM;
    if (node && host && strcmp(node, host) == 0) {
        const char *log = getenv("ACQ_SPEC_LOOKUPS"), *ms = getenv("ACQ_SPEC_DELAY_MS");
        long delay = ms ? atol(ms) : 0;
        struct timespec ts;
        if (log) {                      /* one short O_APPEND write: lines never mix */
            int fd = open(log, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0600);
            if (fd >= 0) {
                if (write(fd, "lookup\n", 7) != 7) { /* the count will be short */ }
                close(fd);
            }
        }
        ts.tv_sec = delay / 1000;
        ts.tv_nsec = (delay % 1000) * 1000000L;
        nanosleep(&ts, NULL);
        node = "127.0.0.1";
    }
    return real(node, service, hints, res);
}
