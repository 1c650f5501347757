"""The Helm chart on the test cluster, for its tests (tests/k8s/test_helm_install.py) and the spawn
benchmark (bench/spawn.py --backends kubernetes): this checkout's images in the cluster's
containerd, and a release of the chart in a namespace of its own with a hostPath state volume.
"""

from __future__ import annotations

import json
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import requests
from testcluster import CLUSTER, ROOT  # tests/k8s, beside this file

CHART = ROOT / "helm" / "vre"
HELM = Path(sys.executable).parent / "helm"


class ChartError(RuntimeError):
    pass


def cluster_image(name: str) -> str:
    """Image ``name`` of this checkout (built, cached by its inputs), in the cluster's containerd
    under a tag of its own."""
    from vre import images

    try:
        tag = images.build([name], engine="podman", quiet=True)[name]
    except images.ImageError as e:
        raise ChartError(f"building the {name} image failed: {e}") from None
    image_id = subprocess.run(["podman", "image", "inspect", "-f", "{{.Id}}", tag], capture_output=True,
                              text=True, check=True).stdout.strip()
    repo = f"localhost/vre-{name}"
    ref = f"{repo}:chart-{image_id[:12]}"
    subprocess.run(["podman", "tag", image_id, ref], check=True)
    proc = subprocess.run([str(CLUSTER), "import", ref], capture_output=True, text=True, timeout=900)
    if proc.returncode != 0:
        raise ChartError(f"importing {ref} into the cluster failed: {proc.stdout}{proc.stderr}")
    _forget_older(repo, ref)
    return ref


def _forget_older(repo: str, keep: str) -> None:
    """Earlier builds' chart tags (a notebook image is 3 GB): untagged, and removed when nothing
    else holds them (``podman rmi`` without force leaves an image that is tagged or in use)."""
    listed = subprocess.run(["podman", "images", "--format", "{{.Repository}}:{{.Tag}} {{.ID}}", repo],
                            capture_output=True, text=True).stdout.split("\n")
    for line in listed:
        old, _, image_id = line.partition(" ")
        if old.startswith(f"{repo}:chart-") and old != keep:
            subprocess.run(["podman", "untag", image_id, old], capture_output=True)
            subprocess.run(["podman", "rmi", image_id], capture_output=True)


class Release:
    """One helm release of the chart in its own namespace, with a hostPath volume for its state."""

    def __init__(self, kube, ns: str, image: str):
        self.kube, self.ns, self.name = kube, ns, "vre"
        self.instance = f"t{secrets.token_hex(3)}"  # its project namespaces' label value
        self.state_dir = Path(tempfile.mkdtemp(prefix="vre-helm-state-", dir="/var/tmp"))
        self.observer_dir = Path(tempfile.mkdtemp(prefix="vre-helm-observer-", dir="/var/tmp"))
        self.storage_class = f"vre-test-{ns}"
        repo, tag = image.rsplit(":", 1)
        self.args = ["-f", str(CHART / "ci/minimal-values.yaml"),
                     "--set", f"hub.image.repository={repo}", "--set", f"hub.image.tag={tag}",
                     "--set", "hub.image.pullPolicy=Never", "--set", f"hub.instance={self.instance}",
                     "--set", f"hub.state.storageClassName={self.storage_class}", "--set", "hub.state.size=1Gi",
                     "--set", f"sessions.image={kube.image}",  # the busybox image: allow-listed for the policy checks
                     "--set", f"observer.nodePath={self.observer_dir}",
                     # local images only; a start that cannot succeed (busybox has no Python) fails fast
                     "--set-json", 'hub.jupyterhub={"KubernetesSpawner": {"image_pull_policy": "Never", '
                                   '"start_timeout": 40}}']
        kube.apply({"apiVersion": "v1", "kind": "PersistentVolume", "metadata": {"name": self.storage_class},
                    "spec": {"capacity": {"storage": "1Gi"}, "accessModes": ["ReadWriteOnce"],
                             "persistentVolumeReclaimPolicy": "Retain", "storageClassName": self.storage_class,
                             "hostPath": {"path": str(self.state_dir), "type": "Directory"}}})

    def helm(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
        proc = subprocess.run([str(HELM), *args, "--namespace", self.ns], capture_output=True, text=True,
                              env=self.kube.env, timeout=timeout)
        if proc.returncode != 0:
            raise ChartError(f"helm {' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}")
        return proc

    def hub_pod(self) -> dict:
        pods = json.loads(self.kube("get", "pods", "-n", self.ns, "-l", "app.kubernetes.io/component=hub",
                                    "-o", "json"))["items"]
        live = [p for p in pods if not p["metadata"].get("deletionTimestamp")]
        return live[0] if len(live) == 1 else {}

    def wait_hub_ready(self, timeout: float = 600, not_uid: str = "") -> dict:
        def ready():
            pod = self.hub_pod()
            if not pod or pod["metadata"]["uid"] == not_uid:
                return None
            conds = {c["type"]: c["status"] for c in pod.get("status", {}).get("conditions", [])}
            return pod if conds.get("Ready") == "True" else None

        try:
            return self.kube.wait("the hub pod Ready", ready, self.ns, timeout)
        except BaseException:
            pod = self.hub_pod()
            if pod:
                print(self.kube.run("logs", "-n", self.ns, pod["metadata"]["name"], "--tail=80").stdout)
            raise

    def url(self) -> str:
        """The public Service's address, once it answers (kube-proxy follows a new pod's endpoint
        a moment after the pod is Ready)."""
        svc = self.kube.get("service", f"{self.name}-proxy", self.ns)
        url = f"http://{svc['spec']['clusterIP']}:{svc['spec']['ports'][0]['port']}"
        r = get(f"{url}/hub/api")
        if r.status_code != 200:
            raise ChartError(f"the release does not answer at {url}/hub/api: {r.status_code} {r.text[:300]}")
        return url

    def exec_hub(self, *cmd: str) -> str:
        return self.kube("exec", "-n", self.ns, f"deploy/{self.name}-hub", "-c", "hub", "--", *cmd)

    def secret_data(self) -> dict:
        return self.kube.get("secret", f"{self.name}-secrets", self.ns)["data"]

    def cleanup(self) -> None:
        # the project namespaces the hub made, then the release's
        self.kube.run("delete", "namespace", "-l", f"vre.instance={self.instance}", "--wait=false")
        self.kube.run("delete", "namespace", self.ns, "--wait=true", timeout=180)
        self.kube.run("delete", "persistentvolume", self.storage_class, "--wait=false")
        shutil.rmtree(self.state_dir, ignore_errors=True)
        shutil.rmtree(self.observer_dir, ignore_errors=True)


def get(url: str, timeout: float = 60) -> requests.Response:
    """GET through the Service, retried while the Service's endpoints settle after a start."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            r = requests.get(url, timeout=5)
            if r.status_code < 500 or time.monotonic() > deadline:
                return r
        except requests.ConnectionError:
            if time.monotonic() > deadline:
                raise
        time.sleep(1)
