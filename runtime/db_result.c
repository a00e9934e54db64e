/* SPDX-License-Identifier: MIT */
/*
 * db_result.c - reading a statement's result: the typed getters of db.h, and how an error
 * result is classified.
 *
 * Results stay in libpq's text format: the getters parse on demand, so a handler that copies a
 * row into JSON pays for no conversion it does not use. Every getter checks its bounds, so a
 * handler that asks for a column the query does not return gets an error, not a crash.
 */
#include "db_int.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

static bool in_range(const rt_db_result *r, int row, int col)
{
    return r->res != NULL && row >= 0 && col >= 0 && row < PQntuples(r->res) &&
           col < PQnfields(r->res);
}

int rt__db_result_status(const PGresult *res)
{
    const char *state = PQresultErrorField(res, PG_DIAG_SQLSTATE);

    /* 57014 is query_canceled: the pool drops the results of the statements it cancels
     * itself, so what reaches a caller is the server's statement_timeout. */
    if (state != NULL && strcmp(state, "57014") == 0)
        return UV_ETIMEDOUT;
    return RT_DB_ESQL;
}

void rt__db_result_clear(rt_db_result *r)
{
    PQclear(r->res);
    rt_free(r->detail);
    r->res = NULL;
    r->detail = NULL;
    r->sqlstate[0] = '\0';
}

void rt__db_result_set(rt_db_result *r, PGresult *res, const char *detail)
{
    const char *state;

    rt__db_result_clear(r);
    r->res = res;
    state = res != NULL ? PQresultErrorField(res, PG_DIAG_SQLSTATE) : NULL;
    if (state != NULL && strlen(state) == 5)
        memcpy(r->sqlstate, state, 6);
    /* Out of memory here only loses the text; the status still tells what happened. */
    if (detail != NULL)
        r->detail = rt__db_strdup(detail);
}

int rt_db_result_rows(const rt_db_result *r)
{
    return r->res != NULL ? PQntuples(r->res) : 0;
}

int rt_db_result_cols(const rt_db_result *r)
{
    return r->res != NULL ? PQnfields(r->res) : 0;
}

int64_t rt_db_result_affected(const rt_db_result *r)
{
    const char *n = r->res != NULL ? PQcmdTuples(r->res) : "";

    return *n != '\0' ? strtoll(n, NULL, 10) : 0;
}

bool rt_db_result_is_null(const rt_db_result *r, int row, int col)
{
    return !in_range(r, row, col) || PQgetisnull(r->res, row, col);
}

const char *rt_db_result_text(const rt_db_result *r, int row, int col)
{
    if (!in_range(r, row, col))
        return NULL;
    return PQgetvalue(r->res, row, col);
}

int rt_db_result_int64(const rt_db_result *r, int row, int col, int64_t *out)
{
    const char *s;
    char *end;
    long long v;

    if (rt_db_result_is_null(r, row, col))
        return UV_EINVAL;
    s = PQgetvalue(r->res, row, col);
    errno = 0;
    v = strtoll(s, &end, 10);
    if (errno != 0 || end == s || *end != '\0')
        return UV_EINVAL;
    *out = (int64_t)v;
    return 0;
}

int rt_db_result_bool(const rt_db_result *r, int row, int col, bool *out)
{
    const char *s;

    if (rt_db_result_is_null(r, row, col))
        return UV_EINVAL;
    s = PQgetvalue(r->res, row, col);
    if (strcmp(s, "t") == 0)
        *out = true;
    else if (strcmp(s, "f") == 0)
        *out = false;
    else
        return UV_EINVAL;
    return 0;
}

const char *rt_db_result_error(const rt_db_result *r)
{
    const char *msg = r->res != NULL ? PQresultErrorMessage(r->res) : "";

    if (*msg != '\0')
        return msg;
    return r->detail != NULL ? r->detail : "";
}
