/* SPDX-License-Identifier: MIT */
/*
 * pattern_db.c - the user routes' inputs, the user row as JSON and database errors as responses
 * (see pattern_db_int.h).
 *
 * Values arrive as libpq text and are copied into JSON as they are, except the id, which the API
 * gives as a number. A SQL error is a bug or an outage on our side, not the client's business:
 * the client gets a plain 500 and the log gets the SQLSTATE and the server's message, tied to
 * the request id.
 */
#include "handlers/pattern_db_int.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>

#include "service/log.h"

const char *hs__int_text(char *buf, int64_t v)
{
    snprintf(buf, HS_INT_TEXT, "%" PRId64, v);
    return buf;
}

int hs__user_args(svc_request *req, int64_t *id, int64_t *delay)
{
    int err = svc_request_param_id(req, "id", id);

    if (err == 0)
        err = svc_query_int(req, "delay_ms", 0, HS_DELAY_MAX_MS, 0, delay);
    return err;
}

bool hs__has_db(svc_request *req)
{
    if (req->app->db != NULL)
        return true;
    svc_respond_error(req, 503, "unavailable", "no database is configured");
    return false;
}

json_t *hs__user_json(const char *id, const char *name, const char *email, const char *created_at)
{
    return json_pack("{s:I,s:s,s:s,s:s}", "id", (json_int_t)strtoll(id, NULL, 10), "name", name,
                     "email", email, "created_at", created_at);
}

bool hs__user_is_missing(const rt_db_result *r)
{
    return rt_db_result_rows(r) < 1 || rt_db_result_is_null(r, 0, 0);
}

json_t *hs__user_json_result(const rt_db_result *r, bool *missing)
{
    *missing = hs__user_is_missing(r);
    if (*missing)
        return NULL;
    return hs__user_json(rt_db_result_text(r, 0, 0), rt_db_result_text(r, 0, 1),
                         rt_db_result_text(r, 0, 2), rt_db_result_text(r, 0, 3));
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
