/* SPDX-License-Identifier: MIT */
/*
 * test_service_db_faults.c - the built service with the fault-injecting proxy
 * (tests/fault/pgproxy.py) between it and TEST_DATABASE_URL's server: what a client sees when
 * cancel requests never return, when the network silently drops everything (idle, then with a
 * request in flight), when every connection is reset, and when the server drops each connection
 * shortly after accepting it. Each case checks the client's status and the bounds, and prints
 * the time to answer and the time to recover (docs/database.md quotes them).
 *
 * Statuses are always the API's: 200, or a clean 503/504 in the error shape; never a 500. Every
 * time bound is wide relative to the setting it follows from (a busy machine only slows things).
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <inttypes.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>

#include <curl/curl.h>
#include <jansson.h>
#include <libpq-fe.h>

#include "e2e/e2e.h"
#include "fault/pgproxy.h"

#define DEADLINE_MS 1000 /* REQUEST_TIMEOUT_MS */
#define CANCEL_MS   1000 /* DB_CANCEL_TIMEOUT_MS */

static pgp proxy;
static char url[300];

static int group_setup(void **state)
{
    const char *u = getenv("TEST_DATABASE_URL");
    char proxied[256];

    (void)state;
    if (u == NULL || *u == '\0')
        u = "postgresql://postgres@127.0.0.1:54329/hindsight";
    if (pgp_start(&proxy, pgp_url_port(u)) != 0)
        fail_msg("cannot start the proxy");
    pgp_url(&proxy, u, proxied, sizeof(proxied));
    snprintf(url, sizeof(url), "DATABASE_URL=%s", proxied);
    return 0;
}

static int group_teardown(void **state)
{
    (void)state;
    e2e_kill_all();
    pgp_stop(&proxy);
    return 0;
}

static void heal(void)
{
    assert_int_equal(pgp_cmd(&proxy, "pass"), 0);
    assert_int_equal(pgp_cmd(&proxy, "cancel_hang off"), 0);
    assert_int_equal(pgp_cmd(&proxy, "kill_after 0"), 0);
    assert_int_equal(pgp_cmd(&proxy, "delay 0"), 0);
}

static int test_teardown(void **state)
{
    (void)state;
    heal();
    e2e_kill_all();
    return 0;
}

/* GET path: its status, which must be 200, 503 or 504 with the API's error shape; *ms its time. */
static long get(const e2e_proc *p, const char *path, uint64_t *ms)
{
    e2e_resp r;
    long status;

    e2e_get(p, path, &r);
    status = r.status;
    if (ms != NULL)
        *ms = (uint64_t)(r.total_s * 1000.0);
    if (status != 200 && status != 503 && status != 504)
        fail_msg("%s answered %ld %s", path, status, r.body != NULL ? r.body : "");
    /* Readiness has its own body ({"status":"unavailable","db":"down"}); routes the error shape. */
    if (status != 200 && strcmp(path, "/readyz") != 0 &&
        (r.body == NULL || strstr(r.body, "\"error\"") == NULL))
        fail_msg("%s answered %ld without the error shape: %s", path, status,
                 r.body != NULL ? r.body : "");
    e2e_resp_free(&r);
    return status;
}

/* Polls path until it answers want; returns the ms it took, failing after max_ms. */
static uint64_t wait_status(const e2e_proc *p, const char *path, long want, int max_ms)
{
    uint64_t t0 = e2e_now_ms();

    while (get(p, path, NULL) != want) {
        if (e2e_now_ms() - t0 > (uint64_t)max_ms)
            fail_msg("%s did not answer %ld within %d ms", path, want, max_ms);
        e2e_sleep_ms(50);
    }
    return e2e_now_ms() - t0;
}

static void start(e2e_proc *p, const char *pool)
{
    const char *env[] = {
        url, pool, "REQUEST_TIMEOUT_MS=1000", "DB_CANCEL_TIMEOUT_MS=1000", "HOST=127.0.0.1", NULL};

    e2e_start(p, env, NULL, true);
    print_message("service log: %s\n", p->log_path);
    wait_status(p, "/readyz", 200, 30000);
}

typedef struct slow_req {
    pthread_t t;
    const e2e_proc *p;
    long status;
    uint64_t ms;
} slow_req;

static void *slow_get(void *arg)
{
    slow_req *s = arg;
    e2e_resp r;

    e2e_get(s->p, "/after/users/42/dashboard?delay_ms=5000", &r);
    s->status = r.status;
    s->ms = (uint64_t)(r.total_s * 1000.0);
    e2e_resp_free(&r);
    return NULL;
}

/* Four requests past their deadline while their cancel requests hang (pool of 4): each answers
 * 504 at its deadline, fresh requests answer 200 again within the cancel bound plus a
 * reconnect, readiness stays true, and SIGTERM ends the service cleanly. */
static void test_hung_cancels(void **state)
{
    e2e_proc p;
    slow_req s[4];
    uint64_t t0;
    uint64_t back;

    (void)state;
    start(&p, "DB_POOL_SIZE=4");
    assert_int_equal(pgp_cmd(&proxy, "cancel_hang on"), 0);
    for (int i = 0; i < 4; i++) {
        s[i].p = &p;
        assert_int_equal(pthread_create(&s[i].t, NULL, slow_get, &s[i]), 0);
    }
    for (int i = 0; i < 4; i++)
        pthread_join(s[i].t, NULL);
    t0 = e2e_now_ms();
    for (int i = 0; i < 4; i++) {
        print_message("hung cancel: dashboard answered %ld in %" PRIu64 " ms\n", s[i].status,
                      s[i].ms);
        assert_int_equal(s[i].status, 504);
        assert_true(s[i].ms < DEADLINE_MS + 3000);
    }
    back = wait_status(&p, "/after/users/42", 200, 15000);
    print_message("hung cancel: /after/users/42 answered 200 again %" PRIu64 " ms later\n",
                  e2e_now_ms() - t0);
    (void)back;
    /* Readiness is every worker's pool (WORKERS > 1): the others may still be replacing the
     * connections whose cancel hung. */
    assert_true(wait_status(&p, "/readyz", 200, 15000) < 15000);
    assert_true(pgp_stat(&proxy, "cancels_swallowed") >= 1);
    e2e_stop(&p);
}

/* A silent partition (nothing forwarded, sockets kept): an idle service reports db down within
 * 30 s; a request meanwhile answers 503/504 by its deadline; once healed, readiness and the
 * route return within a few seconds. */
static void test_silent_partition(void **state)
{
    e2e_proc p;
    uint64_t t0;
    uint64_t ms;
    long st;
    uint64_t down;

    (void)state;
    start(&p, "DB_POOL_SIZE=2");
    assert_int_equal(pgp_cmd(&proxy, "blackhole"), 0);
    t0 = e2e_now_ms();
    st = get(&p, "/after/users/42", &ms);
    print_message("partition: /after/users/42 answered %ld in %" PRIu64 " ms\n", st, ms);
    assert_true(st == 503 || st == 504);
    assert_true(ms < DEADLINE_MS + 3000);
    down = wait_status(&p, "/readyz", 503, 40000);
    print_message("partition: /readyz 503 after %" PRIu64 " ms\n", e2e_now_ms() - t0);
    (void)down;
    assert_true(e2e_now_ms() - t0 < 30000);
    st = get(&p, "/after/users/42", &ms);
    print_message("partition, pool down: /after/users/42 answered %ld in %" PRIu64 " ms\n", st, ms);
    /* 504 at the deadline while a reconnection attempt is still pending (its connect timeout
     * has not expired), 503 at once after one has failed. */
    assert_true(st == 503 || st == 504);
    assert_true(ms < DEADLINE_MS + 3000);
    assert_int_equal(pgp_cmd(&proxy, "pass"), 0);
    t0 = e2e_now_ms();
    wait_status(&p, "/readyz", 200, 20000);
    print_message("partition healed: /readyz 200 after %" PRIu64 " ms\n", e2e_now_ms() - t0);
    wait_status(&p, "/after/users/42", 200, 20000);
    print_message("partition healed: /after/users/42 200 after %" PRIu64 " ms\n",
                  e2e_now_ms() - t0);
    assert_true(e2e_now_ms() - t0 < 10000);
    e2e_stop(&p);
}

/* Every connection reset: requests on them answer 503 at once; the pool reconnects. */
static void test_reset(void **state)
{
    e2e_proc p;
    uint64_t t0;
    uint64_t ms;
    long st;

    (void)state;
    start(&p, "DB_POOL_SIZE=2");
    assert_int_equal(pgp_cmd(&proxy, "reset"), 0);
    t0 = e2e_now_ms();
    st = get(&p, "/after/users/42", &ms);
    print_message("reset: /after/users/42 answered %ld in %" PRIu64 " ms\n", st, ms);
    assert_true(ms < DEADLINE_MS + 3000);
    assert_int_equal(pgp_cmd(&proxy, "pass"), 0);
    wait_status(&p, "/after/users/42", 200, 15000);
    print_message("reset: /after/users/42 200 again %" PRIu64 " ms after the reset\n",
                  e2e_now_ms() - t0);
    e2e_stop(&p);
}

/* The server drops every connection 100 ms after accepting it: requests answer 503/504 by their
 * deadline, never 500; the service still stops cleanly; once it stops flapping, it recovers. */
static void test_flapping(void **state)
{
    e2e_proc p;
    uint64_t t0;
    uint64_t ms;
    int ok = 0;
    int refused = 0;

    (void)state;
    start(&p, "DB_POOL_SIZE=16");
    assert_int_equal(pgp_cmd(&proxy, "kill_after 100"), 0);
    assert_int_equal(pgp_cmd(&proxy, "reset"), 0);
    assert_int_equal(pgp_cmd(&proxy, "pass"), 0);
    for (t0 = e2e_now_ms(); e2e_now_ms() - t0 < 4000; e2e_sleep_ms(100)) {
        long st = get(&p, "/after/users/42", &ms);

        assert_true(ms < DEADLINE_MS + 3000);
        if (st == 200)
            ok++;
        else
            refused++;
    }
    print_message("flapping: %d answered 200, %d refused (503/504) in 4 s\n", ok, refused);
    assert_int_equal(pgp_cmd(&proxy, "kill_after 0"), 0);
    t0 = e2e_now_ms();
    wait_status(&p, "/readyz", 200, 20000);
    wait_status(&p, "/after/users/42", 200, 20000);
    print_message("flapping stopped: 200 again after %" PRIu64 " ms\n", e2e_now_ms() - t0);
    e2e_stop(&p);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_teardown(test_hung_cancels, test_teardown),
        cmocka_unit_test_teardown(test_silent_partition, test_teardown),
        cmocka_unit_test_teardown(test_reset, test_teardown),
        cmocka_unit_test_teardown(test_flapping, test_teardown),
    };

    curl_global_init(CURL_GLOBAL_DEFAULT);
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
