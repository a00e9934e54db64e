/* SPDX-License-Identifier: MIT */
/*
 * race.h - a task raced against a cancellation signal, the signal winning ties
 * (select! { biased; shutdown => ..., work => ... }).
 *
 * When the signal fires, the inner task is cancelled, and the race still waits for the inner
 * completion (no task outlives its parent); the race then completes with the signal's reason.
 * When the inner task completes first, the race completes with its status, unless the signal
 * fired before that completion was delivered: a tie, which the signal wins. Either way the inner
 * status is kept, so a caller can tell "cancelled, and the work did not happen" from "cancelled,
 * but the work had already finished" (a COMMIT that was sent, for instance).
 *
 * The race does not own the inner task and never releases it.
 */
#ifndef RT_RACE_H
#define RT_RACE_H

#include "task.h"

typedef struct rt_race {
    rt_task task;     /* start, cancel and release this */
    int inner_status; /* read-only: the inner task's status, once it completed */
    bool signal_won;  /* read-only: the race reports the signal's reason */
    /* private */
    rt_task *inner;
    rt_cancel *signal;
    rt_cancel_listener on_signal;
} rt_race;

/**
 * Initializes r to run inner (borrowed until r's completion is delivered; in INIT) against
 * signal (borrowed likewise). Never allocates, never fails.
 */
void rt_race_init(rt_race *r, rt_runtime *rt, rt_task *inner, rt_cancel *signal);

#endif /* RT_RACE_H */
