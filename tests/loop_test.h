/* SPDX-License-Identifier: MIT */
/*
 * loop_test.h - the private loop that the runtime's and the driver's fixtures both stand on.
 *
 * Each test gets its own uv_loop_t with an rt_runtime on it (CONTRIBUTING.md, "Tests"). Closing it
 * is the leak check the fixtures share: what is still queued is delivered, the runtime closes,
 * any other handle still open fails the test (a task that did not close its timer, a deadline
 * nobody closed), the loop runs dry, and uv_loop_close() must return 0 with no live task.
 *
 * The fixtures keep their own structs and runtime-closed callbacks: only the steps live here.
 */
#ifndef HS_TEST_LOOP_TEST_H
#define HS_TEST_LOOP_TEST_H

#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <uv.h>

#include "runtime/runtime.h"

/* uv_walk callback: counts, in *(int *)arg, the handles not already closing, and closes them. */
static inline void loop_test_count_open(uv_handle_t *h, void *arg)
{
    if (!uv_is_closing(h)) {
        (*(int *)arg)++;
        uv_close(h, NULL);
    }
}

/* Initializes loop and a runtime on it, failing the test if either cannot start. */
static inline void loop_test_open(uv_loop_t *loop, rt_runtime *rt)
{
    assert_int_equal(uv_loop_init(loop), 0);
    assert_int_equal(rt_runtime_init(rt, loop), 0);
}

/*
 * Closes rt with closed_cb (which must bump *runtime_closed) and then loop, failing the test on
 * a handle left open, a runtime not closed exactly once, a live task, or a loop that will not
 * close.
 */
static inline void loop_test_close(uv_loop_t *loop, rt_runtime *rt,
                                   void (*closed_cb)(rt_runtime *rt), const int *runtime_closed)
{
    int leftovers = 0;

    /* Anything the test left queued is delivered before the runtime's handle closes. */
    uv_run(loop, UV_RUN_DEFAULT);
    rt_runtime_close(rt, closed_cb);
    uv_walk(loop, loop_test_count_open, &leftovers);
    uv_run(loop, UV_RUN_DEFAULT);
    assert_int_equal(leftovers, 0);
    assert_int_equal(*runtime_closed, 1);
    assert_int_equal(rt->live_tasks, 0);
    assert_int_equal(uv_loop_close(loop), 0);
}

#endif /* HS_TEST_LOOP_TEST_H */
