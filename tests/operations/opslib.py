# SPDX-License-Identifier: MIT
"""What the operations checks share: the built service on a free loopback port, plain HTTP
requests to it, and a real Prometheus scraping it (tests/operations/)."""

import contextlib
import http.client
import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request

ROOT = os.environ.get("HS_SOURCE_DIR") or os.path.abspath(
    os.path.join(os.path.dirname(__file__), "..", ".."))
BIN = os.environ.get("HINDSIGHT_BIN", os.path.join(ROOT, "build", "hindsight"))
SKIP = 77


def library_major():
    """The major version of the libmicrohttpd the binary runs with (its --version): 1.0's strict
    parser refuses some heads itself, with its own HTML 400 (docs/architecture.md)."""
    out = subprocess.run([BIN, "--version"], capture_output=True, text=True, check=True).stdout
    m = re.search(r"^libmicrohttpd (\d+)\.", out, re.M)
    if m is None:
        sys.exit("%s --version names no libmicrohttpd: %r" % (BIN, out))
    return int(m.group(1))


def skip(why):
    print("SKIP: " + why)
    sys.exit(SKIP)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def db_url(url, db):
    """url with its database name replaced by db."""
    u = urllib.parse.urlsplit(url)
    return urllib.parse.urlunsplit(u._replace(path="/" + db))


def psql(url, sql):
    run = subprocess.run(["psql", "-qAt", "-v", "ON_ERROR_STOP=1", url, "-c", sql], check=True,
                         capture_output=True, text=True, timeout=60)
    return run.stdout.strip()


@contextlib.contextmanager
def private_database(base_url, tag):
    """A database of this run's own on the server of base_url (its URL), dropped afterwards;
    the service migrates and seeds it at start."""
    name = "hs_test_%s_%d" % (tag, os.getpid())
    admin = db_url(base_url, "postgres")
    psql(admin, "DROP DATABASE IF EXISTS %s WITH (FORCE)" % name)
    psql(admin, "CREATE DATABASE %s" % name)
    try:
        yield db_url(base_url, name)
    finally:
        psql(admin, "DROP DATABASE IF EXISTS %s WITH (FORCE)" % name)


class Service:
    """The built binary on a free loopback port, with env over the caller's environment (never
    the caller's DATABASE_URL), its log in a temporary file; waits until /healthz answers."""

    def __init__(self, name, env):
        self.name = name
        self.url = env.get("DATABASE_URL")
        self.port = free_port()
        self.log = tempfile.NamedTemporaryFile(prefix="hs-ops-%s-" % name, suffix=".log",
                                               delete=False)
        full = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
        # One loop unless the test says otherwise: the default (one per CPU) splits the pool and
        # its queue between loops, and the matrices count on one pool of the size they give.
        full.update({"PORT": str(self.port), "HOST": "127.0.0.1", "LOG_LEVEL": "warn",
                     "WORKERS": "1"})
        full.update(env)
        self.proc = subprocess.Popen([BIN], env=full, stdout=subprocess.DEVNULL, stderr=self.log)
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                sys.exit("%s exited at start: %s" % (name, open(self.log.name).read()))
            try:
                if request(self, "GET", "/healthz").status == 200:
                    return
            except OSError:
                pass
            time.sleep(0.05)
        self.kill()
        sys.exit("%s did not answer /healthz" % name)

    def stop(self, timeout=20):
        """SIGTERM, then the exit status (None if it had to be killed). The log is removed,
        after its tail is printed when the exit was not clean."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            rc = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            rc = None
        self.kill(show_log=rc != 0)
        return rc

    def kill(self, show_log=False):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        if os.path.exists(self.log.name):
            if show_log:
                with open(self.log.name) as f:
                    print("%s log (tail):\n%s" % (self.name, "".join(f.readlines()[-20:])))
            os.unlink(self.log.name)


class Response:
    def __init__(self, status, headers, body):
        self.status = status
        self.headers = headers  # lower-case name -> list of values
        self.body = body


def request(svc, method, path, body=None, headers=None, raw_body=None, barrier=None):
    """One request on its own connection. With a barrier (threading.Barrier), the request is
    sent only once every party has connected: requests that must overlap do."""
    conn = http.client.HTTPConnection("127.0.0.1", svc.port, timeout=30)
    try:
        if barrier is not None:
            conn.connect()
            barrier.wait(30)
        data = raw_body if raw_body is not None else (
            json.dumps(body).encode() if body is not None else None)
        h = dict(headers or {})
        if data is not None:
            h.setdefault("Content-Type", "application/json")
        conn.request(method, path, body=data, headers=h)
        r = conn.getresponse()
        hdrs = {}
        for k, v in r.getheaders():
            hdrs.setdefault(k.lower(), []).append(v)
        return Response(r.status, hdrs, r.read())
    finally:
        conn.close()



class Prometheus:
    """A real Prometheus on loopback, with config (a dict, written as JSON, which is YAML) and
    its rule files in a private directory; its HTTP API through query() and alerts()."""

    def __init__(self, config, files):
        self.dir = tempfile.mkdtemp(prefix="hs-prometheus-")
        for name, text in files.items():
            with open(os.path.join(self.dir, name), "w") as f:
                f.write(text)
        with open(os.path.join(self.dir, "prometheus.yml"), "w") as f:
            json.dump(config, f)
        self.port = free_port()
        self.log = open(os.path.join(self.dir, "prometheus.log"), "w")
        self.proc = subprocess.Popen(
            ["prometheus", "--config.file=" + os.path.join(self.dir, "prometheus.yml"),
             "--storage.tsdb.path=" + os.path.join(self.dir, "data"),
             "--web.listen-address=127.0.0.1:%d" % self.port, "--log.level=warn"],
            stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                sys.exit("prometheus exited: " + open(self.log.name).read())
            try:
                with urllib.request.urlopen("http://127.0.0.1:%d/-/ready" % self.port,
                                            timeout=2) as r:
                    if r.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.1)
        self.stop()
        sys.exit("prometheus did not become ready: " + open(self.log.name).read())

    def api(self, path, **params):
        url = "http://127.0.0.1:%d/api/v1/%s" % (self.port, path)
        if params:
            url += "?" + urllib.parse.urlencode(params)
        try:
            with urllib.request.urlopen(url, timeout=10) as r:
                return json.load(r)
        except urllib.error.HTTPError as e:
            return json.load(e)

    def query(self, expr):
        """The instant query's answer: {"status", "data"|"error", ...}."""
        return self.api("query", query=expr)

    def value(self, expr):
        """The first sample's value of an instant query, or None when it returned nothing."""
        r = self.query(expr)
        result = r.get("data", {}).get("result", [])
        return float(result[0]["value"][1]) if result else None

    def alert_state(self, name):
        """"firing", "pending" or None for the alert name (any instance)."""
        states = [a["state"] for a in self.api("alerts")["data"]["alerts"]
                  if a["labels"].get("alertname") == name]
        for s in ("firing", "pending"):
            if s in states:
                return s
        return None

    def wait_for(self, expr, timeout):
        """Waits until the instant query expr returns a sample; returns whether it did."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.value(expr) is not None:
                return True
            time.sleep(0.25)
        return False

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()
        subprocess.run(["rm", "-rf", self.dir], check=False)


class Load:
    """n threads, each sending the requests (a path to GET, or a list of (method, path, body)
    taken in turn) to svc over its own keep-alive connection until stopped; counts the answers
    by status."""

    def __init__(self, svc, requests, n):
        import threading
        if isinstance(requests, str):
            requests = [("GET", requests, None)]
        self.statuses = {}
        self.stop_flag = threading.Event()
        self.lock = threading.Lock()
        self.threads = [threading.Thread(target=self.run, args=(svc, requests, i), daemon=True)
                        for i in range(n)]
        for t in self.threads:
            t.start()

    def run(self, svc, requests, first):
        conn = None
        i = first
        while not self.stop_flag.is_set():
            method, path, body = requests[i % len(requests)]
            i += 1
            try:
                if conn is None:
                    conn = http.client.HTTPConnection("127.0.0.1", svc.port, timeout=30)
                data = json.dumps(body).encode() if body is not None else None
                conn.request(method, path, body=data,
                             headers={"Content-Type": "application/json"} if data else {})
                r = conn.getresponse()
                r.read()
                status = r.status
            except (OSError, http.client.HTTPException):
                conn = None
                status = "error"
            with self.lock:
                self.statuses[status] = self.statuses.get(status, 0) + 1

    def stop(self):
        self.stop_flag.set()
        for t in self.threads:
            t.join(60)
        return dict(self.statuses)
