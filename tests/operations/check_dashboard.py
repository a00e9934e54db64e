#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""deploy/grafana/ checked without Grafana: the dashboard has a row per pattern, every panel uses
the provisioned Prometheus data source, and every panel's PromQL expression, run against a real
Prometheus (with deploy/prometheus/alerts.yml, whose recording rules some panels read) scraping
the built service while a mix of before and after traffic flows, parses and returns data.

Grafana's own variable $__rate_interval becomes 15s (four times the 1 s scrape interval, as
Grafana would compute it, with margin). Needs TEST_DATABASE_URL (a private database is created:
the traffic writes) and prometheus; skips (77) without."""

import json
import os
import shutil
import sys
import time

import yaml

from opslib import ROOT, Load, Prometheus, Service, private_database, skip

GRAFANA = os.path.join(ROOT, "deploy", "grafana")
PATTERNS = ("0.", "1.", "2.", "3.", "4.")

# Each variant moves money between accounts of its own: a before transfer's separate statements
# can deadlock with an after transaction on the same rows (a 500, which is not the point here).
TRAFFIC = []
for v, a, b in (("before", 30, 31), ("after", 32, 33)):
    TRAFFIC += [("GET", "/%s/users/7" % v, None), ("GET", "/%s/users/8/dashboard" % v, None),
                ("POST", "/%s/batch" % v, {"ids": [1, 2, 3]}),
                ("POST", "/%s/users/9/welcome" % v, {"events": 1, "delay_ms": 0}),
                ("POST", "/%s/transfers" % v, {"from": a, "to": b, "amount": 1}),
                ("POST", "/%s/transfers" % v, {"from": b, "to": a, "amount": 1}),
                ("GET", "/%s/users/9999999" % v, None)]
TRAFFIC += [("GET", "/accounts/invariant", None), ("GET", "/routes", None)]


def static_checks(dash, fail):
    with open(os.path.join(GRAFANA, "provisioning", "datasources", "prometheus.yml")) as f:
        sources = yaml.safe_load(f)["datasources"]
    uids = {s["uid"] for s in sources if s["type"] == "prometheus"}
    with open(os.path.join(GRAFANA, "provisioning", "dashboards", "hindsight.yml")) as f:
        providers = yaml.safe_load(f)["providers"]
    if [p["options"]["path"] for p in providers] != ["/var/lib/grafana/dashboards"]:
        fail("the dashboard provider reads /var/lib/grafana/dashboards (the compose mount)")
    rows = [p["title"] for p in dash["panels"] if p["type"] == "row"]
    for n in PATTERNS:
        if not any(r.startswith(n) for r in rows):
            fail("no row for pattern %s (rows: %s)" % (n, rows))
    for p in dash["panels"]:
        if p["type"] == "row":
            continue
        if p.get("datasource", {}).get("uid") not in uids or not p.get("targets"):
            fail("panel %r has no provisioned Prometheus data source or no query" % p["title"])


def main():
    with open(os.path.join(GRAFANA, "dashboards", "hindsight.json")) as f:
        dash = json.load(f)
    failures = []

    def fail(what):
        print("FAIL: " + what)
        failures.append(what)

    static_checks(dash, fail)
    if shutil.which("prometheus") is None:
        skip("prometheus is not installed (deploy/setup.sh installs it)")
    base = os.environ.get("TEST_DATABASE_URL")
    if not base:
        skip("TEST_DATABASE_URL is not set")
    queries = [(p["title"], t["expr"]) for p in dash["panels"] for t in p.get("targets", [])]
    with open(os.path.join(ROOT, "deploy", "prometheus", "alerts.yml")) as f:
        rules = f.read()
    with private_database(base, "dashboard") as url:
        svc = Service("dashboard", {"DATABASE_URL": url})
        prom = load = None
        try:
            prom = Prometheus({
                "global": {"scrape_interval": "1s", "scrape_timeout": "1s",
                           "evaluation_interval": "1s"},
                "rule_files": ["alerts.yml"],
                "scrape_configs": [{"job_name": "hindsight", "static_configs": [
                    {"targets": ["127.0.0.1:%d" % svc.port]}]}],
            }, {"alerts.yml": rules})
            load = Load(svc, TRAFFIC, 4)
            # Rates need two scrapes inside their window after the traffic began.
            if not prom.wait_for('sum(rate(hs_http_requests_total{route="/after/transfers"}'
                                 '[15s])) > 0', 60):
                sys.exit("prometheus never saw the traffic")
            t0 = time.monotonic()
            empty = []
            for title, expr in queries:
                r = prom.query(expr.replace("$__rate_interval", "15s"))
                if r.get("status") != "success":
                    fail("%s: %s: %s" % (title, expr, r.get("error")))
                elif not r["data"]["result"]:
                    empty.append((title, expr))
            # A query may be empty only until its series has a second sample: ask again.
            deadline = time.monotonic() + 20
            while empty and time.monotonic() < deadline:
                time.sleep(1)
                empty = [(t, e) for t, e in empty
                         if not prom.query(e.replace("$__rate_interval", "15s"))["data"]["result"]]
            for title, expr in empty:
                fail("%s: %s returned no data" % (title, expr))
            traffic = load.stop()
            if set(traffic) - {200, 202, 404}:
                fail("the traffic got answers other than 200, 202 and 404: %s" % traffic)
            print("dashboard: %d panels, %d queries run against Prometheus in %.1f s, traffic %s"
                  % (sum(1 for p in dash["panels"] if p["type"] != "row"), len(queries),
                     time.monotonic() - t0, traffic))
        finally:
            if load is not None:
                load.stop()
            if prom is not None:
                prom.stop()
            svc.stop()
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
