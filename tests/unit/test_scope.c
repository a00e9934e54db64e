/* SPDX-License-Identifier: MIT */
/*
 * test_scope.c - structured concurrency: rules S1-S5 of scope.h.
 */
#include "rt_test.h"

#include "runtime/scope.h"

typedef struct scope_case {
    rt_scope s;
    int closed;
    int order; /* *clock when the close callback ran */
    int *clock;
} scope_case;

static void scope_closed(rt_scope *s)
{
    scope_case *c = rt_container_of(s, scope_case, s);

    c->closed++;
    if (c->clock != NULL)
        c->order = ++*c->clock;
}

/* S1: the close callback comes after every child was delivered, on a later turn than close. */
static void test_close_waits_for_children(void **state)
{
    rt_fixture *fx = *state;
    scope_case c = {0};
    probe p[3];
    int clock = 0;

    c.clock = &clock;
    assert_int_equal(rt_scope_init(&c.s, &fx->rt, NULL, "root"), 0);
    for (int i = 0; i < 3; i++) {
        probe_init(&p[i], &fx->rt, PROBE_MANUAL, 0);
        p[i].clock = &clock;
        assert_int_equal(rt_scope_spawn(&c.s, &p[i].task, probe_cb), 0);
    }
    assert_int_equal(c.s.live, 3);
    assert_int_equal(c.s.spawned, 3);
    rt_scope_close(&c.s, scope_closed);
    probe_finish(&p[1], 0);
    run_once(fx);
    assert_int_equal(c.closed, 0);
    assert_int_equal(p[1].releases, 1); /* the scope releases what it owns */
    probe_finish(&p[0], 0);
    probe_finish(&p[2], UV_EIO);
    run_all(fx);
    assert_int_equal(c.closed, 1);
    assert_int_equal(c.order, 4);
    assert_int_equal(c.s.live, 0);
    for (int i = 0; i < 3; i++) {
        assert_int_equal(p[i].delivered, 1);
        assert_int_equal(p[i].releases, 1);
    }
}

/* An empty scope still completes from the loop, never inside rt_scope_close (rule 7.2). */
static void test_close_empty_is_posted(void **state)
{
    rt_fixture *fx = *state;
    scope_case c = {0};

    assert_int_equal(rt_scope_init(&c.s, &fx->rt, NULL, "empty"), 0);
    rt_scope_close(&c.s, scope_closed);
    assert_int_equal(c.closed, 0);
    assert_true(rt_scope_is_closing(&c.s));
    run_all(fx);
    assert_int_equal(c.closed, 1);
}

/* S3: a closing scope refuses new tasks (released at once, callback never called) and scopes. */
static void test_refuses_spawn_while_closing(void **state)
{
    rt_fixture *fx = *state;
    scope_case c = {0};
    scope_case late = {0};
    probe busy;
    probe refused;

    assert_int_equal(rt_scope_init(&c.s, &fx->rt, NULL, "root"), 0);
    probe_init(&busy, &fx->rt, PROBE_MANUAL, 0);
    assert_int_equal(rt_scope_spawn(&c.s, &busy.task, probe_cb), 0);
    rt_scope_close(&c.s, scope_closed);
    probe_init(&refused, &fx->rt, PROBE_IMMEDIATE, 0);
    assert_int_equal(rt_scope_spawn(&c.s, &refused.task, probe_cb), UV_ESHUTDOWN);
    assert_int_equal(refused.releases, 1);
    assert_int_equal(rt_scope_init(&late.s, &fx->rt, &c.s, "late"), UV_ESHUTDOWN);
    probe_finish(&busy, 0);
    run_all(fx);
    assert_int_equal(refused.starts, 0);
    assert_int_equal(refused.delivered, 0);
    assert_int_equal(c.s.spawned, 1);
    assert_int_equal(c.closed, 1);
}

/* S1, S2, S5: cancelling the middle of root > mid > leaf reaches mid and leaf, not root. */
static void test_nested_cancel_from_middle(void **state)
{
    rt_fixture *fx = *state;
    scope_case root = {0};
    scope_case mid = {0};
    scope_case leaf = {0};
    probe pr;
    probe pm;
    probe pl[2];
    int clock = 0;

    root.clock = mid.clock = leaf.clock = &clock;
    assert_int_equal(rt_scope_init(&root.s, &fx->rt, NULL, "root"), 0);
    assert_int_equal(rt_scope_init(&mid.s, &fx->rt, &root.s, "mid"), 0);
    assert_int_equal(rt_scope_init(&leaf.s, &fx->rt, &mid.s, "leaf"), 0);
    probe_init(&pr, &fx->rt, PROBE_MANUAL, 0);
    probe_init(&pm, &fx->rt, PROBE_MANUAL, 0);
    rt_scope_spawn(&root.s, &pr.task, probe_cb);
    rt_scope_spawn(&mid.s, &pm.task, probe_cb);
    for (int i = 0; i < 2; i++) {
        probe_init(&pl[i], &fx->rt, PROBE_MANUAL, 0);
        rt_scope_spawn(&leaf.s, &pl[i].task, probe_cb);
    }
    assert_int_equal(root.s.live, 1);
    assert_int_equal(root.s.live_total, 4);
    assert_int_equal(mid.s.live_total, 3);
    assert_int_equal(leaf.s.live_total, 2);

    rt_scope_close(&root.s, scope_closed);
    rt_scope_close(&mid.s, scope_closed);
    rt_scope_close(&leaf.s, scope_closed);
    rt_scope_cancel(&mid.s, UV_ETIMEDOUT);
    assert_int_equal(pr.cancels, 0);
    assert_int_equal(pm.cancels, 1);
    assert_int_equal(pl[0].cancels, 1);
    assert_int_equal(pl[1].cancels, 1);
    run_all(fx);
    /* Leaf, then mid, completed bottom up; root still waits for its own task. */
    assert_int_equal(leaf.closed, 1);
    assert_int_equal(mid.closed, 1);
    assert_int_equal(leaf.order, 1);
    assert_int_equal(mid.order, 2);
    assert_int_equal(root.closed, 0);
    assert_int_equal(root.s.live_total, 1);
    assert_int_equal(mid.s.cancelled, 1);
    assert_int_equal(leaf.s.cancelled, 2);
    assert_int_equal(pl[0].status, UV_ETIMEDOUT);
    probe_finish(&pr, 0);
    run_all(fx);
    assert_int_equal(root.closed, 1);
    assert_int_equal(root.order, 3);
    assert_int_equal(root.s.cancelled, 0);
    assert_int_equal(root.s.live_total, 0);
}

/* S2: a task spawned into an already cancelled scope completes with the reason, unstarted. */
static void test_spawn_into_cancelled_scope(void **state)
{
    rt_fixture *fx = *state;
    scope_case c = {0};
    probe p;

    assert_int_equal(rt_scope_init(&c.s, &fx->rt, NULL, "root"), 0);
    rt_scope_cancel(&c.s, 0);
    probe_init(&p, &fx->rt, PROBE_IMMEDIATE, 0);
    assert_int_equal(rt_scope_spawn(&c.s, &p.task, probe_cb), 0);
    rt_scope_close(&c.s, scope_closed);
    run_all(fx);
    assert_int_equal(p.starts, 0);
    assert_int_equal(p.status, UV_ECANCELED);
    assert_int_equal(c.s.cancelled, 1);
    assert_int_equal(c.closed, 1);
}

typedef struct scope_guard {
    rt_guard g;
    int id;
    int *log;
    int *n;
    scope_case *c;
} scope_guard;

static void scope_guard_run(void *arg)
{
    scope_guard *g = arg;

    assert_int_equal(g->c->closed, 0); /* guards run just before the close callback */
    assert_int_equal(g->c->s.live, 0);
    g->log[(*g->n)++] = g->id;
}

/* S4: scope guards run exactly once, newest first, just before the close callback. */
static void test_scope_guards(void **state)
{
    rt_fixture *fx = *state;
    scope_case c = {0};
    scope_guard g[3];
    int log[4];
    int n = 0;
    probe p;

    assert_int_equal(rt_scope_init(&c.s, &fx->rt, NULL, "root"), 0);
    for (int i = 0; i < 3; i++) {
        g[i] = (scope_guard){
            .g = {.fn = scope_guard_run, .arg = &g[i]}, .id = i, .log = log, .n = &n, .c = &c};
        rt_scope_defer(&c.s, &g[i].g);
    }
    probe_init(&p, &fx->rt, PROBE_IMMEDIATE, 0);
    rt_scope_spawn(&c.s, &p.task, probe_cb);
    rt_scope_close(&c.s, scope_closed);
    run_all(fx);
    assert_int_equal(n, 3);
    assert_int_equal(log[0], 2);
    assert_int_equal(log[1], 1);
    assert_int_equal(log[2], 0);
    assert_int_equal(c.closed, 1);
}

typedef struct walk_acc {
    char names[4][8];
    int depth[4];
    int n;
} walk_acc;

static void walk_fn(rt_scope *s, int depth, void *arg)
{
    walk_acc *a = arg;

    strncpy(a->names[a->n], s->name, 7);
    a->names[a->n][7] = '\0';
    a->depth[a->n++] = depth;
}

/* rt_scope_walk visits the tree depth first; a scope whose ancestor closes still drains. */
static void test_walk_and_ancestor_closing(void **state)
{
    rt_fixture *fx = *state;
    scope_case root = {0};
    scope_case a = {0};
    scope_case b = {0};
    scope_case a1 = {0};
    walk_acc acc = {0};
    probe p;

    rt_scope_init(&root.s, &fx->rt, NULL, "root");
    rt_scope_init(&a.s, &fx->rt, &root.s, "a");
    rt_scope_init(&a1.s, &fx->rt, &a.s, "a1");
    rt_scope_init(&b.s, &fx->rt, &root.s, "b");
    rt_scope_walk(&root.s, walk_fn, &acc);
    assert_int_equal(acc.n, 4);
    assert_string_equal(acc.names[0], "root");
    assert_string_equal(acc.names[1], "a");
    assert_string_equal(acc.names[2], "a1");
    assert_int_equal(acc.depth[2], 2);
    assert_string_equal(acc.names[3], "b");
    rt_scope_close(&root.s, scope_closed);
    assert_true(rt_scope_is_closing(&a1.s));
    /* Work already under way in a request scope may still spawn while the service drains. */
    probe_init(&p, &fx->rt, PROBE_IMMEDIATE, 0);
    assert_int_equal(rt_scope_spawn(&a1.s, &p.task, probe_cb), 0);
    rt_scope_close(&a1.s, scope_closed);
    rt_scope_close(&a.s, scope_closed);
    rt_scope_close(&b.s, scope_closed);
    run_all(fx);
    assert_int_equal(p.delivered, 1);
    assert_int_equal(root.closed + a.closed + a1.closed + b.closed, 4);
}

typedef struct scope_mem {
    scope_case *c;
    probe *p;
    int fin_runs;
    int64_t words[4];
} scope_mem;

static scope_mem *fin_seen;

static void scope_mem_fin(void *mem)
{
    scope_mem *m = mem;

    assert_ptr_equal(m, fin_seen);
    assert_int_equal(m->p->delivered, 1); /* after every child */
    assert_int_equal(m->c->closed, 0);    /* before the close callback */
    m->fin_runs++;
    fin_seen = NULL;
}

static void *no_memory(size_t size)
{
    (void)size;
    return NULL;
}

/* rt_scope_alloc: zeroed memory the scope owns, handed to fin once the scope completes, then
 * freed (the sanitizer tree's leak check sees the free); without memory NULL, nothing deferred. */
static void test_scope_alloc(void **state)
{
    rt_fixture *fx = *state;
    scope_case c = {0};
    scope_mem *m;
    probe p;

    assert_int_equal(rt_scope_init(&c.s, &fx->rt, NULL, "root"), 0);
    rt_replace_allocator(no_memory, NULL);
    assert_null(rt_scope_alloc(&c.s, sizeof(*m), scope_mem_fin));
    rt_replace_allocator(NULL, NULL);
    m = rt_scope_alloc(&c.s, sizeof(*m), scope_mem_fin);
    assert_non_null(m);
    assert_int_equal((uintptr_t)m % _Alignof(max_align_t), 0);
    for (int i = 0; i < 4; i++)
        assert_int_equal(m->words[i], 0);
    assert_non_null(rt_scope_alloc(&c.s, 64, NULL));
    m->c = &c;
    m->p = &p;
    fin_seen = m;
    probe_init(&p, &fx->rt, PROBE_IMMEDIATE, 0);
    rt_scope_spawn(&c.s, &p.task, probe_cb);
    rt_scope_close(&c.s, scope_closed);
    run_all(fx);
    assert_null(fin_seen); /* fin ran exactly once, on the block that was allocated */
    assert_int_equal(c.closed, 1);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        RT_FIXTURE_TEST(test_close_waits_for_children),
        RT_FIXTURE_TEST(test_close_empty_is_posted),
        RT_FIXTURE_TEST(test_refuses_spawn_while_closing),
        RT_FIXTURE_TEST(test_nested_cancel_from_middle),
        RT_FIXTURE_TEST(test_spawn_into_cancelled_scope),
        RT_FIXTURE_TEST(test_scope_guards),
        RT_FIXTURE_TEST(test_scope_alloc),
        RT_FIXTURE_TEST(test_walk_and_ancestor_closing),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
