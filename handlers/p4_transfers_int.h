/* SPDX-License-Identifier: MIT */
/*
 * p4_transfers_int.h - what the two files of pattern 4 share: p4_transfers.c (the routes, the
 * `before` chain, the invariant) and p4_transfers_after.c (the transaction raced against
 * cancellation).
 */
#ifndef HS_TRANSFERS_INT_H
#define HS_TRANSFERS_INT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "handlers/kit_int.h"
#include "runtime/db.h"
#include "service/http.h"

/* Statements both variants run, with the same text so that they share a prepared name. */
#define HS_XFER_SQL_SLEEP "SELECT pg_sleep($1::float8 / 1000)"
#define HS_XFER_SQL_CREDIT                                                                         \
    "UPDATE accounts SET balance = balance + $1::bigint WHERE id = $2::bigint"
#define HS_XFER_SQL_TRANSFER                                                                       \
    "INSERT INTO transfers (from_account, to_account, amount, variant) "                           \
    "VALUES ($1::bigint, $2::bigint, $3::bigint, $4::text) RETURNING id"

/* The rows' state: one per process, on the root scope. */
typedef struct hs_xfer_state {
    svc_app *app;
    uint64_t *cancelled_before; /* cancelled mid-way: what was done stays done */
    uint64_t *rolled_back;      /* after: cancelled before COMMIT, rolled back */
    uint64_t *outcome_unknown;  /* after: COMMIT sent, its answer never came (503) */
    uint64_t *replayed;         /* after: answered from idempotency_keys */
} hs_xfer_state;

/* A transfer request, validated, with the text forms the statements take as parameters. */
typedef struct hs_xfer_args {
    int64_t from;
    int64_t to;
    int64_t amount;
    int64_t delay_ms;
    const char *key; /* borrowed from the request; NULL without Idempotency-Key */
    char from_s[HS_INT_TEXT];
    char to_s[HS_INT_TEXT];
    char amount_s[HS_INT_TEXT];
    char neg_amount_s[HS_INT_TEXT];
    char delay_s[HS_INT_TEXT];
    char canon[160]; /* the body as hashed for the key: fixed key order, defaults filled in */
} hs_xfer_args;

/**
 * The 200 body of a committed transfer, as text (new, free it): it is both sent and stored for
 * replays, byte for byte. NULL without memory.
 */
char *hs__xfer_success_body(const hs_xfer_args *a, int64_t transfer_id);

/** The refusal of a transfer whose account is missing (404) or, both found, short (409): returns
 * the status, sets *code (a literal) and writes the message into msg (size bytes). */
int hs__xfer_refusal(const hs_xfer_args *a, bool from_found, bool to_found, const char **code,
                     char *msg, size_t size);

/**
 * Sets a JSON response from text, which it steals (even NULL, which means no memory left and
 * becomes a 503): callers hand over the body they already own instead of copying it.
 */
void hs__xfer_respond_text(svc_request *req, int status, char *text);

/** Logs a statement the server refused (SQLSTATE and message), which the client never sees. */
void hs__xfer_log_db_error(const svc_request *req, const char *variant, const rt_db_result *r);

/**
 * The task of POST /after/transfers for req (borrowed until the response) with a (copied):
 * new, in INIT, released by the request scope. t is borrowed for the process lifetime. NULL
 * without memory.
 */
rt_task *hs__xfer_after_new(hs_xfer_state *t, svc_request *req, const hs_xfer_args *a);

#endif /* HS_TRANSFERS_INT_H */
