#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""The Dockerfile, read as instructions, since no Docker engine exists where the tests run.

The build stage must install through deploy/setup.sh (the README's path, so both stay in step),
with a flag the script really offers; the runtime stage must be slim, unprivileged, probed on
/healthz, stopped with SIGTERM delivered to the service itself, and free of baked-in secrets.
When HINDSIGHT_BIN is set, every shared library the built binary needs (its ELF NEEDED entries,
resolved to Debian packages with dpkg) must be installed by the runtime stage, so a new dependency
cannot leave the image unable to start."""

import json
import os
import re
import shutil
import subprocess
import sys

from deploylib import CANCEL_WAIT_MS, DOCKER_STOP_TIMEOUT_MS, Checks, config_default, path

# Present in every debian:13-slim image.
BASE_PACKAGES = {"libc6", "libgcc-s1"}
# The runtime stage is Debian 13, while the binary checked may be built on Debian 12, whose
# packages of the same sonames lack the 64-bit time_t transition's suffix (libuv1, libuv1t64).
T64 = re.compile(r"t64$")
# A sanitizer build (ENABLE_SANITIZERS) links these runtimes; the image's Release build does not.
SANITIZER_RUNTIME = re.compile(r"lib(asan|ubsan|lsan|tsan)\d+$")


def instructions(text):
    """(INSTRUCTION, arguments) pairs, continuation lines joined and comments dropped."""
    lines = [l for l in text.splitlines() if not l.lstrip().startswith("#")]
    joined = re.sub(r"\\\n", " ", "\n".join(lines))
    out = []
    for line in joined.splitlines():
        if line.strip():
            word, _, rest = line.strip().partition(" ")
            out.append((word.upper(), " ".join(rest.split())))
    return out


def stages(instrs):
    result = []
    for ins, args in instrs:
        if ins == "FROM":
            result.append((args, []))
        elif result:
            result[-1][1].append((ins, args))
    return result


def apt_packages(stage):
    pkgs = set()
    for ins, args in stage:
        if ins == "RUN":
            for m in re.finditer(r"apt-get install ([^&;|]*)", args):
                pkgs.update(w for w in m.group(1).split() if not w.startswith("-"))
    return pkgs


def needed_packages(binary):
    """Debian packages that provide the binary's direct shared-library dependencies."""
    elf = subprocess.run(["readelf", "-d", binary], capture_output=True, text=True, check=True)
    needed = re.findall(r"\(NEEDED\).*\[(.+)\]", elf.stdout)
    ldd = subprocess.run(["ldd", binary], capture_output=True, text=True, check=True)
    where = dict(re.findall(r"^\s*(\S+) => (\S+)", ldd.stdout, re.M))
    pkgs = {}
    for soname in needed:
        found = None
        for p in (where.get(soname), os.path.realpath(where.get(soname) or "")):
            q = subprocess.run(["dpkg", "-S", p or "/nonexistent"], capture_output=True,
                               text=True)
            if q.returncode == 0:
                found = q.stdout.split(":")[0]
                break
        pkgs[soname] = found
    return pkgs


def main():
    c = Checks("check_dockerfile")
    with open(path("Dockerfile")) as f:
        st = stages(instructions(f.read()))
    if not c.expect(len(st) == 2, "two stages, got %d" % len(st)):
        c.finish()
    (build_from, build), (run_from, run) = st
    c.expect(re.fullmatch(r"debian:13 AS build", build_from, re.I), "build stage is debian:13")
    c.expect(run_from.split()[0] == "debian:13-slim", "runtime stage is debian:13-slim")
    with open(path("Dockerfile")) as f:
        text = f.read()
    # A `# syntax=` line makes BuildKit pull a frontend image from a registry for nothing.
    c.expect(not re.match(r"#\s*syntax\s*=", text, re.I), "no `# syntax=` parser directive")
    c.expect(re.search(r"--format docker", text) is not None,
             "the header says podman builds with --format docker (OCI drops HEALTHCHECK)")

    setup = [a for i, a in build if i == "RUN" and "deploy/setup.sh" in a]
    c.expect(setup and "--deps-only" in setup[0],
             "the build stage runs deploy/setup.sh --deps-only")
    if os.path.exists(path("deploy", "setup.sh")):
        with open(path("deploy", "setup.sh")) as f:
            c.expect("--deps-only" in f.read(), "deploy/setup.sh offers --deps-only")
    c.expect(any(i == "RUN" and "CMAKE_BUILD_TYPE=Release" in a for i, a in build),
             "the binary is a Release build")

    users = [a for i, a in run if i == "USER"]
    c.expect(users and re.fullmatch(r"[1-9]\d*(:[1-9]\d*)?", users[-1]),
             "runs as a numeric non-root user, got %r" % users)
    c.expect(("EXPOSE", "8080") in run, "EXPOSE 8080")
    c.expect(("STOPSIGNAL", "SIGTERM") in run, "STOPSIGNAL SIGTERM")
    # The image sets no shutdown setting, so `docker stop` (SIGKILL after 10 s unless told
    # otherwise) meets the service's defaults: their whole sequence must end before that.
    drain, grace = config_default("DRAIN_DELAY_MS"), config_default("SHUTDOWN_GRACE_MS")
    c.expect(not any(i == "ENV" and re.search(r"DRAIN_DELAY_MS|SHUTDOWN_GRACE_MS", a)
                     for i, a in run), "the image keeps the default shutdown settings")
    c.expect(drain + grace + CANCEL_WAIT_MS < DOCKER_STOP_TIMEOUT_MS,
             "the defaults' DRAIN_DELAY_MS + SHUTDOWN_GRACE_MS + the wait for cancellations "
             "(%d + %d + %d ms) end before docker stop's SIGKILL (%d ms)"
             % (drain, grace, CANCEL_WAIT_MS, DOCKER_STOP_TIMEOUT_MS))
    health = [a for i, a in run if i == "HEALTHCHECK"]
    c.expect(health and "/healthz" in health[0] and "curl" in health[0],
             "HEALTHCHECK probes /healthz with curl")
    entry = [a for i, a in run if i == "ENTRYPOINT"]
    try:
        argv = json.loads(entry[-1]) if entry else None
    except ValueError:
        argv = None
    c.expect(isinstance(argv, list) and argv[0].endswith("/hindsight"),
             "ENTRYPOINT is the exec form of the binary (the service is PID 1), got %r" % entry)
    copied = [a for i, a in run if i == "COPY"]
    c.expect(argv and any(a.startswith("--from=build ") and a.endswith(" " + argv[0])
                          for a in copied), "the entrypoint is the binary built in stage one")

    secret_words = re.compile(r"PASSWORD|SECRET|TOKEN|DATABASE_URL|PGPASS", re.I)
    for stage in (build, run):
        for ins, args in stage:
            if ins in ("ENV", "ARG", "LABEL"):
                c.expect(not secret_words.search(args), "no secret in %s %s" % (ins, args))

    pkgs = apt_packages(run)
    for p in ("libmicrohttpd12t64", "libuv1t64", "libpq5", "libjansson4", "ca-certificates",
              "curl"):
        c.expect(p in pkgs, "the runtime stage installs %s" % p)
    c.expect(not any(p.endswith("-dev") or p in ("build-essential", "cmake", "gcc") for p in pkgs),
             "the runtime stage installs no build tools, got %s" % sorted(pkgs))

    with open(path(".dockerignore")) as f:
        ignored = f.read().split()
    for p in (".git", "/build*", "/.pgdata*"):
        c.expect(p in ignored, ".dockerignore excludes %s" % p)

    binary = os.environ.get("HINDSIGHT_BIN")
    if binary and os.path.exists(binary) and shutil.which("dpkg") and shutil.which("readelf"):
        for soname, pkg in needed_packages(binary).items():
            if pkg and SANITIZER_RUNTIME.match(pkg):
                continue
            have = {T64.sub("", q) for q in pkgs | BASE_PACKAGES}
            c.expect(pkg and T64.sub("", pkg) in have,
                     "the runtime stage installs %s's package (%s)" % (soname, pkg))

    with open(path("deploy", "wrk", "Dockerfile")) as f:
        load = stages(instructions(f.read()))
    c.expect(len(load) == 1 and load[0][0] == "debian:13-slim" and
             {"wrk", "curl", "gnuplot-nox"} <= apt_packages(load[0][1]),
             "the load image is debian:13-slim with wrk, curl and gnuplot")
    c.finish()


if __name__ == "__main__":
    sys.exit(main())
