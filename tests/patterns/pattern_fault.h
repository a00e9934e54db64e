/* SPDX-License-Identifier: MIT */
/*
 * pattern_fault.h - what the tests of patterns 3 and 4 share on top of tests/e2e/e2e.h: a fresh
 * database per test, many requests in flight at once with a signal sent in the middle of them,
 * and counting in the service's log.
 *
 * These tests move money and write audit rows on purpose, and some of them break the invariant
 * on purpose: so each one runs the service against a database of its own, created on
 * TEST_DATABASE_URL's server (the service migrates and seeds an empty database at start) and
 * dropped at the end, and the shared database other tests read is never touched.
 *
 * Requests in a burst go through one libcurl multi handle on the test's thread, so hundreds are
 * in flight at once without threads, and the signal is sent from the same loop at a chosen time.
 */
#ifndef HS_PATTERN_FAULT_H
#define HS_PATTERN_FAULT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "e2e/e2e.h"

/* A database of one test's own. */
typedef struct pf_db {
    char name[64];
    char url[512]; /* TEST_DATABASE_URL with the database name replaced */
    void *watch;   /* a PGconn kept open for pf_db_sleeping's polls, or NULL */
} pf_db;

/** Creates a fresh, empty database named after tag and the test's pid (dropped first if left
 * over). Fails the test if the server cannot be reached. */
void pf_db_create(pf_db *d, const char *tag);

/** Drops the database (terminating any session left on it). */
void pf_db_drop(pf_db *d);

/** Runs sql (no parameters) on d and returns the integer in row 0, column 0; fails the test on
 * an error or a NULL. */
int64_t pf_db_int(const pf_db *d, const char *sql);

/**
 * Starts the service on d with the extra environment env ("NAME=value", NULL-terminated; may be
 * NULL) and waits up to 60 s for /readyz to say ready (the pool is connected).
 */
void pf_start(e2e_proc *p, const pf_db *d, const char *const *env);

/* One request of a burst. Fill method, path, body and key; the rest is the result. */
typedef struct pf_req {
    const char *method;
    char path[160];
    char body[200];
    char key[64];        /* Idempotency-Key, or "" for none */
    long status;         /* 0 when no response came (refused, reset) */
    char resp[512];      /* the response body, cut to fit */
    bool replayed;       /* the response said Idempotent-Replayed: true */
    uint64_t elapsed_ms; /* from the burst's start to this response */
} pf_req;

/**
 * Sends every request of reqs at once and waits for all of them (each bounded by 60 s). When
 * signal_after_ms >= 0, sends sig to the service that many milliseconds after the start, while
 * the requests are in flight.
 */
void pf_burst(const e2e_proc *p, pf_req *reqs, size_t n, int signal_after_ms, int sig);

/* A condition on observable state (a row, a session, a metric), polled during a burst. */
typedef bool (*pf_ready_fn)(void *arg);

/**
 * Like pf_burst, but sends sig once ready(arg) returns true, polled about every 10 ms while the
 * requests are in flight: a signal tied to what the service has done, not to the clock, holds on
 * a busy machine. Fails the test if every request finished first, or after 30 s.
 */
void pf_burst_when(const e2e_proc *p, pf_req *reqs, size_t n, int sig, pf_ready_fn ready,
                   void *arg);

/** How many sessions on d's database wait in pg_sleep (a transfer between its debit and its
 * credit, a welcome event being written). Polls on one connection kept open until pf_db_drop,
 * so that a poll costs a query, not a connection (slow on a busy machine). */
int64_t pf_db_sleeping(pf_db *d);

/** How many requests of reqs got status. */
size_t pf_count_status(const pf_req *reqs, size_t n, long status);

/** How many lines of log contain every one of the NULL-terminated needles. */
size_t pf_log_count(const char *log, const char *const *needles);

/**
 * Sums the integer field `"key":<n>` over the lines of log containing needle (a JSON log).
 */
int64_t pf_log_sum(const char *log, const char *needle, const char *key);

/** The number after `series ` in a /metrics text, or -1 when the series is absent. */
double pf_metric(const char *metrics, const char *series);

#endif /* HS_PATTERN_FAULT_H */
