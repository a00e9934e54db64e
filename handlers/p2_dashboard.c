/* SPDX-License-Identifier: MIT */
/*
 * p2_dashboard.c - pattern 2, join: GET /{before,after}/users/{id}/dashboard.
 *
 * The dashboard needs three independent rows (user, settings, recent transfers), each behind a
 * slow step (delay_ms). `before` awaits them one after another, so it costs three delays; `after`
 * starts all three at once under a fail-fast rt_join and costs one: the first failure cancels the
 * other two, and the join still waits for them, so no query outlives the request.
 */
#include "handlers/patterns.h"

#include "handlers/kit_int.h"
#include "handlers/user_row_int.h"
#include "runtime/join.h"

/* --- statements ------------------------------------------------------------------------------- */

enum { PART_USER = 0, PART_SETTINGS, PART_TRANSFERS, PARTS };

#define SETTINGS_SQL                                                                               \
    HS_SQL_DELAY "SELECT s.theme, s.locale, s.notifications"                                       \
                 " FROM d LEFT JOIN settings s ON s.user_id = $1::bigint"

/*
 * The ten newest transfers from or to any of the user's accounts. One ordered index scan per
 * direction (transfers_from_idx, transfers_to_idx), each stopped after ten rows, then merged:
 * an OR over both columns could use neither index. UNION, not UNION ALL, so a transfer between
 * two accounts of the same user is listed once.
 */
#define TRANSFERS_SQL                                                                              \
    HS_SQL_DELAY                                                                                   \
    ", acct AS (SELECT id FROM accounts WHERE user_id = $1::bigint),"                              \
    " recent AS ((SELECT id, from_account, to_account, amount, created_at FROM transfers"          \
    "   WHERE from_account IN (SELECT id FROM acct) ORDER BY id DESC LIMIT 10)"                    \
    "  UNION (SELECT id, from_account, to_account, amount, created_at FROM transfers"              \
    "   WHERE to_account IN (SELECT id FROM acct) ORDER BY id DESC LIMIT 10))"                     \
    " SELECT t.id, t.from_account, t.to_account, t.amount,"                                        \
    "  to_char(t.created_at AT TIME ZONE 'UTC', " HS_SQL_RFC3339 ")"                               \
    " FROM d LEFT JOIN (SELECT * FROM recent ORDER BY id DESC LIMIT 10) t ON true"                 \
    " ORDER BY t.id DESC"

static const char *const part_sql[PARTS] = {HS_USER_SQL, SETTINGS_SQL, TRANSFERS_SQL};
static const char *const part_stmt[PARTS] = {HS_USER_STMT, "hs_dashboard_settings",
                                             "hs_dashboard_transfers"};

/* --- shared: the parts and the answer --------------------------------------------------------- */

typedef struct dashboard {
    rt_task task; /* what the handler hands to the server */
    svc_request *req;
    bool concurrent; /* after: a join; before: one part after another */
    size_t step;     /* before: the part in flight */
    int64_t id;
    uint64_t t0;
    rt_db_query parts[PARTS];
    rt_task *children[PARTS];
    rt_join join;
    char id_txt[HS_INT_TEXT];
    char delay_txt[HS_INT_TEXT];
} dashboard;

static json_t *settings_json(const rt_db_result *r)
{
    bool notifications;

    if (rt_db_result_rows(r) < 1 || rt_db_result_is_null(r, 0, 0))
        return json_null();
    if (rt_db_result_bool(r, 0, 2, &notifications) < 0)
        return NULL;
    return json_pack("{s:s,s:s,s:b}", "theme", rt_db_result_text(r, 0, 0), "locale",
                     rt_db_result_text(r, 0, 1), "notifications", notifications);
}

static json_t *transfers_json(const rt_db_result *r)
{
    json_t *list = json_array();
    int64_t v[4];

    for (int row = 0; list != NULL && row < rt_db_result_rows(r); row++) {
        /* The all-NULL row: the user has no transfers (the delay's LEFT JOIN). */
        if (rt_db_result_is_null(r, row, 0))
            continue;
        for (int col = 0; col < 4; col++) {
            if (rt_db_result_int64(r, row, col, &v[col]) < 0)
                goto out_free_list;
        }
        if (json_array_append_new(list, json_pack("{s:I,s:I,s:I,s:I,s:s}", "id", (json_int_t)v[0],
                                                  "from", (json_int_t)v[1], "to", (json_int_t)v[2],
                                                  "amount", (json_int_t)v[3], "created_at",
                                                  rt_db_result_text(r, row, 4))) < 0)
            goto out_free_list;
    }
    return list;

out_free_list:
    json_decref(list);
    return NULL;
}

/* Responds 200 with the three parts, or 404 when the user does not exist. */
static void dashboard_respond(dashboard *d)
{
    bool missing;
    json_t *user = hs__user_json_result(&d->parts[PART_USER].result, &missing);

    if (missing) {
        hs__user_respond_missing(d->req, d->id);
        return;
    }
    /* "o" steals each part even when packing fails, so nothing leaks on the way to a 503. */
    hs__respond_json(d->req, 200,
                     json_pack("{s:o,s:o,s:o}", "user", user, "settings",
                               settings_json(&d->parts[PART_SETTINGS].result), "recent_transfers",
                               transfers_json(&d->parts[PART_TRANSFERS].result)));
}

static void dashboard_finish(dashboard *d, int status)
{
    svc_request_add_db_time(d->req, uv_hrtime() - d->t0);
    /* Parts never started are released from INIT; the one whose callback we are in, later. */
    for (size_t i = 0; i < PARTS; i++)
        rt_task_release(&d->parts[i].task);
    rt_task_complete(&d->task, status);
}

/* --- before: one part after another ----------------------------------------------------------- */

/* The part in d->step has been delivered; start the next one or answer. */
static void on_part_done(rt_task *t, int status)
{
    dashboard *d = t->data;

    if (status == 0 && rt_task_is_cancel_requested(&d->task))
        status = rt_task_cancel_reason(&d->task);
    if (status < 0) {
        hs__respond_db_error(d->req, status, &d->parts[d->step].result);
        dashboard_finish(d, status);
        return;
    }
    /* A sequential handler stops at the first missing piece: no user, no dashboard. */
    if (d->step == PART_USER && hs__user_is_missing(&d->parts[PART_USER].result)) {
        hs__user_respond_missing(d->req, d->id);
    } else if (++d->step < PARTS) {
        rt_task_start(&d->parts[d->step].task, NULL, on_part_done);
        return;
    } else {
        dashboard_respond(d);
    }
    dashboard_finish(d, 0);
}

/* --- after: a fail-fast join ------------------------------------------------------------------ */

/* All three parts have been delivered (or the first failure cancelled the others). */
static void on_parts_joined(rt_task *t, int status)
{
    dashboard *d = rt_container_of(t, dashboard, join.task);
    const rt_db_result *failed = NULL;

    if (status < 0) {
        for (size_t i = 0; i < PARTS && failed == NULL; i++) {
            if (d->parts[i].task.status == status)
                failed = &d->parts[i].result;
        }
        hs__respond_db_error(d->req, status, failed);
    } else {
        dashboard_respond(d);
    }
    dashboard_finish(d, status);
}

/* --- the task and its handler ----------------------------------------------------------------- */

static int dashboard_start(rt_task *t)
{
    dashboard *d = rt_container_of(t, dashboard, task);
    const char *params[2] = {d->id_txt, d->delay_txt};

    for (size_t i = 0; i < PARTS; i++) {
        rt_db_query_init(&d->parts[i], d->req->app->db, part_sql[i], 2, params, NULL);
        rt_db_query_prepare_as(&d->parts[i], part_stmt[i]);
        d->parts[i].task.data = d;
        d->children[i] = &d->parts[i].task;
    }
    d->t0 = uv_hrtime();
    /* No signals below: dashboard_cancel forwards the request's cancellation. */
    if (d->concurrent) {
        rt_join_init(&d->join, d->req->app->rt, d->children, PARTS, RT_JOIN_FAIL_FAST);
        rt_task_start(&d->join.task, NULL, on_parts_joined);
    } else {
        d->step = PART_USER;
        rt_task_start(&d->parts[PART_USER].task, NULL, on_part_done);
    }
    return 0;
}

static void dashboard_cancel(rt_task *t, int reason)
{
    dashboard *d = rt_container_of(t, dashboard, task);

    if (d->concurrent)
        rt_task_cancel(&d->join.task, reason);
    else
        rt_task_cancel(&d->parts[d->step].task, reason);
}

/* The parts were released by dashboard_finish, or never initialized if we never started. */
static const rt_task_vtable dashboard_vt = {
    .name = "dashboard",
    .start = dashboard_start,
    .cancel = dashboard_cancel,
    .release = hs__task_free,
};

static int dashboard_handler(svc_request *req, void *state, rt_task **task_out)
{
    dashboard *d;
    int64_t id;
    int64_t delay;

    (void)state;
    if (hs__user_args(req, &id, &delay) < 0 || !hs__has_db(req))
        return 0;
    d = hs__task_new(req, &dashboard_vt, sizeof(*d), task_out);
    if (d == NULL)
        return UV_ENOMEM;
    d->req = req;
    d->concurrent = hs__is_after(req);
    d->id = id;
    hs__int_text(d->id_txt, id);
    hs__int_text(d->delay_txt, delay);
    return 0;
}

/* --- rows ------------------------------------------------------------------------------------- */

static const svc_route rows[] = {
    {"GET", "/before/users/{id}/dashboard", SVC_VARIANT_BEFORE,
     "pattern 2: user, settings and recent transfers, awaited one after another", dashboard_handler,
     NULL, 0},
    {"GET", "/after/users/{id}/dashboard", SVC_VARIANT_AFTER,
     "pattern 2: user, settings and recent transfers, fetched concurrently (fail-fast join)",
     dashboard_handler, NULL, 0},
};

int hs_dashboard_register(svc_router *r, svc_app *app)
{
    (void)app;
    return HS_ROUTES_ADD(r, rows, NULL);
}
