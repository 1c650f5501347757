"""Fixtures of the Kubernetes tests: a real single-node cluster on this machine (scripts/k8s-cluster).

``cluster`` runs ``scripts/k8s-cluster up`` once per test session (the binaries come from the
cache that ``scripts/test`` fills with ``scripts/k8s-build``) and ``scripts/k8s-cluster down``
right after the last test of tests/k8s, so the rest of the suite runs on a clean host; a second test
session on this machine waits for the first one's cluster to go down (a lock). On a machine
that should run it (Linux, root) a cluster that cannot start FAILS the tests with the reason (the
end of ``up``'s output); they skip only when not root or not on Linux.

The cluster itself (its lock, ``up``, ``down``, :class:`Kube`) is ``testcluster.py``, shared with
bench/spawn.py. ``kube`` (a :class:`Kube`) runs the machine's kubectl with the cluster's admin kubeconfig;
``ns`` makes a fresh namespace per test. Every pod runs ``kube.image``, the busybox image that
``up`` builds locally and imports into containerd (nothing is pulled: imagePullPolicy Never).
Waits poll with a deadline and fail with ``kubectl describe`` and the namespace's events.
"""

from __future__ import annotations

import secrets
from pathlib import Path

import pytest

from testcluster import KUBECONFIG, ClusterError, Kube, busybox, down, unsupported, up

K8S_DIR = Path(__file__).resolve().parent


@pytest.fixture(scope="session")
def cluster() -> str:
    """The running cluster's admin kubeconfig (``up`` at first use, ``down`` after tests/k8s)."""
    reason = unsupported()
    if reason:
        pytest.skip(reason)
    try:
        up()
    except ClusterError as e:
        pytest.fail(str(e), pytrace=False)
    yield KUBECONFIG
    down()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_teardown(item, nextitem):
    """Stop the cluster as soon as the last test of tests/k8s is done (after its fixtures' teardown),
    not at the end of the session."""
    yield
    if nextitem is None or K8S_DIR not in Path(str(nextitem.path)).parents:
        down()


@pytest.fixture(scope="session")
def kube(cluster) -> Kube:
    return Kube(busybox())


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
