/* SPDX-License-Identifier: MIT */
/*
 * test_db_restart.c - the database server stops and starts again under the pool, with
 * statements and a transaction in flight: clean errors, fail-fast while it is down, automatic
 * recovery once it is back, and nothing leaked.
 *
 * It runs its own private cluster (deploy/pg.sh with HS_PG_PORT=54340, or the next free port,
 * and its data under the build tree), never the shared one other tests use. pg.sh runs on the
 * thread pool (rt_work), so the loop keeps turning while the server goes down, as it would in the
 * service.
 */
#include "db_test.h"

#include "fault/pg_cluster.h"
#include "runtime/work.h"

/* The first free port from 54340 on (fault/pg_cluster.h): another tree's run of this test may
 * hold 54340. */
#define FAULT_PORT_FIRST 54340
#define FAULT_PORT_LAST  54359

static char pg_sh[1024];
static char fault_url[128];

static int pg_ctl(const char *verb)
{
    char cmd[1400];

    snprintf(cmd, sizeof(cmd), "%s %s >/dev/null", pg_sh, verb);
    return system(cmd);
}

static int pg_start(void)
{
    return pg_ctl("start");
}

static int group_setup(void **state)
{
    const char *src = getenv("HS_SOURCE_DIR");
    char data[1024];
    int p;

    (void)state;
    if (src == NULL)
        fail_msg("HS_SOURCE_DIR is not set (ctest sets it)");
    snprintf(pg_sh, sizeof(pg_sh), "%s/deploy/pg.sh", src);
    p = pgc_start(FAULT_PORT_FIRST, FAULT_PORT_LAST, HS_BINARY_DIR "/pgfault", data, sizeof(data),
                  pg_start);
    if (p < 0)
        fail_msg("cannot start the private cluster with %s on any port in %d..%d", pg_sh,
                 FAULT_PORT_FIRST, FAULT_PORT_LAST);
    snprintf(fault_url, sizeof(fault_url), "postgresql://postgres@127.0.0.1:%d/hindsight", p);
    return 0;
}

static int group_teardown(void **state)
{
    (void)state;
    pg_ctl("stop");
    return 0;
}

/* pg.sh on the thread pool. */
typedef struct pg_job {
    rt_work w;
    const char *verb;
    int done;
    int status;
} pg_job;

static int pg_job_fn(rt_work *w)
{
    pg_job *j = rt_container_of(w, pg_job, w);

    return pg_ctl(j->verb) == 0 ? 0 : UV_EIO;
}

static void pg_job_cb(rt_task *t, int status)
{
    pg_job *j = rt_container_of(t, pg_job, w.task);

    j->done = 1;
    j->status = status;
    rt_task_release(t);
}

static bool pg_job_done(void *arg)
{
    return ((pg_job *)arg)->done != 0;
}

static void pg_in_background(dbt_fixture *fx, pg_job *j, const char *verb)
{
    memset(j, 0, sizeof(*j));
    j->verb = verb;
    rt_work_init(&j->w, &fx->rt, pg_job_fn, NULL);
    rt_task_start(&j->w.task, NULL, pg_job_cb);
}

static bool is_down(void *arg)
{
    return !rt_db_is_up(((dbt_fixture *)arg)->db);
}

typedef struct ttx {
    rt_db_tx tx;
    int delivered;
    int status;
} ttx;

static void ttx_step(rt_db_tx *tx)
{
    if (tx->step == 0)
        rt_db_tx_exec(tx, NULL, "INSERT INTO fault_items VALUES (1)", 0, NULL);
    else if (tx->step == 1)
        rt_db_tx_exec(tx, NULL, "SELECT pg_sleep(30)", 0, NULL);
    else
        rt_db_tx_commit(tx);
}

static void ttx_cb(rt_task *t, int status)
{
    ttx *x = rt_container_of(t, ttx, tx.task);

    x->delivered++;
    x->status = status;
}

/* The transaction and the three slow queries have all been placed on connections. */
static bool all_placed(void *arg)
{
    dbt_fixture *fx = arg;
    rt_db_stats st;

    rt_db_stats_get(fx->db, &st);
    return st.in_flight >= 4 && st.queue_depth == 0;
}

static void test_server_restart_with_work_in_flight(void **state)
{
    dbt_fixture *fx = *state;
    rt_db_config cfg = dbt_config(3, 2);
    /* Static: when a check fails, closing the pool still delivers to them. */
    static dbt_query slow[3], down, after[4];
    static int done;
    static ttx x;
    pg_job job;
    uint64_t t0;
    rt_db_stats st;
    PGconn *plain;

    plain = PQconnectdb(fault_url);
    if (PQstatus(plain) != CONNECTION_OK)
        fail_msg("cannot reach the private cluster: %s", PQerrorMessage(plain));
    dbt_exec(plain, "SET client_min_messages = warning");
    dbt_exec(plain, "DROP TABLE IF EXISTS fault_items");
    dbt_exec(plain, "CREATE TABLE fault_items (id int PRIMARY KEY)");
    PQfinish(plain);

    cfg.conninfo = fault_url;
    cfg.backoff_min_ms = 50;
    cfg.backoff_max_ms = 400;
    /* The slow queries are meant to share connections with each other. The pool does not
     * pipeline behind a statement older than pipeline_stall_us (5 ms), and a busy machine can
     * pause this thread longer than that between two starts: then the last query would wait in
     * the queue for 30 s instead of being in flight at the stop. */
    cfg.pipeline_stall_us = 0;
    dbt_open(fx, &cfg);
    for (int round = 0; round < 2; round++) {
        done = 0;
        memset(&x, 0, sizeof(x));
        rt_db_tx_init(&x.tx, fx->db, NULL, ttx_step, NULL);
        rt_task_start(&x.tx.task, NULL, ttx_cb);
        for (int i = 0; i < 3; i++) {
            dbt_query_start(&slow[i], fx->db, "SELECT pg_sleep(30)", 0, NULL, NULL);
            slow[i].counter = &done;
        }
        /* Every one of them on a connection (after the restart of round 0 the pool reconnects
         * first, which a busy machine stretches), then a moment for them to reach the server. */
        if (!dbt_run_until(fx, all_placed, fx, 15000)) {
            rt_db_stats_get(fx->db, &st);
            fail_msg("round %d: not all placed after 15 s: %zu in flight, %zu queued; "
                     "connections %zu idle, %zu busy, %zu connecting, %zu broken; the "
                     "transaction %s, the slow queries delivered %d, %d, %d",
                     round, st.in_flight, st.queue_depth, st.conns_idle, st.conns_busy,
                     st.conns_connecting, st.conns_broken,
                     !x.delivered    ? "still running"
                     : x.status == 0 ? "ended ok"
                                     : uv_err_name(x.status),
                     slow[0].delivered, slow[1].delivered, slow[2].delivered);
        }
        dbt_run_for(fx, 200);

        /* Stop: everything in flight fails with a connection error, promptly. */
        t0 = dbt_now(fx);
        pg_in_background(fx, &job, "stop");
        dbt_wait_count(fx, &done, 3, 10000);
        assert_true(dbt_run_until(fx, pg_job_done, &job, 30000));
        assert_int_equal(job.status, 0);
        for (int i = 0; i < 3; i++) {
            assert_int_equal(slow[i].status, RT_DB_ELOST);
            assert_true(slow[i].done_at - t0 < 5000);
            rt_task_release(&slow[i].q.task);
        }
        assert_int_equal(x.delivered, 1);
        assert_int_equal(x.status, RT_DB_ELOST);
        assert_int_equal(x.tx.outcome, RT_DB_TX_ROLLED_BACK);
        rt_task_release(&x.tx.task);

        /* Down: readiness says so and requests fail fast instead of waiting. */
        assert_true(dbt_run_until(fx, is_down, fx, 3000));
        dbt_run_for(fx, 100);
        t0 = dbt_now(fx);
        dbt_query_start(&down, fx->db, "SELECT 1", 0, NULL, NULL);
        dbt_wait_query(fx, &down, 1000);
        assert_int_equal(down.status, RT_DB_EDOWN);
        assert_true(down.done_at - t0 < 300);
        rt_task_release(&down.q.task);

        /* Back: the pool recovers by itself within the backoff cap (plus start-up). */
        pg_in_background(fx, &job, "start");
        assert_true(dbt_run_until(fx, pg_job_done, &job, 60000));
        assert_int_equal(job.status, 0);
        t0 = dbt_now(fx);
        assert_true(dbt_run_until(fx, dbt_all_ready, fx, 5000));
        assert_true(dbt_now(fx) - t0 < 2000);
        done = 0;
        for (int i = 0; i < 4; i++) {
            dbt_query_start(&after[i], fx->db, "SELECT count(*) FROM fault_items", 0, NULL, NULL);
            after[i].counter = &done;
        }
        dbt_wait_count(fx, &done, 4, 5000);
        for (int i = 0; i < 4; i++) {
            assert_int_equal(after[i].status, 0);
            /* The transaction cut by the stop left nothing behind. */
            assert_string_equal(rt_db_result_text(&after[i].q.result, 0, 0), "0");
            rt_task_release(&after[i].q.task);
        }
    }
    rt_db_stats_get(fx->db, &st);
    assert_int_equal(st.conns_lost, 6);
    assert_true(st.connects_failed >= 2);
    assert_int_equal(st.in_flight, 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        DBT_TEST(test_server_restart_with_work_in_flight),
    };

    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
