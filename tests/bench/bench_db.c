/* SPDX-License-Identifier: MIT */
/*
 * bench_db.c - the PostgreSQL driver alone (no HTTP): N tasks, each running single-row
 * primary-key reads of the seeded users table back to back, over a pool of P connections with a
 * pipeline depth of D. It prints one line of key=value pairs (queries/s and latency
 * percentiles) for deploy/bench-db.sh, which runs it beside pgbench.
 *
 *   bench_db --url URL [--tasks N] [--pool P] [--depth D] [--seconds S] [--warmup S]
 *
 * The statement is prepared once per connection, as pgbench -M prepared does. Ids are drawn
 * uniformly from 1..10000 (the seed's users). Any failed query makes the run exit non-zero.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "runtime/db.h"
#include "runtime/runtime.h"

#define SQL "SELECT id, name, email, created_at FROM users WHERE id = $1::bigint"

typedef struct bench bench;

/* Two queries per worker, used in turn: a task's storage may be initialized again only once its
 * delivery has returned, so the next query of a worker is always the other one. */
typedef struct worker {
    rt_db_query q[2];
    int next;
    bench *b;
    char id[24];
    uint64_t started_ns;
} worker;

struct bench {
    uv_loop_t loop;
    rt_runtime rt;
    rt_db *db;
    uv_timer_t timer;
    worker *workers;
    size_t tasks;
    size_t live;
    uint64_t rng;
    bool measuring;
    bool stopping;
    uint64_t queries;
    uint64_t errors;
    uint64_t measure_start_ns;
    uint64_t measure_ns;
    uint64_t opened_at; /* loop time when the pool was opened */
    uint32_t *lat_us;   /* latencies of the measured queries */
    size_t nlat;
    size_t cap;
    double warmup_s;
    double seconds;
    rt_db_stats at_start;
};

static void start_query(worker *w);

static void on_done(rt_task *t, int status)
{
    worker *w = t->data;
    rt_db_query *q = rt_container_of(t, rt_db_query, task);
    bench *b = w->b;

    if (status != 0 || rt_db_result_rows(&q->result) != 1) {
        if (b->errors++ == 0)
            fprintf(stderr, "bench_db: query failed: %s %s\n", uv_strerror(status),
                    rt_db_result_error(&q->result));
    }
    if (b->measuring) {
        b->queries++;
        if (b->nlat < b->cap)
            b->lat_us[b->nlat++] = (uint32_t)((uv_hrtime() - w->started_ns) / 1000);
    }
    rt_task_release(t);
    if (b->stopping) {
        if (--b->live == 0)
            rt_db_close(b->db, NULL, NULL);
        return;
    }
    start_query(w);
}

static void start_query(worker *w)
{
    bench *b = w->b;
    const char *params[1] = {w->id};
    rt_db_query *q = &w->q[w->next];

    b->rng ^= b->rng << 13;
    b->rng ^= b->rng >> 7;
    b->rng ^= b->rng << 17;
    snprintf(w->id, sizeof(w->id), "%llu", (unsigned long long)(1 + b->rng % 10000));
    w->next ^= 1;
    rt_db_query_init(q, b->db, SQL, 1, params, NULL);
    rt_db_query_prepare_as(q, "bench_user_by_id");
    q->task.data = w;
    w->started_ns = uv_hrtime();
    rt_task_start(&q->task, NULL, on_done);
}

static void on_end(uv_timer_t *t)
{
    bench *b = rt_container_of(t, bench, timer);

    b->measuring = false;
    b->stopping = true;
    b->measure_ns = uv_hrtime() - b->measure_start_ns;
    uv_close((uv_handle_t *)t, NULL);
}

static void on_warm(uv_timer_t *t)
{
    bench *b = rt_container_of(t, bench, timer);

    b->measuring = true;
    b->measure_start_ns = uv_hrtime();
    rt_db_stats_get(b->db, &b->at_start);
    uv_timer_start(t, on_end, (uint64_t)(b->seconds * 1000), 0);
}

static void on_up(uv_timer_t *t)
{
    bench *b = rt_container_of(t, bench, timer);
    rt_db_stats st;

    rt_db_stats_get(b->db, &st);
    if (st.conns_idle < st.pool_size) {
        if (uv_now(&b->loop) - b->opened_at > 10000) {
            fprintf(stderr, "bench_db: the pool did not come up\n");
            exit(1);
        }
        return;
    }
    uv_timer_stop(t);
    for (size_t i = 0; i < b->tasks; i++) {
        b->workers[i].b = b;
        start_query(&b->workers[i]);
    }
    b->live = b->tasks;
    uv_timer_start(t, on_warm, (uint64_t)(b->warmup_s * 1000), 0);
}

static int cmp_u32(const void *a, const void *b)
{
    uint32_t x = *(const uint32_t *)a;
    uint32_t y = *(const uint32_t *)b;

    return x < y ? -1 : x > y;
}

static void usage(void)
{
    fprintf(stderr, "usage: bench_db --url URL [--tasks N] [--pool P] [--depth D] "
                    "[--seconds S] [--warmup S]\n");
    exit(2);
}

int main(int argc, char **argv)
{
    bench b;
    rt_db_config cfg;
    rt_db_stats st;
    const char *url = NULL;
    double qps;

    memset(&b, 0, sizeof(b));
    rt_db_config_default(&cfg);
    b.tasks = 8;
    cfg.pool_size = 8;
    cfg.pipeline_depth = 1;
    b.seconds = 5;
    b.warmup_s = 1;
    for (int i = 1; i + 1 < argc; i += 2) {
        if (strcmp(argv[i], "--url") == 0)
            url = argv[i + 1];
        else if (strcmp(argv[i], "--tasks") == 0)
            b.tasks = strtoul(argv[i + 1], NULL, 10);
        else if (strcmp(argv[i], "--pool") == 0)
            cfg.pool_size = strtoul(argv[i + 1], NULL, 10);
        else if (strcmp(argv[i], "--depth") == 0)
            cfg.pipeline_depth = strtoul(argv[i + 1], NULL, 10);
        else if (strcmp(argv[i], "--seconds") == 0)
            b.seconds = strtod(argv[i + 1], NULL);
        else if (strcmp(argv[i], "--warmup") == 0)
            b.warmup_s = strtod(argv[i + 1], NULL);
        else
            usage();
    }
    if (url == NULL || b.tasks == 0 || b.seconds <= 0)
        usage();
    cfg.conninfo = url;
    cfg.application_name = "hindsight-bench";
    cfg.queue_limit = b.tasks;
    b.cap = 4u << 20;
    b.lat_us = malloc(b.cap * sizeof(*b.lat_us));
    b.workers = calloc(b.tasks, sizeof(*b.workers));
    b.rng = 88172645463325252ull;
    if (b.lat_us == NULL || b.workers == NULL)
        return 1;
    if (uv_loop_init(&b.loop) != 0 || rt_runtime_init(&b.rt, &b.loop) != 0)
        return 1;
    if (rt_db_open(&b.db, &b.rt, &cfg) != 0) {
        fprintf(stderr, "bench_db: cannot open the pool (bad --url?)\n");
        return 1;
    }
    b.opened_at = uv_now(&b.loop);
    uv_timer_init(&b.loop, &b.timer);
    uv_timer_start(&b.timer, on_up, 5, 5);
    /* Stats are read before the run ends: the pool is freed by rt_db_close when the last
     * worker stops, so on_end's copy (at_start) and this one bracket the measurement. */
    while (!b.stopping && uv_run(&b.loop, UV_RUN_ONCE))
        ;
    rt_db_stats_get(b.db, &st);
    uv_run(&b.loop, UV_RUN_DEFAULT);
    rt_runtime_close(&b.rt, NULL);
    uv_run(&b.loop, UV_RUN_DEFAULT);
    uv_loop_close(&b.loop);

    qsort(b.lat_us, b.nlat, sizeof(*b.lat_us), cmp_u32);
    qps = (double)b.queries / ((double)b.measure_ns / 1e9);
    printf("bench_db tasks=%zu pool=%zu depth=%zu seconds=%.1f queries=%llu qps=%.0f "
           "p50_us=%u p99_us=%u pipelined=%.2f errors=%llu\n",
           b.tasks, cfg.pool_size, cfg.pipeline_depth, (double)b.measure_ns / 1e9,
           (unsigned long long)b.queries, qps, b.nlat ? b.lat_us[b.nlat / 2] : 0,
           b.nlat ? b.lat_us[b.nlat * 99 / 100] : 0,
           b.queries ? (double)(st.pipelined - b.at_start.pipelined) / (double)b.queries : 0.0,
           (unsigned long long)b.errors);
    free(b.lat_us);
    free(b.workers);
    return b.errors == 0 ? 0 : 1;
}
