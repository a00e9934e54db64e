# SPDX-License-Identifier: MIT
"""What the deploy checks share: where the checkout is, the configuration contract, and a
collector that reports every failed expectation of a run at once instead of stopping at the first.

CONFIG_VARS are the settings every deployment file is checked against, a core of the settings table
in service/config.c (the one source of the settings; docs/operations.md shows it). The deployment
files may set these and whatever else the built service documents in its --help (when
HINDSIGHT_BIN is given), nothing more, so a misspelt or retired name fails a check instead of being silently ignored."""

import os
import re
import subprocess
import sys

ROOT = os.environ.get("HS_SOURCE_DIR") or os.path.abspath(
    os.path.join(os.path.dirname(__file__), "..", ".."))

CONFIG_VARS = {
    "PORT", "DATABASE_URL", "DB_POOL_SIZE", "DB_QUEUE_LIMIT", "BATCH_CONCURRENCY",
    "REQUEST_TIMEOUT_MS", "DRAIN_DELAY_MS", "SHUTDOWN_GRACE_MS", "MAX_BODY_BYTES",
    "MAX_CONNECTIONS", "BEFORE_ROUTES", "LOG_LEVEL", "LOG_FORMAT", "WORKERS",
}

# After SHUTDOWN_GRACE_MS the service cancels what is left and waits up to this long for the
# cancellations to land before it gives up with exit 1 (service/shutdown.h, step 5).
# Orchestrators must not kill it before that, or a slow cancellation becomes a SIGKILL instead of a logged exit.
CANCEL_WAIT_MS = 5000

# `docker stop`, `docker run`'s --stop-timeout and podman's default: SIGKILL this long after
# SIGTERM. The image runs with the service's defaults, so they must fit inside it.
DOCKER_STOP_TIMEOUT_MS = 10000


def config_default(name):
    """The default of an integer setting, from service/config.c's settings table (the one source
    of truth for the settings)."""
    with open(path("service", "config.c")) as f:
        text = f.read()
    m = re.search(r'\{"%s",\s*K_INT(?:64)?,[^"]*"(-?\d+)"' % re.escape(name), text)
    if not m:
        raise ValueError("no integer setting %s in service/config.c" % name)
    return int(m.group(1))


# ctest's SKIP_RETURN_CODE for the checks: a missing tool is reported as skipped, not passed.
SKIP = 77


def service_help():
    """The built service's --help text, or None when HINDSIGHT_BIN is not given."""
    binary = os.environ.get("HINDSIGHT_BIN")
    if not binary or not os.access(binary, os.X_OK):
        return None
    run = subprocess.run([binary, "--help"], capture_output=True, text=True, timeout=10)
    return run.stdout + run.stderr


def allowed_vars():
    """CONFIG_VARS, plus every upper-case setting name the service's --help mentions."""
    text = service_help()
    extra = set(re.findall(r"\b[A-Z][A-Z0-9]*(?:_[A-Z0-9]+)+\b|\bPORT\b", text)) if text else set()
    return CONFIG_VARS | extra


def path(*parts):
    return os.path.join(ROOT, *parts)


def duration_ms(text):
    """Compose/Go durations ("1m30s", "15s", "500ms") and plain seconds, in milliseconds."""
    text = str(text).strip()
    if re.fullmatch(r"\d+", text):
        return int(text) * 1000
    units = {"h": 3600000, "m": 60000, "s": 1000, "ms": 1, "us": 0.001}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|us|h|m|s)", text)
    if not parts or "".join(n + u for n, u in parts) != text:
        raise ValueError("not a duration: %r" % text)
    return sum(float(n) * units[u] for n, u in parts)


def skip(why):
    print("SKIP: " + why)
    sys.exit(SKIP)


class Checks:
    """Collects failed expectations; finish() prints them and exits non-zero if any."""

    def __init__(self, name):
        self.name = name
        self.passed = 0
        self.failed = []

    def expect(self, cond, what):
        if cond:
            self.passed += 1
        else:
            self.failed.append(what)
            print("FAIL: " + what)
        return bool(cond)

    def finish(self):
        print("%s: %d passed, %d failed" % (self.name, self.passed, len(self.failed)))
        sys.exit(1 if self.failed else 0)
