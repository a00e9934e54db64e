/* SPDX-License-Identifier: MIT */
/*
 * test_race.c - a task raced against a signal, the signal winning ties.
 */
#include "rt_test.h"

#include "runtime/race.h"

/* A race of an inner probe against a signal, both owned by the case. */
typedef struct race_case {
    rt_race r;
    rt_cancel sig;
    probe inner;
    int delivered;
    int status;
    int inner_delivered_before; /* the inner probe's state when the race was delivered */
} race_case;

static void race_cb(rt_task *t, int status)
{
    race_case *c = rt_container_of(t, race_case, r.task);

    c->delivered++;
    c->status = status;
    c->inner_delivered_before = c->inner.task.state == RT_TASK_DELIVERED;
}

/* Initializes the signal, an inner probe in the given mode, and the race over them (not started:
 * rt_race_init only records the signal, so a test may still fire it or tune the probe). */
static void race_setup(race_case *c, rt_fixture *fx, int inner_mode)
{
    memset(c, 0, sizeof(*c));
    rt_cancel_init(&c->sig, NULL);
    probe_init(&c->inner, &fx->rt, inner_mode, 0);
    rt_race_init(&c->r, &fx->rt, &c->inner.task, &c->sig);
}

static void race_teardown(race_case *c)
{
    rt_task_release(&c->r.task);
    rt_task_release(&c->inner.task);
    rt_cancel_close(&c->sig);
}

/* The inner task finishes and nothing fires: the race reports the inner status. */
static void test_task_wins(void **state)
{
    rt_fixture *fx = *state;
    race_case c;

    race_setup(&c, fx, PROBE_MANUAL);
    rt_task_start(&c.r.task, NULL, race_cb);
    probe_finish(&c.inner, UV_EIO);
    run_all(fx);
    assert_int_equal(c.delivered, 1);
    assert_int_equal(c.status, UV_EIO);
    assert_int_equal(c.r.inner_status, UV_EIO);
    assert_false(c.r.signal_won);
    assert_true(c.inner_delivered_before);
    /* Firing afterwards changes nothing. */
    rt_cancel_fire(&c.sig, 0);
    assert_int_equal(c.inner.cancels, 0);
    race_teardown(&c);
}

/* Tie: the inner task completed but was not delivered yet when the signal fired: signal wins. */
static void test_tie_signal_wins(void **state)
{
    rt_fixture *fx = *state;
    race_case c;

    race_setup(&c, fx, PROBE_MANUAL);
    rt_task_start(&c.r.task, NULL, race_cb);
    probe_finish(&c.inner, 0);
    rt_cancel_fire(&c.sig, UV_ESHUTDOWN);
    run_all(fx);
    assert_int_equal(c.status, UV_ESHUTDOWN);
    assert_true(c.r.signal_won);
    assert_int_equal(c.r.inner_status, 0); /* the work did happen: the caller can tell */
    assert_int_equal(c.inner.cancels, 0);
    race_teardown(&c);
}

/* The signal fires first: the inner task is cancelled and the race waits for it. */
static void test_signal_first_waits_for_inner(void **state)
{
    rt_fixture *fx = *state;
    race_case c;

    race_setup(&c, fx, PROBE_MANUAL);
    c.inner.deaf = true;
    rt_task_start(&c.r.task, NULL, race_cb);
    rt_cancel_fire(&c.sig, UV_ETIMEDOUT);
    assert_int_equal(c.inner.cancels, 1);
    run_all(fx);
    assert_int_equal(c.delivered, 0); /* no task outlives its parent */
    probe_finish(&c.inner, UV_EIO);
    run_all(fx);
    assert_int_equal(c.status, UV_ETIMEDOUT);
    assert_int_equal(c.r.inner_status, UV_EIO);
    assert_true(c.inner_delivered_before);
    race_teardown(&c);
}

/* A signal already fired at start wins at once; the inner task never runs its start. */
static void test_signal_already_fired(void **state)
{
    rt_fixture *fx = *state;
    race_case c;

    race_setup(&c, fx, PROBE_IMMEDIATE);
    rt_cancel_fire(&c.sig, 0);
    rt_task_start(&c.r.task, NULL, race_cb);
    run_all(fx);
    assert_int_equal(c.inner.starts, 0);
    assert_int_equal(c.status, UV_ECANCELED);
    assert_int_equal(c.r.inner_status, UV_ECANCELED);
    assert_true(c.r.signal_won);
    race_teardown(&c);
}

/* Cancelling the race task itself cancels the inner task; the signal did not win. */
static void test_race_cancelled(void **state)
{
    rt_fixture *fx = *state;
    race_case c;
    rt_cancel parent;

    race_setup(&c, fx, PROBE_MANUAL);
    rt_cancel_init(&parent, NULL);
    rt_task_start(&c.r.task, &parent, race_cb);
    rt_cancel_fire(&parent, UV_ECANCELED);
    run_all(fx);
    assert_int_equal(c.inner.cancels, 1);
    assert_int_equal(c.status, UV_ECANCELED);
    assert_false(c.r.signal_won);
    race_teardown(&c);
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
