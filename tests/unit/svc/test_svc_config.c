/* SPDX-License-Identifier: MIT */
/*
 * test_svc_config.c - settings from the environment and flags: defaults, precedence, ranges,
 * the exit decisions for --help, --version and invalid values.
 */
#define _GNU_SOURCE /* sched_getaffinity, CPU_COUNT */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "service/config.h"

static const char *const vars[] = {
    "PORT",      "DATABASE_URL", "DB_POOL_SIZE",   "REQUEST_TIMEOUT_MS", "BEFORE_ROUTES",
    "LOG_LEVEL", "LOG_FORMAT",   "MAX_BODY_BYTES", "MAX_CONNECTIONS",    "MAX_CONNECTIONS_PER_IP",
    "WORKERS",   "HOST"};

static int clean_env(void **state)
{
    (void)state;
    for (size_t i = 0; i < sizeof(vars) / sizeof(vars[0]); i++)
        unsetenv(vars[i]);
    return 0;
}

/* Room for every output of a parse: the --help texts run to several kilobytes. */
#define OUT_CAP 16384

/* Parses argv (NULL-terminated) and returns the decision; out/err text lands in the buffers. */
static int parse(svc_config *c, char **argv, char *out, char *err)
{
    int argc = 0;
    FILE *o = fmemopen(out, OUT_CAP, "w");
    FILE *e = fmemopen(err, OUT_CAP, "w");
    int rc;

    while (argv[argc] != NULL)
        argc++;
    rc = svc_config_parse(c, argc, argv, o, e);
    fclose(o);
    fclose(e);
    return rc;
}

/* What WORKERS=0 resolves to here: the CPUs of the affinity mask, capped by the CPU quota. */
static int auto_workers(void)
{
    cpu_set_t set;
    int n, quota = svc_config_cgroup_cpus("/sys/fs/cgroup", "/proc/self/cgroup");

    assert_int_equal(sched_getaffinity(0, sizeof(set), &set), 0);
    n = CPU_COUNT(&set);
    return quota > 0 && quota < n ? quota : n;
}

static void test_defaults(void **state)
{
    char *argv[] = {"hindsight", NULL};
    char out[OUT_CAP] = "", err[OUT_CAP] = "";
    svc_config c;

    (void)state;
    assert_int_equal(parse(&c, argv, out, err), SVC_CONFIG_RUN);
    assert_int_equal(c.port, 8080);
    assert_string_equal(c.host, "0.0.0.0");
    assert_null(c.database_url);
    assert_int_equal(c.request_timeout_ms, 30000);
    assert_int_equal(c.drain_delay_ms, 0);
    assert_int_equal(c.max_body_bytes, 1048576);
    assert_true(c.before_routes);
    assert_int_equal(c.log_level, SVC_LOG_INFO);
    assert_int_equal(c.log_format, SVC_LOG_JSON);
    /* WORKERS defaults to one loop per CPU the process may use. */
    assert_int_equal(c.workers, auto_workers());
    /* 0 per IP means "the global limit". */
    assert_int_equal(c.max_connections_per_ip, c.max_connections);
    assert_string_equal(err, "");
    svc_config_free(&c);
}

static void test_env_then_flags(void **state)
{
    char *argv[] = {"hindsight", "--port=9000",         "--log-format",
                    "text",      "--before-routes=off", NULL};
    char out[OUT_CAP] = "", err[OUT_CAP] = "";
    svc_config c;

    (void)state;
    setenv("PORT", "7000", 1);
    setenv("DB_POOL_SIZE", "4", 1);
    setenv("DATABASE_URL", "postgresql://u@127.0.0.1:1/db", 1);
    setenv("LOG_LEVEL", "debug", 1);
    setenv("HOST", "::1", 1);
    setenv("WORKERS", "2", 1);
    assert_int_equal(parse(&c, argv, out, err), SVC_CONFIG_RUN);
    assert_int_equal(c.workers, 2);
    assert_string_equal(c.host, "::1");
    assert_int_equal(c.port, 9000); /* the flag wins */
    assert_int_equal(c.db_pool_size, 4);
    assert_string_equal(c.database_url, "postgresql://u@127.0.0.1:1/db");
    assert_int_equal(c.log_level, SVC_LOG_DEBUG);
    assert_int_equal(c.log_format, SVC_LOG_TEXT);
    assert_false(c.before_routes);
    svc_config_free(&c);
}

static void test_invalid_values(void **state)
{
    struct {
        const char *env;
        const char *value;
    } bad[] = {{"PORT", "abc"},
               {"PORT", "65536"},
               {"PORT", "-1"},
               {"PORT", ""},
               {"DB_POOL_SIZE", "0"},
               {"REQUEST_TIMEOUT_MS", "1s"},
               {"BEFORE_ROUTES", "maybe"},
               {"LOG_LEVEL", "verbose"},
               {"LOG_FORMAT", "xml"},
               {"MAX_BODY_BYTES", "-5"},
               {"WORKERS", "-1"},
               {"WORKERS", "257"},
               {"HOST", "localhost"},
               {"HOST", "256.0.0.1"},
               {"HOST", ""}};
    char *argv[] = {"hindsight", NULL};

    (void)state;
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        char out[OUT_CAP] = "", err[OUT_CAP] = "";
        svc_config c;

        clean_env(NULL);
        setenv(bad[i].env, bad[i].value, 1);
        assert_int_equal(parse(&c, argv, out, err), SVC_CONFIG_EXIT_USAGE);
        /* The message names the setting. */
        assert_non_null(strstr(err, bad[i].env));
        svc_config_free(&c);
    }
}

/* WORKERS=0 asks for one loop per CPU the process may run on (its affinity mask). */
static void test_workers_auto(void **state)
{
    char *argv[] = {"hindsight", NULL};
    char out[OUT_CAP] = "", err[OUT_CAP] = "";
    svc_config c;

    (void)state;
    clean_env(NULL);
    setenv("WORKERS", "0", 1);
    assert_int_equal(parse(&c, argv, out, err), SVC_CONFIG_RUN);
    assert_int_equal(c.workers, auto_workers());
    svc_config_free(&c);
}

/* Writes text to dir/rel (creating the folders on the way). */
static void put(const char *dir, const char *rel, const char *text)
{
    char path[512], cmd[600];
    FILE *f;

    snprintf(path, sizeof(path), "%s/%s", dir, rel);
    snprintf(cmd, sizeof(cmd), "mkdir -p \"$(dirname '%s')\"", path);
    assert_int_equal(system(cmd), 0);
    f = fopen(path, "w");
    assert_non_null(f);
    fputs(text, f);
    fclose(f);
}

/* The CPU quota, read from a cgroup tree of the test's own. */
static void test_cgroup_cpu_quota(void **state)
{
    char dir[] = "/tmp/hs-cgroup-XXXXXX";
    char self[600], root[600], cmd[700];

    (void)state;
    assert_non_null(mkdtemp(dir));
    snprintf(self, sizeof(self), "%s/self", dir);
    snprintf(root, sizeof(root), "%s/fs", dir);

    /* No membership file and no v1 controller: no limit. */
    assert_int_equal(svc_config_cgroup_cpus(root, self), 0);

    /* v2: the tightest of the cgroup and its ancestors, rounded up (1.5 CPUs -> 2). */
    put(dir, "self", "0::/kube/pod/box\n");
    put(dir, "fs/kube/pod/box/cpu.max", "max 100000\n");
    assert_int_equal(svc_config_cgroup_cpus(root, self), 0);
    put(dir, "fs/kube/pod/cpu.max", "300000 100000\n");
    assert_int_equal(svc_config_cgroup_cpus(root, self), 3);
    put(dir, "fs/kube/cpu.max", "150000 100000\n");
    assert_int_equal(svc_config_cgroup_cpus(root, self), 2);
    put(dir, "fs/kube/pod/box/cpu.max", "50000 100000\n");
    assert_int_equal(svc_config_cgroup_cpus(root, self), 1);

    /* v1 (a hybrid membership file without "0::"): quota over period, -1 for none. */
    put(dir, "self", "4:cpu,cpuacct:/\n");
    put(dir, "fs/cpu/cpu.cfs_period_us", "100000\n");
    put(dir, "fs/cpu/cpu.cfs_quota_us", "-1\n");
    assert_int_equal(svc_config_cgroup_cpus(root, self), 0);
    put(dir, "fs/cpu/cpu.cfs_quota_us", "250000\n");
    assert_int_equal(svc_config_cgroup_cpus(root, self), 3);

    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
    assert_int_equal(system(cmd), 0);
}

static void test_bad_flags(void **state)
{
    char *unknown[] = {"hindsight", "--no-such-flag=1", NULL};
    char *missing[] = {"hindsight", "--port", NULL};
    char *bare[] = {"hindsight", "port=1", NULL};
    char *range[] = {"hindsight", "--request-timeout-ms=0", NULL};
    char **cases[] = {unknown, missing, bare, range};

    (void)state;
    for (size_t i = 0; i < 4; i++) {
        char out[OUT_CAP] = "", err[OUT_CAP] = "";
        svc_config c;

        assert_int_equal(parse(&c, cases[i], out, err), SVC_CONFIG_EXIT_USAGE);
        assert_true(strlen(err) > 0);
        svc_config_free(&c);
    }
}

static void test_help_and_version(void **state)
{
    char *help[] = {"hindsight", "--help", NULL};
    char *markdown[] = {"hindsight", "--help=markdown", NULL};
    char *version[] = {"hindsight", "--version", NULL};
    char out[OUT_CAP] = "", err[OUT_CAP] = "";
    svc_config c;

    (void)state;
    assert_int_equal(parse(&c, help, out, err), SVC_CONFIG_EXIT_OK);
    for (size_t i = 0; i < sizeof(vars) / sizeof(vars[0]); i++)
        assert_non_null(strstr(out, vars[i]));
    assert_non_null(strstr(out, "--request-timeout-ms"));
    assert_non_null(strstr(out, "default 8080"));
    assert_non_null(strstr(out, "--help=markdown"));
    svc_config_free(&c);
    /* The table docs/operations.md carries: one row per setting, '|' escaped inside cells. */
    assert_int_equal(parse(&c, markdown, out, err), SVC_CONFIG_EXIT_OK);
    assert_string_equal(err, "");
    assert_memory_equal(out, "| variable | flag | default | range | meaning |\n|---|", 35);
    for (size_t i = 0; i < sizeof(vars) / sizeof(vars[0]); i++) {
        char cell[64];

        snprintf(cell, sizeof(cell), "\n| `%s` | `--", vars[i]);
        assert_non_null(strstr(out, cell));
    }
    assert_non_null(strstr(out, "\n| `PORT` | `--port` | 8080 | 0..65535 | "));
    assert_non_null(strstr(out, "\n| `DATABASE_URL` | `--database-url` | (empty) | text | "));
    assert_non_null(strstr(out, "| debug\\|info\\|warn\\|error |\n"));
    assert_null(strstr(out, "default 8080"));
    svc_config_free(&c);
    assert_int_equal(parse(&c, version, out, err), SVC_CONFIG_EXIT_OK);
    assert_non_null(strstr(out, "hindsight " HS_VERSION));
    svc_config_free(&c);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup(test_defaults, clean_env),
        cmocka_unit_test_setup(test_env_then_flags, clean_env),
        cmocka_unit_test_setup(test_invalid_values, clean_env),
        cmocka_unit_test_setup(test_workers_auto, clean_env),
        cmocka_unit_test(test_cgroup_cpu_quota),
        cmocka_unit_test_setup(test_bad_flags, clean_env),
        cmocka_unit_test_setup(test_help_and_version, clean_env),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
