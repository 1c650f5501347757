"""The Helm chart on the real test cluster: install from the locally built hub image, the hub pod
gets Ready and answers through its Service, a demo account logs in, the admission policies refuse
what they must (with controls that pass), an upgrade keeps the generated secrets and the state
volume's data, and an uninstall leaves the state volume and the secrets.

The hub image is built with ``vre images build --only hub`` (cached by its inputs), tagged by its
image id (other checkouts on this machine move ``:latest``) and imported into the cluster's
containerd; nothing is pulled (pullPolicy Never). The state volume is a hostPath PersistentVolume
in a directory made for the test (the single-node cluster has no volume provisioner).
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import secrets
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import pytest
import requests

from chart import CHART, HELM, Release, cluster_image, get  # tests/k8s, beside this file
from testcluster import kueue
from flood import check_pauses, flood_while_held  # tests/ is on sys.path (tests/conftest.py)
from hubclient import HubClient
from vre.backends.kubernetes import READER_PORT
from vre.demo import synth

pytestmark = [pytest.mark.k8s, pytest.mark.timeout(1500)]


@pytest.fixture(scope="module")
def hub_image(kube) -> str:
    return cluster_image("hub")


@pytest.fixture(scope="module")
def notebook_image(kube) -> str:
    return cluster_image("notebook")


@pytest.fixture
def release(kube, new_ns, hub_image):
    rel = Release(kube, new_ns("helm"), hub_image)
    yield rel
    subprocess.run([str(HELM), "uninstall", rel.name, "--namespace", rel.ns], capture_output=True,
                   env=kube.env, timeout=180)
    rel.cleanup()


def _login(url: str, user: str, password: str) -> bool:
    c = HubClient(url, user)
    c.login(password)
    return c.logged_in()


def _expect(kube, ns: str, pod: str, ip: str, port: int, want: bool, what: str, timeout: float = 45) -> None:
    """Wait until pod ``ns/pod`` reaches ``ip:port`` (an HTTP answer) or not, as ``want``
    says, then see it hold for three more probes."""
    seen = []

    def reached() -> bool:
        # stdin stays open for the answer: on EOF busybox nc half-closes, and the access layer
        # (aiohttp) takes that for a client gone and drops the request unanswered
        cmd = f"(printf 'GET / HTTP/1.0\\r\\n\\r\\n'; sleep 2) | timeout 5 nc -w 3 {ip} {port}"
        seen.append(kube.exec(ns, pod, "sh", "-c", cmd, timeout=30).stdout)
        return "HTTP/1." in seen[-1]

    deadline = time.monotonic() + timeout
    while reached() != want:
        if time.monotonic() > deadline:
            pytest.fail(f"{what}: {ip}:{port} still {'un' if want else ''}reachable from {ns} after {timeout:.0f} s")
        time.sleep(1)
    for _ in range(3):
        assert reached() == want, f"{what}: reachability flapped: {[out[:300] for out in seen]}"


READ_LAST = """
import glob
files = sorted(glob.glob("/data/{mine}/**/*.dcm", recursive=True))
open(files[-1], "rb").read(132)
print(files[-1])
"""


def _restart_the_observer(kube, rel) -> None:
    """Delete the node's observer pod and wait until its successor has marked the live pods
    again from its registry on the node (it records the gap once it has)."""
    selector = "app.kubernetes.io/component=observer"
    old = json.loads(kube("get", "pods", "-n", rel.ns, "-l", selector, "-o", "json"))["items"]
    kube("delete", "pod", "-n", rel.ns, "-l", selector, "--wait=true", timeout=120)

    def successor():
        pods = json.loads(kube("get", "pods", "-n", rel.ns, "-l", selector, "-o", "json"))["items"]
        return [p for p in pods if p["metadata"]["uid"] not in {o["metadata"]["uid"] for o in old}
                and p["status"].get("phase") == "Running"]
    wait_until(successor, 90, "a new observer pod")
    # it marks the live pods again first, then records the gap: after that, reads are recorded
    wait_until(lambda: json.loads(rel.exec_hub("vre", "audit", "query", "--json", "--action", "audit.gap")),
               60, "the observer's gap record")


#: Run in the observer's pod: posts a well-formed read record with each token given (its own, read
#: from the kubelet's projected file, with another node's name) and prints the hub's answers.
FORGE_AS_OBSERVER = r"""
import json, os, sys, urllib.error, urllib.request
url = os.environ["VRE_OBSERVER_HUB_URL"] + "/services/vre/api/audit/host-events"
own = open(os.environ["VRE_OBSERVER_TOKEN_FILE"]).read().strip()
event = {"action": "dataset.read", "actor": "mallory", "actor_role": "researcher", "dataset": "x", "target": "/data/x/1"}
answers = []
for token, node in [(own, "another-node"), *[(t, os.environ["NODE_NAME"]) for t in sys.argv[1:]]]:
    req = urllib.request.Request(url, data=json.dumps({"node": node, "events": [event]}).encode(), method="POST",
                                 headers={"Authorization": "vre-observer " + token, "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            answers.append([r.status, r.read().decode()])
    except urllib.error.HTTPError as e:
        answers.append([e.code, e.read().decode()])
print(json.dumps(answers))
"""


def _only_an_observers_own_pod_speaks_for_its_node(kube, rel) -> None:
    """The observers' route takes a token only as the kubelet bound it to an observer's pod, and
    only for that pod's node: its own token with another node's name, a token of the observers'
    account bound to no pod, and another account's token (each for the right audience) are
    refused, and none of their records is stored."""
    (observer,) = json.loads(kube("get", "pods", "-n", rel.ns, "-l", "app.kubernetes.io/component=observer",
                                  "-o", "json"))["items"]
    unbound = kube("create", "token", f"{rel.name}-observer", "-n", rel.ns, "--audience", "vre-observer").strip()
    other = kube("create", "token", "default", "-n", rel.ns, "--audience", "vre-observer").strip()
    out = kube("exec", "-n", rel.ns, observer["metadata"]["name"], "-c", "observer", "--",
               "python3", "-c", FORGE_AS_OBSERVER, unbound, other, timeout=120)
    answers = json.loads(out.strip().splitlines()[-1])
    assert [a[0] for a in answers] == [403, 403, 403], answers
    for (_, message), why in zip(answers, ("not 'another-node'", "bound to no pod", "not the observers'")):
        assert why in message, (why, message)
    forged = json.loads(rel.exec_hub("vre", "audit", "query", "--json", "--action", "dataset.read", "--user", "mallory"))
    assert forged == []


def _observer_pid(rel) -> int:
    """Host pid of the release's observer (the test cluster's node is this machine)."""
    for entry in Path("/proc").iterdir():
        try:
            if (entry.name.isdigit() and b"vre.hostview.node" in (entry / "cmdline").read_bytes()
                    and f"VRE_INSTANCE={rel.instance}".encode() in (entry / "environ").read_bytes().split(b"\0")):
                return int(entry.name)
        except OSError:
            continue
    pytest.fail(f"no observer of {rel.instance} runs on this node")


def wait_until(probe, timeout: float, what: str):
    """``probe()``'s first truthy answer within ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not (answer := probe()):
        if time.monotonic() > deadline:
            pytest.fail(f"{what}: not there after {timeout:.0f} s")
        time.sleep(1)
    return answer


def test_install_login_policies_upgrade_uninstall(kube, release, new_ns):
    t0 = time.monotonic()
    release.helm("install", release.name, str(CHART), *release.args)
    pod = release.wait_hub_ready()
    ready_s = time.monotonic() - t0
    print(f"helm install to hub Ready: {ready_s:.1f} s")

    # the pod runs what the chart says: root without capabilities beyond the six, no escalation
    status = dict(line.split(":\t", 1) for line in release.exec_hub("cat", "/proc/1/status").splitlines() if ":\t" in line)
    assert int(status["NoNewPrivs"]) == 1 and status["Seccomp"].strip() == "2", status
    caps = int(status["CapBnd"], 16)
    # CHOWN DAC_OVERRIDE FOWNER KILL SETGID SETUID
    assert caps == (1 << 0) | (1 << 1) | (1 << 3) | (1 << 5) | (1 << 6) | (1 << 7), hex(caps)
    assert release.exec_hub("sh", "-c", "touch /opt/x 2>&1 || true").strip().endswith("Read-only file system")

    # the hub answers through its Service (kube-proxy on this host), as a browser sees it
    url = release.url()
    r = get(f"{url}/hub/api")
    assert r.status_code == 200 and "version" in r.json(), r.text
    r = get(f"{url}/hub/login")
    assert r.status_code == 200 and 'name="password"' in r.text, r.text[:500]

    # the demo's accounts: their passwords are in the hub's state volume, readable through exec
    creds = {line.split("\t")[0]: line.split("\t")[2]
             for line in release.exec_hub("cat", "/var/lib/vre/secrets/demo-credentials.txt").splitlines()}
    assert set(creds) == {"alice", "bob", "admin", "auditor"}
    assert _login(url, "alice", creds["alice"])
    assert not _login(url, "bob", creds["alice"])  # control: a wrong password is refused

    # the image allow-list, enforced by the API server in this instance's project namespaces
    project_ns = f"{release.instance}-p{secrets.token_hex(2)}"
    kube.apply({"apiVersion": "v1", "kind": "Namespace",
                "metadata": {"name": project_ns, "labels": {"vre.instance": release.instance}}})
    try:
        kube.wait("the default service account", lambda: kube.run(
            "get", "serviceaccount", "default", "-n", project_ns).returncode == 0, project_ns, 30)
        allowed = kube.create(kube.pod(project_ns, "allowed", ["sleep", "1"]))
        assert allowed.returncode == 0, allowed.stderr
        other = kube.pod(project_ns, "other", ["sleep", "1"])
        other["spec"]["containers"][0]["image"] = "vre.local/pause:3.10.2"  # in containerd, not allow-listed
        refused = kube.create(other)
        assert refused.returncode != 0 and "vre.local/pause:3.10.2" in refused.stderr \
            and "allow-list" in refused.stderr, refused.stderr
        init = kube.pod(project_ns, "init", ["sleep", "1"])
        init["spec"]["initContainers"] = [{**other["spec"]["containers"][0], "name": "init"}]
        assert kube.create(init).returncode != 0  # init containers are checked too
        # the hub's own identity may act only in labelled namespaces
        hub_sa = f"system:serviceaccount:{release.ns}:{release.name}-hub"
        as_hub = kube.pod(project_ns, "as-hub", ["sleep", "1"])
        assert kube.run("create", "--as", hub_sa, "-f", "-", input=json.dumps(as_hub)).returncode == 0
        as_hub["metadata"]["namespace"] = release.ns  # not a project namespace
        proc = kube.run("create", "--as", hub_sa, "-f", "-", input=json.dumps(as_hub))
        assert proc.returncode != 0 and "may act only in its project namespaces" in proc.stderr, proc.stderr
        unlabelled = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": f"x-{project_ns}"}}
        proc = kube.run("create", "--as", hub_sa, "-f", "-", input=json.dumps(unlabelled))
        assert proc.returncode != 0 and "may create only namespaces labelled" in proc.stderr, proc.stderr
        proc = kube.run("label", "--as", hub_sa, "namespace", release.ns, f"vre.instance={release.instance}")
        assert proc.returncode != 0 and "change only those" in proc.stderr, proc.stderr
        proc = kube.run("get", "secrets", "-n", project_ns, "--as", hub_sa)
        assert proc.returncode != 0 and "forbidden" in proc.stderr.lower(), proc.stderr  # RBAC: no secrets

        # the hub pod's NetworkPolicy: its API and VRE service ports answer session pods of
        # project namespaces only, its public port anyone (the access layer authenticates)
        outsider_ns = new_ns("out")
        session = {"vre.role": "session"}
        kube.run_pod(project_ns, "client", ["sleep", "3600"], labels=session)
        kube.run_pod(project_ns, "other", ["sleep", "3600"], labels={"app": "other"})  # no session
        kube.run_pod(outsider_ns, "client", ["sleep", "3600"], labels=session)  # a session's label, elsewhere
        api = kube.get("service", f"{release.name}-hub", release.ns)["spec"]["clusterIP"]
        public = kube.get("service", f"{release.name}-proxy", release.ns)["spec"]["clusterIP"]
        # kube-router adds a new pod to its policies' sets within seconds: wait for each verdict,
        # then see it hold; each refusal is checked while the same port answers a session
        _expect(kube, project_ns, "client", api, 8081, True, "the hub API from a session")
        _expect(kube, project_ns, "client", api, 8082, True, "the VRE service from a session")
        _expect(kube, outsider_ns, "client", public, 80, True, "the public port from any namespace")
        _expect(kube, outsider_ns, "client", api, 8081, False, "the hub API from a namespace that is no project")
        _expect(kube, project_ns, "other", api, 8082, False, "the VRE service from a project pod that is no session")
        _expect(kube, project_ns, "client", api, 8081, True, "the hub API from a session, still")
    finally:
        kube.run("delete", "namespace", project_ns, "--wait=false")

    # a session request: the hub, with the chart's service account under both admission policies,
    # creates the project's namespace, policies, quota, the session's Secret and pod, then removes
    # pod and Secret when the start fails (busybox cannot run the session's server)
    alice = HubClient(url, "alice")
    alice.get_token(creds["alice"])
    sessions_ns = f"{release.instance}-lung-screening"
    r = alice.api("POST", "/users/alice/servers/lung-screening", json={"profile": "small"})
    assert r.status_code in (201, 202, 500), r.text
    kube.wait("the session's start to end", lambda: alice.server_state("lung-screening") is None, release.ns, 150)
    hub_log = kube("logs", "-n", release.ns, f"deploy/{release.name}-hub", "-c", "hub")
    assert f"Created pod {sessions_ns}/" in hub_log, hub_log[-3000:]
    assert "Forbidden" not in hub_log and "forbidden" not in hub_log, hub_log[-3000:]
    assert kube.get("namespace", sessions_ns)["metadata"]["labels"]["vre.instance"] == release.instance
    assert len(kube("get", "networkpolicy", "-n", sessions_ns, "-o", "name").split()) == 6
    assert kube.get("resourcequota", "project", sessions_ns)["spec"]["hard"]["pods"]
    kube.wait("the failed session's pod and Secret removed", lambda: not kube(
        "get", "pods,secrets", "-n", sessions_ns, "-l", "vre.role=session", "-o", "name").split(), sessions_ns, 60)

    # upgrade with a changed setting: a new hub pod, the same secrets and the same state
    secrets_before = release.secret_data()
    pvc_uid = kube.get("pvc", f"{release.name}-hub-state", release.ns)["metadata"]["uid"]
    pub_before = release.exec_hub("cat", "/var/lib/vre/secrets/audit_ed25519.pub")
    t0 = time.monotonic()
    release.helm("upgrade", release.name, str(CHART), *release.args, "--set", "hub.settings.lockout_threshold=7")
    new_pod = release.wait_hub_ready(not_uid=pod["metadata"]["uid"])
    print(f"helm upgrade to the new hub pod Ready: {time.monotonic() - t0:.1f} s")
    assert release.secret_data() == secrets_before
    assert kube.get("pvc", f"{release.name}-hub-state", release.ns)["metadata"]["uid"] == pvc_uid
    assert "lockout_threshold = 7" in release.exec_hub("cat", "/etc/vre/vre.toml")
    assert release.exec_hub("cat", "/var/lib/vre/secrets/audit_ed25519.pub") == pub_before
    assert new_pod["metadata"]["uid"] != pod["metadata"]["uid"]
    assert _login(release.url(), "alice", creds["alice"]), "the accounts did not survive the upgrade"
    # the trail written before the upgrade still verifies with the kept key
    verify = kube.run("exec", "-n", release.ns, f"deploy/{release.name}-hub", "-c", "hub", "--",
                      "vre", "audit", "verify", timeout=120)
    assert verify.returncode == 0, verify.stdout + verify.stderr

    # uninstall: the workloads go, the state volume and the generated secrets stay
    release.helm("uninstall", release.name, "--wait")
    assert kube.run("get", "deployment", f"{release.name}-hub", "-n", release.ns).returncode != 0
    assert kube.get("pvc", f"{release.name}-hub-state", release.ns)["metadata"]["uid"] == pvc_uid
    assert release.secret_data() == secrets_before
    assert (release.state_dir / "vre.sqlite").exists()

    # a reinstall of the same release adopts what the uninstall left: same key, same accounts
    release.helm("install", release.name, str(CHART), *release.args)
    release.wait_hub_ready(not_uid=new_pod["metadata"]["uid"])
    assert release.secret_data() == secrets_before
    assert kube.get("pvc", f"{release.name}-hub-state", release.ns)["metadata"]["uid"] == pvc_uid
    assert release.exec_hub("cat", "/var/lib/vre/secrets/audit_ed25519.pub") == pub_before
    assert _login(release.url(), "alice", creds["alice"])


def _psql(kube, ns: str, pod: str, db: str, sql: str) -> str:
    """``sql``'s rows, run in the database pod over its own socket."""
    proc = kube.exec(ns, pod, "psql", "-h", "/var/run/postgresql", "-U", "vre", "-d", db, "-tAc", sql, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout.strip()


def test_internal_postgresql_holds_both_databases_across_an_upgrade(kube, new_ns, hub_image):
    """``database.type: internal`` with the PostgreSQL image built here (the official image's
    contract): the hub's accounts and JupyterHub's users are in its two databases, the database
    answers the hub pod alone, an upgrade keeps its data and the trail verifies, and an uninstall
    leaves its claim."""
    pg_image = cluster_image("postgresql")
    rel = Release(kube, new_ns("helm-pg"), hub_image)
    pg_class, pg_dir = f"{rel.storage_class}-pg", Path(tempfile.mkdtemp(prefix="vre-helm-pg-", dir="/var/tmp"))
    os.chown(pg_dir, 999, 999)   # what a provisioner that applies fsGroup does for the claim
    kube.apply({"apiVersion": "v1", "kind": "PersistentVolume", "metadata": {"name": pg_class},
                "spec": {"capacity": {"storage": "1Gi"}, "accessModes": ["ReadWriteOnce"],
                         "persistentVolumeReclaimPolicy": "Retain", "storageClassName": pg_class,
                         "hostPath": {"path": str(pg_dir), "type": "Directory"}}})
    repo, tag = pg_image.rsplit(":", 1)
    args = [*rel.args, "--set", "database.type=internal", "--set", f"database.internal.image.repository={repo}",
            "--set", f"database.internal.image.tag={tag}", "--set", "database.internal.image.pullPolicy=Never",
            "--set", f"database.internal.storageClassName={pg_class}", "--set", "database.internal.size=1Gi"]
    pg_pod = f"{rel.name}-postgresql-0"
    try:
        rel.helm("install", rel.name, str(CHART), *args)
        pod = rel.wait_hub_ready()
        kube.wait_ready(rel.ns, pg_pod, timeout=120)
        assert (pg_dir / "pgdata" / "PG_VERSION").exists()   # on the claim, not in the container
        url = rel.url()
        creds = {line.split("\t")[0]: line.split("\t")[2]
                 for line in rel.exec_hub("cat", "/var/lib/vre/secrets/demo-credentials.txt").splitlines()}
        assert _login(url, "alice", creds["alice"])
        assert "alice" in _psql(kube, rel.ns, pg_pod, "vre", "SELECT name FROM accounts").split()
        assert "alice" in _psql(kube, rel.ns, pg_pod, "jupyterhub", "SELECT name FROM users").split()
        assert not (rel.state_dir / "vre.sqlite").exists()
        # the password is the release's generated secret, and the database asks for it over TCP
        hub_url = base64.b64decode(rel.secret_data()["db-url"]).decode()
        assert hub_url.startswith("postgresql+psycopg://vre:") and f"@{rel.name}-postgresql:5432/vre" in hub_url
        wrong = kube.exec(rel.ns, pg_pod, "sh", "-c", "PGPASSWORD=wrong psql -h 127.0.0.1 -U vre -d vre -c 'SELECT 1'")
        assert wrong.returncode != 0 and "password authentication failed" in wrong.stderr, wrong.stderr

        # the database's port answers the hub pod alone: another pod of the release's namespace
        # is refused while the hub keeps working through it
        db_ip = kube.get("service", f"{rel.name}-postgresql", rel.ns)["spec"]["clusterIP"]
        kube.run_pod(rel.ns, "other", ["sleep", "3600"], labels={"app": "other"})

        def reaches() -> bool:
            return kube.exec(rel.ns, "other", "sh", "-c", f"timeout 8 nc -w 3 {db_ip} 5432 </dev/null").returncode == 0
        wait_until(lambda: not reaches(), 45, "the database refusing a pod that is not the hub")
        assert not reaches() and not reaches()
        rel.exec_hub("python3", "-c", f"import socket; socket.create_connection(({db_ip!r}, 5432), 5)")  # control
        assert _login(url, "bob", creds["bob"])

        # upgrade: a new hub pod on the same database, the trail still verifies
        rel.helm("upgrade", rel.name, str(CHART), *args, "--set", "hub.settings.lockout_threshold=7")
        rel.wait_hub_ready(not_uid=pod["metadata"]["uid"])
        assert _login(rel.url(), "alice", creds["alice"])
        verify = kube.run("exec", "-n", rel.ns, f"deploy/{rel.name}-hub", "-c", "hub", "--",
                          "vre", "audit", "verify", timeout=120)
        assert verify.returncode == 0, verify.stdout + verify.stderr
        assert int(_psql(kube, rel.ns, pg_pod, "vre", "SELECT count(*) FROM audit_events WHERE action = 'auth.login'")) >= 3

        # uninstall: the database's claim and its data stay
        rel.helm("uninstall", rel.name, "--wait")
        claim = kube.get("pvc", f"data-{pg_pod}", rel.ns)
        assert claim["status"]["phase"] == "Bound" and (pg_dir / "pgdata" / "PG_VERSION").exists()
    finally:
        subprocess.run([str(HELM), "uninstall", rel.name, "--namespace", rel.ns], capture_output=True,
                       env=kube.env, timeout=180)
        rel.cleanup()
        kube.run("delete", "persistentvolume", pg_class, "--wait=false")
        shutil.rmtree(pg_dir, ignore_errors=True)


SESSION_FACTS = """
import json, os, socket
facts = {"uid": os.getuid(), "gid": os.getgid(), "home": os.path.expanduser("~"), "data": os.path.exists("/data")}
for path in ("/", "/opt", os.path.expanduser("~"), os.path.expanduser("~/project"), "/tmp"):
    try:
        open(os.path.join(path, ".vre-probe"), "w").close()
        os.unlink(os.path.join(path, ".vre-probe"))
        facts[path] = "writable"
    except OSError as e:
        facts[path] = e.strerror
open(os.path.expanduser("~/kept.txt"), "w").write("kept across sessions")
print(json.dumps(facts))
"""


def test_a_session_pod_serves_jupyterlab(kube, new_ns, hub_image, notebook_image):
    """The chart's whole path for a researcher: the hub pod creates the project's namespace, the
    home and workspace claims, the session's pod from the notebook image; JupyterLab answers
    through the access layer in the hub pod, a kernel runs as the account's uid with a read-only
    root and writable home and workspace, and the home outlives the session. On the way: exports
    and jobs on claims, jobs as Kubernetes Jobs, a dataset in a claim indexed by a Job."""
    rel = Release(kube, new_ns("lab"), hub_image)
    project = "lab-pod"
    project_ns, held_ns = f"{rel.instance}-{project}", f"{rel.instance}-0held-{project}"
    rwx = f"{rel.storage_class}-rwx"
    claims, volumes = {}, {}
    # the claims the hub will make (a member's, the batch pools'), bound to volumes of this test
    for ns, claim in ((project_ns, "home-alice"), (project_ns, "workspace"), (project_ns, "worker-home"),
                      (held_ns, "held"), (held_ns, "held-home")):
        path = Path(tempfile.mkdtemp(prefix=f"vre-helm-{claim}-", dir="/var/tmp"))
        path.chmod(0o777)  # a hostPath volume has no fsGroup handling; a real RWX class has
        volumes[claim] = path
        if ns == project_ns and claim != "worker-home":
            claims[claim] = path
        kube.apply({"apiVersion": "v1", "kind": "PersistentVolume", "metadata": {"name": f"{rwx}-{claim}"},
                    "spec": {"capacity": {"storage": "1Gi"}, "accessModes": ["ReadWriteMany"],
                             "persistentVolumeReclaimPolicy": "Retain", "storageClassName": rwx,
                             "claimRef": {"namespace": ns, "name": claim},
                             "hostPath": {"path": str(path), "type": "Directory"}}})
    args = [*rel.args, "--set", f"sessions.image={notebook_image}", "--set", "sessions.storage=pvc",
            "--set", "sessions.datasets.volume=pvc",
            "--set", f"sessions.storageClassName={rwx}",
            "--set", "sessions.homeSize=1Gi", "--set", "sessions.workspaceSize=1Gi",
            "--set-json", 'hub.jupyterhub={"KubernetesSpawner": {"image_pull_policy": "Never", "start_timeout": 180}}']
    try:
        rel.helm("install", rel.name, str(CHART), *args)
        rel.wait_hub_ready()
        url = rel.url()
        # the hub pod's service-account token is root's alone: the access layer's network-facing
        # uid cannot read it (its root broker, which starts claims readers, can)
        token = "/var/run/secrets/kubernetes.io/serviceaccount/token"
        mode, owner = rel.exec_hub("stat", "-L", "-c", "%a %u", token).split()
        assert int(mode, 8) & 0o077 == 0 and owner == "0", (mode, owner)   # the kubelet makes it 0600
        probe = ["python3", "-c", f"import os; os.setgid(199999); os.setuid(199999)\ntry:\n    open({token!r}).read()\n"
                 "    print('read')\nexcept OSError as e:\n    print(e.strerror)"]
        assert rel.exec_hub(*probe).strip() == "Permission denied"
        for cmd in (["create", project, "--title", "JupyterLab in a pod"], ["add-member", project, "alice"],
                    ["set-profile", project, "small", "--cpu", "0.5", "--memory", "1G"]):
            rel.exec_hub("vre", "project", *cmd)
        password = next(line.split("\t")[2] for line in
                        rel.exec_hub("cat", "/var/lib/vre/secrets/demo-credentials.txt").splitlines()
                        if line.startswith("alice\t"))
        alice = HubClient(url, "alice")
        alice.get_token(password)
        alice.start(project, "small", timeout=240)

        # the hub made the claims, sized as the chart says, and they are bound
        for claim in claims:
            pvc = kube.get("pvc", claim, project_ns)
            assert pvc["spec"]["storageClassName"] == rwx and pvc["status"]["phase"] == "Bound", pvc
            assert pvc["spec"]["resources"]["requests"]["storage"] == "1Gi"
        (pod,) = json.loads(kube("get", "pods", "-n", project_ns, "-l", "vre.role=session", "-o", "json"))["items"]
        assert pod["spec"]["containers"][0]["image"] == notebook_image

        # JupyterLab answers through the access layer, and only with the hub's login
        server = alice.server_url(project)
        assert requests.get(f"{server}/api/status", timeout=30).status_code in (401, 302)
        r = alice.server_api(project, "GET", "/status")
        assert r.status_code == 200 and "started" in r.json(), r.text
        lab = requests.get(f"{server}/lab", headers={"Authorization": f"token {alice.token}"}, timeout=60)
        assert lab.status_code == 200 and "jupyter-config-data" in lab.text, lab.text[:500]

        k = alice.kernel(project)
        facts = json.loads(k.check(SESSION_FACTS, timeout=120).strip().splitlines()[-1])
        k.close()
        uid = int(pod["spec"]["securityContext"]["runAsUser"])
        assert facts["uid"] == uid and uid >= 1000 and facts["gid"] == pod["spec"]["securityContext"]["runAsGroup"]
        assert facts["home"] == "/home/jovyan" and facts["data"] is False  # a project without datasets
        assert facts["/"] == facts["/opt"] == "Read-only file system", facts
        assert facts["/home/jovyan"] == facts["/home/jovyan/project"] == facts["/tmp"] == "writable", facts
        assert (claims["home-alice"] / "kept.txt").read_text() == "kept across sessions"  # on the claim's volume
        # an export is frozen through a claims reader the hub starts: her uid, her claims read-only
        k = alice.kernel(project)
        k.check("import os; os.symlink('/etc/passwd', os.path.expanduser('~/passwd.txt'))", timeout=60)
        r = alice.vre_api("POST", "/airlock/requests", json={"project": project, "title": "t", "justification": "t",
                                                             "files": [{"path": "kept.txt"}]})
        assert r.status_code == 201, r.text
        rid = r.json()["id"]
        (reader,) = json.loads(kube("get", "pods", "-n", project_ns, "-l", "vre.role=reader", "-o", "json"))["items"]
        rc = reader["spec"]["containers"][0]
        assert rc["securityContext"]["runAsUser"] == uid and rc["image"] == notebook_image
        assert all(m.get("readOnly") for m in rc["volumeMounts"] if m["mountPath"].startswith("/claims"))
        r = alice.vre_api("POST", f"/airlock/requests/{rid}/files", json={"files": [{"path": "passwd.txt"}]})
        assert r.status_code == 400 and "outside your home" in r.json()["message"], r.text
        r = alice.vre_api("POST", f"/airlock/requests/{rid}/submit")
        assert r.status_code == 200 and r.json()["state"] == "submitted", r.text
        (frozen,) = r.json()["files"]
        assert frozen["sha256"] == hashlib.sha256(b"kept across sessions").hexdigest(), frozen
        # her kernel reaches the reader's port (the project is an island) but gets nothing without its token
        probe = (f"import urllib.request, urllib.error\ntry:\n    urllib.request.urlopen('http://"
                 f"{reader['status']['podIP']}:{READER_PORT}/read?path=/claims/home/kept.txt', timeout=10)\n"
                 "    print('served')\nexcept urllib.error.HTTPError as e:\n    print('status', e.code)\n")
        assert "status 401" in k.check(probe, timeout=60)
        k.close()
        _jobs_on_claims(kube, rel, alice, project, volumes)
        log = kube("logs", "-n", rel.ns, f"deploy/{rel.name}-hub", "-c", "hub")   # this hub pod's (an upgrade follows)
        assert f"Created claim {project_ns}/home-alice (1Gi)" in log and log.count(f"Created claim {project_ns}/") == 2
        _jobs_as_kubernetes_jobs(kube, rel, alice, project, volumes, args)
        _a_claim_dataset_indexed_in_the_cluster(kube, rel, alice, project, volumes, claims["home-alice"])

        # stop: the pod goes, the claims stay; the next session finds the file
        rel.exec_hub("vre", "project", "set-downloads", project, "all")   # for the next session's guard
        alice.stop(project, timeout=120)
        kube.wait("the session's pod removed", lambda: not kube(
            "get", "pods", "-n", project_ns, "-l", "vre.role=session", "-o", "name").split(), project_ns, 120)
        assert {c: kube.get("pvc", c, project_ns)["status"]["phase"] for c in claims} == dict.fromkeys(claims, "Bound")
        alice.start(project, "small", timeout=240)
        k = alice.kernel(project)
        assert "kept across sessions" in k.check("print(open('/home/jovyan/kept.txt').read())", timeout=120)
        k.close()
        _claim_dataset_in_a_session(kube, rel, alice, project)
        _a_job_with_the_claim_dataset(kube, rel, alice, project, volumes)
        # the download guard resolves her links through her reader: her file leaves (downloads
        # "all"), the link in her home to a file outside it does not
        token = {"Authorization": f"token {alice.token}"}
        server = alice.server_url(project)
        r = requests.get(f"{server}/files/kept.txt", headers=token, timeout=120)
        assert r.status_code == 200 and r.text == "kept across sessions", (r.status_code, r.text[:300])
        r = requests.get(f"{server}/files/passwd.txt", headers=token, timeout=120)
        assert r.status_code == 403 and "root:" not in r.text, (r.status_code, r.text[:300])

        # removed from the project, her running session's pod is stopped by the hub's next poll
        rel.exec_hub("vre", "project", "remove-member", project, "alice")
        kube.wait("the removed member's pod stopped", lambda: not kube(
            "get", "pods", "-n", project_ns, "-l", "vre.role=session", "-o", "name").split(), project_ns, 90)
        kube.wait("the hub to forget the session", lambda: alice.server_state(project) is None, project_ns, 60)
        stops = json.loads(rel.exec_hub("vre", "audit", "query", "--json", "--action", "session.stop", "--user", "alice"))
        assert "not a member" in stops[-1]["details"]["reason"], stops[-1]
    finally:
        subprocess.run([str(HELM), "uninstall", rel.name, "--namespace", rel.ns], capture_output=True,
                       env=kube.env, timeout=180)
        rel.cleanup()
        for claim, path in volumes.items():
            kube.run("delete", "persistentvolume", f"{rwx}-{claim}", f"{rwx}-{claim}-p", f"{rwx}-{claim}-h",
                     "--wait=false")
            shutil.rmtree(path, ignore_errors=True)
        # Kueue stays (its API and controller, until the cluster goes down); what the test made for it goes
        kube.run("delete", "namespace", f"{rel.instance}-urgent", "--wait=false")
        for obj in kueue_objects(hold=False):
            kube.run("delete", obj["kind"].lower(), obj["metadata"]["name"], "--wait=false")


CLAIMS_JOB = """
import json, os
out = os.environ["VRE_JOB_OUTPUT"]
open(os.path.join(out, "result.txt"), "w").write("made in a worker pod\\n")
print("JOB DONE", os.getcwd() == out, json.dumps([n for n in sorted(os.listdir(out)) if not n.startswith(".")]))
"""


def _jobs_on_claims(kube, rel, alice, project: str, volumes: dict) -> None:
    """The batch queue where the hub mounts no claim: a worker pod makes the job's folder in the
    workspace claim (members read its log, progress and outputs through alice's reader), a
    function's payload travels in its spec, and a held job's folder is on the held pool's claim,
    withheld from members, its outputs exported through the held pool's reader."""
    project_ns, held_ns = f"{rel.instance}-{project}", f"{rel.instance}-0held-{project}"
    k = alice.kernel(project)
    k.check(f"open('/home/jovyan/project/claims_job.py', 'w').write({CLAIMS_JOB!r})", timeout=60)
    body = {"project": project, "kind": "script", "target": "project/claims_job.py", "cpu": 0.25, "mem_mb": 256}
    t0 = time.monotonic()
    r = alice.vre_api("POST", "/jobs", json=body)
    assert r.status_code == 201, r.text
    job_id = r.json()["id"]
    done = _job_end(kube, alice, job_id, project_ns, 300)
    print(f"submit to a job's end on claims (a new scheduler and worker): {time.monotonic() - t0:.1f} s")
    log = alice.vre_api("GET", f"/jobs/{job_id}/log").json()["text"]
    assert done["state"] == "succeeded" and 'JOB DONE True ["log.txt", "result.txt"]' in log, (done, log)
    assert {o["path"].rsplit("/", 1)[1] for o in done["outputs"]} == {"log.txt", "result.txt"}, done
    assert alice.vre_api("GET", f"/jobs/{job_id}/log?offset=5").json()["text"] == log[5:]
    r = alice.vre_api("GET", f"/jobs/{job_id}/log?offset={10**19}")   # past any file offset: told, reader kept
    assert r.status_code == 400 and "whole number" in r.json()["message"], r.text
    folder = volumes["workspace"] / "jobs" / str(job_id)
    assert (folder / "result.txt").read_text() == "made in a worker pod\n"
    assert oct(folder.stat().st_mode)[-4:] == "2770"
    # the pool's pods mount the pool's home claim and the workspace, never a member's home
    pods = json.loads(kube("get", "pods", "-n", project_ns, "-l", "vre.pool", "-o", "json"))["items"]
    claimed = {v["persistentVolumeClaim"]["claimName"] for p in pods for v in p["spec"]["volumes"]
               if "persistentVolumeClaim" in v}
    assert claimed == {"worker-home", "workspace"}, claimed
    # her kernel sees the job's files where the job wrote them
    assert "made in a worker pod" in k.check(f"print(open('/home/jovyan/project/jobs/{job_id}/result.txt').read())",
                                             timeout=60)
    # she swaps the workspace's jobs/ for a link to where the workers keep their home: the next
    # job fails saying what is in the way, and nothing is written through the link
    k.check("import os; os.rename('/home/jovyan/project/jobs', '/home/jovyan/project/jobs.real'); "
            "os.symlink('/home/jovyan', '/home/jovyan/project/jobs')", timeout=60)
    r = alice.vre_api("POST", "/jobs", json=body)
    assert r.status_code == 201, r.text
    planted = _job_end(kube, alice, r.json()["id"], project_ns, 120)
    assert planted["state"] == "failed" and "must be a real folder" in planted["reason"], planted
    assert not (volumes["worker-home"] / str(r.json()["id"])).exists()
    k.check("import os; os.unlink('/home/jovyan/project/jobs'); "
            "os.rename('/home/jovyan/project/jobs.real', '/home/jovyan/project/jobs')", timeout=60)
    # a function job: its payload reaches the worker in its spec (the hub cannot write it there)
    fn = alice.vre_api("POST", "/jobs", json={"project": project, "kind": "function", "cpu": 0.25, "mem_mb": 256,
                                              "payload": k.check(PICKLED_FUNCTION, timeout=60).strip()})
    assert fn.status_code == 201, fn.text
    fdone = _job_end(kube, alice, fn.json()["id"], project_ns, 180)
    assert fdone["state"] == "succeeded", (fdone, alice.vre_api("GET", f"/jobs/{fdone['id']}/log").json())
    result = k.check(f"import pickle; print(pickle.load(open('/home/jovyan/project/jobs/{fdone['id']}/result.pkl', "
                     "'rb')))", timeout=60)
    assert "42" in result, result
    k.close()

    # a held job: its folder on the held pool's claim, nothing of it shown to members
    held = alice.vre_api("POST", "/jobs", json={**body, "lane": "held"})
    assert held.status_code == 201, held.text
    hid = held.json()["id"]
    hdone = _job_end(kube, alice, hid, held_ns, 300)
    assert hdone["state"] == "succeeded" and hdone["outputs"] == [] and hdone["progress"] is None, hdone
    hlog = alice.vre_api("GET", f"/jobs/{hid}/log").json()["text"]
    assert "JOB DONE" not in hlog and "airlock" in hlog, hlog
    hfolder = volumes["held"] / "jobs" / str(hid)
    assert oct(hfolder.stat().st_mode)[-3:] == "700" and (hfolder / "input" / "claims_job.py").exists()
    assert "JOB DONE True" in (hfolder / "log.txt").read_text()
    # its output leaves only through the airlock, read by the held pool's reader
    r = alice.vre_api("POST", "/airlock/requests", json={
        "project": project, "title": "held", "justification": "t", "files": [{"path": f"/held/jobs/{hid}/result.txt"}]})
    assert r.status_code == 201, r.text
    r = alice.vre_api("POST", f"/airlock/requests/{r.json()['id']}/submit")
    assert r.status_code == 200 and r.json()["state"] == "submitted", r.text
    (frozen,) = r.json()["files"]
    assert frozen["frozen"] and frozen["held"] and frozen["sha256"] is None, frozen  # shown once released
    stored = [p.read_bytes() for p in (rel.state_dir / "airlock").rglob("*") if p.is_file()]
    assert b"made in a worker pod\n" in stored   # the frozen copy, in the hub's store
    (reader,) = json.loads(kube("get", "pods", "-n", held_ns, "-l", "vre.role=reader", "-o", "json"))["items"]
    assert reader["spec"]["containers"][0]["securityContext"]["runAsUser"] == hfolder.stat().st_uid
    assert [v["persistentVolumeClaim"]["claimName"] for v in reader["spec"]["volumes"]
            if "persistentVolumeClaim" in v] == ["held"]


KUEUE_QUEUE, KUEUE_CLUSTER_QUEUE = "vre-batch", "vre-cluster"
def _read_only_claim(kube, volume: str, ns: str, claim: str, path: Path, storage_class: str) -> None:
    """A ReadOnlyMany claim in ``ns`` bound to a hostPath volume at ``path`` (the operator's part)."""
    kube.apply({"apiVersion": "v1", "kind": "PersistentVolume", "metadata": {"name": volume},
                "spec": {"capacity": {"storage": "1Gi"}, "accessModes": ["ReadOnlyMany"],
                         "persistentVolumeReclaimPolicy": "Retain", "storageClassName": storage_class,
                         "claimRef": {"namespace": ns, "name": claim},
                         "hostPath": {"path": str(path), "type": "Directory"}}})
    kube.apply({"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": claim, "namespace": ns},
                "spec": {"accessModes": ["ReadOnlyMany"], "storageClassName": storage_class, "volumeName": volume,
                         "resources": {"requests": {"storage": "1Gi"}}}})


def _a_claim_dataset_indexed_in_the_cluster(kube, rel, alice, project: str, volumes: dict, home: Path) -> None:
    """A dataset the hub cannot read (a ReadOnlyMany claim, ``k8s_dataset_volume = pvc``) is
    registered with no path: a Job in the catalogue namespace indexes it from the claim and the
    hub fetches the index into its catalogue, with every file's hash; then the airlock knows a
    copy of one of its files in alice's home, without the dataset to read."""
    slug, catalog_ns = "ct-claim", f"{rel.instance}-0catalog"
    path = Path(tempfile.mkdtemp(prefix="vre-helm-dataset-", dir="/var/tmp"))
    path.chmod(0o755)
    volumes["dataset-ct-claim"] = path   # removed with the test's other volumes
    synth.make_cohort("lung-ct", path, patients=2, slices=6, size=32, seed=9)
    sc = f"{rel.storage_class}-rwx"
    # the operator's part: the namespace labelled as the instance's, the claim bound to the dataset's volume
    kube.apply({"apiVersion": "v1", "kind": "Namespace",
                "metadata": {"name": catalog_ns, "labels": {"vre.instance": rel.instance}}})
    _read_only_claim(kube, f"{sc}-dataset-ct-claim", catalog_ns, f"dataset-{slug}", path, sc)
    t0 = time.monotonic()
    proc = kube.run("exec", "-n", rel.ns, f"deploy/{rel.name}-hub", "-c", "hub", "--",
                    "vre", "dataset", "add", "--slug", slug, "--title", "CT in a claim", timeout=400)
    print(f"a claim dataset indexed in the cluster: {time.monotonic() - t0:.1f} s")
    out = proc.stdout
    if proc.returncode:
        print(kube.run("get", "all,events", "-n", catalog_ns, "-o", "wide").stdout)
        print(kube.run("logs", "-n", catalog_ns, "-l", "vre.role=indexer", "--tail=50").stdout)
    assert proc.returncode == 0, (out, proc.stderr)
    assert f"registered dataset '{slug}'" in out and "2 series from 13 files (12 read" in out, out
    assert json.loads(rel.exec_hub("vre", "dataset", "show", slug))["num_series"] == 2
    assert f"claim:dataset-{slug}" in rel.exec_hub("vre", "dataset", "list")
    count = ["python3", "-c", "import sqlite3; print(sqlite3.connect("
             f"'/var/lib/vre/catalog/{slug}/index.sqlite').execute('SELECT COUNT(*) FROM digests').fetchone()[0])"]
    assert int(rel.exec_hub(*count)) == len([p for p in path.rglob("*") if p.is_file()])
    # the Job and its pod are gone; the hub's audit names the registration
    kube.wait("the index Job removed", lambda: not kube("get", "jobs,pods", "-n", catalog_ns, "-o", "name").split(),
              catalog_ns, 60)
    (event,) = json.loads(rel.exec_hub("vre", "audit", "query", "--json", "--action", "dataset.register",
                                       "--dataset", slug))
    assert event["target"] == f"claim:dataset-{slug}" and event["details"]["series"] == 2, event
    # the dataset's clinical table in alice's home (however it got there) does not leave through the airlock
    shutil.copy(path / "clinical.csv", home / "table.csv")
    r = alice.vre_api("POST", "/airlock/requests", json={"project": project, "title": "t", "justification": "t",
                                                         "files": [{"path": "table.csv"}]})
    assert r.status_code == 201, r.text
    r = alice.vre_api("POST", f"/airlock/requests/{r.json()['id']}/submit")
    assert r.status_code == 400 and f"byte for byte the dataset file {slug}/clinical.csv" in r.text, r.text
    # granted to the project, with the claim in its namespace too: her next session has it (_claim_dataset_in_a_session)
    project_ns = f"{rel.instance}-{project}"
    _read_only_claim(kube, f"{sc}-dataset-ct-claim-p", project_ns, f"dataset-{slug}", path, sc)
    rel.exec_hub("vre", "project", "grant", project, slug)


CLAIM_DATASET_FACTS = """
import json, os, sqlite3
cat = '/opt/vre/catalog/ct-claim'
conn = sqlite3.connect(f'file:{cat}/index.sqlite?mode=ro', uri=True)
files = sorted(os.path.relpath(os.path.join(d, f), '/data/ct-claim') for d, _, fs in os.walk('/data/ct-claim') for f in fs)
try:
    open('/data/ct-claim/x', 'w')
    writable = True
except OSError:
    writable = False
# what a curious researcher tries: the start's catalogue ticket, and the hub's catalogue files
# with her own token, on the VRE service's port (no such route) and on the catalogue port
import urllib.request, urllib.error
api = os.environ['VRE_API_URL']
fetched = {}
for port, base in (("service", api), ("catalogue", api.replace(':8082/', ':8083/'))):
    try:
        urllib.request.urlopen(urllib.request.Request(base + '/catalogue/ct-claim/index.sqlite', headers={
            'Authorization': 'token ' + os.environ['JUPYTERHUB_API_TOKEN']}), timeout=20)
        fetched[port] = 200
    except urllib.error.HTTPError as e:
        fetched[port] = e.code
ticket = any(b'VRE_CATALOG_TICKET' in open(f'/proc/{p}/environ', 'rb').read()
             for p in os.listdir('/proc') if p.isdigit() and os.access(f'/proc/{p}/environ', os.R_OK))
print(json.dumps({"series": conn.execute('SELECT COUNT(*) FROM series').fetchone()[0],
                  "fetched_with_token": fetched, "ticket_seen": ticket,
                  "record": json.load(open(f'{cat}/record.json'))['num_series'], "files": len(files),
                  "writable": writable, "catalog_writable": os.access(cat, os.W_OK)}))
"""


def _claim_dataset_in_a_session(kube, rel, alice, project: str) -> None:
    """The claim dataset in alice's session: its files read-only from the project's claim, its
    catalogue (record and index) fetched from the hub by the pod's first container, read-only."""
    k = alice.kernel(project)
    facts = json.loads(k.check(CLAIM_DATASET_FACTS, timeout=120).strip().splitlines()[-1])
    k.close()
    assert facts == {"series": 2, "record": 2, "files": 13, "writable": False, "catalog_writable": False,
                     "fetched_with_token": {"service": 404, "catalogue": 403}, "ticket_seen": False}, facts
    project_ns = f"{rel.instance}-{project}"
    (pod,) = json.loads(kube("get", "pods", "-n", project_ns, "-l", "vre.role=session", "-o", "json"))["items"]
    log = kube("logs", "-n", project_ns, pod["metadata"]["name"], "-c", "catalogue")
    assert "1 of 1 catalogue(s) fetched" in log, log


CLAIM_JOB_FACTS = """
import json, os, socket, sqlite3, urllib.error, urllib.request
cat = '/opt/vre/catalog/ct-claim'
facts = {"series": sqlite3.connect(f'file:{cat}/index.sqlite?mode=ro', uri=True).execute(
             'SELECT COUNT(*) FROM series').fetchone()[0],
         "record": json.load(open(f'{cat}/record.json'))['num_series'],
         "files": sum(len(fs) for _, _, fs in os.walk('/data/ct-claim')),
         "catalog_writable": os.access(cat, os.W_OK),
         "ticket_seen": any(b'VRE_CATALOG_TICKET' in open(f'/proc/{p}/environ', 'rb').read()
                            for p in os.listdir('/proc') if p.isdigit() and os.access(f'/proc/{p}/environ', os.R_OK))}
# the catalogue port answers a batch pod, with nothing but catalogue files for a ticket
try:
    urllib.request.urlopen($CATALOGUE + '/catalogue/ct-claim/index.sqlite', timeout=10)
    facts["fetched"] = 200
except urllib.error.HTTPError as e:
    facts["fetched"] = e.code
# the hub's API and the VRE service (jobs, airlock, audit ingest) stay out of a batch pod's reach
for name, port in (("hub_api", $HUB_PORT), ("service", $SERVICE_PORT)):
    try:
        socket.create_connection(($HUB, port), timeout=3).close()
        facts[name] = "connected"
    except OSError as e:
        facts[name] = type(e).__name__
print("CLAIM JOB", json.dumps(facts))
"""


def _a_job_with_the_claim_dataset(kube, rel, alice, project: str, volumes: dict) -> None:
    """Batch jobs (Kubernetes Jobs, admitted by Kueue) in the project that has the claim dataset, one in the
    open lane and one held: each pod's first container fetched the catalogue files from the hub's
    catalogue port with a ticket of its start (its role, its job; no operator-made ``catalog``
    claim); the job reads them and the dataset read-only, sees no ticket, and reaches the
    catalogue port only: neither the hub's API nor the VRE service (a held job must find no API
    to write through to members)."""
    project_ns, held_ns = f"{rel.instance}-{project}", f"{rel.instance}-0held-{project}"
    # the operator's part: held jobs run in the held namespace, which needs the dataset's claim too
    sc = f"{rel.storage_class}-rwx"
    _read_only_claim(kube, f"{sc}-dataset-ct-claim-h", held_ns, "dataset-ct-claim", volumes["dataset-ct-claim"], sc)
    hub = kube.get("service", f"{rel.name}-hub", rel.ns)["spec"]["clusterIP"]
    script = (CLAIM_JOB_FACTS.replace("$CATALOGUE", repr(f"http://{hub}:8083/services/vre/api"))
              .replace("$HUB_PORT", "8081").replace("$SERVICE_PORT", "8082").replace("$HUB", repr(hub)))
    (volumes["workspace"] / "claim_job.py").write_text(script)
    for lane, ns in (("open", project_ns), ("held", held_ns)):
        r = alice.vre_api("POST", "/jobs", json={"project": project, "kind": "script", "target": "project/claim_job.py",
                                                 "cpu": 0.25, "mem_mb": 256, "lane": lane})
        assert r.status_code == 201, r.text
        job_id = r.json()["id"]
        made = kube.wait(f"the {lane} job's Kubernetes Job", lambda: (json.loads(kube(
            "get", "jobs", "-n", ns, "-l", f"vre.job={job_id}", "-o", "json"))["items"] or [None])[0], ns, 120)
        t0 = time.monotonic()
        done = _job_end(kube, alice, job_id, ns, 240)   # Kueue's queue (open) admits it
        print(f"a {lane} Job with a claim dataset, made to its end (its catalogue fetched first): "
              f"{time.monotonic() - t0:.1f} s")
        assert admitted_by_kueue(kube, made["metadata"]["name"], ns), kube.diagnose(ns, "events")
        log = (volumes["held"] / "jobs" / str(job_id) / "log.txt").read_text() if lane == "held" else \
            alice.vre_api("GET", f"/jobs/{job_id}/log").json()["text"]
        assert done["state"] == "succeeded" and "CLAIM JOB" in log, (lane, done, log)
        facts = json.loads(log.split("CLAIM JOB", 1)[1].strip().splitlines()[0])
        blocked = ("TimeoutError", "ConnectionRefusedError")
        assert facts["hub_api"] in blocked and facts["service"] in blocked, (lane, facts)
        assert {k: v for k, v in facts.items() if k not in ("hub_api", "service")} == {
            "series": 2, "record": 2, "files": 13, "catalog_writable": False, "ticket_seen": False,
            "fetched": 403}, (lane, facts)


def kueue_objects(hold: bool) -> list[dict]:
    """What the cluster's operator makes for Kueue (the chart's LocalQueues point at it): a
    ClusterQueue of 1 CPU and 1 GiB for every namespace, whose lower-priority workloads a
    higher-priority one preempts, and a priority for urgent work. ``hold``: it admits nothing
    (``stopPolicy: Hold``) until opened."""
    api = "kueue.x-k8s.io/v1beta2"
    return [{"apiVersion": api, "kind": "ResourceFlavor", "metadata": {"name": "vre-test"}},
            {"apiVersion": api, "kind": "WorkloadPriorityClass", "metadata": {"name": "vre-urgent"}, "value": 1000},
            {"apiVersion": api, "kind": "ClusterQueue", "metadata": {"name": KUEUE_CLUSTER_QUEUE},
             "spec": {"namespaceSelector": {}, "stopPolicy": "Hold" if hold else "None",
                      "preemption": {"withinClusterQueue": "LowerPriority"},
                      "resourceGroups": [{"coveredResources": ["cpu", "memory"], "flavors": [
                          {"name": "vre-test", "resources": [{"name": "cpu", "nominalQuota": "1"},
                                                             {"name": "memory", "nominalQuota": "1Gi"}]}]}]}}]


def admitted_by_kueue(kube, name: str, ns: str) -> str | None:
    """What Kueue said when it admitted the Kubernetes Job ``name`` and started it (its ``Started``
    event on the Job, which outlives the Job), else None."""
    events = json.loads(kube("get", "events", "-n", ns, "-o", "json", "--field-selector",
                             f"involvedObject.kind=Job,involvedObject.name={name},reason=Started"))["items"]
    said = [e["message"] for e in events if e["message"] == f"Admitted by clusterQueue {KUEUE_CLUSTER_QUEUE}"]
    return said[0] if said else None


PREEMPTED_JOB = """
import os, time
out, job = os.environ["VRE_JOB_OUTPUT"], os.environ["VRE_JOB_ID"]
earlier = [n for n in os.listdir(os.path.dirname(out)) if n.startswith(f".stale-{job}-")]
time.sleep(0 if earlier else 40)   # the first run is preempted in its sleep; a run after it ends
print("PREEMPTED JOB DONE; earlier runs moved aside:", len(earlier))
"""


def _jobs_as_kubernetes_jobs(kube, rel, alice, project: str, volumes: dict, args: list) -> None:
    """``jobs.runner: jobs`` with a Kueue queue, under the real Kueue controller: each job that
    needs no Dask is a Kubernetes Job of its own, created suspended and labelled with the queue.
    It holds its slot but no pod runs while the queue holds it; Kueue admits it (a Workload of
    its own) and starts it; it runs as a worker pod would, ends as its task reports, and its
    start is audited with its Job and node. A cancel deletes a waiting Job; a held job's Job is
    in the held namespace, its folder on the held claim; a function's payload reaches its pod in
    the Job's Secret. The hub makes the LocalQueue in each namespace it creates Jobs in. A job
    that Kueue preempts for urgent work while it runs waits again and runs anew once the urgent
    work is done."""
    project_ns, held_ns = f"{rel.instance}-{project}", f"{rel.instance}-0held-{project}"
    kueue()
    kube.apply(*kueue_objects(hold=True))
    before = rel.hub_pod()["metadata"]["uid"]
    rel.helm("upgrade", rel.name, str(CHART), *args, "--set", "jobs.runner=jobs",
             "--set", f"jobs.kueueQueue={KUEUE_QUEUE}", "--set", f"jobs.kueueClusterQueue={KUEUE_CLUSTER_QUEUE}")
    rel.wait_hub_ready(not_uid=before)
    rel.url()

    def kube_job(job_id: int, ns: str = project_ns):
        found = json.loads(kube("get", "jobs", "-n", ns, "-l", f"vre.job={job_id}", "-o", "json"))["items"]
        return found[0] if found else None

    def submit(**kw) -> int:
        body = {"project": project, "kind": "script", "target": "project/claims_job.py", "cpu": 0.25, "mem_mb": 256}
        r = alice.vre_api("POST", "/jobs", json={**body, **kw})
        assert r.status_code == 201, r.text
        return r.json()["id"]

    def queue_holds(hold: bool) -> None:
        kube("patch", "clusterqueue", KUEUE_CLUSTER_QUEUE, "--type", "merge",
             "-p", json.dumps({"spec": {"stopPolicy": "Hold" if hold else "None"}}))

    def waits_in_the_queue(job_id: int, timeout: float = 60) -> dict:
        """The job once it says that it waits for the cluster's queue (and has not started)."""
        def waiting():
            job = alice.vre_api("GET", f"/jobs/{job_id}").json()
            return job if job["started_at"] is None and "suspended until the cluster's queue" in job["reason"] else None
        return kube.wait("the job to say it waits for the queue", waiting, project_ns, timeout)

    job_id = submit()
    made = kube.wait("the job's Kubernetes Job", lambda: kube_job(job_id), project_ns, 120)
    assert made["metadata"]["name"] == f"vre-job-{job_id}-1" and made["spec"]["suspend"] is True, made
    assert made["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == KUEUE_QUEUE
    queue = kube.get("localqueue", KUEUE_QUEUE, project_ns)
    assert queue["spec"]["clusterQueue"] == KUEUE_CLUSTER_QUEUE, queue
    waiting = waits_in_the_queue(job_id)
    assert waiting["state"] == "running" and waiting["started_at"] is None and KUEUE_QUEUE in waiting["reason"]
    time.sleep(3)   # held by the queue: no pod is made, however long it waits
    assert not kube("get", "pods", "-n", project_ns, "-l", f"vre.job={job_id}", "-o", "name").split()
    assert kube_job(job_id)["spec"]["suspend"] is True
    assert admitted_by_kueue(kube, made["metadata"]["name"], project_ns) is None
    queue_holds(False)   # the operator opens the queue: Kueue admits the Job and starts it
    done = _job_end(kube, alice, job_id, project_ns, 240)
    assert admitted_by_kueue(kube, made["metadata"]["name"], project_ns), kube.diagnose(project_ns, "events")
    log = alice.vre_api("GET", f"/jobs/{job_id}/log").json()["text"]
    assert done["state"] == "succeeded" and 'JOB DONE True ["log.txt", "result.txt"]' in log, (done, log)
    assert done["reason"] == "" and done["attempts"] == 1, done
    assert (volumes["workspace"] / "jobs" / str(job_id) / "result.txt").read_text() == "made in a worker pod\n"
    starts = json.loads(rel.exec_hub("vre", "audit", "query", "--json", "--action", "job.start", "--user", "alice"))
    (start,) = [e for e in starts if e["target"] == f"job/{job_id}"]
    assert start["details"]["kubernetes_job"] == f"{project_ns}/vre-job-{job_id}-1", start
    assert start["details"]["node"] and start["details"]["worker"] == f"vre-job-{job_id}-1", start
    ends = json.loads(rel.exec_hub("vre", "audit", "query", "--json", "--action", "job.finish", "--user", "alice"))
    assert [e["details"]["exit_code"] for e in ends if e["target"] == f"job/{job_id}"] == [0]
    kube.wait("the ended job's Kubernetes Job deleted", lambda: kube_job(job_id) is None, project_ns, 60)

    # cancelled while it waits in the queue: its Job is deleted, no pod ever ran
    queue_holds(True)
    waiting_id = submit()
    kube.wait("the second Kubernetes Job", lambda: kube_job(waiting_id), project_ns, 120)
    waits_in_the_queue(waiting_id)
    assert kube_job(waiting_id)["spec"]["suspend"] is True
    assert not kube("get", "pods", "-n", project_ns, "-l", f"vre.job={waiting_id}", "-o", "name").split()
    r = alice.vre_api("POST", f"/jobs/{waiting_id}/cancel")
    assert r.status_code == 200, r.text
    assert _job_end(kube, alice, waiting_id, project_ns, 60)["state"] == "cancelled"
    kube.wait("the cancelled job's Kubernetes Job deleted", lambda: kube_job(waiting_id) is None, project_ns, 60)
    queue_holds(False)

    # a function job: its payload travels in the Job's Secret
    k = alice.kernel(project)
    fn = submit(kind="function", payload=k.check(PICKLED_FUNCTION, timeout=60).strip())
    made = kube.wait("the function's Kubernetes Job", lambda: kube_job(fn), project_ns, 120)
    fdone = _job_end(kube, alice, fn, project_ns, 240)
    assert admitted_by_kueue(kube, made["metadata"]["name"], project_ns), kube.diagnose(project_ns, "events")
    assert fdone["state"] == "succeeded", (fdone, alice.vre_api("GET", f"/jobs/{fn}/log").json())
    assert "42" in k.check(f"import pickle; print(pickle.load(open('/home/jovyan/project/jobs/{fn}/result.pkl', "
                           "'rb')))", timeout=60)
    k.close()

    # a held job: its Job in the held namespace, its folder on the held claim, withheld from members
    hid = submit(lane="held")
    held = kube.wait("the held job's Kubernetes Job", lambda: kube_job(hid, held_ns), held_ns, 120)
    assert held["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == KUEUE_QUEUE   # the queue is open: Kueue may
    assert held["metadata"]["namespace"] == held_ns                                    # have resumed it already
    assert kube.get("localqueue", KUEUE_QUEUE, held_ns)["spec"]["clusterQueue"] == KUEUE_CLUSTER_QUEUE
    hdone = _job_end(kube, alice, hid, held_ns, 240)
    assert admitted_by_kueue(kube, held["metadata"]["name"], held_ns), kube.diagnose(held_ns, "events")
    assert hdone["state"] == "succeeded" and hdone["outputs"] == [] and hdone["progress"] is None, hdone
    assert "JOB DONE True" in (volumes["held"] / "jobs" / str(hid) / "log.txt").read_text()

    # preempted while it runs: urgent work (a higher priority) needs its share of the queue, so
    # Kueue suspends its Job (the pod ends); it waits again, and runs anew once the urgent work is done
    (volumes["workspace"] / "preempted_job.py").write_text(PREEMPTED_JOB)
    pid = submit(target="project/preempted_job.py")
    kube.wait("the job to run", lambda: alice.vre_api("GET", f"/jobs/{pid}").json()["started_at"], project_ns, 120)
    urgent_ns = f"{rel.instance}-urgent"
    kube.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": urgent_ns}},
               {"apiVersion": "kueue.x-k8s.io/v1beta2", "kind": "LocalQueue",
                "metadata": {"name": "urgent", "namespace": urgent_ns}, "spec": {"clusterQueue": KUEUE_CLUSTER_QUEUE}})
    # 900 MiB of the queue's 1 GiB: not beside the running job's 256 MiB
    urgent = kube.pod(urgent_ns, "urgent", ["sleep", "15"], container={
        "resources": {"requests": {"cpu": "100m", "memory": "900Mi"}, "limits": {"memory": "900Mi"}}})
    kube.apply({"apiVersion": "batch/v1", "kind": "Job",
                "metadata": {"name": "urgent", "namespace": urgent_ns,
                             "labels": {"kueue.x-k8s.io/queue-name": "urgent", "kueue.x-k8s.io/priority-class": "vre-urgent"}},
                "spec": {"suspend": True, "backoffLimit": 0, "template": {"spec": urgent["spec"]}}})
    again = waits_in_the_queue(pid, 120)
    assert again["state"] == "running" and again["attempts"] == 1, again
    kube.wait("the urgent work to run", lambda: kube.get("job", "urgent", urgent_ns).get("status", {}).get("active")
              or kube.get("job", "urgent", urgent_ns).get("status", {}).get("succeeded"), urgent_ns, 120)
    pdone = _job_end(kube, alice, pid, project_ns, 300)
    plog = alice.vre_api("GET", f"/jobs/{pid}/log").json()["text"]
    assert pdone["state"] == "succeeded" and "PREEMPTED JOB DONE; earlier runs moved aside: 1" in plog, (pdone, plog)
    assert kube.get("job", "urgent", urgent_ns)["status"].get("succeeded") == 1   # it ran first, to its end
    requeues = json.loads(rel.exec_hub("vre", "audit", "query", "--json", "--action", "job.requeue", "--user", "alice"))
    assert [e["details"]["reason"] for e in requeues if e["target"] == f"job/{pid}"] == [
        "preempted: the cluster's queue suspended its Kubernetes Job again"]


PICKLED_FUNCTION = """
import base64, cloudpickle
print(base64.b64encode(cloudpickle.dumps((lambda a, b: a * b, (6, 7), {}))).decode())
"""


DATA_FACTS = """
import glob, json, os, socket
mine, other = {mine!r}, {other!r}
files = sorted(glob.glob(f"/data/{{mine}}/**/*.dcm", recursive=True))
facts = {{"datasets": sorted(os.listdir("/data")), "files": len(files),
         "dicm": open(files[0], "rb").read(132)[128:] == b"DICM" if files else False,
         "other": os.path.exists(f"/data/{{other}}"), "uid": os.getuid()}}
try:
    open(f"/data/{{mine}}/x", "w")
except OSError as e:
    facts["write"] = e.strerror
status = dict(l.split(":\\t", 1) for l in open("/proc/self/status").read().splitlines() if ":\\t" in l)
facts["cap_eff"], facts["no_new_privs"] = status["CapEff"].strip(), status["NoNewPrivs"].strip()
# a mount of the dataset of its own would escape the observer's marks: no user namespace for that
import ctypes
libc = ctypes.CDLL(None, use_errno=True)
facts["userns"] = "made" if libc.unshare(0x10000000) == 0 else os.strerror(ctypes.get_errno())
# the observers' route of the VRE service, which the session reaches: not without their token
import urllib.error, urllib.request
# (the records of reads, and the word that a worker's reads count for a job from now on)
forged = {{"host-events": {{"node": "n", "events": [{{"action": "dataset.read", "actor": "someone",
                                                    "actor_role": "researcher"}}]}},
          "host-assignments": {{"node": "n", "assignments": [{{"pod_uid": "u", "job": 1, "serial": "1"}}]}}}}
facts["forged"] = {{}}
for route, body in forged.items():
    req = urllib.request.Request(os.environ["VRE_AUDIT_URL"].rsplit("/", 1)[0] + "/" + route,
                                 data=json.dumps(body).encode(), method="POST",
                                 headers={{"Authorization": "vre-observer " + "x" * 43}})
    try:
        facts["forged"][route] = urllib.request.urlopen(req, timeout=10).status
    except urllib.error.HTTPError as e:
        facts["forged"][route] = e.code
s = socket.socket()
s.settimeout(3)
try:
    s.connect(({public!r}, 80))  # the hub's public Service: not among the ports a session may reach
    facts["public"] = "reached"
except OSError as e:
    facts["public"] = type(e).__name__
print(json.dumps(facts))
"""


JOB_FACTS = """
import glob, json, os, socket
files = sorted(glob.glob("/data/lung-ct-screening/**/*.dcm", recursive=True))
facts = {"files": len(files), "dicm": open(files[0], "rb").read(132)[128:] == b"DICM", "uid": os.getuid(),
         "cwd": os.getcwd(), "datasets": sorted(os.listdir("/data"))}
for path in ("/data/lung-ct-screening/x", "/usr/x"):
    try:
        open(path, "w")
        facts[path] = "writable"
    except OSError as e:
        facts[path] = e.strerror
status = dict(l.split(":\t", 1) for l in open("/proc/self/status").read().splitlines() if ":\t" in l)
facts["cap_eff"], facts["no_new_privs"] = status["CapEff"].strip(), status["NoNewPrivs"].strip()
for name, (host, port) in {"public": ($PUBLIC, 80), "hub_api": ($API, 8081)}.items():
    s = socket.socket()
    s.settimeout(3)
    try:
        s.connect((host, port))
        facts[name] = "reached"
    except OSError as e:
        facts[name] = type(e).__name__
json.dump(facts, open("result.json", "w"))
print("JOB DONE", len(files))
"""

#: What the observer of node argv[2] last said of the pod with uid argv[1], from the hub's own database.
NOTED = """
import sys
from vre.jobs import observed
from vre.settings import load
print(*observed.noted(load().vre_db_url, sys.argv[1], sys.argv[2]))
"""

ASK_AGENT = """
import sys, urllib.error, urllib.request
try:
    urllib.request.urlopen(f"http://{sys.argv[1]}:8785/jobs", timeout=10)
    print("answered")
except urllib.error.HTTPError as e:
    print("status", e.code)
except OSError as e:
    print("unreachable", type(e).__name__)
"""


PROJECT = "lung-screening"


def _submit_script(rel, client, filename: str, text: str, **body) -> int:
    """Put ``text`` in the demo project's workspace (the hub's state volume, a node path) as
    ``filename`` and submit it as a small script job; its id."""
    workspace = rel.state_dir / "projects" / PROJECT / "workspace"
    (workspace / filename).write_text(text)
    (workspace / filename).chmod(0o644)
    r = client.vre_api("POST", "/jobs", json={"project": PROJECT, "kind": "script", "target": f"project/{filename}",
                                              "cpu": 0.25, "mem_mb": 256, **body})
    assert r.status_code == 201, r.text
    return r.json()["id"]


def _job_end(kube, client, job_id: int, ns: str, timeout: float = 180) -> dict:
    """The job once it ended (on failure: the pods and events of ``ns``)."""
    def ended():
        j = client.vre_api("GET", f"/jobs/{job_id}").json()
        return j if j["state"] in ("succeeded", "failed", "cancelled", "timed_out") else None
    return kube.wait(f"batch job {job_id} to end", ended, ns, timeout, "pods")


def _batch_job_in_pods(kube, rel, url: str, creds: dict, image: str, outsider_ns: str) -> int:
    """alice's script job on the chart: the engine in the hub pod starts the project's Dask
    scheduler and a worker as pods in the project's namespace; the job reads the dataset and
    writes its result into the workspace; the agent answers the engine's token only, and only
    the hub's pods reach its port. Returns the job's id."""
    project, project_ns = PROJECT, f"{rel.instance}-{PROJECT}"
    public = kube.get("service", f"{rel.name}-proxy", rel.ns)["spec"]["clusterIP"]
    api = kube.get("service", f"{rel.name}-hub", rel.ns)["spec"]["clusterIP"]
    workspace = rel.state_dir / "projects" / project / "workspace"
    alice = HubClient(url, "alice")
    alice.get_token(creds["alice"])
    facts = JOB_FACTS.replace("$PUBLIC", repr(public)).replace("$API", repr(api))
    job_id = _submit_script(rel, alice, "k8s_job.py", facts, name="in a pod")
    t0 = time.monotonic()
    try:
        done = _job_end(kube, alice, job_id, project_ns, 300)
    except BaseException:
        hub_log = kube.run("logs", "-n", rel.ns, f"deploy/{rel.name}-hub", "-c", "hub").stdout
        engine_log = "\n".join(line for line in hub_log.splitlines() if "vre-jobs" in line)
        print("the job engine's log:\n" + engine_log[-6000:])
        raise
    print(f"submit to a job's end in pods (a new scheduler and worker): {time.monotonic() - t0:.1f} s")
    log = alice.vre_api("GET", f"/jobs/{job_id}/log").json()["text"]
    assert done["state"] == "succeeded", (done, log)
    assert "JOB DONE" in log
    facts = json.loads((workspace / "jobs" / str(job_id) / "result.json").read_text())
    assert facts["datasets"] == ["lung-ct-screening"] and facts["files"] > 0 and facts["dicm"], facts
    assert facts["/data/lung-ct-screening/x"] == facts["/usr/x"] == "Read-only file system", facts
    assert facts["cap_eff"] == "0000000000000000" and facts["no_new_privs"] == "1", facts
    assert facts["cwd"] == f"/home/jovyan/project/jobs/{job_id}", facts
    # a worker reaches nothing outside its project: not the hub's public port, not its API
    assert facts["public"] in ("TimeoutError", "ConnectionRefusedError"), facts
    assert facts["hub_api"] in ("TimeoutError", "ConnectionRefusedError"), facts

    pods = json.loads(kube("get", "pods", "-n", project_ns, "-l", "vre.pool=lung-screening", "-o", "json"))["items"]
    by_role = {p["metadata"]["labels"]["vre.role"]: p for p in pods}
    assert set(by_role) == {"scheduler", "worker"}, [p["metadata"]["name"] for p in pods]
    for pod in by_role.values():
        assert pod["spec"]["securityContext"]["runAsUser"] == facts["uid"] >= 1000
        assert pod["spec"]["containers"][0]["image"] == image
        assert pod["spec"]["automountServiceAccountToken"] is False
    scheduler_ip = by_role["scheduler"]["status"]["podIP"]
    # the agent answers the hub pod only with the engine's token, and nothing else reaches it
    assert rel.exec_hub("python3", "-c", ASK_AGENT, scheduler_ip).strip() == "status 401"
    kube.run_pod(outsider_ns, "client", ["sleep", "3600"])
    _expect(kube, outsider_ns, "client", scheduler_ip, 8785, False, "the agent from another namespace")
    _expect(kube, outsider_ns, "client", scheduler_ip, 8787, False, "the scheduler's dashboard from another namespace")

    # a job over its memory is told so: the worker counts the OOM kills in its own cgroup
    oom_id = _submit_script(rel, alice, "k8s_oom.py", 'block = b"x" * (1500 << 20)\nprint("survived", len(block))\n',
                            name="too big")
    oom = _job_end(kube, alice, oom_id, project_ns)
    assert oom["state"] == "failed" and "out of memory" in oom["reason"], oom

    trail = {a: json.loads(rel.exec_hub("vre", "audit", "query", "--json", "--action", a, "--limit", "100"))
             for a in ("job.submit", "job.start", "job.finish")}
    for action, events in trail.items():
        assert any(e["target"] == f"job/{job_id}" and e["actor"] == "alice" for e in events), action
    (start,) = [e for e in trail["job.start"] if e["target"] == f"job/{job_id}"]
    worker = by_role["worker"]
    assert start["details"]["node"] == worker["spec"]["nodeName"], start   # where it ran
    assert start["details"]["pod"] == f"{project_ns}/{worker['metadata']['name']}", start
    # the worker's reads, recorded by the observer on its node, are the job's and alice's
    assert worker["metadata"]["labels"]["vre.reads"] == "observed"

    def job_reads():
        reads = json.loads(rel.exec_hub("vre", "audit", "query", "--json", "--action", "dataset.read",
                                        "--limit", "1000"))
        return [r for r in reads if r["details"].get("job") == job_id]
    reads = wait_until(job_reads, 30, "the job's dataset reads in the trail")
    assert {(r["actor"], r["source"], r["dataset"], r["details"]["node"]) for r in reads} == {
        ("alice", "host", "lung-ct-screening", worker["spec"]["nodeName"])}, reads[:3]
    # the engine handed the job out only once the observer counted the worker's reads as the job's
    # (its word in the hub's database): none of the worker's reads is the project's worker's,
    # although the job opens its first file among its first statements
    notes = kube.get("pod", worker["metadata"]["name"], project_ns)["metadata"]["annotations"]
    said = rel.exec_hub("python3", "-c", NOTED, worker["metadata"]["uid"], worker["spec"]["nodeName"]).split()
    assert said == [notes["vre.audit/job"], notes["vre.audit/job-serial"]], (said, notes)
    assert int(said[0]) in (job_id, oom_id)   # the worker's last job
    everything = json.loads(rel.exec_hub("vre", "audit", "query", "--json", "--action", "dataset.read",
                                         "--limit", "1000"))
    assert {r["details"].get("job") for r in everything if r["session"] == reads[0]["session"]} == {job_id}
    return job_id


CLUSTER_JOB = """
import json, os
from vre_session import jobs
client = jobs.dask_client(workers=1, cpu=0.25, mem_mb=256, max_runtime=300)
seen = client.submit(lambda: sorted(os.listdir("/data"))).result()
print(json.dumps({"address": client.scheduler.address, "data": seen, "job": client.vre_job.id}))
client.close()
"""


REACH = """
import json, socket
r = {}
for name, address in ADDRESSES.items():
    s = socket.socket()
    s.settimeout(3)
    try:
        s.connect((address, 8786))
        r[name] = "connected"
    except OSError as e:
        r[name] = type(e).__name__
    finally:
        s.close()
print(json.dumps(r))
"""


def _cluster_job_from_a_session(kube, rel, url: str, creds: dict) -> None:
    """alice's session pod asks for Dask workers (a cluster job): they are pods of the project's
    pool, her client reaches the scheduler pod's address, the dashboard answers at the session's
    /proxy/8787/, and her cancel removes the workers' pods. Then, from the same session: an
    airlock request from her home and the workspace, and a held job her session cannot reach."""
    project, project_ns = PROJECT, f"{rel.instance}-{PROJECT}"

    def workers() -> set[str]:
        return set(kube("get", "pods", "-n", project_ns, "-l", "vre.pool=lung-screening,vre.role=worker",
                        "-o", "name").split())

    before = workers()
    rel.exec_hub("vre", "project", "set-profile", project, "small", "--cpu", "0.5", "--memory", "1G")  # 2 cores
    alice = HubClient(url, "alice")
    alice.get_token(creds["alice"])
    alice.start(project, timeout=240)
    k = alice.kernel(project)   # open while the dashboard is asked for: its relay is a thread in this kernel
    try:
        r = json.loads(k.check(CLUSTER_JOB, timeout=240).strip().splitlines()[-1])
        assert r["data"] == ["lung-ct-screening"], r
        scheduler = json.loads(kube("get", "pods", "-n", project_ns, "-l", "vre.pool=lung-screening,vre.role=scheduler",
                                    "-o", "json"))["items"][0]
        assert r["address"] == f"tcp://{scheduler['status']['podIP']}:8786", r
        assert workers() - before, "the cluster job's worker is not a pod of the pool"
        page = requests.get(f"{alice.server_url(project)}/proxy/8787/status",
                            headers={"Authorization": f"token {alice.token}"}, timeout=30)
        assert page.status_code == 200 and "Dask" in page.text, page.status_code
        assert alice.vre_api("POST", f"/jobs/{r['job']}/cancel").status_code == 200
        assert _job_end(kube, alice, r["job"], project_ns, 60)["state"] == "cancelled"
        kube.wait("the cancelled cluster job's worker pods gone", lambda: not workers() - before, project_ns, 60)

        # the airlock freezes what she names, from her home (0700, hers) and the workspace: the hub
        # pod reads both although it holds no CAP_DAC_OVERRIDE
        k.check("open('/home/jovyan/k8s-table.csv', 'w').write('case,value\\n1,2\\n')\n"
                "open('/home/jovyan/project/k8s-ws.csv', 'w').write('case,value\\n3,4\\n')")
        r = alice.vre_api("POST", "/airlock/requests", json={
            "project": project, "title": "from a pod", "justification": "test",
            "files": [{"path": "k8s-table.csv"}, {"path": "project/k8s-ws.csv"}]})
        assert r.status_code == 201, r.text
        rid = r.json()["id"]
        check = alice.vre_api("POST", f"/airlock/requests/{rid}/check")
        assert check.status_code == 200 and check.json()["ok"], check.text
        submitted = alice.vre_api("POST", f"/airlock/requests/{rid}/submit")
        assert submitted.status_code == 200 and submitted.json()["state"] == "submitted", submitted.text

        # a held job runs in a namespace of its own: its output in the held folder, its scheduler
        # out of her session's reach while the open one answers
        held_job = "import os\nopen(os.path.join(os.environ['VRE_JOB_OUTPUT'], 'done.txt'), 'w').write('held')\n"
        held_id = _submit_script(rel, alice, "k8s_held.py", held_job, lane="held")
        held_ns = f"{rel.instance}-0held-{PROJECT}"
        held = _job_end(kube, alice, held_id, held_ns)
        assert held["state"] == "succeeded" and held["lane"] == "held", held
        done = rel.state_dir / "projects" / project / "held" / "jobs" / str(held_id) / "done.txt"
        assert done.read_text() == "held"
        held_pods = json.loads(kube("get", "pods", "-n", held_ns, "-l", "vre.pool=lung-screening.held", "-o",
                                    "json"))["items"]
        assert {p["metadata"]["labels"]["vre.role"] for p in held_pods} == {"scheduler", "held"}, held_pods
        held_ip = next(p["status"]["podIP"] for p in held_pods if p["metadata"]["labels"]["vre.role"] == "scheduler")
        reach = k.check(REACH.replace("ADDRESSES", repr({"open": scheduler["status"]["podIP"], "held": held_ip})),
                        timeout=60)
        reached = json.loads(reach.strip().splitlines()[-1])
        assert reached["open"] == "connected" and reached["held"] != "connected", reached
    finally:
        k.close()
        alice.stop(project, timeout=120)


def _a_job_runs_on_through_an_upgrade(kube, rel, url: str, creds: dict, args: list[str]) -> None:
    """``helm upgrade`` replaces the hub pod while a job runs in its worker pod: the new pod's
    engine adopts it (the agent's token is in the hub's secrets on the state volume, not in the
    old pod's run directory), the scheduler pod is the same, and the job ends as it would have."""
    project_ns = f"{rel.instance}-{PROJECT}"
    workspace = rel.state_dir / "projects" / PROJECT / "workspace"
    alice = HubClient(url, "alice")
    alice.get_token(creds["alice"])
    slow = "import time\ntime.sleep(40)\nopen('done.txt', 'w').write('done')\n"
    job_id = _submit_script(rel, alice, "k8s_slow.py", slow, name="through an upgrade")
    kube.wait(f"job {job_id} to start", lambda: alice.vre_api("GET", f"/jobs/{job_id}").json()["started_at"],
              project_ns, 120)

    def scheduler_uid() -> str:
        return json.loads(kube("get", "pods", "-n", project_ns, "-l", "vre.pool=lung-screening,vre.role=scheduler",
                               "-o", "json"))["items"][0]["metadata"]["uid"]

    before, old_hub = scheduler_uid(), rel.hub_pod()["metadata"]["uid"]
    rel.helm("upgrade", rel.name, str(CHART), *args, "--set", "hub.settings.lockout_threshold=6")
    rel.wait_hub_ready(not_uid=old_hub)
    url = rel.url()
    alice = HubClient(url, "alice")
    alice.get_token(creds["alice"])
    done = _job_end(kube, alice, job_id, project_ns)
    assert done["state"] == "succeeded" and done["attempts"] == 1, done
    assert (workspace / "jobs" / str(job_id) / "done.txt").read_text() == "done"
    assert scheduler_uid() == before   # adopted, not started again


def test_demo_sessions_run_in_pods_with_their_data(kube, new_ns, hub_image, notebook_image):
    """Each demo project's session in a pod of the chart on a single node: its dataset (the demo's,
    in the hub's state volume) read-only and readable, the other project's absent, no capabilities,
    a series viewed through the access layer; a batch job in pods of the project's namespace
    (``_batch_job_in_pods``), a cluster job from a session, a job running on through an upgrade;
    and the hub's audit trail recording it all."""
    rel = Release(kube, new_ns("data"), hub_image)
    args = [*rel.args, "--set", f"sessions.image={notebook_image}", "--set", f"hub.state.nodePath={rel.state_dir}",
            "--set-json", 'hub.jupyterhub={"KubernetesSpawner": {"image_pull_policy": "Never", "start_timeout": 180}}']
    try:
        rel.helm("install", rel.name, str(CHART), *args)
        rel.wait_hub_ready()
        url = rel.url()
        public = kube.get("service", f"{rel.name}-proxy", rel.ns)["spec"]["clusterIP"]
        creds = {line.split("\t")[0]: line.split("\t")[2]
                 for line in rel.exec_hub("cat", "/var/lib/vre/secrets/demo-credentials.txt").splitlines()}
        runs = (("alice", "lung-screening", "lung-ct-screening", "prostate-mri"),
                ("bob", "prostate-ai", "prostate-mri", "lung-ct-screening"))
        for user, project, mine, other in runs:
            c = HubClient(url, user)
            c.get_token(creds[user])
            c.start(project, timeout=240)
            k = c.kernel(project)
            facts = json.loads(k.check(DATA_FACTS.format(mine=mine, other=other, public=public),
                                       timeout=120).strip().splitlines()[-1])
            if user == "alice":   # the observer restarts during her session: the gap, and what she reads after
                _restart_the_observer(kube, rel)
                read_after_gap = k.check(READ_LAST.format(mine=mine), timeout=60).strip().splitlines()[-1]
            else:   # he opens files faster than the (held up) observer records them: frozen, nothing lost
                # Held 12 s: a freeze needs more queued than one read of the observer's (8
                # batches, about 21,800 events), and his dataset is small (a round of opens is
                # mostly a fork): 4,000-4,500 opens a second here, so a 3 s hold queued some
                # 13,500 and nothing was frozen (a CI run); 12 s queue twice the threshold
                flood = flood_while_held(k, mine, _observer_pid(rel), seconds=16, hold=(1.5, 13.5))
            k.close()
            assert facts["datasets"] == [mine] and facts["files"] > 0 and facts["dicm"], facts
            assert facts["other"] is False and facts["write"] == "Read-only file system", facts
            assert facts["cap_eff"] == "0000000000000000" and facts["no_new_privs"] == "1", facts
            assert facts["uid"] >= 1000 and facts["public"] in ("TimeoutError", "ConnectionRefusedError"), facts
            assert facts["userns"] == "Operation not permitted" and facts["forged"] == {"host-events": 403, "host-assignments": 403}, facts

            # the viewer through the access layer: a series' metadata and one slice's pixels
            auth = {"Authorization": f"token {c.token}"}
            api = f"{c.server_url(project)}/vre/api/datasets/{mine}"
            series = requests.get(f"{api}/series", params={"limit": 1}, headers=auth, timeout=60).json()["items"][0]
            meta = requests.get(f"{api}/series/{series['series_uid']}", headers=auth, timeout=60).json()
            r = requests.get(f"{api}/series/{series['series_uid']}/slices/0", headers=auth, timeout=60)
            assert r.status_code == 200 and r.headers["Content-Type"].startswith("application/octet-stream")
            assert len(r.content) == meta["rows"] * meta["columns"] * 2, (len(r.content), meta)
            c.stop(project, timeout=120)
            # a second start finds the home the hub made (0700, the member's; the hub pod cannot look in)
            c.start(project, timeout=240)
            c.stop(project, timeout=120)

        _batch_job_in_pods(kube, rel, url, creds, notebook_image, new_ns("out"))
        _cluster_job_from_a_session(kube, rel, url, creds)
        _a_job_runs_on_through_an_upgrade(kube, rel, url, creds, args)
        url = rel.url()

        def trail(*filters: str) -> list[dict]:
            return json.loads(rel.exec_hub("vre", "audit", "query", "--json", "--limit", "1000", *filters))

        starts = {e["actor"]: e for e in trail("--action", "session.start")}
        assert set(starts) == {"alice", "bob"}
        for e in starts.values():
            assert e["details"]["reads_observed"] is True and e["details"]["node"], e
            assert e["details"]["datasets"] in (["lung-ct-screening"], ["prostate-mri"]), e
        # what each kernel read, recorded by the observer on the pod's node (the host's word)
        reads = [r for r in trail("--action", "dataset.read") if r["details"]["role"] == "session"]
        sessions = {e["session"]: e for e in trail("--action", "session.start")}
        assert {r["session"] for r in reads} <= set(sessions), reads[:3]
        for user, e in starts.items():
            mine = [r for r in reads if sessions[r["session"]]["actor"] == user]
            assert mine and {(r["actor"], r["source"], r["dataset"]) for r in mine} == {
                (user, "host", e["details"]["datasets"][0])}, (user, mine[:3])
            assert {r["details"]["node"] for r in mine} == {e["details"]["node"]}
        # and the folders each listed (its glob walked its dataset), from the same observer
        lists = [r for r in trail("--action", "dataset.list") if r["details"]["role"] == "session"]
        for user, e in starts.items():
            mine = [r for r in lists if sessions[r["session"]]["actor"] == user]
            assert "." in {r["details"]["folder"] for r in mine}, (user, mine[:3])
            assert {(r["source"], r["details"]["node"]) for r in mine} == {("host", e["details"]["node"])}
        (alice_start,) = [e for e in sessions.values() if e["actor"] == "alice" and
                          any(r["session"] == e["session"] for r in reads)]
        gaps = [g for g in trail("--action", "audit.gap") if g["session"] == alice_start["session"]]
        assert [(g["source"], g["details"]["what"], g["details"]["user"]) for g in gaps] == [
            ("host", "dataset reads", "alice")], gaps
        assert any(r["target"] == read_after_gap and r["session"] == alice_start["session"] for r in reads), \
            (read_after_gap, [r["target"] for r in reads])
        summaries = trail("--action", "dataset.read_summary")
        assert {s["actor"] for s in summaries if s["source"] == "host"} >= {"alice", "bob"}
        pauses = [p for p in trail("--action", "dataset.read_pause") if p["actor"] == "bob"]
        bob_session = pauses[0]["session"] if pauses else None
        print(f"the flood: {flood}; its pauses: {[p['details'] for p in pauses]}")
        check_pauses(pauses, flood, "bob", "vre-observer")
        assert all(p["details"]["node"] == starts["bob"]["details"]["node"] for p in pauses)
        assert sum(s["details"]["opens"] for s in summaries if s["session"] == bob_session) >= flood["opens"]
        assert not [g for g in trail("--action", "audit.gap") if g["session"] == bob_session]
        views = trail("--action", "dicom.series_view")
        assert {(e["actor"], e["dataset"]) for e in views} >= {("alice", "lung-ct-screening"), ("bob", "prostate-mri")}
        assert all(e["source"] == "session" for e in views)  # reported by the session, over TCP to the hub pod
        assert {e["actor"] for e in trail("--action", "session.stop")} == {"alice", "bob"}
        _only_an_observers_own_pod_speaks_for_its_node(kube, rel)
    finally:
        subprocess.run([str(HELM), "uninstall", rel.name, "--namespace", rel.ns], capture_output=True,
                       env=kube.env, timeout=180)
        rel.cleanup()
