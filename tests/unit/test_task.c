/* SPDX-License-Identifier: MIT */
/*
 * test_task.c - the task state machine, its delivery through the post queue, guards, and the
 * post queue itself (runtime.c). Each test names the invariant of task.h it would catch breaking.
 */
#include "rt_test.h"

/* T2: a task that completes inside start is still delivered from the queue, later. */
static void test_never_completes_inside_start(void **state)
{
    rt_fixture *fx = *state;
    probe p;

    probe_init(&p, &fx->rt, PROBE_IMMEDIATE, UV_EIO);
    rt_task_start(&p.task, NULL, probe_cb);
    assert_int_equal(p.starts, 1);
    assert_int_equal(p.delivered, 0);
    assert_int_equal(p.task.state, RT_TASK_DONE);
    assert_int_equal(fx->rt.live_tasks, 1);
    run_once(fx);
    assert_int_equal(p.delivered, 1);
    assert_int_equal(p.status, UV_EIO);
    assert_int_equal(fx->rt.live_tasks, 0);
    assert_int_equal(fx->rt.tasks_started, 1);
    assert_int_equal(fx->rt.tasks_completed, 1);
    rt_task_release(&p.task);
    assert_int_equal(p.releases, 1);
}

/* T1/T2: a start that returns an error is completed by the runtime, never inside start. */
static void test_start_error_is_delivered(void **state)
{
    rt_fixture *fx = *state;
    probe p;

    probe_init(&p, &fx->rt, PROBE_START_FAILS, UV_ENOMEM);
    rt_task_start(&p.task, NULL, probe_cb);
    assert_int_equal(p.delivered, 0);
    run_all(fx);
    assert_int_equal(p.delivered, 1);
    assert_int_equal(p.status, UV_ENOMEM);
    rt_task_release(&p.task);
}

/* T4: cancel before start: start completes with the reason and vt->start never runs. */
static void test_cancel_before_start(void **state)
{
    rt_fixture *fx = *state;
    probe p;

    probe_init(&p, &fx->rt, PROBE_IMMEDIATE, 0);
    rt_task_cancel(&p.task, UV_ETIMEDOUT);
    rt_task_cancel(&p.task, UV_ECANCELED); /* the first reason wins */
    assert_int_equal(p.task.state, RT_TASK_INIT);
    rt_task_start(&p.task, NULL, probe_cb);
    assert_int_equal(p.delivered, 0);
    run_all(fx);
    assert_int_equal(p.starts, 0);
    assert_int_equal(p.cancels, 0);
    assert_int_equal(p.delivered, 1);
    assert_int_equal(p.status, UV_ETIMEDOUT);
    rt_task_release(&p.task);
}

/* T4: cancel after completion (delivered or not yet) changes nothing and calls nothing. */
static void test_cancel_after_completion(void **state)
{
    rt_fixture *fx = *state;
    rt_cancel sig;
    probe p;

    rt_cancel_init(&sig, NULL);
    probe_init(&p, &fx->rt, PROBE_MANUAL, 0);
    rt_task_start(&p.task, &sig, probe_cb);
    probe_finish(&p, 0);
    rt_task_cancel(&p.task, 0);
    rt_cancel_fire(&sig, UV_ECANCELED); /* the task no longer listens */
    run_all(fx);
    rt_task_cancel(&p.task, 0);
    assert_int_equal(p.cancels, 0);
    assert_int_equal(p.delivered, 1);
    assert_int_equal(p.status, 0);
    assert_false(rt_task_is_cancel_requested(&p.task));
    rt_task_release(&p.task);
    rt_cancel_close(&sig);
}

/* A running task is cancelled once through its signal, with the signal's reason. */
static void test_cancel_running_through_signal(void **state)
{
    rt_fixture *fx = *state;
    rt_cancel root;
    rt_cancel child;
    probe p;

    rt_cancel_init(&root, NULL);
    rt_cancel_init(&child, &root);
    probe_init(&p, &fx->rt, PROBE_MANUAL, 0);
    p.deaf = true;
    rt_task_start(&p.task, &child, probe_cb);
    rt_cancel_fire(&root, UV_ETIMEDOUT);
    rt_task_cancel(&p.task, UV_ECANCELED); /* second request: vt->cancel is not asked again */
    assert_int_equal(p.cancels, 1);
    assert_int_equal(p.last_reason, UV_ETIMEDOUT);
    assert_int_equal(rt_task_cancel_reason(&p.task), UV_ETIMEDOUT);
    /* A deaf task keeps running: cancellation waits for its real completion. */
    run_once(fx);
    assert_int_equal(p.delivered, 0);
    probe_finish(&p, 0);
    run_all(fx);
    assert_int_equal(p.delivered, 1);
    assert_int_equal(p.status, 0);
    rt_task_release(&p.task);
    rt_cancel_close(&child);
    rt_cancel_close(&root);
}

/* A task started with a signal that already fired never runs vt->start. */
static void test_start_with_fired_signal(void **state)
{
    rt_fixture *fx = *state;
    rt_cancel sig;
    probe p;

    rt_cancel_init(&sig, NULL);
    rt_cancel_fire(&sig, UV_ESHUTDOWN);
    probe_init(&p, &fx->rt, PROBE_IMMEDIATE, 0);
    rt_task_start(&p.task, &sig, probe_cb);
    run_all(fx);
    assert_int_equal(p.starts, 0);
    assert_int_equal(p.status, UV_ESHUTDOWN);
    rt_task_release(&p.task);
    rt_cancel_close(&sig);
}

typedef struct guard_log {
    int seq[8];
    int n;
    int delivered_at; /* n when the completion callback ran */
} guard_log;

typedef struct logged_guard {
    rt_guard g;
    guard_log *log;
    int id;
} logged_guard;

static void log_guard(void *arg)
{
    logged_guard *lg = arg;

    assert_true(lg->log->n < 8);
    lg->log->seq[lg->log->n++] = lg->id;
}

static void push_guards(rt_task *t, logged_guard *gs, guard_log *log)
{
    for (int i = 0; i < 3; i++) {
        gs[i].log = log;
        gs[i].id = i + 1;
        gs[i].g.fn = log_guard;
        gs[i].g.arg = &gs[i];
        rt_task_defer(t, &gs[i].g);
    }
}

static void guard_order_cb(rt_task *t, int status)
{
    guard_log *log = t->data;

    (void)status;
    log->delivered_at = log->n;
}

static void check_newest_first(const guard_log *log)
{
    assert_int_equal(log->n, 3);
    assert_int_equal(log->seq[0], 3);
    assert_int_equal(log->seq[1], 2);
    assert_int_equal(log->seq[2], 1);
}

/* T3: guards run exactly once, newest first, before the callback, on every way of ending. */
static void test_guards_newest_first_every_path(void **state)
{
    rt_fixture *fx = *state;
    /* Paths: success, start error, cancelled running, cancelled before start, never started. */
    for (int path = 0; path < 5; path++) {
        logged_guard gs[3];
        guard_log log = {0};
        rt_cancel sig;
        probe p;

        rt_cancel_init(&sig, NULL);
        probe_init(&p, &fx->rt, path == 1 ? PROBE_START_FAILS : PROBE_MANUAL,
                   path == 1 ? UV_EIO : 0);
        p.task.data = &log;
        push_guards(&p.task, gs, &log);
        if (path == 3)
            rt_task_cancel(&p.task, 0);
        if (path == 4) {
            rt_task_release(&p.task);
            check_newest_first(&log);
            assert_int_equal(p.releases, 1);
            rt_cancel_close(&sig);
            continue;
        }
        rt_task_start(&p.task, &sig, guard_order_cb);
        if (path == 0)
            probe_finish(&p, 0);
        if (path == 2)
            rt_cancel_fire(&sig, 0);
        assert_int_equal(log.n, 0); /* not before delivery */
        run_all(fx);
        check_newest_first(&log);
        assert_int_equal(log.delivered_at, 3);
        rt_task_release(&p.task);
        assert_int_equal(log.n, 3); /* and not again at release */
        rt_cancel_close(&sig);
    }
}

/* T3: a disarmed guard does nothing; one armed after being pushed runs. */
static void test_guard_arm_disarm(void **state)
{
    rt_fixture *fx = *state;
    logged_guard gs[3];
    guard_log log = {0};
    probe p;

    probe_init(&p, &fx->rt, PROBE_MANUAL, 0);
    p.task.data = &log;
    push_guards(&p.task, gs, &log);
    gs[1].g.fn = NULL;
    gs[0].g.fn = NULL;
    rt_task_start(&p.task, NULL, guard_order_cb);
    gs[0].g.fn = log_guard; /* armed once the resource exists */
    probe_finish(&p, 0);
    run_all(fx);
    assert_int_equal(log.n, 2);
    assert_int_equal(log.seq[0], 3);
    assert_int_equal(log.seq[1], 1);
    rt_task_release(&p.task);
}

typedef struct cancel_in_guard {
    rt_guard g;
    rt_cancel *sig;
    probe *self;
} cancel_in_guard;

static void guard_fires_signal(void *arg)
{
    cancel_in_guard *c = arg;

    rt_cancel_fire(c->sig, UV_ECANCELED);
    rt_task_cancel(&c->self->task, UV_ECANCELED);
}

/* A guard that cancels (its own task and a sibling) during delivery: no double completion. */
static void test_cancel_during_guard(void **state)
{
    rt_fixture *fx = *state;
    cancel_in_guard c;
    rt_cancel sig;
    probe a;
    probe b;

    rt_cancel_init(&sig, NULL);
    probe_init(&a, &fx->rt, PROBE_MANUAL, 0);
    probe_init(&b, &fx->rt, PROBE_MANUAL, 0);
    c.sig = &sig;
    c.self = &a;
    c.g.fn = guard_fires_signal;
    c.g.arg = &c;
    rt_task_defer(&a.task, &c.g);
    rt_task_start(&a.task, &sig, probe_cb);
    rt_task_start(&b.task, &sig, probe_cb);
    probe_finish(&a, 0);
    run_all(fx);
    assert_int_equal(a.cancels, 0);
    assert_int_equal(a.delivered, 1);
    assert_int_equal(a.status, 0);
    assert_int_equal(b.cancels, 1);
    assert_int_equal(b.delivered, 1);
    assert_int_equal(b.status, UV_ECANCELED);
    rt_task_release(&a.task);
    rt_task_release(&b.task);
    rt_cancel_close(&sig);
}

/* T5: release from inside the completion callback is deferred until the callback returns. */
static void test_release_inside_callback(void **state)
{
    rt_fixture *fx = *state;
    probe p;

    probe_init(&p, &fx->rt, PROBE_IMMEDIATE, 0);
    p.release_in_cb = true;
    rt_task_start(&p.task, NULL, probe_cb);
    run_all(fx);
    assert_int_equal(p.delivered, 1);
    assert_int_equal(p.releases, 1);
    assert_int_equal(p.task.state, RT_TASK_RELEASED);
}

/* A task that frees its own storage from its callback (the heap-task pattern), under ASan. */
static void free_in_cb(rt_task *t, int status)
{
    int *count = t->data;

    assert_int_equal(status, 0);
    (*count)++;
    rt_task_release(t);
}

static void heap_release(rt_task *t)
{
    free(rt_container_of(t, probe, task));
}

static const rt_task_vtable heap_vt = {
    .name = "heap",
    .start = probe_start,
    .cancel = probe_cancel,
    .release = heap_release,
};

static void test_free_inside_callback(void **state)
{
    rt_fixture *fx = *state;
    int count = 0;

    for (int i = 0; i < 10; i++) {
        probe *p = calloc(1, sizeof(*p));

        assert_non_null(p);
        rt_task_init(&p->task, &fx->rt, &heap_vt);
        p->mode = PROBE_IMMEDIATE;
        p->task.data = &count;
        rt_task_start(&p->task, NULL, free_in_cb);
    }
    run_all(fx);
    assert_int_equal(count, 10);
}

typedef struct post_rec {
    rt_post post;
    int *log;
    int *n;
    int id;
    struct post_rec *repost; /* posted from inside this one's call */
    rt_runtime *rt;
} post_rec;

static void post_log(rt_post *p)
{
    post_rec *r = rt_container_of(p, post_rec, post);

    r->log[(*r->n)++] = r->id;
    if (r->repost != NULL)
        rt_post_submit(r->rt, &r->repost->post, post_log);
}

/* Posts run FIFO, a cancelled post never runs, a post made during a drain waits a turn. */
static void test_post_queue(void **state)
{
    rt_fixture *fx = *state;
    post_rec r[4];
    int log[8];
    int n = 0;

    for (int i = 0; i < 4; i++) {
        r[i] = (post_rec){.log = log, .n = &n, .id = i, .rt = &fx->rt};
        rt_post_init(&r[i].post);
    }
    rt_post_cancel(&r[3].post); /* harmless before any submit */
    r[0].repost = &r[3];
    rt_post_submit(&fx->rt, &r[0].post, post_log);
    rt_post_submit(&fx->rt, &r[1].post, post_log);
    rt_post_submit(&fx->rt, &r[2].post, post_log);
    rt_post_submit(&fx->rt, &r[1].post, post_log); /* already queued: no-op */
    rt_post_cancel(&r[2].post);
    assert_int_equal(n, 0);
    run_once(fx);
    assert_int_equal(n, 2);
    assert_int_equal(log[0], 0);
    assert_int_equal(log[1], 1);
    run_once(fx);
    assert_int_equal(n, 3);
    assert_int_equal(log[2], 3);
}

/* Closing the runtime delivers what is still queued first. */
static void test_runtime_close_drains(void **state)
{
    rt_fixture *fx = *state;
    probe p;

    probe_init(&p, &fx->rt, PROBE_IMMEDIATE, 0);
    rt_task_start(&p.task, NULL, probe_cb);
    rt_runtime_close(&fx->rt, fixture_runtime_closed);
    run_all(fx);
    assert_int_equal(p.delivered, 1);
    assert_int_equal(fx->runtime_closed, 1);
    rt_task_release(&p.task);
    /* The teardown expects an open runtime. */
    assert_int_equal(rt_runtime_init(&fx->rt, &fx->loop), 0);
    fx->runtime_closed = 0;
}

typedef struct closer {
    probe p;
    probe after; /* started by p's callback, after the close was requested */
    rt_fixture *fx;
} closer;

static void close_in_cb(rt_task *t, int status)
{
    closer *c = rt_container_of(t, closer, p.task);

    (void)status;
    rt_runtime_close(&c->fx->rt, fixture_runtime_closed);
    rt_task_start(&c->after.task, NULL, probe_cb);
}

/* Closing from inside a delivery still lets that batch, and what it starts, be delivered. */
static void test_runtime_close_inside_delivery(void **state)
{
    rt_fixture *fx = *state;
    closer c;

    c.fx = fx;
    probe_init(&c.p, &fx->rt, PROBE_IMMEDIATE, 0);
    probe_init(&c.after, &fx->rt, PROBE_IMMEDIATE, 0);
    rt_task_start(&c.p.task, NULL, close_in_cb);
    run_all(fx);
    assert_int_equal(c.after.delivered, 1);
    assert_int_equal(fx->runtime_closed, 1);
    rt_task_release(&c.p.task);
    rt_task_release(&c.after.task);
    assert_int_equal(rt_runtime_init(&fx->rt, &fx->loop), 0);
    fx->runtime_closed = 0;
}

/* Completion order follows completion, not start order, and live_tasks tracks the gap. */
static void test_delivery_order_and_counters(void **state)
{
    rt_fixture *fx = *state;
    probe p[3];
    int clock = 0;

    for (int i = 0; i < 3; i++) {
        probe_init(&p[i], &fx->rt, PROBE_MANUAL, 0);
        p[i].clock = &clock;
        rt_task_start(&p[i].task, NULL, probe_cb);
    }
    assert_int_equal(fx->rt.live_tasks, 3);
    probe_finish(&p[2], 0);
    probe_finish(&p[0], 0);
    run_once(fx);
    assert_int_equal(fx->rt.live_tasks, 1);
    probe_finish(&p[1], 0);
    run_all(fx);
    assert_int_equal(p[2].order, 1);
    assert_int_equal(p[0].order, 2);
    assert_int_equal(p[1].order, 3);
    for (int i = 0; i < 3; i++)
        rt_task_release(&p[i].task);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        RT_FIXTURE_TEST(test_never_completes_inside_start),
        RT_FIXTURE_TEST(test_start_error_is_delivered),
        RT_FIXTURE_TEST(test_cancel_before_start),
        RT_FIXTURE_TEST(test_cancel_after_completion),
        RT_FIXTURE_TEST(test_cancel_running_through_signal),
        RT_FIXTURE_TEST(test_start_with_fired_signal),
        RT_FIXTURE_TEST(test_guards_newest_first_every_path),
        RT_FIXTURE_TEST(test_guard_arm_disarm),
        RT_FIXTURE_TEST(test_cancel_during_guard),
        RT_FIXTURE_TEST(test_release_inside_callback),
        RT_FIXTURE_TEST(test_free_inside_callback),
        RT_FIXTURE_TEST(test_post_queue),
        RT_FIXTURE_TEST(test_runtime_close_drains),
        RT_FIXTURE_TEST(test_runtime_close_inside_delivery),
        RT_FIXTURE_TEST(test_delivery_order_and_counters),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
