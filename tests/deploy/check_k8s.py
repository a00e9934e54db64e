#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""The Kubernetes manifests in deploy/k8s, parsed and held to the properties a zero-downtime,
least-privilege deployment needs.

Every YAML file must parse and name its kind; the Deployment's shutdown timings must add up
(preStop + DRAIN_DELAY_MS + SHUTDOWN_GRACE_MS + the 5 s the service waits for cancellations
< terminationGracePeriodSeconds); probes, security
context, resources and the env names (deploylib's CONFIG_VARS, DATABASE_URL only from a Secret) are
checked; and the Service, PodDisruptionBudget and HorizontalPodAutoscaler must select or target
that Deployment. When HINDSIGHT_BIN is set, the binary's --help must name every variable the
Deployment sets, so a rename in the service cannot leave the manifests behind."""

import glob
import os
import re
import sys

import yaml

from deploylib import CANCEL_WAIT_MS, CONFIG_VARS, Checks, allowed_vars, path, service_help

K8S = path("deploy", "k8s")


def quantity(q):
    """A Kubernetes CPU or memory quantity as a number (cores or bytes)."""
    m = re.fullmatch(r"(\d+(?:\.\d+)?)(m|Ki|Mi|Gi|k|M|G)?", str(q))
    if m is None:
        raise ValueError("not a quantity: %r" % q)
    scale = {None: 1, "m": 0.001, "k": 1e3, "M": 1e6, "G": 1e9,
             "Ki": 1024, "Mi": 1024 ** 2, "Gi": 1024 ** 3}[m.group(2)]
    return float(m.group(1)) * scale


def selects(selector, labels):
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def dockerfile_user():
    with open(path("Dockerfile")) as f:
        users = re.findall(r"^USER\s+(\d+)", f.read(), re.M)
    return int(users[-1]) if users else None


def main():
    c = Checks("check_k8s")
    docs = {}
    files = sorted(glob.glob(os.path.join(K8S, "*.yaml")))
    c.expect(files, "deploy/k8s has manifests")
    for f in files:
        try:
            with open(f) as fh:
                for d in yaml.safe_load_all(fh):
                    if d is None:
                        continue
                    kind = d.get("kind")
                    c.expect(kind and d.get("apiVersion"), "%s: apiVersion and kind" % f)
                    c.expect(kind == "Kustomization" or d.get("metadata", {}).get("name"),
                             "%s: %s has a name" % (f, kind))
                    c.expect(kind not in docs, "%s: one %s only" % (f, kind))
                    docs[kind] = (os.path.basename(f), d)
        except yaml.YAMLError as e:
            c.expect(False, "%s parses: %s" % (f, e))
    for kind in ("Deployment", "Service", "PodDisruptionBudget", "HorizontalPodAutoscaler",
                 "Secret", "Kustomization"):
        if not c.expect(kind in docs, "a %s manifest exists" % kind):
            c.finish()

    dep = docs["Deployment"][1]
    c.expect(dep["apiVersion"] == "apps/v1", "Deployment is apps/v1")
    spec = dep["spec"]
    pod = spec["template"]["spec"]
    labels = spec["template"]["metadata"]["labels"]
    c.expect(spec.get("replicas", 1) >= 2, "at least 2 replicas")
    c.expect(selects(spec["selector"]["matchLabels"], labels), "selector matches the pod labels")
    c.expect(spec.get("strategy", {}).get("rollingUpdate", {}).get("maxUnavailable") == 0,
             "rollouts never take a pod away before its replacement is ready")
    c.expect(len(pod["containers"]) == 1, "one container")
    ctr = pod["containers"][0]
    ports = {p.get("name"): p["containerPort"] for p in ctr.get("ports", [])}

    env = {e["name"]: e for e in ctr.get("env", [])}
    c.expect(CONFIG_VARS <= set(env) <= allowed_vars(),
             "env sets all of the core configuration and only known names: missing %s, "
             "unknown %s" % (sorted(CONFIG_VARS - set(env)), sorted(set(env) - allowed_vars())))
    c.expect(not ctr.get("envFrom"), "no envFrom that could bring unchecked names")
    db = env.get("DATABASE_URL", {})
    ref = db.get("valueFrom", {}).get("secretKeyRef", {})
    c.expect("value" not in db and ref.get("name") and ref.get("key"),
             "DATABASE_URL comes from a secretKeyRef, never a literal")
    c.expect(not any("postgres" in str(e.get("value", "")) for e in env.values()),
             "no connection string in a literal env value")

    def ms(name):
        return int(env.get(name, {}).get("value", "0"))

    port = int(env.get("PORT", {}).get("value", "8080"))
    c.expect(ports.get("http") == port, "container port `http` is PORT (%d)" % port)

    def probe(kind, route):
        p = ctr.get(kind, {}).get("httpGet", {})
        c.expect(p.get("path") == route and ports.get(p.get("port"), p.get("port")) == port,
                 "%s is GET %s on PORT, got %r" % (kind, route, p))
        return ctr.get(kind, {})

    probe("readinessProbe", "/readyz")
    probe("livenessProbe", "/healthz")
    startup = probe("startupProbe", "/healthz")
    c.expect(startup.get("failureThreshold", 3) * startup.get("periodSeconds", 10) >= 30,
             "the startup probe allows at least 30 s (schema migration at start)")

    pre = ctr.get("lifecycle", {}).get("preStop", {}).get("exec", {}).get("command", [])
    drain = ms("DRAIN_DELAY_MS")
    grace = ms("SHUTDOWN_GRACE_MS")
    pre_ms = int(pre[1]) * 1000 if len(pre) == 2 and pre[0] == "sleep" else None
    c.expect(pre_ms is not None and drain > 0 and pre_ms == drain,
             "preStop is `sleep` for DRAIN_DELAY_MS (%d ms), got %r" % (drain, pre))
    term = pod.get("terminationGracePeriodSeconds", 30) * 1000
    c.expect(grace > 0 and term > (pre_ms or 0) + drain + grace + CANCEL_WAIT_MS,
             "terminationGracePeriodSeconds (%d ms) > preStop + DRAIN_DELAY_MS + "
             "SHUTDOWN_GRACE_MS + the wait for cancellations (%d + %d + %d + %d ms)"
             % (term, pre_ms or 0, drain, grace, CANCEL_WAIT_MS))

    res = ctr.get("resources", {})
    for r in ("cpu", "memory"):
        req = res.get("requests", {}).get(r)
        lim = res.get("limits", {}).get(r)
        c.expect(req is not None and lim is not None and quantity(req) <= quantity(lim),
                 "%s request <= limit, got %r / %r" % (r, req, lim))

    psc = pod.get("securityContext", {})
    csc = ctr.get("securityContext", {})
    c.expect(psc.get("runAsNonRoot") is True or csc.get("runAsNonRoot") is True,
             "runAsNonRoot")
    uid = csc.get("runAsUser", psc.get("runAsUser"))
    c.expect(uid not in (None, 0) and uid == dockerfile_user(),
             "runAsUser (%r) is the image's numeric USER (%r)" % (uid, dockerfile_user()))
    c.expect(csc.get("readOnlyRootFilesystem") is True, "readOnlyRootFilesystem")
    c.expect(csc.get("allowPrivilegeEscalation") is False, "allowPrivilegeEscalation: false")
    c.expect(csc.get("capabilities", {}).get("drop") == ["ALL"], "drops ALL capabilities")
    c.expect(not csc.get("capabilities", {}).get("add"), "adds no capability")
    c.expect(pod.get("automountServiceAccountToken") is False,
             "no service account token (the service never calls the API server)")

    svc = docs["Service"][1]
    c.expect(selects(svc["spec"].get("selector"), labels), "Service selects the pods")
    c.expect(all(p.get("targetPort") in ports or p.get("targetPort") in ports.values()
                 for p in svc["spec"]["ports"]), "Service targets a container port")

    pdb = docs["PodDisruptionBudget"][1]
    c.expect(pdb["apiVersion"] == "policy/v1", "PodDisruptionBudget is policy/v1")
    c.expect(selects(pdb["spec"]["selector"]["matchLabels"], labels), "PDB selects the pods")
    min_avail = pdb["spec"].get("minAvailable")
    c.expect(isinstance(min_avail, int) and 1 <= min_avail < spec["replicas"],
             "PDB keeps at least one pod yet lets a drain evict one, got %r" % min_avail)

    hpa = docs["HorizontalPodAutoscaler"][1]
    c.expect(hpa["apiVersion"] == "autoscaling/v2", "HPA is autoscaling/v2")
    target = hpa["spec"]["scaleTargetRef"]
    c.expect(target.get("kind") == "Deployment" and
             target.get("name") == dep["metadata"]["name"], "HPA scales the Deployment")
    c.expect(hpa["spec"].get("minReplicas", 1) >= 2 and
             hpa["spec"]["maxReplicas"] >= hpa["spec"]["minReplicas"],
             "HPA keeps at least 2 replicas")
    c.expect(hpa["spec"].get("metrics"), "HPA has metrics")

    sfile, secret = docs["Secret"]
    c.expect(secret["metadata"]["name"] == ref.get("name") and
             ref.get("key") in secret.get("stringData", {}),
             "the example Secret has the name and key the Deployment reads")
    fake = str(secret.get("stringData", {}).get(ref.get("key"), ""))
    c.expect(".invalid" in fake or "example" in fake, "the example Secret's value is fake")

    kust = docs["Kustomization"][1]
    resources = kust.get("resources", [])
    c.expect(sfile not in resources, "the example Secret is not applied by kustomize")
    c.expect(sorted(resources) == sorted(f for f, _ in docs.values()
                                         if f not in (sfile, "kustomization.yaml")),
             "kustomization lists every manifest but the Secret example")
    image = ctr["image"].split(":")[0]
    c.expect(any(i.get("name") == image for i in kust.get("images", [])),
             "kustomization sets the container's image")

    text = service_help()
    if text is not None:
        missing = sorted(v for v in env if not re.search(r"\b%s\b" % v, text))
        c.expect(not missing, "the service's --help names every variable the Deployment sets, "
                 "missing %s" % missing)
    c.finish()


if __name__ == "__main__":
    sys.exit(main())
