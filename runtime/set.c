/* SPDX-License-Identifier: MIT */
/*
 * set.c - a dynamic set of owned tasks, delivered in completion order (JoinSet).
 *
 * Children are started the moment they are added and kept on an intrusive list until they are
 * delivered, when the set hands them to the item callback and then releases them. The set task
 * completes once two things hold: it has been sealed (no more additions can come) and nothing is
 * in flight. Both events re-check that condition, and so does start, since a set may be sealed
 * before it runs.
 *
 * Cancelling the set seals it as well: a cancelled set must not accept children it would
 * immediately have to cancel, and it must still be able to complete without a seal from a caller
 * who is perhaps gone. It then reports the cancellation reason rather than 0.
 */
#include "set.h"

static void maybe_finish(rt_set *s)
{
    if (s->task.state != RT_TASK_RUNNING || !s->sealed || s->in_flight > 0)
        return;
    assert(rt_list_is_empty(&s->children));
    rt_cancel_close(&s->signal);
    rt_task_complete(&s->task, rt_task_cancel_reason(&s->task));
}

static void child_done(rt_task *child, int status)
{
    rt_set *s = child->owner;

    rt_list_remove(&child->link);
    s->in_flight--;
    s->completed++;
    if (s->item_cb != NULL)
        s->item_cb(s, child, status);
    rt_task_release(child);
    maybe_finish(s);
}

int rt_set_add(rt_set *s, rt_task *child)
{
    assert(child->state == RT_TASK_INIT);
    if (s->sealed || s->task.state != RT_TASK_RUNNING) {
        rt_task_release(child);
        return UV_ECANCELED;
    }
    s->added++;
    s->in_flight++;
    rt_list_push_back(&s->children, &child->link);
    child->owner = s;
    rt_task_start(child, &s->signal, child_done);
    return 0;
}

void rt_set_seal(rt_set *s)
{
    s->sealed = true;
    maybe_finish(s);
}

static int set_start(rt_task *t)
{
    rt_set *s = rt_container_of(t, rt_set, task);

    maybe_finish(s);
    return 0;
}

static void set_cancel(rt_task *t, int reason)
{
    rt_set *s = rt_container_of(t, rt_set, task);

    s->sealed = true;
    rt_cancel_fire(&s->signal, reason);
    maybe_finish(s);
}

static const rt_task_vtable set_vt = {
    .name = "set",
    .start = set_start,
    .cancel = set_cancel,
    .release = NULL,
};

void rt_set_init(rt_set *s, rt_runtime *rt, rt_set_item_cb item_cb)
{
    rt_task_init(&s->task, rt, &set_vt);
    s->in_flight = 0;
    s->added = 0;
    s->completed = 0;
    s->item_cb = item_cb;
    rt_list_init(&s->children);
    rt_cancel_init(&s->signal, NULL);
    s->sealed = false;
}
