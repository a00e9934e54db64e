#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""The built binary against its own OpenAPI document (openapi.json), over real HTTP.

A matrix of good and bad requests goes to three instances of the service (one with a private
database, one without a database, one whose single pool connection is held by background work so
against tables locked by another session, so that requests time out or are refused), and every response is validated against the
document: its status must be documented for its operation, its body must match the documented
schema (OpenAPI 3.1 schemas are JSON Schema 2020-12, checked with python3-jsonschema), and its
documented headers must be present and match. Requests to paths the document does not have must
answer its documented 404, and documented paths with other methods its documented 405 with Allow.

Coverage runs both ways: the handler table (GET /routes) must equal the document's operations, and
every documented (operation, status) must be produced by some request of the matrix, except those
listed in NOT_YET with the reason; a response in NOT_YET that the matrix does produce fails too,
so the list cannot go stale.

Needs TEST_DATABASE_URL (a server where it may create a database) and psql; skips (77) without."""

import concurrent.futures
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time

import jsonschema

from opslib import ROOT, Service, library_major, private_database, psql, request, skip

# Documented responses that no request of this matrix can produce, each with the reason.
# (method, path, status); path "*" means every operation.
NOT_YET = {
    ("*", "*", "408"): "a header or body deadline is answered before routing, on a connection whose "
                       "request is not complete; tests/e2e/test_edge_loop.c proves it over raw "
                       "sockets",
    ("*", "*", "414"): "libmicrohttpd answers a target too long for the connection buffer itself, "
                       "before the service sees the request (tests/e2e/test_edge_http.c proves it)",
    ("*", "*", "431"): "likewise for a head too large for the connection buffer",
    ("GET", "/healthz", "503"): "a loop stalled beyond LIVENESS_MAX_STALL_MS: proven in-process by "
                                "tests/e2e/test_e2e_async.c; the global body budget's 503 needs "
                                "megabytes held open (tests/e2e/test_edge_http.c)",
    ("GET", "/metrics", "503"): "only the global body budget's 503 (tests/e2e/test_edge_http.c)",
    ("GET", "/routes", "503"): "as /metrics",
    ("GET", "/openapi.json", "503"): "as /metrics",
}
# libmicrohttpd 1.0 refuses an unknown transfer coding itself (400, its own HTML) before the
# service can answer 501; the matrix checks that answer as the library's instead.
LIBRARY_STRICT = library_major() >= 1
if LIBRARY_STRICT:
    NOT_YET[("*", "*", "501")] = ("libmicrohttpd 1.0 answers an unknown transfer coding itself "
                                  "with 400 (tests/e2e/test_edge_http.c checks that answer)")


# --- the document ------------------------------------------------------------------------------

with open(os.path.join(ROOT, "openapi.json")) as f:
    DOC = json.load(f)


def deref(obj):
    """Follows OpenAPI-level $refs (responses, parameters, headers) inside the document."""
    while isinstance(obj, dict) and "$ref" in obj:
        node = DOC
        for part in obj["$ref"].lstrip("#/").split("/"):
            node = node[part]
        obj = node
    return obj


def validator(schema):
    """A JSON Schema 2020-12 validator for schema, its #/components/... references resolved
    against the document (carried beside it, where a bare $ref resolves)."""
    root = dict(schema)
    root["components"] = DOC["components"]
    return jsonschema.Draft202012Validator(root)


def template_regex(path):
    return "^" + re.sub(r"\\\{[a-z_]+\\\}", "[^/]+", re.escape(path)) + "$"


OPERATIONS = {}  # (METHOD, path template) -> operation
for tpl, item in DOC["paths"].items():
    for method, operation in item.items():
        OPERATIONS[(method.upper(), tpl)] = operation


def find_path(path):
    for tpl in DOC["paths"]:
        if re.match(template_regex(tpl), path):
            return tpl
    return None


# --- checking one response -----------------------------------------------------------------------

class Contract:
    def __init__(self):
        self.failures = []
        self.produced = set()  # (METHOD, template, status)
        self.checked = 0

    def fail(self, what):
        print("FAIL: " + what)
        self.failures.append(what)

    def check_headers(self, label, headers, documented):
        for name, h in (documented or {}).items():
            h = deref(h)
            values = headers.get(name.lower(), [])
            if not values:
                if h.get("required"):
                    self.fail("%s: required header %s is missing" % (label, name))
                continue
            if len(values) > 1:
                self.fail("%s: header %s sent %d times" % (label, name, len(values)))
            errors = sorted(validator(h["schema"]).iter_errors(values[0]), key=str)
            if errors:
                self.fail("%s: header %s=%r: %s" % (label, name, values[0], errors[0].message))

    def check_body(self, label, resp, documented):
        content = documented.get("content")
        if not content:
            if resp.body:
                self.fail("%s: a body where the document has none" % label)
            return
        # Media types are compared without parameters (charset, version): the document names
        # the type, the server adds what it always adds.
        ctype = resp.headers.get("content-type", [""])[0]
        media = {k.split(";")[0].strip(): v for k, v in content.items()}.get(
            ctype.split(";")[0].strip())
        if media is None:
            self.fail("%s: Content-Type %r is not documented (%s)" % (label, ctype, list(content)))
            return
        if ctype.startswith("application/json"):
            try:
                value = json.loads(resp.body)
            except ValueError as e:
                self.fail("%s: body is not JSON: %s" % (label, e))
                return
        else:
            value = resp.body.decode("utf-8")
        errors = sorted(validator(media["schema"]).iter_errors(value), key=str)
        for e in errors[:3]:
            self.fail("%s: body at /%s: %s" % (label, "/".join(map(str, e.absolute_path)),
                                               e.message[:300]))

    def check_documented(self, label, resp, documented):
        documented = deref(documented)
        self.check_headers(label, resp.headers, documented.get("headers"))
        self.check_body(label, resp, documented)

    def check(self, svc, method, path, expect, body=None, headers=None, raw_body=None,
              resp=None):
        """Sends one request (or checks resp, already received) and validates the answer."""
        if resp is None:
            resp = request(svc, method, path, body, headers, raw_body)
        self.checked += 1
        label = "%s %s %s [%s]" % (method, path, resp.status, svc.name)
        if expect is not None and resp.status != expect:
            self.fail("%s: expected %d, got %d %s" % (label, expect, resp.status, resp.body[:200]))
        tpl = find_path(path.split("?")[0])
        if tpl is None:
            documented = DOC["x-unmatched-responses"].get(str(resp.status))
            if resp.status != 404 or documented is None:
                self.fail("%s: an undocumented path must answer 404" % label)
                return resp
            self.check_documented(label, resp, documented)
            return resp
        operation = OPERATIONS.get((method, tpl))
        if operation is None:
            documented = DOC["x-unmatched-responses"]["405"]
            if resp.status != 405:
                self.fail("%s: an undocumented method must answer 405" % label)
                return resp
            self.check_documented(label, resp, documented)
            allowed = {m for (m, t) in OPERATIONS if t == tpl}
            if "GET" in allowed:
                allowed.add("HEAD")
            got = set(resp.headers.get("allow", [""])[0].split(", "))
            if got != allowed:
                self.fail("%s: Allow %s, the document has %s" % (label, sorted(got),
                                                                  sorted(allowed)))
            return resp
        documented = operation["responses"].get(str(resp.status))
        if documented is None:
            self.fail("%s: status %d is not documented for %s %s" % (label, resp.status, method,
                                                                      tpl))
            return resp
        self.produced.add((method, tpl, str(resp.status)))
        self.check_documented(label, resp, documented)
        return resp

    def check_library_refusal(self, svc, method, path, headers):
        """A head that libmicrohttpd 1.0 refuses before the service sees it: the library's own
        400 with an HTML body and Connection: close (the document says so; not its schemas)."""
        resp = request(svc, method, path, None, headers)
        self.checked += 1
        label = "%s %s %s [%s]" % (method, path, resp.status, svc.name)
        if (resp.status != 400 or not resp.body.startswith(b"<html>") or
                resp.headers.get("connection", [""])[0].lower() != "close"):
            self.fail("%s: not libmicrohttpd's own 400 with Connection: close: %r %r"
                      % (label, resp.headers, resp.body[:200]))
        return resp

    def check_concurrently(self, svc, reqs):
        """Sends reqs [(method, path, body, headers, expect)] at once (each on its own connection,
        all connected before any is sent); checks each answer."""
        together = threading.Barrier(len(reqs))
        with concurrent.futures.ThreadPoolExecutor(len(reqs)) as pool:
            futures = [pool.submit(request, svc, m, p, b, h, None, together)
                       for (m, p, b, h, _) in reqs]
            answers = [f.result() for f in futures]
        for (m, p, b, h, expect), resp in zip(reqs, answers):
            self.check(svc, m, p, expect, resp=resp)
        return answers


# --- the matrix -------------------------------------------------------------------------------------

def wait_advisory_locks(svc, n):
    """Waits until the service's database holds n advisory locks (the transfers' key locks)."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        held = int(psql(svc.url, "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND "
                        "granted AND database = (SELECT oid FROM pg_database WHERE datname = "
                        "current_database())"))
        if (held >= n) if n > 0 else (held == 0):
            return
        time.sleep(0.01)
    sys.exit("the database never held %d advisory locks" % n)


def matrix_main(c, svc):
    """Good and bad requests to an instance with a database."""
    big = json.dumps({"ids": list(range(1, 2000))}).encode()
    for p in ("/healthz", "/readyz", "/metrics", "/routes", "/openapi.json",
              "/accounts/invariant"):
        c.check(svc, "GET", p, 200)
        c.check(svc, "GET", p, 413, raw_body=big)
    for v in ("before", "after"):
        for p in ("/%s/users/1" % v, "/%s/users/2/dashboard" % v):
            c.check(svc, "GET", p, 200)
            c.check(svc, "GET", p + "?delay_ms=5", 200)
            c.check(svc, "GET", p.replace("/1", "/abc").replace("/2/", "/0/"), 400)
            c.check(svc, "GET", p + "?delay_ms=5001", 400)
            c.check(svc, "GET", p.replace("/1", "/9999999").replace("/2/", "/9999999/"), 404)
            c.check(svc, "GET", p, 413, raw_body=big)
        batch = "/%s/batch" % v
        c.check(svc, "POST", batch, 200, {"ids": [1, 2, 3, 9999999], "concurrency": 2})
        c.check(svc, "POST", batch, 400, raw_body=b"{\"ids\": [1,")
        c.check(svc, "POST", batch, 400, {"ids": []})
        c.check(svc, "POST", batch, 400, {"ids": [1], "delay_ms": -1})
        c.check(svc, "POST", batch, 413, raw_body=big)
        welcome = "/%s/users/3/welcome" % v
        c.check(svc, "POST", welcome, 202, {"events": 2, "delay_ms": 0})
        c.check(svc, "POST", welcome, 400, {"events": 0})
        c.check(svc, "POST", welcome, 400, raw_body=b"[]")
        c.check(svc, "POST", "/%s/users/x/welcome" % v, 400, {})
        c.check(svc, "POST", "/%s/users/9999999/welcome" % v, 404, {})
        c.check(svc, "POST", welcome, 413, raw_body=big)
        xfer = "/%s/transfers" % v
        c.check(svc, "POST", xfer, 200, {"from": 10, "to": 11, "amount": 1})
        c.check(svc, "POST", xfer, 400, {"from": 10, "to": 10, "amount": 1})
        c.check(svc, "POST", xfer, 400, {"from": 10, "to": 11, "amount": 0})
        c.check(svc, "POST", xfer, 400, {"from": 10, "to": 11, "amount": 1},
                {"Idempotency-Key": "no spaces allowed"})
        c.check(svc, "POST", xfer, 404, {"from": 10, "to": 9999999, "amount": 1})
        c.check(svc, "POST", xfer, 409, {"from": 12, "to": 13, "amount": 1000000})
        c.check(svc, "POST", xfer, 413, raw_body=big)
    c.check(svc, "POST", "/after/users/4/welcome?wait=true", 200, {"events": 1, "delay_ms": 0})
    c.check(svc, "POST", "/after/users/4/welcome?wait=maybe", 400, {})

    # Idempotency: the first answer, its replay, a reused key, a key still in flight.
    key = {"Idempotency-Key": "contract-%d" % os.getpid()}
    first = c.check(svc, "POST", "/after/transfers", 200, {"from": 20, "to": 21, "amount": 2}, key)
    again = c.check(svc, "POST", "/after/transfers", 200, {"from": 20, "to": 21, "amount": 2}, key)
    if again.headers.get("idempotent-replayed") != ["true"] or again.body != first.body:
        c.fail("a replay carries Idempotent-Replayed: true and the first body")
    # A replay's transaction ends (and frees the key's lock) just after its answer: wait for
    # that, or the next request with the key may be told the first is still running (409).
    wait_advisory_locks(svc, 0)
    c.check(svc, "POST", "/after/transfers", 422, {"from": 20, "to": 21, "amount": 3}, key)
    slow = {"Idempotency-Key": "contract-slow-%d" % os.getpid()}
    body = {"from": 22, "to": 23, "amount": 1, "delay_ms": 1500}
    c.check(svc, "POST", "/after/transfers", 200, body, slow)
    key2 = {"Idempotency-Key": "contract-race-%d" % os.getpid()}
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        held = pool.submit(request, svc, "POST", "/after/transfers", body, key2)
        # The first holds the key (an advisory lock) for 1.5 s; the second arrives meanwhile.
        wait_advisory_locks(svc, 1)
        c.check(svc, "POST", "/after/transfers", 409, body, key2)
        c.check(svc, "POST", "/after/transfers", 200, resp=held.result())

    # The front door, before any route runs: every operation refuses an unknown transfer coding
    # (501), and a %00 in the query (400), in the error shape.
    for (method, tpl) in sorted(OPERATIONS):
        path = tpl.replace("{id}", "1")
        if LIBRARY_STRICT:
            c.check_library_refusal(svc, method, path, headers={"Transfer-Encoding": "xchunked"})
        else:
            c.check(svc, method, path, 501, headers={"Transfer-Encoding": "xchunked"})
        c.check(svc, method, path + "?x=%00", 400)

    # Undocumented paths and methods.
    c.check(svc, "GET", "/nope", 404)
    c.check(svc, "POST", "/after", 404, {})
    c.check(svc, "DELETE", "/healthz", 405)
    c.check(svc, "PUT", "/after/transfers", 405, {})
    c.check(svc, "POST", "/accounts/invariant", 405, {})

    # Request headers that are ignored when invalid, never an error.
    c.check(svc, "GET", "/after/users/1", 200, headers={"traceparent": "garbage",
                                                        "X-Request-Id": "bad id!"})


def matrix_no_db(c, svc):
    """Every database route of an instance without a database answers 503."""
    c.check(svc, "GET", "/readyz", 503)
    c.check(svc, "GET", "/accounts/invariant", 503)
    for v in ("before", "after"):
        c.check(svc, "GET", "/%s/users/1" % v, 503)
        c.check(svc, "GET", "/%s/users/1/dashboard" % v, 503)
        c.check(svc, "POST", "/%s/batch" % v, 503, {"ids": [1]})
        c.check(svc, "POST", "/%s/users/1/welcome" % v, 503, {"events": 1})
        c.check(svc, "POST", "/%s/transfers" % v, 503, {"from": 1, "to": 2, "amount": 1})


def matrix_held_pool(c, svc):
    """One pool connection, and every table locked by another session: each request runs into
    the lock until its deadline (504), and more at once than the connection's pipeline and the
    queue hold are refused (503 with Retry-After)."""
    locker = subprocess.Popen(["psql", "-qAt", "-v", "ON_ERROR_STOP=1", svc.url],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        locker.stdin.write("BEGIN; LOCK TABLE users, settings, accounts, transfers, ledger, "
                           "idempotency_keys, batch_results, audit_events IN ACCESS EXCLUSIVE "
                           "MODE; SELECT 'locked';\n")
        locker.stdin.flush()
        if locker.stdout.readline().strip() != "locked":
            sys.exit("could not lock the tables")
        timed_out = [("GET", "/after/users/1", None), ("GET", "/before/users/1/dashboard", None),
                     ("GET", "/after/users/1/dashboard", None),
                     ("GET", "/accounts/invariant", None),
                     ("POST", "/before/batch", {"ids": [1]}),
                     ("POST", "/after/batch", {"ids": [1]}),
                     ("POST", "/before/users/1/welcome", {"events": 1}),
                     ("POST", "/after/users/1/welcome?wait=true", {"events": 1}),
                     ("POST", "/before/transfers", {"from": 1, "to": 2, "amount": 1}),
                     ("POST", "/after/transfers", {"from": 1, "to": 2, "amount": 1})]
        for method, path, body in timed_out:
            c.check(svc, method, path, 504, body)
        # The batches count an item refused by the pool as failed (200): no 503 for them.
        for method, path, body in [r for r in timed_out if "/batch" not in r[1]]:
            # Twenty at once. The one connection takes up to eight statements pipelined (while
            # its oldest has run under 5 ms) and the queue four more: at least eight are refused,
            # however the twenty spread in time (all are connected before any is sent).
            answers = c.check_concurrently(svc, [(method, path, body, None, None)] * 20)
            refused = [a for a in answers if a.status == 503]
            if len(refused) < 8:
                c.fail("%s %s: twenty at once past one connection and a queue of four: %d 503s "
                       "(answers: %s)" % (method, path, len(refused),
                                          sorted(a.status for a in answers)))
            elif any("retry-after" not in a.headers for a in refused):
                c.fail("%s %s: a 503 for a full queue without Retry-After" % (method, path))
    finally:
        locker.stdin.close()
        locker.wait(30)


def run_matrix(c, services, t0):
    main_svc, no_db, held = services
    # The handler table and the document list the same operations.
    routes = json.loads(request(main_svc, "GET", "/routes").body)
    table = {(r["method"], r["pattern"]) for r in routes}
    if table != set(OPERATIONS):
        c.fail("the handler table and the document differ: only in the table %s, only in "
               "the document %s" % (sorted(table - set(OPERATIONS)),
                                    sorted(set(OPERATIONS) - table)))

    matrix_main(c, main_svc)
    matrix_no_db(c, no_db)
    matrix_held_pool(c, held)
    # Draining: readiness turns to 503 at once and stays so for DRAIN_DELAY_MS.
    main_svc.proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + 2.5
    while request(main_svc, "GET", "/readyz").status == 200 and time.monotonic() < deadline:
        time.sleep(0.01)
    c.check(main_svc, "GET", "/readyz", 503)
    for s in services:
        if s.stop() != 0:
            c.fail("%s did not exit 0 after SIGTERM" % s.name)
    print("matrix: %d responses in %.1f s" % (c.checked, time.monotonic() - t0))


def main():
    if shutil.which("psql") is None:
        skip("psql is not installed (deploy/setup.sh installs postgresql)")
    base = os.environ.get("TEST_DATABASE_URL")
    if not base:
        skip("TEST_DATABASE_URL is not set")
    c = Contract()
    services = []
    with private_database(base, "contract") as url:
        try:
            t0 = time.monotonic()
            main_svc = Service("main", {"DATABASE_URL": url, "MAX_BODY_BYTES": "4096",
                                        "REQUEST_TIMEOUT_MS": "10000", "DRAIN_DELAY_MS": "3000"})
            services.append(main_svc)
            no_db = Service("no-db", {"MAX_BODY_BYTES": "4096"})
            services.append(no_db)
            held = Service("held-pool", {"DATABASE_URL": url, "DB_POOL_SIZE": "1",
                                         "DB_QUEUE_LIMIT": "4", "REQUEST_TIMEOUT_MS": "1000"})
            services.append(held)
            run_matrix(c, services, t0)
        finally:
            for s in services:
                s.kill()

    # Both ways: every documented response produced, except NOT_YET, which must not be.
    for (method, tpl), operation in sorted(OPERATIONS.items()):
        for status in operation["responses"]:
            reason = (NOT_YET.get((method, tpl, status)) or NOT_YET.get(("*", "*", status)))
            produced = (method, tpl, status) in c.produced
            if reason and produced:
                c.fail("%s %s %s is produced now: take it off NOT_YET (%s)" % (method, tpl,
                                                                               status, reason))
            elif not reason and not produced:
                c.fail("%s %s %s is documented but no request produced it" % (method, tpl,
                                                                              status))
    for (method, tpl, status) in NOT_YET:
        if tpl != "*" and status not in OPERATIONS.get((method, tpl), {}).get("responses", {}):
            c.fail("NOT_YET names %s %s %s, which the document does not have" % (method, tpl,
                                                                                 status))
    print("contract: %d responses checked, %d documented responses produced, %d not yet, "
          "%d failures" % (c.checked, len(c.produced), len(NOT_YET), len(c.failures)))
    sys.exit(1 if c.failures else 0)


if __name__ == "__main__":
    main()
