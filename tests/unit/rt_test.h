/* SPDX-License-Identifier: MIT */
/*
 * rt_test.h - what the runtime's unit tests share: a private loop per test, and a probe task.
 *
 * The fixture gives each test its own uv_loop_t and rt_runtime. Its teardown is where most leak
 * checks live: it closes the runtime, fails if any other handle is still open (a task that did
 * not close its timer, a deadline nobody closed), runs the loop dry and fails unless
 * uv_loop_close() returns 0 and the runtime counts no live task.
 *
 * The probe is a task whose behaviour the test scripts (finish inside start, fail start, finish
 * on cancel or not) and which counts everything that happens to it, so tests assert through
 * counters rather than by peeking at runtime internals.
 */
#ifndef HS_TEST_RT_TEST_H
#define HS_TEST_RT_TEST_H

#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdlib.h>
#include <string.h>

#include "loop_test.h"
#include "runtime/runtime.h"
#include "runtime/task.h"

typedef struct rt_fixture {
    uv_loop_t loop;
    rt_runtime rt;
    int runtime_closed;
} rt_fixture;

static inline void fixture_runtime_closed(rt_runtime *rt)
{
    rt_fixture *fx = rt_container_of(rt, rt_fixture, rt);

    fx->runtime_closed++;
}

static inline int fixture_setup(void **state)
{
    rt_fixture *fx = calloc(1, sizeof(*fx));

    assert_non_null(fx);
    loop_test_open(&fx->loop, &fx->rt);
    *state = fx;
    return 0;
}

static inline int fixture_teardown(void **state)
{
    rt_fixture *fx = *state;

    loop_test_close(&fx->loop, &fx->rt, fixture_runtime_closed, &fx->runtime_closed);
    free(fx);
    return 0;
}

#define RT_FIXTURE_TEST(fn) cmocka_unit_test_setup_teardown(fn, fixture_setup, fixture_teardown)

/* How a probe behaves when started and when cancelled. */
enum probe_mode {
    PROBE_MANUAL = 0,  /* completes only when the test calls probe_finish() */
    PROBE_IMMEDIATE,   /* completes inside start with p->result */
    PROBE_START_FAILS, /* start returns p->result (negative) */
};

typedef struct probe {
    rt_task task;
    int mode;
    int result;         /* the status used by PROBE_IMMEDIATE / PROBE_START_FAILS */
    bool deaf;          /* ignores cancellation (vt->cancel does nothing) */
    int starts;         /* vt->start calls */
    int cancels;        /* vt->cancel calls */
    int last_reason;    /* the reason given to vt->cancel */
    int releases;       /* vt->release calls */
    int delivered;      /* completion callbacks seen by probe_cb */
    int status;         /* the status given to probe_cb */
    int order;          /* value of *clock when delivered, to check ordering */
    int *clock;         /* optional shared counter bumped at every delivery */
    bool release_in_cb; /* probe_cb releases the task from inside its own callback */
} probe;

static inline int probe_start(rt_task *t)
{
    probe *p = rt_container_of(t, probe, task);

    p->starts++;
    if (p->mode == PROBE_IMMEDIATE)
        rt_task_complete(t, p->result);
    else if (p->mode == PROBE_START_FAILS)
        return p->result;
    return 0;
}

static inline void probe_cancel(rt_task *t, int reason)
{
    probe *p = rt_container_of(t, probe, task);

    p->cancels++;
    p->last_reason = reason;
    if (!p->deaf)
        rt_task_complete(t, reason);
}

static inline void probe_release(rt_task *t)
{
    probe *p = rt_container_of(t, probe, task);

    assert_int_equal(t->state, RT_TASK_RELEASED);
    p->releases++;
}

static const rt_task_vtable probe_vt = {
    .name = "probe",
    .start = probe_start,
    .cancel = probe_cancel,
    .release = probe_release,
};

static inline void probe_init(probe *p, rt_runtime *rt, int mode, int result)
{
    memset(p, 0, sizeof(*p));
    rt_task_init(&p->task, rt, &probe_vt);
    p->mode = mode;
    p->result = result;
}

static inline void probe_finish(probe *p, int status)
{
    rt_task_complete(&p->task, status);
}

static inline void probe_cb(rt_task *t, int status)
{
    probe *p = rt_container_of(t, probe, task);

    assert_int_equal(t->state, RT_TASK_DELIVERED);
    p->delivered++;
    p->status = status;
    if (p->clock != NULL)
        p->order = ++*p->clock;
    if (p->release_in_cb) {
        rt_task_release(t);
        /* Deferred: the task must still be intact until this callback returns (T5). */
        assert_int_equal(p->releases, 0);
    }
}

/* Runs one loop turn without blocking: enough to deliver what is queued now. */
static inline void run_once(rt_fixture *fx)
{
    uv_run(&fx->loop, UV_RUN_NOWAIT);
}

static inline void run_all(rt_fixture *fx)
{
    uv_run(&fx->loop, UV_RUN_DEFAULT);
}

#endif /* HS_TEST_RT_TEST_H */
