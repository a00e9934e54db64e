/* SPDX-License-Identifier: MIT */
/*
 * test_service_db_restart.c - the running service rides out its database going away: the
 * cluster stopped and started again, and every pool connection killed on the server, each while
 * GET /after/users/{id} traffic is in flight.
 *
 * This is what the driver's own restart test (test_db_restart.c) promises, seen from outside the
 * built binary: liveness never depends on the database and stays fast; readiness reports the
 * outage within seconds and the recovery once the server is back, with the API's exact bodies;
 * database routes answer a clean 503 (or 504) in the API's error shape, never a 500, never past
 * their deadline; the pool reconnects by itself; and SIGTERM afterwards still ends in exit 0
 * (under the sanitizers that also means nothing leaked on these paths).
 *
 * The test runs its own cluster (deploy/pg.sh with HS_PG_PORT from 54360 on, HS_PG_DATA under
 * the build tree), created at group setup and stopped and removed at group teardown, so the
 * shared test database is never stopped. Traffic comes from worker threads with their own curl
 * handles: they only count what they see, because cmocka's assertions belong to the main thread,
 * which checks the counts once the workers are joined (the test teardown joins them when an
 * assertion cut a test short).
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <fcntl.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <curl/curl.h>
#include <jansson.h>
#include <libpq-fe.h>

#include "e2e/e2e.h"
#include "fault/pg_cluster.h"

/* test_db_restart.c takes 54340..54359; this range keeps the two apart when CTest runs them at
 * once (fault/pg_cluster.h). */
#define PG_PORT_FIRST  54360
#define PG_PORT_LAST   54379
#define PG_DATA_PREFIX HS_BINARY_DIR "/pgsvcfault"

#define STR_(x) #x
#define STR(x)  STR_(x)

#define POOL_SIZE   4
#define DEADLINE_MS 4000 /* the service's REQUEST_TIMEOUT_MS */
/* Half the workers ask for a slow statement, so that the outage cuts statements on the server. */
#define WORKERS       6
#define SLOW_DELAY_MS 300
#define WORKER_GAP_MS 10
/* A database route must answer within its deadline plus this slack (a loaded 2-core machine,
 * sanitizers); a request the service forgot would run into the client's 20 s timeout. */
#define ANSWER_SLACK_MS 3000
/* Liveness is one literal response on the loop: milliseconds, where a stalled loop takes seconds.
 * The bound sits far from both. */
#define LIVENESS_MAX_MS 1000
/* While no connection works a request is refused at once rather than waiting for its deadline. */
#define FAIL_FAST_MAX_MS 2000
/* Readiness flips within seconds of the server going away; recovery is bounded by the pool's
 * reconnect backoff (2 s at most) plus the time to connect. Both bounds are generous on purpose. */
#define FLIP_MAX_MS    10000
#define RECOVER_MAX_MS 15000
#define OUTAGE_HOLD_MS (DEADLINE_MS + 1000)
#define STEADY_MS      1500
#define POLL_MS        50
#define PG_CMD_MAX_MS  90000
#define STARTUP_MAX_MS 60000

static char pg_sh[1024];
static char pg_data[1024];
static char pg_url[256];
/* A pg.sh command running in the background, reaped by the test teardown if a test failed. */
static pid_t pg_child = -1;

/* ---- the private cluster ---- */

/* Starts argv with its stdout on out (or /dev/null when out < 0); stderr stays ours, for pg.sh's
 * diagnostics. Returns the pid, or -1. */
static pid_t spawn(const char *const *argv, int out)
{
    pid_t pid = fork();

    if (pid == 0) {
        int fd = out >= 0 ? out : open("/dev/null", O_WRONLY);

        if (fd >= 0 && fd != STDOUT_FILENO) {
            dup2(fd, STDOUT_FILENO);
            close(fd);
        }
        execv(argv[0], (char *const *)(uintptr_t)argv);
        _exit(127);
    }
    return pid;
}

/* Waits for pid; returns its exit status (or 128+signal), or -1 if there is nothing to wait for. */
static int reap(pid_t pid)
{
    int status;

    if (pid < 0 || waitpid(pid, &status, 0) != pid)
        return -1;
    return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

static int pg_run(const char *verb)
{
    const char *argv[] = {pg_sh, verb, NULL};

    return reap(spawn(argv, -1));
}

/* pg.sh's URL for the cluster (its user is postgres when run as root, else the caller). */
static int pg_read_url(void)
{
    const char *argv[] = {pg_sh, "url", NULL};
    int fds[2];
    ssize_t n;
    pid_t pid;

    if (pipe(fds) != 0)
        return -1;
    pid = spawn(argv, fds[1]);
    close(fds[1]);
    n = read(fds[0], pg_url, sizeof(pg_url) - 1);
    close(fds[0]);
    if (reap(pid) != 0 || n <= 0)
        return -1;
    pg_url[n] = '\0';
    pg_url[strcspn(pg_url, "\r\n")] = '\0';
    return 0;
}

/* Stops the cluster at data if it runs, and removes it with pg.sh's initdb log beside it. */
static void pg_remove(const char *data)
{
    char log[1100];
    const char *rm[] = {"/bin/rm", "-rf", data, log, NULL};

    snprintf(log, sizeof(log), "%s.initdb.log", data);
    setenv("HS_PG_DATA", data, 1);
    pg_run("stop");
    reap(spawn(rm, -1));
}

/* A cluster that did not start is removed, so the next port starts from a clean slate. */
static int pg_start(void)
{
    if (pg_run("start") == 0)
        return 0;
    pg_remove(pg_data);
    return -1;
}

static int group_setup(void **state)
{
    const char *src = getenv("HS_SOURCE_DIR");
    struct stat st;
    int port;

    (void)state;
    if (src == NULL)
        fail_msg("HS_SOURCE_DIR is not set (ctest sets it)");
    assert_int_equal(curl_global_init(CURL_GLOBAL_DEFAULT), CURLE_OK);
    snprintf(pg_sh, sizeof(pg_sh), "%s/deploy/pg.sh", src);
    /* A run that CTest killed at its timeout skipped its teardown and left its cluster running
     * on its port: reclaim this tree's leftovers before choosing a port. */
    for (int p = PG_PORT_FIRST; p <= PG_PORT_LAST; p++) {
        pgc_data_dir(pg_data, sizeof(pg_data), PG_DATA_PREFIX, p);
        if (stat(pg_data, &st) == 0)
            pg_remove(pg_data);
    }
    port =
        pgc_start(PG_PORT_FIRST, PG_PORT_LAST, PG_DATA_PREFIX, pg_data, sizeof(pg_data), pg_start);
    if (port < 0)
        fail_msg("cannot start the private cluster with %s on any port in %d..%d", pg_sh,
                 PG_PORT_FIRST, PG_PORT_LAST);
    if (pg_read_url() != 0)
        fail_msg("%s url failed", pg_sh);
    return 0;
}

static int group_teardown(void **state)
{
    (void)state;
    pg_remove(pg_data);
    curl_global_cleanup();
    return 0;
}

static void pg_begin(const char *verb)
{
    const char *argv[] = {pg_sh, verb, NULL};

    assert_true(pg_child < 0);
    pg_child = spawn(argv, -1);
    assert_true(pg_child > 0);
}

/* True once the background pg.sh command has ended; it must have succeeded. */
static bool pg_is_done(void)
{
    int status;
    pid_t r = waitpid(pg_child, &status, WNOHANG);

    if (r == 0)
        return false;
    assert_int_equal(r, pg_child);
    pg_child = -1;
    assert_true(WIFEXITED(status));
    assert_int_equal(WEXITSTATUS(status), 0);
    return true;
}

/* ---- the traffic: workers that count what they see ---- */

typedef enum phase { PH_BEFORE, PH_OUTAGE, PH_AFTER, PH_COUNT } phase;

static const char *const phase_names[PH_COUNT] = {"before", "outage", "after"};

typedef struct tally {
    unsigned ok;          /* 200 with the user asked for */
    unsigned unavailable; /* 503 in the error shape, code "unavailable" */
    unsigned timeout;     /* 504 in the error shape, code "timeout" */
    unsigned bad;         /* anything else: a 500, another status or body, no answer at all */
    uint64_t slowest_ms;
    char first_bad[256];
} tally;

typedef struct traffic {
    int port;
    pthread_t threads[WORKERS];
    size_t started;
    atomic_int phase; /* the phase a request is counted in is the one it started in */
    atomic_bool stop;
    pthread_mutex_t lock; /* guards t */
    tally t[PH_COUNT];
} traffic;

static traffic tr = {.lock = PTHREAD_MUTEX_INITIALIZER};

typedef struct sink {
    char *p;
    size_t len;
    size_t cap;
} sink;

static size_t on_body(char *data, size_t size, size_t n, void *arg)
{
    sink *s = arg;
    size_t add = size * n;

    if (s->len + add + 1 > s->cap) {
        size_t cap = (s->len + add + 1) * 2;
        char *p = realloc(s->p, cap);

        if (p == NULL)
            return 0;
        s->p = p;
        s->cap = cap;
    }
    memcpy(s->p + s->len, data, add);
    s->len += add;
    s->p[s->len] = '\0';
    return add;
}

static bool is_user(const json_t *j, int64_t id)
{
    return json_is_object(j) && json_is_integer(json_object_get(j, "id")) &&
           json_integer_value(json_object_get(j, "id")) == id &&
           json_is_string(json_object_get(j, "name")) &&
           json_is_string(json_object_get(j, "email")) &&
           json_is_string(json_object_get(j, "created_at"));
}

/* {"error": {"code": code, "message": "..."}} and nothing else at the top. */
static bool is_error(const json_t *j, const char *code)
{
    const json_t *e = json_object_get(j, "error");
    const char *message = json_string_value(json_object_get(e, "message"));

    return json_is_object(j) && json_object_size(j) == 1 && json_is_object(e) &&
           json_is_string(json_object_get(e, "code")) &&
           strcmp(json_string_value(json_object_get(e, "code")), code) == 0 && message != NULL &&
           message[0] != '\0';
}

static void record(phase ph, int rc, long status, const char *body, int64_t id, uint64_t ms)
{
    json_t *j = rc == CURLE_OK ? json_loads(body, 0, NULL) : NULL;
    tally *t = &tr.t[ph];

    pthread_mutex_lock(&tr.lock);
    if (rc == CURLE_OK && status == 200 && is_user(j, id)) {
        t->ok++;
    } else if (rc == CURLE_OK && status == 503 && is_error(j, "unavailable")) {
        t->unavailable++;
    } else if (rc == CURLE_OK && status == 504 && is_error(j, "timeout")) {
        t->timeout++;
    } else if (t->bad++ == 0) {
        if (rc != CURLE_OK)
            snprintf(t->first_bad, sizeof(t->first_bad), "user %" PRId64 ": no answer: %s", id,
                     curl_easy_strerror((CURLcode)rc));
        else
            snprintf(t->first_bad, sizeof(t->first_bad), "user %" PRId64 ": %ld %.180s", id, status,
                     body);
    }
    if (ms > t->slowest_ms)
        t->slowest_ms = ms;
    pthread_mutex_unlock(&tr.lock);
    json_decref(j);
}

/* One worker: GET /after/users/{id} in a loop on one keep-alive connection; odd workers make
 * each statement sleep SLOW_DELAY_MS on the server. */
static void *worker(void *arg)
{
    size_t w = (size_t)(uintptr_t)arg;
    CURL *c = curl_easy_init();
    sink body = {NULL, 0, 0};
    char url[160];

    if (c == NULL) {
        record((phase)atomic_load(&tr.phase), CURLE_FAILED_INIT, 0, "", 0, 0);
        return NULL;
    }
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, on_body);
    curl_easy_setopt(c, CURLOPT_WRITEDATA, &body);
    curl_easy_setopt(c, CURLOPT_TIMEOUT_MS, 20000L);
    curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
    for (uint64_t n = 0; !atomic_load(&tr.stop); n++) {
        int64_t id = (int64_t)((w * 7919u + n * 104729u) % 10000u) + 1;
        phase ph = (phase)atomic_load(&tr.phase);
        long status = 0;
        uint64_t t0;
        int rc;

        snprintf(url, sizeof(url), "http://127.0.0.1:%d/after/users/%" PRId64 "%s", tr.port, id,
                 w % 2 == 1 ? "?delay_ms=" STR(SLOW_DELAY_MS) : "");
        curl_easy_setopt(c, CURLOPT_URL, url);
        body.len = 0;
        t0 = e2e_now_ms();
        rc = (int)curl_easy_perform(c);
        curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &status);
        record(ph, rc, status, body.p != NULL ? body.p : "", id, e2e_now_ms() - t0);
        e2e_sleep_ms(WORKER_GAP_MS);
    }
    curl_easy_cleanup(c);
    free(body.p);
    return NULL;
}

static void traffic_start(const e2e_proc *p)
{
    memset(tr.t, 0, sizeof(tr.t));
    tr.port = p->port;
    atomic_store(&tr.phase, PH_BEFORE);
    atomic_store(&tr.stop, false);
    for (tr.started = 0; tr.started < WORKERS; tr.started++) {
        void *w = (void *)(uintptr_t)tr.started;

        assert_int_equal(pthread_create(&tr.threads[tr.started], NULL, worker, w), 0);
    }
}

static void traffic_stop(void)
{
    atomic_store(&tr.stop, true);
    for (size_t i = 0; i < tr.started; i++)
        pthread_join(tr.threads[i], NULL);
    tr.started = 0;
}

/* Prints the counts and asserts what holds in every test: no bad answer in any phase, every
 * answer within its deadline plus slack, and users served both before and after the fault. */
static void check_traffic(const char *fault)
{
    for (int ph = 0; ph < PH_COUNT; ph++) {
        const tally *t = &tr.t[ph];

        print_message("%s, %s: 200=%u 503=%u 504=%u bad=%u slowest=%" PRIu64 " ms\n", fault,
                      phase_names[ph], t->ok, t->unavailable, t->timeout, t->bad, t->slowest_ms);
    }
    for (int ph = 0; ph < PH_COUNT; ph++) {
        const tally *t = &tr.t[ph];

        if (t->bad > 0)
            fail_msg("%s, %s: %u bad answers, the first: %s", fault, phase_names[ph], t->bad,
                     t->first_bad);
        if (t->slowest_ms >= DEADLINE_MS + ANSWER_SLACK_MS)
            fail_msg("%s, %s: an answer took %" PRIu64 " ms (deadline %d ms)", fault,
                     phase_names[ph], t->slowest_ms, DEADLINE_MS);
    }
    assert_true(tr.t[PH_BEFORE].ok > 0);
    assert_true(tr.t[PH_AFTER].ok > 0);
}

/* ---- the service and its probes, from the main thread ---- */

static uint64_t liveness_slowest_ms;

static json_t *body_json(const e2e_resp *r)
{
    json_t *j = r->body != NULL ? json_loads(r->body, 0, NULL) : NULL;

    if (j == NULL)
        fail_msg("not JSON (status %ld): %s", r->status, r->body != NULL ? r->body : "");
    return j;
}

static bool has_str(const json_t *j, const char *key, const char *value)
{
    const char *v = json_string_value(json_object_get(j, key));

    return v != NULL && strcmp(v, value) == 0;
}

/* The service process is still running (it never crashes on these paths). */
static void check_alive(const e2e_proc *p)
{
    int status;

    if (waitpid(p->pid, &status, WNOHANG) == p->pid)
        fail_msg("the service died (status 0x%x); log: %s", (unsigned)status, p->log_path);
}

/* GET /healthz: 200 {"status":"ok"}, within LIVENESS_MAX_MS. */
static void check_liveness(const e2e_proc *p)
{
    e2e_resp r;
    uint64_t ms;
    json_t *j;

    e2e_get(p, "/healthz", &r);
    ms = (uint64_t)(r.total_s * 1000.0);
    if (r.curl_error != CURLE_OK || r.status != 200)
        fail_msg("/healthz answered %ld (curl error %d)", r.status, r.curl_error);
    j = body_json(&r);
    assert_true(has_str(j, "status", "ok"));
    json_decref(j);
    e2e_resp_free(&r);
    if (ms > liveness_slowest_ms)
        liveness_slowest_ms = ms;
    if (ms > LIVENESS_MAX_MS)
        fail_msg("/healthz took %" PRIu64 " ms", ms);
}

/* One poll step: the process lives, liveness answers, then a short pause. */
static void tick(const e2e_proc *p)
{
    check_alive(p);
    check_liveness(p);
    e2e_sleep_ms(POLL_MS);
}

/* GET /readyz: true for 200 {"status":"ready","db":"up"}, false for 503
 * {"status":"unavailable","db":"down"}; anything else fails (nothing here drains). */
static bool is_ready(const e2e_proc *p)
{
    e2e_resp r;
    bool ready = false;
    json_t *j;

    e2e_get(p, "/readyz", &r);
    j = body_json(&r);
    if (r.status == 200 && has_str(j, "status", "ready") && has_str(j, "db", "up"))
        ready = true;
    else if (!(r.status == 503 && has_str(j, "status", "unavailable") && has_str(j, "db", "down")))
        fail_msg("/readyz answered %ld %s", r.status, r.body);
    json_decref(j);
    e2e_resp_free(&r);
    return ready;
}

/* For ms, every readiness poll must say ready (or down, with !ready), and liveness must hold. */
static void hold(const e2e_proc *p, int ms, bool ready)
{
    for (uint64_t until = e2e_now_ms() + (uint64_t)ms; e2e_now_ms() < until; tick(p)) {
        if (is_ready(p) != ready)
            fail_msg("/readyz changed to %s while the database was %s", ready ? "503" : "200",
                     ready ? "up" : "down");
    }
}

/* Polls until readiness says ready within max_ms; returns the ms it took. */
static uint64_t wait_ready(const e2e_proc *p, int max_ms)
{
    uint64_t t0 = e2e_now_ms();

    for (; !is_ready(p); tick(p)) {
        if (e2e_now_ms() - t0 > (uint64_t)max_ms)
            fail_msg("/readyz still 503 after %d ms", max_ms);
    }
    return e2e_now_ms() - t0;
}

/* GET /after/users/{id} from the main thread: its status, which must be 200 with the right user
 * or a clean 503 or 504. The body of a refusal is copied to why (may be NULL). */
static long get_user(const e2e_proc *p, int64_t id, uint64_t *ms, char *why, size_t cap)
{
    char path[64];
    e2e_resp r;
    long status;
    json_t *j;

    snprintf(path, sizeof(path), "/after/users/%" PRId64, id);
    e2e_get(p, path, &r);
    *ms = (uint64_t)(r.total_s * 1000.0);
    j = body_json(&r);
    status = r.status;
    if (!(status == 200 && is_user(j, id)) && !(status == 503 && is_error(j, "unavailable")) &&
        !(status == 504 && is_error(j, "timeout")))
        fail_msg("%s answered %ld %s", path, status, r.body);
    if (status != 200 && why != NULL)
        snprintf(why, cap, "%ld %s", status, r.body);
    json_decref(j);
    e2e_resp_free(&r);
    return status;
}

/* Polls until GET /after/users/{id} answers 200 within max_ms; returns the ms it took and prints
 * the refusals seen on the way. */
static uint64_t wait_user(const e2e_proc *p, int max_ms)
{
    uint64_t t0 = e2e_now_ms();
    char why[256] = "";
    unsigned refusals = 0;
    uint64_t ms;

    for (; get_user(p, 42, &ms, why, sizeof(why)) != 200; tick(p)) {
        if (e2e_now_ms() - t0 > (uint64_t)max_ms)
            fail_msg("/after/users/42 still failing after %d ms: %s", max_ms, why);
        refusals++;
    }
    if (refusals > 0)
        print_message("users: %u refusals before the first 200, the last: %s\n", refusals, why);
    return e2e_now_ms() - t0;
}

/* While no connection works: a clean 503, and at once rather than at the deadline. */
static void check_refused_fast(const e2e_proc *p)
{
    uint64_t ms;

    assert_int_equal(get_user(p, 7, &ms, NULL, 0), 503);
    if (ms > FAIL_FAST_MAX_MS)
        fail_msg("a request took %" PRIu64 " ms to be refused while the database was down", ms);
}

static void service_start(e2e_proc *p)
{
    char url[300];
    const char *env[] = {url, "DB_POOL_SIZE=" STR(POOL_SIZE),
                         "REQUEST_TIMEOUT_MS=" STR(DEADLINE_MS), "HOST=127.0.0.1", NULL};

    snprintf(url, sizeof(url), "DATABASE_URL=%s", pg_url);
    e2e_start(p, env, NULL, true);
    print_message("service log: %s\n", p->log_path);
    liveness_slowest_ms = 0;
    wait_ready(p, STARTUP_MAX_MS);
}

static int test_setup(void **state)
{
    (void)state;
    /* A test cut short during an outage leaves the cluster stopped; pg.sh start is a no-op on a
     * running one. */
    if (pg_run("start") != 0)
        fail_msg("cannot start the private cluster");
    return 0;
}

static int test_teardown(void **state)
{
    (void)state;
    traffic_stop();
    reap(pg_child);
    pg_child = -1;
    e2e_kill_all();
    return 0;
}

/* ---- the faults ---- */

static void test_cluster_stopped_and_started(void **state)
{
    e2e_proc p;
    uint64_t t0;
    uint64_t flip_ms = 0;
    uint64_t stop_ms = 0;
    uint64_t start_ms;
    uint64_t ready_ms;
    uint64_t route_ms;

    (void)state;
    service_start(&p);
    traffic_start(&p);
    hold(&p, STEADY_MS, true);

    /* Stop: readiness flips while pg.sh waits for the server to be gone. */
    atomic_store(&tr.phase, PH_OUTAGE);
    t0 = e2e_now_ms();
    pg_begin("stop");
    while (flip_ms == 0 || stop_ms == 0) {
        if (flip_ms == 0 && !is_ready(&p))
            flip_ms = e2e_now_ms() - t0;
        if (stop_ms == 0 && pg_is_done())
            stop_ms = e2e_now_ms() - t0;
        if (flip_ms == 0 && e2e_now_ms() - t0 > FLIP_MAX_MS)
            fail_msg("/readyz still 200 %d ms after the cluster began to stop", FLIP_MAX_MS);
        if (stop_ms == 0 && e2e_now_ms() - t0 > PG_CMD_MAX_MS)
            fail_msg("pg.sh stop did not finish in %d ms", PG_CMD_MAX_MS);
        tick(&p);
    }

    /* Down for longer than a request's deadline: readiness stays down, requests are refused at
     * once, also after the pool's reconnect backoff has grown to its cap. */
    check_refused_fast(&p);
    hold(&p, OUTAGE_HOLD_MS, false);
    check_refused_fast(&p);

    /* Back: readiness and the route recover by themselves. */
    t0 = e2e_now_ms();
    pg_begin("start");
    while (!pg_is_done()) {
        if (e2e_now_ms() - t0 > PG_CMD_MAX_MS)
            fail_msg("pg.sh start did not finish in %d ms", PG_CMD_MAX_MS);
        tick(&p);
    }
    start_ms = e2e_now_ms() - t0;
    ready_ms = wait_ready(&p, RECOVER_MAX_MS);
    route_ms = wait_user(&p, RECOVER_MAX_MS);
    atomic_store(&tr.phase, PH_AFTER);
    hold(&p, STEADY_MS, true);
    traffic_stop();

    print_message("stop: readiness 503 after %" PRIu64 " ms, pg.sh stop took %" PRIu64
                  " ms; start: pg.sh took %" PRIu64 " ms, then readiness 200 after %" PRIu64
                  " ms, users 200 after %" PRIu64 " ms; slowest /healthz %" PRIu64 " ms\n",
                  flip_ms, stop_ms, start_ms, ready_ms, route_ms, liveness_slowest_ms);
    check_traffic("cluster stop/start");
    /* The outage was seen by the traffic, not only by the probes. */
    assert_true(tr.t[PH_OUTAGE].unavailable > 0);
    check_alive(&p);
    e2e_stop(&p);
}

/* The service's backends on the private cluster started after since (a server timestamp). */
static int backends_since(PGconn *c, const char *since)
{
    const char *params[] = {since};
    PGresult *r = PQexecParams(c,
                               "SELECT count(*) FROM pg_stat_activity"
                               " WHERE application_name = 'hindsight' AND backend_start > $1",
                               1, NULL, params, NULL, NULL, 0);
    int n;

    if (PQresultStatus(r) != PGRES_TUPLES_OK)
        fail_msg("pg_stat_activity: %s", PQerrorMessage(c));
    n = atoi(PQgetvalue(r, 0, 0));
    PQclear(r);
    return n;
}

static void test_connections_terminated(void **state)
{
    const char *epoch = "-infinity";
    char before[64];
    e2e_proc p;
    PGconn *c;
    PGresult *r;
    uint64_t t0;
    uint64_t ready_ms;
    uint64_t route_ms;
    uint64_t back_ms;
    int killed = 0;

    (void)state;
    service_start(&p);
    c = PQconnectdb(pg_url);
    if (PQstatus(c) != CONNECTION_OK)
        fail_msg("cannot reach the private cluster: %s", PQerrorMessage(c));
    traffic_start(&p);
    hold(&p, STEADY_MS, true);
    for (t0 = e2e_now_ms(); backends_since(c, epoch) != POOL_SIZE; tick(&p)) {
        if (e2e_now_ms() - t0 > RECOVER_MAX_MS)
            fail_msg("the pool never had its %d connections open", POOL_SIZE);
    }

    /* Every backend of the pool, busy or idle, killed at once. The timestamp comes first, so
     * that every backend started after it is a new one. */
    atomic_store(&tr.phase, PH_OUTAGE);
    r = PQexec(c, "SELECT clock_timestamp()");
    assert_int_equal(PQresultStatus(r), PGRES_TUPLES_OK);
    snprintf(before, sizeof(before), "%s", PQgetvalue(r, 0, 0));
    PQclear(r);
    r = PQexec(c, "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                  " WHERE application_name = 'hindsight'");
    assert_int_equal(PQresultStatus(r), PGRES_TUPLES_OK);
    for (int i = 0; i < PQntuples(r); i++)
        killed += strcmp(PQgetvalue(r, i, 0), "t") == 0;
    PQclear(r);
    assert_int_equal(killed, POOL_SIZE);
    t0 = e2e_now_ms();

    /* The pool opens new connections by itself and serves again. */
    ready_ms = wait_ready(&p, RECOVER_MAX_MS);
    route_ms = wait_user(&p, RECOVER_MAX_MS);
    while (backends_since(c, before) != POOL_SIZE) {
        if (e2e_now_ms() - t0 > RECOVER_MAX_MS)
            fail_msg("only %d of %d connections reopened after %d ms", backends_since(c, before),
                     POOL_SIZE, RECOVER_MAX_MS);
        tick(&p);
    }
    back_ms = e2e_now_ms() - t0;
    PQfinish(c);
    /* A new backend exists once the server has authenticated it, a little before its pool has
     * the connection ready. With several workers, each pool holds only a few connections, and
     * all of one pool's may still be finishing their handshakes here; the readiness seen above
     * may also predate the pools noticing the kill at all. So the steady state begins when
     * readiness says so again, now that every connection has reopened. */
    wait_ready(&p, RECOVER_MAX_MS);
    atomic_store(&tr.phase, PH_AFTER);
    hold(&p, STEADY_MS, true);
    traffic_stop();

    print_message("terminated %d backends: readiness 200 after %" PRIu64
                  " ms, users 200 after %" PRIu64 " ms, all %d reopened after %" PRIu64
                  " ms; slowest /healthz %" PRIu64 " ms\n",
                  killed, ready_ms, route_ms, POOL_SIZE, back_ms, liveness_slowest_ms);
    check_traffic("backends terminated");
    check_alive(&p);
    e2e_stop(&p);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_cluster_stopped_and_started, test_setup,
                                        test_teardown),
        cmocka_unit_test_setup_teardown(test_connections_terminated, test_setup, test_teardown),
    };

    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
