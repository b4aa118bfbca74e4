/*
 * Row (a) of make bench: the floor. One libcurl easy handle reused, the same
 * POST as create_case, the body read into memory, no parsing.
 *   curl_post URL CALLS [module]  ->  prints "calls us_per_call"
 * With "module": the same loop with the libcurl options and callbacks the
 * module sets (src/transport.c): timeouts, gzip, keep-alive probes, the
 * header and pre-request callbacks, the URL set each call. The difference to
 * (a) is what those options cost inside libcurl, apart from the module's code.
 */
#include <curl/curl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

typedef struct { char *p; size_t len, cap; } buf_t;

static size_t on_body(char *ptr, size_t size, size_t n, void *ud) {
    buf_t *b = ud;
    size_t k = size * n;
    if (b->len + k > b->cap) {
        b->cap = (b->len + k) * 2;
        b->p = realloc(b->p, b->cap);
        if (!b->p) return 0;
    }
    memcpy(b->p + b->len, ptr, k);
    b->len += k;
    return k;
}

static size_t on_header(char *ptr, size_t size, size_t n, void *ud) {
    if (n > 12 && strncasecmp(ptr, "retry-after:", 12) == 0) *(int *)ud = 1;
    return size * n;
}

#if LIBCURL_VERSION_NUM >= 0x075000
static int on_prereq(void *ud, char *a, char *b, int c, int d) {
    (void)ud; (void)a; (void)b; (void)c; (void)d;
    return CURL_PREREQFUNC_OK;
}
#endif

int main(int argc, char **argv) {
    static const char body[] = "{\"title\":\"Refund\",\"message\":{\"type\":\"message\","
        "\"message\":\"I'm reopening the closed case\",\"translateLangKey\":\"\"}}";
    struct curl_slist *h = NULL;
    struct timespec t0, t1;
    buf_t b = { 0 };
    long i, calls;
    int round;
    double best = 0;
    CURL *e;
    int module = argc == 4 && strcmp(argv[3], "module") == 0;
    char errbuf[CURL_ERROR_SIZE];
    int retry_after = 0;
    if (argc != 3 && !module) { fprintf(stderr, "usage: curl_post URL CALLS [module]\n"); return 2; }
    calls = atol(argv[2]);
    curl_global_init(CURL_GLOBAL_DEFAULT);
    e = curl_easy_init();
    h = curl_slist_append(h, "Content-Type: application/json");
    h = curl_slist_append(h, "Accept: application/json");
    h = curl_slist_append(h, "Authorization: Bearer test-key");
    h = curl_slist_append(h, "Expect:");
    curl_easy_setopt(e, CURLOPT_URL, argv[1]);
    curl_easy_setopt(e, CURLOPT_HTTPHEADER, h);
    curl_easy_setopt(e, CURLOPT_POSTFIELDS, body);
    curl_easy_setopt(e, CURLOPT_POSTFIELDSIZE, (long)(sizeof body - 1));
    curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, on_body);
    curl_easy_setopt(e, CURLOPT_WRITEDATA, &b);
    curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
    if (module) {
        h = curl_slist_append(h, "User-Agent: lua-acquire/0.1.0 libcurl/" LIBCURL_VERSION);
        curl_easy_setopt(e, CURLOPT_POST, 1L);
#if LIBCURL_VERSION_NUM >= 0x075000
        curl_easy_setopt(e, CURLOPT_PREREQFUNCTION, on_prereq);
#endif
        curl_easy_setopt(e, CURLOPT_HEADERFUNCTION, on_header);
        curl_easy_setopt(e, CURLOPT_HEADERDATA, &retry_after);
        curl_easy_setopt(e, CURLOPT_ERRORBUFFER, errbuf);
        curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, 30000L);
        curl_easy_setopt(e, CURLOPT_CONNECTTIMEOUT_MS, 10000L);
        curl_easy_setopt(e, CURLOPT_FOLLOWLOCATION, 0L);
        curl_easy_setopt(e, CURLOPT_PROTOCOLS_STR, "http,https");
        curl_easy_setopt(e, CURLOPT_ACCEPT_ENCODING, "gzip");
        curl_easy_setopt(e, CURLOPT_TCP_KEEPALIVE, 1L);
    }
    for (i = 0; i < 50; i++) { b.len = 0; curl_easy_perform(e); }   /* warm up */
    /* 5 rounds, the best one: the same rule as the Lua rows (bench.lua) */
    for (round = 0; round < 5; round++) {
        long m = calls / 5 > 0 ? calls / 5 : 1;
        double us;
        clock_gettime(CLOCK_MONOTONIC, &t0);
        for (i = 0; i < m; i++) {
            long status = 0;
            b.len = 0;
            if (module) {
                curl_easy_setopt(e, CURLOPT_URL, argv[1]);
                curl_easy_setopt(e, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)(sizeof body - 1));
                curl_easy_setopt(e, CURLOPT_POSTFIELDS, body);
            }
            if (curl_easy_perform(e) != CURLE_OK) { fprintf(stderr, "curl failed\n"); return 1; }
            curl_easy_getinfo(e, CURLINFO_RESPONSE_CODE, &status);
            if (status != 200 || b.len < 1000) { fprintf(stderr, "bad response %ld\n", status); return 1; }
        }
        clock_gettime(CLOCK_MONOTONIC, &t1);
        us = ((t1.tv_sec - t0.tv_sec) * 1e9 + (t1.tv_nsec - t0.tv_nsec)) / 1e3 / m;
        if (round == 0 || us < best) best = us;
    }
    printf("%ld %.2f\n", calls, best);
    curl_slist_free_all(h);
    curl_easy_cleanup(e);
    free(b.p);
    return 0;
}
