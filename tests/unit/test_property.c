/* SPDX-License-Identifier: MIT */
/*
 * test_property.c - thousands of random task trees, each checked against every invariant of
 * docs/runtime.md and task.h.
 *
 * A tree nests joins (all and fail-fast), sets, bounded streams, races and scopes at random,
 * over leaves that are timers (rt_sleep, 0-3 ms, in a minority of trees) or "post" leaves that
 * succeed or fail on the next turn, inside start, or by failing start. While a tree runs, a chaos
 * driver cancels random nodes, fires the root signal, race signals, stream stop signals and the
 * tree's root scope, at random loop iterations (or times, for trees with delays).
 *
 * Invariants checked, with where:
 *  - every task completes exactly once, and every guard runs exactly once, newest first: two
 *    guards on every task, counted (guard_ran, check_tree);
 *  - a parent completes only after its children: when a node's guard runs, none of its children
 *    is still running (guard_ran), and its delivery comes after theirs (check_tree);
 *  - no callback after release: every callback asserts its node is not released (alive);
 *  - a bounded stream never exceeds its limit (stream_next, check_tree), and takes no item after
 *    its stop signal (check_tree);
 *  - a cancellation reaches every descendant: right after each cancel, every running task below
 *    the cancelled node has a cancellation request (check_cancelled);
 *  - a task cancelled before start never runs its start (check_tree);
 *  - live_tasks returns to 0, every task is released, no handle is left open, and the loop
 *    closes with uv_loop_close() == 0 (run_tree, the test's end); ASan checks leaks.
 *
 * HS_SEED replays a run (the seed is printed first); HS_TREES sets the number of trees. Trees
 * with real delays replay the same shape and schedule but not necessarily the same timing.
 */
#include "rt_test.h"

#include <inttypes.h>
#include <stdio.h>

#include "runtime/join.h"
#include "runtime/race.h"
#include "runtime/scope.h"
#include "runtime/set.h"
#include "runtime/stream.h"
#include "runtime/work.h"

#define DEFAULT_TREES 5000
#define MAX_NODES     40
#define MAX_KIDS      4
#define MAX_EVENTS    4

enum kind { K_SLEEP, K_POST, K_JOIN, K_JOIN_FF, K_SET, K_STREAM, K_RACE, K_SCOPE, K_COUNT };
enum post_mode { POST_NEXT_TURN, POST_IN_START, POST_START_FAILS };
enum event { E_CANCEL_NODE, E_FIRE_ROOT, E_FIRE_RACE, E_FIRE_STOP, E_CANCEL_SCOPES, E_COUNT };

typedef struct node node;
typedef struct tree tree;

typedef struct leaf_sleep {
    rt_sleep s;
    node *n;
} leaf_sleep;

typedef struct leaf_post {
    rt_task task;
    rt_post post;
    node *n;
} leaf_post;

struct node {
    int kind;
    tree *tr;
    node *parent;
    node *kids[MAX_KIDS];
    size_t nkids;
    rt_task *task;
    rt_guard g_old; /* pushed first: must run last */
    rt_guard g_new;
    int old_runs;
    int new_runs;
    uint64_t old_seq;
    uint64_t new_seq;
    bool delivered; /* its guards ran at delivery, not at a release before start */
    bool released;  /* leaves and wrappers: their release ran */
    bool precancelled;
    int item_calls; /* set, stream or scope callbacks received as a child */
    /* post leaves */
    int post_mode;
    int post_status;
    int starts;
    int completes;
    /* joins */
    rt_join join;
    rt_task *kid_tasks[MAX_KIDS];
    /* sets and scopes are driven by a wrapper task */
    rt_task wrap;
    rt_set set;
    size_t set_next;
    rt_scope scope;
    bool scope_open;   /* initialized and not yet completed */
    bool scope_opened; /* was ever initialized */
    int scope_closed;
    /* streams */
    rt_stream stream;
    size_t stream_next;
    rt_cancel stop;
    bool stop_fired_running;
    uint64_t started_at_stop;
    /* races */
    rt_race race;
    rt_cancel race_sig;
};

typedef struct chaos_event {
    int what;
    int iter;
    uint64_t ms;
    size_t target;
    int reason;
} chaos_event;

struct tree {
    rt_fixture *fx;
    node *nodes[MAX_NODES];
    size_t n;
    size_t reserved; /* children promised by inner nodes and not built yet */
    node *root;
    rt_cancel root_sig;
    rt_scope root_scope;
    int root_scope_closed;
    int root_delivered;
    int root_status;
    uint64_t seq;
    bool delays;
    uv_idle_t chaos;
    chaos_event ev[MAX_EVENTS];
    int open_handles;
    int nev;
    int fired;
    int iter;
    uint64_t t0;
};

static uint64_t rng_state;
static uint64_t run_seed;
static int tree_index;
static uint64_t total_tasks;
static uint64_t total_cancels;
static uint64_t total_hits; /* chaos events that found work still running */

/* xorshift64*: small, fast, and the same sequence on every platform. */
static uint64_t rnd(void)
{
    rng_state ^= rng_state >> 12;
    rng_state ^= rng_state << 25;
    rng_state ^= rng_state >> 27;
    return rng_state * 2685821657736338717ULL;
}

static int rnd_below(int n)
{
    return (int)(rnd() % (uint64_t)n);
}

#define CHECK(cond)                                                                                \
    do {                                                                                           \
        if (!(cond))                                                                               \
            fail_msg("seed %" PRIu64 " tree %d: %s (line %d)", run_seed, tree_index, #cond,        \
                     __LINE__);                                                                    \
    } while (0)

static node *node_of(rt_task *t)
{
    return t->data;
}

/* A task's storage is readable unless it is a leaf that freed itself. */
static bool task_readable(const node *n)
{
    return !((n->kind == K_SLEEP || n->kind == K_POST) && n->released);
}

static bool is_running(const node *n)
{
    return task_readable(n) &&
           (n->task->state == RT_TASK_RUNNING || n->task->state == RT_TASK_DONE);
}

static void alive(const node *n)
{
    CHECK(!n->released);
    CHECK(n->task->state != RT_TASK_RELEASED);
}

/* ---- guards ---- */

static void guard_ran(node *n, int *runs, uint64_t *seq)
{
    alive(n);
    (*runs)++;
    *seq = ++n->tr->seq;
    n->delivered = n->task->state == RT_TASK_DELIVERED;
    if (n->delivered) {
        for (size_t i = 0; i < n->nkids; i++)
            CHECK(!is_running(n->kids[i])); /* parents after children */
    }
}

static void guard_old_fn(void *arg)
{
    node *n = arg;

    guard_ran(n, &n->old_runs, &n->old_seq);
}

static void guard_new_fn(void *arg)
{
    node *n = arg;

    guard_ran(n, &n->new_runs, &n->new_seq);
}

/* ---- leaves ---- */

static void sleep_released(rt_sleep *s)
{
    leaf_sleep *ls = rt_container_of(s, leaf_sleep, s);

    CHECK(!s->timer_open);
    ls->n->released = true;
    free(ls);
}

static void post_fire(rt_post *p)
{
    leaf_post *lp = rt_container_of(p, leaf_post, post);

    lp->n->completes++;
    rt_task_complete(&lp->task, lp->n->post_status);
}

static int post_start(rt_task *t)
{
    leaf_post *lp = rt_container_of(t, leaf_post, task);
    node *n = lp->n;

    n->starts++;
    switch (n->post_mode) {
    case POST_NEXT_TURN:
        rt_post_submit(t->rt, &lp->post, post_fire);
        return 0;
    case POST_IN_START:
        n->completes++;
        rt_task_complete(t, n->post_status);
        return 0;
    default:
        return UV_EIO;
    }
}

static void post_cancel(rt_task *t, int reason)
{
    leaf_post *lp = rt_container_of(t, leaf_post, task);

    CHECK(lp->post.queued);
    rt_post_cancel(&lp->post);
    lp->n->completes++;
    rt_task_complete(t, reason);
}

static void post_release(rt_task *t)
{
    leaf_post *lp = rt_container_of(t, leaf_post, task);

    lp->n->released = true;
    free(lp);
}

static const rt_task_vtable post_vt = {
    .name = "post-leaf",
    .start = post_start,
    .cancel = post_cancel,
    .release = post_release,
};

/* ---- sets (driven by a wrapper task) ---- */

static void set_add_next(node *n)
{
    node *k = n->kids[n->set_next++];
    int err = rt_set_add(&n->set, k->task);

    /* Refused only once the set was cancelled; the child is then released, never started. */
    CHECK(err == 0 || (err == UV_ECANCELED && rt_task_is_cancel_requested(&n->set.task)));
}

static void set_item(rt_set *s, rt_task *child, int status)
{
    node *n = rt_container_of(s, node, set);
    node *k = node_of(child);

    (void)status;
    alive(n);
    alive(k);
    CHECK(child->state == RT_TASK_DELIVERED);
    k->item_calls++;
    /* The rest of the children arrive while the set runs, one per completion. */
    if (n->set_next < n->nkids) {
        set_add_next(n);
        if (n->set_next == n->nkids)
            rt_set_seal(s);
    }
}

static void set_done(rt_task *t, int status)
{
    node *n = rt_container_of(t, node, set);

    alive(n);
    CHECK(n->set.in_flight == 0);
    rt_task_release(t);
    rt_task_complete(&n->wrap, status);
}

static int set_wrap_start(rt_task *t)
{
    node *n = rt_container_of(t, node, wrap);
    size_t now = (n->nkids + 1) / 2;

    rt_set_init(&n->set, t->rt, set_item);
    rt_task_start(&n->set.task, NULL, set_done);
    while (n->set_next < now)
        set_add_next(n);
    if (n->set_next == n->nkids)
        rt_set_seal(&n->set);
    return 0;
}

static void wrap_set_cancel(rt_task *t, int reason)
{
    node *n = rt_container_of(t, node, wrap);

    rt_task_cancel(&n->set.task, reason);
}

static void wrap_release(rt_task *t)
{
    node *n = rt_container_of(t, node, wrap);

    n->released = true;
}

static const rt_task_vtable set_wrap_vt = {
    .name = "set-wrap",
    .start = set_wrap_start,
    .cancel = wrap_set_cancel,
    .release = wrap_release,
};

/* ---- scopes (driven by a wrapper task) ---- */

static void scope_kid_cb(rt_task *t, int status)
{
    node *k = node_of(t);

    (void)status;
    alive(k);
    k->item_calls++;
}

static void scope_closed(rt_scope *s)
{
    node *n = rt_container_of(s, node, scope);

    alive(n);
    n->scope_closed++;
    n->scope_open = false;
    CHECK(s->live == 0 && s->live_total == 0);
    for (size_t i = 0; i < n->nkids; i++)
        CHECK(n->kids[i]->released || n->kids[i]->task->state == RT_TASK_RELEASED);
    rt_task_complete(&n->wrap, rt_task_cancel_reason(&n->wrap));
}

static rt_scope *nearest_scope(node *n)
{
    for (node *a = n->parent; a != NULL; a = a->parent) {
        if (a->kind == K_SCOPE) {
            CHECK(a->scope_open);
            return &a->scope;
        }
    }
    return &n->tr->root_scope;
}

static int scope_wrap_start(rt_task *t)
{
    node *n = rt_container_of(t, node, wrap);
    int err;

    err = rt_scope_init(&n->scope, t->rt, nearest_scope(n), "node");
    if (err < 0) {
        CHECK(err == UV_ESHUTDOWN);
        return err;
    }
    n->scope_open = true;
    n->scope_opened = true;
    for (size_t i = 0; i < n->nkids; i++)
        CHECK(rt_scope_spawn(&n->scope, n->kids[i]->task, scope_kid_cb) == 0);
    rt_scope_close(&n->scope, scope_closed);
    return 0;
}

static void wrap_scope_cancel(rt_task *t, int reason)
{
    node *n = rt_container_of(t, node, wrap);

    rt_scope_cancel(&n->scope, reason);
}

static const rt_task_vtable scope_wrap_vt = {
    .name = "scope-wrap",
    .start = scope_wrap_start,
    .cancel = wrap_scope_cancel,
    .release = wrap_release,
};

/* ---- streams ---- */

static int stream_next(rt_stream *s, rt_task **out)
{
    node *n = rt_container_of(s, node, stream);

    alive(n);
    CHECK(s->in_flight < s->limit);
    CHECK(!rt_cancel_is_fired(&n->stop));
    if (n->stream_next == n->nkids)
        return 0;
    *out = n->kids[n->stream_next++]->task;
    return 1;
}

static void stream_item(rt_stream *s, rt_task *child, int status)
{
    node *k = node_of(child);

    (void)status;
    alive(rt_container_of(s, node, stream));
    alive(k);
    CHECK(s->in_flight < s->limit);
    k->item_calls++;
}

/* ---- building ---- */

static void push_guards(node *n)
{
    n->g_old.fn = guard_old_fn;
    n->g_old.arg = n;
    n->g_new.fn = guard_new_fn;
    n->g_new.arg = n;
    rt_task_defer(n->task, &n->g_old);
    rt_task_defer(n->task, &n->g_new);
}

static node *build(tree *tr, node *parent, int depth)
{
    rt_runtime *rt = &tr->fx->rt;
    node *n = calloc(1, sizeof(*n));
    int kind;

    CHECK(n != NULL);
    CHECK(tr->n < MAX_NODES);
    n->tr = tr;
    n->parent = parent;
    tr->nodes[tr->n++] = n;
    if (parent != NULL)
        tr->reserved--;
    /* Inner nodes only while there is depth, and room for their children besides the slots
     * already promised to nodes not built yet. */
    if (depth >= 4 || tr->n + tr->reserved + MAX_KIDS > MAX_NODES)
        kind = rnd_below(2);
    else
        kind = depth == 0 ? 2 + rnd_below(K_COUNT - 2) : rnd_below(K_COUNT);
    n->kind = kind;
    if (kind >= K_JOIN) {
        size_t want = kind == K_RACE ? 1 : (size_t)rnd_below(MAX_KIDS + 1);

        tr->reserved += want;
        for (size_t i = 0; i < want; i++)
            n->kids[n->nkids++] = build(tr, n, depth + 1);
    }
    switch (kind) {
    case K_SLEEP: {
        leaf_sleep *ls = malloc(sizeof(*ls));
        uint64_t ms = tr->delays && rnd_below(2) ? (uint64_t)rnd_below(4) : 0;

        CHECK(ls != NULL);
        ls->n = n;
        rt_sleep_init(&ls->s, rt, ms, sleep_released);
        n->task = &ls->s.task;
        break;
    }
    case K_POST: {
        leaf_post *lp = malloc(sizeof(*lp));

        CHECK(lp != NULL);
        lp->n = n;
        rt_task_init(&lp->task, rt, &post_vt);
        rt_post_init(&lp->post);
        n->post_mode = rnd_below(8) == 0   ? POST_START_FAILS
                       : rnd_below(4) == 0 ? POST_IN_START
                                           : POST_NEXT_TURN;
        n->post_status = rnd_below(6) == 0 ? UV_EIO : 0;
        n->task = &lp->task;
        break;
    }
    case K_JOIN:
    case K_JOIN_FF:
        for (size_t i = 0; i < n->nkids; i++)
            n->kid_tasks[i] = n->kids[i]->task;
        rt_join_init(&n->join, rt, n->kid_tasks, n->nkids,
                     kind == K_JOIN ? RT_JOIN_ALL : RT_JOIN_FAIL_FAST);
        n->task = &n->join.task;
        break;
    case K_SET:
        rt_task_init(&n->wrap, rt, &set_wrap_vt);
        n->task = &n->wrap;
        break;
    case K_SCOPE:
        rt_task_init(&n->wrap, rt, &scope_wrap_vt);
        n->task = &n->wrap;
        break;
    case K_STREAM:
        rt_cancel_init(&n->stop, NULL);
        rt_stream_init(&n->stream, rt, 1 + (size_t)rnd_below(3), stream_next, stream_item, &n->stop,
                       rnd_below(2) ? RT_STREAM_STOP_CANCEL : RT_STREAM_STOP_DRAIN);
        n->task = &n->stream.task;
        break;
    case K_RACE:
        rt_cancel_init(&n->race_sig, NULL);
        rt_race_init(&n->race, rt, n->kids[0]->task, &n->race_sig);
        n->task = &n->race.task;
        break;
    }
    n->task->data = n;
    push_guards(n);
    return n;
}

/* ---- chaos ---- */

/* Every task still running below n must have been asked to stop. */
static void check_cancelled(const node *n)
{
    for (size_t i = 0; i < n->nkids; i++) {
        const node *k = n->kids[i];

        if (task_readable(k) && k->task->state == RT_TASK_RUNNING)
            CHECK(rt_task_is_cancel_requested(k->task));
        check_cancelled(k);
    }
}

static void check_from(const node *n)
{
    if (task_readable(n) && n->task->state == RT_TASK_RUNNING) {
        total_hits++;
        CHECK(rt_task_is_cancel_requested(n->task));
        check_cancelled(n);
    }
}

static node *pick(tree *tr, size_t target, int kind)
{
    for (size_t i = 0; i < tr->n; i++) {
        node *n = tr->nodes[(target + i) % tr->n];

        if (kind < 0 || n->kind == kind)
            return n;
    }
    return NULL;
}

/* Prefers a node that is still running, so most cancellations meet work in progress. */
static node *pick_running(tree *tr, size_t target)
{
    for (size_t i = 0; i < tr->n; i++) {
        node *n = tr->nodes[(target + i) % tr->n];

        if (is_running(n))
            return n;
    }
    return tr->nodes[target];
}

static void check_scope_subtree(const node *n)
{
    if (n->kind == K_SCOPE && n->scope_open) {
        for (size_t i = 0; i < n->nkids; i++)
            check_from(n->kids[i]);
    }
    for (size_t i = 0; i < n->nkids; i++)
        check_scope_subtree(n->kids[i]);
}

static void fire_event(tree *tr, const chaos_event *e)
{
    node *n;

    total_cancels++;
    switch (e->what) {
    case E_CANCEL_NODE:
        n = pick_running(tr, e->target);
        if (!task_readable(n))
            break;
        if (n->task->state == RT_TASK_INIT)
            n->precancelled = true;
        rt_task_cancel(n->task, e->reason);
        check_from(n);
        break;
    case E_FIRE_ROOT:
        rt_cancel_fire(&tr->root_sig, e->reason);
        check_from(tr->root);
        break;
    case E_FIRE_RACE:
        n = pick(tr, e->target, K_RACE);
        if (n == NULL)
            break;
        rt_cancel_fire(&n->race_sig, e->reason);
        if (n->race.task.state == RT_TASK_RUNNING)
            check_from(n->kids[0]);
        break;
    case E_FIRE_STOP:
        n = pick(tr, e->target, K_STREAM);
        if (n == NULL)
            break;
        if (n->stream.task.state == RT_TASK_RUNNING && !rt_cancel_is_fired(&n->stop)) {
            n->stop_fired_running = true;
            n->started_at_stop = n->stream.started;
        }
        rt_cancel_fire(&n->stop, e->reason);
        if (n->stream.stop_mode == RT_STREAM_STOP_CANCEL &&
            n->stream.task.state == RT_TASK_RUNNING) {
            for (size_t i = 0; i < n->nkids; i++)
                check_from(n->kids[i]);
        }
        break;
    default:
        rt_scope_cancel(&tr->root_scope, e->reason);
        check_scope_subtree(tr->root);
        break;
    }
}

static void on_chaos(uv_idle_t *h)
{
    tree *tr = rt_container_of(h, tree, chaos);

    tr->iter++;
    for (int i = 0; i < tr->nev; i++) {
        chaos_event *e = &tr->ev[i];

        if (e->what >= 0 && tr->iter >= e->iter && uv_now(h->loop) >= tr->t0 + e->ms) {
            fire_event(tr, e);
            e->what = -1;
            tr->fired++;
        }
    }
    if (tr->fired == tr->nev)
        uv_idle_stop(h);
}

/* ---- one tree ---- */

static void root_cb(rt_task *t, int status)
{
    node *n = node_of(t);

    alive(n);
    n->tr->root_delivered++;
    n->tr->root_status = status;
    rt_task_release(t); /* deferred until this callback returns (T5) */
    CHECK(t->state == RT_TASK_DELIVERED);
}

static void root_scope_closed(rt_scope *s)
{
    tree *tr = rt_container_of(s, tree, root_scope);

    tr->root_scope_closed++;
}

static void count_open(uv_handle_t *h, void *arg)
{
    tree *tr = arg;

    if (h != (uv_handle_t *)&tr->fx->rt.idle && !uv_is_closing(h))
        tr->open_handles++;
}

static void check_tree(tree *tr)
{
    for (size_t i = 0; i < tr->n; i++) {
        node *n = tr->nodes[i];

        /* Everything not owned by a combinator is released here; unstarted ones run guards. */
        if (task_readable(n) && n->task->state != RT_TASK_RELEASED) {
            CHECK(n->task->state == RT_TASK_INIT || n->task->state == RT_TASK_DELIVERED);
            rt_task_release(n->task);
        }
    }
    for (size_t i = 0; i < tr->n; i++) {
        node *n = tr->nodes[i];

        CHECK(n->old_runs == 1 && n->new_runs == 1);
        CHECK(n->new_seq < n->old_seq);
        CHECK(!task_readable(n) || n->task->state == RT_TASK_RELEASED);
        if (n->kind == K_SLEEP || n->kind == K_POST || n->kind == K_SET || n->kind == K_SCOPE)
            CHECK(n->released);
        if (n->kind == K_POST) {
            CHECK(n->completes <= 1 && n->starts <= 1);
            if (n->precancelled)
                CHECK(n->starts == 0);
        }
        if (n->parent != NULL && n->delivered && n->parent->delivered)
            CHECK(n->old_seq < n->parent->new_seq);
        /* Owned children get exactly one item callback when delivered, none otherwise. */
        if (n->parent != NULL &&
            (n->parent->kind == K_SET || n->parent->kind == K_STREAM || n->parent->kind == K_SCOPE))
            CHECK(n->item_calls == (n->delivered ? 1 : 0));
        if (n->kind == K_STREAM) {
            CHECK(n->stream.max_in_flight <= n->stream.limit);
            if (n->stop_fired_running)
                CHECK(n->stream.started == n->started_at_stop);
        }
        if (n->kind == K_SCOPE)
            CHECK(n->scope_closed == (n->scope_opened ? 1 : 0));
    }
}

static void free_tree(tree *tr)
{
    for (size_t i = 0; i < tr->n; i++) {
        node *n = tr->nodes[i];

        if (n->kind == K_STREAM)
            rt_cancel_close(&n->stop);
        if (n->kind == K_RACE)
            rt_cancel_close(&n->race_sig);
        free(n);
    }
}

static void run_tree(rt_fixture *fx)
{
    tree *tr = calloc(1, sizeof(*tr));
    rt_runtime *rt = &fx->rt;

    CHECK(tr != NULL);
    tr->fx = fx;
    tr->delays = rnd_below(8) == 0;
    rt_cancel_init(&tr->root_sig, NULL);
    CHECK(rt_scope_init(&tr->root_scope, rt, NULL, "tree") == 0);
    tr->root = build(tr, NULL, 0);
    total_tasks += tr->n;
    tr->nev = rnd_below(MAX_EVENTS + 1);
    for (int i = 0; i < tr->nev; i++) {
        tr->ev[i].what = rnd_below(E_COUNT);
        tr->ev[i].iter = tr->delays ? 0 : rnd_below(5);
        tr->ev[i].ms = tr->delays ? (uint64_t)rnd_below(4) : 0;
        tr->ev[i].target = (size_t)rnd_below((int)tr->n);
        tr->ev[i].reason = rnd_below(2) ? UV_ECANCELED : UV_ETIMEDOUT;
    }
    uv_update_time(&fx->loop);
    tr->t0 = uv_now(&fx->loop);
    CHECK(uv_idle_init(&fx->loop, &tr->chaos) == 0);
    if (tr->nev > 0)
        uv_idle_start(&tr->chaos, on_chaos);
    rt_task_start(tr->root->task, &tr->root_sig, root_cb);
    CHECK(tr->root_delivered == 0); /* T2 */
    uv_run(&fx->loop, UV_RUN_DEFAULT);

    CHECK(tr->fired == tr->nev);
    CHECK(tr->root_delivered == 1);
    CHECK(tr->root_status <= 0);
    CHECK(rt->live_tasks == 0);
    check_tree(tr);
    rt_scope_close(&tr->root_scope, root_scope_closed);
    uv_close((uv_handle_t *)&tr->chaos, NULL);
    uv_run(&fx->loop, UV_RUN_DEFAULT);
    CHECK(tr->root_scope_closed == 1);
    uv_walk(&fx->loop, count_open, tr);
    CHECK(tr->open_handles == 0);
    rt_cancel_close(&tr->root_sig);
    free_tree(tr);
    free(tr);
}

static uint64_t env_u64(const char *name, uint64_t dflt)
{
    const char *v = getenv(name);

    return v != NULL && *v != '\0' ? strtoull(v, NULL, 0) : dflt;
}

static void test_random_trees(void **state)
{
    rt_fixture *fx = *state;
    uint64_t trees = env_u64("HS_TREES", DEFAULT_TREES);

    run_seed = env_u64("HS_SEED", (uint64_t)uv_hrtime() ^ (uint64_t)uv_os_getpid());
    if (run_seed == 0)
        run_seed = 1;
    rng_state = run_seed;
    printf("property: seed %" PRIu64 " (replay with HS_SEED=%" PRIu64 "), %" PRIu64 " trees\n",
           run_seed, run_seed, trees);
    fflush(stdout);
    for (tree_index = 0; (uint64_t)tree_index < trees; tree_index++)
        run_tree(fx);
    printf("property: %" PRIu64 " tasks in %" PRIu64 " trees, %" PRIu64 " chaos events (%" PRIu64
           " cancelled running work), all invariants held\n",
           total_tasks, trees, total_cancels, total_hits);
    CHECK(fx->rt.tasks_started == fx->rt.tasks_completed);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        RT_FIXTURE_TEST(test_random_trees),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
