/* SPDX-License-Identifier: MIT */
/*
 * test_db_recovery.c - connections killed under the pool (pg_terminate_backend from a second,
 * plain connection): an idle one is noticed and replaced, a busy one fails its statement with
 * RT_DB_ELOST, and requests made while every connection is being replaced wait for the new
 * ones instead of failing.
 */
#include "db_test.h"

#define APP "hindsight-test-recovery"

/* Terminates up to `limit` of the pool's backends; returns how many. */
static int64_t terminate_backends(int limit)
{
    PGconn *c = dbt_plain();
    char sql[256];
    int64_t n;

    snprintf(sql, sizeof(sql),
             "SELECT count(pg_terminate_backend(pid)) FROM (SELECT pid FROM pg_stat_activity "
             "WHERE application_name = '%s' ORDER BY pid LIMIT %d) AS victims",
             APP, limit);
    n = dbt_scalar(c, sql);
    PQfinish(c);
    return n;
}

static rt_db_config recovery_config(size_t pool)
{
    rt_db_config cfg = dbt_config(pool, 1);

    cfg.application_name = APP;
    return cfg;
}

typedef struct lost_wait {
    dbt_fixture *fx;
    uint64_t lost;
} lost_wait;

static bool conns_lost_reached(void *arg)
{
    lost_wait *w = arg;
    rt_db_stats st;

    rt_db_stats_get(w->fx->db, &st);
    return st.conns_lost >= w->lost;
}

static void test_idle_connection_killed_is_replaced(void **state)
{
    dbt_fixture *fx = *state;
    rt_db_config cfg = recovery_config(2);
    lost_wait w = {fx, 1};
    dbt_query q;
    rt_db_stats st;

    dbt_open(fx, &cfg);
    assert_int_equal(terminate_backends(1), 1);
    /* Nothing was sent on it: the loss is noticed from the socket alone. */
    assert_true(dbt_run_until(fx, conns_lost_reached, &w, 3000));
    assert_true(rt_db_is_up(fx->db)); /* the other connection still works */
    assert_true(dbt_run_until(fx, dbt_all_ready, fx, 3000));
    dbt_query_start(&q, fx->db, "SELECT 1", 0, NULL, NULL);
    dbt_wait_query(fx, &q, 3000);
    assert_int_equal(q.status, 0);
    rt_db_stats_get(fx->db, &st);
    assert_int_equal(st.connects_ok, 3);
    assert_int_equal(st.conns_lost, 1);
    rt_task_release(&q.q.task);
}

static void test_busy_connection_killed_fails_statement(void **state)
{
    dbt_fixture *fx = *state;
    rt_db_config cfg = recovery_config(1);
    dbt_query slow, next;
    uint64_t t0;

    dbt_open(fx, &cfg);
    dbt_query_start(&slow, fx->db, "SELECT pg_sleep(30)", 0, NULL, NULL);
    dbt_run_for(fx, 100);
    t0 = dbt_now(fx);
    assert_int_equal(terminate_backends(1), 1);
    /* The statement would run 30 s: failing within 10 s (a wide bound for a busy machine) can
     * only be the connection's loss. */
    dbt_wait_query(fx, &slow, 10000);
    assert_int_equal(slow.status, RT_DB_ELOST);
    assert_true(slow.done_at - t0 < 10000);
    assert_non_null(strstr(rt_db_result_error(&slow.q.result), "terminat"));
    dbt_query_start(&next, fx->db, "SELECT 'recovered'", 0, NULL, NULL);
    dbt_wait_query(fx, &next, 3000);
    assert_int_equal(next.status, 0);
    assert_string_equal(rt_db_result_text(&next.q.result, 0, 0), "recovered");
    rt_task_release(&slow.q.task);
    rt_task_release(&next.q.task);
}

static void test_all_killed_requests_wait_for_reconnect(void **state)
{
    dbt_fixture *fx = *state;
    rt_db_config cfg = recovery_config(3);
    lost_wait w = {fx, 3};
    dbt_query q[5];
    int done = 0;

    dbt_open(fx, &cfg);
    assert_int_equal(terminate_backends(3), 3);
    assert_true(dbt_run_until(fx, conns_lost_reached, &w, 3000));
    for (int i = 0; i < 5; i++) {
        dbt_query_start(&q[i], fx->db, "SELECT 1", 0, NULL, NULL);
        q[i].counter = &done;
    }
    dbt_wait_count(fx, &done, 5, 5000);
    for (int i = 0; i < 5; i++) {
        assert_int_equal(q[i].status, 0);
        rt_task_release(&q[i].q.task);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        DBT_TEST(test_idle_connection_killed_is_replaced),
        DBT_TEST(test_busy_connection_killed_fails_statement),
        DBT_TEST(test_all_killed_requests_wait_for_reconnect),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
