# SPDX-License-Identifier: MIT
#
# The hindsight image, in two stages, on Debian 13 (the current stable release: libmicrohttpd
# 1.0.1, libuv 1.50, libpq 17).
#
# The build stage installs the build dependencies with the same script a developer runs on a fresh
# Debian machine (deploy/setup.sh), so the image and the README cannot drift apart, and builds a
# Release binary. The runtime stage is debian:13-slim with only the shared libraries the binary
# links against, curl for the HEALTHCHECK, and an unprivileged user. Nothing secret is baked in:
# DATABASE_URL and the rest of the configuration come from the environment at run time
# (deploy/docker-compose.yml, deploy/k8s/). The shutdown defaults (DRAIN_DELAY_MS 0,
# SHUTDOWN_GRACE_MS 4000, then at most 5 s for cancelled work) end inside docker stop's 10 s.
#
#   docker build -t hindsight:local .
#   podman build --format docker -t hindsight:local .
#   docker run --rm -p 8080:8080 -e DATABASE_URL=postgresql://... hindsight:local
#
# podman (buildah) must build with --format docker (or BUILDAH_FORMAT=docker): its default OCI
# image format has no HEALTHCHECK and drops it with a warning. deploy/container-check.sh builds
# the image and checks it running.

FROM debian:13 AS build
WORKDIR /src
# setup.sh alone first: the dependency layer is then rebuilt only when the script changes, not on
# every source edit.
COPY deploy/setup.sh deploy/setup.sh
RUN bash deploy/setup.sh --deps-only \
    && rm -rf /var/lib/apt/lists/*
COPY . .
RUN cmake -S . -B /build -DCMAKE_BUILD_TYPE=Release \
    && cmake --build /build --target hindsight -j"$(nproc)" \
    && strip /build/hindsight

FROM debian:13-slim AS runtime
# The run-time halves of the -dev packages the build stage used (Debian 13 names: the 64-bit
# time_t transition renamed libmicrohttpd12 and libuv1 with a t64 suffix, same sonames). curl is
# only for the HEALTHCHECK; ca-certificates lets DATABASE_URL use sslmode=verify-full.
RUN apt-get update \
    && apt-get install -y --no-install-recommends \
       libmicrohttpd12t64 libuv1t64 libpq5 libjansson4 ca-certificates curl \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 hindsight \
    && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
       --shell /usr/sbin/nologin hindsight
COPY --from=build /build/hindsight /usr/local/bin/hindsight

# A numeric user, so that Kubernetes' runAsNonRoot can verify it without reading /etc/passwd.
USER 10001:10001
# The HEALTHCHECK below reads PORT too, so it follows a PORT given at run time.
ENV PORT=8080
EXPOSE 8080

# Liveness, not readiness: a container whose database is down is alive and must not be restarted
# for it; readiness (/readyz) is the orchestrator's business (compose healthcheck, k8s probes).
# The shell form is what expands ${PORT}.
HEALTHCHECK --interval=10s --timeout=3s --start-period=15s --retries=3 \
    CMD curl -fsS --max-time 2 -o /dev/null "http://127.0.0.1:${PORT}/healthz" || exit 1

# The service is PID 1 on purpose: it installs its own SIGTERM/SIGINT handlers (which is what a
# PID 1 needs, since the kernel ignores unhandled signals there) and runs the shutdown sequence
# (service/shutdown.h) itself, and it starts no child processes, so there are no zombies to reap.
# The exec form keeps a shell from sitting in between and swallowing the signal. tests/deploy/pid1_signals.sh
# checks this by running the binary as PID 1 of its own PID namespace.
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/hindsight"]
