/* SPDX-License-Identifier: MIT */
/*
 * set.h - a dynamic set of tasks whose completions arrive in completion order
 * (FuturesUnordered / JoinSet).
 *
 * Tasks may be added at any time while the set runs; each is started at once with the set's
 * signal, and its completion is handed to the set's item callback, after which the set releases
 * it (the set owns what it was given). The set is a task: it completes once it has been sealed
 * (no more additions) and every child has been delivered, with 0 (per-child statuses go to the
 * item callback). Cancelling the set cancels every child.
 */
#ifndef RT_SET_H
#define RT_SET_H

#include "task.h"

typedef struct rt_set rt_set;
/* Called once per child, in completion order; child is borrowed until the callback returns. */
typedef void (*rt_set_item_cb)(rt_set *s, rt_task *child, int status);

struct rt_set {
    rt_task task;       /* start, cancel and release this */
    size_t in_flight;   /* read-only */
    uint64_t added;     /* read-only */
    uint64_t completed; /* read-only: children delivered */
    /* private */
    rt_set_item_cb item_cb;
    rt_list children;
    rt_cancel signal;
    bool sealed;
};

/** Initializes s; item_cb may be NULL. Never allocates, never fails. */
void rt_set_init(rt_set *s, rt_runtime *rt, rt_set_item_cb item_cb);

/**
 * Adds child (steals it, even on failure: it is released) and starts it. s must be running.
 * Returns 0, or UV_ECANCELED when s has been sealed or cancelled, in which case child was never
 * started.
 */
int rt_set_add(rt_set *s, rt_task *child);

/** No more additions: s completes once the children it has are all delivered. */
void rt_set_seal(rt_set *s);

#endif /* RT_SET_H */
