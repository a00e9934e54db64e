#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""The wrk scripts and deploy/wrk/compare.sh, run for real against a recording stub.

nginx on loopback plays the service: a front server logs every request it receives, body and
Idempotency-Key included (it proxies to a second server answering 200, which is what makes nginx
read the body), and answers GET /routes with the route table. Each script then runs under wrk for
a second and the log must show exactly the requests API.md describes: paths, ids within the seeded
range, well-formed JSON bodies, options applied, and Idempotency-Keys unique across threads and
across runs. compare.sh must produce its table, numbers and chart from the same stub."""

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time

from deploylib import Checks, path, skip

ROUTES = [
    {"method": m, "path": "/%s%s" % (v, p), "variant": v}
    for v in ("before", "after")
    for m, p in (("GET", "/users/{id}"), ("GET", "/users/{id}/dashboard"), ("POST", "/batch"),
                 ("POST", "/users/{id}/welcome"), ("POST", "/transfers"))
]

NGINX_CONF = """
worker_processes 1;
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
events {{ worker_connections 512; }}
http {{
    access_log off;
    client_body_temp_path {dir}/body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
    log_format record escape=json '{{"method":"$request_method","uri":"$request_uri",'
        '"key":"$http_idempotency_key","type":"$content_type","body":"$request_body"}}';
    server {{
        listen 127.0.0.1:{front};
        location = /routes {{ default_type application/json; return 200 '{routes}'; }}
        location / {{ access_log {dir}/requests.log record; proxy_pass http://127.0.0.1:{sink}; }}
    }}
    server {{
        listen 127.0.0.1:{sink};
        location / {{ default_type application/json; return 200 '{{"status":"ok"}}'; }}
    }}
}}
"""


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, deadline=10):
    end = time.time() + deadline
    while time.time() < end:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return True
        except OSError:
            time.sleep(0.05)
    return False


class Stub:
    def __init__(self, tmp):
        self.dir = tmp
        self.front = free_port()
        conf = os.path.join(tmp, "nginx.conf")
        with open(conf, "w") as f:
            f.write(NGINX_CONF.format(dir=tmp, front=self.front, sink=free_port(),
                                      routes=json.dumps(ROUTES)))
        self.log = os.path.join(tmp, "requests.log")
        # -e: nginx writes to its compiled-in error log before it reads the configuration.
        self.proc = subprocess.Popen(["nginx", "-p", tmp, "-e", os.path.join(tmp, "error.log"),
                                      "-c", conf, "-g", "daemon off;"])
        self.url = "http://127.0.0.1:%d" % self.front

    def take(self):
        """The requests logged since the last call."""
        if not os.path.exists(self.log):
            return []
        with open(self.log) as f:
            rows = [json.loads(l) for l in f if l.strip()]
        os.truncate(self.log, 0)
        return rows

    def stop(self):
        self.proc.terminate()
        self.proc.wait(timeout=10)


def wrk(stub, script, *opts):
    cmd = ["wrk", "-t2", "-c4", "-d1s", "-s", path("deploy", "wrk", script), stub.url]
    if opts:
        cmd += ["--"] + list(opts)
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    result = re.search(r"^wrk-result (.*)$", run.stdout, re.M)
    fields = dict(kv.split("=") for kv in result.group(1).split()) if result else {}
    # nginx logs a request after answering it; give the last ones a moment to land.
    time.sleep(0.2)
    return run, fields, stub.take()


def check_run(c, name, run, fields, rows):
    c.expect(run.returncode == 0, "%s: wrk exits 0: %s" % (name, run.stderr.strip()))
    c.expect(fields.get("requests", "0") != "0" and fields.get("non2xx") == "0"
             and fields.get("connect") == "0", "%s: a wrk-result line with answered requests, "
             "got %r" % (name, fields))
    c.expect(len(rows) >= 20, "%s: the stub saw requests (%d)" % (name, len(rows)))


def ids_in(c, name, ids):
    c.expect(ids and all(1 <= i <= 10000 for i in ids), "%s: ids within 1..10000" % name)
    c.expect(len(set(ids)) >= min(len(ids), 10000) // 2, "%s: ids are random (%d distinct of %d)"
             % (name, len(set(ids)), len(ids)))


def main():
    for tool in ("wrk", "nginx", "curl", "gnuplot"):
        if shutil.which(tool) is None:
            skip("%s is not installed (deploy/setup.sh installs it)" % tool)
    c = Checks("test_wrk_scripts")
    tmp = tempfile.mkdtemp(prefix="hs-wrk-")
    os.chmod(tmp, 0o755)  # nginx workers drop root privileges and must reach their temp dirs
    stub = Stub(tmp)
    try:
        if not c.expect(wait_port(stub.front), "the stub listens"):
            c.finish()

        run, fields, rows = wrk(stub, "users.lua", "variant=before", "delay_ms=7")
        check_run(c, "users", run, fields, rows)
        m = [re.fullmatch(r"/before/users/(\d+)\?delay_ms=7", r["uri"]) for r in rows]
        c.expect(all(m) and all(r["method"] == "GET" for r in rows), "users: GET /before/users/"
                 "{id}?delay_ms=7, got %r" % rows[:1])
        ids_in(c, "users", [int(x.group(1)) for x in m if x])

        run, fields, rows = wrk(stub, "dashboard.lua", "variant=after", "max_id=50")
        check_run(c, "dashboard", run, fields, rows)
        m = [re.fullmatch(r"/after/users/(\d+)/dashboard\?delay_ms=0", r["uri"]) for r in rows]
        c.expect(all(m), "dashboard: GET /after/users/{id}/dashboard, got %r" % rows[:1])
        c.expect(all(1 <= int(x.group(1)) <= 50 for x in m if x), "dashboard: max_id applies")

        run, fields, rows = wrk(stub, "batch.lua", "variant=after", "size=7", "delay_ms=3",
                                "concurrency=4")
        check_run(c, "batch", run, fields, rows)
        bodies = [json.loads(r["body"]) for r in rows]
        c.expect(all(r["method"] == "POST" and r["uri"] == "/after/batch" and
                     r["type"] == "application/json" for r in rows), "batch: POST /after/batch")
        c.expect(all(len(b["ids"]) == 7 and b["delay_ms"] == 3 and b["concurrency"] == 4
                     for b in bodies), "batch: body has size ids, delay_ms and concurrency")
        ids_in(c, "batch", [i for b in bodies for i in b["ids"]])
        run, fields, rows = wrk(stub, "batch.lua", "variant=before")
        c.expect(rows and all("concurrency" not in json.loads(r["body"]) for r in rows),
                 "batch: concurrency=0 leaves the field to the service's default")

        run, fields, rows = wrk(stub, "welcome.lua", "variant=after", "events=3", "delay_ms=9",
                                "wait=true")
        check_run(c, "welcome", run, fields, rows)
        m = [re.fullmatch(r"/after/users/(\d+)/welcome\?wait=true", r["uri"]) for r in rows]
        c.expect(all(m) and all(json.loads(r["body"]) == {"events": 3, "delay_ms": 9}
                                for r in rows), "welcome: POST ...?wait=true with the events body")
        ids_in(c, "welcome", [int(x.group(1)) for x in m if x])

        keys = []
        for attempt in range(2):
            run, fields, rows = wrk(stub, "transfers.lua", "variant=before", "max_amount=3")
            check_run(c, "transfers", run, fields, rows)
            bodies = [json.loads(r["body"]) for r in rows]
            c.expect(all(r["uri"] == "/before/transfers" and r["method"] == "POST"
                         for r in rows), "transfers: POST /before/transfers")
            c.expect(all(b["from"] != b["to"] and 1 <= b["amount"] <= 3 and b["delay_ms"] == 0
                         for b in bodies), "transfers: two accounts, amount within 1..max_amount")
            ids_in(c, "transfers", [b[k] for b in bodies for k in ("from", "to")])
            keys += [r["key"] for r in rows]
        c.expect(all(keys) and len(set(keys)) == len(keys),
                 "transfers: every request of two runs has its own Idempotency-Key "
                 "(%d keys, %d distinct)" % (len(keys), len(set(keys))))

        run, fields, rows = wrk(stub, "healthz.lua")
        check_run(c, "healthz", run, fields, rows)
        c.expect(all(r["uri"] == "/healthz" for r in rows), "healthz: GET /healthz")
        run, fields, rows = wrk(stub, "healthz.lua", "path=/readyz")
        c.expect(rows and all(r["uri"] == "/readyz" for r in rows), "healthz: path= applies")

        run, fields, rows = wrk(stub, "users.lua", "varient=after")
        c.expect(run.returncode != 0 and "unknown option" in run.stderr + run.stdout,
                 "a misspelt option stops the run")

        out = os.path.join(tmp, "out")
        cmp = subprocess.run([path("deploy", "wrk", "compare.sh"), "-d", "1s", "-c", "4",
                              "-f", "users,transfers", "-o", out, stub.url],
                             capture_output=True, text=True, timeout=120)
        c.expect(cmp.returncode == 0, "compare.sh exits 0: " + cmp.stderr)
        table = [l.split() for l in cmp.stdout.splitlines()]
        got = [(r[0], r[1]) for r in table if len(r) == 8 and r[1] in ("before", "after")]
        c.expect(got == [("users", "before"), ("users", "after"), ("transfers", "before"),
                         ("transfers", "after")], "compare.sh prints a row per run, got %r" % got)
        with open(os.path.join(out, "results.tsv")) as f:
            rows = [l.rstrip("\n").split("\t") for l in f][1:]
        c.expect(len(rows) == 4 and all(float(r[2]) > 0 and r[5] == "0" and r[6] == "0"
                                        and float(r[7]) > 0 for r in rows),
                 "results.tsv has requests/s, no errors and the /healthz p99 per run")
        with open(os.path.join(out, "compare.png"), "rb") as f:
            c.expect(f.read(8) == b"\x89PNG\r\n\x1a\n", "compare.sh draws a PNG chart")
        c.expect(stub.take(), "compare.sh sent its load to the given URL")
    finally:
        stub.stop()
        if not c.failed:
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            print("logs kept in " + tmp)
    c.finish()


if __name__ == "__main__":
    sys.exit(main())
