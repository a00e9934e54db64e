/* SPDX-License-Identifier: MIT */
/*
 * test_pattern_batch_shutdown.c - pattern 2, the batch under SIGTERM (fault tests).
 *
 * `after`: the stream stops taking items when the drain signal fires. The items in flight
 * finish (the log's `started` equals what was completed), no new one starts (the answer comes
 * within about one item's time of the signal, far before the rest of the batch could have run),
 * and the answer is a 200 whose `completed` is exactly the rows written and whose `cancelled` is
 * the rest. The process then exits 0. SIGTERM is sent once the first round's rows are in the
 * database, not after a fixed time, so a busy machine (slow to start the batch) changes nothing;
 * the answer's time is compared with what the rest of the batch would take, with a factor of two
 * to spare, since only a clock can tell it.
 *
 * `before`: the sequential loop ignores the drain signal and runs on until the grace period ends
 * and it is cancelled; the client gets a 503 that says nothing of the rows already written.
 * That loss is the anti-pattern's documented failure, so the test asserts it.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "pt_async.h"

#define N_IDS       60
#define DELAY_MS    300
#define CONCURRENCY 5

/* Rows the `after` batch of users 501.. has written since `since`. */
static int64_t after_rows(PGconn *db, const char *since)
{
    return pt_db_int(db,
                     "SELECT count(*) FROM batch_results WHERE variant = 'after' AND "
                     "user_id BETWEEN 501 AND 560 AND created_at >= $1::timestamptz",
                     since);
}

static const char sql_before_rows[] =
    "SELECT count(*) FROM batch_results WHERE variant = 'before' AND "
    "user_id BETWEEN 601 AND 660 AND created_at >= $1::timestamptz";

/* clock_timestamp() of the database, as text, into out. */
static void db_now(PGconn *db, char *out, size_t cap)
{
    PGresult *res = PQexec(db, "SELECT clock_timestamp()::text");

    assert_int_equal(PQresultStatus(res), PGRES_TUPLES_OK);
    snprintf(out, cap, "%s", PQgetvalue(res, 0, 0));
    PQclear(res);
}

/* The log line of event batch_stopped for batch_id (new), or NULL. */
static json_t *find_stop_line(const e2e_proc *p, const char *batch_id)
{
    char *log = e2e_log(p);
    json_t *found = NULL;

    for (char *line = strtok(log, "\n"); line != NULL && found == NULL; line = strtok(NULL, "\n")) {
        json_t *v = json_loads(line, 0, NULL);
        const char *event = json_string_value(json_object_get(v, "event"));
        const char *id = json_string_value(json_object_get(v, "batch_id"));

        if (event != NULL && strcmp(event, "batch_stopped") == 0 && id != NULL &&
            strcmp(id, batch_id) == 0)
            found = json_incref(v);
        json_decref(v);
    }
    free(log);
    return found;
}

static void test_after_batch_drains_on_sigterm(void **state)
{
    char *body = pt_batch_body(N_IDS, 501, DELAY_MS, CONCURRENCY);
    PGconn *db = pt_db_connect();
    const char *batch_id;
    json_t *stop;
    json_t *v;
    e2e_proc p;
    pt_call call;
    uint64_t signalled;
    uint64_t rest_ms;
    uint64_t give_up;
    int64_t completed;
    int64_t cancelled;
    char since[64];

    (void)state;
    db_now(db, since, sizeof(since));
    e2e_start(&p, NULL, NULL, true);
    /* Every pool connected (with WORKERS > 1 each worker has its own): the batch's rounds are
     * then the delays they play, not connection setup. */
    for (int i = 0;; i++) {
        e2e_resp r;
        long status;

        assert_true(i < 600);
        e2e_get(&p, "/readyz", &r);
        status = r.status;
        e2e_resp_free(&r);
        if (status == 200)
            break;
        e2e_sleep_ms(50);
    }
    pt_call_start(&call, &p, "POST", "/after/batch", body);
    /* The first round written: some items done, the next ones in flight, most not started. */
    give_up = e2e_now_ms() + 30000;
    while (after_rows(db, since) < CONCURRENCY) {
        if (pt_call_is_done(&call) || e2e_now_ms() > give_up)
            fail_msg("the batch's first %d rows never appeared", CONCURRENCY);
        e2e_sleep_ms(10);
    }
    signalled = e2e_now_ms();
    e2e_signal(&p, SIGTERM);
    pt_call_join(&call);
    assert_int_equal(e2e_wait_exit(&p, 15000), 0);

    v = pt_json(&call.resp);
    if (call.resp.status != 200)
        fail_msg("after batch answered %ld: %s", call.resp.status, call.resp.body);
    batch_id = json_string_value(json_object_get(v, "batch_id"));
    completed = json_integer_value(json_object_get(v, "completed"));
    cancelled = json_integer_value(json_object_get(v, "cancelled"));
    printf("# SIGTERM %llu ms into the batch: completed %lld, cancelled %lld, answered %llu ms "
           "after the signal\n",
           (unsigned long long)(signalled - call.start_ms), (long long)completed,
           (long long)cancelled, (unsigned long long)(call.end_ms - signalled));
    assert_int_equal(json_array_size(json_object_get(v, "failed")), 0);
    assert_int_equal(completed + cancelled, N_IDS);
    assert_true(completed >= CONCURRENCY);
    /* Most of the batch was still to come: the comparison below means something. */
    assert_true(cancelled >= 4 * CONCURRENCY);
    /* The rest of the batch would have taken cancelled / CONCURRENCY more delays; the answer
     * comes after the items in flight (about one delay), in well under half of that. */
    rest_ms = (uint64_t)cancelled / CONCURRENCY * DELAY_MS;
    if (call.end_ms - signalled >= rest_ms / 2)
        fail_msg("answered %llu ms after SIGTERM; running the rest would take %llu ms",
                 (unsigned long long)(call.end_ms - signalled), (unsigned long long)rest_ms);
    assert_int_equal(
        pt_db_int(db, "SELECT count(*) FROM batch_results WHERE batch_id = $1", batch_id),
        completed);
    /* Whatever was in flight at the signal finished: nothing started was cancelled. */
    stop = find_stop_line(&p, batch_id);
    assert_non_null(stop);
    assert_string_equal(json_string_value(json_object_get(stop, "cause")), "drain");
    assert_int_equal(json_integer_value(json_object_get(stop, "started")), completed);
    assert_int_equal(json_integer_value(json_object_get(stop, "cancelled")), cancelled);
    json_decref(stop);
    json_decref(v);
    e2e_resp_free(&call.resp);
    unlink(p.log_path);
    PQfinish(db);
    free(body);
}

static void test_before_batch_loses_its_report(void **state)
{
    static const char *const env[] = {"SHUTDOWN_GRACE_MS=400", NULL};
    char *body = pt_batch_body(N_IDS, 601, 100, CONCURRENCY);
    PGconn *db = pt_db_connect();
    char since[64];
    int64_t written;
    e2e_proc p;
    pt_call call;
    uint64_t signalled;
    uint64_t give_up;

    (void)state;
    db_now(db, since, sizeof(since));
    e2e_start(&p, env, NULL, true);
    pt_call_start(&call, &p, "POST", "/before/batch", body);
    /* Two rows written (of 60, one every 100 ms): the loop is under way, far from its end. */
    give_up = e2e_now_ms() + 30000;
    while (pt_db_int(db, sql_before_rows, since) < 2) {
        if (pt_call_is_done(&call) || e2e_now_ms() > give_up)
            fail_msg("the before batch's first rows never appeared");
        e2e_sleep_ms(10);
    }
    signalled = e2e_now_ms();
    e2e_signal(&p, SIGTERM);
    pt_call_join(&call);
    assert_int_equal(e2e_wait_exit(&p, 15000), 0);
    printf("# before batch: answered %ld %llu ms after SIGTERM\n", call.resp.status,
           (unsigned long long)(call.end_ms - signalled));
    /* It ran on past the signal until the grace period ended, then lost its answer. */
    pt_assert_error(&call.resp, 503, "unavailable");
    assert_true(call.end_ms - signalled >= 350);
    written = pt_db_int(db, sql_before_rows, since);
    assert_true(written > 0);
    assert_true(written < N_IDS);
    e2e_resp_free(&call.resp);
    unlink(p.log_path);
    PQfinish(db);
    free(body);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_after_batch_drains_on_sigterm),
        cmocka_unit_test(test_before_batch_loses_its_report),
    };

    pt_init();
    return cmocka_run_group_tests(tests, NULL, NULL);
}
