/* SPDX-License-Identifier: MIT */
/*
 * p0_blocking.c - pattern 0, "don't block the loop": GET /{before,after}/users/{id}?delay_ms=.
 * Both send HS_USER_SQL and answer the same JSON; they differ only in how they wait for it.
 *
 * `before` calls libpq's synchronous PQexecParams on the loop thread, over a connection of its
 * own: for the whole round trip no request is read, no probe answers, no timer fires. That stall
 * is the demonstration; memory and connection are handled as carefully as anywhere else.
 * `after` hands the statement to the pool as a task (prepared, as the hottest query), and the
 * task forwards a cancellation to it, which the pool turns into a PQcancel off the loop.
 */
#include "handlers/patterns.h"

#include <libpq-fe.h>

#include "handlers/kit_int.h"
#include "handlers/user_row_int.h"
#include "service/config.h"

typedef struct blocking {
    PGconn *conn; /* before's own connection, never the pool's; NULL until first used */
} blocking;

/* --- before: a synchronous query on the loop thread ------------------------------------------- */

/* Opens or repairs before's connection, synchronously like everything on this route. */
static bool before_connect(blocking *b, const svc_app *app)
{
    static const char *const keys[] = {"dbname", "application_name", NULL};
    const char *values[] = {app->config->database_url, "hindsight-before", NULL};

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
    if (hs__user_args(req, &id, &delay) < 0 || !hs__has_db(req))
        return 0;
    if (!before_connect(b, req->app)) {
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
        hs__user_respond_missing(req, id);
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

/* --- after: the same statement as a task on the pool ------------------------------------------ */

static int user_rows(hs_query *q, const rt_db_result *r)
{
    bool missing;
    json_t *user = hs__user_json_result(r, &missing);

    if (missing)
        svc_respond_error(q->req, 404, "not_found", "user %s does not exist", q->text[0]);
    else
        hs__respond_json(q->req, 200, user);
    return 0;
}

static const hs_query_spec user_query = {
    .vt = HS_QUERY_FORWARD("after_user"),
    .sql = HS_USER_SQL,
    .stmt = HS_USER_STMT,
    .nparams = 2,
    .rows = user_rows,
};

static int after_user(svc_request *req, void *state, rt_task **task_out)
{
    hs_query *q;
    int64_t id;
    int64_t delay;

    (void)state;
    if (hs__user_args(req, &id, &delay) < 0 || !hs__has_db(req))
        return 0;
    q = hs__query_new(req, &user_query, sizeof(*q), task_out);
    if (q == NULL)
        return UV_ENOMEM;
    hs__int_text(q->text[0], id);
    hs__int_text(q->text[1], delay);
    return 0;
}

/* --- rows ------------------------------------------------------------------------------------- */

/* The connection is idle by then (before never leaves a statement running), so PQfinish only
 * sends Terminate and does not wait on the server. */
static void blocking_fin(void *state)
{
    blocking *b = state;

    if (b->conn != NULL)
        PQfinish(b->conn);
}

static const svc_route rows[] = {
    {"GET", "/before/users/{id}", SVC_VARIANT_BEFORE,
     "pattern 0: one user, queried synchronously on the event-loop thread", before_user, NULL, 0},
    {"GET", "/after/users/{id}", SVC_VARIANT_AFTER,
     "pattern 0: one user, queried through the asynchronous pool", after_user, NULL, 0},
};

int hs_blocking_register(svc_router *r, svc_app *app)
{
    blocking *b = rt_scope_alloc(app->root_scope, sizeof(*b), blocking_fin);

    return b != NULL ? HS_ROUTES_ADD(r, rows, b) : UV_ENOMEM;
}
