/* SPDX-License-Identifier: MIT */
/*
 * cancel.h - hierarchical cancellation signals and deadlines.
 *
 * An rt_cancel is a one-shot signal with a reason (UV_ECANCELED, UV_ETIMEDOUT, or any negative
 * code). Signals form a tree: a child listens to its parent, so firing the service's shutdown
 * signal fires every request signal below it, and every task started with one of them. A
 * listener is an embedded node with a callback; firing calls the listeners synchronously, newest
 * first, after moving them to a local list (CONTRIBUTING.md, "Callbacks"), so a listener may
 * unlisten itself or others, and may fire other signals. Listeners must not free the signal they
 * are called from; they post to a later turn to do that.
 *
 * Deadlines are signals fired by a timer at an absolute time on the loop clock. Because the timer
 * is a libuv handle, a deadline is closed asynchronously.
 *
 * What it deliberately does not do: deliver cancellation to tasks. Tasks listen to a signal
 * (rt_task_start's second argument) and turn the signal into their own completion, through
 * their normal completion path.
 */
#ifndef RT_CANCEL_H
#define RT_CANCEL_H

#include "runtime.h"

typedef struct rt_cancel rt_cancel;
typedef struct rt_cancel_listener rt_cancel_listener;
typedef void (*rt_cancel_cb)(rt_cancel_listener *l, int reason);

struct rt_cancel_listener {
    void *data;
    /* private */
    rt_cancel_cb cb;
    rt_list link;
    rt_cancel *signal;
};

struct rt_cancel {
    void *data;
    int reason; /* read-only: 0 until fired, then the (negative) reason */
    /* private */
    rt_cancel *parent;
    rt_cancel_listener in_parent; /* how the parent reaches us */
    rt_list listeners;
};

/**
 * Initializes c as a child of parent (NULL for a root). If parent has already fired, c is fired
 * at once with the same reason. Never allocates, never fails. Loop thread only.
 */
void rt_cancel_init(rt_cancel *c, rt_cancel *parent);

/**
 * Detaches c from its parent. c must have no listeners left (asserted): every task listening to
 * it must have completed first. Synchronous; c's storage may be reused after it returns.
 */
void rt_cancel_close(rt_cancel *c);

/**
 * Fires c with reason (negative; 0 is replaced by UV_ECANCELED). The first fire wins; later
 * ones are no-ops. Calls every listener and fires every child signal before returning.
 */
void rt_cancel_fire(rt_cancel *c, int reason);

/** True once c has fired. */
static inline bool rt_cancel_is_fired(const rt_cancel *c)
{
    return c != NULL && c->reason != 0;
}

/**
 * Registers l on c. If c has already fired, l is NOT called and the function returns c->reason,
 * so the caller handles the "already cancelled" case on its own path; otherwise returns 0 and
 * cb(l, reason) runs once when c fires (unless unlistened first).
 */
int rt_cancel_listen(rt_cancel *c, rt_cancel_listener *l, rt_cancel_cb cb);

/** Removes l from its signal; harmless if l is not registered. */
void rt_cancel_unlisten(rt_cancel_listener *l);

/** Initializes a listener node so rt_cancel_unlisten() is safe before it is ever registered. */
void rt_cancel_listener_init(rt_cancel_listener *l);

/*
 * A deadline: an rt_cancel that fires with UV_ETIMEDOUT when the loop clock reaches `at`.
 */
typedef struct rt_deadline rt_deadline;
typedef void (*rt_deadline_close_cb)(rt_deadline *d);

struct rt_deadline {
    void *data;
    rt_cancel signal; /* listen to this, or pass it as a parent */
    uint64_t at;      /* read-only: absolute loop time in ms, or RT_NO_DEADLINE */
    /* private */
    uv_timer_t timer;
    rt_deadline_close_cb close_cb;
};

/**
 * Initializes d as a child of parent (may be NULL) that fires with UV_ETIMEDOUT at `at` (absolute
 * uv_now() milliseconds; a time already past fires on the next loop turn; RT_NO_DEADLINE never
 * fires). Returns 0 or a negative UV_E* code from libuv. Loop thread only.
 */
int rt_deadline_init(rt_deadline *d, rt_runtime *rt, rt_cancel *parent, uint64_t at);

/**
 * Stops the timer, closes the signal (its listeners must be gone) and the timer handle; cb (may
 * be NULL) runs when d's storage may be freed.
 */
void rt_deadline_close(rt_deadline *d, rt_deadline_close_cb cb);

#endif /* RT_CANCEL_H */
