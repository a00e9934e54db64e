/* SPDX-License-Identifier: MIT */
/*
 * config.c - the settings table, and parsing the environment and the command line against it.
 *
 * Each setting is one row: environment name, kind, range, default and help. The flag name is
 * derived from the environment name (REQUEST_TIMEOUT_MS -> --request-timeout-ms), so the two can
 * never drift apart. Defaults are applied first, then the environment, then the flags, and every
 * value goes through the same parser, so `PORT=x` and `--port x` fail the same way.
 */
#define _GNU_SOURCE /* sched_getaffinity, CPU_COUNT */
#include "service/config.h"

#include <ctype.h>
#include <errno.h>
#include <sched.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>
#include <libpq-fe.h>
#include <microhttpd.h>
#include <uv.h>

typedef enum kind { K_INT, K_INT64, K_STR, K_HOST, K_BOOL, K_LEVEL, K_FORMAT } kind;

typedef struct setting {
    const char *env;
    kind kind;
    size_t offset;
    int64_t min;
    int64_t max;
    const char *dflt;
    const char *help;
} setting;

#define AT(f) offsetof(svc_config, f)

static const setting settings[] = {
    {"HOST", K_HOST, AT(host), 0, 0, "0.0.0.0",
     "address to listen on: an IPv4 or IPv6 literal (0.0.0.0: every IPv4 interface)"},
    {"PORT", K_INT, AT(port), 0, 65535, "8080", "TCP port to listen on (0 picks a free one)"},
    {"DATABASE_URL", K_STR, AT(database_url), 0, 0, "",
     "PostgreSQL connection string; empty runs without a database (readiness 503)"},
    {"DB_POOL_SIZE", K_INT, AT(db_pool_size), 1, 512, "16", "database connections in the pool"},
    {"DB_QUEUE_LIMIT", K_INT, AT(db_queue_limit), 0, 1000000, "1024",
     "requests allowed to wait for a connection; beyond it 503 + Retry-After"},
    {"DB_TRANSACTION_POOLER", K_BOOL, AT(db_transaction_pooler), 0, 0, "off",
     "DATABASE_URL is a pooler in transaction mode (PgBouncer pool_mode=transaction): on sends "
     "every statement unnamed and one at a time per connection (no prepared statements, no "
     "pipelining) and no session settings at connect: on|off"},
    {"DB_CANCEL_TIMEOUT_MS", K_INT, AT(db_cancel_timeout_ms), 1, 600000, "2000",
     "a cancelled statement must end within this (the cancel request included), else its "
     "connection is replaced"},
    {"DB_IDLE_CHECK_MS", K_INT, AT(db_idle_check_ms), 0, 3600000, "10000",
     "a connection idle this long is checked with an empty statement (answer within 5 s, else "
     "replaced), so a silent partition is noticed with no traffic; 0: never"},
    {"BATCH_CONCURRENCY", K_INT, AT(batch_concurrency), 1, 1000, "20",
     "default concurrency of POST /after/batch"},
    {"REQUEST_TIMEOUT_MS", K_INT, AT(request_timeout_ms), 1, 3600000, "30000",
     "deadline of each request; its work is cancelled and it answers 504"},
    {"DRAIN_DELAY_MS", K_INT, AT(drain_delay_ms), 0, 3600000, "0",
     "keep serving this long after readiness turns 503 at shutdown"},
    /* DRAIN_DELAY_MS + SHUTDOWN_GRACE_MS + the 5 s allowed for cancelled work end before the
     * SIGKILL that docker stop sends 10 s after SIGTERM by default (check_dockerfile.py). */
    {"SHUTDOWN_GRACE_MS", K_INT, AT(shutdown_grace_ms), 0, 3600000, "4000",
     "wait this long for in-flight work at shutdown, then cancel it"},
    {"MAX_BODY_BYTES", K_INT64, AT(max_body_bytes), 0, INT64_C(1) << 30, "1048576",
     "largest request body; larger ones get 413"},
    {"MAX_BODY_BUFFER_BYTES", K_INT64, AT(max_body_buffer_bytes), 0, INT64_C(1) << 40, "67108864",
     "request bodies buffered at once, all connections together; a body that would pass it gets "
     "503 with Retry-After"},
    {"MAX_CONNECTIONS", K_INT, AT(max_connections), 1, 1000000, "16384",
     "open connections, all clients together"},
    {"MAX_CONNECTIONS_PER_IP", K_INT, AT(max_connections_per_ip), 0, 1000000, "0",
     "open connections from one address; 0 means no limit of its own (MAX_CONNECTIONS; idle "
     "connections are closed oldest first when it is reached)"},
    {"CONNECTION_TIMEOUT_S", K_INT, AT(connection_timeout_s), 1, 3600, "30",
     "a connection idle (or sending this slowly) this long is closed"},
    {"HEADER_TIMEOUT_MS", K_INT, AT(header_timeout_ms), 1, 3600000, "60000",
     "a request's headers must arrive whole within this long (from the connection's start or "
     "the previous answer), else 408 and close"},
    {"BODY_TIMEOUT_MS", K_INT, AT(body_timeout_ms), 1, 3600000, "60000",
     "a request's body must arrive whole within this long of its headers, else 408 and close"},
    {"LIVENESS_MAX_STALL_MS", K_INT, AT(liveness_max_stall_ms), 0, 3600000, "10000",
     "/healthz answers 503 when the loop-lag probe has not run for this long (0: never)"},
    {"CONNECTION_MEMORY_BYTES", K_INT, AT(connection_memory_bytes), 4096, 1048576, "8192",
     "per-connection buffer for the request's headers and the response's; it is what an idle "
     "keep-alive connection costs"},
    {"BEFORE_ROUTES", K_BOOL, AT(before_routes), 0, 0, "on",
     "serve the anti-pattern (before) routes: on|off"},
    {"LOG_LEVEL", K_LEVEL, AT(log_level), 0, 0, "info", "debug|info|warn|error"},
    {"LOG_FORMAT", K_FORMAT, AT(log_format), 0, 0, "json", "json|text"},
    {"WORKERS", K_INT, AT(workers), 0, SVC_MAX_WORKERS, "0",
     "event loops serving the port, each on its own thread with its own share of "
     "DB_POOL_SIZE, MAX_CONNECTIONS and MAX_BODY_BUFFER_BYTES; 0: one per CPU the process may "
     "run on, capped by its cgroup's CPU quota"},
};

#define NSETTINGS (sizeof(settings) / sizeof(settings[0]))

static void flag_name(const setting *s, char *out, size_t cap)
{
    size_t i;

    for (i = 0; s->env[i] != '\0' && i + 1 < cap; i++)
        out[i] = s->env[i] == '_' ? '-' : (char)tolower((unsigned char)s->env[i]);
    out[i] = '\0';
}

static int parse_bool(const char *v, bool *out)
{
    static const char *const yes[] = {"on", "true", "1", "yes"};
    static const char *const no[] = {"off", "false", "0", "no"};

    for (size_t i = 0; i < 4; i++) {
        if (strcmp(v, yes[i]) == 0) {
            *out = true;
            return 0;
        }
        if (strcmp(v, no[i]) == 0) {
            *out = false;
            return 0;
        }
    }
    return UV_EINVAL;
}

/* Replaces the owned string *slot with a copy of v. */
static int set_string(char **slot, const char *v)
{
    char *copy = strdup(v);

    if (copy == NULL)
        return UV_ENOMEM;
    free(*slot);
    *slot = copy;
    return 0;
}

/* Reports on err that v is not a valid value of `from`, saying what is; returns UV_EINVAL. */
static int invalid(FILE *err, const char *from, const char *v, const char *expected)
{
    fprintf(err, "hindsight: invalid %s=%s: expected %s\n", from, v, expected);
    return UV_EINVAL;
}

/* Sets s in c from text v; on failure reports on err naming `from` (the env name or flag). */
static int apply(svc_config *c, const setting *s, const char *v, const char *from, FILE *err)
{
    char *p = (char *)c + s->offset;
    char *end;
    long long n;

    switch (s->kind) {
    case K_INT:
    case K_INT64:
        errno = 0;
        n = strtoll(v, &end, 10);
        if (v[0] == '\0' || *end != '\0' || errno != 0 || n < s->min || n > s->max) {
            char range[64];

            snprintf(range, sizeof(range), "an integer in %lld..%lld", (long long)s->min,
                     (long long)s->max);
            return invalid(err, from, v, range);
        }
        if (s->kind == K_INT)
            *(int *)(void *)p = (int)n;
        else
            *(int64_t *)(void *)p = n;
        return 0;
    case K_HOST:
        if (!svc_config_is_ip_literal(v))
            return invalid(err, from, v, "an IPv4 or IPv6 address");
        return set_string((char **)(void *)p, v);
    case K_STR:
        return set_string((char **)(void *)p, v);
    case K_BOOL:
        if (parse_bool(v, (bool *)(void *)p) < 0)
            return invalid(err, from, v, "on or off");
        return 0;
    case K_LEVEL:
        if (svc_log_level_parse(v, (svc_log_level *)(void *)p) < 0)
            return invalid(err, from, v, "debug, info, warn or error");
        return 0;
    case K_FORMAT:
        if (svc_log_format_parse(v, (svc_log_format *)(void *)p) < 0)
            return invalid(err, from, v, "json or text");
        return 0;
    }
    return UV_EINVAL;
}

bool svc_config_is_ip_literal(const char *v)
{
    struct sockaddr_in in4;
    struct sockaddr_in6 in6;

    return uv_ip4_addr(v, 0, &in4) == 0 || uv_ip6_addr(v, 0, &in6) == 0;
}

/* The version, then the libraries it runs with, as loaded (not as compiled against): what
 * the front door refuses itself depends on libmicrohttpd's (docs/architecture.md, "Facts about
 * our dependencies"). */
static void print_version(FILE *out)
{
    int pq = PQlibVersion();

    fprintf(out, "hindsight %s\n", HS_VERSION);
    fprintf(out, "libmicrohttpd %s\n", MHD_get_version());
    fprintf(out, "libuv %s\n", uv_version_string());
    fprintf(out, "libpq %d.%d\n", pq / 10000, pq % 10000);
    fprintf(out, "jansson %s\n", jansson_version_str());
}

static void print_help(FILE *out)
{
    char flag[64];

    fprintf(out, "usage: hindsight [--flag=value ...]\n\n"
                 "Every setting is an environment variable and a flag; the flag wins.\n\n");
    for (size_t i = 0; i < NSETTINGS; i++) {
        flag_name(&settings[i], flag, sizeof(flag));
        fprintf(out, "  --%-24s %-24s default %-8s %s\n", flag, settings[i].env,
                settings[i].dflt[0] ? settings[i].dflt : "(empty)", settings[i].help);
    }
    fprintf(out, "\n  --help                     this list\n"
                 "  --help=markdown            this list as a Markdown table\n"
                 "  --version                  print the version\n");
}

/* Writes s to out with every '|' escaped, so it stays inside one Markdown table cell. */
static void put_cell(FILE *out, const char *s)
{
    for (; *s != '\0'; s++) {
        if (*s == '|')
            fputc('\\', out);
        fputc(*s, out);
    }
}

/*
 * The same table as --help, as Markdown: docs/operations.md carries this output between two
 * marker comments, and tests/lint/check_config_doc.sh fails when the two differ, so the
 * documented names, flags, defaults and ranges are always the parser's own.
 */
static void print_help_markdown(FILE *out)
{
    char flag[64];

    fprintf(out, "| variable | flag | default | range | meaning |\n|---|---|---|---|---|\n");
    for (size_t i = 0; i < NSETTINGS; i++) {
        const setting *s = &settings[i];

        flag_name(s, flag, sizeof(flag));
        fprintf(out, "| `%s` | `--%s` | %s | ", s->env, flag, s->dflt[0] ? s->dflt : "(empty)");
        switch (s->kind) {
        case K_INT:
        case K_INT64:
            fprintf(out, "%lld..%lld", (long long)s->min, (long long)s->max);
            break;
        case K_HOST:
            fprintf(out, "IPv4 or IPv6 literal");
            break;
        case K_STR:
            fprintf(out, "text");
            break;
        case K_BOOL:
            fprintf(out, "on, off");
            break;
        case K_LEVEL:
            fprintf(out, "debug, info, warn, error");
            break;
        case K_FORMAT:
            fprintf(out, "json, text");
            break;
        }
        fprintf(out, " | ");
        put_cell(out, s->help);
        fprintf(out, " |\n");
    }
}

static const setting *find_flag(const char *name, size_t len)
{
    char flag[64];

    for (size_t i = 0; i < NSETTINGS; i++) {
        flag_name(&settings[i], flag, sizeof(flag));
        if (strlen(flag) == len && memcmp(flag, name, len) == 0)
            return &settings[i];
    }
    return NULL;
}

int svc_config_parse(svc_config *c, int argc, char **argv, FILE *out, FILE *err)
{
    int bad = 0;

    memset(c, 0, sizeof(*c));
    for (size_t i = 0; i < NSETTINGS; i++) {
        if (apply(c, &settings[i], settings[i].dflt, settings[i].env, err) < 0)
            return SVC_CONFIG_EXIT_USAGE;
    }
    for (size_t i = 0; i < NSETTINGS; i++) {
        const char *v = getenv(settings[i].env);

        if (v != NULL && apply(c, &settings[i], v, settings[i].env, err) < 0)
            bad = 1;
    }
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        const char *eq;
        const setting *s;
        char from[72];
        size_t len;

        if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
            print_help(out);
            return SVC_CONFIG_EXIT_OK;
        }
        if (strcmp(a, "--help=markdown") == 0) {
            print_help_markdown(out);
            return SVC_CONFIG_EXIT_OK;
        }
        if (strcmp(a, "--version") == 0) {
            print_version(out);
            return SVC_CONFIG_EXIT_OK;
        }
        if (strncmp(a, "--", 2) != 0) {
            fprintf(err, "hindsight: unexpected argument %s (see --help)\n", a);
            bad = 1;
            continue;
        }
        eq = strchr(a + 2, '=');
        len = eq ? (size_t)(eq - a - 2) : strlen(a + 2);
        s = find_flag(a + 2, len);
        if (s == NULL) {
            fprintf(err, "hindsight: unknown flag %.*s (see --help)\n", (int)(len + 2), a);
            bad = 1;
            continue;
        }
        if (eq == NULL && i + 1 >= argc) {
            fprintf(err, "hindsight: flag %s needs a value\n", a);
            bad = 1;
            continue;
        }
        snprintf(from, sizeof(from), "--%.*s", (int)len, a + 2);
        if (apply(c, s, eq ? eq + 1 : argv[++i], from, err) < 0)
            bad = 1;
    }
    if (c->database_url != NULL && c->database_url[0] == '\0') {
        free(c->database_url);
        c->database_url = NULL;
    }
    if (c->max_connections_per_ip == 0 || c->max_connections_per_ip > c->max_connections)
        c->max_connections_per_ip = c->max_connections;
    if (c->workers == 0) {
        cpu_set_t set;
        int quota = svc_config_cgroup_cpus("/sys/fs/cgroup", "/proc/self/cgroup");

        /* The CPUs this process may run on (taskset, a container's cpuset), not the machine's;
         * and no more than its CPU quota grants (a container's --cpus, a pod's CPU limit), where
         * more loops than CPUs would only be throttled in turn. */
        c->workers = sched_getaffinity(0, sizeof(set), &set) == 0 ? CPU_COUNT(&set) : 1;
        if (quota > 0 && quota < c->workers)
            c->workers = quota;
        if (c->workers < 1)
            c->workers = 1;
        if (c->workers > SVC_MAX_WORKERS)
            c->workers = SVC_MAX_WORKERS;
    }
    return bad ? SVC_CONFIG_EXIT_USAGE : SVC_CONFIG_RUN;
}

/* CPUs granted by quota us every period us, rounded up; 0 for no limit ("max", -1, junk). */
static int quota_cpus(long long quota, long long period)
{
    if (quota <= 0 || period <= 0)
        return 0;
    return (int)((quota + period - 1) / period);
}

/* The first line of path, read into buf; false when it cannot be read. */
static bool read_line(const char *path, char *buf, size_t cap)
{
    FILE *f = fopen(path, "r");
    bool ok;

    if (f == NULL)
        return false;
    ok = fgets(buf, (int)cap, f) != NULL;
    fclose(f);
    return ok;
}

int svc_config_cgroup_cpus(const char *root, const char *self_cgroup)
{
    char line[4096], path[4352], v[128];
    char *rel = NULL;
    int best = 0;
    FILE *f = fopen(self_cgroup, "r");

    /* cgroup v2: "0::/some/path". */
    if (f != NULL) {
        while (fgets(line, sizeof(line), f) != NULL) {
            if (strncmp(line, "0::", 3) == 0) {
                line[strcspn(line, "\n")] = '\0';
                rel = line + 3;
                break;
            }
        }
        fclose(f);
    }
    if (rel != NULL) {
        /* The cgroup and each ancestor up to the root: the smallest limit is the one that binds. */
        for (;;) {
            long long quota, period;
            char *slash;

            snprintf(path, sizeof(path), "%s%s/cpu.max", root, rel);
            if (read_line(path, v, sizeof(v))) {
                int cpus = 0;

                if (sscanf(v, "%lld %lld", &quota, &period) == 2)
                    cpus = quota_cpus(quota, period);
                if (cpus > 0 && (best == 0 || cpus < best))
                    best = cpus;
            }
            slash = strrchr(rel, '/');
            if (slash == NULL || rel[0] == '\0')
                break;
            *slash = '\0'; /* "/a/b" -> "/a" -> "" (the root) */
        }
        if (best > 0)
            return best;
    }
    /* cgroup v1, as a container sees it (its own cgroup mounted at the controller's root). */
    {
        long long quota = 0, period = 0;

        snprintf(path, sizeof(path), "%s/cpu/cpu.cfs_quota_us", root);
        if (read_line(path, v, sizeof(v)))
            quota = strtoll(v, NULL, 10);
        snprintf(path, sizeof(path), "%s/cpu/cpu.cfs_period_us", root);
        if (read_line(path, v, sizeof(v)))
            period = strtoll(v, NULL, 10);
        return quota_cpus(quota, period);
    }
}

void svc_config_free(svc_config *c)
{
    free(c->database_url);
    c->database_url = NULL;
    free(c->host);
    c->host = NULL;
}
