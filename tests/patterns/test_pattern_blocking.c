/* SPDX-License-Identifier: MIT */
/*
 * test_pattern_blocking.c - pattern 0, "don't block the loop", against the built binary.
 *
 * The proof is what /healthz does while slow user queries are in flight: /healthz never touches
 * the database, so its latency is a direct reading of whether the loop is turning. With slow
 * `before` requests it waits for them (the loop thread is inside PQexecParams); with slow `after`
 * requests it answers at once. Both routes must still return the same, correct body, play the
 * delay, validate their input, and `before` must recover from a broken connection.
 *
 * It runs with WORKERS=1 whatever the environment says: with several loops a blocking `before`
 * request stalls only its own worker and every connection on it, while the other workers keep
 * answering /healthz (test_e2e_workers shows that side), so the stall would show only on the
 * probes the kernel happened to hand to the blocked worker.
 *
 * Latencies are asserted with wide margins against the injected delay (the machine is shared):
 * the stall must be at least 0.6 of a delay, and the unblocked probe under 0.3 of one.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "pt_async.h"

#define DELAY_MS   400
#define SLOW_CALLS 4

static int setup(void **state)
{
    static e2e_proc proc;
    static const char *const env[] = {"WORKERS=1", NULL};

    pt_init();
    e2e_start(&proc, env, NULL, true);
    *state = &proc;
    return 0;
}

static int teardown(void **state)
{
    e2e_stop(*state);
    return 0;
}

static void check_user_42(const e2e_resp *r)
{
    json_t *v = pt_json(r);
    char timing[256];

    assert_int_equal(r->status, 200);
    assert_int_equal(json_integer_value(json_object_get(v, "id")), 42);
    assert_string_equal(json_string_value(json_object_get(v, "name")), "User 42");
    assert_string_equal(json_string_value(json_object_get(v, "email")), "user42@example.com");
    assert_string_equal(json_string_value(json_object_get(v, "created_at")),
                        "2024-01-01T00:42:00Z");
    assert_int_equal(json_object_size(v), 4);
    assert_true(e2e_header(r, "Server-Timing", timing, sizeof(timing)));
    assert_non_null(strstr(timing, "db;dur="));
    json_decref(v);
}

/* Same statement, same body, same errors, on both sides of the pair. */
static void test_user_bodies_and_errors(void **state)
{
    static const char *const variants[] = {"before", "after"};
    static const char *const bad_ids[] = {"abc", "0", "-1", "1x", "+1", "99999999999999999999"};
    static const char *const bad_delays[] = {"5001", "-1", "abc", "1.5"};
    e2e_proc *p = *state;
    char path[128];
    e2e_resp r;

    for (size_t v = 0; v < 2; v++) {
        snprintf(path, sizeof(path), "/%s/users/42", variants[v]);
        e2e_get(p, path, &r);
        check_user_42(&r);
        e2e_resp_free(&r);
        snprintf(path, sizeof(path), "/%s/users/99999999", variants[v]);
        e2e_get(p, path, &r);
        pt_assert_error(&r, 404, "not_found");
        e2e_resp_free(&r);
        for (size_t i = 0; i < sizeof(bad_ids) / sizeof(bad_ids[0]); i++) {
            snprintf(path, sizeof(path), "/%s/users/%s", variants[v], bad_ids[i]);
            e2e_get(p, path, &r);
            pt_assert_error(&r, 400, "bad_request");
            e2e_resp_free(&r);
        }
        for (size_t i = 0; i < sizeof(bad_delays) / sizeof(bad_delays[0]); i++) {
            snprintf(path, sizeof(path), "/%s/users/42?delay_ms=%s", variants[v], bad_delays[i]);
            e2e_get(p, path, &r);
            pt_assert_error(&r, 400, "bad_request");
            e2e_resp_free(&r);
        }
    }
}

/* delay_ms is played on the server: each route takes at least about that long. */
static void test_delay_is_played(void **state)
{
    e2e_proc *p = *state;
    e2e_resp r;

    e2e_get(p, "/before/users/42?delay_ms=200", &r);
    check_user_42(&r);
    assert_true(r.total_s >= 0.18);
    e2e_resp_free(&r);
    e2e_get(p, "/after/users/42?delay_ms=200", &r);
    check_user_42(&r);
    assert_true(r.total_s >= 0.18);
    e2e_resp_free(&r);
}

typedef struct probe_stats {
    double worst_ms;
    double median_ms; /* shown for the record; a single long stall hardly moves it */
    int probes;
} probe_stats;

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a;
    double y = *(const double *)b;

    return (x > y) - (x < y);
}

/*
 * Starts SLOW_CALLS slow requests to variant and probes /healthz, one probe after another, until
 * they are all answered. Each slow call must succeed and take about the delay.
 */
static probe_stats probe_during(const e2e_proc *p, const char *variant)
{
    pt_call calls[SLOW_CALLS];
    double lat[1024];
    probe_stats st = {0, 0, 0};
    char path[128];
    bool done = false;

    snprintf(path, sizeof(path), "/%s/users/42?delay_ms=%d", variant, DELAY_MS);
    for (int i = 0; i < SLOW_CALLS; i++)
        pt_call_start(&calls[i], p, "GET", path, NULL);
    e2e_sleep_ms(30);
    while (!done && st.probes < 1024) {
        e2e_resp r;

        e2e_get(p, "/healthz", &r);
        assert_int_equal(r.status, 200);
        lat[st.probes++] = r.total_s * 1000;
        e2e_resp_free(&r);
        /* The calls all end by SLOW_CALLS x delay, even one after another. */
        done = st.probes > 3 && e2e_now_ms() > calls[0].start_ms + SLOW_CALLS * DELAY_MS + 100;
        e2e_sleep_ms(5);
    }
    for (int i = 0; i < SLOW_CALLS; i++) {
        pt_call_join(&calls[i]);
        check_user_42(&calls[i].resp);
        assert_true(calls[i].resp.total_s * 1000 >= 0.9 * DELAY_MS);
        e2e_resp_free(&calls[i].resp);
    }
    qsort(lat, (size_t)st.probes, sizeof(lat[0]), cmp_double);
    st.worst_ms = lat[st.probes - 1];
    st.median_ms = lat[st.probes / 2];
    printf("# %s: /healthz median %.1f ms, worst %.1f ms over %d probes, with %d requests of "
           "%d ms in flight\n",
           variant, st.median_ms, st.worst_ms, st.probes, SLOW_CALLS, DELAY_MS);
    return st;
}

/* At least one probe waited for a blocked loop. */
static void test_before_stalls_the_loop(void **state)
{
    assert_true(probe_during(*state, "before").worst_ms >= 0.6 * DELAY_MS);
}

/*
 * Every probe is answered at once. A blocked loop stalls a probe by whole delays on every run;
 * a shared machine may stall one for a while once, so a second run is allowed to clear that.
 */
static void test_after_keeps_the_loop_turning(void **state)
{
    if (probe_during(*state, "after").worst_ms < 0.3 * DELAY_MS)
        return;
    assert_true(probe_during(*state, "after").worst_ms < 0.3 * DELAY_MS);
}

/* before's own connection, killed from the outside, is reset on a later request. */
static void test_before_reconnects(void **state)
{
    e2e_proc *p = *state;
    PGconn *db = pt_db_connect();
    char pid[32];
    pt_call slow;
    e2e_resp r;

    /* Behind a pooler in transaction mode (tests/db/pgbouncer.sh) a backend is not one
     * connection's: the one terminated could be serving the test's own query. */
    if (pt_behind_pooler()) {
        PQfinish(db);
        skip();
    }
    /* Ours is the before connection sleeping right now (other instances may hold idle ones). */
    pt_call_start(&slow, p, "GET", "/before/users/42?delay_ms=800", NULL);
    e2e_sleep_ms(300);
    snprintf(
        pid, sizeof(pid), "%lld",
        (long long)pt_db_int(db,
                             "SELECT coalesce(min(pid), 0) FROM pg_stat_activity WHERE "
                             "application_name = 'hindsight-before' AND wait_event = 'PgSleep'",
                             NULL));
    pt_call_join(&slow);
    check_user_42(&slow.resp);
    e2e_resp_free(&slow.resp);
    assert_string_not_equal(pid, "0");
    assert_int_equal(pt_db_int(db, "SELECT pg_terminate_backend($1::int)::int", pid), 1);
    e2e_get(p, "/before/users/42", &r);
    if (r.status != 200)
        pt_assert_error(&r, 503, "unavailable");
    e2e_resp_free(&r);
    e2e_get(p, "/before/users/42", &r);
    check_user_42(&r);
    e2e_resp_free(&r);
    PQfinish(db);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_user_bodies_and_errors),
        cmocka_unit_test(test_delay_is_played),
        cmocka_unit_test(test_before_stalls_the_loop),
        cmocka_unit_test(test_after_keeps_the_loop_turning),
        cmocka_unit_test(test_before_reconnects),
    };

    return cmocka_run_group_tests(tests, setup, teardown);
}
