/*
 * make bench, "A fresh handle per transfer": what the module's defence against
 * curl issue 11101 costs (src/transport.c). Two ways of making the same POST,
 * with the module's options, timed in interleaved rounds:
 *   reused  one easy handle, curl_easy_perform each call (the module before)
 *   fresh   a template handle duplicated for every transfer, run on a multi
 *           handle that keeps the connection, DNS and TLS sessions in a share
 *           (the module now)
 *   handles URL CALLS ROUNDS -> "handles_<way>_{wall,cpu}_{p25,med,p75} us" lines
 * Each round runs CALLS calls of each way, in alternating order; the figures are
 * the median and quartiles over the rounds, wall-clock and process CPU time.
 */
#include <curl/curl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static const char body[] = "{\"title\":\"Refund\",\"message\":{\"type\":\"message\","
    "\"message\":\"I'm reopening the closed case\",\"translateLangKey\":\"\"}}";
static size_t got;

static size_t on_body(char *p, size_t s, size_t n, void *ud) { (void)p; (void)ud; got += s * n; return s * n; }
static size_t on_header(char *p, size_t s, size_t n, void *ud) { (void)p; (void)ud; return s * n; }

static double secs(clockid_t id) {
    struct timespec t;
    clock_gettime(id, &t);
    return (double)t.tv_sec + t.tv_nsec / 1e9;
}

static void options(CURL *e, struct curl_slist *h) {
    curl_easy_setopt(e, CURLOPT_HTTPHEADER, h);
    curl_easy_setopt(e, CURLOPT_POST, 1L);
    curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, on_body);
    curl_easy_setopt(e, CURLOPT_HEADERFUNCTION, on_header);
    curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, 30000L);
    curl_easy_setopt(e, CURLOPT_CONNECTTIMEOUT_MS, 10000L);
    curl_easy_setopt(e, CURLOPT_HTTP_VERSION, (long)CURL_HTTP_VERSION_1_1);
    curl_easy_setopt(e, CURLOPT_ACCEPT_ENCODING, "gzip");
    curl_easy_setopt(e, CURLOPT_TCP_KEEPALIVE, 1L);
}

static void post(CURL *e, const char *url) {
    curl_easy_setopt(e, CURLOPT_URL, url);
    curl_easy_setopt(e, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)(sizeof body - 1));
    curl_easy_setopt(e, CURLOPT_POSTFIELDS, body);
}

static int cmp(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

int main(int argc, char **argv) {
    struct curl_slist *h = NULL;
    CURL *reused, *tmpl, *e = NULL;
    CURLM *multi;
    CURLSH *share;
    long calls, i;
    int rounds, r, way;
    double *res[2][2];                     /* [way][wall, cpu] */
    static const char *const names[2] = { "reused", "fresh" };
    if (argc != 4) { fprintf(stderr, "usage: handles URL CALLS ROUNDS\n"); return 2; }
    calls = atol(argv[2]);
    rounds = atoi(argv[3]);
    curl_global_init(CURL_GLOBAL_DEFAULT);
    h = curl_slist_append(h, "Content-Type: application/json");
    h = curl_slist_append(h, "Authorization: Bearer test-key");
    h = curl_slist_append(h, "Expect:");
    reused = curl_easy_init();
    options(reused, h);
    share = curl_share_init();
    curl_share_setopt(share, CURLSHOPT_SHARE, CURL_LOCK_DATA_CONNECT);
    curl_share_setopt(share, CURLSHOPT_SHARE, CURL_LOCK_DATA_DNS);
    curl_share_setopt(share, CURLSHOPT_SHARE, CURL_LOCK_DATA_SSL_SESSION);
    tmpl = curl_easy_init();
    options(tmpl, h);
    curl_easy_setopt(tmpl, CURLOPT_SHARE, share);
    multi = curl_multi_init();
    for (way = 0; way < 2; way++)
        for (i = 0; i < 2; i++) res[way][i] = calloc((size_t)rounds, sizeof(double));
    for (r = -1; r < rounds; r++) {        /* round -1: the warm-up */
        for (way = 0; way < 2; way++) {
            int w = (r & 1) ? 1 - way : way;       /* alternate which goes first */
            long n = r < 0 ? 50 : calls;
            double wall = secs(CLOCK_MONOTONIC), cpu = secs(CLOCK_PROCESS_CPUTIME_ID);
            for (i = 0; i < n; i++) {
                got = 0;
                if (w == 0) {
                    post(reused, argv[1]);
                    if (curl_easy_perform(reused) != CURLE_OK) { fprintf(stderr, "curl failed\n"); return 1; }
                } else {
                    int running = 1, q;
                    CURLMsg *m;
                    CURL *fresh = curl_easy_duphandle(tmpl);
                    if (e) curl_easy_cleanup(e);
                    e = fresh;
                    post(e, argv[1]);
                    curl_multi_add_handle(multi, e);
                    while (running) {
                        curl_multi_perform(multi, &running);
                        if (running) curl_multi_poll(multi, NULL, 0, 1000, NULL);
                    }
                    while ((m = curl_multi_info_read(multi, &q)) != NULL)
                        if (m->msg == CURLMSG_DONE && m->data.result != CURLE_OK) { fprintf(stderr, "curl failed\n"); return 1; }
                    curl_multi_remove_handle(multi, e);
                }
                if (got < 1000) { fprintf(stderr, "bad response\n"); return 1; }
            }
            if (r >= 0) {
                res[w][0][r] = (secs(CLOCK_MONOTONIC) - wall) * 1e6 / (double)n;
                res[w][1][r] = (secs(CLOCK_PROCESS_CPUTIME_ID) - cpu) * 1e6 / (double)n;
            }
        }
    }
    for (way = 0; way < 2; way++)
        for (i = 0; i < 2; i++) {
            double *v = res[way][i];
            qsort(v, (size_t)rounds, sizeof *v, cmp);
            printf("handles_%s_%s_p25 %.2f\nhandles_%s_%s_med %.2f\nhandles_%s_%s_p75 %.2f\n",
                   names[way], i ? "cpu" : "wall", v[rounds / 4],
                   names[way], i ? "cpu" : "wall", v[rounds / 2],
                   names[way], i ? "cpu" : "wall", v[(3 * rounds) / 4]);
        }
    return 0;
}
