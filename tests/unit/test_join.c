/* SPDX-License-Identifier: MIT */
/*
 * test_join.c - joins: all, fail-fast, empty, cancelled, under a deadline, nested.
 */
#include "rt_test.h"

#include "runtime/join.h"
#include "runtime/work.h"

typedef struct join_case {
    rt_join j;
    int delivered;
    int status;
    size_t children_delivered; /* children already delivered when the join was */
} join_case;

/* The join hands its children its own callback, so the probes' counters stay at zero here. */
static void join_cb(rt_task *t, int status)
{
    join_case *c = rt_container_of(t, join_case, j.task);
    rt_join *j = &c->j;

    c->delivered++;
    c->status = status;
    for (size_t i = 0; i < j->n; i++)
        c->children_delivered += j->children[i]->state == RT_TASK_DELIVERED;
}

#define N 4

typedef struct join_fix {
    join_case c;
    probe p[N];
    rt_task *tasks[N];
} join_fix;

static void join_fix_init(join_fix *f, rt_fixture *fx, unsigned flags)
{
    memset(f, 0, sizeof(*f));
    for (int i = 0; i < N; i++) {
        probe_init(&f->p[i], &fx->rt, PROBE_MANUAL, 0);
        f->tasks[i] = &f->p[i].task;
    }
    rt_join_init(&f->c.j, &fx->rt, f->tasks, N, flags);
}

static void join_fix_release(join_fix *f)
{
    rt_task_release(&f->c.j.task);
    for (int i = 0; i < N; i++) {
        rt_task_release(&f->p[i].task);
        assert_int_equal(f->p[i].releases, 1);
    }
}

/* The join completes after every child, with the first error, and does not cancel anyone. */
static void test_join_all(void **state)
{
    rt_fixture *fx = *state;
    join_fix f;

    join_fix_init(&f, fx, RT_JOIN_ALL);
    rt_task_start(&f.c.j.task, NULL, join_cb);
    probe_finish(&f.p[2], UV_EIO);
    run_once(fx);
    probe_finish(&f.p[0], UV_ENOENT);
    probe_finish(&f.p[1], 0);
    run_once(fx);
    assert_int_equal(f.c.delivered, 0);
    assert_int_equal(f.p[3].cancels, 0);
    probe_finish(&f.p[3], 0);
    run_all(fx);
    assert_int_equal(f.c.delivered, 1);
    assert_int_equal(f.c.status, UV_EIO);
    assert_int_equal(f.c.j.first_error, UV_EIO);
    assert_int_equal(f.c.children_delivered, N); /* parent after children */
    join_fix_release(&f);
}

/* Fail-fast: the first failure cancels the siblings, and the join still waits for them. */
static void test_join_fail_fast(void **state)
{
    rt_fixture *fx = *state;
    join_fix f;

    join_fix_init(&f, fx, RT_JOIN_FAIL_FAST);
    f.p[3].deaf = true; /* one sibling ignores cancellation and finishes later */
    rt_task_start(&f.c.j.task, NULL, join_cb);
    probe_finish(&f.p[1], UV_EIO);
    run_all(fx);
    assert_int_equal(f.p[0].cancels, 1);
    assert_int_equal(f.p[2].cancels, 1);
    assert_int_equal(f.p[3].cancels, 1);
    assert_int_equal(f.p[1].cancels, 0);
    assert_int_equal(f.p[0].task.status, UV_ECANCELED);
    assert_int_equal(f.c.delivered, 0);
    probe_finish(&f.p[3], 0);
    run_all(fx);
    assert_int_equal(f.c.delivered, 1);
    assert_int_equal(f.c.status, UV_EIO);
    assert_int_equal(f.c.children_delivered, N);
    join_fix_release(&f);
}

/* A join of zero tasks completes with 0 on a later turn, not inside start. */
static void test_join_empty(void **state)
{
    rt_fixture *fx = *state;
    join_case c = {0};

    rt_join_init(&c.j, &fx->rt, NULL, 0, RT_JOIN_FAIL_FAST);
    rt_task_start(&c.j.task, NULL, join_cb);
    assert_int_equal(c.delivered, 0);
    run_all(fx);
    assert_int_equal(c.delivered, 1);
    assert_int_equal(c.status, 0);
    rt_task_release(&c.j.task);
}

/* Cancelling the join (through its signal) reaches every child. */
static void test_join_cancelled(void **state)
{
    rt_fixture *fx = *state;
    rt_cancel sig;
    join_fix f;

    rt_cancel_init(&sig, NULL);
    join_fix_init(&f, fx, RT_JOIN_ALL);
    rt_task_start(&f.c.j.task, &sig, join_cb);
    rt_cancel_fire(&sig, UV_ESHUTDOWN);
    run_all(fx);
    for (int i = 0; i < N; i++) {
        assert_int_equal(f.p[i].cancels, 1);
        assert_int_equal(f.p[i].task.status, UV_ESHUTDOWN);
    }
    assert_int_equal(f.c.status, UV_ESHUTDOWN);
    join_fix_release(&f);
    rt_cancel_close(&sig);
}

/* A join cancelled before start never starts its children. */
static void test_join_cancelled_before_start(void **state)
{
    rt_fixture *fx = *state;
    join_fix f;

    join_fix_init(&f, fx, RT_JOIN_ALL);
    rt_task_cancel(&f.c.j.task, 0);
    rt_task_start(&f.c.j.task, NULL, join_cb);
    run_all(fx);
    assert_int_equal(f.c.status, UV_ECANCELED);
    for (int i = 0; i < N; i++)
        assert_int_equal(f.p[i].task.state, RT_TASK_INIT);
    join_fix_release(&f);
}

static void deadline_closed(rt_deadline *d)
{
    int *closed = d->data;

    (*closed)++;
}

/* A deadline expiring in the middle of a join times out the children still running. */
static void test_join_deadline(void **state)
{
    rt_fixture *fx = *state;
    rt_deadline d;
    rt_sleep s[3];
    rt_task *tasks[3];
    join_case c = {0};
    int closed = 0;
    uint64_t t0;

    uv_update_time(&fx->loop);
    t0 = uv_now(&fx->loop);
    assert_int_equal(rt_deadline_init(&d, &fx->rt, NULL, t0 + 30), 0);
    d.data = &closed;
    rt_sleep_init(&s[0], &fx->rt, 1, NULL);
    rt_sleep_init(&s[1], &fx->rt, 60000, NULL);
    rt_sleep_init(&s[2], &fx->rt, 60000, NULL);
    for (int i = 0; i < 3; i++)
        tasks[i] = &s[i].task;
    rt_join_init(&c.j, &fx->rt, tasks, 3, RT_JOIN_ALL);
    rt_task_start(&c.j.task, &d.signal, join_cb);
    run_all(fx);
    assert_int_equal(c.status, UV_ETIMEDOUT);
    assert_int_equal(s[0].task.status, 0);
    assert_int_equal(s[1].task.status, UV_ETIMEDOUT);
    assert_int_equal(s[2].task.status, UV_ETIMEDOUT);
    assert_true(uv_now(&fx->loop) >= t0 + 30);
    assert_true(uv_now(&fx->loop) < t0 + 5000);
    rt_task_release(&c.j.task);
    for (int i = 0; i < 3; i++)
        rt_task_release(&s[i].task);
    rt_deadline_close(&d, deadline_closed);
    run_all(fx);
    assert_int_equal(closed, 1);
}

/* Joins nest: an inner fail-fast join failing fails the outer fail-fast join's other branch. */
static void test_join_nested(void **state)
{
    rt_fixture *fx = *state;
    join_case outer = {0};
    join_case inner = {0};
    probe a;
    probe b;
    probe other;
    rt_task *inner_tasks[2] = {&a.task, &b.task};
    rt_task *outer_tasks[2] = {&inner.j.task, &other.task};

    probe_init(&a, &fx->rt, PROBE_IMMEDIATE, UV_EPIPE);
    probe_init(&b, &fx->rt, PROBE_MANUAL, 0);
    probe_init(&other, &fx->rt, PROBE_MANUAL, 0);
    rt_join_init(&inner.j, &fx->rt, inner_tasks, 2, RT_JOIN_FAIL_FAST);
    rt_join_init(&outer.j, &fx->rt, outer_tasks, 2, RT_JOIN_FAIL_FAST);
    rt_task_start(&outer.j.task, NULL, join_cb);
    run_all(fx);
    assert_int_equal(b.task.status, UV_ECANCELED);
    assert_int_equal(inner.j.task.status, UV_EPIPE);
    assert_int_equal(other.task.status, UV_ECANCELED);
    assert_int_equal(outer.status, UV_EPIPE);
    rt_task_release(&outer.j.task);
    rt_task_release(&inner.j.task);
    rt_task_release(&a.task);
    rt_task_release(&b.task);
    rt_task_release(&other.task);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        RT_FIXTURE_TEST(test_join_all),
        RT_FIXTURE_TEST(test_join_fail_fast),
        RT_FIXTURE_TEST(test_join_empty),
        RT_FIXTURE_TEST(test_join_cancelled),
        RT_FIXTURE_TEST(test_join_cancelled_before_start),
        RT_FIXTURE_TEST(test_join_deadline),
        RT_FIXTURE_TEST(test_join_nested),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
