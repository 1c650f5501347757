"""Pods, exec, logs, cluster DNS, Services, Jobs on the real test cluster (scripts/k8s-cluster).

Every pod runs the busybox image that ``scripts/k8s-cluster up`` built locally and imported into
containerd; traffic goes only to pods and services of this cluster (and loopback).
"""

from __future__ import annotations

import json
import secrets
import subprocess
import time

import pytest

pytestmark = [pytest.mark.k8s, pytest.mark.timeout(600)]

SLEEP = ["sleep", "3600"]


def test_pod_from_local_image_runs_exec_and_logs(kube, ns):
    token = secrets.token_hex(8)
    pod = kube.run_pod(ns, "hello", ["sh", "-c", f"echo started-{token}; exec sleep 3600"])
    assert pod["spec"]["containers"][0]["image"] == kube.image
    assert pod["status"]["containerStatuses"][0]["imageID"], pod["status"]
    kube.wait("the pod's log line", lambda: f"started-{token}" in kube.logs(ns, "hello"), ns, 30, "pod", "hello")
    proc = kube.exec(ns, "hello", "sh", "-c", "echo $(hostname) $(id -u)")
    assert proc.returncode == 0, proc.stderr + kube.diagnose(ns, "pod", "hello")
    assert proc.stdout.split() == ["hello", "0"]
    # a failing command's exit status comes back through exec
    assert kube.exec(ns, "hello", "sh", "-c", "exit 7").returncode == 7


def test_pod_network_stays_on_this_machine(kube, ns):
    """Isolation by routes and policy, checked without sending anything: the pod has no default
    route, every cluster range is routed to the cluster's own interfaces on the host, and the guard
    chain drops cluster traffic leaving through any other interface."""
    kube.run_pod(ns, "routes", SLEEP)
    routes = kube.exec(ns, "routes", "ip", "route").stdout
    assert routes.strip() and "default" not in routes, routes
    for dst in ("10.244.3.3", "10.96.7.7", "10.245.0.1"):
        out = subprocess.run(["ip", "route", "get", dst], capture_output=True, text=True).stdout
        assert ("dev vrek8s0" in out or "dev lo" in out) and "eth0" not in out, out
    pod_ip = kube.get("pod", "routes", ns)["status"]["podIP"]
    out = subprocess.run(["ip", "route", "get", pod_ip], capture_output=True, text=True).stdout
    assert "dev vrek8s-br0" in out, out
    guard = subprocess.run(["iptables", "-t", "mangle", "-S", "VRE-K8S-GUARD"], capture_output=True, text=True).stdout
    assert "-s 10.244.0.0/16 ! -o vrek8s-br0 -j DROP" in guard, guard
    assert "-d 10.244.0.0/16 ! -o vrek8s-br0 -j DROP" in guard, guard
    assert "-d 10.96.0.0/16 -j DROP" in guard, guard
    hooks = subprocess.run(["iptables", "-t", "mangle", "-S", "POSTROUTING"], capture_output=True, text=True).stdout
    assert "-A POSTROUTING -j VRE-K8S-GUARD" in hooks, hooks
    nat = subprocess.run(["iptables-save", "-t", "nat"], capture_output=True, text=True).stdout
    assert not [line for line in nat.splitlines() if "10.244.0.0" in line and "MASQUERADE" in line and "! -d" in line], \
        "no masquerading of pod traffic to the outside"


def test_cluster_dns_resolves_a_service_and_reaches_it(kube, ns):
    token = secrets.token_hex(8)
    kube.run_pod(ns, "web", ["sh", "-c", f"mkdir -p /tmp/www && echo pong-{token} >/tmp/www/index.html "
                                         "&& exec httpd -f -p 8080 -h /tmp/www"], labels={"app": "web"})
    kube.apply({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web", "namespace": ns},
                "spec": {"selector": {"app": "web"}, "ports": [{"port": 80, "targetPort": 8080}]}})
    cluster_ip = kube.get("service", "web", ns)["spec"]["clusterIP"]
    kube.run_pod(ns, "client", SLEEP)

    def resolved():
        proc = kube.exec(ns, "client", "nslookup", f"web.{ns}.svc.cluster.local")
        return proc.returncode == 0 and cluster_ip in proc.stdout and proc.stdout

    kube.wait(f"web.{ns}.svc.cluster.local -> {cluster_ip}", resolved, ns, 60)

    def fetched():  # by the short name, through the pod's search path, kube-proxy and the service
        return f"pong-{token}" in kube.http_get(ns, "client", "web", 80)

    kube.wait("http://web/ through the service", fetched, ns, 60, "service", "web")
    # the apiserver's service name resolves too; names outside the cluster do not (no upstream)
    proc = kube.exec(ns, "client", "nslookup", "kubernetes.default.svc.cluster.local")
    assert "10.96.0.1" in proc.stdout, proc.stdout + proc.stderr
    proc = kube.exec(ns, "client", "nslookup", "no-such-name.invalid.")
    assert proc.returncode != 0, proc.stdout


def _job(kube, ns, name, command, suspend=False):
    return {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": name, "namespace": ns},
            "spec": {"suspend": suspend, "backoffLimit": 0,
                     "template": {"spec": kube.pod(ns, name, command)["spec"]}}}


def _job_condition(kube, ns, name, kind):
    conds = kube.get("job", name, ns).get("status", {}).get("conditions", [])
    return any(c["type"] == kind and c["status"] == "True" for c in conds)


def test_job_runs_to_completion(kube, ns):
    kube.apply(_job(kube, ns, "count", ["sh", "-c", "for i in 1 2 3; do echo step $i; done"]))
    kube.wait("job count Complete", lambda: _job_condition(kube, ns, "count", "Complete"), ns, 120, "job", "count")
    job = kube.get("job", "count", ns)
    assert job["status"].get("succeeded") == 1, job["status"]
    assert "step 3" in kube("logs", "-n", ns, "job/count")


def test_suspended_job_starts_only_when_resumed(kube, ns):
    kube.apply(_job(kube, ns, "later", ["sh", "-c", "echo ran"], suspend=True))
    kube.wait("job later Suspended", lambda: _job_condition(kube, ns, "later", "Suspended"), ns, 60, "job", "later")
    time.sleep(5)  # the job controller has long had the chance to create a pod, were it not suspended
    pods = json.loads(kube("get", "pods", "-n", ns, "-l", "job-name=later", "-o", "json"))["items"]
    assert pods == [], [p["metadata"]["name"] for p in pods]
    assert not kube.get("job", "later", ns)["status"].get("active"), kube.get("job", "later", ns)["status"]
    kube("patch", "job", "later", "-n", ns, "--type=merge", "-p", '{"spec": {"suspend": false}}')
    kube.wait("job later Complete after resume", lambda: _job_condition(kube, ns, "later", "Complete"), ns, 120,
              "job", "later")
    assert "ran" in kube("logs", "-n", ns, "job/later")
