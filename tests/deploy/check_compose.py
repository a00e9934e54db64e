#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""deploy/docker-compose.yml as docker-compose itself reads it, and the properties the deployment
relies on.

`docker-compose config` validates the file against the compose schema and interpolates it without
a Docker engine; the checks then run on its normalized output, so they see what compose would run
(durations, list forms and defaults resolved), not the spelling of the file. No container is
started here: there is no engine on the test machines.

Debian 12 ships docker-compose 1.29 and Debian 13 docker-compose 2 (the Go rewrite); their
normalized forms differ, and both are read: version 2 leaves a profiled service out of `config`
unless its profile is named (so `--profile load --profile observe` is given to both), and writes a volume in the
long form (a mapping with source and target) where 1.29 writes "source:target"."""

import os
import shutil
import subprocess
import sys

import yaml

from deploylib import (CANCEL_WAIT_MS, DOCKER_STOP_TIMEOUT_MS, Checks, allowed_vars, duration_ms, path,
                       skip)

COMPOSE = path("deploy", "docker-compose.yml")


def compose(*args):
    # A clean environment for interpolation, so the checks see the file's defaults and not
    # whatever the caller's shell has set.
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("POSTGRES_", "LOAD_", "COMPOSE_"))}
    return subprocess.run(["docker-compose", "-f", COMPOSE] + list(args), env=env,
                          capture_output=True, text=True, timeout=60)


def main():
    if shutil.which("docker-compose") is None:
        skip("docker-compose is not installed (deploy/setup.sh installs it)")
    c = Checks("check_compose")

    run = compose("--profile", "load", "--profile", "observe", "config")
    if not c.expect(run.returncode == 0, "docker-compose config accepts the file: " + run.stderr):
        c.finish()
    cfg = yaml.safe_load(run.stdout)
    services = cfg.get("services", {})
    for name in ("postgres", "hindsight", "load"):
        c.expect(name in services, "service %s is defined" % name)
    pg = services.get("postgres", {})
    app = services.get("hindsight", {})
    load = services.get("load", {})

    c.expect(str(pg.get("image", "")).startswith("postgres:15"), "postgres runs postgres:15")
    pg_test = pg.get("healthcheck", {}).get("test", [])
    c.expect("pg_isready" in pg_test and "-h" in pg_test
             and pg_test[pg_test.index("-h") + 1] == "127.0.0.1",
             "postgres healthcheck is pg_isready -h 127.0.0.1, got %r" % pg_test)
    volumes = cfg.get("volumes") or {}
    pg_mounts = [v.split(":") if isinstance(v, str) else [v.get("source"), v.get("target")]
                 for v in pg.get("volumes", [])]
    c.expect(any(m[0] in volumes and m[1] == "/var/lib/postgresql/data" for m in pg_mounts),
             "postgres data lives on a named volume, got %r" % pg.get("volumes"))

    c.expect(app.get("depends_on", {}).get("postgres", {}).get("condition") == "service_healthy",
             "hindsight waits for postgres to be healthy")
    app_test = " ".join(app.get("healthcheck", {}).get("test", []))
    env = app.get("environment", {})
    port = env.get("PORT", "8080")
    c.expect("http://127.0.0.1:%s/readyz" % port in app_test,
             "hindsight healthcheck probes /readyz on PORT, got %r" % app_test)
    c.expect(app.get("build", {}).get("context") == path() and
             os.path.isfile(path(app.get("build", {}).get("dockerfile", "Dockerfile"))),
             "hindsight builds from the repository's Dockerfile")

    unknown = set(env) - allowed_vars()
    c.expect(not unknown, "hindsight's environment uses only known setting names, unknown: %s"
             % sorted(unknown))
    c.expect(env.get("DATABASE_URL", "").split("@")[-1].startswith("postgres:5432/"),
             "DATABASE_URL points at the postgres service, got %r" % env.get("DATABASE_URL"))
    grace = int(env.get("SHUTDOWN_GRACE_MS", 0))
    drain = int(env.get("DRAIN_DELAY_MS", 0))
    stop = duration_ms(app.get("stop_grace_period", "10s"))
    c.expect(grace > 0 and stop > drain + grace + CANCEL_WAIT_MS,
             "stop_grace_period (%d ms) > DRAIN_DELAY_MS + SHUTDOWN_GRACE_MS + the wait for "
             "cancellations (%d + %d + %d ms)" % (stop, drain, grace, CANCEL_WAIT_MS))
    # podman-compose 1.0 ignores stop_grace_period and stops after the default 10 s.
    c.expect(drain + grace + CANCEL_WAIT_MS < DOCKER_STOP_TIMEOUT_MS,
             "DRAIN_DELAY_MS + SHUTDOWN_GRACE_MS + the wait for cancellations (%d + %d + %d ms) "
             "also end inside the default stop timeout (%d ms), for tools that ignore "
             "stop_grace_period" % (drain, grace, CANCEL_WAIT_MS, DOCKER_STOP_TIMEOUT_MS))

    c.expect(load.get("profiles") == ["load"], "the load run is only in the `load` profile")
    c.expect(load.get("depends_on", {}).get("hindsight", {}).get("condition") == "service_healthy",
             "the load run waits for hindsight to be ready")
    context = load.get("build", {}).get("context", "")
    c.expect(context == path("deploy", "wrk") and os.path.isfile(os.path.join(context,
                                                                              "Dockerfile")),
             "the load image builds from deploy/wrk, got %r" % context)
    c.expect(load.get("command", [])[-1:] == ["http://hindsight:%s" % port],
             "the load run targets the hindsight service, got %r" % load.get("command"))

    # The observe profile: Prometheus and Grafana with the repository's own files, scraping
    # the hindsight service.
    for name in ("prometheus", "grafana"):
        svc = services.get(name, {})
        c.expect(svc.get("profiles") == ["observe"], "%s is only in the `observe` profile" % name)
        for v in svc.get("volumes", []):
            source = v.split(":")[0] if isinstance(v, str) else v.get("source", "")
            if source.startswith("/"):
                c.expect(os.path.exists(source) and source.startswith(path("deploy")),
                         "%s mounts %s from deploy/, which exists" % (name, source))
    with open(path("deploy", "prometheus", "prometheus.yml")) as f:
        prom = yaml.safe_load(f)
    targets = [t for sc in prom.get("scrape_configs", []) for st in sc.get("static_configs", [])
               for t in st.get("targets", [])]
    c.expect(targets == ["hindsight:%s" % port],
             "Prometheus scrapes hindsight:%s, got %r" % (port, targets))

    # Services without a profile are what a plain `up` starts: postgres and hindsight only.
    profiles = compose("config", "--profiles")
    c.expect(profiles.returncode == 0 and sorted(profiles.stdout.split()) == ["load", "observe"],
             "the profiles are load and observe, got %r" % profiles.stdout)
    c.expect(all(not s.get("profiles") for n, s in services.items()
                 if n not in ("load", "prometheus", "grafana")),
             "postgres and hindsight belong to no profile")
    c.finish()


if __name__ == "__main__":
    sys.exit(main())
