/* SPDX-License-Identifier: MIT */
/*
 * test_e2e_migrate.c - the schema is brought up to date at start: three instances started at
 * once on an empty database apply each file exactly once (the advisory lock), the seed gives the
 * documented data, a restart applies nothing, and emptied seed tables are seeded again.
 *
 * It needs a PostgreSQL server (TEST_DATABASE_URL) and creates a private database on it, so the
 * shared test database is never touched; without TEST_DATABASE_URL it is skipped.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <glob.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <curl/curl.h>
#include <libpq-fe.h>

#include "e2e.h"

static char admin_url[512];
static char test_url[512];
static char dbname[64];

/* Runs sql on url; returns the first value of the first row (static), or "" for none. */
static const char *sql1(const char *url, const char *sql)
{
    static char value[256];
    PGconn *c = PQconnectdb(url);
    PGresult *r;

    assert_int_equal(PQstatus(c), CONNECTION_OK);
    r = PQexec(c, sql);
    if (PQresultStatus(r) != PGRES_TUPLES_OK && PQresultStatus(r) != PGRES_COMMAND_OK)
        fail_msg("%s: %s", sql, PQerrorMessage(c));
    snprintf(value, sizeof(value), "%s",
             PQntuples(r) > 0 && PQnfields(r) > 0 ? PQgetvalue(r, 0, 0) : "");
    PQclear(r);
    PQfinish(c);
    return value;
}

static int setup(void **state)
{
    const char *url = getenv("TEST_DATABASE_URL");
    PGconn *c;
    char *slash;

    (void)state;
    if (url == NULL || url[0] == '\0')
        return 0;
    curl_global_init(CURL_GLOBAL_DEFAULT);
    snprintf(admin_url, sizeof(admin_url), "%s", url);
    snprintf(dbname, sizeof(dbname), "hs_migrate_%d", (int)getpid());
    /* postgresql://user@host:port/db -> the same server, another database. */
    slash = strrchr(admin_url, '/');
    assert_non_null(slash);
    assert_true(slash > strstr(admin_url, "//") + 1);
    snprintf(test_url, sizeof(test_url), "%.*s/%s", (int)(slash - admin_url), admin_url, dbname);
    c = PQconnectdb(admin_url);
    assert_int_equal(PQstatus(c), CONNECTION_OK);
    PQfinish(c);
    char sql[128];
    snprintf(sql, sizeof(sql), "CREATE DATABASE %s", dbname);
    sql1(admin_url, sql);
    return 0;
}

static int teardown(void **state)
{
    char sql[160];

    (void)state;
    e2e_kill_all();
    if (dbname[0] == '\0' || admin_url[0] == '\0')
        return 0;
    snprintf(sql, sizeof(sql), "DROP DATABASE IF EXISTS %s WITH (FORCE)", dbname);
    sql1(admin_url, sql);
    curl_global_cleanup();
    return 0;
}

static int count_in_log(const e2e_proc *p, const char *needle)
{
    char *log = e2e_log(p);
    int n = 0;

    for (const char *s = log; (s = strstr(s, needle)) != NULL; s += strlen(needle))
        n++;
    free(log);
    return n;
}

/* How many SQL files the binary embeds: the .sql files of deploy/sql in the source tree. */
static int sql_files(void)
{
    char pattern[1024];
    glob_t g;
    int n;

    assert_non_null(getenv("HS_SOURCE_DIR"));
    snprintf(pattern, sizeof(pattern), "%s/deploy/sql/*.sql", getenv("HS_SOURCE_DIR"));
    assert_int_equal(glob(pattern, 0, NULL, &g), 0);
    n = (int)g.gl_pathc;
    globfree(&g);
    return n;
}

static void test_concurrent_start_migrates_once(void **state)
{
    char env_url[600];
    const char *env[] = {env_url, NULL};
    e2e_proc p[3];
    int applied = 0;
    int files;
    char want[16];

    (void)state;
    if (admin_url[0] == '\0')
        skip();
    files = sql_files();
    assert_true(files >= 2);
    snprintf(want, sizeof(want), "%d", files);
    snprintf(env_url, sizeof(env_url), "DATABASE_URL=%s", test_url);
    for (int i = 0; i < 3; i++)
        e2e_start(&p[i], env, NULL, false);
    /* e2e_start does not wait here, so the three race for the lock; now wait for each. */
    for (int i = 0; i < 3; i++) {
        uint64_t until = e2e_now_ms() + 60000;
        e2e_resp r = {0};

        do {
            e2e_resp_free(&r);
            e2e_sleep_ms(50);
            e2e_get(&p[i], "/healthz", &r);
        } while (r.status != 200 && e2e_now_ms() < until);
        assert_int_equal(r.status, 200);
        e2e_resp_free(&r);
    }
    for (int i = 0; i < 3; i++)
        applied += count_in_log(&p[i], "\"step\":\"applied\"");
    /* Each file (schema, seed, and later ones) applied by exactly one of the three. */
    assert_int_equal(applied, files);
    assert_string_equal(sql1(test_url, "SELECT count(*) FROM schema_migrations"), want);
    assert_string_equal(sql1(test_url, "SELECT count(*) FROM users"), "10000");
    assert_string_equal(sql1(test_url, "SELECT count(*) FROM settings"), "10000");
    assert_string_equal(sql1(test_url, "SELECT sum(balance) FROM accounts"), "10000000");
    for (int i = 0; i < 3; i++)
        e2e_stop(&p[i]);

    /* A restart finds nothing to do. */
    e2e_start(&p[0], env, NULL, true);
    assert_int_equal(count_in_log(&p[0], "\"step\":\"applied\""), 0);
    e2e_stop(&p[0]);

    /* Emptied seed tables are seeded again; the schema is not re-applied. */
    sql1(test_url, "TRUNCATE users, settings, accounts, transfers, ledger, batch_results, "
                   "audit_events, idempotency_keys");
    e2e_start(&p[0], env, NULL, true);
    assert_int_equal(count_in_log(&p[0], "\"file\":\"002_seed.sql\""), 1);
    assert_int_equal(count_in_log(&p[0], "\"file\":\"001_schema.sql\""), 0);
    assert_string_equal(sql1(test_url, "SELECT count(*) FROM accounts"), "10000");
    e2e_stop(&p[0]);
}

static void test_unreachable_database_fails_start(void **state)
{
    const char *env[] = {"DATABASE_URL=postgresql://nobody@127.0.0.1:1/none?connect_timeout=1",
                         NULL};
    e2e_proc p;

    (void)state;
    if (admin_url[0] == '\0')
        skip();
    /* The startup wait is 30 s; the test allows it plus a margin. */
    e2e_start(&p, env, NULL, false);
    assert_int_equal(e2e_wait_exit(&p, 45000), 1);
    assert_true(count_in_log(&p, "\"event\":\"migrate\"") >= 1);
    unlink(p.log_path);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_concurrent_start_migrates_once),
        cmocka_unit_test(test_unreachable_database_fails_start),
    };

    return cmocka_run_group_tests(tests, setup, teardown);
}
