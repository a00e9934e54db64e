/* SPDX-License-Identifier: MIT */
/*
 * kit.c - the handlers' kit (see kit_int.h).
 *
 * A SQL error is a bug or an outage on our side, not the client's business: the client gets a
 * plain 500 and the log gets the SQLSTATE and the server's message, tied to the request id.
 */
#include "handlers/kit_int.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>

#include "service/log.h"

const char *hs__int_text(char *buf, int64_t v)
{
    snprintf(buf, HS_INT_TEXT, "%" PRId64, v);
    return buf;
}

int hs__random_hex(char *out, size_t n)
{
    static const char hex[] = "0123456789abcdef";
    unsigned char raw[32];
    int err = n <= sizeof(raw) ? uv_random(NULL, NULL, raw, n, 0, NULL) : UV_EINVAL;

    for (size_t i = 0; err == 0 && i < n; i++) {
        out[2 * i] = hex[raw[i] >> 4];
        out[2 * i + 1] = hex[raw[i] & 15];
    }
    if (err == 0)
        out[2 * n] = '\0';
    return err;
}

/* --- registration ---------------------------------------------------------------------------- */

int hs__routes_add(svc_router *r, const svc_route *rows, size_t n, void *state)
{
    int err = 0;

    for (size_t i = 0; i < n && err == 0; i++) {
        svc_route row = rows[i];

        row.state = state;
        err = svc_router_add(r, &row);
    }
    return err;
}

/* --- database -------------------------------------------------------------------------------- */

bool hs__has_db(svc_request *req)
{
    if (req->app->db != NULL)
        return true;
    svc_respond_error(req, 503, "unavailable", "no database is configured");
    return false;
}

void hs__log_db_error(const svc_request *req, int status, const char *sqlstate, const char *message)
{
    svc_log_line l;

    if (!svc_log_begin(&l, SVC_LOG_WARN, "db_error"))
        return;
    svc_request_log_ids(&l, req);
    svc_log_str(&l, "route", req->route != NULL ? req->route->pattern : NULL);
    svc_log_str(&l, "error", uv_err_name(status));
    if (sqlstate != NULL && sqlstate[0] != '\0')
        svc_log_str(&l, "sqlstate", sqlstate);
    if (message != NULL && message[0] != '\0')
        svc_log_str(&l, "message", message);
    svc_log_end(&l);
}

void hs__respond_db_error(svc_request *req, int status, const rt_db_result *r)
{
    if (status == RT_DB_ESQL) {
        hs__log_db_error(req, status, r != NULL ? r->sqlstate : NULL,
                         r != NULL ? rt_db_result_error(r) : NULL);
        svc_respond_error(req, 500, "internal", "the database rejected a statement");
        return;
    }
    svc_respond_uv_error(req, status);
}

void hs__respond_json(svc_request *req, int status, json_t *body)
{
    if (body == NULL)
        svc_respond_uv_error(req, UV_ENOMEM);
    else
        svc_respond_json(req, status, body);
}

/* --- tasks ----------------------------------------------------------------------------------- */

void *hs__task_new(svc_request *req, const rt_task_vtable *vt, size_t size, rt_task **task_out)
{
    rt_task *t = calloc(1, size);

    if (t == NULL)
        return NULL;
    rt_task_init(t, req->app->rt, vt);
    *task_out = t;
    return t;
}

void hs__task_free(rt_task *t)
{
    free(t);
}

static void on_query_done(rt_task *t, int status)
{
    hs_query *q = rt_container_of(t, hs_query, query.task);

    svc_request_add_db_time(q->req, uv_hrtime() - q->sent_ns);
    if (status == 0)
        status = q->spec->rows(q, &q->query.result);
    else if (q->spec->plain_errors)
        svc_respond_uv_error(q->req, status);
    else
        hs__respond_db_error(q->req, status, &q->query.result);
    rt_task_release(t);
    rt_task_complete(&q->task, status);
}

int hs__query_start(rt_task *t)
{
    hs_query *q = rt_container_of(t, hs_query, task);
    const char *params[HS_QUERY_PARAMS];

    for (int i = 0; i < q->spec->nparams; i++)
        params[i] = q->text[i];
    rt_db_query_init(&q->query, q->req->app->db, q->spec->sql, q->spec->nparams, params, NULL);
    if (q->spec->stmt != NULL)
        rt_db_query_prepare_as(&q->query, q->spec->stmt);
    q->sent_ns = uv_hrtime();
    /* Without a cancel of its own the task leaves the request's signal to the statement; with
     * one, hs__query_cancel is the signal's only way to it. */
    rt_task_start(&q->query.task, t->vt->cancel == NULL ? q->req->signal : NULL, on_query_done);
    return 0;
}

void hs__query_cancel(rt_task *t, int reason)
{
    rt_task_cancel(&rt_container_of(t, hs_query, task)->query.task, reason);
}

hs_query *hs__query_new(svc_request *req, const hs_query_spec *spec, size_t size,
                        rt_task **task_out)
{
    hs_query *q = hs__task_new(req, &spec->vt, size, task_out);

    if (q != NULL) {
        q->spec = spec;
        q->req = req;
    }
    return q;
}
