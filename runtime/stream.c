/* SPDX-License-Identifier: MIT */
/*
 * stream.c - pull-based bounded concurrency (buffer_unordered(N) + take_until).
 *
 * The stream refills up to its limit at start and after each child's delivery, which is the
 * only moment a slot frees up, so in_flight can never exceed the limit and the source is asked
 * exactly as often as there is room. The source is never asked again once it ran dry, failed,
 * was stopped or the stream was cancelled; the stream completes as soon as that is the case and
 * nothing is in flight.
 *
 * The `pulling` flag makes refill and finish safe to reach from inside the source callback: a
 * source may fire the stop signal (its last item seen) or cancel the stream, and the resulting
 * finish check must wait until the refill loop has returned, or the stream would complete while
 * the loop is still about to start a child.
 *
 * Counters: succeeded/failed/cancelled classify delivered children; started counts children
 * handed to rt_task_start. A stop that arrives after the source ran dry is not "stopped": the
 * batch did see every item.
 */
#include "stream.h"

static void maybe_finish(rt_stream *s)
{
    int status;

    if (s->pulling || s->task.state != RT_TASK_RUNNING || s->in_flight > 0)
        return;
    if (!s->exhausted && !s->stopped && s->error == 0 && !rt_task_is_cancel_requested(&s->task))
        return;
    if (rt_task_is_cancel_requested(&s->task))
        status = rt_task_cancel_reason(&s->task);
    else
        status = s->error;
    assert(rt_list_is_empty(&s->children));
    rt_cancel_unlisten(&s->on_stop);
    rt_cancel_close(&s->signal);
    rt_task_complete(&s->task, status);
}

static void child_done(rt_task *child, int status);

static bool may_pull(const rt_stream *s)
{
    return !s->exhausted && !s->stopped && s->error == 0 &&
           !rt_task_is_cancel_requested(&s->task) && s->in_flight < s->limit;
}

static void refill(rt_stream *s)
{
    rt_task *child;
    int r;

    s->pulling = true;
    while (may_pull(s)) {
        child = NULL;
        r = s->next(s, &child);
        if (r < 0) {
            s->error = r;
            break;
        }
        if (r == 0) {
            s->exhausted = true;
            break;
        }
        assert(child != NULL && child->state == RT_TASK_INIT);
        s->in_flight++;
        s->started++;
        if (s->in_flight > s->max_in_flight)
            s->max_in_flight = s->in_flight;
        rt_list_push_back(&s->children, &child->link);
        child->owner = s;
        rt_task_start(child, &s->signal, child_done);
    }
    s->pulling = false;
    maybe_finish(s);
}

static void child_done(rt_task *child, int status)
{
    rt_stream *s = child->owner;

    rt_list_remove(&child->link);
    s->in_flight--;
    if (status == 0)
        s->succeeded++;
    else if (status == UV_ECANCELED || status == UV_ETIMEDOUT)
        s->cancelled++;
    else
        s->failed++;
    if (s->item_cb != NULL)
        s->item_cb(s, child, status);
    rt_task_release(child);
    refill(s);
}

static void on_stop(rt_cancel_listener *l, int reason)
{
    rt_stream *s = rt_container_of(l, rt_stream, on_stop);

    if (!s->exhausted)
        s->stopped = true;
    if (s->stop_mode == RT_STREAM_STOP_CANCEL)
        rt_cancel_fire(&s->signal, reason);
    maybe_finish(s);
}

static int stream_start(rt_task *t)
{
    rt_stream *s = rt_container_of(t, rt_stream, task);

    if (s->stop != NULL && rt_cancel_listen(s->stop, &s->on_stop, on_stop) != 0)
        s->stopped = true;
    refill(s);
    return 0;
}

static void stream_cancel(rt_task *t, int reason)
{
    rt_stream *s = rt_container_of(t, rt_stream, task);

    rt_cancel_fire(&s->signal, reason);
    maybe_finish(s);
}

static const rt_task_vtable stream_vt = {
    .name = "stream",
    .start = stream_start,
    .cancel = stream_cancel,
    .release = NULL,
};

void rt_stream_init(rt_stream *s, rt_runtime *rt, size_t limit, rt_stream_next_cb next,
                    rt_stream_item_cb item_cb, rt_cancel *stop, int stop_mode)
{
    assert(limit >= 1);
    rt_task_init(&s->task, rt, &stream_vt);
    s->limit = limit;
    s->in_flight = 0;
    s->max_in_flight = 0;
    s->started = 0;
    s->succeeded = 0;
    s->failed = 0;
    s->cancelled = 0;
    s->stopped = false;
    s->next = next;
    s->item_cb = item_cb;
    s->stop = stop;
    rt_cancel_listener_init(&s->on_stop);
    rt_cancel_init(&s->signal, NULL);
    rt_list_init(&s->children);
    s->stop_mode = stop_mode;
    s->error = 0;
    s->exhausted = false;
    s->pulling = false;
}
