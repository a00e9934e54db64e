/* SPDX-License-Identifier: MIT */
/*
 * bench_runtime.c - what the task runtime costs per operation, on one loop and one core.
 *
 * Each case runs batches of operations to completion on a private loop and reports nanoseconds
 * per operation as the median of several rounds (shared machines are noisy; the median is what
 * a reader can reproduce). Nothing is allocated per task: tasks live in arrays made up front,
 * which is how the runtime is meant to be used (embedded in the caller's state).
 *
 * Cases:
 *  - task:   a trivial task started and delivered (start completes at once; the cost is the
 *            state machine, the post queue and the callback);
 *  - sleep0: an embedded rt_sleep of 0 ms (adds a libuv timer handle opened and closed per task);
 *  - join:   a join of 1,000 trivial tasks, per join;
 *  - scope:  a scope opened, one trivial task spawned into it, the scope closed and completed;
 *  - cancel: a signal fired with 1,000 running tasks listening, per task cancelled.
 *
 * Usage: bench_runtime [rounds] (default 7). Build with CMAKE_BUILD_TYPE=Release.
 */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>

#include "runtime/join.h"
#include "runtime/runtime.h"
#include "runtime/scope.h"
#include "runtime/task.h"
#include "runtime/work.h"

#define BATCH       10000
#define JOIN_N      1000
#define JOIN_ROUNDS 10

static uv_loop_t loop;
static rt_runtime rt;
static uint64_t delivered;

static int now_start(rt_task *t)
{
    rt_task_complete(t, 0);
    return 0;
}

static void stop_cancel(rt_task *t, int reason)
{
    rt_task_complete(t, reason);
}

static int wait_start(rt_task *t)
{
    (void)t;
    return 0;
}

static const rt_task_vtable now_vt = {.name = "now", .start = now_start};
static const rt_task_vtable wait_vt = {.name = "wait", .start = wait_start, .cancel = stop_cancel};

static void count_cb(rt_task *t, int status)
{
    (void)status;
    delivered++;
    rt_task_release(t);
}

static rt_task tasks[BATCH];
static rt_sleep sleeps[BATCH];
static rt_scope scopes[BATCH];

static void bench_task(void)
{
    for (int i = 0; i < BATCH; i++) {
        rt_task_init(&tasks[i], &rt, &now_vt);
        rt_task_start(&tasks[i], NULL, count_cb);
    }
    uv_run(&loop, UV_RUN_DEFAULT);
}

static void bench_sleep0(void)
{
    for (int i = 0; i < BATCH; i++) {
        rt_sleep_init(&sleeps[i], &rt, 0, NULL);
        rt_task_start(&sleeps[i].task, NULL, count_cb);
    }
    uv_run(&loop, UV_RUN_DEFAULT);
}

static void bench_join(void)
{
    static rt_task *ptrs[JOIN_N];
    rt_join j;

    for (int r = 0; r < JOIN_ROUNDS; r++) {
        for (int i = 0; i < JOIN_N; i++) {
            rt_task_init(&tasks[i], &rt, &now_vt);
            ptrs[i] = &tasks[i];
        }
        rt_join_init(&j, &rt, ptrs, JOIN_N, RT_JOIN_ALL);
        rt_task_start(&j.task, NULL, count_cb);
        uv_run(&loop, UV_RUN_DEFAULT);
        for (int i = 0; i < JOIN_N; i++)
            rt_task_release(&tasks[i]);
    }
}

static void scope_done(rt_scope *s)
{
    (void)s;
    delivered++;
}

static void bench_scope(void)
{
    for (int i = 0; i < BATCH; i++) {
        rt_scope_init(&scopes[i], &rt, NULL, "bench");
        rt_task_init(&tasks[i], &rt, &now_vt);
        rt_scope_spawn(&scopes[i], &tasks[i], NULL);
        rt_scope_close(&scopes[i], scope_done);
    }
    uv_run(&loop, UV_RUN_DEFAULT);
}

static void bench_cancel(void)
{
    rt_cancel sig;

    rt_cancel_init(&sig, NULL);
    for (int i = 0; i < JOIN_N; i++) {
        rt_task_init(&tasks[i], &rt, &wait_vt);
        rt_task_start(&tasks[i], &sig, count_cb);
    }
    rt_cancel_fire(&sig, UV_ECANCELED);
    uv_run(&loop, UV_RUN_DEFAULT);
    rt_cancel_close(&sig);
}

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a;
    uint64_t y = *(const uint64_t *)b;

    return x < y ? -1 : x > y;
}

static void report(const char *name, void (*fn)(void), int ops, const char *unit, int rounds)
{
    uint64_t ns[64];
    uint64_t before;

    fn(); /* warm-up: page in the arrays, settle the caches */
    for (int r = 0; r < rounds; r++) {
        uint64_t t0;

        before = delivered;
        t0 = uv_hrtime();
        fn();
        ns[r] = uv_hrtime() - t0;
        if (delivered == before) {
            fprintf(stderr, "%s: nothing was delivered\n", name);
            exit(1);
        }
    }
    qsort(ns, (size_t)rounds, sizeof(ns[0]), cmp_u64);
    printf("%-8s %10.1f ns per %s (median of %d rounds of %d)\n", name,
           (double)ns[rounds / 2] / ops, unit, rounds, ops);
}

int main(int argc, char **argv)
{
    int rounds = argc > 1 ? atoi(argv[1]) : 7;

    if (rounds < 1 || rounds > 64)
        rounds = 7;
    if (uv_loop_init(&loop) != 0 || rt_runtime_init(&rt, &loop) != 0)
        return 1;
    report("task", bench_task, BATCH, "task spawned+completed", rounds);
    report("sleep0", bench_sleep0, BATCH, "rt_sleep(0) spawned+completed", rounds);
    report("join", bench_join, JOIN_ROUNDS, "join of 1,000 tasks", rounds);
    report("scope", bench_scope, BATCH, "scope open+spawn+close", rounds);
    report("cancel", bench_cancel, JOIN_N, "running task cancelled by a signal", rounds);
    rt_runtime_close(&rt, NULL);
    uv_run(&loop, UV_RUN_DEFAULT);
    return uv_loop_close(&loop) == 0 ? 0 : 1;
}
