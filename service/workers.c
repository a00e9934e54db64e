/* SPDX-License-Identifier: MIT */
/*
 * workers.c - the shared part of the WORKERS loops (see workers.h).
 *
 * /metrics across loops. The asking worker's task (a gather) holds one part per worker. Under
 * the mutex it links the part for worker j into j's `asks` list and wakes j. Worker j, woken,
 * renders its own text once on its own loop (outside the mutex), then, under the mutex, copies
 * it into every part still linked in its asks, unlinks them and, for each gather with no part
 * left pending, links the gather into its owner's `answered` list and wakes the owner. The
 * owner finishes the gather on its own loop: it sums the texts and answers.
 *
 * A gather gives up on the parts still pending after SVC_WORKERS_METRICS_WAIT_MS (a stalled
 * loop) or when its request is cancelled: under the mutex it unlinks them, so no other worker
 * can touch it afterwards, and it answers with what it has. A worker that detaches answers its
 * pending asks as missing. Every list and flag here is touched only under the mutex; everything
 * else in a gather belongs to its owner's thread.
 */
#include "service/workers.h"

#include <stdlib.h>
#include <string.h>

#include "runtime/scope.h"
#include "service/config.h"
#include "service/log.h"
#include "service/metrics.h"
#include "service/shutdown.h"

typedef struct gather gather;

typedef struct part {
    rt_list link; /* in the target's asks while pending (under mu) */
    gather *g;
    char *text; /* malloc'd by the target, under mu */
    size_t len;
} part;

struct gather {
    rt_task task;
    svc_workers *ws;
    size_t self;
    svc_request *req;
    uv_timer_t timer;
    rt_list answered_link; /* in slots[self].answered once complete (under mu) */
    size_t pending;        /* under mu */
    bool finished;         /* owner's thread */
    bool timer_open;
    part parts[]; /* one per worker */
};

typedef struct slot {
    svc_app *app;
    svc_shutdown *sd;
    uv_async_t async;
    bool open;        /* the async may be sent to (under mu) */
    rt_list asks;     /* parts wanting this worker's text (under mu) */
    rt_list answered; /* this worker's gathers with every part in (under mu) */
    size_t signals_seen;
} slot;

struct svc_workers {
    uv_mutex_t mu;
    size_t n;
    int listen_fd;
    size_t signals;     /* under mu: shutdown signals forwarded so far */
    const char *why[2]; /* under mu: the first two */
    slot slots[];
};

svc_workers *svc_workers_new(size_t n)
{
    svc_workers *ws = calloc(1, sizeof(*ws) + n * sizeof(slot));

    if (ws == NULL)
        return NULL;
    if (uv_mutex_init(&ws->mu) != 0) {
        free(ws);
        return NULL;
    }
    ws->n = n;
    ws->listen_fd = -1;
    for (size_t i = 0; i < n; i++) {
        rt_list_init(&ws->slots[i].asks);
        rt_list_init(&ws->slots[i].answered);
    }
    return ws;
}

void svc_workers_free(svc_workers *ws)
{
    if (ws == NULL)
        return;
    uv_mutex_destroy(&ws->mu);
    free(ws);
}

size_t svc_workers_count(const svc_workers *ws)
{
    return ws->n;
}

int svc_workers_listen_fd(const svc_workers *ws)
{
    return ws->listen_fd;
}

void svc_workers_set_listen_fd(svc_workers *ws, int fd)
{
    ws->listen_fd = fd;
}

/* Under mu: wakes worker id if it can be woken. */
static void wake_locked(svc_workers *ws, size_t id)
{
    if (ws->slots[id].open)
        uv_async_send(&ws->slots[id].async);
}

/* Under mu: one part of g is in (or given up on); the last one hands g back to its owner. */
static void part_done_locked(svc_workers *ws, part *p)
{
    gather *g = p->g;

    rt_list_remove(&p->link);
    if (--g->pending == 0) {
        rt_list_push_back(&ws->slots[g->self].answered, &g->answered_link);
        wake_locked(ws, g->self);
    }
}

static void gather_finish(gather *g);

/* On worker id's loop: forwarded signals, asks for its text, and its own gathers' answers. */
static void on_async(uv_async_t *a)
{
    svc_workers *ws = a->data;
    size_t id = (size_t)(((slot *)rt_container_of(a, slot, async)) - ws->slots);
    slot *sl = &ws->slots[id];
    size_t seen;
    size_t signals;
    const char *why[2];
    bool asked;
    rt_list answered;

    uv_mutex_lock(&ws->mu);
    seen = sl->signals_seen;
    signals = ws->signals;
    why[0] = ws->why[0];
    why[1] = ws->why[1];
    sl->signals_seen = signals;
    asked = !rt_list_is_empty(&sl->asks);
    rt_list_move(&sl->answered, &answered);
    uv_mutex_unlock(&ws->mu);

    for (size_t k = seen; k < signals && k < 2; k++)
        svc_shutdown_begin(sl->sd, why[k]);
    if (asked) {
        size_t len = 0;
        char *text = svc_metrics_render(sl->app->metrics, sl->app, sl->app->root_scope, &len);

        uv_mutex_lock(&ws->mu);
        while (!rt_list_is_empty(&sl->asks)) {
            part *p = rt_container_of(sl->asks.next, part, link);

            if (text != NULL) {
                p->text = malloc(len);
                if (p->text != NULL) {
                    memcpy(p->text, text, len);
                    p->len = len;
                }
            }
            part_done_locked(ws, p);
        }
        uv_mutex_unlock(&ws->mu);
        free(text);
    }
    while (!rt_list_is_empty(&answered)) {
        gather *g = rt_container_of(answered.next, gather, answered_link);

        rt_list_remove(&g->answered_link);
        gather_finish(g);
    }
}

int svc_workers_attach(svc_workers *ws, size_t id, svc_app *app, svc_shutdown *sd)
{
    slot *sl = &ws->slots[id];
    int err = uv_async_init(app->loop, &sl->async, on_async);

    if (err < 0)
        return err;
    sl->async.data = ws;
    sl->app = app;
    sl->sd = sd;
    uv_mutex_lock(&ws->mu);
    sl->open = true;
    uv_mutex_unlock(&ws->mu);
    return 0;
}

void svc_workers_detach(svc_workers *ws, size_t id)
{
    slot *sl = &ws->slots[id];

    uv_mutex_lock(&ws->mu);
    if (!sl->open) {
        uv_mutex_unlock(&ws->mu);
        return;
    }
    sl->open = false;
    while (!rt_list_is_empty(&sl->asks))
        part_done_locked(ws, rt_container_of(sl->asks.next, part, link));
    uv_mutex_unlock(&ws->mu);
    uv_close((uv_handle_t *)&sl->async, NULL);
}

void svc_workers_signal(svc_workers *ws, size_t from, const char *why)
{
    uv_mutex_lock(&ws->mu);
    if (ws->signals < 2)
        ws->why[ws->signals] = why;
    ws->signals++;
    /* The sender has handled the signal itself. */
    if (ws->slots[from].open && ws->slots[from].signals_seen < ws->signals)
        ws->slots[from].signals_seen = ws->signals;
    for (size_t i = 0; i < ws->n; i++) {
        if (i != from)
            wake_locked(ws, i);
    }
    uv_mutex_unlock(&ws->mu);
}

uint64_t svc_workers_max_stall_ns(const svc_workers *ws, size_t *worker)
{
    uint64_t worst = 0;

    *worker = 0;
    for (size_t i = 0; i < ws->n; i++) {
        /* The metrics registries live until every thread has ended (main.c). */
        const svc_app *app = ws->slots[i].app;
        uint64_t ns = app != NULL ? svc_metrics_probe_stall_ns(app->metrics) : 0;

        if (ns > worst) {
            worst = ns;
            *worker = i;
        }
    }
    return worst;
}

bool svc_workers_all_db_up(const svc_workers *ws)
{
    for (size_t i = 0; i < ws->n; i++) {
        const svc_app *app = ws->slots[i].app;

        if (app == NULL || !svc_metrics_db_up(app->metrics))
            return false;
    }
    return true;
}

/* --- /metrics across workers ------------------------------------------------------------------ */

static void gather_finish(gather *g)
{
    svc_workers *ws = g->ws;
    const char *texts[SVC_MAX_WORKERS];
    size_t lens[SVC_MAX_WORKERS];
    size_t n = 0;
    size_t missing = 0;
    size_t len = 0;
    char *out;

    if (g->finished)
        return;
    g->finished = true;
    uv_timer_stop(&g->timer);
    /* Give up on whatever is still pending: after this no other worker touches g. */
    uv_mutex_lock(&ws->mu);
    for (size_t i = 0; i < ws->n; i++) {
        if (i != g->self && g->parts[i].link.next != &g->parts[i].link)
            rt_list_remove(&g->parts[i].link);
    }
    rt_list_remove(&g->answered_link);
    uv_mutex_unlock(&ws->mu);
    for (size_t i = 0; i < ws->n; i++) {
        if (g->parts[i].text == NULL) {
            missing++;
            continue;
        }
        texts[n] = g->parts[i].text;
        lens[n] = g->parts[i].len;
        n++;
    }
    out = svc_metrics_sum(texts, lens, n, missing, &len);
    if (out == NULL)
        svc_respond_uv_error(g->req, UV_ENOMEM);
    else
        svc_respond_buffer(g->req, 200, "text/plain; version=0.0.4; charset=utf-8", out, len);
    rt_task_complete(&g->task, 0);
}

static void on_gather_timeout(uv_timer_t *t)
{
    gather_finish(t->data);
}

static int gather_start(rt_task *t)
{
    gather *g = rt_container_of(t, gather, task);
    svc_workers *ws = g->ws;
    svc_app *app = ws->slots[g->self].app;
    part *mine = &g->parts[g->self];
    int err;

    err = uv_timer_init(app->loop, &g->timer);
    if (err < 0)
        return err;
    g->timer.data = g;
    g->timer_open = true;
    mine->text = svc_metrics_render(app->metrics, app, app->root_scope, &mine->len);
    if (mine->text == NULL)
        return UV_ENOMEM;
    uv_mutex_lock(&ws->mu);
    /* Counted before any other worker can answer, so that none hands g back early. */
    g->pending = 1;
    for (size_t i = 0; i < ws->n; i++) {
        if (i == g->self || !ws->slots[i].open)
            continue;
        rt_list_push_back(&ws->slots[i].asks, &g->parts[i].link);
        g->pending++;
        wake_locked(ws, i);
    }
    if (--g->pending == 0) {
        uv_mutex_unlock(&ws->mu);
        gather_finish(g);
        return 0;
    }
    uv_mutex_unlock(&ws->mu);
    uv_timer_start(&g->timer, on_gather_timeout, SVC_WORKERS_METRICS_WAIT_MS, 0);
    return 0;
}

static void gather_cancel(rt_task *t, int reason)
{
    (void)reason;
    gather_finish(rt_container_of(t, gather, task));
}

static void on_gather_timer_closed(uv_handle_t *h)
{
    free(h->data);
}

static void gather_release(rt_task *t)
{
    gather *g = rt_container_of(t, gather, task);

    for (size_t i = 0; i < g->ws->n; i++)
        free(g->parts[i].text);
    if (g->timer_open)
        uv_close((uv_handle_t *)&g->timer, on_gather_timer_closed);
    else
        free(g);
}

static const rt_task_vtable gather_vt = {
    .name = "metrics_gather",
    .start = gather_start,
    .cancel = gather_cancel,
    .release = gather_release,
};

rt_task *svc_workers_metrics_task(svc_workers *ws, size_t self, svc_request *req)
{
    gather *g = calloc(1, sizeof(*g) + ws->n * sizeof(part));

    if (g == NULL)
        return NULL;
    rt_task_init(&g->task, ws->slots[self].app->rt, &gather_vt);
    g->ws = ws;
    g->self = self;
    g->req = req;
    rt_list_init(&g->answered_link);
    for (size_t i = 0; i < ws->n; i++) {
        rt_list_init(&g->parts[i].link);
        g->parts[i].g = g;
    }
    return &g->task;
}
