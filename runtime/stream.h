/* SPDX-License-Identifier: MIT */
/*
 * stream.h - a bounded stream: pull tasks from a source, keep at most N in flight, stream the
 * results as they finish (buffer_unordered(N) with take_until(stop)).
 *
 * The stream asks its source for the next task only when fewer than `limit` are in flight, so
 * the source can be lazy (a cursor over an array of ids) and memory stays proportional to the
 * limit, not to the input. Each child's completion goes to the item callback, then the stream
 * releases the child (the stream owns what its source gives it).
 *
 * The stop signal: once it fires, the source is never asked again. What happens to the children
 * in flight is the caller's choice at init: RT_STREAM_STOP_DRAIN lets them finish,
 * RT_STREAM_STOP_CANCEL cancels them. Cancelling the stream task itself always cancels them.
 *
 * The stream is a task; it completes when the source is exhausted (or stopped, or failed) and
 * nothing is in flight, with 0, the source's error, or the cancellation reason. The counters tell
 * how far it got, which is what a batch reports back.
 */
#ifndef RT_STREAM_H
#define RT_STREAM_H

#include "task.h"

typedef struct rt_stream rt_stream;

/*
 * Produces the next child into *out (initialized, in INIT). Returns 1 when it produced one,
 * 0 when the source is exhausted, or a negative error (the stream stops and reports it).
 */
typedef int (*rt_stream_next_cb)(rt_stream *s, rt_task **out);
/* Called once per child, in completion order; child is borrowed until the callback returns. */
typedef void (*rt_stream_item_cb)(rt_stream *s, rt_task *child, int status);

enum { RT_STREAM_STOP_DRAIN = 0, RT_STREAM_STOP_CANCEL = 1 };

struct rt_stream {
    rt_task task;         /* start, cancel and release this */
    size_t limit;         /* read-only */
    size_t in_flight;     /* read-only */
    size_t max_in_flight; /* read-only: the high-water mark (never above limit) */
    uint64_t started;     /* read-only: children started */
    uint64_t succeeded;   /* read-only: children that completed with 0 */
    uint64_t failed;      /* read-only: children that completed with another error */
    uint64_t cancelled;   /* read-only: children that completed with UV_ECANCELED/UV_ETIMEDOUT */
    bool stopped;         /* read-only: the stop signal fired before the source ran out */
    /* private */
    rt_stream_next_cb next;
    rt_stream_item_cb item_cb;
    rt_cancel *stop;
    rt_cancel_listener on_stop;
    rt_cancel signal; /* children's signal */
    rt_list children;
    int stop_mode;
    int error;
    bool exhausted;
    bool pulling;
};

/**
 * Initializes s. limit >= 1. stop (borrowed until s completes; may be NULL) is the "take no new
 * item" signal and stop_mode says what happens to the children in flight when it fires.
 * Never allocates, never fails.
 */
void rt_stream_init(rt_stream *s, rt_runtime *rt, size_t limit, rt_stream_next_cb next,
                    rt_stream_item_cb item_cb, rt_cancel *stop, int stop_mode);

#endif /* RT_STREAM_H */
