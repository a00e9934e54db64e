/* SPDX-License-Identifier: MIT */
/*
 * pt_async.c - the service fixture, threads, JSON, /metrics and libpq helpers for the pattern
 * tests (pt_async.h).
 */
#include "pt_async.h"

#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <curl/curl.h>

#define PT_DEFAULT_DB_URL "postgresql://postgres@127.0.0.1:54329/hindsight"

void pt_init(void)
{
    curl_global_init(CURL_GLOBAL_ALL);
}

int pt_service_setup(void **state)
{
    static pt_service s;

    pt_init();
    e2e_start(&s.proc, NULL, NULL, true);
    s.db = pt_db_connect();
    *state = &s;
    return 0;
}

int pt_service_teardown(void **state)
{
    pt_service *s = *state;

    PQfinish(s->db);
    e2e_stop(&s->proc);
    return 0;
}

static void *call_main(void *arg)
{
    pt_call *c = arg;

    c->start_ms = e2e_now_ms();
    e2e_request(c->proc, c->method, c->path, c->body, NULL, &c->resp);
    c->end_ms = e2e_now_ms();
    __atomic_store_n(&c->done, 1, __ATOMIC_RELEASE);
    return NULL;
}

bool pt_call_is_done(const pt_call *c)
{
    return __atomic_load_n(&c->done, __ATOMIC_ACQUIRE) != 0;
}

void pt_call_start(pt_call *c, const e2e_proc *p, const char *method, const char *path,
                   const char *body)
{
    memset(c, 0, sizeof(*c));
    c->proc = p;
    c->method = method;
    c->body = body;
    snprintf(c->path, sizeof(c->path), "%s", path);
    assert_int_equal(pthread_create(&c->thread, NULL, call_main, c), 0);
}

void pt_call_join(pt_call *c)
{
    assert_int_equal(pthread_join(c->thread, NULL), 0);
}

json_t *pt_json(const e2e_resp *r)
{
    json_error_t err;
    json_t *v = json_loads(r->body != NULL ? r->body : "", 0, &err);

    if (v == NULL)
        fail_msg("not JSON (%s): %s", err.text, r->body != NULL ? r->body : "(null)");
    return v;
}

void pt_assert_error(const e2e_resp *r, long status, const char *code)
{
    json_t *v = pt_json(r);
    json_t *e = json_object_get(v, "error");

    if (r->status != status)
        fail_msg("expected %ld, got %ld: %s", status, r->status, r->body);
    assert_true(json_is_object(e));
    assert_string_equal(json_string_value(json_object_get(e, "code")), code);
    assert_true(json_is_string(json_object_get(e, "message")));
    assert_true(strlen(json_string_value(json_object_get(e, "message"))) > 0);
    json_decref(v);
}

double pt_metric(const char *metrics, const char *series)
{
    size_t n = strlen(series);

    for (const char *line = metrics; line != NULL && *line != '\0';) {
        if (strncmp(line, series, n) == 0 && line[n] == ' ')
            return strtod(line + n + 1, NULL);
        line = strchr(line, '\n');
        if (line != NULL)
            line++;
    }
    fail_msg("no sample %s in /metrics", series);
    return 0;
}

PGconn *pt_db_connect(void)
{
    const char *url = getenv("TEST_DATABASE_URL");
    PGconn *db = PQconnectdb(url != NULL && *url != '\0' ? url : PT_DEFAULT_DB_URL);

    if (PQstatus(db) != CONNECTION_OK)
        fail_msg("cannot connect to the test database: %s", PQerrorMessage(db));
    return db;
}

bool pt_behind_pooler(void)
{
    const char *v = getenv("HS_TEST_TRANSACTION_POOLER");

    return v != NULL && strcmp(v, "1") == 0;
}

int64_t pt_db_int(PGconn *db, const char *sql, const char *param)
{
    const char *params[1] = {param};
    PGresult *res = PQexecParams(db, sql, param != NULL ? 1 : 0, NULL, params, NULL, NULL, 0);
    int64_t v;

    if (PQresultStatus(res) != PGRES_TUPLES_OK || PQntuples(res) < 1)
        fail_msg("%s: %s", sql, PQerrorMessage(db));
    v = strtoll(PQgetvalue(res, 0, 0), NULL, 10);
    PQclear(res);
    return v;
}

char *pt_batch_body(size_t n, int64_t first, int delay_ms, int concurrency)
{
    size_t cap = 64 + n * 24;
    char *buf = malloc(cap);
    size_t len;

    assert_non_null(buf);
    len = (size_t)snprintf(buf, cap, "{\"ids\":[");
    for (size_t i = 0; i < n; i++)
        len += (size_t)snprintf(buf + len, cap - len, "%s%lld", i ? "," : "",
                                (long long)(first + (int64_t)i));
    snprintf(buf + len, cap - len, "],\"delay_ms\":%d,\"concurrency\":%d}", delay_ms, concurrency);
    return buf;
}
