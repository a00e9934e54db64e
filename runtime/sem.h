/* SPDX-License-Identifier: MIT */
/*
 * sem.h - bounded concurrency with a bounded FIFO wait queue.
 *
 * A permit counter with a limit, and a queue of waiters with a maximum length. Acquiring either
 * succeeds (delivered on the next loop turn), queues, or fails at once with UV_EBUSY when the
 * queue is full: overflow is an error the HTTP layer turns into 503, never memory growth. A
 * waiter that listens to a signal leaves the queue when the signal fires and is completed with
 * the signal's reason. Releasing a permit hands it to the oldest waiter on the next loop turn.
 *
 * Acquisition is a task (rt_sem_waiter.task), so it can be raced, joined and cancelled like any
 * other wait. The waiter is embedded by the caller; nothing allocates.
 */
#ifndef RT_SEM_H
#define RT_SEM_H

#include "task.h"

typedef struct rt_sem {
    void *data;
    size_t limit;       /* read-only */
    size_t max_waiters; /* read-only */
    size_t in_use;      /* read-only: permits held */
    size_t waiting;     /* read-only: waiters queued */
    uint64_t rejected;  /* read-only: acquisitions refused with UV_EBUSY */
    /* private */
    rt_runtime *rt;
    rt_list waiters;
} rt_sem;

typedef struct rt_sem_waiter {
    rt_task task; /* completes with 0 when the permit is held, else an error */
    /* private */
    rt_sem *sem;
    rt_list link;
    bool holds;
} rt_sem_waiter;

/** Initializes sem with limit permits (>= 1) and a queue of at most max_waiters. Never fails. */
void rt_sem_init(rt_sem *sem, rt_runtime *rt, size_t limit, size_t max_waiters);

/** Initializes a waiter for sem. Start w->task (with a signal, to make it cancellable). */
void rt_sem_waiter_init(rt_sem_waiter *w, rt_sem *sem);

/**
 * Convenience: initializes and starts w. Returns UV_EBUSY at once (and starts nothing, calls
 * nothing) when no permit is free and the queue is full; otherwise 0 and cb runs later.
 */
int rt_sem_acquire(rt_sem *sem, rt_sem_waiter *w, rt_cancel *signal, rt_task_cb cb);

/**
 * Gives back the permit held by w (whose task completed with 0). Releasing w's task while it
 * still holds the permit gives it back too, so a grant that lost a race is not leaked.
 */
void rt_sem_release(rt_sem_waiter *w);

/** Closes sem: it must have no permit held and no waiter (asserted). */
void rt_sem_close(rt_sem *sem);

#endif /* RT_SEM_H */
