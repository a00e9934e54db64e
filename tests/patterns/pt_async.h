/* SPDX-License-Identifier: MIT */
/*
 * pt_async.h - what the tests of patterns 0 and 2 share on top of tests/e2e/e2e.h: a group
 * fixture (the service and a database connection), requests running on their own threads (so a
 * test can watch the service while they are in flight), JSON bodies, a look at /metrics, and a
 * plain libpq connection for checking from the outside what the service wrote.
 *
 * Each helper fails the test (cmocka) on the test's main thread when something it needs is
 * missing; the request threads themselves never assert.
 */
#ifndef HS_PT_ASYNC_H
#define HS_PT_ASYNC_H

#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>

#include <jansson.h>
#include <libpq-fe.h>

#include "e2e/e2e.h"

/* One request on a thread of its own. */
typedef struct pt_call {
    const e2e_proc *proc;
    const char *method;
    char path[256];
    const char *body; /* borrowed until pt_call_join */
    e2e_resp resp;    /* valid after pt_call_join; release with e2e_resp_free */
    uint64_t start_ms;
    uint64_t end_ms;
    int done; /* set (atomically) by the thread when resp is complete */
    pthread_t thread;
} pt_call;

/** Starts method path (body may be NULL) on a new thread. */
void pt_call_start(pt_call *c, const e2e_proc *p, const char *method, const char *path,
                   const char *body);

/** True once the call has been answered (pt_call_join will not wait). */
bool pt_call_is_done(const pt_call *c);

/** Waits for the call; then c->resp and the times are set. */
void pt_call_join(pt_call *c);

/** The body of r parsed as JSON (new); fails the test if it is not JSON. */
json_t *pt_json(const e2e_resp *r);

/**
 * Asserts r has the given status and the API's error shape {"error":{"code","message"}} with
 * the given code.
 */
void pt_assert_error(const e2e_resp *r, long status, const char *code);

/**
 * The value of the first sample of /metrics whose line starts with series followed by a space
 * (e.g. `hs_db_connections{state="busy"}`); fails the test if there is none.
 */
double pt_metric(const char *metrics, const char *series);

/** Connects to TEST_DATABASE_URL (else deploy/pg.sh's default); fails the test if it can't. */
PGconn *pt_db_connect(void);

/** True when TEST_DATABASE_URL is a pooler in transaction mode (HS_TEST_TRANSACTION_POOLER=1,
 * set by tests/db/pgbouncer.sh). */
bool pt_behind_pooler(void);

/** Runs sql with one text parameter (or none: NULL) and returns the integer at row 0, col 0. */
int64_t pt_db_int(PGconn *db, const char *sql, const char *param);

/** A batch body: ids first..first+n-1, delay_ms and concurrency. Owned by the caller (free). */
char *pt_batch_body(size_t n, int64_t first, int delay_ms, int concurrency);

/** Curl's global initialization, once, before any thread makes a request. */
void pt_init(void);

/* A group fixture: the built binary with a database, and a plain connection to that database. */
typedef struct pt_service {
    e2e_proc proc;
    PGconn *db;
} pt_service;

/**
 * cmocka group setup: pt_init, starts the service on TEST_DATABASE_URL and connects to the
 * database; *state is a static pt_service. Fails the test if either does not come up.
 */
int pt_service_setup(void **state);

/** cmocka group teardown of pt_service_setup: closes the connection and stops the service. */
int pt_service_teardown(void **state);

#endif /* HS_PT_ASYNC_H */
