/* SPDX-License-Identifier: MIT */
/*
 * blocking.c - pattern 0, "don't block the loop": GET /{before,after}/users/{id}?delay_ms=.
 *
 * Both routes send the same statement (HS_USER_SQL) and answer the same JSON; they differ only in
 * how they wait for it.
 *
 * `before` calls libpq's synchronous PQexecParams from the handler, on the loop thread, over one
 * connection of its own (opened on first use, reset when it has broken). For the whole round
 * trip, server-side delay included, the loop turns no more: no other request is read, no probe
 * answers, no timer fires. That stall, visible on /healthz and in the loop-lag metric, is the
 * demonstration; it fails in no other way (its memory and its connection are handled as
 * carefully as anywhere else).
 *
 * `after` hands the statement to the pool as a task and returns at once; the connection is
 * suspended until the row arrives, and the loop keeps serving meanwhile. The statement is
 * prepared once per pool connection, since this is the hottest query of the service. The task
 * forwards a cancellation (deadline, shutdown) to the query, which the pool turns into a PQcancel
 * off the loop.
 */
#include "handlers/blocking.h"

#include <inttypes.h>
#include <stdlib.h>

#include <libpq-fe.h>

#include "handlers/pattern_db_int.h"
#include "service/config.h"

typedef struct blocking {
    svc_app *app;
    PGconn *conn; /* before's own connection, never the pool's; NULL until first used */
    rt_guard free_guard;
} blocking;

/* --- before: a synchronous query on the loop thread ------------------------------------------ */

/* Opens or repairs before's connection, synchronously like everything on this route. */
static bool before_connect(blocking *b)
{
    static const char *const keys[] = {"dbname", "application_name", NULL};
    const char *values[] = {b->app->config->database_url, "hindsight-before", NULL};

    if (b->conn == NULL)
        b->conn = PQconnectdbParams(keys, values, 1);
    else if (PQstatus(b->conn) != CONNECTION_OK)
        PQreset(b->conn);
    return b->conn != NULL && PQstatus(b->conn) == CONNECTION_OK;
}

static int before_user(svc_request *req, void *state, rt_task **task_out)
{
    blocking *b = state;
    char id_txt[HS_INT_TEXT];
    char delay_txt[HS_INT_TEXT];
    const char *params[2] = {id_txt, delay_txt};
    int64_t id;
    int64_t delay;
    uint64_t t0;
    PGresult *res;
    json_t *user;

    (void)task_out;
    if (hs__user_args(req, &id, &delay) < 0)
        return 0;
    if (b->app->config->database_url == NULL || !before_connect(b)) {
        svc_respond_error(req, 503, "unavailable", "the database is unavailable");
        return 0;
    }
    hs__int_text(id_txt, id);
    hs__int_text(delay_txt, delay);
    t0 = uv_hrtime();
    /* The anti-pattern itself: the loop thread waits here for the whole round trip. */
    res = PQexecParams(b->conn, HS_USER_SQL, 2, NULL, params, NULL, NULL, 0);
    svc_request_add_db_time(req, uv_hrtime() - t0);
    if (PQresultStatus(res) != PGRES_TUPLES_OK) {
        bool lost = PQstatus(b->conn) != CONNECTION_OK;

        hs__log_db_error(req, lost ? RT_DB_ELOST : RT_DB_ESQL,
                         PQresultErrorField(res, PG_DIAG_SQLSTATE), PQerrorMessage(b->conn));
        PQclear(res);
        if (lost)
            svc_respond_error(req, 503, "unavailable", "the database is unavailable");
        else
            svc_respond_error(req, 500, "internal", "the database rejected a statement");
        return 0;
    }
    if (PQntuples(res) < 1 || PQgetisnull(res, 0, 0)) {
        PQclear(res);
        svc_respond_error(req, 404, "not_found", "user %" PRId64 " does not exist", id);
        return 0;
    }
    user = hs__user_json(PQgetvalue(res, 0, 0), PQgetvalue(res, 0, 1), PQgetvalue(res, 0, 2),
                         PQgetvalue(res, 0, 3));
    PQclear(res);
    if (user == NULL)
        return UV_ENOMEM;
    svc_respond_json(req, 200, user);
    return 0;
}

/* --- after: the same statement as a task on the pool ----------------------------------------- */

typedef struct user_get {
    rt_task task; /* what the handler hands to the server */
    rt_db_query query;
    svc_request *req;
    int64_t id;
    uint64_t sent_ns;
    char id_txt[HS_INT_TEXT];
    char delay_txt[HS_INT_TEXT];
} user_get;

static void on_user_row(rt_task *t, int status)
{
    user_get *g = rt_container_of(t, user_get, query.task);
    svc_request *req = g->req;
    json_t *user;
    bool missing;

    svc_request_add_db_time(req, uv_hrtime() - g->sent_ns);
    if (status < 0) {
        hs__respond_db_error(req, status, &g->query.result);
    } else {
        user = hs__user_json_result(&g->query.result, &missing);
        if (missing)
            svc_respond_error(req, 404, "not_found", "user %" PRId64 " does not exist", g->id);
        else if (user == NULL)
            svc_respond_uv_error(req, UV_ENOMEM);
        else
            svc_respond_json(req, 200, user);
    }
    rt_task_release(t);
    rt_task_complete(&g->task, status);
}

static int user_get_start(rt_task *t)
{
    user_get *g = rt_container_of(t, user_get, task);
    const char *params[2] = {g->id_txt, g->delay_txt};

    rt_db_query_init(&g->query, g->req->app->db, HS_USER_SQL, 2, params, NULL);
    rt_db_query_prepare_as(&g->query, HS_USER_STMT);
    g->sent_ns = uv_hrtime();
    /* No signal: our own cancel hook below is how the request's signal reaches the query. */
    rt_task_start(&g->query.task, NULL, on_user_row);
    return 0;
}

static void user_get_cancel(rt_task *t, int reason)
{
    user_get *g = rt_container_of(t, user_get, task);

    rt_task_cancel(&g->query.task, reason);
}

/* The query was released in on_user_row, or never initialized if the task never started. */
static void user_get_release(rt_task *t)
{
    free(rt_container_of(t, user_get, task));
}

static const rt_task_vtable user_get_vt = {
    .name = "after_user",
    .start = user_get_start,
    .cancel = user_get_cancel,
    .release = user_get_release,
};

static int after_user(svc_request *req, void *state, rt_task **task_out)
{
    user_get *g;
    int64_t id;
    int64_t delay;

    (void)state;
    if (hs__user_args(req, &id, &delay) < 0)
        return 0;
    if (req->app->db == NULL)
        return RT_DB_EDOWN;
    g = malloc(sizeof(*g));
    if (g == NULL)
        return UV_ENOMEM;
    rt_task_init(&g->task, req->app->rt, &user_get_vt);
    g->req = req;
    g->id = id;
    hs__int_text(g->id_txt, id);
    hs__int_text(g->delay_txt, delay);
    *task_out = &g->task;
    return 0;
}

/* --- registration ---------------------------------------------------------------------------- */

static void blocking_free(void *arg)
{
    blocking *b = arg;

    /* The root scope closes after the server has stopped, so no request can still use b. The
     * connection is idle by then (before never leaves a statement running), so PQfinish only
     * sends Terminate and does not wait on the server. */
    if (b->conn != NULL)
        PQfinish(b->conn);
    free(b);
}

int hs_blocking_register(svc_router *r, svc_app *app)
{
    blocking *b = calloc(1, sizeof(*b));
    int err = 0;

    if (b == NULL)
        return UV_ENOMEM;
    b->app = app;
    b->free_guard.fn = blocking_free;
    b->free_guard.arg = b;
    rt_scope_defer(app->root_scope, &b->free_guard);
    const svc_route rows[] = {
        {"GET", "/before/users/{id}", SVC_VARIANT_BEFORE,
         "pattern 0: one user, queried synchronously on the event-loop thread", before_user, b, 0},
        {"GET", "/after/users/{id}", SVC_VARIANT_AFTER,
         "pattern 0: one user, queried through the asynchronous pool", after_user, b, 0},
    };
    for (size_t i = 0; i < sizeof(rows) / sizeof(rows[0]) && err == 0; i++)
        err = svc_router_add(r, &rows[i]);
    return err;
}
