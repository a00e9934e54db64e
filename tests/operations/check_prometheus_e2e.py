#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""Pattern 0 caught the way production catches it: a real Prometheus (Debian's package, on
loopback) scrapes the built service every second and evaluates deploy/prometheus/alerts.yml,
with each alert's `for:` shortened to 3 s and its one-minute windows to 10 s (the only changes;
the expressions and thresholds are the file's). Under the same load, `after/users` must never
make HindsightEventLoopStall fire, and `before/users` must make it fire; both read from
Prometheus' HTTP API (/api/v1/alerts).

The service runs with its default number of loops (WORKERS: one per CPU), so the alert must
catch one blocked loop beside healthy ones. The after phase runs first, so the before phase
cannot leave lag behind for it. Needs
TEST_DATABASE_URL (the service only reads users) and prometheus; skips (77) without."""

import os
import re
import shutil
import sys
import time

from opslib import ROOT, Load, Prometheus, Service, skip

ALERT = "HindsightEventLoopStall"
# Two clients: a scrape that lands on a blocked loop waits for at most two blocks (0.6 s), inside
# the 1 s scrape timeout; with more, the blocked service cannot even be scraped, and the stall
# shows as the target going down rather than as this alert.
CLIENTS = 2
# Longer than the probe's 100 ms period: the probe re-arms from each tick, so blocks of exactly
# one period would end just as each tick fell due and look on time.
DELAY_MS = 300
AFTER_SECONDS = 15
FIRE_TIMEOUT = 60


def test_rules():
    """alerts.yml with every `for:` at 3s and every [1m] window at [10s]."""
    with open(os.path.join(ROOT, "deploy", "prometheus", "alerts.yml")) as f:
        text = f.read()
    text = re.sub(r"(\n\s+for:) \S+", r"\1 3s", text)
    return text.replace("[1m]", "[10s]")


def main():
    if shutil.which("prometheus") is None:
        skip("prometheus is not installed (deploy/setup.sh installs it)")
    url = os.environ.get("TEST_DATABASE_URL")
    if not url:
        skip("TEST_DATABASE_URL is not set")
    failures = []
    svc = Service("prometheus-e2e", {"DATABASE_URL": url, "WORKERS": "0"})
    prom = None
    try:
        prom = Prometheus({
            "global": {"scrape_interval": "1s", "scrape_timeout": "1s",
                       "evaluation_interval": "1s"},
            "rule_files": ["alerts.yml"],
            "scrape_configs": [{"job_name": "hindsight",
                                "static_configs": [{"targets": ["127.0.0.1:%d" % svc.port]}]}],
        }, {"alerts.yml": test_rules()})
        if not prom.wait_for('up{job="hindsight"} == 1', 30):
            sys.exit("prometheus never scraped the service")
        # The most stalled loop's share (the alert is per worker).
        stall = ('max(1 - sum by (worker) (rate(hs_event_loop_lag_sample_seconds_bucket'
                 '{le="0.05"}[10s])) / sum by (worker) (rate(hs_event_loop_lag_sample_seconds_count'
                 '[10s])))')

        load = Load(svc, "/after/users/1?delay_ms=%d" % DELAY_MS, CLIENTS)
        worst = 0.0
        states = set()
        t0 = time.monotonic()
        while time.monotonic() - t0 < AFTER_SECONDS:
            states.add(prom.alert_state(ALERT))
            worst = max(worst, prom.value(stall) or 0.0)
            time.sleep(0.5)
        answers = load.stop()
        print("after/users: %s answers in %d s; share of late loop ticks at most %.2f; alert "
              "states seen: %s" % (answers, AFTER_SECONDS, worst, sorted(map(str, states))))
        if "firing" in states:
            failures.append("%s fired under after/users load" % ALERT)
        if answers.get(200, 0) < CLIENTS:
            failures.append("after/users was not under load: %s" % answers)

        load = Load(svc, "/before/users/1?delay_ms=%d" % DELAY_MS, CLIENTS)
        t0 = time.monotonic()
        fired = None
        while time.monotonic() - t0 < FIRE_TIMEOUT:
            if prom.alert_state(ALERT) == "firing":
                fired = time.monotonic() - t0
                break
            time.sleep(0.5)
        late = prom.value(stall)
        answers = load.stop()
        print("before/users: %s answers; share of late loop ticks %s; %s" % (
            answers, "%.2f" % late if late is not None else "-",
            "%s firing after %.1f s" % (ALERT, fired) if fired is not None
            else "%s never fired in %d s" % (ALERT, FIRE_TIMEOUT)))
        if fired is None:
            failures.append("%s did not fire under before/users load" % ALERT)
    finally:
        if prom is not None:
            prom.stop()
        if svc.stop() != 0:
            failures.append("the service did not exit 0 after SIGTERM")
    for f in failures:
        print("FAIL: " + f)
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
