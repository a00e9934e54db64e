/* SPDX-License-Identifier: MIT */
/*
 * test_alloc.c - allocation-failure sweeps over every runtime function that allocates.
 *
 * The runtime allocates only through the rt_malloc hook. For N = 0, 1, 2, ... each sweep fails
 * the Nth allocation of an operation and asserts that the operation reports UV_ENOMEM cleanly,
 * that nothing it allocated is still live, and that nothing was started; it stops at the first N
 * for which the operation succeeds, and checks that every allocation point was failed once on
 * the way there (so a new allocation cannot go unswept).
 */
#include "rt_test.h"

#include "runtime/join.h"
#include "runtime/scope.h"
#include "runtime/work.h"

static long alloc_count; /* allocations made since the hook was armed */
static long alloc_live;  /* allocations not yet freed */
static long alloc_fail_at = -1;

static void *failing_malloc(size_t size)
{
    if (alloc_count++ == alloc_fail_at)
        return NULL;
    alloc_live++;
    return malloc(size);
}

static void counting_free(void *p)
{
    alloc_live--;
    free(p);
}

static void arm(long fail_at)
{
    alloc_count = 0;
    alloc_fail_at = fail_at;
}

static int alloc_setup(void **state)
{
    alloc_live = 0;
    arm(-1);
    rt_replace_allocator(failing_malloc, counting_free);
    return fixture_setup(state);
}

static int alloc_teardown(void **state)
{
    rt_replace_allocator(NULL, NULL);
    return fixture_teardown(state);
}

#define ALLOC_TEST(fn) cmocka_unit_test_setup_teardown(fn, alloc_setup, alloc_teardown)

static int square(rt_work *w)
{
    int *v = w->arg;

    *v = *v * *v;
    return 0;
}

typedef struct batch {
    rt_scope scope;
    int value;
    int joined;
    int join_status;
    int closed;
} batch;

static void batch_joined(rt_task *t, int status)
{
    batch *b = t->data;

    b->joined++;
    b->join_status = status;
}

static void batch_closed(rt_scope *s)
{
    batch *b = rt_container_of(s, batch, scope);

    b->closed++;
}

/*
 * A fan-out as a handler would write it: three timers and one offload joined, the join handed to
 * a scope. Each constructor can fail; what was made so far is released on the way out, and
 * rt_join_new steals its children even when it fails.
 */
static int spawn_batch(rt_runtime *rt, batch *b)
{
    rt_task *kids[4];
    rt_work *w;
    rt_join *j;
    size_t n;

    for (n = 0; n < 3; n++) {
        rt_sleep *s = rt_sleep_new(rt, n);

        if (s == NULL)
            goto out_release_kids;
        kids[n] = &s->task;
    }
    w = rt_work_new(rt, square, &b->value);
    if (w == NULL)
        goto out_release_kids;
    kids[n++] = &w->task;
    j = rt_join_new(rt, kids, n, RT_JOIN_FAIL_FAST);
    if (j == NULL)
        return UV_ENOMEM;
    j->task.data = b;
    return rt_scope_spawn(&b->scope, &j->task, batch_joined);

out_release_kids:
    while (n-- > 0)
        rt_task_release(kids[n]);
    return UV_ENOMEM;
}

/* Sweep over rt_sleep_new, rt_work_new and rt_join_new through one realistic operation. */
static void test_sweep_fan_out(void **state)
{
    rt_fixture *fx = *state;
    long n;

    for (n = 0;; n++) {
        batch b = {.value = 7};
        int err;

        assert_int_equal(rt_scope_init(&b.scope, &fx->rt, NULL, "batch"), 0);
        arm(n);
        err = spawn_batch(&fx->rt, &b);
        arm(-1);
        rt_scope_close(&b.scope, batch_closed);
        run_all(fx);
        assert_int_equal(b.closed, 1);
        assert_int_equal(alloc_live, 0);
        if (err == 0) {
            assert_int_equal(b.joined, 1);
            assert_int_equal(b.join_status, 0);
            assert_int_equal(b.value, 49);
            break;
        }
        assert_int_equal(err, UV_ENOMEM);
        assert_int_equal(b.joined, 0);
        assert_int_equal(b.scope.spawned, 0);
        assert_int_equal(fx->rt.tasks_started, 0);
    }
    /* Three sleeps, one work, one join: each allocation failed once before success. */
    assert_int_equal(n, 5);
}

static void test_sweep_sleep_new(void **state)
{
    rt_fixture *fx = *state;
    rt_sleep *s;

    arm(0);
    assert_null(rt_sleep_new(&fx->rt, 1));
    assert_int_equal(alloc_live, 0);
    arm(1);
    s = rt_sleep_new(&fx->rt, 1);
    assert_non_null(s);
    rt_task_release(&s->task); /* never started: freed synchronously */
    assert_int_equal(alloc_live, 0);
}

static void test_sweep_work_new(void **state)
{
    rt_fixture *fx = *state;
    rt_work *w;
    int v = 3;

    arm(0);
    assert_null(rt_work_new(&fx->rt, square, &v));
    assert_int_equal(alloc_live, 0);
    arm(1);
    w = rt_work_new(&fx->rt, square, &v);
    assert_non_null(w);
    rt_task_start(&w->task, NULL, NULL);
    run_all(fx);
    assert_int_equal(v, 9);
    rt_task_release(&w->task);
    assert_int_equal(alloc_live, 0);
}

/* rt_join_new steals: when it fails, each child is released (its guards run, nothing leaks). */
static void test_join_new_steals_on_failure(void **state)
{
    rt_fixture *fx = *state;
    probe p[3];
    rt_task *kids[3];
    rt_join *j;

    for (int i = 0; i < 3; i++) {
        probe_init(&p[i], &fx->rt, PROBE_IMMEDIATE, 0);
        kids[i] = &p[i].task;
    }
    arm(0);
    assert_null(rt_join_new(&fx->rt, kids, 3, RT_JOIN_ALL));
    for (int i = 0; i < 3; i++)
        assert_int_equal(p[i].releases, 1);
    assert_int_equal(alloc_live, 0);

    for (int i = 0; i < 3; i++)
        probe_init(&p[i], &fx->rt, PROBE_IMMEDIATE, 0);
    arm(-1);
    j = rt_join_new(&fx->rt, kids, 3, RT_JOIN_ALL);
    assert_non_null(j);
    rt_task_start(&j->task, NULL, NULL);
    run_all(fx);
    assert_int_equal(j->task.status, 0);
    rt_task_release(&j->task); /* releases the children, then frees the join */
    for (int i = 0; i < 3; i++)
        assert_int_equal(p[i].releases, 1);
    assert_int_equal(alloc_live, 0);
}

/* rt_calloc goes through the hook too and refuses sizes that overflow. */
static void test_calloc_hook(void **state)
{
    int *v;

    (void)state;
    arm(0);
    assert_null(rt_calloc(4, sizeof(int)));
    arm(-1);
    assert_null(rt_calloc(SIZE_MAX / 2, 4));
    v = rt_calloc(4, sizeof(int));
    assert_non_null(v);
    assert_int_equal(v[0] + v[1] + v[2] + v[3], 0);
    rt_free(v);
    rt_free(NULL);
    assert_int_equal(alloc_live, 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        ALLOC_TEST(test_sweep_fan_out),  ALLOC_TEST(test_sweep_sleep_new),
        ALLOC_TEST(test_sweep_work_new), ALLOC_TEST(test_join_new_steals_on_failure),
        ALLOC_TEST(test_calloc_hook),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
