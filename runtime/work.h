/* SPDX-License-Identifier: MIT */
/*
 * work.h - blocking offload (spawn_blocking) and timers as tasks.
 *
 * rt_work runs a blocking function on libuv's thread pool and completes its task on the loop.
 * Cancelling it before a pool thread picks it up removes it (uv_cancel) and completes with the
 * reason; once it runs, it runs to the end (blocking code cannot be interrupted) and the
 * completion reports the reason if cancellation was requested, with the function's own result
 * still in `result`.
 *
 * rt_sleep completes after a delay; cancelling it stops the timer. It is how tests and the
 * randomized trees play slow work without sockets. Both close a libuv handle on release, so
 * their release is asynchronous internally; the caller just calls rt_task_release.
 */
#ifndef RT_WORK_H
#define RT_WORK_H

#include "task.h"

typedef struct rt_work rt_work;
/* Runs on a pool thread: touch nothing of the loop's. Returns 0 or a negative error. */
typedef int (*rt_work_fn)(rt_work *w);

struct rt_work {
    rt_task task;
    void *arg;  /* for fn */
    int result; /* read-only: fn's return value, once it ran */
    /* private */
    rt_work_fn fn;
    uv_work_t req;
    bool queued;
};

/** Initializes w to run fn(w) on the thread pool. Never fails. w's storage is the caller's. */
void rt_work_init(rt_work *w, rt_runtime *rt, rt_work_fn fn, void *arg);

/**
 * Allocates (through rt_malloc) and initializes a work task whose release frees it: new, owned
 * by the caller until handed to something that steals it. arg is borrowed by fn. Returns NULL
 * when the allocation fails. Loop thread only.
 */
rt_work *rt_work_new(rt_runtime *rt, rt_work_fn fn, void *arg);

typedef struct rt_sleep {
    rt_task task;
    uint64_t ms; /* read-only */
    /* private */
    uv_timer_t timer;
    bool timer_open;
    void (*release_cb)(struct rt_sleep *s);
} rt_sleep;

/**
 * Initializes s to complete with 0 after ms. The timer handle is opened at start and closed
 * when the task completes; release_cb (may be NULL) runs when s's storage may be freed, which is
 * after the handle has closed (rt_task_release on s->task triggers it).
 */
void rt_sleep_init(rt_sleep *s, rt_runtime *rt, uint64_t ms, void (*release_cb)(rt_sleep *s));

/**
 * Allocates (through rt_malloc) and initializes a sleep whose release frees it: new, the caller
 * owns it until it hands it to something that steals it (a scope, a set, a stream) or releases it
 * with rt_task_release(&s->task). Returns NULL when the allocation fails. Loop thread only.
 */
rt_sleep *rt_sleep_new(rt_runtime *rt, uint64_t ms);

#endif /* RT_WORK_H */
