#!/usr/bin/env python3
"""Renders deploy/k8s (the base and every overlay) with `kubectl kustomize`,
validates every resource against the Kubernetes API schemas
(kubernetes-validate, strict), and checks what docs/operations.md promises
of them. Prints, per rendering, the voters' count and their node.toml as
JSON for the Rust test (node/tests/deploy.rs) to load as Gatehouse would.

Usage: check_k8s.py DEPLOY_K8S_DIR
"""
import json
import os
import subprocess
import sys

import kubernetes_validate
import yaml

KUBERNETES = "1.30.0"


def fail(msg):
    print(f"check_k8s: {msg}", file=sys.stderr)
    sys.exit(1)


def render(path):
    out = subprocess.run(["kubectl", "kustomize", path], capture_output=True, text=True)
    if out.returncode != 0:
        fail(f"kustomize {path}: {out.stderr}")
    return [d for d in yaml.safe_load_all(out.stdout) if d]


def named(docs, name):
    return [d for d in docs if d["metadata"]["name"] == name][0]


def component(docs, comp):
    return [d for d in docs if d["spec"]["selector"]["matchLabels"].get("app.kubernetes.io/component") == comp][0]


def check_pod(pod, where):
    """What every Gatehouse pod keeps: no token, non-root, read-only, no capability, the probes."""
    if pod.get("automountServiceAccountToken") is not False:
        fail(f"{where}: no service account token in the pods")
    psc = pod["securityContext"]
    if not psc.get("runAsNonRoot") or psc.get("seccompProfile", {}).get("type") != "RuntimeDefault":
        fail(f"{where}: pods run as non-root with the runtime's seccomp profile")
    for c in pod["containers"]:
        sc = c["securityContext"]
        if not sc.get("readOnlyRootFilesystem") or sc.get("allowPrivilegeEscalation") is not False:
            fail(f"{where}: {c['name']}: read-only root, no privilege escalation")
        if sc.get("capabilities", {}).get("drop") != ["ALL"]:
            fail(f"{where}: {c['name']}: every capability dropped")
        if c["readinessProbe"]["httpGet"]["path"] != "/readyz" or c["livenessProbe"]["httpGet"]["path"] != "/healthz":
            fail(f"{where}: readiness on /readyz, liveness on /healthz")


def check(docs, where):
    by_kind = {}
    for d in docs:
        try:
            kubernetes_validate.validate(d, KUBERNETES, strict=True)
        except kubernetes_validate.ValidationError as e:
            fail(f"{where}: {d['kind']}/{d['metadata']['name']}: {e.message}")
        by_kind.setdefault(d["kind"], []).append(d)
    sts = component(by_kind["StatefulSet"], "voter")
    spec = sts["spec"]
    replicas = spec["replicas"]
    if spec.get("updateStrategy", {}).get("type") != "OnDelete":
        fail(f"{where}: voters are replaced only by `gatehouse admin cluster roll` (updateStrategy OnDelete)")
    if spec.get("podManagementPolicy") != "Parallel":
        fail(f"{where}: voters must start in parallel (a quorum is needed for readiness)")
    headless = named(by_kind["Service"], spec["serviceName"])
    if headless["spec"].get("clusterIP") != "None" or not headless["spec"].get("publishNotReadyAddresses"):
        fail(f"{where}: the peer service must be headless and publish addresses before readiness")
    pdb = named(by_kind["PodDisruptionBudget"], "gatehouse")["spec"]
    if pdb.get("minAvailable", 0) <= replicas // 2:
        fail(f"{where}: the disruption budget must keep a quorum of {replicas}")
    check_pod(spec["template"]["spec"], where)
    # The peer port: voters and fronts only.
    policy = named(by_kind["NetworkPolicy"], "gatehouse")["spec"]
    for rule in policy["ingress"]:
        ports = [p["port"] for p in rule.get("ports", [])]
        if 7000 in ports:
            comps = sorted(f["podSelector"]["matchLabels"]["app.kubernetes.io/component"] for f in rule.get("from", []))
            if comps != ["front", "voter"]:
                fail(f"{where}: the peer port must be open to voters and fronts only, not {comps}")
    config = named(by_kind["ConfigMap"], "gatehouse-config")

    # The fronts: the same pod rules; their voters are every voter; nothing
    # reaches them but HTTP and metrics.
    fronts = component(by_kind["StatefulSet"], "front")
    check_pod(fronts["spec"]["template"]["spec"], f"{where} (fronts)")
    front_policy = named(by_kind["NetworkPolicy"], "gatehouse-front")["spec"]
    open_ports = sorted(p["port"] for rule in front_policy["ingress"] for p in rule.get("ports", []))
    if open_ports != [8080, 9100]:
        fail(f"{where}: a front takes HTTP and metrics only, not {open_ports}")
    mounted = [v["secret"]["secretName"] for v in spec["template"]["spec"]["volumes"] if "secret" in v]
    if "gatehouse-fronts" not in mounted or "gatehouse-front-secrets" in mounted:
        fail(f"{where}: voters hold the fronts file (hashes), never the fronts' secrets")
    front_config = named(by_kind["ConfigMap"], "gatehouse-front-config")
    return {
        "replicas": replicas,
        "namespace": sts["metadata"]["namespace"],
        "node_toml": config["data"]["node.toml"],
        "fronts": fronts["spec"]["replicas"],
        "front_toml": front_config["data"]["front.toml"],
    }


def main():
    root = sys.argv[1]
    renderings = {"base": os.path.join(root, "base")}
    overlays = os.path.join(root, "overlays")
    for name in sorted(os.listdir(overlays)):
        renderings[name] = os.path.join(overlays, name)
    print(json.dumps({name: check(render(path), name) for name, path in renderings.items()}))


if __name__ == "__main__":
    main()
