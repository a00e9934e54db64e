/* SPDX-License-Identifier: MIT */
/*
 * task.h - the type-erased unit of async work, and the guards that clean up after it.
 *
 * An rt_task is what C has instead of a boxed future: a vtable (start, cancel, release) plus the
 * payload the task is embedded in. Everything that waits for something is a task: a database
 * query, a timer, a join of other tasks, a whole HTTP handler. Combinators (join, set, stream,
 * scope) hold tasks without knowing their types, which is the whole point.
 *
 * Life of a task:
 *
 *     INIT --rt_task_start--> RUNNING --rt_task_complete--> DONE --(next turn)--> DELIVERED
 *       |                                                                           |
 *       +--------------------------- rt_task_release -------------------------------+--> released
 *
 * | transition           | function          | what holds after it                            |
 * |----------------------|-------------------|------------------------------------------------|
 * | INIT -> RUNNING      | rt_task_start     | vt->start ran (unless cancelled before start)  |
 * | RUNNING -> DONE      | rt_task_complete  | status fixed; delivery posted; no more cancels |
 * | DONE -> DELIVERED    | (post)            | guards ran newest first, then the callback     |
 * | INIT/DELIVERED -> x  | rt_task_release   | vt->release ran; the runtime never touches t   |
 *
 * Invariants (numbered so the tests can name them):
 *  T1. A started task completes exactly once, with 0 or a negative UV_E* status.
 *  T2. The completion callback never runs inside rt_task_start, rt_task_cancel or
 *      rt_task_complete: it is always delivered from the runtime's post queue.
 *  T3. Guards run exactly once, newest first, before the completion callback; a task released
 *      without ever being started runs its guards at release.
 *  T4. Cancelling a task that is not running is harmless: before start it makes start complete
 *      at once with the reason (vt->start is never called); after completion it does nothing.
 *  T5. After the completion callback returns (and after release), the runtime never touches the
 *      task again; release may be called from inside the callback.
 */
#ifndef RT_TASK_H
#define RT_TASK_H

#include "cancel.h"
#include "runtime.h"

typedef struct rt_task rt_task;
typedef struct rt_guard rt_guard;
typedef void (*rt_task_cb)(rt_task *t, int status);

typedef struct rt_task_vtable {
    /* Shown in logs and metrics. */
    const char *name;
    /*
     * Begins the work. Returns 0, or a negative error: then the runtime completes the task with
     * that error (never re-entering the caller). The task reports its end with rt_task_complete,
     * which it may call from inside start (delivery is posted anyway).
     */
    int (*start)(rt_task *t);
    /*
     * Asks the running task to stop; it must then complete (soon) through rt_task_complete, with
     * `reason` or, if the work had already finished, its real status. May be NULL for work that
     * cannot be interrupted: cancellation then simply waits for the completion. Called at most
     * once per run, never after rt_task_complete.
     */
    void (*cancel)(rt_task *t, int reason);
    /* Frees the payload the task lives in. NULL when the storage is owned elsewhere. */
    void (*release)(rt_task *t);
} rt_task_vtable;

/* A cleanup action. Embed one, fill fn/arg ("arm") when the resource exists, NULL fn disarms. */
struct rt_guard {
    void (*fn)(void *arg);
    void *arg;
    /* private */
    rt_guard *next;
};

enum rt_task_state {
    RT_TASK_INIT = 0,
    RT_TASK_RUNNING,
    RT_TASK_DONE,
    RT_TASK_DELIVERED,
    RT_TASK_RELEASED
};

struct rt_task {
    void *data;               /* for the user only */
    const rt_task_vtable *vt; /* read-only */
    rt_runtime *rt;           /* read-only */
    int status;               /* read-only: valid from DONE on */
    uint8_t state;            /* read-only: enum rt_task_state */
    /* private */
    uint8_t flags;
    uint16_t refs;
    int cancel_reason;
    rt_task_cb cb;
    rt_guard *guards;
    rt_cancel_listener on_cancel;
    rt_post post;
    rt_list link; /* owned by whichever combinator holds the task (set, stream, scope) */
    void *owner;  /* the combinator the task reports to (join, set, stream, scope, race) */
};

/** Initializes t with its vtable. Never allocates, never fails. Loop thread only. */
void rt_task_init(rt_task *t, rt_runtime *rt, const rt_task_vtable *vt);

/**
 * Starts t: cb(t, status) will run exactly once on a later loop turn. If signal is non-NULL the
 * task listens to it and is cancelled (with the signal's reason) when it fires; if it has already
 * fired, vt->start is not called and t completes with the reason. t must be in INIT (asserted).
 */
void rt_task_start(rt_task *t, rt_cancel *signal, rt_task_cb cb);

/**
 * Asks t to stop with reason (negative; 0 means UV_ECANCELED). See invariant T4 for tasks that
 * are not running. Never calls t's completion callback before returning.
 */
void rt_task_cancel(rt_task *t, int reason);

/**
 * Reports t's end. For task implementations only; exactly once per start (asserted).
 * Delivery (guards, then the callback) happens on a later loop turn.
 */
void rt_task_complete(rt_task *t, int status);

/**
 * Gives t back: runs vt->release (if any). Allowed in INIT (runs t's guards first) and once the
 * completion has been delivered; called from inside t's own completion callback, the release is
 * deferred until the callback returns. Releasing a running task is a programmer error.
 */
void rt_task_release(rt_task *t);

/** True when cancellation was requested while t was running (before it completed). */
static inline bool rt_task_is_cancel_requested(const rt_task *t)
{
    return t->cancel_reason != 0;
}

/** The reason passed to rt_task_cancel, or 0. */
static inline int rt_task_cancel_reason(const rt_task *t)
{
    return t->cancel_reason;
}

/**
 * Pushes g onto t's guard stack (borrowed until it runs). g->fn may be filled now or later
 * (armed) and set to NULL to disarm; each guard with a fn at delivery (or at release of a task
 * never started) runs exactly once, newest first. Allowed until t is DONE.
 */
void rt_task_defer(rt_task *t, rt_guard *g);

/** Runs and clears a guard stack newest first (used by tasks and scopes). */
void rt__guards_run(rt_guard **stack);

#endif /* RT_TASK_H */
