/* SPDX-License-Identifier: MIT */
/*
 * user_row.c - the user routes' inputs and the user row as JSON (see user_row_int.h).
 *
 * Values arrive as libpq text and are copied into JSON as they are, except the id, which the API
 * gives as a number.
 */
#include "handlers/user_row_int.h"

#include <inttypes.h>
#include <stdlib.h>

#include "handlers/kit_int.h"

int hs__user_args(svc_request *req, int64_t *id, int64_t *delay)
{
    int err = svc_request_param_id(req, "id", id);

    if (err == 0)
        err = svc_query_int(req, "delay_ms", 0, HS_DELAY_MAX_MS, 0, delay);
    return err;
}

json_t *hs__user_json(const char *id, const char *name, const char *email, const char *created_at)
{
    return json_pack("{s:I,s:s,s:s,s:s}", "id", (json_int_t)strtoll(id, NULL, 10), "name", name,
                     "email", email, "created_at", created_at);
}

bool hs__user_is_missing(const rt_db_result *r)
{
    return rt_db_result_rows(r) < 1 || rt_db_result_is_null(r, 0, 0);
}

json_t *hs__user_json_result(const rt_db_result *r, bool *missing)
{
    *missing = hs__user_is_missing(r);
    if (*missing)
        return NULL;
    return hs__user_json(rt_db_result_text(r, 0, 0), rt_db_result_text(r, 0, 1),
                         rt_db_result_text(r, 0, 2), rt_db_result_text(r, 0, 3));
}

void hs__user_respond_missing(svc_request *req, int64_t id)
{
    svc_respond_error(req, 404, "not_found", "user %" PRId64 " does not exist", id);
}
