/* SPDX-License-Identifier: MIT */
/*
 * sem.c - a counting semaphore whose acquisition is a task, with a bounded FIFO of waiters.
 *
 * A permit is handed over, never returned to the pool and re-taken: when a holder releases and
 * someone waits, in_use stays the same and the oldest waiter becomes the holder at once. That
 * keeps the queue strictly FIFO (a newcomer cannot overtake a waiter between a release and the
 * waiter's delivery) and makes "in_use < limit" imply "nobody waits".
 *
 * A queued waiter is cancelled through its task's normal path: vt->cancel takes it off the queue
 * and completes it with the reason, so a cancelled waiter never holds a queue slot. A waiter that
 * was granted the permit is DONE, which the runtime never cancels; if its caller gave up in the
 * meantime (a race lost to a signal, for instance), releasing the waiter task gives the permit
 * back, so a permit cannot leak through a cancellation that came a moment too late.
 */
#include "sem.h"

static void grant(rt_sem_waiter *w)
{
    w->holds = true;
    rt_task_complete(&w->task, 0);
}

static int waiter_start(rt_task *t)
{
    rt_sem_waiter *w = rt_container_of(t, rt_sem_waiter, task);
    rt_sem *sem = w->sem;

    if (sem->in_use < sem->limit) {
        sem->in_use++;
        grant(w);
        return 0;
    }
    if (sem->waiting >= sem->max_waiters) {
        sem->rejected++;
        return UV_EBUSY;
    }
    sem->waiting++;
    rt_list_push_back(&sem->waiters, &w->link);
    return 0;
}

static void waiter_cancel(rt_task *t, int reason)
{
    rt_sem_waiter *w = rt_container_of(t, rt_sem_waiter, task);

    /* Only a queued waiter is running without holding the permit; a holder is already DONE. */
    assert(!rt_list_is_empty(&w->link));
    rt_list_remove(&w->link);
    w->sem->waiting--;
    rt_task_complete(t, reason);
}

void rt_sem_release(rt_sem_waiter *w)
{
    rt_sem *sem = w->sem;

    assert(w->holds);
    w->holds = false;
    if (rt_list_is_empty(&sem->waiters)) {
        sem->in_use--;
        return;
    }
    w = rt_container_of(sem->waiters.next, rt_sem_waiter, link);
    rt_list_remove(&w->link);
    sem->waiting--;
    grant(w);
}

static void waiter_release(rt_task *t)
{
    rt_sem_waiter *w = rt_container_of(t, rt_sem_waiter, task);

    if (w->holds)
        rt_sem_release(w);
}

static const rt_task_vtable waiter_vt = {
    .name = "sem",
    .start = waiter_start,
    .cancel = waiter_cancel,
    .release = waiter_release,
};

void rt_sem_init(rt_sem *sem, rt_runtime *rt, size_t limit, size_t max_waiters)
{
    assert(limit >= 1);
    sem->limit = limit;
    sem->max_waiters = max_waiters;
    sem->in_use = 0;
    sem->waiting = 0;
    sem->rejected = 0;
    sem->rt = rt;
    rt_list_init(&sem->waiters);
}

void rt_sem_waiter_init(rt_sem_waiter *w, rt_sem *sem)
{
    rt_task_init(&w->task, sem->rt, &waiter_vt);
    w->sem = sem;
    rt_list_init(&w->link);
    w->holds = false;
}

int rt_sem_acquire(rt_sem *sem, rt_sem_waiter *w, rt_cancel *signal, rt_task_cb cb)
{
    if (sem->in_use >= sem->limit && sem->waiting >= sem->max_waiters) {
        sem->rejected++;
        return UV_EBUSY;
    }
    rt_sem_waiter_init(w, sem);
    rt_task_start(&w->task, signal, cb);
    return 0;
}

void rt_sem_close(rt_sem *sem)
{
    assert(sem->in_use == 0);
    assert(sem->waiting == 0);
    (void)sem;
}
