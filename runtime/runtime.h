/* SPDX-License-Identifier: MIT */
/*
 * runtime.h - the per-loop runtime context and the small tools every module shares.
 *
 * An rt_runtime lives beside a uv_loop_t and owns one thing: the queue of deferred calls
 * ("posts"). Every completion the runtime delivers goes through that queue, so no callback
 * ever runs inside the call that started or cancelled the operation (CONTRIBUTING.md, "Callbacks"),
 * and every callback runs on a clean stack from the loop. The queue is drained by one
 * uv_idle_t handle that is active only while the queue is non-empty, which keeps the loop
 * from blocking in poll while work is pending and costs nothing when it is empty.
 *
 * It deliberately holds no global state: two loops in two threads each get their own
 * rt_runtime, and nothing in runtime/ uses locks.
 */
#ifndef RT_RUNTIME_H
#define RT_RUNTIME_H

#include <assert.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <uv.h>

#define rt_container_of(ptr, type, member) ((type *)((char *)(ptr)-offsetof(type, member)))

/* "Cannot happen" branches that release builds still handle (CONTRIBUTING.md, "Errors"). */
#ifdef NDEBUG
#define RT_NEVER(x)  (x)
#define RT_ALWAYS(x) (x)
#else
#define RT_NEVER(x)  (assert(!(x)), (x))
#define RT_ALWAYS(x) (assert(x), (x))
#endif

/* Absolute deadlines are milliseconds on the loop clock (uv_now); this one never comes. */
#define RT_NO_DEADLINE UINT64_MAX

/* Intrusive doubly linked list; an empty head points at itself. */
typedef struct rt_list {
    struct rt_list *next;
    struct rt_list *prev;
} rt_list;

static inline void rt_list_init(rt_list *h)
{
    h->next = h;
    h->prev = h;
}

static inline bool rt_list_is_empty(const rt_list *h)
{
    return h->next == h;
}

static inline void rt_list_push_back(rt_list *h, rt_list *n)
{
    n->prev = h->prev;
    n->next = h;
    h->prev->next = n;
    h->prev = n;
}

static inline void rt_list_push_front(rt_list *h, rt_list *n)
{
    n->next = h->next;
    n->prev = h;
    h->next->prev = n;
    h->next = n;
}

/* Unlinks n and leaves it self-linked, so a second remove is harmless. */
static inline void rt_list_remove(rt_list *n)
{
    n->prev->next = n->next;
    n->next->prev = n->prev;
    n->next = n;
    n->prev = n;
}

/* Moves every node of src to the empty dst, leaving src empty (CONTRIBUTING.md, "Callbacks"). */
static inline void rt_list_move(rt_list *src, rt_list *dst)
{
    if (rt_list_is_empty(src)) {
        rt_list_init(dst);
        return;
    }
    dst->next = src->next;
    dst->prev = src->prev;
    dst->next->prev = dst;
    dst->prev->next = dst;
    rt_list_init(src);
}

typedef struct rt_runtime rt_runtime;
typedef struct rt_post rt_post;
typedef void (*rt_post_cb)(rt_post *p);

/* A deferred call, embedded in whatever wants to be called back on a later loop turn. */
struct rt_post {
    rt_post_cb fn;
    /* private */
    rt_list link;
    bool queued;
};

/* Allocation hook: every allocation in runtime/ goes through it, so tests can fail the Nth. */
typedef void *(*rt_malloc_fn)(size_t size);
typedef void (*rt_free_fn)(void *ptr);

struct rt_runtime {
    void *data;          /* for the user only */
    uv_loop_t *loop;     /* read-only */
    uint64_t live_tasks; /* read-only: tasks started and not yet delivered, all scopes together */
    uint64_t tasks_started;   /* read-only: lifetime counter */
    uint64_t tasks_completed; /* read-only: lifetime counter */
    /* private */
    uv_idle_t idle;
    rt_list posts;
    int closing;
    void (*close_cb)(rt_runtime *rt);
};

/**
 * Initializes rt on loop. Never allocates. Returns 0, or a negative UV_E* code from
 * uv_idle_init. Loop thread only.
 */
int rt_runtime_init(rt_runtime *rt, uv_loop_t *loop);

/**
 * Closes rt's handle. The posts still queued are delivered first (by the following loop turns);
 * posting after close is a programmer error. cb (may be NULL) runs once the handle is closed,
 * after which rt's storage may be freed. Loop thread only.
 */
void rt_runtime_close(rt_runtime *rt, void (*cb)(rt_runtime *rt));

/**
 * Queues p to run p->fn(p) on a later loop turn, in FIFO order with other posts. Posting a node
 * that is already queued is a no-op. Never calls fn before returning. Loop thread only.
 */
void rt_post_submit(rt_runtime *rt, rt_post *p, rt_post_cb fn);

/** Removes a queued post so it never runs; harmless if it is not queued. */
void rt_post_cancel(rt_post *p);

/** Initializes an embedded post node so rt_post_cancel() is safe before the first submit. */
void rt_post_init(rt_post *p);

/**
 * Replaces the allocator used by runtime/ (NULL restores malloc/free), as uv_replace_allocator
 * does for libuv. Process-wide; call it before any runtime object exists. Used by the
 * allocation-failure tests.
 */
void rt_replace_allocator(rt_malloc_fn m, rt_free_fn f);

/** Allocates through the hook; returns NULL on failure. */
void *rt_malloc(size_t size);
void *rt_calloc(size_t n, size_t size);
void rt_free(void *ptr);

#endif /* RT_RUNTIME_H */
