"""A real hub (``vre up``) on ``backend = "kubernetes"`` against the test cluster.

The hub starts without the service that observes its own machine (hostview), and a session request goes all
the way through JupyterHub and the KubernetesSpawner into the cluster: the project's namespace,
policies and quota appear, the pod is created from the allowed image and, since the test image
(busybox) has no Python to run the session's server, the start fails with the server's exit code
and the pod and its Secret are removed. (A session that serves JupyterLab needs the notebook image
in the cluster and a hub pod its policies let in: the chart's part.)
"""

from __future__ import annotations

import json
import re
import socket

import pytest

pytestmark = [pytest.mark.k8s, pytest.mark.timeout(900)]

NODE_IP = "10.245.0.1"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def k8s_hub(kube, make_hub):
    spawner = {"hub_address": NODE_IP, "image_pull_policy": "Never", "start_timeout": 60}
    return make_hub("k8s", VRE_BACKEND="kubernetes", VRE_K8S_HUB_PORT=str(_free_port()),
                    VRE_K8S_SERVICE_PORT=str(_free_port()),
                    VRE_K8S_KUBECONFIG=kube.env["KUBECONFIG"], VRE_NOTEBOOK_IMAGE=kube.image,
                    VRE_K8S_UNOBSERVED_READS="true",  # the demo projects have datasets
                    VRE_JUPYTERHUB=json.dumps({"KubernetesSpawner": spawner}))


def test_hub_runs_without_hostview(k8s_hub):
    assert k8s_hub.client("alice").api("GET", "/").status_code == 200
    log = k8s_hub.log_path.read_text()
    created = set(re.findall(r"Creating service (\S+)", log))
    assert created == {"vre-audit-sealer", "vre", "vre-access", "vre-jobs"}, created   # no hostview
    assert "Starting managed service vre-audit-sealer" in log and "vre-hostview" not in log
    assert "k8s_unobserved_reads = true" in log  # the opt-in is said where the operator looks


def test_session_request_reaches_the_cluster_and_fails_cleanly(k8s_hub, kube):
    alice = k8s_hub.client("alice")
    ns = f"{k8s_hub.instance}-lung-screening"
    r = alice.api("POST", "/users/alice/servers/lung-screening", json={"profile": "small"})
    # a start that fails this fast is answered at once (500); a slower one in the progress events
    assert r.status_code in (201, 202, 500), r.text
    kube.wait("the start to fail", lambda: alice.server_state("lung-screening") is None, ns, 120, "pods")
    reason = "the session's server exited during start (code 127)"      # sh: python: not found
    assert reason in k8s_hub.log_path.read_text(), k8s_hub.log_tail()
    nsobj = kube.get("namespace", ns)
    assert nsobj["metadata"]["labels"]["vre.project"] == "lung-screening"
    policies = kube("get", "networkpolicy", "-n", ns, "-o", "name").split()
    assert sorted(policies) == sorted(f"networkpolicy.networking.k8s.io/{p}" for p in
                                      ("default-deny", "project-internal", "hub-to-sessions", "hub-to-agent",
                                       "hub-to-readers", "sessions-to-hub"))
    hard = kube.get("resourcequota", "project", ns)["spec"]["hard"]
    assert hard["limits.cpu"] and hard["pods"]
    kube.wait("the failed pod and its Secret removed",
              lambda: not kube("get", "pods,secrets", "-n", ns, "-l", "vre.role=session", "-o", "name").split(), ns, 60)
    assert "alice-lung-screening" in k8s_hub.log_path.read_text()
