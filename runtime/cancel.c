/* SPDX-License-Identifier: MIT */
/*
 * cancel.c - one-shot cancellation signals arranged in a tree, and deadlines built on them.
 *
 * A signal is a list of listener nodes. A child signal is simply a listener on its parent whose
 * callback fires the child, so the tree needs no code of its own: firing the root walks the
 * whole tree depth first through ordinary listener calls. Listening pushes at the front, which
 * makes firing run listeners newest first, like guards: what was set up last is torn down first.
 *
 * Firing detaches the listeners onto a local list before calling any of them (rule 7.5), so a
 * listener may unlisten itself or any other node, listen again elsewhere, or fire other signals.
 * Each listener runs at most once, because it is unlinked before its callback runs.
 */
#include "cancel.h"

void rt_cancel_listener_init(rt_cancel_listener *l)
{
    l->cb = NULL;
    rt_list_init(&l->link);
    l->signal = NULL;
}

static void on_parent_fired(rt_cancel_listener *l, int reason)
{
    rt_cancel *c = rt_container_of(l, rt_cancel, in_parent);

    rt_cancel_fire(c, reason);
}

void rt_cancel_init(rt_cancel *c, rt_cancel *parent)
{
    c->reason = 0;
    c->parent = parent;
    rt_list_init(&c->listeners);
    rt_cancel_listener_init(&c->in_parent);
    if (parent != NULL) {
        int reason = rt_cancel_listen(parent, &c->in_parent, on_parent_fired);

        /* No listener can exist yet, so "firing" a fresh signal is just recording the reason. */
        if (reason != 0)
            c->reason = reason;
    }
}

void rt_cancel_close(rt_cancel *c)
{
    assert(rt_list_is_empty(&c->listeners));
    rt_cancel_unlisten(&c->in_parent);
    c->parent = NULL;
}

void rt_cancel_fire(rt_cancel *c, int reason)
{
    rt_list pending;

    if (c->reason != 0)
        return;
    c->reason = reason < 0 ? reason : UV_ECANCELED;
    rt_list_move(&c->listeners, &pending);
    while (!rt_list_is_empty(&pending)) {
        rt_cancel_listener *l = rt_container_of(pending.next, rt_cancel_listener, link);

        rt_list_remove(&l->link);
        l->signal = NULL;
        l->cb(l, c->reason);
    }
}

int rt_cancel_listen(rt_cancel *c, rt_cancel_listener *l, rt_cancel_cb cb)
{
    assert(l->signal == NULL);
    if (c->reason != 0)
        return c->reason;
    l->cb = cb;
    l->signal = c;
    rt_list_push_front(&c->listeners, &l->link);
    return 0;
}

void rt_cancel_unlisten(rt_cancel_listener *l)
{
    rt_list_remove(&l->link);
    l->signal = NULL;
}

static void on_deadline(uv_timer_t *h)
{
    rt_deadline *d = rt_container_of(h, rt_deadline, timer);

    rt_cancel_fire(&d->signal, UV_ETIMEDOUT);
}

int rt_deadline_init(rt_deadline *d, rt_runtime *rt, rt_cancel *parent, uint64_t at)
{
    uint64_t now;
    int err;

    err = uv_timer_init(rt->loop, &d->timer);
    if (err < 0)
        return err;
    rt_cancel_init(&d->signal, parent);
    d->at = at;
    d->close_cb = NULL;
    if (at == RT_NO_DEADLINE)
        return 0;
    now = uv_now(rt->loop);
    /* A deadline already past still fires from the loop, never inside init (rule 7.2). */
    uv_timer_start(&d->timer, on_deadline, at > now ? at - now : 0, 0);
    return 0;
}

static void on_deadline_closed(uv_handle_t *h)
{
    rt_deadline *d = rt_container_of(h, rt_deadline, timer);

    if (d->close_cb != NULL)
        d->close_cb(d);
}

void rt_deadline_close(rt_deadline *d, rt_deadline_close_cb cb)
{
    assert(!uv_is_closing((uv_handle_t *)&d->timer));
    uv_timer_stop(&d->timer);
    rt_cancel_close(&d->signal);
    d->close_cb = cb;
    uv_close((uv_handle_t *)&d->timer, on_deadline_closed);
}
