/* SPDX-License-Identifier: MIT */
/*
 * runtime.c - the post queue that delivers every completion, and the allocation hook.
 *
 * The queue is an intrusive FIFO of rt_post nodes embedded in the objects that want a later call,
 * so posting never allocates and a post can be withdrawn in O(1). One uv_idle_t drains it: the
 * idle handle is started when the queue goes from empty to non-empty and stopped when a drain
 * leaves it empty, because an active idle handle makes uv_run poll with a zero timeout (work is
 * pending, do not sleep) and an inactive one costs nothing.
 *
 * A drain runs only the posts that were queued when it began; posts made by those callbacks wait
 * for the next loop turn. That bounds the work of one turn, so a chain of completions that keeps
 * posting cannot starve timers and I/O.
 *
 * Closing is deferred until the queue is empty, because a queued post may belong to a task whose
 * completion is still owed to someone (rule 7.3).
 */
#include "runtime.h"

#include <stdlib.h>
#include <string.h>

/* closing: 0 open, 1 close requested (waits for the queue to drain), 2 handle closing. */
enum { RT_OPEN = 0, RT_CLOSE_REQUESTED = 1, RT_CLOSED = 2 };

static rt_malloc_fn hook_malloc = malloc;
static rt_free_fn hook_free = free;

void rt_replace_allocator(rt_malloc_fn m, rt_free_fn f)
{
    hook_malloc = m != NULL ? m : malloc;
    hook_free = f != NULL ? f : free;
}

void *rt_malloc(size_t size)
{
    return hook_malloc(size);
}

void *rt_calloc(size_t n, size_t size)
{
    void *p;

    if (size != 0 && n > SIZE_MAX / size)
        return NULL;
    p = hook_malloc(n * size);
    if (p != NULL)
        memset(p, 0, n * size);
    return p;
}

void rt_free(void *ptr)
{
    if (ptr != NULL)
        hook_free(ptr);
}

static void on_idle_closed(uv_handle_t *h)
{
    rt_runtime *rt = rt_container_of(h, rt_runtime, idle);

    if (rt->close_cb != NULL)
        rt->close_cb(rt);
}

static void close_handle(rt_runtime *rt)
{
    assert(rt->closing == RT_CLOSE_REQUESTED);
    rt->closing = RT_CLOSED;
    uv_close((uv_handle_t *)&rt->idle, on_idle_closed);
}

static void on_idle(uv_idle_t *h)
{
    rt_runtime *rt = rt_container_of(h, rt_runtime, idle);
    rt_list batch;

    rt_list_move(&rt->posts, &batch);
    while (!rt_list_is_empty(&batch)) {
        rt_post *p = rt_container_of(batch.next, rt_post, link);

        /* Detached before the call: fn may free p, re-post it, or cancel later batch nodes. */
        rt_list_remove(&p->link);
        p->queued = false;
        p->fn(p);
    }
    if (rt_list_is_empty(&rt->posts)) {
        uv_idle_stop(&rt->idle);
        if (rt->closing == RT_CLOSE_REQUESTED)
            close_handle(rt);
    }
}

int rt_runtime_init(rt_runtime *rt, uv_loop_t *loop)
{
    int err;

    err = uv_idle_init(loop, &rt->idle);
    if (err < 0)
        return err;
    rt->loop = loop;
    rt->live_tasks = 0;
    rt->tasks_started = 0;
    rt->tasks_completed = 0;
    rt_list_init(&rt->posts);
    rt->closing = RT_OPEN;
    rt->close_cb = NULL;
    return 0;
}

void rt_runtime_close(rt_runtime *rt, void (*cb)(rt_runtime *rt))
{
    assert(rt->closing == RT_OPEN);
    rt->closing = RT_CLOSE_REQUESTED;
    rt->close_cb = cb;
    /* An active idle handle means a drain is under way or due: it closes the handle when done,
     * so that posts made by the rest of the batch still find it open. */
    if (rt_list_is_empty(&rt->posts) && !uv_is_active((uv_handle_t *)&rt->idle))
        close_handle(rt);
}

void rt_post_init(rt_post *p)
{
    p->fn = NULL;
    rt_list_init(&p->link);
    p->queued = false;
}

void rt_post_submit(rt_runtime *rt, rt_post *p, rt_post_cb fn)
{
    assert(rt->closing != RT_CLOSED);
    if (p->queued)
        return;
    p->fn = fn;
    p->queued = true;
    if (rt_list_is_empty(&rt->posts))
        uv_idle_start(&rt->idle, on_idle);
    rt_list_push_back(&rt->posts, &p->link);
}

void rt_post_cancel(rt_post *p)
{
    if (!p->queued)
        return;
    rt_list_remove(&p->link);
    p->queued = false;
}
