/* SPDX-License-Identifier: MIT */
/*
 * join.h - run a fixed set of tasks at once and complete when all have (join! / try_join!).
 *
 * An rt_join is itself a task, so joins nest inside joins, sets, streams and scopes. Its children
 * are started with the join's own signal (a child of the signal the join is started with), so
 * cancelling the join reaches every child. A join is a counter: one per child started, minus one
 * per child completed; it completes when the count reaches zero, with the first error seen (or 0).
 *
 * With RT_JOIN_FAIL_FAST, the first child that fails fires the join's signal, cancelling its
 * siblings; the join still waits for all of them (no child outlives its parent), then reports
 * that first error.
 *
 * The join does not own its children: it never releases them, so the caller reads their results
 * in the join's completion callback and releases them when it likes. A join of zero tasks
 * completes with 0 on the next loop turn. The join never allocates: the array is the caller's.
 */
#ifndef RT_JOIN_H
#define RT_JOIN_H

#include "task.h"

enum { RT_JOIN_ALL = 0, RT_JOIN_FAIL_FAST = 1 };

typedef struct rt_join {
    rt_task task;    /* start, cancel and release this */
    int first_error; /* read-only: the first failing child's status, or 0 */
    /* private */
    rt_task **children;
    size_t n;
    size_t pending;
    unsigned flags;
    rt_cancel signal;
} rt_join;

/**
 * Initializes j over children[0..n) (borrowed until j's completion is delivered; each in INIT).
 * flags: RT_JOIN_ALL or RT_JOIN_FAIL_FAST. Never allocates, never fails.
 * j->task has no release: j's storage is the caller's.
 */
void rt_join_init(rt_join *j, rt_runtime *rt, rt_task **children, size_t n, unsigned flags);

/**
 * Allocates (through rt_malloc) a join that owns its children: it steals children[0..n) (each
 * in INIT), even on failure, when they are released at once; the array itself is copied, so it
 * may live on the caller's stack. Releasing the join's task releases every child, then frees the
 * join. This is the form to hand to something that steals (a scope, a set, a stream) when n is
 * only known at run time. Returns the join (new), or NULL when the allocation fails.
 */
rt_join *rt_join_new(rt_runtime *rt, rt_task **children, size_t n, unsigned flags);

#endif /* RT_JOIN_H */
