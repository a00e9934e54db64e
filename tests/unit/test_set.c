/* SPDX-License-Identifier: MIT */
/*
 * test_set.c - dynamic sets: completion order, ownership, sealing, cancellation.
 */
#include "rt_test.h"

#include "runtime/set.h"

typedef struct set_case {
    rt_set s;
    int ids[16]; /* probe index per item callback, in delivery order */
    int statuses[16];
    int items;
    int delivered;
    int status;
    probe *base;  /* the probes array, to turn a child back into an index */
    probe *extra; /* added from inside the item callback, once */
} set_case;

static void item_cb(rt_set *s, rt_task *child, int status)
{
    set_case *c = rt_container_of(s, set_case, s);
    probe *p = rt_container_of(child, probe, task);

    assert_int_equal(child->state, RT_TASK_DELIVERED);
    assert_int_equal(p->releases, 0); /* released by the set only after this callback */
    c->ids[c->items] = (int)(p - c->base);
    c->statuses[c->items++] = status;
    if (c->extra != NULL) {
        assert_int_equal(rt_set_add(s, &c->extra->task), 0);
        c->extra = NULL;
    }
}

static void set_cb(rt_task *t, int status)
{
    set_case *c = rt_container_of(t, set_case, s.task);

    c->delivered++;
    c->status = status;
}

/* Items arrive in completion order; the set releases each; it completes once sealed and empty. */
static void test_completion_order(void **state)
{
    rt_fixture *fx = *state;
    set_case c = {0};
    probe p[4];

    c.base = p;
    rt_set_init(&c.s, &fx->rt, item_cb);
    rt_task_start(&c.s.task, NULL, set_cb);
    for (int i = 0; i < 3; i++) {
        probe_init(&p[i], &fx->rt, PROBE_MANUAL, 0);
        assert_int_equal(rt_set_add(&c.s, &p[i].task), 0);
    }
    probe_init(&p[3], &fx->rt, PROBE_IMMEDIATE, UV_EIO);
    c.extra = &p[3]; /* added from inside the first item callback */
    assert_int_equal(c.s.in_flight, 3);
    probe_finish(&p[2], 0);
    run_once(fx);
    probe_finish(&p[0], UV_ENOENT);
    run_once(fx);
    rt_set_seal(&c.s);
    run_once(fx);
    assert_int_equal(c.delivered, 0); /* p[1] still runs */
    probe_finish(&p[1], 0);
    run_all(fx);
    assert_int_equal(c.items, 4);
    assert_int_equal(c.ids[0], 2);
    assert_int_equal(c.ids[1], 3);
    assert_int_equal(c.statuses[1], UV_EIO);
    assert_int_equal(c.ids[2], 0);
    assert_int_equal(c.ids[3], 1);
    assert_int_equal(c.delivered, 1);
    assert_int_equal(c.status, 0);
    assert_int_equal(c.s.added, 4);
    assert_int_equal(c.s.completed, 4);
    for (int i = 0; i < 4; i++)
        assert_int_equal(p[i].releases, 1);
    rt_task_release(&c.s.task);
}

/* A sealed set refuses additions: the child is released (stolen) and never started. */
static void test_sealed_refuses(void **state)
{
    rt_fixture *fx = *state;
    set_case c = {0};
    probe p;

    rt_set_init(&c.s, &fx->rt, NULL);
    rt_set_seal(&c.s); /* sealed before start: an empty set completes at once */
    rt_task_start(&c.s.task, NULL, set_cb);
    probe_init(&p, &fx->rt, PROBE_IMMEDIATE, 0);
    assert_int_equal(rt_set_add(&c.s, &p.task), UV_ECANCELED);
    assert_int_equal(p.releases, 1);
    assert_int_equal(p.starts, 0);
    run_all(fx);
    assert_int_equal(c.delivered, 1);
    assert_int_equal(c.status, 0);
    rt_task_release(&c.s.task);
}

/* Cancelling the set cancels every child, seals it, and it reports the reason. */
static void test_set_cancelled(void **state)
{
    rt_fixture *fx = *state;
    set_case c = {0};
    rt_cancel sig;
    probe p[3];
    probe late;

    c.base = p;
    rt_cancel_init(&sig, NULL);
    rt_set_init(&c.s, &fx->rt, item_cb);
    rt_task_start(&c.s.task, &sig, set_cb);
    for (int i = 0; i < 3; i++) {
        probe_init(&p[i], &fx->rt, PROBE_MANUAL, 0);
        rt_set_add(&c.s, &p[i].task);
    }
    rt_cancel_fire(&sig, UV_ETIMEDOUT);
    probe_init(&late, &fx->rt, PROBE_MANUAL, 0);
    assert_int_equal(rt_set_add(&c.s, &late.task), UV_ECANCELED);
    run_all(fx);
    for (int i = 0; i < 3; i++) {
        assert_int_equal(p[i].cancels, 1);
        assert_int_equal(p[i].releases, 1);
    }
    assert_int_equal(c.items, 3);
    assert_int_equal(c.statuses[0], UV_ETIMEDOUT);
    assert_int_equal(c.delivered, 1);
    assert_int_equal(c.status, UV_ETIMEDOUT);
    rt_task_release(&c.s.task);
    rt_cancel_close(&sig);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        RT_FIXTURE_TEST(test_completion_order),
        RT_FIXTURE_TEST(test_sealed_refuses),
        RT_FIXTURE_TEST(test_set_cancelled),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
