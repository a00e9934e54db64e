/* SPDX-License-Identifier: MIT */
/*
 * test_sem.c - bounded concurrency: permits, the FIFO queue, overflow, cancelled waiters.
 */
#include "rt_test.h"

#include "runtime/sem.h"

typedef struct acq {
    rt_sem_waiter w;
    int delivered;
    int status;
    int order;
    int *clock;
} acq;

static void acq_cb(rt_task *t, int status)
{
    acq *a = rt_container_of(t, acq, w.task);

    a->delivered++;
    a->status = status;
    if (a->clock != NULL)
        a->order = ++*a->clock;
}

/* Free permits are granted on the next turn; waiters get released permits in FIFO order. */
static void test_fifo_handover(void **state)
{
    rt_fixture *fx = *state;
    rt_sem sem;
    acq a[4];
    int clock = 0;

    rt_sem_init(&sem, &fx->rt, 2, 8);
    memset(a, 0, sizeof(a));
    for (int i = 0; i < 4; i++) {
        a[i].clock = &clock;
        assert_int_equal(rt_sem_acquire(&sem, &a[i].w, NULL, acq_cb), 0);
    }
    assert_int_equal(a[0].delivered, 0); /* never inside acquire */
    run_all(fx);
    assert_int_equal(a[0].status, 0);
    assert_int_equal(a[1].status, 0);
    assert_int_equal(a[2].delivered, 0);
    assert_int_equal(sem.in_use, 2);
    assert_int_equal(sem.waiting, 2);
    rt_sem_release(&a[1].w);
    assert_int_equal(a[2].delivered, 0); /* woken on the next turn */
    assert_int_equal(sem.in_use, 2);
    run_all(fx);
    assert_int_equal(a[2].status, 0);
    assert_int_equal(a[3].delivered, 0);
    rt_sem_release(&a[0].w);
    run_all(fx);
    assert_int_equal(a[3].status, 0);
    assert_true(a[2].order < a[3].order);
    rt_sem_release(&a[2].w);
    rt_sem_release(&a[3].w);
    assert_int_equal(sem.in_use, 0);
    for (int i = 0; i < 4; i++)
        rt_task_release(&a[i].w.task);
    rt_sem_close(&sem);
}

/* A full queue refuses at once with UV_EBUSY and counts the refusal; nothing grows. */
static void test_queue_overflow(void **state)
{
    rt_fixture *fx = *state;
    rt_sem sem;
    acq a[5];

    rt_sem_init(&sem, &fx->rt, 1, 2);
    memset(a, 0, sizeof(a));
    for (int i = 0; i < 3; i++)
        assert_int_equal(rt_sem_acquire(&sem, &a[i].w, NULL, acq_cb), 0);
    run_all(fx);
    assert_int_equal(rt_sem_acquire(&sem, &a[3].w, NULL, acq_cb), UV_EBUSY);
    assert_int_equal(sem.rejected, 1);
    assert_int_equal(sem.waiting, 2);
    /* Started as a plain task, the refusal arrives through the completion instead. */
    rt_sem_waiter_init(&a[4].w, &sem);
    rt_task_start(&a[4].w.task, NULL, acq_cb);
    assert_int_equal(a[4].delivered, 0);
    run_all(fx);
    assert_int_equal(a[4].status, UV_EBUSY);
    assert_int_equal(sem.rejected, 2);
    assert_int_equal(a[3].delivered, 0);
    rt_task_release(&a[4].w.task);
    for (int i = 0; i < 3; i++) {
        rt_sem_release(&a[i].w);
        run_all(fx);
    }
    for (int i = 0; i < 3; i++) {
        assert_int_equal(a[i].status, 0);
        rt_task_release(&a[i].w.task);
    }
    rt_sem_close(&sem);
}

/* A waiter cancelled while queued leaves the queue, and the next release skips it. */
static void test_cancelled_waiter_leaves_queue(void **state)
{
    rt_fixture *fx = *state;
    rt_cancel sig;
    rt_sem sem;
    acq a[3];

    rt_cancel_init(&sig, NULL);
    rt_sem_init(&sem, &fx->rt, 1, 1);
    memset(a, 0, sizeof(a));
    assert_int_equal(rt_sem_acquire(&sem, &a[0].w, NULL, acq_cb), 0);
    assert_int_equal(rt_sem_acquire(&sem, &a[1].w, &sig, acq_cb), 0);
    assert_int_equal(sem.waiting, 1);
    rt_cancel_fire(&sig, UV_ETIMEDOUT);
    assert_int_equal(sem.waiting, 0);
    /* The slot it held is free again. */
    assert_int_equal(rt_sem_acquire(&sem, &a[2].w, NULL, acq_cb), 0);
    run_all(fx);
    assert_int_equal(a[1].status, UV_ETIMEDOUT);
    rt_sem_release(&a[0].w);
    run_all(fx);
    assert_int_equal(a[2].status, 0);
    assert_int_equal(sem.in_use, 1);
    rt_sem_release(&a[2].w);
    for (int i = 0; i < 3; i++)
        rt_task_release(&a[i].w.task);
    rt_sem_close(&sem);
    rt_cancel_close(&sig);
}

/* Releasing a waiter task that still holds its permit gives the permit back. */
static void test_release_gives_back_permit(void **state)
{
    rt_fixture *fx = *state;
    rt_sem sem;
    acq a[2];

    rt_sem_init(&sem, &fx->rt, 1, 1);
    memset(a, 0, sizeof(a));
    rt_sem_acquire(&sem, &a[0].w, NULL, acq_cb);
    rt_sem_acquire(&sem, &a[1].w, NULL, acq_cb);
    run_all(fx);
    rt_task_release(&a[0].w.task);
    run_all(fx);
    assert_int_equal(a[1].status, 0);
    rt_task_release(&a[1].w.task);
    assert_int_equal(sem.in_use, 0);
    rt_sem_close(&sem);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        RT_FIXTURE_TEST(test_fifo_handover),
        RT_FIXTURE_TEST(test_queue_overflow),
        RT_FIXTURE_TEST(test_cancelled_waiter_leaves_queue),
        RT_FIXTURE_TEST(test_release_gives_back_permit),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
