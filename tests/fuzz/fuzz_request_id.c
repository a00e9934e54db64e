/* SPDX-License-Identifier: MIT */
/*
 * fuzz_request_id.c - the client's X-Request-Id: kept when sane, replaced otherwise.
 *
 * The input is the header's value (a NUL ends it, as in the C string MHD hands over). The id is
 * echoed in a response header and in every log line of the request, so whatever the client sent,
 * the id the request ends up with must be 1..SVC_REQUEST_ID_MAX characters of [A-Za-z0-9._-]:
 * no CR or LF to split a header, no quote to break a JSON log line. A sane id is kept verbatim.
 *
 * The same bytes as a traceparent header: whatever they are, the request ends up with a trace id
 * and a span id in lower-case hex, not all zeros, and answers with a well-formed version-00
 * traceparent naming them; a header that parses keeps its trace id.
 */
#include "fuzz.h"

#include <stdlib.h>
#include <string.h>

static bool is_sane(const char *id)
{
    size_t n = strlen(id);

    return n >= 1 && n <= SVC_REQUEST_ID_MAX &&
           strspn(id, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-") == n;
}

/* n lower-case hex digits, not all zeros. */
static bool is_id(const char *s, size_t n)
{
    return strlen(s) == n && strspn(s, "0123456789abcdef") == n && strspn(s, "0") != n;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *client = fuzz_strndup(data, size);
    svc_request req;
    svc_traceparent parsed;
    const char *tp;

    svc_request_init(&req, NULL, NULL, "GET", "/fuzz");
    FUZZ_CHECK(svc_request_id_is_sane(client) == is_sane(client));
    svc_request_set_id(&req, size > 0 && data[0] == 0 ? NULL : client);
    FUZZ_CHECK(req.request_id == req.id_buf && is_sane(req.request_id));
    if (is_sane(client) && data[0] != 0)
        FUZZ_CHECK(strcmp(req.request_id, client) == 0);
    svc_request_set_trace(&req, client);
    FUZZ_CHECK(is_id(req.trace_id, SVC_TRACE_ID_LEN) && is_id(req.span_id, SVC_SPAN_ID_LEN));
    tp = svc_request_traceparent(&req);
    FUZZ_CHECK(strlen(tp) == SVC_TRACEPARENT_LEN && strncmp(tp, "00-", 3) == 0 &&
               strncmp(tp + 3, req.trace_id, SVC_TRACE_ID_LEN) == 0 && tp[35] == '-' &&
               strncmp(tp + 36, req.span_id, SVC_SPAN_ID_LEN) == 0 && tp[52] == '-' &&
               (strcmp(tp + 53, "00") == 0 || strcmp(tp + 53, "01") == 0));
    if (svc_traceparent_parse(client, &parsed) == 0)
        FUZZ_CHECK(strcmp(parsed.trace_id, req.trace_id) == 0 &&
                   strncmp(client + 3, req.trace_id, SVC_TRACE_ID_LEN) == 0);
    free(client);
    return 0;
}
