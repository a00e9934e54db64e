/* SPDX-License-Identifier: MIT */
/*
 * work.c - tasks backed by libuv requests and handles: thread-pool offload and timers.
 *
 * rt_work wraps uv_queue_work. libuv always calls the after-work callback on the loop thread,
 * with UV_ECANCELED when uv_cancel removed the request before a pool thread took it, so the
 * task has exactly one completion path whichever way it ends. Once fn is running it cannot be
 * stopped; a cancellation request then only changes the status reported (the reason), while
 * `result` keeps what fn really did.
 *
 * rt_sleep wraps a uv_timer_t that lives only between start and completion: it is opened at
 * start and closed as soon as the task completes, so an idle, delivered sleep holds no handle.
 * The close is asynchronous, so the storage may be freed only after both the close callback ran
 * and the task was released, whichever comes last; the task state says which one is missing.
 */
#include "work.h"

static void work_run(uv_work_t *req)
{
    rt_work *w = rt_container_of(req, rt_work, req);

    w->result = w->fn(w);
}

static void work_after(uv_work_t *req, int status)
{
    rt_work *w = rt_container_of(req, rt_work, req);

    w->queued = false;
    if (status == UV_ECANCELED)
        rt_task_complete(&w->task, rt_task_is_cancel_requested(&w->task)
                                       ? rt_task_cancel_reason(&w->task)
                                       : UV_ECANCELED);
    else if (rt_task_is_cancel_requested(&w->task))
        rt_task_complete(&w->task, rt_task_cancel_reason(&w->task));
    else
        rt_task_complete(&w->task, w->result);
}

static int work_start(rt_task *t)
{
    rt_work *w = rt_container_of(t, rt_work, task);
    int err;

    err = uv_queue_work(t->rt->loop, &w->req, work_run, work_after);
    if (err < 0)
        return err;
    w->queued = true;
    return 0;
}

static void work_cancel(rt_task *t, int reason)
{
    rt_work *w = rt_container_of(t, rt_work, task);

    (void)reason;
    /* UV_EBUSY means a pool thread has it: the completion then comes when fn returns. */
    if (w->queued)
        uv_cancel((uv_req_t *)&w->req);
}

static const rt_task_vtable work_vt = {
    .name = "work",
    .start = work_start,
    .cancel = work_cancel,
    .release = NULL,
};

/* The request is not a handle: once work_after ran, nothing of libuv's refers to w any more. */
static void work_free(rt_task *t)
{
    rt_free(rt_container_of(t, rt_work, task));
}

static const rt_task_vtable heap_work_vt = {
    .name = "work",
    .start = work_start,
    .cancel = work_cancel,
    .release = work_free,
};

static void work_init(rt_work *w, rt_runtime *rt, const rt_task_vtable *vt, rt_work_fn fn,
                      void *arg)
{
    rt_task_init(&w->task, rt, vt);
    w->arg = arg;
    w->result = 0;
    w->fn = fn;
    w->queued = false;
}

void rt_work_init(rt_work *w, rt_runtime *rt, rt_work_fn fn, void *arg)
{
    work_init(w, rt, &work_vt, fn, arg);
}

rt_work *rt_work_new(rt_runtime *rt, rt_work_fn fn, void *arg)
{
    rt_work *w = rt_malloc(sizeof(*w));

    if (w == NULL)
        return NULL;
    work_init(w, rt, &heap_work_vt, fn, arg);
    return w;
}

static void sleep_closed(uv_handle_t *h)
{
    rt_sleep *s = rt_container_of(h, rt_sleep, timer);

    s->timer_open = false;
    if (s->task.state == RT_TASK_RELEASED && s->release_cb != NULL)
        s->release_cb(s);
}

static void sleep_end(rt_sleep *s, int status)
{
    uv_timer_stop(&s->timer);
    uv_close((uv_handle_t *)&s->timer, sleep_closed);
    rt_task_complete(&s->task, status);
}

static void sleep_fired(uv_timer_t *h)
{
    sleep_end(rt_container_of(h, rt_sleep, timer), 0);
}

static int sleep_start(rt_task *t)
{
    rt_sleep *s = rt_container_of(t, rt_sleep, task);
    int err;

    err = uv_timer_init(t->rt->loop, &s->timer);
    if (err < 0)
        return err;
    s->timer_open = true;
    /* Fails only for a NULL callback or a closing handle, neither of which can happen here. */
    uv_timer_start(&s->timer, sleep_fired, s->ms, 0);
    return 0;
}

static void sleep_cancel(rt_task *t, int reason)
{
    sleep_end(rt_container_of(t, rt_sleep, task), reason);
}

static void sleep_release(rt_task *t)
{
    rt_sleep *s = rt_container_of(t, rt_sleep, task);

    /* Otherwise sleep_closed finishes the release when the handle is gone. */
    if (!s->timer_open && s->release_cb != NULL)
        s->release_cb(s);
}

static const rt_task_vtable sleep_vt = {
    .name = "sleep",
    .start = sleep_start,
    .cancel = sleep_cancel,
    .release = sleep_release,
};

void rt_sleep_init(rt_sleep *s, rt_runtime *rt, uint64_t ms, void (*release_cb)(rt_sleep *s))
{
    rt_task_init(&s->task, rt, &sleep_vt);
    s->ms = ms;
    s->timer_open = false;
    s->release_cb = release_cb;
}

static void sleep_free(rt_sleep *s)
{
    rt_free(s);
}

rt_sleep *rt_sleep_new(rt_runtime *rt, uint64_t ms)
{
    rt_sleep *s = rt_malloc(sizeof(*s));

    if (s == NULL)
        return NULL;
    rt_sleep_init(s, rt, ms, sleep_free);
    return s;
}
