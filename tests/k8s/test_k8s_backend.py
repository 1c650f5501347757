"""The kubernetes backend's rendered objects on the real test cluster (scripts/k8s-cluster).

Two projects, each rendered by ``vre.backends.kubernetes`` exactly as the spawner renders them
(namespace, NetworkPolicies, ResourceQuota, the session's Secret and pod), with the local busybox
image on the test's allow-list and datasets as hostPath directories this test creates. Proved from
inside the pods: datasets read-only (EROFS), the plan's uid/gid, no capabilities, seccomp on, a
read-only root; a session reaches its project's other session and the hub's API port, and nothing
else: not the other project, not another port of the hub, not a listener on the node's address,
not DNS. Every "unreachable" has a control that reaches the same live listener from where the
policy allows it, so a dead listener cannot pass for isolation. Traffic goes only to this test's
pods and to a listener it starts on the node's own address (10.245.0.1, on this machine).
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import tempfile
import threading
import time
from pathlib import Path

import pytest

from vre.backends.kubernetes import (HUB_POD_LABELS, SESSION_PORT, KubernetesBackendError, KubernetesSpawner,
                                     ProjectQuota, identity_files, project_objects, run_secret, session_pod)
from vre.plan import Mount, SessionPlan, runtime_mounts
from vre.settings import Settings

pytestmark = [pytest.mark.k8s, pytest.mark.timeout(900)]

NODE_IP = "10.245.0.1"
HUB_PORT = 8081
SERVICE_PORT = 8082     # the VRE service's session port on the hub's pod
OTHER_HUB_PORT = 9090
QUOTA = ProjectQuota(cpu=1.0, mem_mb=512, gpus=0, pods=4)


def _plan(settings, root: Path, user: str, project: str, uid: int, gid: int) -> SessionPlan:
    data, home, ws = root / project / "data", root / project / "homes" / user, root / project / "workspace"
    for d, owner, mode in ((home, uid, 0o700), (ws, 0, 0o2770)):  # as host.prepare_home_and_workspace
        d.mkdir(parents=True, exist_ok=True)
        os.chown(d, owner, gid)
        os.chmod(d, mode)
    data.mkdir(parents=True, exist_ok=True)
    (data / "scan.dcm").write_text(f"{project} scan\n")
    run = settings.sessions_run_dir / f"{user}-{project}"
    return SessionPlan(
        user=user, project=project, profile="tiny", role="session", session_id=f"{user}-{project}", uid=uid, gid=gid,
        cpu=0.1, mem_mb=64, gpus=0, network=f"{settings.instance}-{project}", datasets=("ct",),
        mounts=(Mount(data, "/data/ct", True), Mount(home, "/home/jovyan", False, "home"),
                Mount(ws, "/home/jovyan/project", False, "workspace"),
                *runtime_mounts("session", run, root / "hub")),
        env={"OMP_NUM_THREADS": "1", "VRE_PROJECT": project, "HOME": "/home/jovyan"},
        labels={"vre.user": user, "vre.project": project, "vre.session": f"{user}-{project}", "vre.role": "session"},
        run_dir=run)


class NodeListener:
    """A TCP listener on the node's own address (10.245.0.1, on this machine), answering a token."""

    def __init__(self, token: str):
        self.token = f"pong-{token}".encode()
        self.sock = socket.socket()
        self.sock.bind((NODE_IP, 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                conn.settimeout(2)
                try:
                    conn.recv(1024)
                    conn.sendall(b"HTTP/1.0 200 OK\r\n\r\n" + self.token + b"\n")
                except OSError:
                    pass

    def alive(self) -> bool:
        with socket.create_connection((NODE_IP, self.port), timeout=2) as s:
            s.sendall(b"GET / HTTP/1.0\r\n\r\n")
            return self.token in s.recv(1024)

    def close(self):
        self.sock.close()


class World:
    """Two projects' sessions, a hub pod in the hub namespace and a pod without any policy."""

    def __init__(self, kube, new_ns):
        self.kube = kube
        self.token = secrets.token_hex(6)
        self.root = Path(tempfile.mkdtemp(prefix="vre-k8s-backend-"))
        os.chmod(self.root, 0o755)
        self.hub_ns = new_ns("hub")
        self.free_ns = new_ns("free")  # no policy at all: the controls
        self.settings = Settings(instance=f"vt{secrets.token_hex(3)}", backend="kubernetes", run_dir=self.root / "run",
                                 k8s_hub_namespace=self.hub_ns, k8s_hub_port=HUB_PORT, k8s_service_port=SERVICE_PORT,
                                 notebook_image=kube.image, k8s_image_allowlist=kube.image)
        s = self.settings
        self.ann = _plan(s, self.root, "ann", "alpha", 200001, 300001)
        self.bob = _plan(s, self.root, "bob", "alpha", 200002, 300001)
        self.cid = _plan(s, self.root, "cid", "beta", 200003, 300002)
        self.namespaces = [self.ann.network, self.cid.network]
        self.node = NodeListener(self.token)
        serve = (f"mkdir -p /tmp/www && echo pong-{self.token} >/tmp/www/index.html && "
                 f"exec httpd -f -p {SESSION_PORT} -h /tmp/www")
        for plan in (self.ann, self.cid):
            kube.apply(*project_objects(s, plan, QUOTA))
        for plan in (self.ann, self.bob, self.cid):
            kube.apply(run_secret(s, plan, identity_files(plan), {"VRE_AUDIT_TOKEN": "t"}),
                       session_pod(s, plan, image=kube.image, env={**plan.env, "VRE_AUDIT_TOKEN": "t"},
                                   command=["sh", "-c", serve], pull_policy="Never"))
        hub_serve = (f"mkdir -p /tmp/www && echo pong-{self.token} >/tmp/www/index.html && "
                     f"httpd -p {OTHER_HUB_PORT} -h /tmp/www && httpd -p {SERVICE_PORT} -h /tmp/www && "
                     f"exec httpd -f -p {HUB_PORT} -h /tmp/www")
        kube.apply(kube.pod(self.hub_ns, "hub", ["sh", "-c", hub_serve], labels=dict(HUB_POD_LABELS)),
                   kube.pod(self.hub_ns, "stranger", ["sleep", "3600"], labels={"vre.component": "other"}),
                   kube.pod(self.free_ns, "control", ["sleep", "3600"]))
        self.ip = {}
        for ns, pod in ((self.ann.network, "ann-alpha"), (self.ann.network, "bob-alpha"),
                        (self.cid.network, "cid-beta"), (self.hub_ns, "hub")):
            self.ip[pod] = kube.wait_ready(ns, pod)["status"]["podIP"]
        kube.wait_ready(self.hub_ns, "stranger")
        kube.wait_ready(self.free_ns, "control")

    def reaches(self, ns: str, pod: str, ip: str, port: int) -> bool:
        return f"pong-{self.token}" in self.kube.http_get(ns, pod, ip, port, timeout=2)

    def expect(self, want: bool, what: str, ns: str, pod: str, ip: str, port: int, timeout: float = 45):
        """Wait until reachability is ``want`` (policies apply asynchronously), then see it hold."""
        deadline = time.monotonic() + timeout
        while self.reaches(ns, pod, ip, port) != want:
            if time.monotonic() > deadline:
                pols = self.kube.run("get", "networkpolicy", "-A", "-o", "yaml").stdout
                pytest.fail(f"{what}: {ip}:{port} still {'un' if want else ''}reachable from {ns}/{pod} after "
                            f"{timeout:.0f} s\n--- policies:\n{pols[-4000:]}")
            time.sleep(1)
        for _ in range(2):
            assert self.reaches(ns, pod, ip, port) == want, f"{what}: reachability flapped"

    def cleanup(self):
        self.node.close()
        for ns in self.namespaces:
            self.kube.run("delete", "namespace", ns, "--wait=false")
        shutil.rmtree(self.root, ignore_errors=True)


@pytest.fixture(scope="module")
def world(kube, request):
    made = []

    def new_ns(prefix):  # module-scoped namespaces (the ns fixtures are per test)
        name = f"{prefix}-{secrets.token_hex(3)}"
        kube("create", "namespace", name)
        kube.wait(f"the default service account in {name}",
                  lambda: kube.run("get", "serviceaccount", "default", "-n", name).returncode == 0, name, 30)
        made.append(name)
        return name

    w = World(kube, new_ns)
    yield w
    w.cleanup()
    for name in made:
        kube.run("delete", "namespace", name, "--wait=false")


def _sh(world, plan, script):
    return world.kube.exec(plan.network, plan.session_id, "sh", "-c", script)


def test_session_runs_as_the_plan_without_privileges(world):
    for plan in (world.ann, world.cid):
        out = _sh(world, plan, "id -u; id -g; grep -E '^(CapInh|CapPrm|CapEff|CapBnd|CapAmb|NoNewPrivs|Seccomp):' "
                               "/proc/self/status")
        assert out.returncode == 0, out.stderr
        lines = out.stdout.split("\n")
        assert lines[:2] == [str(plan.uid), str(plan.gid)], out.stdout     # not root: the plan's uid and gid
        status = dict(line.split(":\t") for line in lines[2:] if line)
        for cap in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"):
            assert int(status[cap], 16) == 0, (cap, status)
        assert status["NoNewPrivs"] == "1" and status["Seccomp"] == "2", status  # 2: a seccomp filter
        # /etc/passwd comes from the session's Secret: jovyan is the plan's uid
        assert f"jovyan:x:{plan.uid}:{plan.gid}" in _sh(world, plan, "cat /etc/passwd").stdout
        # the session's credential is in its environment, from the Secret
        assert _sh(world, plan, "echo $VRE_AUDIT_TOKEN").stdout.strip() == "t"


def test_datasets_are_read_only_the_root_too_home_and_workspace_writable(world):
    plan = world.ann
    assert _sh(world, plan, "cat /data/ct/scan.dcm").stdout == "alpha scan\n"
    for path in ("/data/ct/new", "/data/ct/scan.dcm", "/etc/evil", "/bin/evil"):
        out = _sh(world, plan, f"echo x > {path}")
        assert out.returncode != 0 and "Read-only file system" in out.stderr, (path, out.stdout, out.stderr)
    # the control: the same shell writes where the plan allows it, as the plan's uid
    out = _sh(world, plan, "echo x > /home/jovyan/f && echo y > /home/jovyan/project/g && echo z > /tmp/h && "
                           "stat -c '%u:%g' /home/jovyan/f")
    assert out.returncode == 0 and out.stdout.strip() == f"{plan.uid}:{plan.gid}", out.stderr
    assert (world.root / "alpha" / "workspace" / "g").read_text() == "y\n"   # the hostPath on the node
    # seccomp RuntimeDefault without CAP_SYS_ADMIN: no user namespaces (no mount of one's own)
    if _sh(world, plan, "command -v unshare").returncode == 0:
        out = _sh(world, plan, "unshare -U -r id -u")
        assert out.returncode != 0, out.stdout


def test_project_island(world):
    ann, hub_ip = world.ann, world.ip["hub"]
    a, b = (ann.network, "ann-alpha"), (world.cid.network, "cid-beta")
    # inside the project: ann reaches bob's session
    world.expect(True, "ann -> bob (same project)", *a, world.ip["bob-alpha"], SESSION_PORT)
    # the hub's API port, and no other port of the hub's pod
    world.expect(True, "ann -> hub API port", *a, hub_ip, HUB_PORT)
    world.expect(True, "ann -> the VRE service's session port", *a, hub_ip, SERVICE_PORT)
    world.expect(False, "ann -> another port of the hub", *a, hub_ip, OTHER_HUB_PORT)
    # the other project's session: unreachable from ann, reachable from the hub pod (the control)
    world.expect(False, "ann (alpha) -> cid (beta)", *a, world.ip["cid-beta"], SESSION_PORT)
    world.expect(True, "hub -> cid's session port", world.hub_ns, "hub", world.ip["cid-beta"], SESSION_PORT)
    world.expect(False, "an unlabelled pod of the hub namespace -> cid", world.hub_ns, "stranger",
                 world.ip["cid-beta"], SESSION_PORT)
    world.expect(False, "cid (beta) -> ann (alpha)", *b, world.ip["ann-alpha"], SESSION_PORT)
    # the node's address: a listener this test runs there, alive and reachable from a pod without policy
    assert world.node.alive()
    world.expect(True, "policy-free control pod -> node listener", world.free_ns, "control", NODE_IP, world.node.port)
    world.expect(False, "ann -> node listener", *a, NODE_IP, world.node.port)
    assert world.node.alive()
    # no DNS (CoreDNS answers on the node's address): names do not resolve in a session
    out = world.kube.exec(ann.network, "ann-alpha", "sh", "-c", "timeout 8 nslookup kubernetes.default.svc.cluster.local")
    assert out.returncode != 0 and "10.96.0.1" not in out.stdout, out.stdout
    assert world.kube.exec(world.free_ns, "control", "nslookup", "kubernetes.default.svc.cluster.local").returncode == 0


def test_resource_quota_is_present_and_enforced(world):
    kube, ns = world.kube, world.ann.network
    kube.wait("the quota's usage", lambda: kube.get("resourcequota", "project", ns).get("status", {}).get("used", {})
              .get("pods") == "2", ns, 30, "resourcequota", "project")
    status = kube.get("resourcequota", "project", ns)["status"]
    assert status["hard"]["pods"] == "4" and status["hard"]["limits.cpu"] == "1" and status["hard"]["limits.memory"] == "512Mi"
    assert status["used"]["requests.cpu"] == "200m" and status["used"]["limits.memory"] == "128Mi", status
    big = kube.pod(ns, "big", ["sleep", "60"], container={"resources": {"requests": {"cpu": "900m", "memory": "32Mi"},
                                                                        "limits": {"cpu": "900m", "memory": "32Mi"}}})
    proc = kube.create(big)
    assert proc.returncode != 0 and "exceeded quota" in proc.stderr and "cpu" in proc.stderr, proc.stderr
    # without requests and limits a pod is refused too (the quota constrains every pod)
    proc = kube.create(kube.pod(ns, "bare", ["sleep", "60"]))
    assert proc.returncode != 0 and "must specify" in proc.stderr, proc.stderr
    # the control: a pod that fits is admitted
    fits = kube.pod(ns, "fits", ["sleep", "60"], container={"resources": {"requests": {"cpu": "100m", "memory": "32Mi"},
                                                                          "limits": {"cpu": "100m", "memory": "32Mi"}}})
    assert kube.create(fits).returncode == 0
    kube.run("delete", "pod", "fits", "-n", ns, "--wait=false")


def test_images_off_the_allow_list_never_render(world):
    with pytest.raises(KubernetesBackendError, match="allow-list"):
        session_pod(world.settings, world.ann, image="vre.local/pause:3.10.2", env={}, command=["true"])


def _spawner(world, plan, **kw) -> KubernetesSpawner:
    """KubernetesSpawner against the test cluster; the parts a running JupyterHub would give
    (its environment with the API token, the project's row) are the test's."""
    # the plans have datasets: accept that no observer outside the pod records their reads
    settings = world.settings.replace(**{"k8s_kubeconfig": world.kube.env["KUBECONFIG"], "k8s_unobserved_reads": True,
                                         **kw.pop("settings", {})})
    sp = KubernetesSpawner(settings=settings, image_pull_policy="Never", hub_address=NODE_IP, start_timeout=90, **kw)
    sp._environment = lambda plan: {**plan.env, "JUPYTERHUB_API_TOKEN": "hub-token-" + world.token, "VRE_AUDIT_TOKEN": "t"}
    sp._project_quota = lambda plan: QUOTA
    sp._server_command = lambda plan: ["sh", "-c", f"mkdir -p /tmp/www && echo pong-{world.token} >/tmp/www/index.html "
                                                   f"&& exec httpd -f -p {SESSION_PORT} -h /tmp/www"]
    sp.session_id, sp.island = plan.session_id, plan.network
    return sp


async def test_spawner_starts_polls_and_stops_a_session_pod(world):
    kube, plan = world.kube, _plan(world.settings, world.root, "dan", "alpha", 200004, 300001)
    sp = _spawner(world, plan)
    await sp._start(plan)            # prepare, access table, project objects, Secret, pod, wait until Ready
    assert sp.pod_namespace == plan.network and sp.pod_name == "dan-alpha" and sp.node_name
    pod = kube.get("pod", "dan-alpha", plan.network)
    assert sp._socket_url() == f"http://{pod['status']['podIP']}:{SESSION_PORT}"
    assert sp.hub_connect_url == f"http://{NODE_IP}:{world.settings.k8s_hub_port}"
    assert "hub-token-" not in json.dumps(pod)           # credentials only in the Secret
    assert await sp._is_running() is True
    # the hub's pod reaches the new session's port; the other project's session does not
    world.expect(True, "hub -> dan's session", world.hub_ns, "hub", pod["status"]["podIP"], SESSION_PORT)
    world.expect(False, "cid (beta) -> dan", world.cid.network, "cid-beta", pod["status"]["podIP"], SESSION_PORT)
    # a restarted hub re-attaches from the stored state
    again = _spawner(world, plan)
    again.load_state(sp.get_state())
    assert again._launched() and await again._is_running() is True and again._socket_url() == sp._socket_url()
    await again._teardown(0)
    assert not again._launched() and await sp._is_running() is False   # deleted (or terminating)
    kube.wait("dan's pod and Secret gone", lambda: kube.run("get", "pod", "dan-alpha", "-n", plan.network).returncode != 0
              and kube.run("get", "secret", "dan-alpha-run", "-n", plan.network).returncode != 0, plan.network, 60)


async def test_spawner_fails_fast_when_the_pod_cannot_start(world):
    plan = _plan(world.settings, world.root, "eve", "alpha", 200005, 300001)
    missing = "vre.local/missing:1"  # allowed, but not in the node's image store (and never pulled)
    sp = _spawner(world, plan, settings={"k8s_image_allowlist": f"{world.kube.image},{missing}"}, image=missing)
    with pytest.raises(KubernetesBackendError, match="ErrImageNeverPull"):
        await sp._start(plan)
    await sp._teardown(0)
    world.kube.wait("eve's pod gone", lambda: world.kube.run("get", "pod", "eve-alpha", "-n", plan.network).returncode != 0,
                    plan.network, 60)


async def test_a_pod_with_datasets_no_observer_opens_fails_with_the_reason(world):
    """With the observer of dataset reads on (k8s_read_observer) but none on this cluster's node
    for the world's instance, the pod waits at its gate, gives up, and the start fails saying why;
    its command never ran."""
    plan = _plan(world.settings, world.root, "fay", "alpha", 200006, 300001)
    sp = _spawner(world, plan, settings={"k8s_read_observer": True, "k8s_unobserved_reads": False,
                                         "k8s_gate_seconds": 5})
    with pytest.raises(KubernetesBackendError, match="dataset reads cannot be recorded: no observer marked"):
        await sp._start(plan)
    pod = world.kube.get("pod", "fay-alpha", plan.network)
    assert pod["metadata"]["labels"]["vre.reads"] == "observed"
    (state,) = [c["state"] for c in pod["status"]["containerStatuses"]]
    assert state["terminated"]["exitCode"] == 70, state
    log = world.kube.run("logs", "fay-alpha", "-n", plan.network).stdout
    assert "vre-gate: dataset reads cannot be recorded" in log, log
    await sp._teardown(0)
    world.kube.wait("fay's pod gone", lambda: world.kube.run("get", "pod", "fay-alpha", "-n", plan.network).returncode != 0,
                    plan.network, 60)


async def test_vre_down_removes_every_session_pod_of_the_instance(world):
    """Last in this module: it removes the world's session pods too."""
    import asyncio

    from vre.backends.kubernetes import remove_instance_sessions

    kube = world.kube
    settings = world.settings.replace(k8s_kubeconfig=kube.env["KUBECONFIG"])
    selector = f"vre.instance={settings.instance}"
    pods = lambda: kube("get", "pods", "-A", "-l", selector, "-o", "name").split()  # noqa: E731
    assert len(pods()) == 3                       # ann, bob (alpha), cid (beta)
    assert await asyncio.to_thread(remove_instance_sessions, settings) == 3
    kube.wait("the instance's pods gone", lambda: not pods(), world.ann.network, 60)
    assert not kube("get", "secrets", "-A", "-l", selector, "-o", "name").split()
    # the hub namespace's pods belong to no instance: untouched
    assert kube.pod_phase(world.hub_ns, "hub") == "Running"
    # project namespaces stay (they hold the projects' claims)
    assert kube.run("get", "namespace", world.ann.network).returncode == 0
