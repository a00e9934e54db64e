/* SPDX-License-Identifier: MIT */
/*
 * scope.h - structured concurrency: every background task belongs to a scope.
 *
 * A scope owns the tasks spawned into it and the scopes opened under it; together they form a
 * tree whose root `main` owns (the service scope and each request scope hang below it). Rules:
 *
 *  S1. A scope completes (its close callback runs) only after every child task has been
 *      delivered and every child scope has completed.
 *  S2. Cancelling a scope fires its signal, which reaches every descendant task and scope.
 *  S3. A closing scope refuses new children (spawn returns UV_ESHUTDOWN and releases the task).
 *  S4. Guards deferred on a scope run exactly once, newest first, when it completes.
 *  S5. `live` counts the scope's own running children, `live_total` the whole subtree, so
 *      /metrics can show tasks per scope at any moment.
 *
 * A scope is not a task (it has no start); it is closed, like a libuv handle, and its close
 * callback is the "all children joined" event. Closing does not cancel: call rt_scope_cancel
 * first for "cancel what is left", or close alone for "drain".
 */
#ifndef RT_SCOPE_H
#define RT_SCOPE_H

#include "task.h"

typedef struct rt_scope rt_scope;
typedef void (*rt_scope_close_cb)(rt_scope *s);

struct rt_scope {
    void *data;
    const char *name;   /* read-only, borrowed: shown in logs and metrics */
    rt_scope *parent;   /* read-only */
    rt_cancel signal;   /* read-only: fired by rt_scope_cancel or by an ancestor */
    size_t live;        /* read-only: own child tasks running */
    size_t live_total;  /* read-only: tasks running in the whole subtree */
    uint64_t spawned;   /* read-only */
    uint64_t cancelled; /* read-only: children that completed with UV_ECANCELED/UV_ETIMEDOUT */
    /* private */
    rt_runtime *rt;
    rt_list tasks;
    rt_list scopes;
    rt_list link; /* in parent->scopes */
    rt_guard *guards;
    rt_scope_close_cb close_cb;
    rt_post post;
    bool closing;
};

/**
 * Opens s under parent (NULL for the root). Fails with UV_ESHUTDOWN when rt_scope_close was
 * called on parent itself (S3). Never allocates. name is borrowed for s's lifetime.
 */
int rt_scope_init(rt_scope *s, rt_runtime *rt, rt_scope *parent, const char *name);

/**
 * Spawns t (steals it, even on failure) into s with s's signal. cb (may be NULL) gets the
 * completion; then the scope releases t (so cb must not). Returns 0, or UV_ESHUTDOWN when
 * rt_scope_close was called on s itself (t is released at once, never started, cb not called).
 * A scope whose ancestor is closing still accepts children: work under way drains normally.
 */
int rt_scope_spawn(rt_scope *s, rt_task *t, rt_task_cb cb);

/** Fires s's signal with reason (0 means UV_ECANCELED): every descendant is cancelled. */
void rt_scope_cancel(rt_scope *s, int reason);

/**
 * Refuses new children from now on (S3); cb runs, on a later loop turn, once S1 holds. Guards
 * run just before cb. Calling close twice is a programmer error. After cb, s may be freed.
 */
void rt_scope_close(rt_scope *s, rt_scope_close_cb cb);

/** Pushes g on s's guard stack (see rt_task_defer). */
void rt_scope_defer(rt_scope *s, rt_guard *g);

/**
 * size zeroed bytes that s owns: when s completes they are handed to fin (may be NULL) and freed,
 * as a guard (S4), so after every child is gone. For state shared by what runs under s. Returns
 * new memory, borrowed until then, or NULL without memory (nothing is deferred then).
 */
void *rt_scope_alloc(rt_scope *s, size_t size, void (*fin)(void *mem));

/** True once rt_scope_close has been called on s or on one of its ancestors. */
bool rt_scope_is_closing(const rt_scope *s);

/** Calls fn for s and every scope below it, depth first (for /metrics). */
void rt_scope_walk(rt_scope *s, void (*fn)(rt_scope *s, int depth, void *arg), void *arg);

#endif /* RT_SCOPE_H */
