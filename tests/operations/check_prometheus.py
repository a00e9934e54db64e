#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""deploy/prometheus/ with Prometheus' own tool: `promtool check config` and `check rules` accept
the files, `promtool test rules` passes alerts_test.yml, and that file tests every alert of
alerts.yml both firing and quiet. Every hs_* metric the rules read is one the service exports
(named in service/ or handlers/), so a renamed metric cannot leave an alert silently dead.
Skips (77) without promtool (deploy/setup.sh installs prometheus, which brings it)."""

import glob
import os
import re
import shutil
import subprocess
import sys

import yaml

ROOT = os.environ.get("HS_SOURCE_DIR") or os.path.abspath(
    os.path.join(os.path.dirname(__file__), "..", ".."))
PROM = os.path.join(ROOT, "deploy", "prometheus")


def main():
    if shutil.which("promtool") is None:
        print("SKIP: promtool is not installed (deploy/setup.sh installs prometheus)")
        sys.exit(77)
    failures = []

    def expect(cond, what):
        if not cond:
            print("FAIL: " + what)
            failures.append(what)

    for args in (["check", "config", "prometheus.yml"], ["check", "rules", "alerts.yml"],
                 ["test", "rules", "alerts_test.yml"]):
        run = subprocess.run(["promtool"] + args, cwd=PROM, capture_output=True, text=True,
                             timeout=120)
        print("promtool %s: exit %d" % (" ".join(args), run.returncode))
        expect(run.returncode == 0, "promtool %s:\n%s%s" % (" ".join(args), run.stdout,
                                                            run.stderr))

    with open(os.path.join(PROM, "alerts.yml")) as f:
        rules = yaml.safe_load(f)
    with open(os.path.join(PROM, "alerts_test.yml")) as f:
        tests = yaml.safe_load(f)
    alerts = [r for g in rules["groups"] for r in g["rules"] if "alert" in r]
    cases = [c for t in tests["tests"] for c in t.get("alert_rule_test", [])]
    for a in alerts:
        name = a["alert"]
        mine = [c for c in cases if c["alertname"] == name]
        expect(any(c.get("exp_alerts") for c in mine), "%s has a test where it fires" % name)
        expect(any(not c.get("exp_alerts") for c in mine),
               "%s has a test where it stays quiet" % name)

    exported = ""
    for path in glob.glob(os.path.join(ROOT, "service", "*.c")) + glob.glob(
            os.path.join(ROOT, "handlers", "*.c")):
        with open(path) as f:
            exported += f.read()
    for a in alerts:
        for metric in set(re.findall(r"\bhs_[a-z_]+", a["expr"])):
            base = re.sub(r"_(bucket|sum|count)$", "", metric)
            expect('"%s' % base in exported or "%s " % base in exported or
                   "%s{" % base in exported,
                   "%s reads %s, which the service does not export" % (a["alert"], metric))
    print("prometheus: %d alerts, %d test cases, %d failures" % (len(alerts), len(cases),
                                                                 len(failures)))
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
