"""The kubernetes backend's translation of a SessionPlan into Kubernetes objects (policy is tested
on the plan; tests/k8s/test_k8s_backend.py applies the same objects to the real test cluster).
Every rendered object is also validated offline against the schemas of the cluster's Kubernetes
release (k8s/build/versions.env) with ``kubernetes-validate --strict``."""

from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import json
import time

import kubernetes_validate
import pytest

from vre.backends.kubernetes import (ACCESS_POD_LABELS, CATALOG_FETCH, CATALOG_TICKET_KEY, GATE_NAME, HUB_POD_LABELS, JOB_SPEC_DIR, JOB_SPEC_KEY,
                                     KUEUE_QUEUE_LABEL, batch_job, kube_job_name, local_queue, READER_PORT, SECRET_ENV,
                                     SESSION_PORT,
                                     KubernetesBackendError, ProjectQuota, batch_pod, check_reads_policy,
                                     island_namespace, namespace_name, network_policies, object_name,
                                     pod_server_args, project_objects, project_quota, run_secret,
                                     catalog_fetched, session_pod, storage_claims)
from vre.backends.plan_spawner import server_command
from vre.catalog import tickets
from vre.claims import pods as claim_pods
from vre.claims.pods import reader_pod, reader_secret
from vre.plan import AGENT_PORT, Mount, SessionPlan, runtime_mounts
from vre.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
K8S_VERSION = next(line.split("=", 1)[1].strip().lstrip("v") for line in
                   (ROOT / "k8s/build/versions.env").read_text().splitlines() if line.startswith("K8S_VERSION="))
IMAGE = "localhost/vre-notebook:latest"
SETTINGS = Settings(state_dir=Path("/st"), run_dir=Path("/run/vre-t"), instance="vre", backend="kubernetes")
RUN = Path("/run/vre-t/sessions/ann-lung")
QUOTA = ProjectQuota(cpu=6.5, mem_mb=12288, gpus=1, pods=5)


def make_plan(**kw) -> SessionPlan:
    base = dict(user="ann", project="lung", profile="small", role="session", session_id="ann-lung",
                uid=200001, gid=300001, cpu=1.5, mem_mb=2048, gpus=0, network="vre-lung", datasets=("ct",),
                mounts=(Mount(Path("/srv/ct"), "/data/ct", True), Mount(Path("/st/cat/ct"), "/opt/vre/catalog/ct", True, "catalog"),
                        Mount(Path("/st/home"), "/home/jovyan", False, "home"),
                        Mount(Path("/st/ws"), "/home/jovyan/project", False, "workspace"),
                        *runtime_mounts("session", RUN, Path("/run/vre-t/hub"))),
                env={"OMP_NUM_THREADS": "2", "VRE_PROJECT": "lung"},
                labels={"vre.user": "ann", "vre.project": "lung", "vre.session": "ann-lung", "vre.role": "session"})
    base.update(kw)
    return SessionPlan(**base)


#: The catalogue listener as the spawner and the job engine give it to a pod (``catalogue_api_url``).
CATALOGUE_API = "http://10.0.0.9:8083/services/vre/api"


def render(plan=None, settings=SETTINGS, **kw):
    plan = plan or make_plan()
    args = dict(image=IMAGE, env={"JUPYTERHUB_API_TOKEN": "secret-token", **plan.env},
                command=[*server_command("python"), *pod_server_args(plan)], catalog_api=CATALOGUE_API)
    args.update(kw)
    return session_pod(settings, plan, **args)


def validate(obj: dict) -> None:
    """Strict schema validation for the cluster's release (unknown fields are errors)."""
    try:
        kubernetes_validate.validate(obj, K8S_VERSION, strict=True)
    except kubernetes_validate.ValidationError as e:
        pytest.fail(f"{obj['kind']} {obj['metadata'].get('name')} is not valid for Kubernetes {K8S_VERSION}: "
                    f"{e.path}: {e.message}")


def mounts_by_path(pod) -> dict[str, dict]:
    return {m["mountPath"]: m for m in pod["spec"]["containers"][0]["volumeMounts"]}


def volume(pod, name) -> dict:
    return next(v for v in pod["spec"]["volumes"] if v["name"] == name)


def test_validation_is_strict_and_can_fail():
    pod = render()
    pod["spec"]["containers"][0]["securityContext"]["runAsRoot"] = True  # a typo of runAsNonRoot
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(pod, K8S_VERSION, strict=True)


@pytest.mark.parametrize("settings", [
    SETTINGS,
    SETTINGS.replace(k8s_dataset_volume="pvc", k8s_storage="pvc"),
    SETTINGS.replace(k8s_dataset_volume="nfs", k8s_nfs_server="nfs.example.org"),
], ids=["hostPath", "pvc", "nfs"])
def test_every_rendered_object_is_valid_for_the_clusters_release(settings, tmp_path):
    plan = make_plan(gpus=1)
    settings = settings.replace(k8s_gpu_node_selector={"nvidia.com/gpu.present": "true"}, state_dir=tmp_path)
    for obj in [*project_objects(settings, plan, QUOTA), render(plan, settings),
                run_secret(settings, plan, {"passwd": "p", "group": "g"}, {"VRE_AUDIT_TOKEN": "t"})]:
        validate(obj)


def test_dataset_and_catalog_read_only_home_and_workspace_writable():
    pod = render()
    mounts = mounts_by_path(pod)
    data = mounts["/data/ct"]
    assert data["readOnly"] is True and data["recursiveReadOnly"] == "IfPossible"
    assert volume(pod, data["name"])["hostPath"] == {"path": "/srv/ct", "type": "Directory"}
    assert mounts["/opt/vre/catalog/ct"]["readOnly"] is True
    assert volume(pod, mounts["/home/jovyan"]["name"])["hostPath"]["path"] == "/st/home"
    assert volume(pod, mounts["/home/jovyan/project"]["name"])["hostPath"]["path"] == "/st/ws"
    writable = sorted(p for p, m in mounts.items() if not m.get("readOnly"))
    assert writable == ["/home/jovyan", "/home/jovyan/project", "/run", "/run/vre/session", "/run/vre/spool",
                        "/tmp", "/var/tmp"]
    # every plan mount is rendered but the hub's socket directory (sessions reach the hub over TCP)
    plan_targets = {m.target for m in make_plan().mounts if m.kind != "hub"}
    assert plan_targets <= set(mounts) and "/run/vre/hub" not in mounts
    assert set(mounts) - plan_targets == {"/tmp", "/var/tmp", "/run"}


def test_dataset_volume_kinds():
    pvc = render(settings=SETTINGS.replace(k8s_dataset_volume="pvc", k8s_storage="pvc"))
    mounts = mounts_by_path(pvc)
    assert volume(pvc, mounts["/data/ct"]["name"])["persistentVolumeClaim"] == {"claimName": "dataset-ct", "readOnly": True}
    assert volume(pvc, mounts["/home/jovyan"]["name"])["persistentVolumeClaim"] == {"claimName": "home-ann"}
    assert volume(pvc, mounts["/home/jovyan/project"]["name"])["persistentVolumeClaim"] == {"claimName": "workspace"}
    assert mounts["/opt/vre/catalog/ct"]["subPath"] == "ct" and mounts["/opt/vre/catalog/ct"]["readOnly"] is True
    nfs = render(settings=SETTINGS.replace(k8s_dataset_volume="nfs", k8s_nfs_server="nfs.example.org"))
    assert volume(nfs, mounts_by_path(nfs)["/data/ct"]["name"])["nfs"] == {
        "server": "nfs.example.org", "path": "/srv/ct", "readOnly": True}


def test_host_paths_follow_the_state_volume_onto_the_node():
    """A hub in a pod on a hostPath state volume: what lies in its state directory is mounted
    from that volume's path on the node; other registered paths (a hospital's) stay as they are."""
    def host_paths(pod):
        return {m["mountPath"]: volume(pod, m["name"])["hostPath"]["path"]
                for m in pod["spec"]["containers"][0]["volumeMounts"] if "hostPath" in volume(pod, m["name"])}

    assert host_paths(render())["/home/jovyan"] == "/st/home"   # the hub on the node: its paths
    mapped = host_paths(render(settings=SETTINGS.replace(k8s_node_state_dir="/var/tmp/vre-state")))
    assert mapped["/home/jovyan"] == "/var/tmp/vre-state/home"
    assert mapped["/home/jovyan/project"] == "/var/tmp/vre-state/ws"
    assert mapped["/opt/vre/catalog/ct"] == "/var/tmp/vre-state/cat/ct"
    assert mapped["/data/ct"] == "/srv/ct"  # registered outside the state directory


def test_storage_claims_match_the_pods_volumes():
    assert storage_claims(SETTINGS, make_plan()) == []  # hostPath: the hub prepares the directories
    settings = SETTINGS.replace(k8s_storage="pvc", k8s_storage_class="rwx-files", k8s_home_size="5Gi")
    claims = {c["metadata"]["name"]: c for c in storage_claims(settings, make_plan())}
    assert set(claims) == {"home-ann", "workspace"}
    pod = render(settings=settings)
    claimed = {v["persistentVolumeClaim"]["claimName"] for v in pod["spec"]["volumes"] if "persistentVolumeClaim" in v}
    assert set(claims) <= claimed  # the pod mounts what the hub creates (datasets and catalogue: the operator's)
    home, ws = claims["home-ann"], claims["workspace"]
    assert home["spec"] == {"accessModes": ["ReadWriteMany"], "resources": {"requests": {"storage": "5Gi"}},
                            "storageClassName": "rwx-files"}
    assert ws["spec"]["resources"]["requests"]["storage"] == "50Gi"
    assert home["metadata"]["namespace"] == ws["metadata"]["namespace"] == "vre-lung"
    assert home["metadata"]["labels"] == {"vre.instance": "vre", "vre.project": "lung", "vre.claim": "home",
                                          "vre.user": "ann"}
    assert "vre.user" not in ws["metadata"]["labels"]  # the project's, not a member's
    for claim in claims.values():
        validate(claim)
    no_class = storage_claims(SETTINGS.replace(k8s_storage="pvc"), make_plan())
    assert all("storageClassName" not in c["spec"] for c in no_class)  # the cluster's default class


def test_under_claims_a_sessions_catalogue_comes_from_the_hub_through_its_first_container(tmp_path):
    """The hub's catalogue folder is not on the nodes: the session pod's init container fetches
    its mounted datasets' catalogue files from the catalogue listener with the start's ticket
    into a scratch volume, which the server sees read-only where it always does."""
    settings = SETTINGS.replace(k8s_storage="pvc", k8s_dataset_volume="pvc", state_dir=tmp_path)   # its ticket key
    plan = make_plan()
    pod = render(plan, settings=settings)
    validate(pod)
    spec, (server,) = pod["spec"], pod["spec"]["containers"]
    (init,) = spec["initContainers"]
    assert init["command"][:3] == ["python3", "-I", "-c"] and init["command"][-3:] == ["--root", "/catalog", "ct"]
    assert init["command"][3] == CATALOG_FETCH.read_text()   # source the hub passes: nothing from a researcher
    # the start's ticket, from the run's Secret, for this container alone (never the session's token)
    env = {e["name"]: e for e in init["env"]}
    assert set(env) == {"VRE_API_URL", "VRE_CATALOG_TICKET"}
    assert env["VRE_API_URL"]["value"] == CATALOGUE_API
    ref = env["VRE_CATALOG_TICKET"]["valueFrom"]["secretKeyRef"]
    assert ref["key"] == CATALOG_TICKET_KEY and ref["name"] == run_secret(settings, plan, {}, {})["metadata"]["name"]
    assert not any(CATALOG_TICKET_KEY in json.dumps(c) for c in spec["containers"])
    assert tickets.check(settings, run_secret(settings, plan, {}, {})["stringData"][CATALOG_TICKET_KEY]) == (
        "lung", "session", ("ct",), None)
    assert init["resources"]["limits"]["cpu"] == "250m"
    small = render(replace(plan, cpu=0.1), settings=settings)["spec"]["initContainers"][0]
    assert small["resources"]["requests"]["cpu"] == "100m"   # within what the project's quota counts
    assert init["securityContext"]["runAsUser"] == 200001 and init["securityContext"]["readOnlyRootFilesystem"]
    assert init["volumeMounts"] == [{"name": "catalog", "mountPath": "/catalog"}]
    (mount,) = [m for m in server["volumeMounts"] if m["name"] == "catalog"]
    assert mount == {"name": "catalog", "mountPath": "/opt/vre/catalog/ct", "readOnly": True, "subPath": "ct"}
    assert {"name": "catalog", "emptyDir": {"sizeLimit": "8Gi"}} in spec["volumes"]
    claims = {v["persistentVolumeClaim"]["claimName"] for v in spec["volumes"] if "persistentVolumeClaim" in v}
    assert "catalog" not in claims and "dataset-ct" in claims
    # on a single node the catalogue stays a volume of its own; under claims a pod needs the address
    assert "initContainers" not in render(plan)["spec"] and not catalog_fetched(SETTINGS, plan)
    with pytest.raises(KubernetesBackendError, match="no address of the VRE service"):
        render(plan, settings=settings, catalog_api="")


def test_under_claims_batch_pods_fetch_their_catalogue_as_sessions_do(tmp_path):
    """A Dask worker's pod, a held worker's and a Kubernetes Job's fetch their catalogue files as a
    session's does, from the address the engine gives, with a ticket naming their role (what a
    grant mounts depends on it; a Job's also names its job, whose end ends the ticket), and do not
    start without them (a job must not read an empty catalogue as "no series"). Their namespace
    lets the project's pods reach the catalogue port, which serves nothing else, and only under
    claims. A scheduler mounts no catalogue."""
    settings = SETTINGS.replace(k8s_storage="pvc", k8s_dataset_volume="pvc", state_dir=tmp_path)
    for role, pool in (("worker", "lung"), ("held", "lung.held")):
        base = batch_plan(role, pool, f"vre-{pool}")
        worker = base.for_worker(f"{pool}-worker-1", cpu=1.0, mem_mb=512, gpus=0)
        pod = batch_pod(settings, worker, image=IMAGE, env=worker.env, command=["dask", "worker"],
                        catalog_api=CATALOGUE_API)
        validate(pod)
        (init,) = pod["spec"]["initContainers"]
        assert {e["name"]: e.get("value") for e in init["env"]}["VRE_API_URL"] == CATALOGUE_API
        assert init["command"][-4:] == ["--root", "/catalog", "--required", "ct"]
        assert init["terminationMessagePolicy"] == "FallbackToLogsOnError"
        secret = run_secret(settings, worker, {}, worker.env)
        assert tickets.check(settings, secret["stringData"][CATALOG_TICKET_KEY]) == ("lung", role, ("ct",), None)
        with pytest.raises(KubernetesBackendError, match="no address of the VRE service"):
            batch_pod(settings, worker, image=IMAGE, env=worker.env, command=["dask", "worker"])
        scheduler = base.for_scheduler(f"{pool}-scheduler", Path("/run/vre-t/doorbell/wake.sock"))
        assert not catalog_fetched(settings, scheduler)
    assert "--required" not in render(make_plan(), settings=settings)["spec"]["initContainers"][0]["command"]
    job = batch_job(settings, worker, pod, job_id=7, attempt=1, user="ann")
    validate(job)
    assert job["spec"]["template"]["spec"]["initContainers"] == pod["spec"]["initContainers"]
    ticket = tickets.check(settings, run_secret(settings, worker, {}, {}, job=7)["stringData"][CATALOG_TICKET_KEY],
                           now=time.time() + tickets.BATCH_TTL_S - 60)   # good while the Job may wait in a queue
    assert ticket.job == 7 and ticket.role == "held"
    # a Dask worker may wait that long for a node too; a session's start may not
    later = time.time() + tickets.BATCH_TTL_S - 60
    tickets.check(settings, run_secret(settings, worker, {}, {})["stringData"][CATALOG_TICKET_KEY], now=later)
    with pytest.raises(ValueError, match="expired"):
        tickets.check(settings, run_secret(settings, make_plan(), {}, {})["stringData"][CATALOG_TICKET_KEY],
                      now=time.time() + 2 * tickets.TTL_S)
    # the policy: the project's pods that fetch (sessions, Dask workers, held workers, Jobs' pods)
    # to the catalogue port alone; the VRE service's port stays the sessions'
    pols = {p["metadata"]["name"]: p["spec"] for p in network_policies(settings, make_plan())}
    rule = pols["pods-to-catalogue"]
    assert rule["podSelector"] == {"matchExpressions": [{"key": "vre.role", "operator": "In",
                                                         "values": ["session", "worker", "held", "job"]}]}
    assert rule["egress"] == [{"to": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "vre"}},
                                       "podSelector": {"matchLabels": HUB_POD_LABELS}}],
                               "ports": [{"protocol": "TCP", "port": 8083}]}]
    assert pols["sessions-to-hub"]["podSelector"] == {"matchLabels": {"vre.role": "session"}}
    assert "pods-to-catalogue" not in {p["metadata"]["name"] for p in network_policies(SETTINGS, make_plan())}


def test_identity_and_hardening():
    pod = render()
    spec, (c,) = pod["spec"], pod["spec"]["containers"]
    assert spec["securityContext"] == {"runAsNonRoot": True, "runAsUser": 200001, "runAsGroup": 300001,
                                       "fsGroup": 300001, "fsGroupChangePolicy": "OnRootMismatch",
                                       "seccompProfile": {"type": "RuntimeDefault"}}
    sc = c["securityContext"]
    assert sc["runAsNonRoot"] is True and sc["runAsUser"] == 200001 and sc["runAsGroup"] == 300001
    assert sc["allowPrivilegeEscalation"] is False and sc["privileged"] is False
    assert sc["capabilities"] == {"drop": ["ALL"]} and sc["readOnlyRootFilesystem"] is True
    assert spec["automountServiceAccountToken"] is False and spec["enableServiceLinks"] is False
    assert "hostNetwork" not in spec and "hostPID" not in spec and "hostIPC" not in spec
    assert spec["restartPolicy"] == "Never"


def test_labels_limits_and_environment():
    pod = render()
    c = pod["spec"]["containers"][0]
    assert pod["metadata"]["namespace"] == "vre-lung" and pod["metadata"]["name"] == "ann-lung"
    assert pod["metadata"]["labels"] == {"vre.user": "ann", "vre.project": "lung", "vre.session": "ann-lung",
                                         "vre.role": "session", "vre.instance": "vre"}
    assert c["resources"] == {"requests": {"cpu": "1500m", "memory": "2048Mi"},
                              "limits": {"cpu": "1500m", "memory": "2048Mi"}}
    env = {e["name"]: e for e in c["env"]}
    assert env["OMP_NUM_THREADS"] == {"name": "OMP_NUM_THREADS", "value": "2"}
    # credentials come from the session's Secret, never in the pod spec
    assert env["JUPYTERHUB_API_TOKEN"]["valueFrom"]["secretKeyRef"] == {"name": "ann-lung-run",
                                                                       "key": "JUPYTERHUB_API_TOKEN"}
    assert "secret-token" not in str(pod)
    assert c["ports"] == [{"name": "http", "containerPort": SESSION_PORT, "protocol": "TCP"}]
    assert c["command"][:2] == ["/bin/sh", "-c"] and "umask 0002" in c["command"][2]
    assert "vre_session.serve" in c["command"] and f"--ServerApp.port={SESSION_PORT}" in c["command"]
    assert not [a for a in c["command"] if a.startswith("--sock=")]


def test_gpus_are_a_count_with_node_selector_and_toleration():
    settings = SETTINGS.replace(k8s_gpu_node_selector={"nvidia.com/gpu.present": "true"})
    pod = render(make_plan(gpus=2), settings)
    assert pod["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "2"
    assert "nvidia.com/gpu" not in pod["spec"]["containers"][0]["resources"]["requests"]
    assert pod["spec"]["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert pod["spec"]["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    cpu_only = render(settings=settings)
    assert "nodeSelector" not in cpu_only["spec"] and "tolerations" not in cpu_only["spec"]
    assert "nvidia.com/gpu" not in cpu_only["spec"]["containers"][0]["resources"]["limits"]


def test_a_profiles_node_selector_adds_to_the_gpu_nodes():
    settings = SETTINGS.replace(k8s_gpu_node_selector={"nvidia.com/gpu.present": "true"})
    h200 = (("nvidia.com/gpu.product", "NVIDIA-H200"),)
    pod = render(make_plan(gpus=1, node_selector=h200), settings)
    assert pod["spec"]["nodeSelector"] == {"nvidia.com/gpu.present": "true", "nvidia.com/gpu.product": "NVIDIA-H200"}
    big = render(make_plan(node_selector=(("vre.example.org/memory", "large"),)), settings)
    assert big["spec"]["nodeSelector"] == {"vre.example.org/memory": "large"}  # no GPU: only the profile's
    validate(pod)


def test_images_off_the_allow_list_are_refused():
    with pytest.raises(KubernetesBackendError, match="'evil/miner:1' is not on this deployment's allow-list"):
        render(image="evil/miner:1")
    allowed = SETTINGS.replace(k8s_image_allowlist=f"{IMAGE},reg.example/gpu:1")
    assert render(settings=allowed, image="reg.example/gpu:1")["spec"]["containers"][0]["image"] == "reg.example/gpu:1"


def test_datasets_need_the_observer_or_the_explicit_opt_in_to_unobserved_reads():
    """A run with datasets is refused unless the per-node observer records its reads
    (k8s_read_observer) or the deployment accepted unobserved reads; a run without datasets is not."""
    with pytest.raises(KubernetesBackendError, match="k8s_unobserved_reads = true"):
        check_reads_policy(SETTINGS, make_plan())
    check_reads_policy(SETTINGS, make_plan(datasets=()))
    check_reads_policy(SETTINGS.replace(k8s_unobserved_reads=True), make_plan())
    check_reads_policy(SETTINGS.replace(k8s_read_observer=True), make_plan())


def test_with_the_observer_a_pod_with_datasets_starts_behind_its_gate():
    """The container's first process is the gate shell ($0 vre-gate), which waits for the
    observer's signal before the server's command; the metadata says what the observer's records
    will say. Without datasets, or without the observer, there is no gate."""
    observed = SETTINGS.replace(k8s_read_observer=True, k8s_gate_seconds=45)
    pod = render(settings=observed, audit_session="ann-lung-7f3a")
    (c,) = pod["spec"]["containers"]
    assert c["command"][:2] == ["/bin/sh", "-c"] and c["command"][3] == GATE_NAME
    assert c["command"][2].startswith("trap 'g=1' USR1;") and "within 45 s" in c["command"][2]
    assert c["command"][2].endswith('umask 0002 && exec "$@"')
    assert c["command"][4:] == [*server_command("python"), *pod_server_args(make_plan())]
    assert pod["metadata"]["labels"]["vre.reads"] == "observed"
    assert pod["metadata"]["annotations"] == {"vre.audit/session": "ann-lung-7f3a",
                                              "vre.audit/datasets": '[{"slug": "ct", "target": "/data/ct"}]'}
    validate(pod)
    for plain in (render(settings=observed, plan=make_plan(datasets=(), mounts=())), render()):
        assert plain["spec"]["containers"][0]["command"][3] == "vre-session"
        assert "vre.reads" not in plain["metadata"]["labels"] and "annotations" not in plain["metadata"]
    worker = batch_pod(observed, make_plan(role="worker", session_id="lung-worker-1"), image=IMAGE, env={},
                       command=["dask", "worker"])
    assert worker["spec"]["containers"][0]["command"][3] == GATE_NAME
    assert worker["metadata"]["annotations"]["vre.audit/session"] == "lung-worker-1"


def test_run_secret_holds_files_and_credentials_only():
    plan = make_plan()
    secret = run_secret(SETTINGS, plan, {"passwd": "jovyan:x:200001", "group": "lung:x:300001"},
                        {"JUPYTERHUB_API_TOKEN": "a", "VRE_AUDIT_TOKEN": "b", "OMP_NUM_THREADS": "2"})
    assert set(secret["stringData"]) == {"session.json", "passwd", "group", "JUPYTERHUB_API_TOKEN", "VRE_AUDIT_TOKEN"}
    assert set(SECRET_ENV) >= {"JUPYTERHUB_API_TOKEN", "VRE_AUDIT_TOKEN"}
    pod = render(plan)
    mounts = mounts_by_path(pod)
    assert mounts["/etc/passwd"]["subPath"] == "passwd" and mounts["/etc/passwd"]["readOnly"] is True
    assert volume(pod, mounts["/etc/vre/session.json"]["name"])["secret"]["items"] == [
        {"key": "session.json", "path": "session.json"}]


def test_namespace_and_network_policies():
    ns, *rest = project_objects(SETTINGS, make_plan(), QUOTA)
    assert ns["metadata"]["name"] == "vre-lung"
    assert ns["metadata"]["labels"]["vre.project"] == "lung" and ns["metadata"]["labels"]["vre.instance"] == "vre"
    assert ns["metadata"]["labels"]["pod-security.kubernetes.io/warn"] == "restricted"
    pvc_only = project_objects(SETTINGS.replace(k8s_dataset_volume="pvc", k8s_storage="pvc"), make_plan(), QUOTA)[0]
    assert pvc_only["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
    pols = {p["metadata"]["name"]: p["spec"] for p in network_policies(SETTINGS, make_plan())}
    assert pols["default-deny"] == {"podSelector": {}, "policyTypes": ["Ingress", "Egress"]}
    assert pols["project-internal"]["ingress"] == [{"from": [{"podSelector": {}}]}]
    assert pols["project-internal"]["egress"] == [{"to": [{"podSelector": {}}]}]
    hub_ns = {"matchLabels": {"kubernetes.io/metadata.name": "vre"}}
    (rule,) = pols["hub-to-sessions"]["ingress"]
    assert rule["from"] == [{"namespaceSelector": hub_ns, "podSelector": {"matchLabels": HUB_POD_LABELS}},
                            {"namespaceSelector": hub_ns, "podSelector": {"matchLabels": ACCESS_POD_LABELS}}]
    assert rule["ports"] == [{"protocol": "TCP", "port": SESSION_PORT}]
    (rule,) = pols["hub-to-agent"]["ingress"]   # the job engine (in the hub's pod) to the batch agent
    assert pols["hub-to-agent"]["podSelector"] == {"matchLabels": {"vre.role": "scheduler"}}
    assert rule == {"from": [{"namespaceSelector": hub_ns, "podSelector": {"matchLabels": HUB_POD_LABELS}}],
                    "ports": [{"protocol": "TCP", "port": AGENT_PORT}]}
    (rule,) = pols["hub-to-readers"]["ingress"]   # the airlock (in the hub's pod) to a claims reader
    assert pols["hub-to-readers"]["podSelector"] == {"matchLabels": {"vre.role": "reader"}}
    assert rule == {"from": [{"namespaceSelector": hub_ns, "podSelector": {"matchLabels": HUB_POD_LABELS}}],
                    "ports": [{"protocol": "TCP", "port": READER_PORT}]}
    (rule,) = pols["sessions-to-hub"]["egress"]
    assert rule == {"to": [{"namespaceSelector": hub_ns, "podSelector": {"matchLabels": HUB_POD_LABELS}}],
                    "ports": [{"protocol": "TCP", "port": 8081}, {"protocol": "TCP", "port": 8082}]}
    # no rule anywhere opens an ipBlock (node, internet) or DNS
    assert "ipBlock" not in str(pols) and "53" not in str(pols)


def test_resource_quota_from_the_project():
    project = SimpleNamespace(members=[1, 2, 3], job_cpu=2.0, job_mem_mb=8192, job_gpus=1, job_slots=2,
                              profiles=[SimpleNamespace(cpu=1.0, mem_mb=2048, gpus=0),
                                        SimpleNamespace(cpu=4.0, mem_mb=16384, gpus=1)])
    quota = project_quota(project)
    # sessions (3 members at the largest profile), the batch quota with each worker pod's own
    # overhead (2 slots of up to 16 pods, a cluster job's, x 384 MiB), the scheduler (1 CPU, 1 GiB),
    # and a claims reader per member (0.25 CPU, 128 MiB)
    assert quota == ProjectQuota(cpu=15.75, mem_mb=71040, gpus=4, pods=39)
    rq = project_objects(SETTINGS, make_plan(), quota)[-1]
    assert rq["kind"] == "ResourceQuota" and rq["metadata"]["namespace"] == "vre-lung"
    assert rq["spec"]["hard"] == {"pods": "39", "requests.cpu": "15750m", "limits.cpu": "15750m",
                                  "requests.memory": "71040Mi", "limits.memory": "71040Mi",
                                  "requests.nvidia.com/gpu": "4"}


def batch_plan(role: str = "worker", pool: str = "lung", network: str = "vre-lung") -> SessionPlan:
    """A pool's base plan (``build_plan(role=worker|held)``): the project's service uid, its data."""
    return make_plan(user="ann", role=role, session_id=f"{pool}-worker", uid=300001, pool=pool, network=network,
                     run_dir=Path(f"/run/vre-t/jobs/{pool}"),
                     mounts=tuple(m for m in make_plan().mounts if m.kind in ("dataset", "catalog", "home", "workspace")),
                     labels={"vre.user": "ann", "vre.project": "lung", "vre.session": f"{pool}-worker", "vre.role": role})


def test_batch_pods_render_from_the_pools_plan():
    """A pool's worker and scheduler are the session's pod rendering (identity, read-only root,
    data read-only, limits) with the Dask command; the scheduler's agent token comes from its
    Secret; the pods carry the pool, not a user (a warm worker serves any member)."""
    worker = batch_plan().for_worker("lung-worker-1", cpu=1.0, mem_mb=1408, gpus=0)
    pod = batch_pod(SETTINGS, worker, image=IMAGE, env=worker.env, command=["dask", "worker", "tcp://10.244.0.9:8786"])
    validate(pod)
    (c,) = pod["spec"]["containers"]
    assert c["name"] == "worker" and "ports" not in c and "readinessProbe" not in c
    assert c["command"][-3:] == ["dask", "worker", "tcp://10.244.0.9:8786"]
    assert c["resources"]["limits"] == {"cpu": "1000m", "memory": "1408Mi"} == c["resources"]["requests"]
    assert c["securityContext"]["capabilities"] == {"drop": ["ALL"]} and c["securityContext"]["readOnlyRootFilesystem"]
    assert pod["spec"]["securityContext"]["runAsUser"] == 300001 and pod["spec"]["automountServiceAccountToken"] is False
    assert mounts_by_path(pod)["/data/ct"]["readOnly"] is True
    labels = pod["metadata"]["labels"]
    assert labels["vre.pool"] == "lung" and labels["vre.role"] == "worker" and "vre.user" not in labels
    assert pod["metadata"]["namespace"] == "vre-lung" and pod["metadata"]["name"] == "batch-lung-worker-1"
    assert volume(pod, mounts_by_path(pod)["/etc/passwd"]["name"])["secret"]["secretName"] == "batch-lung-worker-1-run"

    scheduler = batch_plan().for_scheduler("lung-scheduler", Path("/run/vre-t/jobs/wake.sock"))
    env = {**scheduler.env, "VRE_AGENT_PORT": str(AGENT_PORT), "VRE_AGENT_TOKEN": "t" * 43}
    pod = batch_pod(SETTINGS, scheduler, image=IMAGE, env=env, command=["dask", "scheduler"])
    validate(pod)
    (c,) = pod["spec"]["containers"]
    assert c["name"] == "scheduler" and {p["containerPort"] for p in c["ports"]} == {8786, 8787, AGENT_PORT}
    assert c["readinessProbe"]["tcpSocket"] == {"port": AGENT_PORT}
    assert c["resources"]["requests"] == {"cpu": "100m", "memory": "256Mi"}   # it bursts to its limits
    token = next(e for e in c["env"] if e["name"] == "VRE_AGENT_TOKEN")
    assert token == {"name": "VRE_AGENT_TOKEN", "valueFrom": {"secretKeyRef": {"name": "batch-lung-scheduler-run",
                                                                                  "key": "VRE_AGENT_TOKEN"}}}
    assert "t" * 43 not in str(pod) and run_secret(SETTINGS, scheduler, {}, env)["stringData"]["VRE_AGENT_TOKEN"] == "t" * 43
    assert not [m for m in mounts_by_path(pod) if m.startswith("/data")]   # a scheduler never has data


def test_a_worker_started_for_a_job_names_it_to_the_observer_from_the_start():
    """Its pod carries the job and its user in the observer's annotations, so the observer marks
    it for that job before anything runs in it; a warm worker started for none names none."""
    observed = SETTINGS.replace(k8s_read_observer=True)
    render = lambda plan: batch_pod(observed, plan, image=IMAGE, env=plan.env, command=["dask", "worker"])  # noqa: E731
    born = render(batch_plan().for_worker("lung-worker-1", cpu=1.0, mem_mb=512, gpus=0, job=(42, "ben")))
    validate(born)
    assert (born["metadata"]["annotations"]["vre.audit/job"], born["metadata"]["annotations"]["vre.audit/job-user"]) \
        == ("42", "ben")
    warm = render(batch_plan().for_worker("lung-worker-2", cpu=1.0, mem_mb=512, gpus=0))
    assert "vre.audit/job" not in warm["metadata"]["annotations"]
    assert "annotations" not in batch_pod(SETTINGS, batch_plan().for_worker("lung-worker-3", cpu=1.0, mem_mb=512, gpus=0,
                                                                            job=(42, "ben")),
                                          image=IMAGE, env={}, command=["dask", "worker"])["metadata"]   # no observer


def test_a_gpu_worker_asks_the_cluster_for_a_count_on_the_gpu_nodes_and_its_scheduler_for_none():
    settings = SETTINGS.replace(k8s_gpu_node_selector={"nvidia.com/gpu.present": "true"})
    base = replace(batch_plan(), gpus=2)   # a GPU profile's pool
    worker = base.for_worker("lung-worker-1", cpu=4.0, mem_mb=8192, gpus=2)
    pod = batch_pod(settings, worker, image=IMAGE, env=worker.env, command=["dask", "worker"])
    validate(pod)
    (c,) = pod["spec"]["containers"]
    assert c["resources"]["limits"]["nvidia.com/gpu"] == "2" and "nvidia.com/gpu" not in c["resources"]["requests"]
    assert pod["spec"]["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert pod["spec"]["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    scheduler = base.for_scheduler("lung-scheduler", Path("/run/vre-t/jobs/wake.sock"))
    pod = batch_pod(settings, scheduler, image=IMAGE, env={**scheduler.env, "VRE_AGENT_TOKEN": "t" * 43},
                    command=["dask", "scheduler"])
    assert "nvidia.com/gpu" not in str(pod["spec"]["containers"][0]["resources"]) and "nodeSelector" not in pod["spec"]


def test_a_held_pool_has_a_namespace_no_project_can_have():
    held = batch_plan("held", "lung.held", "vre-lung.held").for_worker("lung.held-worker-1", cpu=1.0, mem_mb=512, gpus=0)
    assert namespace_name(held) == "vre-0held-lung"
    pod = batch_pod(SETTINGS, held, image=IMAGE, env=held.env, command=["dask", "worker"])
    validate(pod)
    assert pod["metadata"]["namespace"] == "vre-0held-lung" and pod["metadata"]["labels"]["vre.pool"] == "lung.held"
    assert pod["metadata"]["name"] == object_name("batch-lung.held-worker-1")   # a valid name, never a session's
    # a project slug starts with a letter: "0held-..." is never a project's namespace
    assert island_namespace("vre-held-lung", "held-lung") == "vre-held-lung" != namespace_name(held)
    for obj in project_objects(SETTINGS, held, QUOTA):
        validate(obj)
        assert obj["metadata"].get("namespace", obj["metadata"]["name"]) == "vre-0held-lung"


def test_names_are_valid_and_distinct():
    assert object_name("ann-lung") == "ann-lung"
    odd = object_name("ann_b-lung")
    assert odd.startswith("ann-b-lung-") and odd != object_name("ann-b-lung")
    plan = make_plan(user="ann_b", session_id="ann_b-lung",
                     labels={"vre.user": "ann_b", "vre.project": "lung", "vre.session": "ann_b-lung", "vre.role": "session"})
    validate(render(plan))
    with pytest.raises(KubernetesBackendError, match="not a valid namespace name"):
        render(make_plan(network="vre-Lung"))


def test_unknown_mount_kinds_are_refused():
    plan = make_plan(mounts=(Mount(Path("/x"), "/x", False, "device"),))
    with pytest.raises(KubernetesBackendError, match="mount kind 'device'"):
        render(plan)


def test_access_layer_forwards_to_a_pods_address_or_a_socket_and_nothing_else():
    from vre.access.routes import SessionRoute, upstream_of

    assert upstream_of("http+unix://%2Frun%2Fvre%2Fs%2Fsock") == ("/run/vre/s/sock", "http://session")
    assert upstream_of(f"http://10.244.0.7:{SESSION_PORT}") == ("", f"http://10.244.0.7:{SESSION_PORT}")
    for bad in ("https://10.244.0.7:8888", "http://10.244.0.7", "http://10.244.0.7:8888/elsewhere", "file:///etc",
                "http://10.244.0.7:8888/?x=1", ""):
        assert upstream_of(bad) is None, bad
    route = SessionRoute("/user/ann/lung/", "ann", "lung", "", {"session": "ann-lung"}, base="http://10.244.0.7:8888")
    assert route.base == "http://10.244.0.7:8888"


def test_sessions_reach_the_vre_service_by_socket_or_by_the_hub_pods_port():
    import http.client

    from vre_session.relay import _UnixHTTPConnection, connection

    conn, path = connection("http+unix://%2Frun%2Fvre%2Fhub%2Fvre.sock/services/vre/api/audit/events")
    assert isinstance(conn, _UnixHTTPConnection) and conn.socket_path == "/run/vre/hub/vre.sock"
    assert path == "/services/vre/api/audit/events"
    conn, path = connection("http://10.96.0.20:8082/services/vre/api")
    assert type(conn) is http.client.HTTPConnection and (conn.host, conn.port) == ("10.96.0.20", 8082)
    assert path == "/services/vre/api"
    with pytest.raises(ValueError, match="not a VRE service URL"):
        connection("https://example.org/x")


def test_spawner_points_sessions_at_the_vre_services_tcp_port():
    from vre.backends.kubernetes import KubernetesSpawner
    from vre.backends.plan_spawner import PlanSpawner

    sp = KubernetesSpawner(settings=SETTINGS.replace(k8s_service_port=9092))
    sp.hub_connect_url = "http://10.96.0.20:8081"
    base = {"VRE_API_URL": "http+unix://x/services/vre/api", "VRE_AUDIT_URL": "http+unix://x/a", "OMP_NUM_THREADS": "2"}
    original = PlanSpawner._environment
    PlanSpawner._environment = lambda self, plan: dict(base)
    try:
        env = sp._environment(make_plan())
    finally:
        PlanSpawner._environment = original
    assert env["VRE_API_URL"] == "http://10.96.0.20:9092/services/vre/api"
    assert env["VRE_AUDIT_URL"] == "http://10.96.0.20:9092/services/vre/api/audit/events"
    assert env["OMP_NUM_THREADS"] == "2"


def test_claims_reader_pod():
    """The airlock's reader of a member's claims (vre.claims): read-only mounts of exactly her
    home and the workspace, as her uid, restricted, no service-account token, its token from its
    Secret, the reader's source in its command, and the allow-listed session image."""
    settings = SETTINGS.replace(k8s_storage="pvc", k8s_dataset_volume="pvc")
    pod = reader_pod(settings, make_plan(), "reader-ann-0a1b2c", image=IMAGE)
    validate(pod)
    secret = reader_secret(pod, "t" * 43)
    validate(secret)
    assert secret["metadata"]["name"] == "reader-ann-0a1b2c" and secret["stringData"] == {"token": "t" * 43}
    spec, (c,) = pod["spec"], pod["spec"]["containers"]
    assert pod["metadata"]["namespace"] == "vre-lung"
    assert pod["metadata"]["labels"]["vre.role"] == "reader" and pod["metadata"]["labels"]["vre.user"] == "ann"
    assert "vre.session" not in pod["metadata"]["labels"]
    assert spec["automountServiceAccountToken"] is False and spec["restartPolicy"] == "Never"
    assert c["securityContext"]["runAsUser"] == 200001 and c["securityContext"]["runAsGroup"] == 300001
    assert c["securityContext"]["readOnlyRootFilesystem"] and c["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    assert not c["securityContext"]["allowPrivilegeEscalation"]
    assert c["command"][:3] == ["python3", "-I", "-c"] and "def serve(" in c["command"][3]
    assert c["command"][4:] == ["--root", "/claims", "--port", str(READER_PORT), "--idle", str(claim_pods.IDLE_S)]
    assert c["env"] == [{"name": "VRE_READER_TOKEN",
                         "valueFrom": {"secretKeyRef": {"name": "reader-ann-0a1b2c", "key": "token"}}}]
    assert {m["mountPath"]: m.get("readOnly", False) for m in c["volumeMounts"]} == {
        "/claims/home": True, "/claims/workspace": True, "/tmp": False}
    claims = {v["name"]: v["persistentVolumeClaim"] for v in spec["volumes"] if "persistentVolumeClaim" in v}
    assert claims == {"home": {"claimName": "home-ann", "readOnly": True},
                      "workspace": {"claimName": "workspace", "readOnly": True}}
    assert c["resources"]["requests"] == c["resources"]["limits"] == {"cpu": "250m", "memory": "128Mi"}
    with pytest.raises(KubernetesBackendError, match="allow-list"):
        reader_pod(settings, make_plan(), "r", image="elsewhere/python:3")


def test_batch_pools_on_claims_have_homes_of_their_own():
    """With claims a pool's pods mount the project's workspace (held ones the held jobs' claim) and
    a home claim of the pool's, never a member's home; the hub makes those claims with the pool's
    first pod. The held pool's claims reader mounts only the held jobs' claim, as the pool's uid."""
    settings = SETTINGS.replace(k8s_storage="pvc", k8s_dataset_volume="pvc", k8s_home_size="5Gi")
    data = tuple(m for m in make_plan().mounts if m.kind in ("dataset", "catalog"))
    lung = Path("/st/projects/lung")
    shared = replace(batch_plan(), mounts=(*data, Mount(lung / "worker-home", "/home/jovyan", False, "home"),
                                           Mount(lung / "workspace", "/home/jovyan/project", False, "workspace")))
    held = replace(batch_plan("held", "lung.held", "vre-lung.held"), mounts=(
        *data, Mount(lung / "held-home", "/home/jovyan", False, "home"), Mount(lung / "held", "/held", False, "held")))
    expect = [(shared, "lung-worker-1", "vre-lung", {"worker-home": "5Gi", "workspace": "50Gi"}),
              (held, "lung.held-worker-1", "vre-0held-lung", {"held-home": "5Gi", "held": "50Gi"})]
    for plan, name, ns, sizes in expect:
        worker = plan.for_worker(name, cpu=1.0, mem_mb=512, gpus=0)
        claims = storage_claims(settings, worker)
        assert {c["metadata"]["name"]: c["spec"]["resources"]["requests"]["storage"] for c in claims} == sizes
        assert {c["metadata"]["namespace"] for c in claims} == {ns}
        assert all("vre.user" not in c["metadata"]["labels"] for c in claims)   # the pool's, not a member's
        for claim in claims:
            validate(claim)
        pod = batch_pod(settings, worker, image=IMAGE, env=worker.env, command=["dask", "worker"],
                        catalog_api=CATALOGUE_API)
        validate(pod)
        claimed = {v["persistentVolumeClaim"]["claimName"] for v in pod["spec"]["volumes"] if "persistentVolumeClaim" in v}
        assert set(sizes) <= claimed and "home-ann" not in claimed and "catalog" not in claimed
        scheduler = plan.for_scheduler(plan.pool + "-scheduler", Path("/run/vre-t/doorbell/wake.sock"))
        assert {c["metadata"]["name"] for c in storage_claims(settings, scheduler)} == set(sizes) - {"held"}  # no data
    reader = reader_pod(settings, held, "reader-lung-held-0a1b2c", image=IMAGE)
    validate(reader)
    (c,) = reader["spec"]["containers"]
    assert reader["metadata"]["namespace"] == "vre-0held-lung" and c["securityContext"]["runAsUser"] == 300001
    assert {m["mountPath"]: m.get("readOnly", False) for m in c["volumeMounts"]} == {"/claims/held": True, "/tmp": False}
    assert [v["persistentVolumeClaim"] for v in reader["spec"]["volumes"] if "persistentVolumeClaim" in v] == [
        {"claimName": "held", "readOnly": True}]


def test_a_job_that_needs_no_dask_is_a_kubernetes_job_around_the_worker_pod():
    """``k8s_job_runner = "jobs"``: one Job per start, its pod the worker's rendering (identity,
    read-only root, data read-only, limits, no token) running the task on the spec from the run's
    Secret; one try, the run-time limit as its deadline; with the observer, the job and its user
    are in the pod's metadata from the start. With a Kueue queue it is created suspended and
    labelled with it; without, it starts at once."""
    observed = SETTINGS.replace(k8s_read_observer=True, k8s_job_runner="jobs")
    worker = batch_plan().for_worker("job-42-1", cpu=1.0, mem_mb=1408, gpus=0)
    command = ["python3", "-m", "vre_session.jobs.task", f"{JOB_SPEC_DIR}/{JOB_SPEC_KEY}"]
    pod = batch_pod(observed, worker, image=IMAGE, env=worker.env, command=command)
    job = batch_job(observed, worker, pod, job_id=42, attempt=1, user="ann")
    validate(job)
    assert job["metadata"]["name"] == kube_job_name(42, 1) == "vre-job-42-1"
    assert job["metadata"]["namespace"] == "vre-lung" and job["spec"]["suspend"] is False
    assert KUEUE_QUEUE_LABEL not in job["metadata"]["labels"]
    # one try; no deadline of the cluster's: it would count the time the pod waits for a node
    assert job["spec"]["backoffLimit"] == 0 and "activeDeadlineSeconds" not in job["spec"]
    template = job["spec"]["template"]
    labels = template["metadata"]["labels"]
    assert (labels["vre.role"], labels["vre.job"], labels["vre.attempt"], labels["vre.pool"]) == ("job", "42", "1", "lung")
    assert template["metadata"]["annotations"]["vre.audit/job"] == "42"
    assert template["metadata"]["annotations"]["vre.audit/job-user"] == "ann"
    spec = template["spec"]
    (c,) = spec["containers"]
    assert c["command"][3] == GATE_NAME and c["command"][-4:] == command
    assert spec["restartPolicy"] == "Never" and spec["automountServiceAccountToken"] is False
    assert c["securityContext"]["readOnlyRootFilesystem"] and c["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    assert spec["securityContext"]["runAsUser"] == 300001
    mounts = {m["mountPath"]: m for m in c["volumeMounts"]}
    assert mounts["/data/ct"]["readOnly"] is True and mounts[JOB_SPEC_DIR]["readOnly"] is True
    source = next(v for v in spec["volumes"] if v["name"] == mounts[JOB_SPEC_DIR]["name"])["secret"]
    assert source["secretName"] == "batch-job-42-1-run" and source["items"] == [{"key": JOB_SPEC_KEY, "path": JOB_SPEC_KEY}]
    assert c["resources"]["limits"] == c["resources"]["requests"] == {"cpu": "1000m", "memory": "1408Mi"}

    queued = observed.replace(k8s_kueue_queue="vre-batch")
    job = batch_job(queued, worker, pod, job_id=42, attempt=2, user="ann")
    validate(job)
    assert job["spec"]["suspend"] is True and job["metadata"]["labels"][KUEUE_QUEUE_LABEL] == "vre-batch"
    assert job["metadata"]["name"] == "vre-job-42-2"
    queue = local_queue(queued.replace(k8s_kueue_cluster_queue="hospital-gpus"), "vre-lung")
    assert queue == {"apiVersion": "kueue.x-k8s.io/v1beta1", "kind": "LocalQueue",
                     "metadata": {"name": "vre-batch", "namespace": "vre-lung", "labels": {"vre.instance": "vre"}},
                     "spec": {"clusterQueue": "hospital-gpus"}}
    # a GPU job: a count the cluster places, on the GPU nodes, as a GPU worker's
    gpu_settings = queued.replace(k8s_gpu_node_selector={"nvidia.com/gpu.present": "true"})
    gpu_worker = batch_plan().for_worker("job-43-1", cpu=1.0, mem_mb=1408, gpus=1)
    gpu_job = batch_job(gpu_settings, gpu_worker, batch_pod(gpu_settings, gpu_worker, image=IMAGE, env=gpu_worker.env,
                                                            command=command), job_id=43, attempt=1, user="ann")
    validate(gpu_job)
    gpu_spec = gpu_job["spec"]["template"]["spec"]
    assert gpu_spec["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert gpu_spec["nodeSelector"] == {"nvidia.com/gpu.present": "true"} and gpu_spec["tolerations"]
    # unobserved reads (no observer): no gate and no audit annotations
    plain = SETTINGS.replace(k8s_unobserved_reads=True, k8s_job_runner="jobs")
    pod = batch_pod(plain, worker, image=IMAGE, env=worker.env, command=command)
    job = batch_job(plain, worker, pod, job_id=42, attempt=1, user="ann")
    validate(job)
    assert "annotations" not in job["spec"]["template"]["metadata"]
