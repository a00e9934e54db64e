/* SPDX-License-Identifier: MIT */
/*
 * test_db_alloc.c - the allocation-failure sweep: for N = 1, 2, 3, ... the Nth allocation made
 * through the runtime's hook fails, during rt_db_open or anywhere after it (connecting, a
 * prepared statement's name, a query, closing). Each run must end cleanly: rt_db_open returns
 * UV_ENOMEM with nothing left allocated or open, or the pool works (a failed connection attempt
 * is retried), closes, and leaves nothing behind. The sweep ends at the first N that is never
 * reached, so every allocation of the scenario has been made to fail once.
 */
#include "db_test.h"

static long alloc_calls;
static long fail_at;
static long live_blocks;

static void *failing_malloc(size_t size)
{
    void *p;

    if (++alloc_calls == fail_at)
        return NULL;
    p = malloc(size);
    if (p != NULL)
        live_blocks++;
    return p;
}

static void counting_free(void *p)
{
    live_blocks--;
    free(p);
}

typedef struct scenario {
    uv_loop_t loop;
    rt_runtime rt;
    rt_db *db;
    int closed;
} scenario;

static void scenario_db_closed(rt_db *db, void *arg)
{
    (void)db;
    ((scenario *)arg)->closed++;
}

static bool scenario_up(void *arg)
{
    return rt_db_is_up(((scenario *)arg)->db);
}

/* One run with the Nth allocation failing; returns whether the Nth allocation was reached. */
static bool run_scenario(long n)
{
    scenario s;
    rt_db_config cfg = dbt_config(2, 2);
    dbt_query q;
    int err;
    int leftovers = 0;
    bool reached;

    memset(&s, 0, sizeof(s));
    loop_test_open(&s.loop, &s.rt);
    alloc_calls = 0;
    fail_at = n;
    live_blocks = 0;
    rt_replace_allocator(failing_malloc, counting_free);

    err = rt_db_open(&s.db, &s.rt, &cfg);
    if (err == 0) {
        if (!dbt_loop_run_until(&s.loop, scenario_up, &s, 5000))
            fail_msg("N=%ld: the pool never came up", n);
        memset(&q, 0, sizeof(q));
        rt_db_query_init(&q.q, s.db, "SELECT 'ok'", 0, NULL, NULL);
        rt_db_query_prepare_as(&q.q, "alloc_sweep");
        rt_task_start(&q.q.task, NULL, dbt_query_cb);
        if (!dbt_loop_run_until(&s.loop, dbt_delivered, &q, 5000))
            fail_msg("N=%ld: the query never completed", n);
        assert_int_equal(q.status, 0);
        rt_task_release(&q.q.task);
        rt_db_close(s.db, scenario_db_closed, &s);
        uv_run(&s.loop, UV_RUN_DEFAULT);
        assert_int_equal(s.closed, 1);
    } else {
        assert_int_equal(err, UV_ENOMEM);
    }
    reached = alloc_calls >= n;
    rt_runtime_close(&s.rt, NULL);
    uv_walk(&s.loop, loop_test_count_open, &leftovers);
    uv_run(&s.loop, UV_RUN_DEFAULT);
    rt_replace_allocator(NULL, NULL);
    assert_int_equal(leftovers, 0);
    assert_int_equal(s.rt.live_tasks, 0);
    assert_int_equal(uv_loop_close(&s.loop), 0);
    if (live_blocks != 0)
        fail_msg("N=%ld: %ld blocks leaked", n, live_blocks);
    return reached;
}

static void test_allocation_failure_sweep(void **state)
{
    long n;

    (void)state;
    for (n = 1; n < 10000; n++) {
        if (!run_scenario(n))
            break;
    }
    fprintf(stderr, "test_db_alloc: swept %ld allocation points\n", n - 1);
    /* open alone makes about ten allocations; a sweep that stops early proves nothing. */
    assert_true(n > 10);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_allocation_failure_sweep),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
