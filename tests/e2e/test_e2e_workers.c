/* SPDX-License-Identifier: MIT */
/*
 * test_e2e_workers.c - WORKERS=2 from the outside: both loops serve, a blocking `before` request
 * stalls only its own worker, /metrics sums both, shutdown drains both and exits 0, and a second
 * instance on the same port still fails to start.
 *
 * Which worker serves a connection is the kernel's choice (both loops watch one listening
 * socket), so the tests learn it from the X-Worker header on the connection's first answer
 * instead of assuming it. Nothing waits on a sleep: while one worker is blocked it cannot accept,
 * so a new connection is necessarily the other worker's.
 */
#define _GNU_SOURCE /* strcasestr */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "e2e/e2e.h"

/* Sends one GET on fd. */
static void send_get(int fd, const char *path)
{
    char req[512];
    int n = snprintf(req, sizeof(req), "GET %s HTTP/1.1\r\nHost: t\r\n\r\n", path);

    assert_int_equal(send(fd, req, (size_t)n, MSG_NOSIGNAL), n);
}

/*
 * Reads one whole response on fd (headers and Content-Length body) into buf; returns the status
 * and stores the X-Worker header's value in *worker (-1 when absent); -1 after timeout_ms.
 */
static int read_resp(int fd, char *buf, size_t cap, int *worker, int timeout_ms)
{
    size_t len = 0;
    uint64_t until = e2e_now_ms() + (uint64_t)timeout_ms;
    struct timeval tv = {.tv_sec = 0, .tv_usec = 100000};

    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    for (;;) {
        char *end = NULL;
        ssize_t n;

        buf[len] = '\0';
        end = strstr(buf, "\r\n\r\n");
        if (end != NULL) {
            const char *cl = strcasestr(buf, "\r\nContent-Length:");
            size_t body = cl != NULL && cl < end ? strtoul(cl + 17, NULL, 10) : 0;

            if (len >= (size_t)(end + 4 - buf) + body)
                break;
        }
        if (e2e_now_ms() >= until)
            return -1;
        assert_true(len < cap - 1);
        n = recv(fd, buf + len, cap - 1 - len, 0);
        if (n > 0)
            len += (size_t)n;
        else
            assert_true(n < 0); /* a timeout tick; a close here is a failure */
    }
    {
        const char *w = strcasestr(buf, "\r\nX-Worker:");

        *worker = w != NULL ? atoi(w + 11) : -1;
    }
    return atoi(buf + 9);
}

static const char *const two[] = {"WORKERS=2", NULL};

/*
 * Opens connections until one is served by worker `want`; returns it, or fails after 30 s. The
 * kernel wakes both loops for each connection and the first to accept wins, which on a busy
 * machine can be the same loop many times in a row: hence time, not a count of attempts.
 */
static int conn_of_worker(const e2e_proc *p, int want)
{
    char buf[4096];
    uint64_t until = e2e_now_ms() + 30000;

    while (e2e_now_ms() < until) {
        int fd = e2e_connect(p);
        int w, status;

        assert_true(fd >= 0);
        send_get(fd, "/healthz");
        status = read_resp(fd, buf, sizeof(buf), &w, 10000);
        if (status != 200)
            fail_msg("/healthz answered %d: %s", status, buf);
        if (w == want)
            return fd;
        close(fd);
    }
    fail_msg("no connection was served by worker %d", want);
    return -1;
}

/* Both loops serve, each answers with its id; and /metrics sums what both counted. */
static void test_both_serve_and_metrics_sum(void **state)
{
    e2e_proc p;
    int fd0, fd1;
    char buf[65536];
    int w;
    e2e_resp r;
    char line[256];
    int n0 = 0, n1 = 0;

    (void)state;
    e2e_start(&p, two, NULL, true);
    fd0 = conn_of_worker(&p, 0);
    fd1 = conn_of_worker(&p, 1);
    /* conn_of_worker counted some /healthz of its own: read the total first, then add known
     * numbers on each worker's connection. */
    e2e_get(&p, "/metrics", &r);
    assert_int_equal(r.status, 200);
    {
        const char *key = "hs_http_requests_total{route=\"/healthz\",method=\"GET\","
                          "variant=\"none\",status=\"200\"} ";
        const char *at = strstr(r.body, key);
        long before = at != NULL ? atol(at + strlen(key)) : -1;

        assert_true(before >= 2);
        assert_non_null(strstr(r.body, "hs_event_loop_lag_seconds{worker=\"0\"}"));
        assert_non_null(strstr(r.body, "hs_event_loop_lag_seconds{worker=\"1\"}"));
        assert_non_null(strstr(r.body, "hs_metrics_workers_missing 0\n"));
        /* One family per name, even though two texts were summed. */
        at = strstr(r.body, "# TYPE hs_http_requests_total counter");
        assert_non_null(at);
        assert_null(strstr(at + 1, "# TYPE hs_http_requests_total counter"));
        e2e_resp_free(&r);
        for (int i = 0; i < 7; i++, n0++) {
            send_get(fd0, "/healthz");
            assert_int_equal(read_resp(fd0, buf, sizeof(buf), &w, 10000), 200);
            assert_int_equal(w, 0);
        }
        for (int i = 0; i < 5; i++, n1++) {
            send_get(fd1, "/healthz");
            assert_int_equal(read_resp(fd1, buf, sizeof(buf), &w, 10000), 200);
            assert_int_equal(w, 1);
        }
        /* Asked on either worker, the sum is the same. */
        for (int k = 0; k < 2; k++) {
            int fd = k == 0 ? fd0 : fd1;
            const char *body;

            send_get(fd, "/metrics");
            assert_int_equal(read_resp(fd, buf, sizeof(buf), &w, 10000), 200);
            assert_int_equal(w, k);
            body = strstr(buf, key);
            assert_non_null(body);
            snprintf(line, sizeof(line), "%ld", before + n0 + n1);
            assert_memory_equal(body + strlen(key), line, strlen(line));
        }
    }
    close(fd0);
    close(fd1);
    e2e_stop(&p);
}

/*
 * A blocking `before` request holds its worker's loop for its whole statement (4 s); the other
 * worker keeps answering /healthz on new connections meanwhile. A probe connection accepted by
 * worker 0 in the instant before it blocked would wait with it: such a probe is given up after
 * PROBE_MS and not counted. The proof is that worker 1 answered probes within PROBE_MS each
 * while worker 0's request was still unanswered, and that request took its full 4 s.
 */
#define PROBE_MS 1000

/*
 * Starts the service with env, warms up `before`'s own connection on a connection served by
 * worker 0, then sends a `before` request that holds worker 0's loop for delay_ms. Returns that
 * connection; *t0 is when the blocking request went out. Skips without a database.
 */
static int block_worker0(e2e_proc *p, const char *const *env, int delay_ms, uint64_t *t0)
{
    char buf[65536], path[64];
    int w, fd;

    if (getenv("TEST_DATABASE_URL") == NULL)
        skip();
    e2e_start(p, env, NULL, true);
    fd = conn_of_worker(p, 0);
    /* A warm-up: before's own connection is opened by its first request. */
    send_get(fd, "/before/users/1");
    assert_int_equal(read_resp(fd, buf, sizeof(buf), &w, 30000), 200);
    snprintf(path, sizeof(path), "/before/users/1?delay_ms=%d", delay_ms);
    *t0 = e2e_now_ms();
    send_get(fd, path);
    return fd;
}

static void test_blocking_before_stalls_one_worker(void **state)
{
    const char *const env[] = {"WORKERS=2", "BEFORE_ROUTES=on", NULL};
    e2e_proc p;
    char buf[65536];
    int w, fd, fast = 0;
    uint64_t t0;

    (void)state;
    fd = block_worker0(&p, env, 4000, &t0);
    while (fast < 5 && e2e_now_ms() - t0 < 3000) {
        int c = e2e_connect(&p);
        uint64_t s = e2e_now_ms();
        int status;

        assert_true(c >= 0);
        send_get(c, "/healthz");
        status = read_resp(c, buf, sizeof(buf), &w, PROBE_MS);
        close(c);
        if (status == 200 && w == 1 && e2e_now_ms() - s < PROBE_MS)
            fast++;
    }
    /* Worker 0's answer has not come yet: it is still inside the statement. */
    {
        char peek;

        assert_true(recv(fd, &peek, 1, MSG_DONTWAIT | MSG_PEEK) < 0);
    }
    assert_int_equal(fast, 5);
    assert_int_equal(read_resp(fd, buf, sizeof(buf), &w, 30000), 200);
    assert_int_equal(w, 0);
    assert_true(e2e_now_ms() - t0 >= 4000);
    close(fd);
    e2e_stop(&p);
}

/* A stalled worker fails liveness on every worker (LIVENESS_MAX_STALL_MS). */
static void test_stalled_worker_fails_liveness(void **state)
{
    const char *const env[] = {"WORKERS=2", "BEFORE_ROUTES=on", "LIVENESS_MAX_STALL_MS=500", NULL};
    e2e_proc p;
    char buf[65536];
    int w, fd, status = 200;
    uint64_t t0;

    (void)state;
    fd = block_worker0(&p, env, 5000, &t0);
    /* Worker 1 answers; once worker 0's probe is 500 ms late, with 503 naming worker 0. */
    while (status != 503 && e2e_now_ms() - t0 < 4500) {
        int c = e2e_connect(&p);

        assert_true(c >= 0);
        send_get(c, "/healthz");
        status = read_resp(c, buf, sizeof(buf), &w, PROBE_MS);
        close(c);
        if (status != 503)
            e2e_sleep_ms(20);
    }
    assert_int_equal(status, 503);
    assert_int_equal(w, 1);
    assert_non_null(strstr(buf, "loop_stalled"));
    assert_non_null(strstr(buf, "worker 0"));
    assert_int_equal(read_resp(fd, buf, sizeof(buf), &w, 30000), 200);
    close(fd);
    e2e_stop(&p);
}

/* SIGTERM with a slow request in flight on each worker: both are answered, and the exit is 0. */
static void test_shutdown_drains_every_worker(void **state)
{
    e2e_proc p;
    char buf[65536];
    int fd[2], w;
    char *log;

    (void)state;
    if (getenv("TEST_DATABASE_URL") == NULL)
        skip();
    e2e_start(&p, two, NULL, true);
    fd[0] = conn_of_worker(&p, 0);
    fd[1] = conn_of_worker(&p, 1);
    send_get(fd[0], "/after/users/1?delay_ms=1500");
    send_get(fd[1], "/after/users/2?delay_ms=1500");
    /* Both are in flight once /metrics counts two (asked on a third connection). */
    for (int i = 0;; i++) {
        e2e_resp r;
        bool two_in_flight;

        assert_true(i < 500);
        e2e_get(&p, "/metrics", &r);
        two_in_flight = strstr(r.body, "\nhs_http_requests_in_flight 3\n") != NULL;
        e2e_resp_free(&r);
        if (two_in_flight)
            break;
        e2e_sleep_ms(10);
    }
    e2e_signal(&p, SIGTERM);
    for (int k = 0; k < 2; k++) {
        assert_int_equal(read_resp(fd[k], buf, sizeof(buf), &w, 15000), 200);
        assert_int_equal(w, k);
        close(fd[k]);
    }
    assert_int_equal(e2e_wait_exit(&p, 15000), 0);
    log = e2e_log(&p);
    /* Each worker ran its own sequence to the end. */
    assert_non_null(strstr(log, "\"step\":\"close\",\"worker\":0"));
    assert_non_null(strstr(log, "\"step\":\"close\",\"worker\":1"));
    free(log);
}

/* The shared socket is bound without SO_REUSEPORT: a second instance on the port fails. */
static void test_second_instance_refused(void **state)
{
    e2e_proc a, b;
    char port[32];
    const char *const env[] = {"WORKERS=2", port, NULL};

    (void)state;
    e2e_start(&a, two, NULL, true);
    snprintf(port, sizeof(port), "PORT=%d", a.port);
    e2e_start(&b, env, NULL, false);
    assert_int_equal(e2e_wait_exit(&b, 15000), 1);
    e2e_stop(&a);
}

static int teardown(void **state)
{
    (void)state;
    e2e_kill_all();
    return 0;
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_teardown(test_both_serve_and_metrics_sum, teardown),
        cmocka_unit_test_teardown(test_blocking_before_stalls_one_worker, teardown),
        cmocka_unit_test_teardown(test_stalled_worker_fails_liveness, teardown),
        cmocka_unit_test_teardown(test_shutdown_drains_every_worker, teardown),
        cmocka_unit_test_teardown(test_second_instance_refused, teardown),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
