/* SPDX-License-Identifier: MIT */
/*
 * test_cancel.c - cancellation signals (tree, listeners, first reason wins) and deadlines.
 */
#include "rt_test.h"

#include "runtime/cancel.h"

typedef struct rec_listener {
    rt_cancel_listener l;
    int *log;
    int *n;
    int id;
    int reason;
    rt_cancel_listener *drop; /* unlistened from inside this one's callback */
} rec_listener;

static void rec_cb(rt_cancel_listener *l, int reason)
{
    rec_listener *r = rt_container_of(l, rec_listener, l);

    r->reason = reason;
    r->log[(*r->n)++] = r->id;
    if (r->drop != NULL)
        rt_cancel_unlisten(r->drop);
}

static void rec_init(rec_listener *r, int *log, int *n, int id)
{
    memset(r, 0, sizeof(*r));
    rt_cancel_listener_init(&r->l);
    r->log = log;
    r->n = n;
    r->id = id;
}

/* Listeners run once, newest first; one may unlisten another that has not run yet. */
static void test_listeners_newest_first(void **state)
{
    rec_listener r[4];
    rt_cancel sig;
    int log[4];
    int n = 0;

    (void)state;
    rt_cancel_init(&sig, NULL);
    for (int i = 0; i < 4; i++) {
        rec_init(&r[i], log, &n, i);
        assert_int_equal(rt_cancel_listen(&sig, &r[i].l, rec_cb), 0);
    }
    r[3].drop = &r[1].l;
    rt_cancel_unlisten(&r[2].l);
    rt_cancel_fire(&sig, 0);
    assert_int_equal(sig.reason, UV_ECANCELED);
    assert_int_equal(n, 2);
    assert_int_equal(log[0], 3);
    assert_int_equal(log[1], 0);
    rt_cancel_fire(&sig, UV_ETIMEDOUT); /* no-op: the first fire wins */
    assert_int_equal(n, 2);
    assert_int_equal(sig.reason, UV_ECANCELED);
    /* A fired signal refuses new listeners and reports its reason instead. */
    rec_init(&r[2], log, &n, 2);
    assert_int_equal(rt_cancel_listen(&sig, &r[2].l, rec_cb), UV_ECANCELED);
    assert_int_equal(n, 2);
    rt_cancel_close(&sig);
}

/* Firing a parent reaches every descendant; a child of a fired parent starts fired. */
static void test_signal_tree(void **state)
{
    rt_cancel root;
    rt_cancel mid;
    rt_cancel leaf;
    rt_cancel side;
    rt_cancel late;
    rec_listener r[3];
    int log[3];
    int n = 0;

    (void)state;
    rt_cancel_init(&root, NULL);
    rt_cancel_init(&mid, &root);
    rt_cancel_init(&leaf, &mid);
    rt_cancel_init(&side, &root);
    rec_init(&r[0], log, &n, 0);
    rec_init(&r[1], log, &n, 1);
    rec_init(&r[2], log, &n, 2);
    rt_cancel_listen(&leaf, &r[0].l, rec_cb);
    rt_cancel_listen(&side, &r[1].l, rec_cb);
    rt_cancel_listen(&root, &r[2].l, rec_cb);
    /* Firing the middle stays in its subtree. */
    rt_cancel_fire(&mid, UV_ETIMEDOUT);
    assert_int_equal(leaf.reason, UV_ETIMEDOUT);
    assert_int_equal(n, 1);
    assert_int_equal(r[0].reason, UV_ETIMEDOUT);
    assert_false(rt_cancel_is_fired(&root));
    assert_false(rt_cancel_is_fired(&side));
    rt_cancel_fire(&root, UV_ESHUTDOWN);
    assert_int_equal(side.reason, UV_ESHUTDOWN);
    assert_int_equal(mid.reason, UV_ETIMEDOUT);
    assert_int_equal(n, 3);
    rt_cancel_init(&late, &root);
    assert_int_equal(late.reason, UV_ESHUTDOWN);
    rt_cancel_close(&late);
    rt_cancel_close(&leaf);
    rt_cancel_close(&mid);
    rt_cancel_close(&side);
    rt_cancel_close(&root);
}

/* A closed child no longer hears its parent. */
static void test_closed_child_detached(void **state)
{
    rt_cancel root;
    rt_cancel child;

    (void)state;
    rt_cancel_init(&root, NULL);
    rt_cancel_init(&child, &root);
    rt_cancel_close(&child);
    rt_cancel_fire(&root, 0);
    assert_int_equal(child.reason, 0);
    rt_cancel_close(&root);
}

typedef struct deadline_case {
    rt_deadline d;
    rec_listener r;
    int closed;
    uint64_t fired_at;
    uv_loop_t *loop;
} deadline_case;

static void deadline_closed(rt_deadline *d)
{
    deadline_case *c = rt_container_of(d, deadline_case, d);

    c->closed++;
}

static void deadline_heard(rt_cancel_listener *l, int reason)
{
    deadline_case *c = rt_container_of(l, deadline_case, r.l);

    c->r.reason = reason;
    c->fired_at = uv_now(c->loop);
}

/* A deadline fires UV_ETIMEDOUT at its absolute time, not before, and closes asynchronously. */
static void test_deadline_fires(void **state)
{
    rt_fixture *fx = *state;
    deadline_case c;
    uint64_t t0;

    memset(&c, 0, sizeof(c));
    c.loop = &fx->loop;
    rt_cancel_listener_init(&c.r.l);
    uv_update_time(&fx->loop);
    t0 = uv_now(&fx->loop);
    assert_int_equal(rt_deadline_init(&c.d, &fx->rt, NULL, t0 + 20), 0);
    rt_cancel_listen(&c.d.signal, &c.r.l, deadline_heard);
    run_all(fx);
    assert_int_equal(c.r.reason, UV_ETIMEDOUT);
    assert_true(c.fired_at >= t0 + 20);
    assert_true(c.fired_at < t0 + 2000);
    rt_deadline_close(&c.d, deadline_closed);
    assert_int_equal(c.closed, 0);
    run_all(fx);
    assert_int_equal(c.closed, 1);
}

/* A deadline in the past fires from the loop, never inside init; a parent still cancels it. */
static void test_deadline_past_and_parent(void **state)
{
    rt_fixture *fx = *state;
    deadline_case past;
    deadline_case never;
    rt_cancel parent;

    memset(&past, 0, sizeof(past));
    memset(&never, 0, sizeof(never));
    rt_cancel_init(&parent, NULL);
    assert_int_equal(rt_deadline_init(&past.d, &fx->rt, NULL, 0), 0);
    assert_false(rt_cancel_is_fired(&past.d.signal));
    assert_int_equal(rt_deadline_init(&never.d, &fx->rt, &parent, RT_NO_DEADLINE), 0);
    run_all(fx); /* an endless deadline keeps nothing alive */
    assert_int_equal(past.d.signal.reason, UV_ETIMEDOUT);
    assert_false(rt_cancel_is_fired(&never.d.signal));
    rt_cancel_fire(&parent, UV_ESHUTDOWN);
    assert_int_equal(never.d.signal.reason, UV_ESHUTDOWN);
    rt_deadline_close(&past.d, deadline_closed);
    rt_deadline_close(&never.d, deadline_closed);
    run_all(fx);
    assert_int_equal(past.closed, 1);
    assert_int_equal(never.closed, 1);
    rt_cancel_close(&parent);
}

/* A deadline closed before it fires never fires. */
static void test_deadline_closed_early(void **state)
{
    rt_fixture *fx = *state;
    deadline_case c;

    memset(&c, 0, sizeof(c));
    assert_int_equal(rt_deadline_init(&c.d, &fx->rt, NULL, uv_now(&fx->loop) + 5), 0);
    rt_deadline_close(&c.d, deadline_closed);
    run_all(fx);
    assert_int_equal(c.closed, 1);
    assert_false(rt_cancel_is_fired(&c.d.signal));
}

/* A task started under a deadline completes with UV_ETIMEDOUT. */
static void test_task_under_deadline(void **state)
{
    rt_fixture *fx = *state;
    deadline_case c;
    probe p;

    memset(&c, 0, sizeof(c));
    assert_int_equal(rt_deadline_init(&c.d, &fx->rt, NULL, uv_now(&fx->loop) + 5), 0);
    probe_init(&p, &fx->rt, PROBE_MANUAL, 0);
    rt_task_start(&p.task, &c.d.signal, probe_cb);
    run_all(fx);
    assert_int_equal(p.status, UV_ETIMEDOUT);
    assert_int_equal(p.cancels, 1);
    rt_task_release(&p.task);
    rt_deadline_close(&c.d, deadline_closed);
    run_all(fx);
    assert_int_equal(c.closed, 1);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        RT_FIXTURE_TEST(test_listeners_newest_first),   RT_FIXTURE_TEST(test_signal_tree),
        RT_FIXTURE_TEST(test_closed_child_detached),    RT_FIXTURE_TEST(test_deadline_fires),
        RT_FIXTURE_TEST(test_deadline_past_and_parent), RT_FIXTURE_TEST(test_deadline_closed_early),
        RT_FIXTURE_TEST(test_task_under_deadline),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
