/* SPDX-License-Identifier: MIT */
/*
 * metrics.c - recording and rendering (see metrics.h).
 *
 * Per row of the handler table (plus one slot for requests that matched no row) we keep a
 * count per status code (100..599, indexed directly: 4 KB per row buys recording without a
 * search) and a latency histogram with fixed bounds. Rendering walks those arrays and prints
 * only the non-zero status counts, so the exposition stays as small as the traffic it saw.
 */
#include "service/metrics.h"

#include <assert.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "runtime/db.h"
#include "service/router.h"

/* Latency bucket bounds in seconds; +Inf is implicit. */
static const double latency_bounds[] = {0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
                                        0.1,    0.25,  0.5,    1,     2.5,  5,     10};
#define NBOUNDS (sizeof(latency_bounds) / sizeof(latency_bounds[0]))

#define STATUS_MIN 100
#define STATUS_MAX 599

typedef struct route_stats {
    uint64_t by_status[STATUS_MAX - STATUS_MIN + 1];
    uint64_t buckets[NBOUNDS + 1]; /* non-cumulative; the last one is +Inf */
    uint64_t count;
    double sum_s;
} route_stats;

typedef struct counter {
    struct counter *next;
    const char *name;
    const char *labels;
    const char *help;
    const char *type; /* "counter" or "gauge" */
    uint64_t value;
} counter;

struct svc_metrics {
    const svc_router *router;
    size_t nroutes;
    route_stats *routes; /* nroutes + 1: the last one is "no route" */
    int64_t in_flight;
    uv_timer_t probe; /* the loop-lag probe, once started */
    bool probe_started;
    uint64_t lag_due_ns;  /* when the probe asked to run next (uv_hrtime clock) */
    uint64_t lag_tick_ns; /* when it last ran (or was started) */
    uint64_t lag_last_ns;
    uint64_t lag_buckets[NBOUNDS + 1];
    uint64_t lag_count;
    double lag_sum_s;
    uint64_t shutdown_cancelled;
    int worker;        /* the worker label of the loop-lag series */
    const rt_db *db;   /* its pool, whose state the probe publishes (svc_metrics_db_up) */
    int db_up;         /* atomic: read by every worker's /readyz */
    counter *counters; /* in registration order */
    counter **counters_tail;
};

svc_metrics *svc_metrics_new(const svc_router *router)
{
    svc_metrics *m = calloc(1, sizeof(*m));

    if (m == NULL)
        return NULL;
    m->router = router;
    m->counters_tail = &m->counters;
    return m;
}

int svc_metrics_bind_routes(svc_metrics *m)
{
    assert(m->routes == NULL);
    m->nroutes = svc_router_count(m->router);
    m->routes = calloc(m->nroutes + 1, sizeof(*m->routes));
    return m->routes != NULL ? 0 : UV_ENOMEM;
}

void svc_metrics_free(svc_metrics *m)
{
    if (m == NULL)
        return;
    while (m->counters != NULL) {
        counter *c = m->counters;

        m->counters = c->next;
        free(c);
    }
    free(m->routes);
    free(m);
}

static uint64_t *add_series(svc_metrics *m, const char *name, const char *labels, const char *help,
                            const char *type)
{
    counter *c = calloc(1, sizeof(*c));

    if (c == NULL)
        return NULL;
    c->name = name;
    c->labels = labels != NULL ? labels : "";
    c->help = help;
    c->type = type;
    *m->counters_tail = c;
    m->counters_tail = &c->next;
    return &c->value;
}

uint64_t *svc_metrics_counter(svc_metrics *m, const char *name, const char *labels,
                              const char *help)
{
    return add_series(m, name, labels, help, "counter");
}

uint64_t *svc_metrics_gauge(svc_metrics *m, const char *name, const char *labels, const char *help)
{
    return add_series(m, name, labels, help, "gauge");
}

int svc_metrics_register(svc_metrics *m, const svc_metrics_series *table, size_t n)
{
    int err = 0;

    for (size_t i = 0; i < n; i++) {
        const svc_metrics_series *s = &table[i];

        *s->out = add_series(m, s->name, s->labels, s->help, s->gauge ? "gauge" : "counter");
        if (*s->out == NULL)
            err = UV_ENOMEM;
    }
    return err;
}

void svc_metrics_request_begin(svc_metrics *m)
{
    m->in_flight++;
}

static size_t bucket_of(double s)
{
    size_t i = 0;

    while (i < NBOUNDS && s > latency_bounds[i])
        i++;
    return i;
}

void svc_metrics_request_end(svc_metrics *m, const svc_route *route, int status, uint64_t ns)
{
    size_t idx = route != NULL ? svc_router_index(m->router, route) : m->nroutes;
    route_stats *rs = &m->routes[idx];
    double s = (double)ns / 1e9;

    m->in_flight--;
    if (status >= STATUS_MIN && status <= STATUS_MAX)
        rs->by_status[status - STATUS_MIN]++;
    rs->buckets[bucket_of(s)]++;
    rs->count++;
    rs->sum_s += s;
}

void svc_metrics_loop_lag(svc_metrics *m, uint64_t ns)
{
    double s = (double)ns / 1e9;

    m->lag_last_ns = ns;
    m->lag_buckets[bucket_of(s)]++;
    m->lag_count++;
    m->lag_sum_s += s;
}

static void on_probe(uv_timer_t *t)
{
    svc_metrics *m = t->data;
    uint64_t now = uv_hrtime();

    /* The timer asked to run at lag_due_ns; how much later it ran is how long the loop was busy
     * elsewhere (a blocking call, a long callback, a handle hogging the timer phase). */
    svc_metrics_loop_lag(m, now > m->lag_due_ns ? now - m->lag_due_ns : 0);
    if (m->db != NULL)
        __atomic_store_n(&m->db_up, rt_db_is_up(m->db) ? 1 : 0, __ATOMIC_RELAXED);
    /* Read by every worker's /healthz (svc_metrics_probe_stall_ns). */
    __atomic_store_n(&m->lag_tick_ns, now, __ATOMIC_RELAXED);
    m->lag_due_ns = now + (uint64_t)SVC_LAG_PERIOD_MS * 1000000u;
}

int svc_metrics_probe_start(svc_metrics *m, uv_loop_t *loop)
{
    int err = uv_timer_init(loop, &m->probe);

    if (err < 0)
        return err;
    m->probe.data = m;
    m->probe_started = true;
    __atomic_store_n(&m->lag_tick_ns, uv_hrtime(), __ATOMIC_RELAXED);
    m->lag_due_ns = uv_hrtime() + (uint64_t)SVC_LAG_PERIOD_MS * 1000000u;
    uv_timer_start(&m->probe, on_probe, SVC_LAG_PERIOD_MS, SVC_LAG_PERIOD_MS);
    /* The probe must not be what keeps the loop alive at the end. */
    uv_unref((uv_handle_t *)&m->probe);
    return 0;
}

void svc_metrics_probe_close(svc_metrics *m)
{
    if (m->probe_started && !uv_is_closing((uv_handle_t *)&m->probe)) {
        uv_close((uv_handle_t *)&m->probe, NULL);
        /* A worker that has finished its shutdown is not stalled: the others may still be
         * draining and answering /healthz, which must not fail on its account. */
        __atomic_store_n(&m->lag_tick_ns, UINT64_MAX, __ATOMIC_RELAXED);
    }
}

uint64_t svc_metrics_probe_stall_ns(const svc_metrics *m)
{
    uint64_t tick = __atomic_load_n(&m->lag_tick_ns, __ATOMIC_RELAXED);
    uint64_t now = uv_hrtime();

    /* uv_hrtime, not uv_now: the loop's cached time stands still exactly when the loop does.
     * Other workers' threads read it too (liveness covers every loop): hence the atomics, and
     * probe_started is written once before any worker thread exists. */
    return m->probe_started && now > tick ? now - tick : 0;
}

void svc_metrics_shutdown_cancelled(svc_metrics *m, uint64_t n)
{
    m->shutdown_cancelled += n;
}

/* A growing text buffer; after a failed allocation it stays failed and render returns NULL. */
typedef struct buf {
    char *p;
    size_t len;
    size_t cap;
    bool failed;
} buf;

static void emit(buf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static void emit(buf *b, const char *fmt, ...)
{
    va_list ap;
    int n;

    if (b->failed)
        return;
    for (;;) {
        va_start(ap, fmt);
        n = vsnprintf(b->p + b->len, b->cap - b->len, fmt, ap);
        va_end(ap);
        if (n < 0) {
            b->failed = true;
            return;
        }
        if ((size_t)n < b->cap - b->len) {
            b->len += (size_t)n;
            return;
        }
        size_t cap = (b->cap + (size_t)n) * 2;
        char *p = realloc(b->p, cap);

        if (p == NULL) {
            b->failed = true;
            return;
        }
        b->p = p;
        b->cap = cap;
    }
}

static void header(buf *b, const char *name, const char *type, const char *help)
{
    emit(b, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

static void histogram(buf *b, const char *name, const char *labels, const uint64_t *buckets,
                      uint64_t count, double sum)
{
    const char *sep = labels[0] != '\0' ? "," : "";
    uint64_t cum = 0;

    for (size_t i = 0; i < NBOUNDS; i++) {
        cum += buckets[i];
        emit(b, "%s_bucket{%s%sle=\"%g\"} %llu\n", name, labels, sep, latency_bounds[i],
             (unsigned long long)cum);
    }
    emit(b, "%s_bucket{%s%sle=\"+Inf\"} %llu\n", name, labels, sep, (unsigned long long)count);
    emit(b, "%s_sum{%s} %.6f\n%s_count{%s} %llu\n", name, labels, sum, name, labels,
         (unsigned long long)count);
}

/* Label values for row i (or the "no route" slot); patterns never contain quotes. */
static void route_labels(const svc_metrics *m, size_t i, char *out, size_t cap)
{
    const svc_route *r = i < m->nroutes ? svc_router_row(m->router, i) : NULL;

    snprintf(out, cap, "route=\"%s\",method=\"%s\",variant=\"%s\"", r ? r->pattern : "(unmatched)",
             r ? r->method : "any", svc_variant_name(r ? r->variant : SVC_VARIANT_NONE));
}

static void render_requests(buf *b, const svc_metrics *m)
{
    char labels[256];

    header(b, "hs_http_requests_total", "counter", "HTTP requests by route, variant and status.");
    for (size_t i = 0; i <= m->nroutes; i++) {
        route_labels(m, i, labels, sizeof(labels));
        for (int s = STATUS_MIN; s <= STATUS_MAX; s++) {
            uint64_t n = m->routes[i].by_status[s - STATUS_MIN];

            if (n != 0)
                emit(b, "hs_http_requests_total{%s,status=\"%d\"} %llu\n", labels, s,
                     (unsigned long long)n);
        }
    }
    header(b, "hs_http_request_duration_seconds", "histogram",
           "Time from the request's arrival to its response being queued.");
    for (size_t i = 0; i <= m->nroutes; i++) {
        if (m->routes[i].count == 0)
            continue;
        route_labels(m, i, labels, sizeof(labels));
        histogram(b, "hs_http_request_duration_seconds", labels, m->routes[i].buckets,
                  m->routes[i].count, m->routes[i].sum_s);
    }
    header(b, "hs_http_requests_in_flight", "gauge", "Requests received and not yet answered.");
    emit(b, "hs_http_requests_in_flight %lld\n", (long long)m->in_flight);
}

/* Scopes grouped by name: request scopes come and go by the thousand. */
#define MAX_SCOPE_NAMES 32

typedef struct scope_group {
    const char *name;
    uint64_t scopes;
    uint64_t live;
} scope_group;

typedef struct scope_walk {
    scope_group groups[MAX_SCOPE_NAMES];
    size_t n;
} scope_walk;

static void on_scope(rt_scope *s, int depth, void *arg)
{
    scope_walk *w = arg;
    const char *name = s->name != NULL ? s->name : "unnamed";
    size_t i;

    (void)depth;
    for (i = 0; i < w->n; i++) {
        if (strcmp(w->groups[i].name, name) == 0)
            break;
    }
    if (i == w->n) {
        if (w->n == MAX_SCOPE_NAMES)
            return;
        w->groups[w->n++] = (scope_group){.name = name};
    }
    w->groups[i].scopes++;
    w->groups[i].live += s->live;
}

static void render_tasks(buf *b, const svc_metrics *m, const svc_app *app, rt_scope *root)
{
    scope_walk w;

    w.n = 0;
    if (root != NULL)
        rt_scope_walk(root, on_scope, &w);
    header(b, "hs_scope_tasks", "gauge",
           "Tasks running as direct children of scopes, by scope name.");
    for (size_t i = 0; i < w.n; i++)
        emit(b, "hs_scope_tasks{scope=\"%s\"} %llu\n", w.groups[i].name,
             (unsigned long long)w.groups[i].live);
    header(b, "hs_scopes_open", "gauge", "Open scopes, by scope name.");
    for (size_t i = 0; i < w.n; i++)
        emit(b, "hs_scopes_open{scope=\"%s\"} %llu\n", w.groups[i].name,
             (unsigned long long)w.groups[i].scopes);
    header(b, "hs_tasks_live", "gauge",
           "Tasks started and not yet completed, all of them (scoped, nested and detached).");
    emit(b, "hs_tasks_live %llu\n", (unsigned long long)app->rt->live_tasks);
    header(b, "hs_tasks_detached", "gauge",
           "Tasks alive outside the scope tree's direct children (nested in joins, or detached).");
    emit(b, "hs_tasks_detached %llu\n",
         (unsigned long long)(root != NULL && app->rt->live_tasks > root->live_total
                                  ? app->rt->live_tasks - root->live_total
                                  : 0));
    header(b, "hs_tasks_started_total", "counter", "Tasks started since the process began.");
    emit(b, "hs_tasks_started_total %llu\n", (unsigned long long)app->rt->tasks_started);
    header(b, "hs_shutdown_cancelled_tasks_total", "counter",
           "Tasks still running when the shutdown grace period ended, and cancelled.");
    emit(b, "hs_shutdown_cancelled_tasks_total %llu\n", (unsigned long long)m->shutdown_cancelled);
    /* With hs_scope_tasks{scope="service"}, this is what tells a shutdown that drains from one
     * whose background work outlives it (deploy/prometheus/alerts.yml). */
    header(b, "hs_shutdown_seconds", "gauge",
           "Seconds since shutdown began (readiness turned 503); 0 while serving.");
    emit(b, "hs_shutdown_seconds %.3f\n",
         app->draining && app->draining_since_ns != 0
             ? (double)(uv_hrtime() - app->draining_since_ns) / 1e9
             : 0.0);
}

/* Per worker (a `worker` label): summed over workers, a lag would say nothing. */
static void render_loop(buf *b, const svc_metrics *m)
{
    char labels[32];

    snprintf(labels, sizeof(labels), "worker=\"%d\"", m->worker);
    header(b, "hs_event_loop_lag_seconds", "gauge",
           "How late the last event-loop probe timer fired, by worker.");
    emit(b, "hs_event_loop_lag_seconds{%s} %.6f\n", labels, (double)m->lag_last_ns / 1e9);
    header(b, "hs_event_loop_lag_sample_seconds", "histogram",
           "Event-loop lag samples, one per probe-timer tick, by worker.");
    histogram(b, "hs_event_loop_lag_sample_seconds", labels, m->lag_buckets, m->lag_count,
              m->lag_sum_s);
}

void svc_metrics_set_worker(svc_metrics *m, int worker)
{
    m->worker = worker;
}

void svc_metrics_watch_db(svc_metrics *m, const rt_db *db)
{
    m->db = db;
    __atomic_store_n(&m->db_up, db != NULL && rt_db_is_up(db) ? 1 : 0, __ATOMIC_RELAXED);
}

bool svc_metrics_db_up(const svc_metrics *m)
{
    return __atomic_load_n(&m->db_up, __ATOMIC_RELAXED) != 0;
}

static void render_db(buf *b, const rt_db *db)
{
    rt_db_stats st;

    rt_db_stats_get(db, &st);
    header(b, "hs_db_up", "gauge", "1 while at least one database connection works.");
    emit(b, "hs_db_up %d\n", rt_db_is_up(db) ? 1 : 0);
    header(b, "hs_db_connections", "gauge", "Pool connections by state.");
    emit(b, "hs_db_connections{state=\"idle\"} %zu\n", st.conns_idle);
    emit(b, "hs_db_connections{state=\"busy\"} %zu\n", st.conns_busy);
    emit(b, "hs_db_connections{state=\"connecting\"} %zu\n", st.conns_connecting);
    emit(b, "hs_db_connections{state=\"broken\"} %zu\n", st.conns_broken);
    header(b, "hs_db_pool_size", "gauge", "Configured pool size.");
    emit(b, "hs_db_pool_size %zu\n", st.pool_size);
    header(b, "hs_db_queue_depth", "gauge", "Requests waiting for a connection.");
    emit(b, "hs_db_queue_depth %zu\n", st.queue_depth);
    header(b, "hs_db_queue_limit", "gauge", "Waiting requests beyond which the pool answers busy.");
    emit(b, "hs_db_queue_limit %zu\n", st.queue_limit);
    header(b, "hs_db_in_flight", "gauge", "Queries and transactions placed on a connection.");
    emit(b, "hs_db_in_flight %zu\n", st.in_flight);
    header(b, "hs_db_queries_total", "counter", "Queries by outcome.");
    emit(b, "hs_db_queries_total{outcome=\"ok\"} %llu\n", (unsigned long long)st.queries_ok);
    emit(b, "hs_db_queries_total{outcome=\"sql_error\"} %llu\n", (unsigned long long)st.errors_sql);
    emit(b, "hs_db_queries_total{outcome=\"timeout\"} %llu\n",
         (unsigned long long)st.errors_timeout);
    emit(b, "hs_db_queries_total{outcome=\"lost\"} %llu\n", (unsigned long long)st.errors_lost);
    emit(b, "hs_db_queries_total{outcome=\"cancelled\"} %llu\n",
         (unsigned long long)st.errors_cancelled);
    header(b, "hs_db_rejected_total", "counter", "Requests refused at once, by reason.");
    emit(b, "hs_db_rejected_total{reason=\"queue_full\"} %llu\n",
         (unsigned long long)st.rejected_busy);
    emit(b, "hs_db_rejected_total{reason=\"down\"} %llu\n", (unsigned long long)st.rejected_down);
    header(b, "hs_db_pipelined_total", "counter", "Queries sent while another was in flight.");
    emit(b, "hs_db_pipelined_total %llu\n", (unsigned long long)st.pipelined);
    header(b, "hs_db_transactions_total", "counter", "Transactions by outcome.");
    emit(b, "hs_db_transactions_total{outcome=\"committed\"} %llu\n",
         (unsigned long long)st.tx_committed);
    emit(b, "hs_db_transactions_total{outcome=\"rolled_back\"} %llu\n",
         (unsigned long long)st.tx_rolled_back);
    emit(b, "hs_db_transactions_total{outcome=\"unknown\"} %llu\n",
         (unsigned long long)st.tx_unknown);
    header(b, "hs_db_transaction_round_trips_total", "counter",
           "Waits on the server by transactions, BEGIN to COMMIT.");
    emit(b, "hs_db_transaction_round_trips_total %llu\n", (unsigned long long)st.tx_round_trips);
    header(b, "hs_db_rollbacks_total", "counter", "Rollbacks by cause.");
    emit(b, "hs_db_rollbacks_total{cause=\"cancel\"} %llu\n",
         (unsigned long long)st.rollbacks_cancel);
    emit(b, "hs_db_rollbacks_total{cause=\"error\"} %llu\n",
         (unsigned long long)st.rollbacks_error);
    emit(b, "hs_db_rollbacks_total{cause=\"user\"} %llu\n", (unsigned long long)st.rollbacks_user);
    header(b, "hs_db_connects_total", "counter", "Connection attempts by outcome.");
    emit(b, "hs_db_connects_total{outcome=\"ok\"} %llu\n", (unsigned long long)st.connects_ok);
    /* The outcomes partition the attempts: "failed" is what is neither timed out nor full. */
    emit(b, "hs_db_connects_total{outcome=\"failed\"} %llu\n",
         (unsigned long long)(st.connects_failed - st.connects_timed_out - st.connects_refused));
    emit(b, "hs_db_connects_total{outcome=\"timed_out\"} %llu\n",
         (unsigned long long)st.connects_timed_out);
    emit(b, "hs_db_connects_total{outcome=\"refused_full\"} %llu\n",
         (unsigned long long)st.connects_refused);
    header(b, "hs_db_connections_lost_total", "counter", "Established connections that broke.");
    emit(b, "hs_db_connections_lost_total %llu\n", (unsigned long long)st.conns_lost);
    header(b, "hs_db_cancels_sent_total", "counter",
           "Cancel requests sent for running statements.");
    emit(b, "hs_db_cancels_sent_total %llu\n", (unsigned long long)st.cancels_sent);
    header(b, "hs_db_cancels_timed_out_total", "counter",
           "Cancelled work not ended within the cancel bound (its connection was replaced).");
    emit(b, "hs_db_cancels_timed_out_total %llu\n", (unsigned long long)st.cancels_timed_out);
    header(b, "hs_db_acquire_wait_seconds", "histogram", "Time from request to connection.");
    /* The driver's buckets are already cumulative. */
    for (size_t i = 0; i < RT_DB_WAIT_BUCKETS; i++)
        emit(b, "hs_db_acquire_wait_seconds_bucket{le=\"%g\"} %llu\n", rt_db_wait_bounds_s[i],
             (unsigned long long)st.wait_le[i]);
    emit(b, "hs_db_acquire_wait_seconds_bucket{le=\"+Inf\"} %llu\n",
         (unsigned long long)st.wait_count);
    emit(b, "hs_db_acquire_wait_seconds_sum %.6f\nhs_db_acquire_wait_seconds_count %llu\n",
         st.wait_sum_s, (unsigned long long)st.wait_count);
}

static void render_counters(buf *b, const svc_metrics *m)
{
    /* The format wants every series of a name together, under one HELP/TYPE; handlers may
     * register a name's series at different times, so group them here. */
    for (const counter *c = m->counters; c != NULL; c = c->next) {
        bool seen = false;

        for (const counter *p = m->counters; p != c && !seen; p = p->next)
            seen = strcmp(p->name, c->name) == 0;
        if (seen)
            continue;
        header(b, c->name, c->type, c->help);
        for (const counter *s = c; s != NULL; s = s->next) {
            if (strcmp(s->name, c->name) != 0)
                continue;
            if (s->labels[0] != '\0')
                emit(b, "%s{%s} %llu\n", s->name, s->labels, (unsigned long long)s->value);
            else
                emit(b, "%s %llu\n", s->name, (unsigned long long)s->value);
        }
    }
}

char *svc_metrics_render(svc_metrics *m, const svc_app *app, rt_scope *root, size_t *len)
{
    buf b = {.p = malloc(16384), .cap = 16384};

    if (b.p == NULL)
        return NULL;
    render_requests(&b, m);
    render_tasks(&b, m, app, root);
    render_loop(&b, m);
    if (app->db != NULL)
        render_db(&b, app->db);
    render_counters(&b, m);
    if (b.failed) {
        free(b.p);
        return NULL;
    }
    *len = b.len;
    return b.p;
}

/* --- summing the texts of several workers ----------------------------------------------------- */

/*
 * One family: the lines from a "# HELP" on, its samples in first-seen order. Samples are keyed
 * by everything before the value; a family's samples from a later text that the first lacked
 * (a status only that worker saw) join the end of the family, so each family stays one group.
 */
typedef struct sample {
    const char *key;
    size_t klen;
    double value;
    bool integral;
} sample;

typedef struct family {
    const char *head; /* the "# HELP" and "# TYPE" lines */
    size_t hlen;
    const char *name;
    size_t nlen;
    bool max; /* combined by maximum, not by sum */
    sample *samples;
    size_t n;
    size_t cap;
} family;

typedef struct families {
    family *f;
    size_t n;
    size_t cap;
    bool failed;
} families;

static family *family_get(families *fs, const char *name, size_t nlen, const char *head,
                          size_t hlen)
{
    family *f;

    for (size_t i = 0; i < fs->n; i++) {
        if (fs->f[i].nlen == nlen && memcmp(fs->f[i].name, name, nlen) == 0)
            return &fs->f[i];
    }
    if (fs->n == fs->cap) {
        size_t cap = fs->cap ? fs->cap * 2 : 64;
        family *p = realloc(fs->f, cap * sizeof(*p));

        if (p == NULL) {
            fs->failed = true;
            return NULL;
        }
        fs->f = p;
        fs->cap = cap;
    }
    f = &fs->f[fs->n++];
    *f = (family){.head = head, .hlen = hlen, .name = name, .nlen = nlen};
    /* "At least one connection works": the most any worker says, never a count of workers. */
    f->max = nlen == 8 && memcmp(name, "hs_db_up", 8) == 0;
    return f;
}

static void family_add(families *fs, family *f, const char *key, size_t klen, const char *val,
                       size_t vlen)
{
    char num[64];
    double v;
    bool integral;
    sample *s = NULL;

    /* The texts are not NUL-terminated: the value is copied out before it is parsed. */
    if (vlen >= sizeof(num))
        vlen = sizeof(num) - 1;
    memcpy(num, val, vlen);
    num[vlen] = '\0';
    v = strtod(num, NULL);
    integral = strpbrk(num, ".eEnN") == NULL;

    for (size_t i = 0; i < f->n; i++) {
        if (f->samples[i].klen == klen && memcmp(f->samples[i].key, key, klen) == 0) {
            s = &f->samples[i];
            break;
        }
    }
    if (s == NULL) {
        if (f->n == f->cap) {
            size_t cap = f->cap ? f->cap * 2 : 16;
            sample *p = realloc(f->samples, cap * sizeof(*p));

            if (p == NULL) {
                fs->failed = true;
                return;
            }
            f->samples = p;
            f->cap = cap;
        }
        s = &f->samples[f->n++];
        *s = (sample){.key = key, .klen = klen, .value = v, .integral = integral};
        return;
    }
    s->integral = s->integral && integral;
    if (f->max)
        s->value = v > s->value ? v : s->value;
    else
        s->value += v;
}

static void parse_text(families *fs, const char *t, size_t len)
{
    const char *end = t + len;
    family *cur = NULL;

    while (t < end && !fs->failed) {
        const char *nl = memchr(t, '\n', (size_t)(end - t));
        const char *eol = nl != NULL ? nl : end;

        if (eol - t > 7 && memcmp(t, "# HELP ", 7) == 0) {
            const char *name = t + 7;
            const char *sp = memchr(name, ' ', (size_t)(eol - name));
            const char *next = nl != NULL ? nl + 1 : end;

            /* The HELP line and the TYPE line after it make the family's head. */
            if (end - next > 7 && memcmp(next, "# TYPE ", 7) == 0) {
                const char *tnl = memchr(next, '\n', (size_t)(end - next));

                next = tnl != NULL ? tnl + 1 : end;
            }
            cur = family_get(fs, name, sp != NULL ? (size_t)(sp - name) : (size_t)(eol - name), t,
                             (size_t)(next - t));
            t = next;
            continue;
        }
        if (eol > t && t[0] != '#' && cur != NULL) {
            const char *sp = eol;

            while (sp > t && sp[-1] != ' ')
                sp--;
            if (sp > t)
                family_add(fs, cur, t, (size_t)(sp - 1 - t), sp, (size_t)(eol - sp));
        }
        t = nl != NULL ? nl + 1 : end;
    }
}

char *svc_metrics_sum(const char *const *texts, const size_t *lens, size_t n, size_t missing,
                      size_t *len)
{
    families fs = {0};
    buf b = {.p = malloc(16384), .cap = 16384};

    if (b.p == NULL)
        return NULL;
    for (size_t i = 0; i < n; i++)
        parse_text(&fs, texts[i], lens[i]);
    for (size_t i = 0; i < fs.n && !fs.failed; i++) {
        family *f = &fs.f[i];

        emit(&b, "%.*s", (int)f->hlen, f->head);
        for (size_t j = 0; j < f->n; j++) {
            if (f->samples[j].integral)
                emit(&b, "%.*s %.0f\n", (int)f->samples[j].klen, f->samples[j].key,
                     f->samples[j].value);
            else
                emit(&b, "%.*s %.6f\n", (int)f->samples[j].klen, f->samples[j].key,
                     f->samples[j].value);
        }
    }
    header(
        &b, "hs_metrics_workers_missing", "gauge",
        "Workers whose loop did not answer this scrape in time (stalled); left out of the sums.");
    emit(&b, "hs_metrics_workers_missing %zu\n", missing);
    for (size_t i = 0; i < fs.n; i++)
        free(fs.f[i].samples);
    free(fs.f);
    if (b.failed || fs.failed) {
        free(b.p);
        return NULL;
    }
    *len = b.len;
    return b.p;
}
