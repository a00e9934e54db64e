/* SPDX-License-Identifier: MIT */
/*
 * race.c - a task raced against a signal, biased towards the signal.
 *
 * The inner task is started without a signal of its own: the race forwards both ways of being
 * stopped to it (its signal firing, and the race task itself being cancelled), so the inner task
 * has exactly one source of cancellation. The bias is decided at delivery of the inner task, not
 * at its completion: if the signal has fired by the time the inner completion is delivered, the
 * signal wins, because a caller that asked to stop must be able to rely on being told "stopped"
 * once it saw the signal fire, whatever the timing inside one loop turn.
 *
 * A signal that has already fired when the race starts wins at once; the inner task is then
 * started in the cancelled state, so it completes through its normal path without running.
 */
#include "race.h"

static void inner_done(rt_task *inner, int status)
{
    rt_race *r = inner->owner;

    r->inner_status = status;
    /* Listening until now, not until the inner completion, is what makes the signal win ties. */
    rt_cancel_unlisten(&r->on_signal);
    rt_task_complete(&r->task, r->signal_won ? r->signal->reason : status);
}

static void on_signal(rt_cancel_listener *l, int reason)
{
    rt_race *r = rt_container_of(l, rt_race, on_signal);

    r->signal_won = true;
    rt_task_cancel(r->inner, reason);
}

static int race_start(rt_task *t)
{
    rt_race *r = rt_container_of(t, rt_race, task);
    int fired;

    if (r->signal != NULL) {
        fired = rt_cancel_listen(r->signal, &r->on_signal, on_signal);
        if (fired != 0) {
            r->signal_won = true;
            rt_task_cancel(r->inner, fired);
        }
    }
    r->inner->owner = r;
    rt_task_start(r->inner, NULL, inner_done);
    return 0;
}

static void race_cancel(rt_task *t, int reason)
{
    rt_race *r = rt_container_of(t, rt_race, task);

    rt_task_cancel(r->inner, reason);
}

static const rt_task_vtable race_vt = {
    .name = "race",
    .start = race_start,
    .cancel = race_cancel,
    .release = NULL,
};

void rt_race_init(rt_race *r, rt_runtime *rt, rt_task *inner, rt_cancel *signal)
{
    rt_task_init(&r->task, rt, &race_vt);
    r->inner_status = 0;
    r->signal_won = false;
    r->inner = inner;
    r->signal = signal;
    rt_cancel_listener_init(&r->on_signal);
}
