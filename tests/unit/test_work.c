/* SPDX-License-Identifier: MIT */
/*
 * test_work.c - blocking offload (rt_work) and timers as tasks (rt_sleep).
 *
 * The pool is pinned to two threads so a test can occupy all of it and prove that a queued
 * request is really removed by cancellation (its function never runs).
 */
#include "rt_test.h"

#include <pthread.h>

#include "runtime/work.h"

#define POOL_THREADS 2

typedef struct job {
    rt_work w;
    uv_sem_t *started; /* posted when fn begins, if set */
    uv_sem_t *gate;    /* fn waits on it, if set */
    int ret;
    int ran;
    pthread_t fn_thread;
    pthread_t cb_thread;
    int delivered;
    int status;
} job;

static int job_fn(rt_work *w)
{
    job *j = rt_container_of(w, job, w);

    j->fn_thread = pthread_self();
    j->ran = 1;
    if (j->started != NULL)
        uv_sem_post(j->started);
    if (j->gate != NULL)
        uv_sem_wait(j->gate);
    return j->ret;
}

static void job_cb(rt_task *t, int status)
{
    job *j = rt_container_of(t, job, w.task);

    j->cb_thread = pthread_self();
    j->delivered++;
    j->status = status;
}

static void job_init(job *j, rt_fixture *fx, int ret)
{
    memset(j, 0, sizeof(*j));
    rt_work_init(&j->w, &fx->rt, job_fn, NULL);
    j->ret = ret;
}

/* fn runs on a pool thread; the completion is delivered on the loop thread with fn's result. */
static void test_offload_completes_on_loop(void **state)
{
    rt_fixture *fx = *state;
    job j;

    job_init(&j, fx, UV_EIO);
    rt_task_start(&j.w.task, NULL, job_cb);
    assert_int_equal(j.delivered, 0);
    run_all(fx);
    assert_int_equal(j.delivered, 1);
    assert_int_equal(j.status, UV_EIO);
    assert_int_equal(j.w.result, UV_EIO);
    assert_true(pthread_equal(j.cb_thread, pthread_self()));
    assert_false(pthread_equal(j.fn_thread, pthread_self()));
    rt_task_release(&j.w.task);
}

/* A request still queued is removed by uv_cancel: fn never runs, status is the reason. */
static void test_cancel_queued_work(void **state)
{
    rt_fixture *fx = *state;
    job blockers[POOL_THREADS];
    uv_sem_t started;
    uv_sem_t gate;
    job victim;

    assert_int_equal(uv_sem_init(&started, 0), 0);
    assert_int_equal(uv_sem_init(&gate, 0), 0);
    for (int i = 0; i < POOL_THREADS; i++) {
        job_init(&blockers[i], fx, 0);
        blockers[i].started = &started;
        blockers[i].gate = &gate;
        rt_task_start(&blockers[i].w.task, NULL, job_cb);
    }
    for (int i = 0; i < POOL_THREADS; i++)
        uv_sem_wait(&started);
    job_init(&victim, fx, 0);
    rt_task_start(&victim.w.task, NULL, job_cb);
    rt_task_cancel(&victim.w.task, UV_ETIMEDOUT);
    for (int i = 0; i < POOL_THREADS; i++)
        uv_sem_post(&gate);
    run_all(fx);
    assert_int_equal(victim.ran, 0);
    assert_int_equal(victim.delivered, 1);
    assert_int_equal(victim.status, UV_ETIMEDOUT);
    for (int i = 0; i < POOL_THREADS; i++) {
        assert_int_equal(blockers[i].status, 0);
        rt_task_release(&blockers[i].w.task);
    }
    rt_task_release(&victim.w.task);
    uv_sem_destroy(&started);
    uv_sem_destroy(&gate);
}

/* Work already running cannot be stopped: it ends, reports the reason, and keeps its result. */
static void test_cancel_running_work(void **state)
{
    rt_fixture *fx = *state;
    uv_sem_t started;
    uv_sem_t gate;
    job j;

    assert_int_equal(uv_sem_init(&started, 0), 0);
    assert_int_equal(uv_sem_init(&gate, 0), 0);
    job_init(&j, fx, UV_EIO);
    j.started = &started;
    j.gate = &gate;
    rt_task_start(&j.w.task, NULL, job_cb);
    uv_sem_wait(&started);
    rt_task_cancel(&j.w.task, UV_ECANCELED);
    uv_sem_post(&gate);
    run_all(fx);
    assert_int_equal(j.ran, 1);
    assert_int_equal(j.status, UV_ECANCELED);
    assert_int_equal(j.w.result, UV_EIO);
    rt_task_release(&j.w.task);
    uv_sem_destroy(&started);
    uv_sem_destroy(&gate);
}

typedef struct nap {
    rt_sleep s;
    int released;
    int delivered;
    int status;
    uint64_t done_at;
    bool release_in_cb;
} nap;

static void nap_released(rt_sleep *s)
{
    nap *n = rt_container_of(s, nap, s);

    assert_false(s->timer_open); /* storage handed back only once the handle is closed */
    n->released++;
}

static void nap_cb(rt_task *t, int status)
{
    nap *n = rt_container_of(t, nap, s.task);

    n->delivered++;
    n->status = status;
    n->done_at = uv_now(t->rt->loop);
    if (n->release_in_cb)
        rt_task_release(t);
}

/* A sleep completes after its delay (with a wide margin), then its handle is closed. */
static void test_sleep_delay(void **state)
{
    rt_fixture *fx = *state;
    nap n = {0};
    uint64_t t0;

    rt_sleep_init(&n.s, &fx->rt, 20, nap_released);
    n.release_in_cb = true;
    uv_update_time(&fx->loop);
    t0 = uv_now(&fx->loop);
    rt_task_start(&n.s.task, NULL, nap_cb);
    run_all(fx);
    assert_int_equal(n.status, 0);
    assert_true(n.done_at >= t0 + 20);
    assert_true(n.done_at < t0 + 3000);
    assert_int_equal(n.released, 1);
}

/* Cancelling a sleep stops its timer at once; a never-started sleep releases synchronously. */
static void test_sleep_cancel_and_unstarted_release(void **state)
{
    rt_fixture *fx = *state;
    rt_cancel sig;
    nap n = {0};
    nap idle = {0};
    uint64_t t0;

    rt_cancel_init(&sig, NULL);
    rt_sleep_init(&n.s, &fx->rt, 60000, nap_released);
    uv_update_time(&fx->loop);
    t0 = uv_now(&fx->loop);
    rt_task_start(&n.s.task, &sig, nap_cb);
    rt_cancel_fire(&sig, UV_ETIMEDOUT);
    run_all(fx);
    assert_int_equal(n.status, UV_ETIMEDOUT);
    assert_true(n.done_at < t0 + 3000);
    rt_task_release(&n.s.task);
    assert_int_equal(n.released, 1);
    rt_sleep_init(&idle.s, &fx->rt, 5, nap_released);
    rt_task_release(&idle.s.task);
    assert_int_equal(idle.released, 1);
    rt_cancel_close(&sig);
}

static void heap_nap_cb(rt_task *t, int status)
{
    int *count = t->data;

    assert_int_equal(status, 0);
    (*count)++;
    rt_task_release(t);
}

/* rt_sleep_new: freed by its release once the handle closed (ASan checks the ordering). */
static void test_sleep_new(void **state)
{
    rt_fixture *fx = *state;
    int count = 0;

    for (int i = 0; i < 50; i++) {
        rt_sleep *s = rt_sleep_new(&fx->rt, (uint64_t)(i % 3));

        assert_non_null(s);
        s->task.data = &count;
        rt_task_start(&s->task, NULL, heap_nap_cb);
    }
    run_all(fx);
    assert_int_equal(count, 50);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        RT_FIXTURE_TEST(test_offload_completes_on_loop),
        RT_FIXTURE_TEST(test_cancel_queued_work),
        RT_FIXTURE_TEST(test_cancel_running_work),
        RT_FIXTURE_TEST(test_sleep_delay),
        RT_FIXTURE_TEST(test_sleep_cancel_and_unstarted_release),
        RT_FIXTURE_TEST(test_sleep_new),
    };

    /* Before the first uv_queue_work: the pool size is read once per process. */
    setenv("UV_THREADPOOL_SIZE", "2", 1);
    return cmocka_run_group_tests(tests, NULL, NULL);
}
