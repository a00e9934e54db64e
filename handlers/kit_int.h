/* SPDX-License-Identifier: MIT */
/*
 * kit_int.h - what every pattern handler needs and no pattern is about, so that a pattern file
 * (p<N>_<name>.c, see handlers/patterns.h) holds only its statements, its `before` and its
 * `after`: the rows' registration, the answer without a database, database errors as responses,
 * the task a handler hands back (its per-request storage, released by the request scope after
 * the response), a task that runs one statement, and random ids. The rows' shared state is
 * rt_scope_alloc'd on app->root_scope, which completes after the server has stopped.
 */
#ifndef HS_KIT_INT_H
#define HS_KIT_INT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "runtime/db.h"
#include "service/http.h"

/* delay_ms is 0..5000 on every route that takes it (API.md). */
#define HS_DELAY_MAX_MS 5000

/* Room for any int64 in decimal, sign and NUL included. */
#define HS_INT_TEXT 24

/** Writes v in decimal into buf (HS_INT_TEXT bytes) and returns buf. */
const char *hs__int_text(char *buf, int64_t v);

/** Writes n random bytes as 2n lower-case hex digits and a NUL into out. Returns 0 or a uv_random
 * error (out is then untouched). */
int hs__random_hex(char *out, size_t n);

/** True when req came in through the `after` row of its pair. */
static inline bool hs__is_after(const svc_request *req)
{
    return req->route->variant == SVC_VARIANT_AFTER;
}

/* --- registration ---------------------------------------------------------------------------- */

/**
 * Adds the n rows to r, each with state as its state. Returns 0, or the first error of
 * svc_router_add. Startup only.
 */
int hs__routes_add(svc_router *r, const svc_route *rows, size_t n, void *state);

#define HS_ROUTES_ADD(r, rows, state)                                                              \
    hs__routes_add((r), (rows), sizeof(rows) / sizeof((rows)[0]), (state))

/* --- database -------------------------------------------------------------------------------- */

/**
 * True when the service was configured with a database. Otherwise sets a 503 "no database is
 * configured" on req (borrowed for the call) and returns false; loop thread only.
 */
bool hs__has_db(svc_request *req);

/**
 * Sets the response for a failed database step: the pool's errors as svc_respond_uv_error maps
 * them (queue full -> 503 with Retry-After, database down or connection lost -> 503, timeouts ->
 * 504), and a server-side SQL error -> 500, logged with its SQLSTATE and message (which the
 * client never sees). r (may be NULL) is borrowed for the call.
 */
void hs__respond_db_error(svc_request *req, int status, const rt_db_result *r);

/** Logs a failed database step of req (what hs__respond_db_error logs), without responding. */
void hs__log_db_error(const svc_request *req, int status, const char *sqlstate,
                      const char *message);

/** svc_respond_json, except that a NULL body (no memory to build it) is a 503. */
void hs__respond_json(svc_request *req, int status, json_t *body);

/* --- tasks ----------------------------------------------------------------------------------- */

/**
 * A new task of vt for req: size zeroed bytes whose first member is the rt_task, in INIT and
 * stored in *task_out. The server steals it even when the handler then fails, so a handler
 * unwinds through vt->release. NULL without memory.
 */
void *hs__task_new(svc_request *req, const rt_task_vtable *vt, size_t size, rt_task **task_out);

/** A vtable's release for a task that is the first member of a malloc'd struct: frees it. */
void hs__task_free(rt_task *t);

/* The most parameters of an hs_query's statement. */
#define HS_QUERY_PARAMS 3

typedef struct hs_query hs_query;

/**
 * What a query does with its statement's result when the statement succeeded: sets the response
 * and returns the status the task completes with. r is borrowed for the call.
 */
typedef int (*hs_query_rows_fn)(hs_query *q, const rt_db_result *r);

/*
 * A route that runs one statement, described once (static const). vt is HS_QUERY_FORWARD(name)
 * (the task forwards the request's cancellation to the statement) or HS_QUERY_LISTEN(name) (the
 * statement listens to req->signal itself and the task has no cancel).
 */
typedef struct hs_query_spec {
    rt_task_vtable vt;
    const char *sql;
    const char *stmt;  /* prepared under this name by the pool; NULL: sent unprepared */
    int nparams;       /* $1..$nparams are text[0..nparams) */
    bool plain_errors; /* a failure as svc_respond_uv_error; else hs__respond_db_error */
    hs_query_rows_fn rows;
} hs_query_spec;

/*
 * The task: it sends the statement, adds the round trip to the request's database time, answers
 * a failure as spec->plain_errors says and a success with spec->rows, and completes.
 */
struct hs_query {
    rt_task task; /* what the handler hands to the server */
    rt_db_query query;
    const hs_query_spec *spec;
    svc_request *req;
    uint64_t sent_ns;
    char text[HS_QUERY_PARAMS][HS_INT_TEXT]; /* the parameters, filled by the handler */
};

int hs__query_start(rt_task *t);
void hs__query_cancel(rt_task *t, int reason);

#define HS_QUERY_FORWARD(name_)                                                                    \
    {                                                                                              \
        .name = (name_), .start = hs__query_start, .cancel = hs__query_cancel,                     \
        .release = hs__task_free                                                                   \
    }
#define HS_QUERY_LISTEN(name_)                                                                     \
    {                                                                                              \
        .name = (name_), .start = hs__query_start, .cancel = NULL, .release = hs__task_free        \
    }

/**
 * A new query task of spec for req (borrowed until the response), in INIT, and stored in
 * *task_out: size zeroed bytes (sizeof(hs_query), or a struct whose first member is one). The
 * caller fills text[]. NULL without memory.
 */
hs_query *hs__query_new(svc_request *req, const hs_query_spec *spec, size_t size,
                        rt_task **task_out);

#endif /* HS_KIT_INT_H */
