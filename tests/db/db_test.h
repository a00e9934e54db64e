/* SPDX-License-Identifier: MIT */
/*
 * db_test.h - what the driver's tests share: a private loop with a pool on it, a query probe,
 * "run the loop until" with a time limit, and a plain blocking libpq connection for checking
 * from the outside what the pool did.
 *
 * Every test talks to a real PostgreSQL at TEST_DATABASE_URL (deploy/pg.sh's default when it is
 * unset). A database that cannot be reached fails the test: nothing here skips. With
 * HS_TEST_TRANSACTION_POOLER=1 that URL is a pooler in transaction mode (tests/db/pgbouncer.sh):
 * pools are opened with transaction_pooler set, and the few cases that need a session of their
 * own skip.
 *
 * The teardown is the leak check: it closes the pool (if the test did not), the runtime, fails
 * on any handle still open, and requires uv_loop_close() == 0 and no live task.
 */
#ifndef HS_TEST_DB_TEST_H
#define HS_TEST_DB_TEST_H

#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <libpq-fe.h>

#include "loop_test.h"
#include "runtime/db.h"
#include "runtime/runtime.h"

#define DBT_DEFAULT_URL "postgresql://postgres@127.0.0.1:54329/hindsight"

static inline const char *dbt_url(void)
{
    const char *u = getenv("TEST_DATABASE_URL");

    return u != NULL && *u != '\0' ? u : DBT_DEFAULT_URL;
}

typedef struct dbt_fixture {
    uv_loop_t loop;
    rt_runtime rt;
    rt_db *db;
    int db_closed;
    int runtime_closed;
} dbt_fixture;

static inline void dbt_runtime_closed(rt_runtime *rt)
{
    rt_container_of(rt, dbt_fixture, rt)->runtime_closed++;
}

static inline void dbt_db_closed(rt_db *db, void *arg)
{
    dbt_fixture *fx = arg;

    (void)db;
    fx->db_closed++;
}

static inline int dbt_setup(void **state)
{
    dbt_fixture *fx = calloc(1, sizeof(*fx));

    assert_non_null(fx);
    loop_test_open(&fx->loop, &fx->rt);
    *state = fx;
    return 0;
}

/* Closes the pool and waits for its close callback. */
static inline void dbt_close_db(dbt_fixture *fx)
{
    if (fx->db == NULL)
        return;
    rt_db_close(fx->db, dbt_db_closed, fx);
    fx->db = NULL;
    uv_run(&fx->loop, UV_RUN_DEFAULT);
    assert_int_equal(fx->db_closed, 1);
}

static inline int dbt_teardown(void **state)
{
    dbt_fixture *fx = *state;

    dbt_close_db(fx);
    loop_test_close(&fx->loop, &fx->rt, dbt_runtime_closed, &fx->runtime_closed);
    free(fx);
    return 0;
}

#define DBT_TEST(fn) cmocka_unit_test_setup_teardown(fn, dbt_setup, dbt_teardown)

/* --- running the loop until something holds ------------------------------------------------- */

typedef bool (*dbt_pred)(void *arg);

typedef struct dbt_until {
    uv_timer_t tick;
    dbt_pred pred;
    void *arg;
    uint64_t give_up_at;
    bool held;
} dbt_until;

static inline void dbt_until_tick(uv_timer_t *t)
{
    dbt_until *u = rt_container_of(t, dbt_until, tick);

    if (u->pred(u->arg)) {
        u->held = true;
        uv_stop(t->loop);
    } else if (uv_now(t->loop) >= u->give_up_at) {
        uv_stop(t->loop);
    }
}

/* Runs loop until pred(arg) holds (checked every millisecond) or timeout_ms pass. */
static inline bool dbt_loop_run_until(uv_loop_t *loop, dbt_pred pred, void *arg,
                                      uint64_t timeout_ms)
{
    dbt_until u;

    memset(&u, 0, sizeof(u));
    u.pred = pred;
    u.arg = arg;
    uv_update_time(loop);
    u.give_up_at = uv_now(loop) + timeout_ms;
    if (pred(arg))
        return true;
    uv_timer_init(loop, &u.tick);
    uv_timer_start(&u.tick, dbt_until_tick, 1, 1);
    uv_run(loop, UV_RUN_DEFAULT);
    uv_close((uv_handle_t *)&u.tick, NULL);
    uv_run(loop, UV_RUN_NOWAIT);
    return u.held;
}

static inline bool dbt_run_until(dbt_fixture *fx, dbt_pred pred, void *arg, uint64_t timeout_ms)
{
    return dbt_loop_run_until(&fx->loop, pred, arg, timeout_ms);
}

static inline bool dbt_is_up(void *arg)
{
    return rt_db_is_up(((dbt_fixture *)arg)->db);
}

static inline bool dbt_all_ready(void *arg)
{
    dbt_fixture *fx = arg;
    rt_db_stats st;

    rt_db_stats_get(fx->db, &st);
    return st.conns_idle == st.pool_size;
}

/* Lets the loop run for ms (timers, results, deliveries). */
static inline bool dbt_never(void *arg)
{
    (void)arg;
    return false;
}

static inline void dbt_run_for(dbt_fixture *fx, uint64_t ms)
{
    dbt_run_until(fx, dbt_never, NULL, ms);
}

/* TEST_DATABASE_URL is a pooler in transaction mode. */
static inline bool dbt_behind_pooler(void)
{
    const char *v = getenv("HS_TEST_TRANSACTION_POOLER");

    return v != NULL && strcmp(v, "1") == 0;
}

static inline rt_db_config dbt_config(size_t pool, size_t depth)
{
    rt_db_config cfg;

    rt_db_config_default(&cfg);
    cfg.conninfo = dbt_url();
    cfg.pool_size = pool;
    cfg.pipeline_depth = depth;
    cfg.application_name = "hindsight-test";
    cfg.transaction_pooler = dbt_behind_pooler();
    return cfg;
}

/* Every connection is up, or the database refused one before any worked. */
static inline bool dbt_ready_or_refused(void *arg)
{
    dbt_fixture *fx = arg;
    rt_db_stats st;

    rt_db_stats_get(fx->db, &st);
    return st.conns_idle == st.pool_size || (st.connects_ok == 0 && st.connects_failed > 0);
}

/* Opens a pool and waits until every connection is up: a database that is not there fails. */
static inline void dbt_open(dbt_fixture *fx, const rt_db_config *cfg)
{
    assert_int_equal(rt_db_open(&fx->db, &fx->rt, cfg), 0);
    if (!dbt_run_until(fx, dbt_ready_or_refused, fx, 10000) || !dbt_all_ready(fx))
        fail_msg("the pool did not connect to %s", cfg->conninfo);
}

static inline uint64_t dbt_now(dbt_fixture *fx)
{
    uv_update_time(&fx->loop);
    return uv_now(&fx->loop);
}

/* --- a query probe -------------------------------------------------------------------------- */

typedef struct dbt_query {
    rt_db_query q;
    int delivered;
    int status;
    uint64_t done_at; /* loop time of the delivery */
    int *counter;     /* bumped at delivery, if set */
} dbt_query;

static inline void dbt_query_cb(rt_task *t, int status)
{
    dbt_query *p = rt_container_of(t, dbt_query, q.task);

    p->delivered++;
    p->status = status;
    p->done_at = uv_now(t->rt->loop);
    if (p->counter != NULL)
        (*p->counter)++;
}

static inline void dbt_query_start(dbt_query *p, rt_db *db, const char *sql, int n,
                                   const char *const *params, rt_cancel *signal)
{
    memset(p, 0, sizeof(*p));
    rt_db_query_init(&p->q, db, sql, n, params, NULL);
    rt_task_start(&p->q.task, signal, dbt_query_cb);
}

typedef struct dbt_count {
    int *counter;
    int target;
} dbt_count;

static inline bool dbt_count_reached(void *arg)
{
    dbt_count *c = arg;

    return *c->counter >= c->target;
}

/* Runs until *counter reaches target, or fails the test after timeout_ms. */
static inline void dbt_wait_count(dbt_fixture *fx, int *counter, int target, uint64_t timeout_ms)
{
    dbt_count c = {counter, target};

    if (!dbt_run_until(fx, dbt_count_reached, &c, timeout_ms))
        fail_msg("only %d of %d completions within %llu ms", *counter, target,
                 (unsigned long long)timeout_ms);
}

static inline bool dbt_delivered(void *arg)
{
    return ((dbt_query *)arg)->delivered > 0;
}

static inline void dbt_wait_query(dbt_fixture *fx, dbt_query *p, uint64_t timeout_ms)
{
    if (!dbt_run_until(fx, dbt_delivered, p, timeout_ms))
        fail_msg("query not delivered within %llu ms", (unsigned long long)timeout_ms);
    assert_int_equal(p->delivered, 1);
}

/* --- checking from outside: a plain, blocking libpq connection ------------------------------- */

static inline PGconn *dbt_plain(void)
{
    PGconn *c = PQconnectdb(dbt_url());

    if (PQstatus(c) != CONNECTION_OK)
        fail_msg("cannot reach the test database %s: %s", dbt_url(), PQerrorMessage(c));
    return c;
}

static inline void dbt_exec(PGconn *c, const char *sql)
{
    PGresult *r = PQexec(c, sql);
    ExecStatusType st = PQresultStatus(r);

    if (st != PGRES_COMMAND_OK && st != PGRES_TUPLES_OK)
        fail_msg("%s: %s", sql, PQresultErrorMessage(r));
    PQclear(r);
}

static inline int64_t dbt_scalar(PGconn *c, const char *sql)
{
    PGresult *r = PQexec(c, sql);
    int64_t v;

    if (PQresultStatus(r) != PGRES_TUPLES_OK || PQntuples(r) != 1)
        fail_msg("%s: %s", sql, PQresultErrorMessage(r));
    v = strtoll(PQgetvalue(r, 0, 0), NULL, 10);
    PQclear(r);
    return v;
}

/*
 * A test group's own schema. dbt_schema_new drops what an interrupted run may have left, creates
 * the schema empty and returns the plain connection (new; PQfinish it) for filling it in.
 * dbt_schema_drop removes it and everything in it, failing the test if it is not there.
 * Both silence notices first: DROP ... CASCADE lists every object it drops.
 */
static inline PGconn *dbt_schema_new(const char *name)
{
    PGconn *c = dbt_plain();
    char sql[128];

    dbt_exec(c, "SET client_min_messages = warning");
    snprintf(sql, sizeof(sql), "DROP SCHEMA IF EXISTS %s CASCADE", name);
    dbt_exec(c, sql);
    snprintf(sql, sizeof(sql), "CREATE SCHEMA %s", name);
    dbt_exec(c, sql);
    return c;
}

static inline void dbt_schema_drop(const char *name)
{
    PGconn *c = dbt_plain();
    char sql[128];

    dbt_exec(c, "SET client_min_messages = warning");
    snprintf(sql, sizeof(sql), "DROP SCHEMA %s CASCADE", name);
    dbt_exec(c, sql);
    PQfinish(c);
}

#endif /* HS_TEST_DB_TEST_H */
