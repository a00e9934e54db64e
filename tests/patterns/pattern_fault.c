/* SPDX-License-Identifier: MIT */
/*
 * pattern_fault.c - fresh databases, request bursts and log counting (see pattern_fault.h).
 */
#include "pattern_fault.h"

#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include <curl/curl.h>
#include <libpq-fe.h>

#define DEFAULT_URL "postgresql://postgres@127.0.0.1:54329/hindsight"

static const char *base_url(void)
{
    const char *u = getenv("TEST_DATABASE_URL");

    return u != NULL && *u != '\0' ? u : DEFAULT_URL;
}

/* The URL with its database name replaced by name (the part after the authority's '/'). */
static void url_with_db(char *out, size_t cap, const char *url, const char *name)
{
    const char *auth = strstr(url, "://");
    const char *slash = auth != NULL ? strchr(auth + 3, '/') : NULL;
    const char *query = strchr(url, '?');

    assert_non_null(slash);
    snprintf(out, cap, "%.*s/%s%s", (int)(slash - url), url, name, query != NULL ? query : "");
}

static void quiet(void *arg, const char *message)
{
    (void)arg;
    (void)message;
}

/* A connection to `postgres` on the same server: databases are created from there. */
static PGconn *admin_connect(void)
{
    char url[512];
    PGconn *c;

    url_with_db(url, sizeof(url), base_url(), "postgres");
    c = PQconnectdb(url);
    if (PQstatus(c) != CONNECTION_OK)
        fail_msg("cannot connect to %s: %s", url, PQerrorMessage(c));
    /* "does not exist, skipping" is the expected answer to the first DROP. */
    PQsetNoticeProcessor(c, quiet, NULL);
    return c;
}

static void admin_exec(PGconn *c, const char *sql)
{
    PGresult *r = PQexec(c, sql);

    if (PQresultStatus(r) != PGRES_COMMAND_OK)
        fail_msg("%s: %s", sql, PQerrorMessage(c));
    PQclear(r);
}

void pf_db_create(pf_db *d, const char *tag)
{
    PGconn *c = admin_connect();
    char sql[160];

    d->watch = NULL;
    snprintf(d->name, sizeof(d->name), "hs_test_%s_%d", tag, (int)getpid());
    url_with_db(d->url, sizeof(d->url), base_url(), d->name);
    snprintf(sql, sizeof(sql), "DROP DATABASE IF EXISTS %s WITH (FORCE)", d->name);
    admin_exec(c, sql);
    snprintf(sql, sizeof(sql), "CREATE DATABASE %s", d->name);
    admin_exec(c, sql);
    PQfinish(c);
}

void pf_db_drop(pf_db *d)
{
    PGconn *c;
    char sql[160];

    if (d->watch != NULL) {
        PQfinish(d->watch);
        d->watch = NULL;
    }
    c = admin_connect();
    snprintf(sql, sizeof(sql), "DROP DATABASE IF EXISTS %s WITH (FORCE)", d->name);
    admin_exec(c, sql);
    PQfinish(c);
}

int64_t pf_db_int(const pf_db *d, const char *sql)
{
    PGconn *c = PQconnectdb(d->url);
    PGresult *r;
    int64_t v;

    if (PQstatus(c) != CONNECTION_OK)
        fail_msg("cannot connect to %s: %s", d->url, PQerrorMessage(c));
    r = PQexec(c, sql);
    if (PQresultStatus(r) != PGRES_TUPLES_OK || PQntuples(r) < 1 || PQgetisnull(r, 0, 0))
        fail_msg("%s: %s", sql, PQerrorMessage(c));
    v = strtoll(PQgetvalue(r, 0, 0), NULL, 10);
    PQclear(r);
    PQfinish(c);
    return v;
}

void pf_start(e2e_proc *p, const pf_db *d, const char *const *env)
{
    const char *all[16];
    char url[600];
    size_t n = 0;

    snprintf(url, sizeof(url), "DATABASE_URL=%s", d->url);
    all[n++] = url;
    for (size_t i = 0; env != NULL && env[i] != NULL && n < 15; i++)
        all[n++] = env[i];
    all[n] = NULL;
    e2e_start(p, all, NULL, true);
    for (uint64_t until = e2e_now_ms() + 60000; e2e_now_ms() < until;) {
        e2e_resp r;

        e2e_get(p, "/readyz", &r);
        if (r.status == 200) {
            e2e_resp_free(&r);
            return;
        }
        e2e_resp_free(&r);
        e2e_sleep_ms(50);
    }
    fail_msg("the service did not become ready within 60 s");
}

/* --- bursts -------------------------------------------------------------------------------- */

typedef struct slot {
    pf_req *req;
    CURL *easy;
    struct curl_slist *headers;
    size_t len;
    uint64_t start_ms;
} slot;

static size_t on_body(char *data, size_t size, size_t n, void *arg)
{
    slot *s = arg;
    size_t len = size * n;
    size_t room = sizeof(s->req->resp) - 1 - s->len;
    size_t take = len < room ? len : room;

    memcpy(s->req->resp + s->len, data, take);
    s->len += take;
    s->req->resp[s->len] = '\0';
    return len;
}

static size_t on_header(char *data, size_t size, size_t n, void *arg)
{
    slot *s = arg;
    static const char name[] = "Idempotent-Replayed: true";

    if (size * n >= sizeof(name) - 1 && strncasecmp(data, name, sizeof(name) - 1) == 0)
        s->req->replayed = true;
    return size * n;
}

static void burst(const e2e_proc *p, pf_req *reqs, size_t n, int signal_after_ms, int sig,
                  pf_ready_fn ready, void *arg)
{
    CURLM *m = curl_multi_init();
    slot *slots = calloc(n, sizeof(*slots));
    uint64_t start = e2e_now_ms();
    bool signalled = signal_after_ms < 0 && ready == NULL;
    uint64_t next_poll = start;
    int running = 0;
    char url[256];
    CURLMsg *msg;
    int left;

    assert_non_null(m);
    assert_non_null(slots);
    /* Hundreds of connections at once: no per-host cap, no connection reuse between them. */
    curl_multi_setopt(m, CURLMOPT_MAX_HOST_CONNECTIONS, 0L);
    for (size_t i = 0; i < n; i++) {
        slot *s = &slots[i];
        pf_req *r = &reqs[i];
        char key[96];

        s->req = r;
        r->status = 0;
        r->resp[0] = '\0';
        r->replayed = false;
        s->easy = curl_easy_init();
        assert_non_null(s->easy);
        snprintf(url, sizeof(url), "http://127.0.0.1:%d%s", p->port, r->path);
        curl_easy_setopt(s->easy, CURLOPT_URL, url);
        curl_easy_setopt(s->easy, CURLOPT_CUSTOMREQUEST, r->method);
        if (r->body[0] != '\0') {
            curl_easy_setopt(s->easy, CURLOPT_POSTFIELDS, r->body);
            curl_easy_setopt(s->easy, CURLOPT_POSTFIELDSIZE, (long)strlen(r->body));
        }
        s->headers = curl_slist_append(NULL, "Expect:");
        if (r->key[0] != '\0') {
            snprintf(key, sizeof(key), "Idempotency-Key: %s", r->key);
            s->headers = curl_slist_append(s->headers, key);
        }
        curl_easy_setopt(s->easy, CURLOPT_HTTPHEADER, s->headers);
        curl_easy_setopt(s->easy, CURLOPT_WRITEFUNCTION, on_body);
        curl_easy_setopt(s->easy, CURLOPT_WRITEDATA, s);
        curl_easy_setopt(s->easy, CURLOPT_HEADERFUNCTION, on_header);
        curl_easy_setopt(s->easy, CURLOPT_HEADERDATA, s);
        curl_easy_setopt(s->easy, CURLOPT_FORBID_REUSE, 1L);
        curl_easy_setopt(s->easy, CURLOPT_TIMEOUT_MS, 60000L);
        curl_easy_setopt(s->easy, CURLOPT_NOSIGNAL, 1L);
        curl_easy_setopt(s->easy, CURLOPT_PRIVATE, s);
        curl_multi_add_handle(m, s->easy);
    }
    do {
        curl_multi_perform(m, &running);
        while ((msg = curl_multi_info_read(m, &left)) != NULL) {
            slot *s;

            if (msg->msg != CURLMSG_DONE)
                continue;
            curl_easy_getinfo(msg->easy_handle, CURLINFO_PRIVATE, (char **)&s);
            if (msg->data.result == CURLE_OK)
                curl_easy_getinfo(msg->easy_handle, CURLINFO_RESPONSE_CODE, &s->req->status);
            s->req->elapsed_ms = e2e_now_ms() - start;
        }
        if (!signalled && ready != NULL && e2e_now_ms() >= next_poll) {
            if (ready(arg)) {
                kill(p->pid, sig);
                signalled = true;
            } else if (running == 0 || e2e_now_ms() - start > 30000) {
                fail_msg("the condition for the signal never held during the burst");
            }
            next_poll = e2e_now_ms() + 10;
        } else if (!signalled && ready == NULL &&
                   e2e_now_ms() - start >= (uint64_t)signal_after_ms) {
            kill(p->pid, sig);
            signalled = true;
        }
        if (running > 0)
            curl_multi_poll(m, NULL, 0, 5, NULL);
    } while (running > 0 || !signalled);
    for (size_t i = 0; i < n; i++) {
        curl_multi_remove_handle(m, slots[i].easy);
        curl_easy_cleanup(slots[i].easy);
        curl_slist_free_all(slots[i].headers);
    }
    free(slots);
    curl_multi_cleanup(m);
}

void pf_burst(const e2e_proc *p, pf_req *reqs, size_t n, int signal_after_ms, int sig)
{
    burst(p, reqs, n, signal_after_ms, sig, NULL, NULL);
}

void pf_burst_when(const e2e_proc *p, pf_req *reqs, size_t n, int sig, pf_ready_fn ready, void *arg)
{
    burst(p, reqs, n, -1, sig, ready, arg);
}

int64_t pf_db_sleeping(pf_db *d)
{
    static const char sql[] = "SELECT count(*) FROM pg_stat_activity WHERE datname = "
                              "current_database() AND wait_event = 'PgSleep' AND pid <> "
                              "pg_backend_pid()";
    PGresult *r;
    int64_t v;

    if (d->watch == NULL) {
        d->watch = PQconnectdb(d->url);
        if (PQstatus(d->watch) != CONNECTION_OK)
            fail_msg("cannot connect to %s: %s", d->url, PQerrorMessage(d->watch));
    }
    r = PQexec(d->watch, sql);
    if (PQresultStatus(r) != PGRES_TUPLES_OK || PQntuples(r) < 1)
        fail_msg("%s: %s", sql, PQerrorMessage(d->watch));
    v = strtoll(PQgetvalue(r, 0, 0), NULL, 10);
    PQclear(r);
    return v;
}

size_t pf_count_status(const pf_req *reqs, size_t n, long status)
{
    size_t k = 0;

    for (size_t i = 0; i < n; i++)
        k += reqs[i].status == status;
    return k;
}

/* Calls fn for each line of log that contains needle. */
static void each_line(const char *log, const char *needle,
                      void (*fn)(const char *line, size_t len, void *arg), void *arg)
{
    for (const char *line = log; *line != '\0';) {
        const char *end = strchr(line, '\n');
        size_t len = end != NULL ? (size_t)(end - line) : strlen(line);
        const char *hit = strstr(line, needle);

        if (hit != NULL && hit < line + len)
            fn(line, len, arg);
        line += len + (end != NULL);
    }
}

typedef struct count_arg {
    const char *const *needles;
    size_t n;
} count_arg;

static void count_line(const char *line, size_t len, void *arg)
{
    count_arg *c = arg;

    for (size_t i = 1; c->needles[i] != NULL; i++) {
        const char *hit = strstr(line, c->needles[i]);

        if (hit == NULL || hit >= line + len)
            return;
    }
    c->n++;
}

size_t pf_log_count(const char *log, const char *const *needles)
{
    count_arg c = {needles, 0};

    each_line(log, needles[0], count_line, &c);
    return c.n;
}

typedef struct sum_arg {
    char pattern[64];
    int64_t sum;
} sum_arg;

static void sum_line(const char *line, size_t len, void *arg)
{
    sum_arg *s = arg;
    const char *hit = strstr(line, s->pattern);

    if (hit != NULL && hit < line + len)
        s->sum += strtoll(hit + strlen(s->pattern), NULL, 10);
}

int64_t pf_log_sum(const char *log, const char *needle, const char *key)
{
    sum_arg s;

    snprintf(s.pattern, sizeof(s.pattern), "\"%s\":", key);
    s.sum = 0;
    each_line(log, needle, sum_line, &s);
    return s.sum;
}

double pf_metric(const char *metrics, const char *series)
{
    size_t n = strlen(series);

    for (const char *line = metrics; line != NULL && *line != '\0';) {
        if (strncmp(line, series, n) == 0 && line[n] == ' ')
            return strtod(line + n + 1, NULL);
        line = strchr(line, '\n');
        line = line != NULL ? line + 1 : NULL;
    }
    return -1;
}
