/* SPDX-License-Identifier: MIT */
/*
 * p2_batch.c - pattern 2, bounded stream: POST /{before,after}/batch. For each id, fetch the user
 * (the slow step), then write one batch_results row. `before` loops, one id at a time, blind to
 * shutdown. `after` pulls the ids through an rt_stream that keeps at most `concurrency` in flight
 * and stops on the service's drain signal: at shutdown no new item starts, the in-flight ones
 * finish, and the answer says what was done.
 *
 * Accounting is exact by construction: an item is "completed" only once its INSERT succeeded,
 * and an INSERT, once sent, is not cancelled (it is short, and cancelling it would leave the
 * client unsure whether the row exists). So `completed` equals the rows written for the batch_id,
 * and requested = completed + cancelled + failed.
 */
#include "handlers/patterns.h"

#include <stdlib.h>

#include "handlers/kit_int.h"
#include "handlers/user_row_int.h"
#include "runtime/stream.h"
#include "service/config.h"
#include "service/log.h"

/* --- statements ------------------------------------------------------------------------------- */

#define BATCH_INSERT_SQL                                                                           \
    "INSERT INTO batch_results (batch_id, user_id, variant) VALUES ($1, $2::bigint, $3)"
#define BATCH_INSERT_STMT "hs_batch_insert"

#define BATCH_MAX_IDS         1000
#define BATCH_MAX_CONCURRENCY 100

/* --- shared: the batch, its items and its account --------------------------------------------- */

typedef struct batch {
    rt_task task; /* what the handler hands to the server */
    svc_request *req;
    bool bounded;        /* after: an rt_stream; before: a sequential loop */
    const char *variant; /* "before" or "after", written into each row */
    size_t n;            /* ids[0..n) */
    size_t next;         /* the next id to hand out */
    size_t concurrency;
    size_t in_flight;
    size_t max_in_flight;
    uint64_t completed;
    size_t nfailed; /* failures so far, in ids[n..n + nfailed): recording one never allocates */
    uint64_t db_errors;
    uint64_t t0;
    rt_stream stream;           /* after */
    struct batch_item *current; /* before: the item in flight, or NULL */
    char batch_id[33];
    char delay_txt[HS_INT_TEXT];
    int64_t ids[]; /* n ids, then room for n failures: one block, freed with the task */
} batch;

/* One id: fetch the user (the slow, cancellable step), then insert its row (not cancellable). */
typedef struct batch_item {
    rt_task task;
    batch *b;
    int64_t user_id;
    rt_db_query fetch;
    rt_db_query insert;
    bool started;   /* item_start ran (a child cancelled before its start never runs it) */
    bool inserting; /* the INSERT has been sent: cancellation no longer strikes */
    bool missing;   /* no such user: nothing to insert */
    char id_txt[HS_INT_TEXT];
} batch_item;

static void on_item_inserted(rt_task *t, int status)
{
    batch_item *it = rt_container_of(t, batch_item, insert.task);

    rt_task_complete(&it->task, status);
}

static void on_item_fetched(rt_task *t, int status)
{
    batch_item *it = rt_container_of(t, batch_item, fetch.task);

    /* Cancelled while the answer was on its way: nothing was written yet, so stop here. */
    if (status == 0 && rt_task_is_cancel_requested(&it->task))
        status = rt_task_cancel_reason(&it->task);
    it->missing = status == 0 && hs__user_is_missing(&it->fetch.result);
    if (status < 0 || it->missing) {
        rt_task_complete(&it->task, status);
        return;
    }
    it->inserting = true;
    rt_task_start(&it->insert.task, NULL, on_item_inserted);
}

static int item_start(rt_task *t)
{
    batch_item *it = rt_container_of(t, batch_item, task);

    it->started = true;
    if (++it->b->in_flight > it->b->max_in_flight)
        it->b->max_in_flight = it->b->in_flight;
    rt_task_start(&it->fetch.task, NULL, on_item_fetched);
    return 0;
}

static void item_cancel(rt_task *t, int reason)
{
    batch_item *it = rt_container_of(t, batch_item, task);

    /* Once sent, the INSERT is awaited: the item then completes, and is counted, normally. */
    if (!it->inserting)
        rt_task_cancel(&it->fetch.task, reason);
}

static void item_release(rt_task *t)
{
    batch_item *it = rt_container_of(t, batch_item, task);

    rt_task_release(&it->fetch.task);
    rt_task_release(&it->insert.task);
    free(it);
}

static const rt_task_vtable item_vt = {
    .name = "batch_item",
    .start = item_start,
    .cancel = item_cancel,
    .release = item_release,
};

/* The cursor over the ids both variants pull from: 1 with the next id's item in *out (in INIT,
 * both statements ready to start), 0 when every id has been handed out, or UV_ENOMEM. */
static int next_item(batch *b, rt_task **out)
{
    rt_db *db = b->req->app->db;
    batch_item *it;

    if (b->next == b->n)
        return 0;
    it = calloc(1, sizeof(*it));
    if (it == NULL)
        return UV_ENOMEM;
    rt_task_init(&it->task, b->req->app->rt, &item_vt);
    it->b = b;
    it->user_id = b->ids[b->next++];
    hs__int_text(it->id_txt, it->user_id);
    rt_db_query_init(&it->fetch, db, HS_USER_SQL, 2, (const char *[]){it->id_txt, b->delay_txt},
                     NULL);
    rt_db_query_prepare_as(&it->fetch, HS_USER_STMT);
    rt_db_query_init(&it->insert, db, BATCH_INSERT_SQL, 3,
                     (const char *[]){b->batch_id, it->id_txt, b->variant}, NULL);
    rt_db_query_prepare_as(&it->insert, BATCH_INSERT_STMT);
    *out = &it->task;
    return 1;
}

/* Counts a delivered item. Cancelled items are not recorded: they are what is left over. */
static void batch_record(batch *b, batch_item *it, int status)
{
    if (it->started)
        b->in_flight--;
    if (status == 0 && !it->missing) {
        b->completed++;
        return;
    }
    if (status == UV_ECANCELED || status == UV_ETIMEDOUT)
        return;
    b->ids[b->n + b->nfailed++] = it->user_id;
    if (status < 0 && b->db_errors++ == 0) {
        const rt_db_result *r = it->inserting ? &it->insert.result : &it->fetch.result;

        hs__log_db_error(b->req, status, r->sqlstate, rt_db_result_error(r));
    }
}

/* The batch's account so far; new, or NULL without memory. */
static json_t *batch_report(const batch *b)
{
    json_t *failed = json_array();
    uint64_t cancelled = b->n - b->completed - b->nfailed;

    for (size_t i = 0; failed != NULL && i < b->nfailed; i++) {
        if (json_array_append_new(failed, json_integer(b->ids[b->n + i])) < 0) {
            json_decref(failed);
            failed = NULL;
        }
    }
    return json_pack("{s:s,s:I,s:I,s:I,s:o,s:I,s:I,s:I}", "batch_id", b->batch_id, "requested",
                     (json_int_t)b->n, "completed", (json_int_t)b->completed, "cancelled",
                     (json_int_t)cancelled, "failed", failed, "db_errors", (json_int_t)b->db_errors,
                     "max_in_flight", (json_int_t)b->max_in_flight, "elapsed_ms",
                     (json_int_t)((uv_hrtime() - b->t0) / 1000000u));
}

static void log_batch_end(const batch *b, const char *how)
{
    svc_log_line l;

    if (!svc_log_begin(&l, SVC_LOG_INFO, "batch_stopped"))
        return;
    svc_request_log_ids(&l, b->req);
    svc_log_str(&l, "batch_id", b->batch_id);
    svc_log_str(&l, "variant", b->variant);
    svc_log_str(&l, "cause", how);
    svc_log_int(&l, "requested", (int64_t)b->n);
    /* Items handed out; in a drained batch every one of them is completed or failed. */
    svc_log_int(&l, "started", (int64_t)b->next);
    svc_log_int(&l, "completed", (int64_t)b->completed);
    svc_log_int(&l, "cancelled", (int64_t)(b->n - b->completed - b->nfailed));
    svc_log_int(&l, "failed", (int64_t)b->nfailed);
    svc_log_end(&l);
}

/*
 * Answers with the account and completes the batch. A batch stopped by the drain signal answers
 * 200: what it did is exactly what it reports. One cut short by the request's deadline or a
 * shutdown's hard cancellation answers 504/503, with the same account beside the error.
 */
static void batch_finish(batch *b, int status)
{
    bool timeout = status == UV_ETIMEDOUT;
    json_t *body;

    svc_request_add_db_time(b->req, uv_hrtime() - b->t0);
    body = batch_report(b);
    if (body != NULL && status < 0) {
        log_batch_end(b, uv_err_name(status));
        json_object_set_new(
            body, "error",
            json_pack("{s:s,s:s}", "code", timeout ? "timeout" : "unavailable", "message",
                      timeout ? "the request's deadline passed" : "the batch was interrupted"));
    } else if (body != NULL && b->completed + b->nfailed < b->n) {
        log_batch_end(b, "drain");
    }
    hs__respond_json(b->req, status == 0 ? 200 : timeout ? 504 : 503, body);
    if (body != NULL && status == UV_ENOMEM)
        svc_respond_header(b->req, "Retry-After", "1");
    rt_task_complete(&b->task, status);
}

/* --- before: one item at a time, blind to the drain signal ------------------------------------ */

static void on_seq_item_done(rt_task *t, int status);

static void seq_start_next(batch *b)
{
    rt_task *t;
    int err = next_item(b, &t);

    if (err <= 0) {
        batch_finish(b, err);
        return;
    }
    b->current = rt_container_of(t, batch_item, task);
    rt_task_start(t, NULL, on_seq_item_done);
}

static void on_seq_item_done(rt_task *t, int status)
{
    batch_item *it = rt_container_of(t, batch_item, task);
    batch *b = it->b;

    batch_record(b, it, status);
    b->current = NULL;
    rt_task_release(t);
    /* The naive loop just gives up: the client learns nothing of the rows already written. */
    if (rt_task_is_cancel_requested(&b->task)) {
        svc_request_add_db_time(b->req, uv_hrtime() - b->t0);
        rt_task_complete(&b->task, rt_task_cancel_reason(&b->task));
        return;
    }
    seq_start_next(b);
}

/* --- after: a bounded stream that drains ------------------------------------------------------ */

/* The stream's source. */
static int batch_next(rt_stream *s, rt_task **out)
{
    return next_item(rt_container_of(s, batch, stream), out);
}

static void on_stream_item(rt_stream *s, rt_task *child, int status)
{
    batch_record(rt_container_of(s, batch, stream), rt_container_of(child, batch_item, task),
                 status);
}

static void on_stream_done(rt_task *t, int status)
{
    batch_finish(rt_container_of(t, batch, stream.task), status);
}

/* --- the task and its handler ----------------------------------------------------------------- */

static int batch_start(rt_task *t)
{
    batch *b = rt_container_of(t, batch, task);

    b->t0 = uv_hrtime();
    if (!b->bounded) {
        seq_start_next(b);
        return 0;
    }
    /* DRAIN: at shutdown no new item starts and the ones in flight finish (see the top). */
    rt_stream_init(&b->stream, b->req->app->rt, b->concurrency, batch_next, on_stream_item,
                   b->req->app->drain, RT_STREAM_STOP_DRAIN);
    rt_task_start(&b->stream.task, NULL, on_stream_done);
    return 0;
}

static void batch_cancel(rt_task *t, int reason)
{
    batch *b = rt_container_of(t, batch, task);

    if (b->bounded)
        rt_task_cancel(&b->stream.task, reason);
    else if (b->current != NULL)
        rt_task_cancel(&b->current->task, reason);
}

static const rt_task_vtable batch_vt = {
    .name = "batch",
    .start = batch_start,
    .cancel = batch_cancel,
    .release = hs__task_free,
};

/* How many ids body.ids holds; on anything but 1..1000 positive integers, a 400 and UV_EINVAL. */
static int count_ids(svc_request *req, const json_t *ids)
{
    size_t n = json_array_size(ids);
    bool ok = json_is_array(ids) && n >= 1 && n <= BATCH_MAX_IDS;

    for (size_t i = 0; ok && i < n; i++) {
        const json_t *id = json_array_get(ids, i);

        ok = json_is_integer(id) && json_integer_value(id) >= 1;
    }
    if (ok)
        return (int)n;
    svc_respond_error(req, 400, "bad_request", "ids must be an array of 1..%d positive integers",
                      BATCH_MAX_IDS);
    return UV_EINVAL;
}

static int batch_handler(svc_request *req, void *state, rt_task **task_out)
{
    int64_t dflt = req->app->config->batch_concurrency;
    json_t *body;
    const json_t *ids;
    int64_t delay;
    int64_t concurrency;
    batch *b = NULL;
    int n;

    (void)state;
    if (dflt > BATCH_MAX_CONCURRENCY)
        dflt = BATCH_MAX_CONCURRENCY;
    if (svc_request_json(req, &body) < 0)
        return 0;
    ids = json_object_get(body, "ids");
    n = count_ids(req, ids);
    if (n > 0 && svc_json_int(req, body, "delay_ms", 0, HS_DELAY_MAX_MS, 0, &delay) == 0 &&
        svc_json_int(req, body, "concurrency", 1, BATCH_MAX_CONCURRENCY, dflt, &concurrency) == 0 &&
        hs__has_db(req)) {
        b = hs__task_new(req, &batch_vt, sizeof(*b) + 2 * (size_t)n * sizeof(int64_t), task_out);
        for (int i = 0; b != NULL && i < n; i++)
            b->ids[i] = json_integer_value(json_array_get(ids, (size_t)i));
    }
    json_decref(body);
    if (b == NULL)
        return svc_request_has_response(req) ? 0 : UV_ENOMEM;
    b->req = req;
    b->bounded = hs__is_after(req);
    b->variant = b->bounded ? "after" : "before";
    b->n = (size_t)n;
    b->concurrency = (size_t)concurrency;
    hs__int_text(b->delay_txt, delay);
    /* 128 random bits in hex, so batches of any client or instance never mix. */
    return hs__random_hex(b->batch_id, 16);
}

/* --- rows ------------------------------------------------------------------------------------- */

static const svc_route rows[] = {
    {"POST", "/before/batch", SVC_VARIANT_BEFORE,
     "pattern 2: fetch each user and write a row, one id at a time", batch_handler, NULL, 0},
    {"POST", "/after/batch", SVC_VARIANT_AFTER,
     "pattern 2: the same batch, at most `concurrency` at once, stopping at shutdown",
     batch_handler, NULL, 0},
};

int hs_batch_register(svc_router *r, svc_app *app)
{
    (void)app;
    return HS_ROUTES_ADD(r, rows, NULL);
}
