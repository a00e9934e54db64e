/* SPDX-License-Identifier: MIT */
/*
 * join.c - a counter over a fixed array of tasks (join! / try_join!).
 *
 * The join owns a signal, initialized at start, that every child listens to. Cancelling the join
 * task and a fail-fast failure both simply fire it, so there is one way for a child to be
 * cancelled. The signal is a root rather than a child of the signal the join was started with:
 * that outer signal reaches the join through the join task's own listener (vt->cancel), which
 * gives the same propagation without the join having to know which signal it was given.
 *
 * The join never completes before its last child is delivered, fail-fast included: siblings are
 * cancelled, not abandoned, so their guards and callbacks still run before the join's do.
 *
 * rt_join_new is the owning variant: one allocation holds the join and a copy of the array, and
 * its release releases the children, so a join built at run time can be handed to a scope.
 */
#include "join.h"

static void child_done(rt_task *child, int status)
{
    rt_join *j = child->owner;

    if (status < 0 && j->first_error == 0) {
        j->first_error = status;
        if (j->flags & RT_JOIN_FAIL_FAST)
            rt_cancel_fire(&j->signal, UV_ECANCELED);
    }
    assert(j->pending > 0);
    if (--j->pending > 0)
        return;
    rt_cancel_close(&j->signal);
    rt_task_complete(&j->task, j->first_error);
}

static int join_start(rt_task *t)
{
    rt_join *j = rt_container_of(t, rt_join, task);

    j->pending = j->n;
    if (j->n == 0) {
        rt_task_complete(t, 0);
        return 0;
    }
    /* Children complete through the post queue only, so none can finish during this loop. */
    for (size_t i = 0; i < j->n; i++) {
        j->children[i]->owner = j;
        rt_task_start(j->children[i], &j->signal, child_done);
    }
    return 0;
}

static void join_cancel(rt_task *t, int reason)
{
    rt_join *j = rt_container_of(t, rt_join, task);

    rt_cancel_fire(&j->signal, reason);
}

static const rt_task_vtable join_vt = {
    .name = "join",
    .start = join_start,
    .cancel = join_cancel,
    .release = NULL,
};

typedef struct owned_join {
    rt_join j;
    rt_task *children[];
} owned_join;

static void owned_release(rt_task *t)
{
    owned_join *o = rt_container_of(t, owned_join, j.task);

    for (size_t i = 0; i < o->j.n; i++)
        rt_task_release(o->children[i]);
    rt_free(o);
}

static const rt_task_vtable owned_join_vt = {
    .name = "join",
    .start = join_start,
    .cancel = join_cancel,
    .release = owned_release,
};

static void join_init(rt_join *j, rt_runtime *rt, const rt_task_vtable *vt, rt_task **children,
                      size_t n, unsigned flags)
{
    rt_task_init(&j->task, rt, vt);
    j->first_error = 0;
    j->children = children;
    j->n = n;
    j->pending = 0;
    j->flags = flags;
    rt_cancel_init(&j->signal, NULL);
}

void rt_join_init(rt_join *j, rt_runtime *rt, rt_task **children, size_t n, unsigned flags)
{
    join_init(j, rt, &join_vt, children, n, flags);
}

rt_join *rt_join_new(rt_runtime *rt, rt_task **children, size_t n, unsigned flags)
{
    owned_join *o;

    if (n > (SIZE_MAX - sizeof(*o)) / sizeof(o->children[0]))
        goto out_release_children;
    o = rt_malloc(sizeof(*o) + n * sizeof(o->children[0]));
    if (o == NULL)
        goto out_release_children;
    for (size_t i = 0; i < n; i++)
        o->children[i] = children[i];
    join_init(&o->j, rt, &owned_join_vt, o->children, n, flags);
    return &o->j;

out_release_children:
    for (size_t i = 0; i < n; i++)
        rt_task_release(children[i]);
    return NULL;
}
