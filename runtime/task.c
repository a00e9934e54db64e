/* SPDX-License-Identifier: MIT */
/*
 * task.c - the task state machine (drawn in task.h) and its delivery through the post queue.
 *
 * The main idea is the split between completing and delivering. rt_task_complete only records
 * the status and posts the task's own embedded rt_post node; the guards and the callback run
 * from the queue on a later turn. That one indirection gives invariant T2 for every task type at
 * once, keeps stack depth flat when a completion triggers another, and costs no allocation.
 *
 * Cancellation is a listener embedded in the task: rt_task_start registers it on the signal it
 * is given, and rt_task_complete removes it, so a signal never reaches a task that is done. The
 * first cancellation request wins and is remembered in cancel_reason; vt->cancel is asked once.
 *
 * Releasing is deferred while the task's callback runs (the refs count; CONTRIBUTING.md,
 * "Callbacks"), because releasing from inside one's own completion callback is the common way to
 * free a task.
 */
#include "task.h"

#include "runtime_int.h"

void rt_task_init(rt_task *t, rt_runtime *rt, const rt_task_vtable *vt)
{
    t->vt = vt;
    t->rt = rt;
    t->status = 0;
    t->state = RT_TASK_INIT;
    t->flags = 0;
    t->refs = 0;
    t->cancel_reason = 0;
    t->cb = NULL;
    t->guards = NULL;
    rt_cancel_listener_init(&t->on_cancel);
    rt_post_init(&t->post);
    rt_list_init(&t->link);
    t->owner = NULL;
}

void rt__guards_run(rt_guard **stack)
{
    while (*stack != NULL) {
        rt_guard *g = *stack;
        void (*fn)(void *arg) = g->fn;

        *stack = g->next;
        /* The guard often lives inside what fn frees, so it is not touched after the call. */
        if (fn != NULL) {
            g->fn = NULL;
            fn(g->arg);
        }
    }
}

static void finish_release(rt_task *t)
{
    t->state = RT_TASK_RELEASED;
    if (t->vt->release != NULL)
        t->vt->release(t);
}

static void deliver(rt_post *p)
{
    rt_task *t = rt_container_of(p, rt_task, post);

    assert(t->state == RT_TASK_DONE);
    t->state = RT_TASK_DELIVERED;
    t->rt->live_tasks--;
    t->rt->tasks_completed++;
    rt__guards_run(&t->guards);
    t->refs++;
    if (t->cb != NULL)
        t->cb(t, t->status);
    if (t->flags & RT__TASK_SCOPED)
        rt__scope_child_delivered(t);
    if (--t->refs == 0 && (t->flags & RT__TASK_RELEASE_PENDING))
        finish_release(t);
}

void rt_task_complete(rt_task *t, int status)
{
    assert(t->state == RT_TASK_RUNNING);
    assert(status <= 0);
    t->state = RT_TASK_DONE;
    t->status = status;
    rt_cancel_unlisten(&t->on_cancel);
    rt_post_submit(t->rt, &t->post, deliver);
}

static void on_signal(rt_cancel_listener *l, int reason)
{
    rt_task_cancel(rt_container_of(l, rt_task, on_cancel), reason);
}

void rt_task_start(rt_task *t, rt_cancel *signal, rt_task_cb cb)
{
    int err;

    assert(t->state == RT_TASK_INIT);
    t->cb = cb;
    t->state = RT_TASK_RUNNING;
    t->rt->live_tasks++;
    t->rt->tasks_started++;
    if (t->cancel_reason != 0) {
        rt_task_complete(t, t->cancel_reason);
        return;
    }
    if (signal != NULL) {
        err = rt_cancel_listen(signal, &t->on_cancel, on_signal);
        if (err != 0) {
            t->cancel_reason = err;
            rt_task_complete(t, err);
            return;
        }
    }
    err = t->vt->start(t);
    if (err < 0 && RT_ALWAYS(t->state == RT_TASK_RUNNING))
        rt_task_complete(t, err);
}

void rt_task_cancel(rt_task *t, int reason)
{
    if (reason >= 0)
        reason = UV_ECANCELED;
    switch (t->state) {
    case RT_TASK_INIT:
        if (t->cancel_reason == 0)
            t->cancel_reason = reason;
        break;
    case RT_TASK_RUNNING:
        if (t->cancel_reason != 0)
            break;
        t->cancel_reason = reason;
        rt_cancel_unlisten(&t->on_cancel);
        if (t->vt->cancel != NULL)
            t->vt->cancel(t, reason);
        break;
    default:
        /* T4: after completion a cancellation has nothing left to stop. */
        break;
    }
}

void rt_task_release(rt_task *t)
{
    switch (t->state) {
    case RT_TASK_INIT:
        rt__guards_run(&t->guards);
        finish_release(t);
        break;
    case RT_TASK_DELIVERED:
        if (t->refs > 0) {
            assert(!(t->flags & RT__TASK_RELEASE_PENDING));
            t->flags |= RT__TASK_RELEASE_PENDING;
        } else {
            finish_release(t);
        }
        break;
    default:
        assert(!"rt_task_release: the task is running or already released");
        break;
    }
}

void rt_task_defer(rt_task *t, rt_guard *g)
{
    assert(t->state == RT_TASK_INIT || t->state == RT_TASK_RUNNING);
    g->next = t->guards;
    t->guards = g;
}
