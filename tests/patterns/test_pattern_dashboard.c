/* SPDX-License-Identifier: MIT */
/*
 * test_pattern_dashboard.c - pattern 2, the dashboard: three slow queries awaited one after
 * another (`before`, about three delays) or joined (`after`, about one), against the built
 * binary.
 *
 * Both variants must return the same body, checked against the database itself: the seeded
 * user and settings, and the newest transfers touching the user's account as SQL lists them.
 * A missing user is a 404 on both sides; malformed ids and delays are 400s.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "pt_async.h"

#define DELAY_MS 200

/* The ids SQL gives for the user's ten newest transfers, newest first, comma separated. */
static void expected_transfer_ids(PGconn *db, const char *user, char *out, size_t cap)
{
    const char *params[1] = {user};
    PGresult *res = PQexecParams(
        db,
        "SELECT coalesce(string_agg(id::text, ',' ORDER BY id DESC), '') FROM (SELECT t.id FROM "
        "transfers t JOIN accounts a ON a.id IN (t.from_account, t.to_account) WHERE a.user_id = "
        "$1::bigint ORDER BY t.id DESC LIMIT 10) s",
        1, NULL, params, NULL, NULL, 0);

    assert_int_equal(PQresultStatus(res), PGRES_TUPLES_OK);
    snprintf(out, cap, "%s", PQgetvalue(res, 0, 0));
    PQclear(res);
}

/* Checks the dashboard of user `id` in r against the seed and the database. True when the
 * transfers matched (they may not when another test wrote one in between). */
static bool check_dashboard(PGconn *db, const e2e_resp *r, int id)
{
    static const char *const locales[] = {"en-US", "de-DE", "fr-FR", "ja-JP"};
    json_t *v = pt_json(r);
    json_t *user = json_object_get(v, "user");
    json_t *settings = json_object_get(v, "settings");
    json_t *transfers = json_object_get(v, "recent_transfers");
    char name[32];
    char idtxt[32];
    char want[512];
    char got[512] = "";
    size_t len = 0;
    size_t i;

    assert_int_equal(r->status, 200);
    snprintf(name, sizeof(name), "User %d", id);
    assert_int_equal(json_integer_value(json_object_get(user, "id")), id);
    assert_string_equal(json_string_value(json_object_get(user, "name")), name);
    assert_true(json_is_string(json_object_get(user, "created_at")));
    /* The seed: theme by parity, locale by id % 4, notifications unless id % 3 == 0. */
    assert_string_equal(json_string_value(json_object_get(settings, "theme")),
                        id % 2 == 0 ? "dark" : "light");
    assert_string_equal(json_string_value(json_object_get(settings, "locale")), locales[id % 4]);
    assert_true(json_is_boolean(json_object_get(settings, "notifications")));
    assert_int_equal(json_is_true(json_object_get(settings, "notifications")), id % 3 != 0);
    assert_true(json_is_array(transfers));
    assert_true(json_array_size(transfers) <= 10);
    for (i = 0; i < json_array_size(transfers); i++) {
        json_t *t = json_array_get(transfers, i);
        int64_t from = json_integer_value(json_object_get(t, "from"));
        int64_t to = json_integer_value(json_object_get(t, "to"));

        assert_true(from == id || to == id);
        assert_true(json_integer_value(json_object_get(t, "amount")) > 0);
        assert_true(json_is_string(json_object_get(t, "created_at")));
        len += (size_t)snprintf(got + len, sizeof(got) - len, "%s%lld", i ? "," : "",
                                (long long)json_integer_value(json_object_get(t, "id")));
    }
    snprintf(idtxt, sizeof(idtxt), "%d", id);
    expected_transfer_ids(db, idtxt, want, sizeof(want));
    json_decref(v);
    return strcmp(got, want) == 0;
}

static double dashboard_ms(pt_service *fx, const char *variant, int id, int delay)
{
    char path[128];
    e2e_resp r;
    double ms;
    bool same = false;

    snprintf(path, sizeof(path), "/%s/users/%d/dashboard?delay_ms=%d", variant, id, delay);
    /* Transfers written by other tests between our request and our SQL: ask again. */
    for (int attempt = 0; attempt < 3 && !same; attempt++) {
        e2e_get(&fx->proc, path, &r);
        ms = r.total_s * 1000;
        same = check_dashboard(fx->db, &r, id);
        e2e_resp_free(&r);
    }
    assert_true(same);
    return ms;
}

/* before costs about three delays, after about one; the bodies agree with the database. */
static void test_dashboard_timing_and_body(void **state)
{
    pt_service *fx = *state;
    double before_ms = dashboard_ms(fx, "before", 7, DELAY_MS);
    double after_ms = dashboard_ms(fx, "after", 7, DELAY_MS);

    printf("# dashboard with delay_ms=%d: before %.1f ms, after %.1f ms\n", DELAY_MS, before_ms,
           after_ms);
    assert_true(before_ms >= 2.5 * DELAY_MS);
    assert_true(after_ms >= 0.9 * DELAY_MS);
    assert_true(after_ms < 2.0 * DELAY_MS);
    /* Another user, with the other settings, without delay. */
    dashboard_ms(fx, "before", 12, 0);
    dashboard_ms(fx, "after", 12, 0);
}

static void test_dashboard_errors(void **state)
{
    static const char *const variants[] = {"before", "after"};
    static const char *const bad[] = {"/users/abc/dashboard", "/users/0/dashboard",
                                      "/users/-3/dashboard", "/users/1/dashboard?delay_ms=5001",
                                      "/users/1/dashboard?delay_ms=soon"};
    pt_service *fx = *state;
    char path[128];
    e2e_resp r;

    for (size_t v = 0; v < 2; v++) {
        snprintf(path, sizeof(path), "/%s/users/99999999/dashboard?delay_ms=20", variants[v]);
        e2e_get(&fx->proc, path, &r);
        pt_assert_error(&r, 404, "not_found");
        e2e_resp_free(&r);
        for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
            snprintf(path, sizeof(path), "/%s%s", variants[v], bad[i]);
            e2e_get(&fx->proc, path, &r);
            pt_assert_error(&r, 400, "bad_request");
            e2e_resp_free(&r);
        }
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_dashboard_timing_and_body),
        cmocka_unit_test(test_dashboard_errors),
    };

    return cmocka_run_group_tests(tests, pt_service_setup, pt_service_teardown);
}
