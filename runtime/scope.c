/* SPDX-License-Identifier: MIT */
/*
 * scope.c - the scope tree: spawning, counting, cancelling and closing (rules S1-S5 in scope.h).
 *
 * A scope keeps its running tasks on an intrusive list (through rt_task.link) and its open child
 * scopes on another, so it knows when it is empty without a separate counter that could drift.
 * Its signal is a child of the parent scope's signal, which is all S2 needs: cancellation flows
 * down the signal tree and reaches each task through the task's own listener.
 *
 * Completion is checked at the three moments that can make a closing scope empty: close itself,
 * the delivery of a child task, and the completion of a child scope. It is always posted, never
 * run inline, because close is called by users who must not be re-entered (rule 7.2) and because
 * a child's delivery is itself inside a callback. The parent is checked after the child has
 * unlinked itself, so a subtree completes bottom up, each level on its own loop turn.
 *
 * What it does not do: cancel on close. Closing alone means "drain"; shutdown code cancels first
 * when it wants "cancel what is left".
 */
#include "scope.h"

#include <stddef.h>

#include "runtime_int.h"

static void scope_finish(rt_post *p);

static bool is_empty(const rt_scope *s)
{
    return rt_list_is_empty(&s->tasks) && rt_list_is_empty(&s->scopes);
}

static void check_done(rt_scope *s)
{
    if (s->closing && is_empty(s))
        rt_post_submit(s->rt, &s->post, scope_finish);
}

int rt_scope_init(rt_scope *s, rt_runtime *rt, rt_scope *parent, const char *name)
{
    if (parent != NULL && parent->closing)
        return UV_ESHUTDOWN;
    s->name = name;
    s->parent = parent;
    rt_cancel_init(&s->signal, parent != NULL ? &parent->signal : NULL);
    s->live = 0;
    s->live_total = 0;
    s->spawned = 0;
    s->cancelled = 0;
    s->rt = rt;
    rt_list_init(&s->tasks);
    rt_list_init(&s->scopes);
    rt_list_init(&s->link);
    s->guards = NULL;
    s->close_cb = NULL;
    rt_post_init(&s->post);
    s->closing = false;
    if (parent != NULL)
        rt_list_push_back(&parent->scopes, &s->link);
    return 0;
}

int rt_scope_spawn(rt_scope *s, rt_task *t, rt_task_cb cb)
{
    rt_scope *a;

    if (s->closing) {
        rt_task_release(t);
        return UV_ESHUTDOWN;
    }
    s->spawned++;
    s->live++;
    for (a = s; a != NULL; a = a->parent)
        a->live_total++;
    rt_list_push_back(&s->tasks, &t->link);
    t->owner = s;
    t->flags |= RT__TASK_SCOPED;
    rt_task_start(t, &s->signal, cb);
    return 0;
}

void rt__scope_child_delivered(rt_task *t)
{
    rt_scope *s = t->owner;
    rt_scope *a;

    rt_list_remove(&t->link);
    s->live--;
    for (a = s; a != NULL; a = a->parent)
        a->live_total--;
    if (t->status == UV_ECANCELED || t->status == UV_ETIMEDOUT)
        s->cancelled++;
    rt_task_release(t);
    check_done(s);
}

void rt_scope_cancel(rt_scope *s, int reason)
{
    rt_cancel_fire(&s->signal, reason);
}

static void scope_finish(rt_post *p)
{
    rt_scope *s = rt_container_of(p, rt_scope, post);
    rt_scope *parent = s->parent;

    assert(s->closing && is_empty(s));
    rt_list_remove(&s->link);
    rt_cancel_close(&s->signal);
    rt__guards_run(&s->guards);
    if (parent != NULL)
        check_done(parent);
    /* Last: the callback may free s. */
    if (s->close_cb != NULL)
        s->close_cb(s);
}

void rt_scope_close(rt_scope *s, rt_scope_close_cb cb)
{
    assert(!s->closing);
    s->closing = true;
    s->close_cb = cb;
    check_done(s);
}

void rt_scope_defer(rt_scope *s, rt_guard *g)
{
    g->next = s->guards;
    s->guards = g;
}

typedef struct scope_block {
    rt_guard guard;
    void (*fin)(void *mem);
    max_align_t mem[]; /* what rt_scope_alloc returns */
} scope_block;

static void scope_block_free(void *arg)
{
    scope_block *b = arg;

    if (b->fin != NULL)
        b->fin(b->mem);
    rt_free(b);
}

void *rt_scope_alloc(rt_scope *s, size_t size, void (*fin)(void *mem))
{
    scope_block *b = rt_calloc(1, sizeof(*b) + size);

    if (b == NULL)
        return NULL;
    b->fin = fin;
    b->guard.fn = scope_block_free;
    b->guard.arg = b;
    rt_scope_defer(s, &b->guard);
    return b->mem;
}

bool rt_scope_is_closing(const rt_scope *s)
{
    for (; s != NULL; s = s->parent) {
        if (s->closing)
            return true;
    }
    return false;
}

static void walk(rt_scope *s, int depth, void (*fn)(rt_scope *s, int depth, void *arg), void *arg)
{
    rt_list *n;

    fn(s, depth, arg);
    for (n = s->scopes.next; n != &s->scopes; n = n->next)
        walk(rt_container_of(n, rt_scope, link), depth + 1, fn, arg);
}

void rt_scope_walk(rt_scope *s, void (*fn)(rt_scope *s, int depth, void *arg), void *arg)
{
    walk(s, 0, fn, arg);
}
