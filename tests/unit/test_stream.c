/* SPDX-License-Identifier: MIT */
/*
 * test_stream.c - bounded streams: the limit, the stop signal in both modes, source errors,
 * cancellation.
 */
#include "rt_test.h"

#include "runtime/stream.h"
#include "runtime/work.h"

#define ITEMS 12

typedef struct src {
    rt_stream s;
    probe p[ITEMS];
    rt_sleep naps[ITEMS];
    bool use_naps;           /* children are short sleeps instead of manual probes */
    size_t next;             /* next item index */
    size_t total;            /* items the source holds */
    int fail_at;             /* index at which next() fails with UV_EIO (-1: never) */
    rt_cancel *stop_at_pull; /* fired from inside next() at the third pull */
    size_t max_seen;         /* in_flight seen from the callbacks */
    int items;
    int delivered;
    int status;
    rt_fixture *fx;
} src;

static int src_next(rt_stream *s, rt_task **out)
{
    src *c = rt_container_of(s, src, s);
    size_t i = c->next;

    assert_true(s->in_flight < s->limit); /* asked only when there is room */
    if (c->stop_at_pull != NULL && i == 2)
        rt_cancel_fire(c->stop_at_pull, 0);
    if (c->fail_at >= 0 && (size_t)c->fail_at == i)
        return UV_EIO;
    if (i >= c->total)
        return 0;
    c->next++;
    if (c->use_naps) {
        rt_sleep_init(&c->naps[i], &c->fx->rt, (uint64_t)(i % 3), NULL);
        *out = &c->naps[i].task;
    } else {
        probe_init(&c->p[i], &c->fx->rt, PROBE_MANUAL, 0);
        *out = &c->p[i].task;
    }
    return 1;
}

static void src_item(rt_stream *s, rt_task *child, int status)
{
    src *c = rt_container_of(s, src, s);

    (void)status;
    assert_int_equal(child->state, RT_TASK_DELIVERED);
    if (s->in_flight + 1 > c->max_seen)
        c->max_seen = s->in_flight + 1;
    c->items++;
}

static void src_done(rt_task *t, int status)
{
    src *c = rt_container_of(t, src, s.task);

    c->delivered++;
    c->status = status;
}

static void src_init(src *c, rt_fixture *fx, size_t total, size_t limit, rt_cancel *stop, int mode)
{
    memset(c, 0, sizeof(*c));
    c->fx = fx;
    c->total = total;
    c->fail_at = -1;
    rt_stream_init(&c->s, &fx->rt, limit, src_next, src_item, stop, mode);
}

static void finish_running(src *c, int status)
{
    for (size_t i = 0; i < c->next; i++) {
        if (c->p[i].task.state == RT_TASK_RUNNING)
            probe_finish(&c->p[i], status);
    }
}

/* At most `limit` children run at once; every item is seen once and released. */
static void test_never_exceeds_limit(void **state)
{
    rt_fixture *fx = *state;
    src c;

    src_init(&c, fx, ITEMS, 3, NULL, RT_STREAM_STOP_DRAIN);
    c.use_naps = true;
    rt_task_start(&c.s.task, NULL, src_done);
    assert_int_equal(c.s.in_flight, 3);
    run_all(fx);
    assert_int_equal(c.status, 0);
    assert_int_equal(c.items, ITEMS);
    assert_int_equal(c.s.started, ITEMS);
    assert_int_equal(c.s.succeeded, ITEMS);
    assert_int_equal(c.s.max_in_flight, 3);
    assert_true(c.max_seen <= 3);
    assert_false(c.s.stopped);
    for (int i = 0; i < ITEMS; i++)
        assert_int_equal(c.naps[i].task.state, RT_TASK_RELEASED);
    rt_task_release(&c.s.task);
}

/* DRAIN: after the stop signal, no new item is taken and those in flight finish normally. */
static void test_stop_drain(void **state)
{
    rt_fixture *fx = *state;
    rt_cancel stop;
    src c;

    rt_cancel_init(&stop, NULL);
    src_init(&c, fx, ITEMS, 3, &stop, RT_STREAM_STOP_DRAIN);
    rt_task_start(&c.s.task, NULL, src_done);
    probe_finish(&c.p[0], 0);
    run_all(fx);
    assert_int_equal(c.s.started, 4);
    rt_cancel_fire(&stop, 0);
    run_all(fx);
    assert_int_equal(c.delivered, 0);
    for (int i = 1; i < 4; i++)
        assert_int_equal(c.p[i].cancels, 0);
    finish_running(&c, 0);
    run_all(fx);
    assert_int_equal(c.delivered, 1);
    assert_int_equal(c.status, 0);
    assert_true(c.s.stopped);
    assert_int_equal(c.s.started, 4);
    assert_int_equal(c.s.succeeded, 4);
    assert_int_equal(c.next, 4);
    rt_task_release(&c.s.task);
    rt_cancel_close(&stop);
}

/* CANCEL: after the stop signal, the children in flight are cancelled. */
static void test_stop_cancel(void **state)
{
    rt_fixture *fx = *state;
    rt_cancel stop;
    src c;

    rt_cancel_init(&stop, NULL);
    src_init(&c, fx, ITEMS, 3, &stop, RT_STREAM_STOP_CANCEL);
    rt_task_start(&c.s.task, NULL, src_done);
    run_all(fx);
    rt_cancel_fire(&stop, 0);
    run_all(fx);
    for (int i = 0; i < 3; i++)
        assert_int_equal(c.p[i].cancels, 1);
    assert_int_equal(c.delivered, 1);
    assert_int_equal(c.status, 0);
    assert_true(c.s.stopped);
    assert_int_equal(c.s.cancelled, 3);
    assert_int_equal(c.s.started, 3);
    rt_task_release(&c.s.task);
    rt_cancel_close(&stop);
}

/* The stop signal fired from inside the source: the stream does not finish mid-pull. */
static void test_stop_inside_source(void **state)
{
    rt_fixture *fx = *state;
    rt_cancel stop;
    src c;

    rt_cancel_init(&stop, NULL);
    src_init(&c, fx, ITEMS, 4, &stop, RT_STREAM_STOP_DRAIN);
    c.stop_at_pull = &stop;
    rt_task_start(&c.s.task, NULL, src_done);
    assert_int_equal(c.s.started, 3); /* the item produced by the stopping pull still runs */
    finish_running(&c, 0);
    run_all(fx);
    assert_int_equal(c.status, 0);
    assert_int_equal(c.items, 3);
    assert_true(c.s.stopped);
    rt_task_release(&c.s.task);
    rt_cancel_close(&stop);
}

/* A failing source stops the stream, which waits for its children and reports the error. */
static void test_source_error(void **state)
{
    rt_fixture *fx = *state;
    src c;

    src_init(&c, fx, ITEMS, 3, NULL, RT_STREAM_STOP_DRAIN);
    c.fail_at = 4;
    rt_task_start(&c.s.task, NULL, src_done);
    finish_running(&c, 0);
    run_all(fx);
    finish_running(&c, UV_ENOENT);
    run_all(fx);
    assert_int_equal(c.delivered, 1);
    assert_int_equal(c.status, UV_EIO);
    assert_int_equal(c.s.started, 4);
    assert_int_equal(c.s.failed, 1);
    assert_int_equal(c.s.succeeded, 3);
    rt_task_release(&c.s.task);
}

/* Cancelling the stream task cancels its children and reports the reason. */
static void test_stream_cancelled(void **state)
{
    rt_fixture *fx = *state;
    rt_cancel sig;
    src c;

    rt_cancel_init(&sig, NULL);
    src_init(&c, fx, ITEMS, 2, NULL, RT_STREAM_STOP_DRAIN);
    rt_task_start(&c.s.task, &sig, src_done);
    rt_cancel_fire(&sig, UV_ETIMEDOUT);
    run_all(fx);
    assert_int_equal(c.status, UV_ETIMEDOUT);
    assert_int_equal(c.s.cancelled, 2);
    assert_int_equal(c.s.started, 2);
    rt_task_release(&c.s.task);
    rt_cancel_close(&sig);
}

/* A stop signal that already fired at start takes nothing at all. */
static void test_stopped_before_start(void **state)
{
    rt_fixture *fx = *state;
    rt_cancel stop;
    src c;

    rt_cancel_init(&stop, NULL);
    rt_cancel_fire(&stop, 0);
    src_init(&c, fx, ITEMS, 2, &stop, RT_STREAM_STOP_CANCEL);
    rt_task_start(&c.s.task, NULL, src_done);
    assert_int_equal(c.delivered, 0);
    run_all(fx);
    assert_int_equal(c.status, 0);
    assert_int_equal(c.s.started, 0);
    assert_true(c.s.stopped);
    rt_task_release(&c.s.task);
    rt_cancel_close(&stop);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        RT_FIXTURE_TEST(test_never_exceeds_limit),  RT_FIXTURE_TEST(test_stop_drain),
        RT_FIXTURE_TEST(test_stop_cancel),          RT_FIXTURE_TEST(test_stop_inside_source),
        RT_FIXTURE_TEST(test_source_error),         RT_FIXTURE_TEST(test_stream_cancelled),
        RT_FIXTURE_TEST(test_stopped_before_start),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
