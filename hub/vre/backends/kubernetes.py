"""The kubernetes backend: each (user, project) session is a pod in its project's namespace.

Rendering of a SessionPlan (pure functions, no client; unit-tested and validated offline against
the cluster's schemas):

- a project is an island: its namespace (``plan.network``, labelled), a default-deny
  NetworkPolicy for ingress and egress, and allows for traffic inside the project, for the hub
  and access-layer pods (by label, in ``k8s_hub_namespace``) to the session port, and for
  sessions to the hub's API and the VRE service's session port on the hub's pods, nothing else
  (no DNS: the hub gives sessions addresses);
  a ResourceQuota from the project's sessions and batch quota (:func:`project_quota`);
- filesystem: the image's root read-only, emptyDirs for /tmp, /var/tmp and /run; datasets and
  their catalogue records read-only (``k8s_dataset_volume``: hostPath, NFS or a ROX claim), home
  and workspace read-write (``k8s_storage``: hostPath or claims); the manifest, passwd and group
  from a per-session Secret; the server's socket directory and the audit spool as emptyDirs. The
  hub's socket directory is not mounted: sessions reach the hub over TCP;
- identity: the account's uid and the project's gid (``runAsUser``/``runAsGroup``/``fsGroup``),
  non-root, no privilege escalation, all capabilities dropped, seccomp RuntimeDefault (the
  runtimes' default profiles refuse new namespaces without CAP_SYS_ADMIN: no user namespaces, as
  ``seccomp.py`` ensures for docker),
  no service-account token, no service links;
- limits: requests = limits for CPU and memory (the kernel OOM-kills inside the pod), GPUs as a
  count (``nvidia.com/gpu``; Kubernetes picks the devices) with ``k8s_gpu_node_selector`` and the
  NVIDIA taint's toleration; only images on the allow-list (``settings.k8s_images``) render.

Why not ``KubeSpawner``: its ``start``/``poll``/``stop`` build the pod from its own traits (image,
volumes, profile_list, ...) and its own form, while :class:`PlanSpawner` owns the lifecycle and
decides everything from the plan. Subclassing it would leave hundreds of configurable traits that
are silently ignored or, worse, half-applied. This backend uses kubespawner 7 where it helps: its
shared, loop-bound API client (``kubespawner.clients.shared_client``). Config loading is its own
(:func:`load_client_config`): kubespawner's reads only ``$KUBECONFIG`` or the service account, and
the hub's kubeconfig is a setting.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import math
import re
import shutil
from dataclasses import dataclass, replace
from pathlib import Path
from urllib.parse import urlsplit

from jupyterhub.spawner import Spawner
from kubernetes_asyncio import config as k8s_config
from kubernetes_asyncio import watch
from kubernetes_asyncio.client import ApiClient, BatchV1Api, CoreV1Api, CustomObjectsApi, NetworkingV1Api
from kubernetes_asyncio.client.exceptions import ApiException
from kubespawner.clients import shared_client
from sqlalchemy import select
from traitlets import CaselessStrEnum, Unicode, default

from ..catalog import tickets
from ..hostview.podgate import (AUDIT_DATASETS, AUDIT_JOB, AUDIT_JOB_USER, AUDIT_SESSION, GATE_EXIT, GATE_NAME,
                               OBSERVED_LABEL, gate_script)
from ..jobs.pools import DASHBOARD_PORT, MAX_CLUSTER_WORKERS, SCHEDULER_LIMITS, SCHEDULER_PORT, WORKER_OVERHEAD_MB
from ..plan import AGENT_PORT, AUDIT_INGEST_PATH, HOME, MANIFEST, SERVICE_API_PATH, SessionPlan, held_pool
from ..settings import Settings, k8s_images, k8s_reads_allowed
from .gate import dataset_mounts
from .host import prepare_held_folder, prepare_home_and_workspace
from .plan_spawner import PlanSpawner, server_args, server_command

#: The session server's port in its pod (the access layer's target: ``http://<pod IP>:PORT``).
SESSION_PORT = 8888
#: Port of a project's claims reader (``vre.claims``), which only the hub's pods may reach.
READER_PORT = 8890
#: What a claims reader may use (requests = limits); the project's quota holds one per member.
READER_LIMITS = {"cpu": 0.25, "mem_mb": 128}
#: Labels of the pods in ``k8s_hub_namespace`` that may reach sessions (the chart sets them):
#: the hub (JupyterHub checks its servers) and the access layer (it forwards /user/...).
HUB_POD_LABELS = {"vre.component": "hub"}
ACCESS_POD_LABELS = {"vre.component": "access"}
GPU_RESOURCE = "nvidia.com/gpu"
#: Secret keys that carry credentials into a session's environment (never in the pod spec).
SECRET_ENV = ("JUPYTERHUB_API_TOKEN", "JPY_API_TOKEN", "VRE_AUDIT_TOKEN", "VRE_AGENT_TOKEN")
_DNS_LABEL = re.compile(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?")
_LABEL_VALUE = re.compile(r"([A-Za-z0-9]([A-Za-z0-9_.-]{0,61}[A-Za-z0-9])?)?")


class KubernetesBackendError(RuntimeError):
    """The cluster refused something a session needs, or the plan cannot be rendered; the message
    says what to fix."""


# --- names and labels --------------------------------------------------------------------------
def object_name(name: str) -> str:
    """A DNS label for ``name`` (account names may hold '_'): as is when valid, else made valid
    and suffixed with a hash of the original, so two names never meet."""
    if _DNS_LABEL.fullmatch(name):
        return name
    safe = re.sub(r"[^a-z0-9-]", "-", name.lower()).strip("-")[:54] or "x"
    return f"{safe}-{hashlib.sha256(name.encode()).hexdigest()[:8]}"


def island_namespace(network: str, project: str) -> str:
    """The namespace of an island (``plan.island_name``): the project's is its name; a held pool's
    (``<instance>-<slug>.held``, not a DNS label) is ``<instance>-0held-<slug>``, which no
    project's can be (slugs start with a letter)."""
    held = f"-{held_pool(project)}"
    name = f"{network[:-len(held)]}-0held-{project}" if network.endswith(held) else network
    if not _DNS_LABEL.fullmatch(name):
        raise KubernetesBackendError(f"project island {name!r} is not a valid namespace name; project "
                                     "slugs and the instance name must be lowercase letters, digits and '-'")
    return name


def namespace_name(plan: SessionPlan) -> str:
    return island_namespace(plan.network, plan.project)


def check_labels(out: dict[str, str]) -> dict[str, str]:
    for key, value in out.items():
        if not _LABEL_VALUE.fullmatch(value):
            raise KubernetesBackendError(f"label {key}={value!r} is not a valid Kubernetes label value")
    return out


def labels(settings: Settings, plan: SessionPlan) -> dict[str, str]:
    return check_labels({**plan.labels, "vre.instance": settings.instance})


def check_image(settings: Settings, image: str) -> str:
    """``image`` if the deployment allows it, else a clear refusal."""
    allowed = k8s_images(settings)
    if image not in allowed:
        raise KubernetesBackendError(f"image {image!r} is not on this deployment's allow-list "
                                     f"({', '.join(allowed) or 'empty'}); an admin adds it to k8s_image_allowlist")
    return image


# --- the project: namespace, network policies, quota -------------------------------------------
def check_reads_policy(settings: Settings, plan: SessionPlan) -> None:
    """Refuse a run with datasets when nothing outside it would record its reads: the VRE records
    every dataset read from outside the run, on Kubernetes by the per-node observer
    (``k8s_read_observer``), unless the deployment opted in to unobserved reads."""
    if plan.datasets and not k8s_reads_allowed(settings):
        raise KubernetesBackendError(
            f"project {plan.project} has datasets, and this deployment runs no observer of dataset reads on its "
            "nodes (k8s_read_observer; the chart's observer.enabled), so nothing outside the run would record "
            "which dataset files it reads. An admin deploys the observer, or accepts unobserved reads "
            "explicitly with k8s_unobserved_reads = true (logged, and recorded in each session's start)")


def reads_observed(settings: Settings, plan: SessionPlan) -> bool:
    """Whether ``plan``'s pod starts behind the gate of the per-node observer."""
    return bool(plan.datasets) and settings.k8s_read_observer


@dataclass(frozen=True)
class ProjectQuota:
    """What all of a project's pods together may request (its namespace's ResourceQuota)."""
    cpu: float
    mem_mb: int
    gpus: int
    pods: int


def project_quota(project) -> ProjectQuota:
    """A project's quota from the database row: one session per member at the largest profile,
    plus the batch queue's quota (``job_*``: slots, CPUs, memory, GPUs) with each worker pod's
    own overhead, its scheduler pod, and a claims reader per member (``READER_LIMITS``)."""
    profiles = list(project.profiles) or []
    members = len(project.members)
    top = lambda attr: max((getattr(p, attr) for p in profiles), default=0)  # noqa: E731
    # a slot holds one worker pod, or a cluster job's up to MAX_CLUSTER_WORKERS (its CPU and memory
    # split among them, each with its own overhead): the engine's admission is the tight bound
    batch_pods = project.job_slots * MAX_CLUSTER_WORKERS
    batch_mb = project.job_mem_mb + batch_pods * WORKER_OVERHEAD_MB + SCHEDULER_LIMITS["mem_mb"]
    readers = members * READER_LIMITS["cpu"], members * READER_LIMITS["mem_mb"]
    return ProjectQuota(cpu=members * top("cpu") + project.job_cpu + SCHEDULER_LIMITS["cpu"] + readers[0],
                        mem_mb=members * top("mem_mb") + batch_mb + readers[1],
                        gpus=members * top("gpus") + project.job_gpus, pods=2 * members + batch_pods + 1)


def read_project_quota(settings: Settings, slug: str) -> ProjectQuota:
    """:func:`project_quota` of the project ``slug`` as the database has it now."""
    from .. import db as vdb

    with vdb.session_scope(settings.vre_db_url) as db:
        return project_quota(db.scalar(select(vdb.Project).where(vdb.Project.slug == slug)))


def cpu_quantity(cpu: float) -> str:
    return f"{max(1, round(cpu * 1000))}m"


def namespace_object(settings: Settings, plan: SessionPlan) -> dict:
    """The project's namespace. Pod Security: the session pods meet ``restricted`` in every
    field but the volume types, which allow no hostPath or NFS: with claims only it is enforced,
    else it is warned and audited."""
    enforce = "restricted" if settings.k8s_dataset_volume == "pvc" and settings.k8s_storage == "pvc" else "privileged"
    return {"apiVersion": "v1", "kind": "Namespace",
            "metadata": {"name": namespace_name(plan),
                         "labels": {"vre.instance": settings.instance, "vre.project": plan.project,
                                    "pod-security.kubernetes.io/enforce": enforce,
                                    "pod-security.kubernetes.io/warn": "restricted",
                                    "pod-security.kubernetes.io/audit": "restricted"}}}


def policy(ns: str, name: str, spec: dict) -> dict:
    return {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": {"name": name, "namespace": ns, "labels": {"vre.policy": name}}, "spec": spec}


def hub_peer(settings: Settings, pod_labels: dict) -> dict:
    return {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": settings.k8s_hub_namespace}},
            "podSelector": {"matchLabels": dict(pod_labels)}}


def network_policies(settings: Settings, plan: SessionPlan) -> list[dict]:
    """Default deny both ways, then: the project's pods with each other; the hub and the access
    layer to the session port of its sessions; the hub (its job engine) to the agent port of the
    batch scheduler; the hub to the port of its claims readers (``vre.claims``); its sessions to
    the hub's API and the VRE service's session port (audit ingest, jobs, airlock) on the hub's
    pods; under ``k8s_storage = "pvc"`` its sessions' and batch workers' pods to the catalogue
    port, where their first container fetches their catalogue files (``catalog_container``) and
    nothing else is served (a held job's code finds no API there). Nothing else: no other project,
    no node address, no internet, no DNS. (A held pool's namespace has the same policies and no
    sessions.)"""
    ns = namespace_name(plan)
    sessions = {"matchLabels": {"vre.role": "session"}}
    fetchers = [policy(ns, "pods-to-catalogue", {
        "podSelector": {"matchExpressions": [{"key": "vre.role", "operator": "In", "values": list(FETCHING_ROLES)}]},
        "policyTypes": ["Egress"], "egress": [{"to": [hub_peer(settings, HUB_POD_LABELS)],
                                               "ports": [{"protocol": "TCP", "port": settings.k8s_catalogue_port}]}]})]
    return [
        policy(ns, "default-deny", {"podSelector": {}, "policyTypes": ["Ingress", "Egress"]}),
        policy(ns, "project-internal", {"podSelector": {}, "policyTypes": ["Ingress", "Egress"],
                                         "ingress": [{"from": [{"podSelector": {}}]}],
                                         "egress": [{"to": [{"podSelector": {}}]}]}),
        policy(ns, "hub-to-sessions", {
            "podSelector": sessions, "policyTypes": ["Ingress"],
            "ingress": [{"from": [hub_peer(settings, HUB_POD_LABELS), hub_peer(settings, ACCESS_POD_LABELS)],
                         "ports": [{"protocol": "TCP", "port": SESSION_PORT}]}]}),
        policy(ns, "hub-to-agent", {
            "podSelector": {"matchLabels": {"vre.role": "scheduler"}}, "policyTypes": ["Ingress"],
            "ingress": [{"from": [hub_peer(settings, HUB_POD_LABELS)],
                         "ports": [{"protocol": "TCP", "port": AGENT_PORT}]}]}),
        policy(ns, "hub-to-readers", {
            "podSelector": {"matchLabels": {"vre.role": "reader"}}, "policyTypes": ["Ingress"],
            "ingress": [{"from": [hub_peer(settings, HUB_POD_LABELS)],
                         "ports": [{"protocol": "TCP", "port": READER_PORT}]}]}),
        policy(ns, "sessions-to-hub", {
            "podSelector": sessions, "policyTypes": ["Egress"],
            "egress": [{"to": [hub_peer(settings, HUB_POD_LABELS)],
                        "ports": [{"protocol": "TCP", "port": settings.k8s_hub_port},
                                  {"protocol": "TCP", "port": settings.k8s_service_port}]}]}),
        *(fetchers if settings.k8s_storage == "pvc" else []),
    ]


#: ``vre.role`` of the pods that fetch catalogue files under claims: sessions, Dask workers of the
#: open and the held pools, Kubernetes Jobs' pods (``batch_job``). The chart's policy on the hub
#: pod names the same roles.
FETCHING_ROLES = ("session", "worker", "held", "job")


def resource_quota(plan: SessionPlan, quota: ProjectQuota) -> dict:
    hard = {"pods": str(quota.pods), "requests.cpu": cpu_quantity(quota.cpu), "limits.cpu": cpu_quantity(quota.cpu),
            "requests.memory": f"{quota.mem_mb}Mi", "limits.memory": f"{quota.mem_mb}Mi",
            f"requests.{GPU_RESOURCE}": str(quota.gpus)}
    return {"apiVersion": "v1", "kind": "ResourceQuota",
            "metadata": {"name": "project", "namespace": namespace_name(plan)}, "spec": {"hard": hard}}


def project_objects(settings: Settings, plan: SessionPlan, quota: ProjectQuota) -> list[dict]:
    """Everything a project's namespace holds before its first pod (created and kept by the hub)."""
    return [namespace_object(settings, plan), *network_policies(settings, plan), resource_quota(plan, quota)]


# --- the session pod --------------------------------------------------------------------------
def node_path(settings: Settings, path: Path) -> str:
    """``path`` as the node sees it: under ``k8s_node_state_dir`` when it lies in the hub's state
    directory and the hub runs in a pod on a hostPath state volume; else unchanged."""
    if settings.k8s_node_state_dir:
        try:
            return str(Path(settings.k8s_node_state_dir) / Path(path).relative_to(settings.state_dir))
        except ValueError:
            pass
    return str(path)


def _host_path(settings: Settings, path: Path) -> dict:
    return {"hostPath": {"path": node_path(settings, path), "type": "Directory"}}


def _dataset_source(settings: Settings, mount) -> dict:
    slug = mount.target.rsplit("/", 1)[-1]
    if settings.k8s_dataset_volume == "nfs":
        return {"nfs": {"server": settings.k8s_nfs_server, "path": str(mount.source), "readOnly": True}}
    if settings.k8s_dataset_volume == "pvc":
        return {"persistentVolumeClaim": {"claimName": object_name(f"dataset-{slug}"), "readOnly": True}}
    return _host_path(settings, mount.source)


def claim_name(plan: SessionPlan, mount) -> str:
    """The claim a storage mount of ``plan`` is on (``k8s_storage = "pvc"``), in the plan's
    namespace: a member's home ``home-<user>``; the batch pool's home (``worker-home``, or
    ``held-home`` in the held pool's namespace, named for its folder: never a member's); the
    project's ``workspace``; the held jobs' folder ``held``. (Catalogue files are fetched:
    ``catalog_fetched``.)"""
    if mount.kind == "home":
        return object_name(f"home-{plan.user}" if plan.role == "session" else mount.source.name)
    if mount.kind not in ("workspace", "held"):
        raise KubernetesBackendError(f"no claim holds {mount.kind} mount {mount.target}")
    return mount.kind


def storage_source(settings: Settings, plan: SessionPlan, mount) -> dict:
    """Home, workspace or held jobs' folder: the host path (single node) or the project's claim;
    catalogue records: the host path."""
    if settings.k8s_storage == "pvc":
        return {"persistentVolumeClaim": {"claimName": claim_name(plan, mount),
                                          **({"readOnly": True} if mount.readonly else {})}}
    return _host_path(settings, mount.source)


#: The storage mounts that are claims the hub makes.
CLAIM_KINDS = ("home", "workspace", "held")


def storage_claims(settings: Settings, plan: SessionPlan) -> list[dict]:
    """The claims a run of ``plan`` mounts (``k8s_storage = "pvc"``): created by the hub when
    missing and never deleted by it (a member's files outlive sessions and members; a held job's
    outputs wait for the airlock). Homes are ``k8s_home_size``, the workspace and the held
    folder ``k8s_workspace_size``."""
    if settings.k8s_storage != "pvc":
        return []
    out = []
    for m in plan.mounts:
        if m.kind not in CLAIM_KINDS:
            continue
        size = settings.k8s_home_size if m.kind == "home" else settings.k8s_workspace_size
        spec = {"accessModes": ["ReadWriteMany"], "resources": {"requests": {"storage": size}}}
        if settings.k8s_storage_class:
            spec["storageClassName"] = settings.k8s_storage_class
        member = m.kind == "home" and plan.role == "session"
        meta_labels = {"vre.instance": settings.instance, "vre.project": plan.labels["vre.project"],
                       "vre.claim": m.kind, **({"vre.user": plan.labels["vre.user"]} if member else {})}
        out.append({"apiVersion": "v1", "kind": "PersistentVolumeClaim",
                    "metadata": {"name": claim_name(plan, m), "namespace": namespace_name(plan),
                                 "labels": meta_labels},
                    "spec": spec})
    return out


async def ensure_claim(client: ApiClient, claim: dict) -> bool:
    """Create ``claim`` unless it exists (then it is kept as it is, data and all); whether it was
    made now."""
    ns, name = claim["metadata"]["namespace"], claim["metadata"]["name"]
    try:
        await CoreV1Api(client).create_namespaced_persistent_volume_claim(ns, claim)
        return True
    except ApiException as e:
        if e.status != 409:
            error = KubernetesBackendError(f"the cluster refused claim {ns}/{name}: {api_reason(e)}")
            error.status = e.status   # a busy API server (429, 5xx) is not a refusal
            raise error from None
        return False


def identity_files(plan: SessionPlan) -> dict[str, str]:
    """/etc/passwd and /etc/group of a session pod: jovyan is the account's uid, the project its group."""
    return {"passwd": (f"jovyan:x:{plan.uid}:{plan.gid}:{plan.user}:{HOME}:/bin/bash\n"
                       "nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n"),
            "group": f"{plan.project}:x:{plan.gid}:jovyan\nnogroup:x:65534:\n"}


def run_secret_name(session_id: str) -> str:
    return object_name(f"{session_id}-run")


def batch_id(run: str) -> str:
    """What a batch run's objects are named from: ``batch-<run>``. A session's are named from its
    id, ``<user>-<project>``: user ``scheduler`` in project ``scheduler`` would otherwise share the
    name of that project's scheduler."""
    return f"batch-{run}"


def run_id(plan: SessionPlan) -> str:
    """What the run's pod and Secret are named from (``object_name``, ``run_secret_name``)."""
    return plan.session_id if plan.role == "session" else batch_id(plan.session_id)


def run_secret(settings: Settings, plan: SessionPlan, files: dict[str, str], env: dict[str, str],
               job: int | None = None) -> dict:
    """The session's runtime files (manifest, passwd, group) and its credentials (``SECRET_ENV``):
    a Secret, so neither appears in the pod spec. With fetched catalogue files, the catalogue
    ticket of this start (``vre.catalog.tickets``: its role's lifetime; a Kubernetes Job's, named
    by ``job``, ends with its job)."""
    data = {"session.json": json.dumps(plan.manifest(), indent=2), **files}
    data.update({k: v for k, v in env.items() if k in SECRET_ENV})
    if catalog_fetched(settings, plan):   # for the pod's first container alone (catalog_container)
        data[CATALOG_TICKET_KEY] = tickets.make(settings, plan.project, catalog_slugs(plan), role=plan.role, job=job)
    return {"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
            "metadata": {"name": run_secret_name(run_id(plan)), "namespace": namespace_name(plan),
                         "labels": labels(settings, plan)},
            "stringData": data}


def locked_down(uid: int, gid: int) -> dict:
    """The securityContext of every container the hub runs in a project's or the catalogue's
    namespace: that uid and gid, no privileges, no capabilities, a read-only root, seccomp."""
    return {"runAsNonRoot": True, "runAsUser": uid, "runAsGroup": gid, "allowPrivilegeEscalation": False,
            "privileged": False, "capabilities": {"drop": ["ALL"]}, "readOnlyRootFilesystem": True,
            "seccompProfile": {"type": "RuntimeDefault"}}


#: The scratch volume of a pod's catalogue files under claims, and its size.
CATALOG_VOLUME, CATALOG_SIZE = "catalog", "8Gi"
#: The program that fills it (standard library only; ``vre.catalog`` imports this module).
CATALOG_FETCH = Path(__file__).resolve().parents[1] / "catalog" / "fetch.py"
#: The run Secret's key of the fetcher's ticket (``vre.catalog.tickets``).
CATALOG_TICKET_KEY = "catalogue-ticket"


def catalog_fetched(settings: Settings, plan: SessionPlan) -> bool:
    """Whether the pod's first container fetches its catalogue files from the hub
    (``vre.catalog.fetch``): under claims the hub's catalogue folder is not on the node, for a
    session's pod and a batch worker's alike (a scheduler mounts no catalogue)."""
    return settings.k8s_storage == "pvc" and any(m.kind == "catalog" for m in plan.mounts)


def catalog_slugs(plan: SessionPlan) -> list[str]:
    return [m.target.rsplit("/", 1)[-1] for m in plan.mounts if m.kind == "catalog"]


def catalog_container(settings: Settings, plan: SessionPlan, *, image: str, pull_policy: str, api_url: str) -> dict:
    """The init container that fetches ``plan``'s catalogue files from the catalogue listener at
    ``api_url`` with the start's ticket (in the run's Secret, which no other container of the pod
    reads): within the project's quota (its profiles may ask for less than a quarter CPU). A
    session starts without a catalogue it could not have; a batch pod does not start."""
    if not api_url:
        raise KubernetesBackendError(f"no address of the VRE service's catalogue port for {plan.session_id}'s catalogue files")
    limits = {"cpu": cpu_quantity(min(0.25, plan.cpu)), "memory": "128Mi"}
    ticket = {"secretKeyRef": {"name": run_secret_name(run_id(plan)), "key": CATALOG_TICKET_KEY}}
    return {"name": "catalogue", "image": image, "imagePullPolicy": pull_policy, "workingDir": "/",
            "command": ["python3", "-I", "-c", CATALOG_FETCH.read_text(), "--root", "/catalog",
                        *([] if plan.role == "session" else ["--required"]), *catalog_slugs(plan)],
            # a batch pod's failed fetch: its log's last lines are the reason the engine reads
            "terminationMessagePolicy": "FallbackToLogsOnError",
            "env": [{"name": "VRE_API_URL", "value": api_url},
                    {"name": "VRE_CATALOG_TICKET", "valueFrom": ticket}],
            "volumeMounts": [{"name": CATALOG_VOLUME, "mountPath": "/catalog"}],
            "resources": {"requests": dict(limits), "limits": limits},
            "securityContext": locked_down(plan.uid, plan.gid)}


def volumes_and_mounts(settings: Settings, plan: SessionPlan, tmp_size: str = "2Gi") -> tuple[list[dict], list[dict]]:
    """(pod volumes, container volumeMounts): one per plan mount, plus the writable scratch of a
    read-only root. ``hub`` mounts (the hub's socket directory) have no pod counterpart."""
    volumes: list[dict] = []
    mounts: list[dict] = []
    secret = run_secret_name(run_id(plan))
    fetched = catalog_fetched(settings, plan)
    for i, m in enumerate(plan.mounts):
        name = f"{m.kind}-{i}"
        if m.kind == "dataset":
            volumes.append({"name": name, **_dataset_source(settings, m)})
            mounts.append({"name": name, "mountPath": m.target, "readOnly": True, "recursiveReadOnly": "IfPossible"})
            continue
        if m.kind == "catalog" and fetched:   # the pod's first container fills it
            if not any(v["name"] == CATALOG_VOLUME for v in volumes):
                volumes.append({"name": CATALOG_VOLUME, "emptyDir": {"sizeLimit": CATALOG_SIZE}})
            mounts.append({"name": CATALOG_VOLUME, "mountPath": m.target, "readOnly": True,
                           "subPath": m.target.rsplit("/", 1)[-1]})
            continue
        if m.kind in ("catalog", "home", "workspace", "held"):
            volumes.append({"name": name, **storage_source(settings, plan, m)})
        elif m.kind == "file":
            key = "session.json" if m.target == MANIFEST else m.source.name
            volumes.append({"name": name, "secret": {"secretName": secret, "defaultMode": 0o444,
                                                     "items": [{"key": key, "path": key}]}})
            mounts.append({"name": name, "mountPath": m.target, "subPath": key, "readOnly": True})
            continue
        elif m.kind == "private":
            volumes.append({"name": name, "emptyDir": {"sizeLimit": "256Mi"}})
        elif m.kind == "hub":
            continue
        else:
            raise KubernetesBackendError(f"mount kind {m.kind!r} ({m.target}) has no Kubernetes rendering")
        mounts.append({"name": name, "mountPath": m.target, "readOnly": m.readonly})
    for name, path, size in (("tmp", "/tmp", tmp_size), ("var-tmp", "/var/tmp", "64Mi"), ("run", "/run", "16Mi")):
        volumes.append({"name": name, "emptyDir": {"sizeLimit": size}})
        mounts.append({"name": name, "mountPath": path})
    return volumes, mounts


def pod_server_args(plan: SessionPlan, extra=()) -> list[str]:
    """The server's arguments in a pod: TCP on SESSION_PORT instead of the unix socket."""
    return [a for a in server_args(plan, extra) if not a.startswith("--sock=")] + [
        "--ServerApp.ip=0.0.0.0", f"--ServerApp.port={SESSION_PORT}"]


def session_pod(settings: Settings, plan: SessionPlan, *, image: str, env: dict[str, str], command: list[str],
                pull_policy: str = "IfNotPresent", tmp_size: str = "2Gi", umask: int = 0o002,
                audit_session: str = "", catalog_api: str = "") -> dict:
    """The session's pod in its project's namespace (``env``: the server's whole environment; the
    ``SECRET_ENV`` among it come from :func:`run_secret`). With datasets and the observer, the
    pod starts behind the gate, its metadata saying what the observer's records will say
    (``audit_session``: the run's audit session, default its id). Catalogue files under claims
    come from the catalogue listener at ``catalog_api`` (``catalogue_api_url``)."""
    check_image(settings, image)
    volumes, mounts = volumes_and_mounts(settings, plan, tmp_size)
    secret = run_secret_name(run_id(plan))
    env_list = [{"name": k, "valueFrom": {"secretKeyRef": {"name": secret, "key": k}}} if k in SECRET_ENV
                else {"name": k, "value": v} for k, v in sorted(env.items())]
    resources = {"cpu": cpu_quantity(plan.cpu), "memory": f"{plan.mem_mb}Mi"}
    limits = {**resources, **({GPU_RESOURCE: str(plan.gpus)} if plan.gpus else {})}
    container = {
        "name": "server", "image": image, "imagePullPolicy": pull_policy,
        # umask 002: files in the shared workspace stay writable for the project's group
        "command": ["/bin/sh", "-c", f'umask {umask:04o} && exec "$@"', "vre-session", *command],
        "workingDir": HOME, "env": env_list, "volumeMounts": mounts,
        "ports": [{"name": "http", "containerPort": SESSION_PORT, "protocol": "TCP"}],
        "readinessProbe": {"tcpSocket": {"port": SESSION_PORT}, "periodSeconds": 1, "failureThreshold": 3},
        "resources": {"requests": dict(resources), "limits": limits},
        "securityContext": locked_down(plan.uid, plan.gid),
    }
    spec = {
        "containers": [container], "volumes": volumes, "restartPolicy": "Never",
        "automountServiceAccountToken": False, "enableServiceLinks": False, "hostname": object_name(plan.project),
        "terminationGracePeriodSeconds": 5,
        "securityContext": {"runAsNonRoot": True, "runAsUser": plan.uid, "runAsGroup": plan.gid,
                            "fsGroup": plan.gid, "fsGroupChangePolicy": "OnRootMismatch",
                            "seccompProfile": {"type": "RuntimeDefault"}},
    }
    if catalog_fetched(settings, plan):
        spec["initContainers"] = [catalog_container(settings, plan, image=image, pull_policy=pull_policy,
                                                    api_url=catalog_api)]
    if plan.gpus:
        spec["tolerations"] = [{"key": GPU_RESOURCE, "operator": "Exists", "effect": "NoSchedule"}]
    # the profile's labels on top of the GPU nodes' (a GPU model among them, say)
    selector = {**(settings.k8s_gpu_node_selector if plan.gpus else {}), **dict(plan.node_selector)}
    if selector:
        spec["nodeSelector"] = selector
    metadata = {"name": object_name(run_id(plan)), "namespace": namespace_name(plan),
                "labels": labels(settings, plan)}
    if reads_observed(settings, plan):
        gate = gate_script(settings.k8s_gate_seconds)
        container["command"] = ["/bin/sh", "-c", f'{gate}umask {umask:04o} && exec "$@"', GATE_NAME, *command]
        metadata["labels"][OBSERVED_LABEL] = "observed"
        metadata["annotations"] = {AUDIT_SESSION: audit_session or plan.session_id,
                                   AUDIT_DATASETS: json.dumps(dataset_mounts(plan))}
    return {"apiVersion": "v1", "kind": "Pod", "metadata": metadata, "spec": spec}


#: What a pool's scheduler pod requests (its limits are ``SCHEDULER_LIMITS``).
SCHEDULER_REQUESTS = {"cpu": "100m", "memory": "256Mi"}


def batch_pod(settings: Settings, plan: SessionPlan, *, image: str, env: dict[str, str], command: list[str],
              pull_policy: str = "IfNotPresent", tmp_size: str = "2Gi", catalog_api: str = "") -> dict:
    """A batch pool's Dask scheduler or worker (``plan.for_scheduler``/``for_worker``): the
    session's rendering (identity, read-only root, volumes, limits, no token, the allow-list) with
    the Dask command, the scheduler's ports, and the pool's labels (``vre.pool``; no user: a warm
    worker serves the project's members in turn); a worker started for a job (``plan.job``) names
    it and its user in the observer's annotations. A worker's catalogue files under claims come
    from the catalogue listener at ``catalog_api`` (``catalogue_api_url``)."""
    pod = session_pod(settings, plan, image=image, env=env, command=command, pull_policy=pull_policy,
                      tmp_size=tmp_size, catalog_api=catalog_api)
    container = pod["spec"]["containers"][0]
    del container["readinessProbe"], container["ports"]
    container["name"] = "scheduler" if plan.role == "scheduler" else "worker"
    if plan.role == "scheduler":
        container["ports"] = [{"name": "dask", "containerPort": SCHEDULER_PORT, "protocol": "TCP"},
                              {"name": "dashboard", "containerPort": DASHBOARD_PORT, "protocol": "TCP"},
                              {"name": "agent", "containerPort": AGENT_PORT, "protocol": "TCP"}]
        container["readinessProbe"] = {"tcpSocket": {"port": AGENT_PORT}, "periodSeconds": 1, "failureThreshold": 3}
        # it mostly waits: it requests a little and may burst to its limits (a worker's are its job's)
        container["resources"]["requests"] = dict(SCHEDULER_REQUESTS)
    if plan.job is not None and reads_observed(settings, plan):   # the observer marks it for its job before it runs
        pod["metadata"]["annotations"].update({AUDIT_JOB: str(plan.job[0]), AUDIT_JOB_USER: plan.job[1]})
    meta_labels = pod["metadata"]["labels"]
    meta_labels.pop("vre.user", None)
    meta_labels["vre.pool"] = plan.pool
    labels(settings, replace(plan, labels=meta_labels))  # checked as label values
    return pod


#: Label Kueue reads to queue a Job: the LocalQueue of that name in the Job's namespace.
KUEUE_QUEUE_LABEL = "kueue.x-k8s.io/queue-name"
#: Where a Kubernetes Job's pod finds its job's spec (``vre_session.jobs.task``), from its run's Secret.
JOB_SPEC_DIR, JOB_SPEC_KEY = "/etc/vre-job", "job.json"
#: Seconds an ended Job is kept when the hub is not there to delete it once it recorded the end.
JOB_TTL_S = 7 * 24 * 3600
#: Seconds a Job's pod has between SIGTERM and SIGKILL (the task's own grace for the job, and some).
JOB_GRACE_S = 15


def kube_job_name(job_id: int, attempt: int) -> str:
    """A job's Kubernetes Job, one per start: a re-queued job's next start never meets its last.
    Its run (the worker plan's, whose Secret it mounts) is the name without ``vre-``."""
    return f"vre-job-{job_id}-{attempt}"


def batch_job(settings: Settings, plan: SessionPlan, pod: dict, *, job_id: int, attempt: int, user: str) -> dict:
    """A job that needs no Dask as a Kubernetes Job around ``pod`` (``batch_pod``'s rendering of a
    worker ``plan`` whose command is the job's task): one try (the engine re-queues a start that
    was lost), the job's spec from the run's Secret, and its job and user for the observer of
    dataset reads from the start (a Dask worker learns them by a patch). No
    ``activeDeadlineSeconds``: it would count the time the pod waits for a node, so the run-time
    limit is the task's, from the job's start, and the engine's from the pod's (``follow_kube``).
    With ``k8s_kueue_queue`` the Job is created suspended and labelled for Kueue, which starts it
    when the cluster's queue admits it."""
    meta, spec = pod["metadata"], dict(pod["spec"])
    container = dict(spec["containers"][0], name="job")
    container["volumeMounts"] = [*container["volumeMounts"],
                                 {"name": "job-spec", "mountPath": JOB_SPEC_DIR, "readOnly": True}]
    # the task stops its job's process group on SIGTERM (a cancel) and reports; then the kubelet kills
    spec["containers"], spec["terminationGracePeriodSeconds"] = [container], JOB_GRACE_S
    spec["volumes"] = [*spec["volumes"], {"name": "job-spec", "secret": {
        "secretName": run_secret_name(run_id(plan)), "defaultMode": 0o444,
        "items": [{"key": JOB_SPEC_KEY, "path": JOB_SPEC_KEY}]}}]
    pod_labels = {**meta["labels"], "vre.role": "job", "vre.job": str(job_id), "vre.attempt": str(attempt)}
    labels(settings, replace(plan, labels=pod_labels))   # checked as label values
    template = {"metadata": {"labels": pod_labels}, "spec": spec}
    if reads_observed(settings, plan):
        template["metadata"]["annotations"] = {**meta.get("annotations", {}), AUDIT_JOB: str(job_id),
                                               AUDIT_JOB_USER: user}
    job_labels = dict(pod_labels)
    if settings.k8s_kueue_queue:
        job_labels[KUEUE_QUEUE_LABEL] = settings.k8s_kueue_queue
    return {"apiVersion": "batch/v1", "kind": "Job",
            "metadata": {"name": kube_job_name(job_id, attempt), "namespace": meta["namespace"],
                         "labels": job_labels},
            "spec": {"suspend": bool(settings.k8s_kueue_queue), "backoffLimit": 0,
                     "ttlSecondsAfterFinished": JOB_TTL_S, "template": template}}


#: Kueue's API (``LocalQueue``), the version the hub writes.
KUEUE_GROUP, KUEUE_VERSION = "kueue.x-k8s.io", "v1beta1"


def local_queue(settings: Settings, namespace: str) -> dict:
    """The LocalQueue ``k8s_kueue_queue`` of ``namespace``, feeding ``k8s_kueue_cluster_queue``."""
    return {"apiVersion": f"{KUEUE_GROUP}/{KUEUE_VERSION}", "kind": "LocalQueue",
            "metadata": {"name": settings.k8s_kueue_queue, "namespace": namespace,
                         "labels": {"vre.instance": settings.instance}},
            "spec": {"clusterQueue": settings.k8s_kueue_cluster_queue}}


async def ensure_local_queue(client: ApiClient, queue: dict) -> bool:
    """Create the LocalQueue when missing (True); an existing one is kept as it is (the operator
    may have tuned it). A cluster without Kueue says so by name."""
    meta = queue["metadata"]
    try:
        await CustomObjectsApi(client).create_namespaced_custom_object(
            KUEUE_GROUP, KUEUE_VERSION, meta["namespace"], "localqueues", queue)
        return True
    except ApiException as e:
        if e.status == 409:
            return False
        if e.status == 404:
            raise KubernetesBackendError(f"the cluster has no Kueue LocalQueue API ({KUEUE_GROUP}/{KUEUE_VERSION}): "
                                         "install Kueue, or clear k8s_kueue_cluster_queue and k8s_kueue_queue") from None
        raise


async def hub_service_ip(settings: Settings, api: CoreV1Api) -> str:
    """The cluster IP of the hub's Service (``k8s_hub_service``), where the project's pods reach
    the hub's pods (the policies name those pods; pods have no DNS)."""
    name = settings.k8s_hub_service
    try:
        svc = await api.read_namespaced_service(name, settings.k8s_hub_namespace)
    except ApiException as e:
        error = KubernetesBackendError(f"no hub Service {settings.k8s_hub_namespace}/{name} ({api_reason(e)}): "
                                       "the chart creates it (k8s_hub_service names it)")
        error.status = e.status   # a busy API server (429, 5xx) is not a missing Service
        raise error from None
    return svc.spec.cluster_ip


def catalogue_api_url(settings: Settings, host: str) -> str:
    """The catalogue listener (``vre.api.catalogue.fetch_handlers``) on the hub's pods, as the
    project's pods reach it at ``host``."""
    return f"http://{host}:{settings.k8s_catalogue_port}{SERVICE_API_PATH}"


async def put_object(client: ApiClient, obj: dict) -> None:
    """Create ``obj``, or replace it when it exists (the hub's rendering wins; a namespace is kept,
    it holds the project's claims, and only its labels are put back)."""
    kind, ns, name = obj["kind"], obj["metadata"].get("namespace"), obj["metadata"]["name"]
    api = NetworkingV1Api(client) if kind == "NetworkPolicy" else CoreV1Api(client)
    snake = re.sub(r"(?<!^)(?=[A-Z])", "_", kind).lower()
    args = (ns, obj) if ns else (obj,)
    scope = "namespaced_" if ns else ""
    try:
        await getattr(api, f"create_{scope}{snake}")(*args)
    except ApiException as e:
        if e.status != 409:
            error = KubernetesBackendError(f"the cluster refused {kind} {ns or ''}/{name}: {api_reason(e)}")
            error.status = e.status   # a busy API server (429, 5xx) is not a refusal
            raise error from None
        if kind == "Namespace":
            await api.patch_namespace(name, {"metadata": {"labels": obj["metadata"]["labels"]}})
        else:
            await getattr(api, f"replace_{scope}{snake}")(name, *args)


def prepare_node_paths(settings: Settings, plan: SessionPlan) -> None:
    """What a run of ``plan`` needs on the hub's side: a fresh run directory (a session's holds the
    access layer's mount table); with hostPath storage also the home, workspace and held folders
    with their owners. Nothing else of the run directory is mounted (the runtime files come from
    the run's Secret, sockets and spool are emptyDirs), so none of it is made: a hub pod without
    CAP_DAC_OVERRIDE could not remove a member's private directories of a previous session."""
    prepare_storage(settings, plan)
    shutil.rmtree(plan.run_dir, ignore_errors=True)
    plan.run_dir.mkdir(parents=True, mode=0o755)


def prepare_storage(settings: Settings, plan: SessionPlan) -> None:
    """With hostPath storage, the home, workspace and held folders of ``plan`` with their owners
    (claims are made with the run's objects: ``storage_claims``)."""
    if settings.k8s_storage == "hostPath":
        prepare_home_and_workspace(plan)
        prepare_held_folder(plan)


class SharedWatch(watch.Watch):
    """A watch that reads its events with an API client the caller already holds.
    kubernetes_asyncio's own builds a client per watch, only to turn events into objects, and
    that client's SSL context costs about 20 ms of the hub's event loop: per start, 20 s of the
    loop for 1,000. The shared client is left open when the watch ends."""

    def __init__(self, api_client: ApiClient):
        self._raw_return_type = None
        self._stop = False
        self._api_client = api_client
        self.resource_version = None
        self.resp = None

    async def close(self) -> None:
        if self.resp is not None:
            self.resp.release()
            self.resp = None


class KubernetesSpawner(PlanSpawner, Spawner):
    """Runs each (user, project) session as a pod in its project's namespace.

    The hub creates and keeps the project's namespace, policies and quota (every start puts them
    back as rendered), then the session's Secret and pod; the server listens on the pod's IP and
    the access layer forwards to ``http://<pod IP>:SESSION_PORT``. State (pod, namespace, IP,
    node) survives a hub restart, so the next hub re-attaches; ``poll`` re-checks membership and
    expiry as on every backend. GPUs are a count: Kubernetes picks the devices, the project's
    quota bounds them, and the audit records the node the pod ran on.
    """

    start_noun = "pod"

    image = Unicode(config=True, help="Session image (default: settings.notebook_image); must be on the allow-list.")
    image_pull_policy = CaselessStrEnum(["IfNotPresent", "Always", "Never"], "IfNotPresent", config=True,
                                        help="imagePullPolicy of session pods.")
    tmp_size = Unicode("2Gi", config=True, help="Size of a session's /tmp (memory-backed emptyDir limit).")
    hub_address = Unicode("", config=True,
                          help="Address sessions reach the hub's API at instead of the cluster IP of the Service "
                               "k8s_hub_service (a hub outside the cluster, tests).")

    # state kept across hub restarts (with the base's)
    pod_name = Unicode("")
    pod_namespace = Unicode("")
    pod_ip = Unicode("")
    node_name = Unicode("")

    @default("image")
    def _image_default(self):
        return self.settings.notebook_image

    @default("ip")
    def _ip_default(self):
        return "0.0.0.0"  # the server listens on its pod's address (JUPYTERHUB_SERVICE_URL)

    @default("port")
    def _port_default(self):
        return SESSION_PORT

    def _backend_state(self) -> dict:
        return {"pod_name": self.pod_name, "pod_namespace": self.pod_namespace, "pod_ip": self.pod_ip,
                "node_name": self.node_name}

    def _load_backend_state(self, state: dict) -> None:
        self.pod_name = state.get("pod_name", "")
        self.pod_namespace = state.get("pod_namespace", "")
        self.pod_ip = state.get("pod_ip", "")
        self.node_name = state.get("node_name", "")

    def _launched(self) -> bool:
        return bool(self.pod_name)

    def _identity_files(self, plan: SessionPlan) -> dict[str, str]:
        return identity_files(plan)

    def _gpu_capacity(self) -> int | None:
        return None  # the cluster's scheduler and the project's quota decide, not this host's devices

    def _lease_gpus(self, plan: SessionPlan) -> tuple[int, ...]:
        return ()   # a count in the pod's limits; Kubernetes picks the devices

    def _start_details(self, plan: SessionPlan) -> dict:
        details = {"pod": f"{self.pod_namespace}/{self.pod_name}", "node": self.node_name}
        if plan.datasets:  # false: started under k8s_unobserved_reads
            details["reads_observed"] = reads_observed(self.settings, plan)
        return details

    def _socket_url(self) -> str:
        return f"http://{self.pod_ip}:{SESSION_PORT}" if self.pod_ip else ""

    # -- the API -----------------------------------------------------------------------------
    async def _api(self, kind: str = "CoreV1Api"):
        await load_client_config(self.settings)
        return shared_client(kind)

    async def _put(self, obj: dict) -> None:
        await put_object((await self._api()).api_client, obj)

    async def _ensure(self, obj: dict) -> None:
        """Create the claim ``obj`` unless it exists."""
        if await ensure_claim((await self._api()).api_client, obj):
            self.log.info("Created claim %s/%s (%s)", obj["metadata"]["namespace"], obj["metadata"]["name"],
                          obj["spec"]["resources"]["requests"]["storage"])

    # -- start ---------------------------------------------------------------------------------
    def _prepare_host(self, plan: SessionPlan) -> None:
        prepare_node_paths(self.settings, plan)

    def _project_quota(self, plan: SessionPlan) -> ProjectQuota:
        return read_project_quota(self.settings, plan.project)

    async def _hub_url(self) -> str:
        if self.hub_address:
            return f"http://{self.hub_address}:{self.settings.k8s_hub_port}"
        ip = await hub_service_ip(self.settings, await self._api())
        return f"http://{ip}:{self.settings.k8s_hub_port}"

    def _environment(self, plan: SessionPlan) -> dict[str, str]:
        """As on every backend, but the VRE service is reached over TCP on the hub's address."""
        env = super()._environment(plan)
        base = f"http://{urlsplit(self.hub_connect_url).hostname}:{self.settings.k8s_service_port}"
        env.update(VRE_API_URL=base + SERVICE_API_PATH, VRE_AUDIT_URL=base + AUDIT_INGEST_PATH)
        return env

    def _server_command(self, plan: SessionPlan) -> list[str]:
        return [*server_command("python"), *pod_server_args(plan, self.args)]

    def _image_for(self, plan: SessionPlan) -> str:
        if plan.gpus and self.settings.notebook_gpu_image:
            return self.settings.notebook_gpu_image
        return self.image

    async def _launch(self, plan: SessionPlan) -> None:
        check_reads_policy(self.settings, plan)
        image = check_image(self.settings, self._image_for(plan))
        ns, name = namespace_name(plan), object_name(plan.session_id)
        self._progress(30, f"Preparing the project's island (namespace {ns}: network policies, quota)")
        quota = await asyncio.to_thread(self._project_quota, plan)
        for obj in project_objects(self.settings, plan, quota):
            await self._put(obj)
        for claim in storage_claims(self.settings, plan):
            await self._ensure(claim)
        self.hub_connect_url = await self._hub_url()
        env = self._environment(plan)
        pod = session_pod(self.settings, plan, image=image, env=env, command=self._server_command(plan),
                          pull_policy=self.image_pull_policy, tmp_size=self.tmp_size, umask=self.session_umask,
                          audit_session=self.audit_session,
                          catalog_api=catalogue_api_url(self.settings, urlsplit(self.hub_connect_url).hostname))
        await self._delete(ns, plan.session_id, 0)  # a leftover of a crashed run never lingers
        await self._put(run_secret(self.settings, plan, self._identity_files(plan), env))
        self._progress(50, f"Starting the pod ({plan.cpu:g} CPU, {plan.mem_mb} MiB)")
        api = await self._api()
        try:
            await api.create_namespaced_pod(ns, pod)
        except ApiException as e:
            raise KubernetesBackendError(f"the cluster refused the session's pod: {api_reason(e)}") from None
        self.pod_name, self.pod_namespace = name, ns
        self.log.info("Created pod %s/%s for %s from %s", ns, name, plan.session_id, image)

    async def _wait_for_socket(self) -> None:
        """Until the pod is Ready (its server accepts on SESSION_PORT); fails fast when it cannot
        start (image missing, refused config) or ended. The pod is followed with a watch, not
        polled: a start costs the API server a read and a watch however long it waits (an image
        pull, a busy scheduler), and each change is seen as it happens."""
        loop = asyncio.get_running_loop()
        # start() sets the deadline just inside JupyterHub's own (PlanSpawner.start)
        deadline = getattr(self, "_deadline", None) or loop.time() + self.start_timeout
        api = await self._api()
        while True:
            pod = await api.read_namespaced_pod(self.pod_name, self.pod_namespace)
            if await self._started(pod, deadline):
                return
            began = loop.time()
            try:
                async with SharedWatch(api.api_client).stream(
                        api.list_namespaced_pod, self.pod_namespace,
                        field_selector=f"metadata.name={self.pod_name}",
                        resource_version=pod.metadata.resource_version,
                        timeout_seconds=max(1, math.ceil(deadline - loop.time())),
                        _request_timeout=max(1, deadline - loop.time()) + 10) as changes:
                    async for event in changes:
                        if event["type"] == "DELETED":
                            raise KubernetesBackendError("the session's pod was deleted while it started "
                                                         "(by an admin, or the cluster evicted it)")
                        if event["type"] in ("ADDED", "MODIFIED") and await self._started(event["object"], deadline):
                            return
            except ApiException as e:
                if e.status != 410:   # gone: the next read starts a new watch from now
                    raise
            except asyncio.TimeoutError:
                pass
            if loop.time() - began < 1:
                await asyncio.sleep(0.5)   # a watch that ends at once (the API restarting) is not a loop

    async def _started(self, pod, deadline: float) -> bool:
        """Whether the pod is ready; raises why it will not be (it ended, it cannot start, the
        deadline passed)."""
        status = pod.status
        if status.phase in ("Succeeded", "Failed"):
            self._exit_code = _exit_code(pod)
            self.log.error("Pod %s/%s ended during start (%s):\n%s", self.pod_namespace, self.pod_name,
                           self._exit_code, await self._log_tail())
            if self._exit_code == GATE_EXIT and (pod.metadata.labels or {}).get(OBSERVED_LABEL):
                raise KubernetesBackendError(
                    f"dataset reads cannot be recorded: no observer marked the session's dataset mounts on "
                    f"node {pod.spec.node_name} within "
                    f"{self.settings.k8s_gate_seconds} s, so it did not start; an admin checks the observer "
                    "pod on that node (the chart's observer DaemonSet)")
            raise RuntimeError(f"the session's server exited during start (code {self._exit_code}); "
                               "an admin can read its log in the hub's log")
        waiting = waiting_reason(pod)
        if waiting in FATAL_WAITING:
            raise KubernetesBackendError(f"the session's pod cannot start: {waiting}")
        ready = any(c.type == "Ready" and c.status == "True" for c in status.conditions or ())
        if ready and status.pod_ip:
            self.pod_ip, self.node_name = status.pod_ip, pod.spec.node_name or ""
            return True
        if asyncio.get_running_loop().time() > deadline:
            self.log.error("Pod %s/%s not ready in time; its log:\n%s", self.pod_namespace, self.pod_name,
                           await self._log_tail())
            why = unplaced_reason(pod) or waiting
            raise TimeoutError(f"the session's pod was not ready within {self.start_timeout} s "
                               f"(Spawner.start_timeout; {status.phase}{': ' + why if why else ''}); "
                               "an admin can read its log in the hub's log")
        return False

    def _lock_socket(self) -> None:
        """Nothing to take over: the server's port is reachable only from the hub's and the access
        layer's pods (the project's NetworkPolicy), not by a socket file a session could touch."""

    async def _log_tail(self, lines: int = 30) -> str:
        if not self.pod_name:
            return ""
        try:
            api = await self._api()
            return await api.read_namespaced_pod_log(self.pod_name, self.pod_namespace, tail_lines=lines)
        except (ApiException, OSError, KubernetesBackendError):
            return ""

    # -- liveness and removal ----------------------------------------------------------------
    async def _is_running(self) -> bool | None:
        try:
            api = await self._api()
            pod = await api.read_namespaced_pod(self.pod_name, self.pod_namespace)
        except ApiException as e:
            if e.status == 404:
                return False
            self.log.warning("Could not ask the cluster about %s: %s; leaving it running", self._log_name, api_reason(e))
            return None
        except OSError as e:
            self.log.warning("Could not reach the cluster about %s: %s; leaving it running", self._log_name, e)
            return None
        if pod.status.phase in ("Succeeded", "Failed") or pod.metadata.deletion_timestamp:
            self._exit_code = _exit_code(pod)
            return False
        return True

    async def _delete(self, ns: str, session_id: str, grace: float) -> None:
        """Delete the session's pod and Secret (absent ones are fine)."""
        api = await self._api()
        for call, obj in ((api.delete_namespaced_pod, object_name(session_id)),
                          (api.delete_namespaced_secret, run_secret_name(session_id))):
            try:
                await call(obj, ns, grace_period_seconds=math.ceil(grace))
            except ApiException as e:
                if e.status != 404:
                    raise KubernetesBackendError(f"could not delete {ns}/{obj}: {api_reason(e)}") from None

    async def _remove(self, grace: float) -> None:
        # also after a failed start that created the pod but never recorded it
        ns = self.pod_namespace or (self.island if _DNS_LABEL.fullmatch(self.island or "") else "")
        if ns and self.session_id:
            await self._delete(ns, self.session_id, grace)
        self.pod_name, self.pod_ip = "", ""


#: Reasons a container waits that no amount of waiting cures.
FATAL_WAITING = ("ErrImageNeverPull", "ImagePullBackOff", "ErrImagePull", "InvalidImageName",
                 "CreateContainerConfigError", "CreateContainerError")


#: What the job engine calls a batch pod whose catalogue container failed (``catalogue_failure``).
CATALOGUE_NOT_FETCHED = "CatalogueNotFetched"


def catalogue_failure(pod) -> str:
    """Why a batch pod's catalogue container failed (its log's last line), or "" if it did not."""
    for c in getattr(pod.status, "init_container_statuses", None) or ():
        t = c.state and c.state.terminated
        if c.name == "catalogue" and t and t.exit_code:
            lines = [line for line in (t.message or "").splitlines() if line.startswith("vre-catalogue:")]
            return (lines[0] if lines else f"exit code {t.exit_code}").removeprefix("vre-catalogue: ")[:300]
    return ""


def waiting_reason(pod) -> str:
    # the first container's first: an image that cannot be pulled shows there, the server's says PodInitializing
    for c in [*(getattr(pod.status, "init_container_statuses", None) or ()), *(pod.status.container_statuses or ())]:
        if c.state and c.state.waiting and c.state.waiting.reason:
            return c.state.waiting.reason
    return ""


def unplaced_reason(pod) -> str:
    """Why the cluster has not placed the pod on a node yet (its scheduler's message: no node
    with the CPU, the GPUs, ...), "" once placed."""
    for c in pod.status.conditions or ():
        if c.type == "PodScheduled" and c.status == "False" and c.reason == "Unschedulable":
            return (c.message or c.reason)[:300]
    return ""


def _exit_code(pod) -> int | None:
    for c in pod.status.container_statuses or ():
        if c.state and c.state.terminated:
            return c.state.terminated.exit_code
    return None


def api_reason(e: ApiException) -> str:
    try:
        return json.loads(e.body).get("message") or e.reason
    except (TypeError, ValueError):
        return f"{e.status} {e.reason}"


_configured: dict[str, bool] = {}


async def load_client_config(settings: Settings) -> None:
    """Point the shared API clients at the cluster once: ``k8s_kubeconfig``, else the pod's
    service account."""
    key = settings.k8s_kubeconfig or "in-cluster"
    if _configured.get(key):
        return
    try:
        if settings.k8s_kubeconfig:
            await k8s_config.load_kube_config(config_file=settings.k8s_kubeconfig)
        else:
            k8s_config.load_incluster_config()
    except (k8s_config.ConfigException, OSError) as e:
        raise KubernetesBackendError(f"cannot reach the cluster's API ({e}); set k8s_kubeconfig to a kubeconfig "
                                     "file, or run the hub in the cluster") from None
    _configured.clear()
    _configured[key] = True


async def _remove_instance_sessions(settings: Settings) -> int:
    await load_client_config(settings)
    async with ApiClient() as client:
        core = CoreV1Api(client)
        selector = f"vre.instance={settings.instance}"
        # jobs' Kubernetes Jobs first: a suspended one has no pod yet, and Kueue could start it later
        batch = BatchV1Api(client)
        for job in (await batch.list_job_for_all_namespaces(label_selector=f"{selector},vre.role=job")).items:
            try:
                await batch.delete_namespaced_job(job.metadata.name, job.metadata.namespace,
                                                  propagation_policy="Background")
            except ApiException as e:
                if e.status != 404:
                    raise
        pods = (await core.list_pod_for_all_namespaces(label_selector=selector)).items
        for pod in pods:
            # each pod's run Secret by name: the hub may write Secrets but never list or read them
            # (the chart's RBAC: listing them cluster-wide would expose every token in the cluster)
            ns, pod_labels = pod.metadata.namespace, pod.metadata.labels or {}
            session = pod_labels.get("vre.session", "")
            deletions = [(core.delete_namespaced_pod, pod.metadata.name, {"grace_period_seconds": 2})]
            if session:   # a batch run's (the job engine's) is named from batch-<run>
                secret = run_secret_name(batch_id(session) if "vre.pool" in pod_labels else session)
                deletions.append((core.delete_namespaced_secret, secret, {}))
            for call, name, kw in deletions:
                try:
                    await call(name, ns, **kw)
                except ApiException as e:
                    if e.status != 404:
                        raise
    return len(pods)


def remove_instance_sessions(settings: Settings) -> int:
    """Delete every session and batch pod of this installation and its run Secret, and its jobs'
    Kubernetes Jobs (``vre down``); the projects' namespaces stay: they hold the projects' claims."""
    return asyncio.run(_remove_instance_sessions(settings))
