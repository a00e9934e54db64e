/* SPDX-License-Identifier: MIT */
/*
 * config.h - the service's configuration: environment variables, each also a --flag.
 *
 * One table (config.c) lists every setting with its environment name, flag, default, range and
 * help line; parsing, --help and the documentation's table (docs/operations.md: the output of
 * --help=markdown) all follow it. The environment is read first and flags override it, so a
 * container's environment can be adjusted from its command line. A value that does not parse or
 * is out of range stops the service at start with a message naming the setting (exit status 2):
 * a typo must never silently become a default.
 */
#ifndef SVC_CONFIG_H
#define SVC_CONFIG_H

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

#include "service/log.h"

/* The most event loops WORKERS may ask for. */
#define SVC_MAX_WORKERS 256

typedef struct svc_config svc_config;

struct svc_config {
    char *host;                    /* HOST: owned; the IPv4 or IPv6 address to listen on */
    int port;                      /* PORT: TCP port (0 picks a free one) */
    char *database_url;            /* DATABASE_URL: owned; NULL runs without a database */
    int db_pool_size;              /* DB_POOL_SIZE: connections in the pool */
    int db_queue_limit;            /* DB_QUEUE_LIMIT: requests waiting for a connection, then 503 */
    bool db_transaction_pooler;    /* DB_TRANSACTION_POOLER: a transaction-mode pooler in between */
    int db_cancel_timeout_ms;      /* DB_CANCEL_TIMEOUT_MS: a cancel's bound, then reconnect */
    int db_idle_check_ms;          /* DB_IDLE_CHECK_MS: idle connections are checked this often */
    int batch_concurrency;         /* BATCH_CONCURRENCY: default `concurrency` of after/batch */
    int request_timeout_ms;        /* REQUEST_TIMEOUT_MS: each request's deadline (504) */
    int drain_delay_ms;            /* DRAIN_DELAY_MS: keep serving after readiness turns 503 */
    int shutdown_grace_ms;         /* SHUTDOWN_GRACE_MS: wait for in-flight work, then cancel */
    int64_t max_body_bytes;        /* MAX_BODY_BYTES: larger bodies get 413 */
    int64_t max_body_buffer_bytes; /* MAX_BODY_BUFFER_BYTES: all bodies held; beyond, 503 */
    int max_connections;           /* MAX_CONNECTIONS: open connections, all clients together */
    int max_connections_per_ip;    /* MAX_CONNECTIONS_PER_IP: open connections from one address */
    int connection_timeout_s;      /* CONNECTION_TIMEOUT_S: idle or slow connections are closed */
    int header_timeout_ms;         /* HEADER_TIMEOUT_MS: whole-headers deadline, then 408 */
    int body_timeout_ms;           /* BODY_TIMEOUT_MS: whole-body deadline, then 408 */
    int liveness_max_stall_ms;     /* LIVENESS_MAX_STALL_MS: /healthz 503 beyond this stall */
    int connection_memory_bytes;   /* CONNECTION_MEMORY_BYTES: per-connection header buffer */
    bool before_routes;            /* BEFORE_ROUTES: serve the anti-pattern routes */
    svc_log_level log_level;       /* LOG_LEVEL: debug|info|warn|error */
    svc_log_format log_format;     /* LOG_FORMAT: json|text */
    int workers;                   /* WORKERS: event loops serving the port (0 resolved) */
};

/* What svc_config_parse decided. */
enum {
    SVC_CONFIG_RUN = 0,   /* start the service */
    SVC_CONFIG_EXIT_OK,   /* --help or --version was printed: exit 0 */
    SVC_CONFIG_EXIT_USAGE /* an invalid value or flag was reported on err: exit 2 */
};

/**
 * Fills c from the environment (getenv), then from argv (--name=value or --name value, names
 * in lower case with dashes: --request-timeout-ms). --help prints every setting with its default
 * to out, --help=markdown the same as a Markdown table; --version prints the version to out.
 * Problems are reported on err, one line each. Returns SVC_CONFIG_RUN, SVC_CONFIG_EXIT_OK or
 * SVC_CONFIG_EXIT_USAGE. c owns its strings afterwards, even on failure: release them with
 * svc_config_free.
 */
int svc_config_parse(svc_config *c, int argc, char **argv, FILE *out, FILE *err);

/** True when v is an IPv4 or IPv6 address literal (what HOST accepts). */
bool svc_config_is_ip_literal(const char *v);

/**
 * The CPUs the CPU controller of this process's cgroup grants, rounded up (cgroup v2 `cpu.max`
 * of its cgroup and every ancestor, the smallest; else cgroup v1 `cpu.cfs_quota_us` over
 * `cpu.cfs_period_us`), or 0 when there is no such limit. root is where the cgroup file systems
 * are mounted ("/sys/fs/cgroup") and self_cgroup the process's membership file
 * ("/proc/self/cgroup"); tests pass a tree of their own. A container limited to 1.5 CPUs gets 2.
 */
int svc_config_cgroup_cpus(const char *root, const char *self_cgroup);

/** Frees the strings c owns. */
void svc_config_free(svc_config *c);

#endif /* SVC_CONFIG_H */
