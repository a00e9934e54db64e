/* SPDX-License-Identifier: MIT */
/*
 * test_race.c - a task raced against a signal, the signal winning ties.
 */
#include "rt_test.h"

#include "runtime/race.h"

typedef struct race_case {
    rt_race r;
    int delivered;
    int status;
    int inner_delivered_before; /* the inner probe's state when the race was delivered */
    probe *inner;
} race_case;

static void race_cb(rt_task *t, int status)
{
    race_case *c = rt_container_of(t, race_case, r.task);

    c->delivered++;
    c->status = status;
    c->inner_delivered_before = c->inner->task.state == RT_TASK_DELIVERED;
}

static void race_setup(race_case *c, rt_fixture *fx, probe *inner, rt_cancel *sig)
{
    memset(c, 0, sizeof(*c));
    c->inner = inner;
    rt_race_init(&c->r, &fx->rt, &inner->task, sig);
}

/* The inner task finishes and nothing fires: the race reports the inner status. */
static void test_task_wins(void **state)
{
    rt_fixture *fx = *state;
    race_case c;
    rt_cancel sig;
    probe inner;

    rt_cancel_init(&sig, NULL);
    probe_init(&inner, &fx->rt, PROBE_MANUAL, 0);
    race_setup(&c, fx, &inner, &sig);
    rt_task_start(&c.r.task, NULL, race_cb);
    probe_finish(&inner, UV_EIO);
    run_all(fx);
    assert_int_equal(c.delivered, 1);
    assert_int_equal(c.status, UV_EIO);
    assert_int_equal(c.r.inner_status, UV_EIO);
    assert_false(c.r.signal_won);
    assert_true(c.inner_delivered_before);
    /* Firing afterwards changes nothing. */
    rt_cancel_fire(&sig, 0);
    assert_int_equal(inner.cancels, 0);
    rt_task_release(&c.r.task);
    rt_task_release(&inner.task);
    rt_cancel_close(&sig);
}

/* Tie: the inner task completed but was not delivered yet when the signal fired: signal wins. */
static void test_tie_signal_wins(void **state)
{
    rt_fixture *fx = *state;
    race_case c;
    rt_cancel sig;
    probe inner;

    rt_cancel_init(&sig, NULL);
    probe_init(&inner, &fx->rt, PROBE_MANUAL, 0);
    race_setup(&c, fx, &inner, &sig);
    rt_task_start(&c.r.task, NULL, race_cb);
    probe_finish(&inner, 0);
    rt_cancel_fire(&sig, UV_ESHUTDOWN);
    run_all(fx);
    assert_int_equal(c.status, UV_ESHUTDOWN);
    assert_true(c.r.signal_won);
    assert_int_equal(c.r.inner_status, 0); /* the work did happen: the caller can tell */
    assert_int_equal(inner.cancels, 0);
    rt_task_release(&c.r.task);
    rt_task_release(&inner.task);
    rt_cancel_close(&sig);
}

/* The signal fires first: the inner task is cancelled and the race waits for it. */
static void test_signal_first_waits_for_inner(void **state)
{
    rt_fixture *fx = *state;
    race_case c;
    rt_cancel sig;
    probe inner;

    rt_cancel_init(&sig, NULL);
    probe_init(&inner, &fx->rt, PROBE_MANUAL, 0);
    inner.deaf = true;
    race_setup(&c, fx, &inner, &sig);
    rt_task_start(&c.r.task, NULL, race_cb);
    rt_cancel_fire(&sig, UV_ETIMEDOUT);
    assert_int_equal(inner.cancels, 1);
    run_all(fx);
    assert_int_equal(c.delivered, 0); /* no task outlives its parent */
    probe_finish(&inner, UV_EIO);
    run_all(fx);
    assert_int_equal(c.status, UV_ETIMEDOUT);
    assert_int_equal(c.r.inner_status, UV_EIO);
    assert_true(c.inner_delivered_before);
    rt_task_release(&c.r.task);
    rt_task_release(&inner.task);
    rt_cancel_close(&sig);
}

/* A signal already fired at start wins at once; the inner task never runs its start. */
static void test_signal_already_fired(void **state)
{
    rt_fixture *fx = *state;
    race_case c;
    rt_cancel sig;
    probe inner;

    rt_cancel_init(&sig, NULL);
    rt_cancel_fire(&sig, 0);
    probe_init(&inner, &fx->rt, PROBE_IMMEDIATE, 0);
    race_setup(&c, fx, &inner, &sig);
    rt_task_start(&c.r.task, NULL, race_cb);
    run_all(fx);
    assert_int_equal(inner.starts, 0);
    assert_int_equal(c.status, UV_ECANCELED);
    assert_int_equal(c.r.inner_status, UV_ECANCELED);
    assert_true(c.r.signal_won);
    rt_task_release(&c.r.task);
    rt_task_release(&inner.task);
    rt_cancel_close(&sig);
}

/* Cancelling the race task itself cancels the inner task; the signal did not win. */
static void test_race_cancelled(void **state)
{
    rt_fixture *fx = *state;
    race_case c;
    rt_cancel sig;
    rt_cancel parent;
    probe inner;

    rt_cancel_init(&sig, NULL);
    rt_cancel_init(&parent, NULL);
    probe_init(&inner, &fx->rt, PROBE_MANUAL, 0);
    race_setup(&c, fx, &inner, &sig);
    rt_task_start(&c.r.task, &parent, race_cb);
    rt_cancel_fire(&parent, UV_ECANCELED);
    run_all(fx);
    assert_int_equal(inner.cancels, 1);
    assert_int_equal(c.status, UV_ECANCELED);
    assert_false(c.r.signal_won);
    rt_task_release(&c.r.task);
    rt_task_release(&inner.task);
    rt_cancel_close(&sig);
    rt_cancel_close(&parent);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        RT_FIXTURE_TEST(test_task_wins),
        RT_FIXTURE_TEST(test_tie_signal_wins),
        RT_FIXTURE_TEST(test_signal_first_waits_for_inner),
        RT_FIXTURE_TEST(test_signal_already_fired),
        RT_FIXTURE_TEST(test_race_cancelled),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
