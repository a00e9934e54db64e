/* SPDX-License-Identifier: MIT */
/*
 * test_pattern_batch.c - pattern 2, the batch, against the built binary: a sequential loop
 * (`before`, about n delays) vs a stream bounded by `concurrency` (`after`, about n/c delays).
 *
 * What is checked from the outside, with SQL on TEST_DATABASE_URL: the rows written for the
 * batch_id are exactly the `completed` ones, for exactly the ids asked; missing users are listed
 * in `failed` and written nowhere; no rejected request writes anything. While an `after` batch
 * runs, /metrics is polled: the statements in flight never exceed `concurrency` (the stream's
 * bound, which is the pattern) and the busy connections never exceed the pool.
 *
 * Timing margins are wide (the machine is shared): 50 ids at 50 ms with concurrency 10 must
 * take at least 40 delays sequentially and under 12 delays bounded (5 is the ideal).
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

typedef struct batch_result {
    char batch_id[64];
    int64_t requested;
    int64_t completed;
    int64_t cancelled;
    int64_t nfailed;
    int64_t max_in_flight;
    int64_t elapsed_ms;
    double total_ms;
} batch_result;

/* Reads a 200 batch response and checks its own arithmetic. */
static void read_batch(const e2e_resp *r, batch_result *out)
{
    json_t *v = pt_json(r);

    if (r->status != 200)
        fail_msg("batch answered %ld: %s", r->status, r->body);
    snprintf(out->batch_id, sizeof(out->batch_id), "%s",
             json_string_value(json_object_get(v, "batch_id")));
    out->requested = json_integer_value(json_object_get(v, "requested"));
    out->completed = json_integer_value(json_object_get(v, "completed"));
    out->cancelled = json_integer_value(json_object_get(v, "cancelled"));
    out->nfailed = (int64_t)json_array_size(json_object_get(v, "failed"));
    out->max_in_flight = json_integer_value(json_object_get(v, "max_in_flight"));
    out->elapsed_ms = json_integer_value(json_object_get(v, "elapsed_ms"));
    out->total_ms = r->total_s * 1000;
    assert_true(strlen(out->batch_id) >= 16);
    assert_true(json_is_array(json_object_get(v, "failed")));
    assert_int_equal(out->requested, out->completed + out->cancelled + out->nfailed);
    json_decref(v);
}

static void post_batch(pt_service *fx, const char *variant, const char *body, batch_result *out)
{
    char path[64];
    e2e_resp r;

    snprintf(path, sizeof(path), "/%s/batch", variant);
    e2e_request(&fx->proc, "POST", path, body, NULL, &r);
    read_batch(&r, out);
    e2e_resp_free(&r);
}

static int64_t rows_of(pt_service *fx, const char *batch_id)
{
    return pt_db_int(fx->db, "SELECT count(*) FROM batch_results WHERE batch_id = $1", batch_id);
}

/* Every row of the batch is one of the ids first..first+n-1, each once. */
static void check_rows(pt_service *fx, const batch_result *b, int64_t first, int64_t n,
                       const char *variant)
{
    char sql[256];

    assert_int_equal(rows_of(fx, b->batch_id), b->completed);
    snprintf(sql, sizeof(sql),
             "SELECT count(DISTINCT user_id) FROM batch_results WHERE batch_id = $1 "
             "AND variant = '%s' AND user_id BETWEEN %lld AND %lld",
             variant, (long long)first, (long long)(first + n - 1));
    assert_int_equal(pt_db_int(fx->db, sql, b->batch_id), b->completed);
}

static void test_batch_sequential_vs_bounded(void **state)
{
    pt_service *fx = *state;
    char *body = pt_batch_body(50, 101, 50, 10);
    batch_result before;
    batch_result after;

    post_batch(fx, "before", body, &before);
    post_batch(fx, "after", body, &after);
    printf("# batch of 50 ids, delay_ms=50, concurrency 10: before %.0f ms, after %.0f ms "
           "(max in flight %lld)\n",
           before.total_ms, after.total_ms, (long long)after.max_in_flight);
    assert_int_equal(before.completed, 50);
    assert_int_equal(after.completed, 50);
    check_rows(fx, &before, 101, 50, "before");
    check_rows(fx, &after, 101, 50, "after");
    assert_true(strcmp(before.batch_id, after.batch_id) != 0);
    assert_true(before.total_ms >= 40 * 50);
    /* Five rounds of 50 ms against before's fifty. A busy machine stretches both runs alike, so
     * the proof is the ratio (after at most a third of before, where the ideal is a tenth) and
     * the ten statements seen in flight at once, not a bound on after's own time. */
    assert_true(after.total_ms * 3 <= before.total_ms);
    assert_true(after.total_ms >= 5 * 50 * 0.9);
    assert_int_equal(before.max_in_flight, 1);
    assert_int_equal(after.max_in_flight, 10);
    free(body);
}

/* Missing users are reported in `failed`, not written, and do not stop the batch. */
static void test_batch_missing_users(void **state)
{
    static const char *const variants[] = {"before", "after"};
    pt_service *fx = *state;
    const char *body = "{\"ids\":[201,99999998,202,99999999,203],\"delay_ms\":0}";

    for (size_t v = 0; v < 2; v++) {
        e2e_resp r;
        batch_result b;
        json_t *j;

        e2e_request(&fx->proc, "POST", v == 0 ? "/before/batch" : "/after/batch", body, NULL, &r);
        read_batch(&r, &b);
        j = pt_json(&r);
        assert_int_equal(b.completed, 3);
        assert_int_equal(b.cancelled, 0);
        assert_int_equal(b.nfailed, 2);
        assert_int_equal(json_integer_value(json_array_get(json_object_get(j, "failed"), 0)) +
                             json_integer_value(json_array_get(json_object_get(j, "failed"), 1)),
                         99999998 + 99999999);
        check_rows(fx, &b, 201, 3, variants[v]);
        json_decref(j);
        e2e_resp_free(&r);
    }
}

/*
 * While an after batch runs, the statements on the pool never exceed its concurrency, and the
 * pool's busy connections never exceed its size. The poll must also see real concurrency (more
 * than one statement at once), or it proves nothing.
 */
static void test_batch_stays_within_bounds(void **state)
{
    pt_service *fx = *state;
    char *body = pt_batch_body(60, 301, 100, 4);
    double max_in_flight = 0;
    double max_busy = 0;
    double pool_size = 0;
    int polls = 0;
    batch_result b;
    pt_call call;

    pt_call_start(&call, &fx->proc, "POST", "/after/batch", body);
    for (uint64_t until = e2e_now_ms() + 20000; e2e_now_ms() < until;) {
        e2e_resp m;
        double v;

        e2e_get(&fx->proc, "/metrics", &m);
        assert_int_equal(m.status, 200);
        v = pt_metric(m.body, "hs_db_in_flight");
        max_in_flight = v > max_in_flight ? v : max_in_flight;
        v = pt_metric(m.body, "hs_db_connections{state=\"busy\"}");
        max_busy = v > max_busy ? v : max_busy;
        pool_size = pt_metric(m.body, "hs_db_pool_size");
        e2e_resp_free(&m);
        polls++;
        if (pt_call_is_done(&call))
            break;
        e2e_sleep_ms(3);
    }
    pt_call_join(&call);
    read_batch(&call.resp, &b);
    e2e_resp_free(&call.resp);
    printf("# batch of 60 ids, concurrency 4: %d polls saw at most %.0f statements in flight and "
           "%.0f busy connections (pool %.0f)\n",
           polls, max_in_flight, max_busy, pool_size);
    assert_int_equal(b.completed, 60);
    check_rows(fx, &b, 301, 60, "after");
    assert_true(max_in_flight >= 2);
    assert_true(max_in_flight <= 4);
    assert_true(max_busy <= pool_size);
    assert_int_equal(b.max_in_flight, 4);
    free(body);
}

/* The largest batch is accepted and completed in full. */
static void test_batch_of_1000(void **state)
{
    pt_service *fx = *state;
    char *body = pt_batch_body(1000, 1001, 0, 100);
    batch_result b;

    post_batch(fx, "after", body, &b);
    assert_int_equal(b.completed, 1000);
    check_rows(fx, &b, 1001, 1000, "after");
    free(body);
}

/* Every malformed body is a 400 with the error shape, on both variants, and writes nothing. */
static void test_batch_validation(void **state)
{
    static const char *const bad[] = {
        "{\"ids\":[7771,7772",
        "[7771,7772]",
        "\"ids\"",
        "{}",
        "{\"ids\":null}",
        "{\"ids\":[]}",
        "{\"ids\":\"1,2,3\"}",
        "{\"ids\":{\"a\":7771}}",
        "{\"ids\":[7771,\"7772\"]}",
        "{\"ids\":[\"one\"]}",
        "{\"ids\":[0]}",
        "{\"ids\":[-5]}",
        "{\"ids\":[7771.5]}",
        "{\"ids\":[true]}",
        "{\"ids\":[null]}",
        "{\"ids\":[[7771]]}",
        "{\"ids\":[7771],\"delay_ms\":-1}",
        "{\"ids\":[7771],\"delay_ms\":5001}",
        "{\"ids\":[7771],\"delay_ms\":\"50\"}",
        "{\"ids\":[7771],\"delay_ms\":0.5}",
        "{\"ids\":[7771],\"concurrency\":0}",
        "{\"ids\":[7771],\"concurrency\":101}",
        "{\"ids\":[7771],\"concurrency\":\"10\"}",
        "{\"ids\":[7771],\"concurrency\":true}",
        "{\"ids\":[7771],\"ids\":[7772]}",
    };
    static const char *const paths[] = {"/before/batch", "/after/batch"};
    pt_service *fx = *state;
    /* Rows any of these bodies could have written: their ids, from now on. */
    static const char *const written_sql =
        "SELECT count(*) FROM batch_results WHERE created_at >= $1::timestamptz AND "
        "(user_id IN (7771, 7772) OR user_id BETWEEN 8001 AND 9001)";
    char *too_many = pt_batch_body(1001, 8001, 0, 10);
    PGresult *now = PQexec(fx->db, "SELECT now()::text");
    char since[64];
    e2e_resp r;

    assert_int_equal(PQresultStatus(now), PGRES_TUPLES_OK);
    snprintf(since, sizeof(since), "%s", PQgetvalue(now, 0, 0));
    PQclear(now);
    for (size_t p = 0; p < 2; p++) {
        for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
            e2e_request(&fx->proc, "POST", paths[p], bad[i], NULL, &r);
            if (r.status != 400)
                fail_msg("%s %s answered %ld", paths[p], bad[i], r.status);
            pt_assert_error(&r, 400, "bad_request");
            e2e_resp_free(&r);
        }
        e2e_request(&fx->proc, "POST", paths[p], too_many, NULL, &r);
        pt_assert_error(&r, 400, "bad_request");
        e2e_resp_free(&r);
        e2e_request(&fx->proc, "POST", paths[p], NULL, NULL, &r);
        pt_assert_error(&r, 400, "bad_request");
        e2e_resp_free(&r);
    }
    assert_int_equal(pt_db_int(fx->db, written_sql, since), 0);
    free(too_many);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_batch_sequential_vs_bounded),
        cmocka_unit_test(test_batch_missing_users),
        cmocka_unit_test(test_batch_stays_within_bounds),
        cmocka_unit_test(test_batch_of_1000),
        cmocka_unit_test(test_batch_validation),
    };

    return cmocka_run_group_tests(tests, pt_service_setup, pt_service_teardown);
}
