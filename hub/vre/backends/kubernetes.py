"""The kubernetes backend: each (user, project) session is a pod in its project's namespace.

Rendering of a SessionPlan (pure functions, no client; unit-tested and validated offline against
the cluster's schemas):

- a project is an island: its namespace (``plan.network``, labelled), a default-deny
  NetworkPolicy for ingress and egress, and allows for traffic inside the project, for the hub
  and access-layer pods (by label, in ``k8s_hub_namespace``) to the session port, and for
  sessions to the hub's API port, nothing else (no DNS: the hub gives sessions addresses);
  a ResourceQuota from the project's sessions and batch quota (:func:`project_quota`);
- filesystem: the image's root read-only, emptyDirs for /tmp, /var/tmp and /run; datasets and
  their catalogue records read-only (``k8s_dataset_volume``: hostPath, NFS or a ROX claim), home
  and workspace read-write (``k8s_storage``: hostPath or claims); the manifest, passwd and group
  from a per-session Secret; the server's socket directory and the audit spool as emptyDirs. The
  hub's socket directory is not mounted: sessions reach the hub over TCP;
- identity: the account's uid and the project's gid (``runAsUser``/``runAsGroup``/``fsGroup``),
  non-root, no privilege escalation, all capabilities dropped, seccomp RuntimeDefault (which
  refuses user namespaces to a process without CAP_SYS_ADMIN, as ``seccomp.py`` does for docker),
  no service-account token, no service links;
- limits: requests = limits for CPU and memory (the kernel OOM-kills inside the pod), GPUs as a
  count (``nvidia.com/gpu``; Kubernetes picks the devices) with ``k8s_gpu_node_selector`` and the
  NVIDIA taint's toleration; only images on the allow-list (``settings.k8s_images``) render.

Why not ``KubeSpawner``: its ``start``/``poll``/``stop`` build the pod from its own traits (image,
volumes, profile_list, ...) and its own form, while :class:`PlanSpawner` owns the lifecycle and
decides everything from the plan. Subclassing it would leave hundreds of configurable traits that
are silently ignored or, worse, half-applied. This backend uses kubespawner 7 where it helps: its
shared, loop-bound API client and its config loading (``kubespawner.clients``).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
from dataclasses import dataclass

from jupyterhub.spawner import Spawner
from traitlets import Unicode, default

from ..plan import HOME, MANIFEST, SessionPlan
from ..settings import Settings, k8s_images
from .plan_spawner import PlanSpawner, server_args, server_command

#: The session server's port in its pod (the access layer's target: ``http://<pod IP>:PORT``).
SESSION_PORT = 8888
#: Labels of the pods in ``k8s_hub_namespace`` that may reach sessions (the chart sets them):
#: the hub (JupyterHub checks its servers) and the access layer (it forwards /user/...).
HUB_POD_LABELS = {"vre.component": "hub"}
ACCESS_POD_LABELS = {"vre.component": "access"}
GPU_RESOURCE = "nvidia.com/gpu"
#: Secret keys that carry credentials into a session's environment (never in the pod spec).
SECRET_ENV = ("JUPYTERHUB_API_TOKEN", "JPY_API_TOKEN", "VRE_AUDIT_TOKEN")
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


def namespace_name(plan: SessionPlan) -> str:
    if not _DNS_LABEL.fullmatch(plan.network):
        raise KubernetesBackendError(f"project island {plan.network!r} is not a valid namespace name; project "
                                     "slugs and the instance name must be lowercase letters, digits and '-'")
    return plan.network


def labels(settings: Settings, plan: SessionPlan) -> dict[str, str]:
    out = {**plan.labels, "vre.instance": settings.instance}
    for key, value in out.items():
        if not _LABEL_VALUE.fullmatch(value):
            raise KubernetesBackendError(f"label {key}={value!r} is not a valid Kubernetes label value")
    return out


def check_image(settings: Settings, image: str) -> str:
    """``image`` if the deployment allows it, else a clear refusal."""
    allowed = k8s_images(settings)
    if image not in allowed:
        raise KubernetesBackendError(f"image {image!r} is not on this deployment's allow-list "
                                     f"({', '.join(allowed) or 'empty'}); an admin adds it to k8s_image_allowlist")
    return image


# --- the project: namespace, network policies, quota -------------------------------------------
@dataclass(frozen=True)
class ProjectQuota:
    """What all of a project's pods together may request (its namespace's ResourceQuota)."""
    cpu: float
    mem_mb: int
    gpus: int
    pods: int


def project_quota(project) -> ProjectQuota:
    """A project's quota from the database row: one session per member at the largest profile,
    plus the batch queue's quota (``job_*``: slots, CPUs, memory, GPUs) and its scheduler pod."""
    profiles = list(project.profiles) or []
    members = len(project.members)
    top = lambda attr: max((getattr(p, attr) for p in profiles), default=0)  # noqa: E731
    return ProjectQuota(cpu=members * top("cpu") + project.job_cpu, mem_mb=members * top("mem_mb") + project.job_mem_mb,
                        gpus=members * top("gpus") + project.job_gpus, pods=members + project.job_slots + 1)


def _cpu(cpu: float) -> str:
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


def _policy(ns: str, name: str, spec: dict) -> dict:
    return {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": {"name": name, "namespace": ns, "labels": {"vre.policy": name}}, "spec": spec}


def _hub_peer(settings: Settings, pod_labels: dict) -> dict:
    return {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": settings.k8s_hub_namespace}},
            "podSelector": {"matchLabels": dict(pod_labels)}}


def network_policies(settings: Settings, plan: SessionPlan) -> list[dict]:
    """Default deny both ways, then: the project's pods with each other; the hub and the access
    layer to the session port of its sessions; its sessions to the hub's API. Nothing else:
    no other project, no node address, no internet, no DNS."""
    ns = namespace_name(plan)
    sessions = {"matchLabels": {"vre.role": "session"}}
    return [
        _policy(ns, "default-deny", {"podSelector": {}, "policyTypes": ["Ingress", "Egress"]}),
        _policy(ns, "project-internal", {"podSelector": {}, "policyTypes": ["Ingress", "Egress"],
                                         "ingress": [{"from": [{"podSelector": {}}]}],
                                         "egress": [{"to": [{"podSelector": {}}]}]}),
        _policy(ns, "hub-to-sessions", {
            "podSelector": sessions, "policyTypes": ["Ingress"],
            "ingress": [{"from": [_hub_peer(settings, HUB_POD_LABELS), _hub_peer(settings, ACCESS_POD_LABELS)],
                         "ports": [{"protocol": "TCP", "port": SESSION_PORT}]}]}),
        _policy(ns, "sessions-to-hub", {
            "podSelector": sessions, "policyTypes": ["Egress"],
            "egress": [{"to": [_hub_peer(settings, HUB_POD_LABELS)],
                        "ports": [{"protocol": "TCP", "port": settings.k8s_hub_port}]}]}),
    ]


def resource_quota(plan: SessionPlan, quota: ProjectQuota) -> dict:
    hard = {"pods": str(quota.pods), "requests.cpu": _cpu(quota.cpu), "limits.cpu": _cpu(quota.cpu),
            "requests.memory": f"{quota.mem_mb}Mi", "limits.memory": f"{quota.mem_mb}Mi",
            f"requests.{GPU_RESOURCE}": str(quota.gpus)}
    return {"apiVersion": "v1", "kind": "ResourceQuota",
            "metadata": {"name": "project", "namespace": namespace_name(plan)}, "spec": {"hard": hard}}


def project_objects(settings: Settings, plan: SessionPlan, quota: ProjectQuota) -> list[dict]:
    """Everything a project's namespace holds before its first pod (created and kept by the hub)."""
    return [namespace_object(settings, plan), *network_policies(settings, plan), resource_quota(plan, quota)]


# --- the session pod --------------------------------------------------------------------------
def _dataset_source(settings: Settings, mount) -> dict:
    slug = mount.target.rsplit("/", 1)[-1]
    if settings.k8s_dataset_volume == "nfs":
        return {"nfs": {"server": settings.k8s_nfs_server, "path": str(mount.source), "readOnly": True}}
    if settings.k8s_dataset_volume == "pvc":
        return {"persistentVolumeClaim": {"claimName": object_name(f"dataset-{slug}"), "readOnly": True}}
    return {"hostPath": {"path": str(mount.source), "type": "Directory"}}


def _storage_source(settings: Settings, plan: SessionPlan, mount) -> dict:
    """Home, workspace or catalogue records: the host path (single node) or the project's claim."""
    if settings.k8s_storage == "pvc":
        claim = {"home": object_name(f"home-{plan.user}"), "workspace": "workspace", "catalog": "catalog"}[mount.kind]
        return {"persistentVolumeClaim": {"claimName": claim, **({"readOnly": True} if mount.readonly else {})}}
    return {"hostPath": {"path": str(mount.source), "type": "Directory"}}


def run_secret_name(plan: SessionPlan) -> str:
    return object_name(f"{plan.session_id}-run")


def run_secret(settings: Settings, plan: SessionPlan, files: dict[str, str], env: dict[str, str]) -> dict:
    """The session's runtime files (manifest, passwd, group) and its credentials (``SECRET_ENV``):
    a Secret, so neither appears in the pod spec."""
    data = {"session.json": json.dumps(plan.manifest(), indent=2), **files}
    data.update({k: v for k, v in env.items() if k in SECRET_ENV})
    return {"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
            "metadata": {"name": run_secret_name(plan), "namespace": namespace_name(plan),
                         "labels": labels(settings, plan)},
            "stringData": data}


def volumes_and_mounts(settings: Settings, plan: SessionPlan, tmp_size: str = "2Gi") -> tuple[list[dict], list[dict]]:
    """(pod volumes, container volumeMounts): one per plan mount, plus the writable scratch of a
    read-only root. ``hub`` mounts (the hub's socket directory) have no pod counterpart."""
    volumes: list[dict] = []
    mounts: list[dict] = []
    secret = run_secret_name(plan)
    for i, m in enumerate(plan.mounts):
        name = f"{m.kind}-{i}"
        if m.kind == "dataset":
            volumes.append({"name": name, **_dataset_source(settings, m)})
            mounts.append({"name": name, "mountPath": m.target, "readOnly": True, "recursiveReadOnly": "IfPossible"})
            continue
        if m.kind in ("catalog", "home", "workspace"):
            volumes.append({"name": name, **_storage_source(settings, plan, m)})
            if m.kind == "catalog" and settings.k8s_storage == "pvc":  # one claim, a directory per dataset
                mounts.append({"name": name, "mountPath": m.target, "readOnly": True,
                               "subPath": m.target.rsplit("/", 1)[-1]})
                continue
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
                pull_policy: str = "IfNotPresent", tmp_size: str = "2Gi", umask: int = 0o002) -> dict:
    """The session's pod in its project's namespace (``env``: the server's whole environment; the
    ``SECRET_ENV`` among it come from :func:`run_secret`)."""
    check_image(settings, image)
    volumes, mounts = volumes_and_mounts(settings, plan, tmp_size)
    secret = run_secret_name(plan)
    env_list = [{"name": k, "valueFrom": {"secretKeyRef": {"name": secret, "key": k}}} if k in SECRET_ENV
                else {"name": k, "value": v} for k, v in sorted(env.items())]
    resources = {"cpu": _cpu(plan.cpu), "memory": f"{plan.mem_mb}Mi"}
    limits = {**resources, **({GPU_RESOURCE: str(plan.gpus)} if plan.gpus else {})}
    container = {
        "name": "server", "image": image, "imagePullPolicy": pull_policy,
        # umask 002: files in the shared workspace stay writable for the project's group
        "command": ["/bin/sh", "-c", f'umask {umask:04o} && exec "$@"', "vre-session", *command],
        "workingDir": HOME, "env": env_list, "volumeMounts": mounts,
        "ports": [{"name": "http", "containerPort": SESSION_PORT, "protocol": "TCP"}],
        "readinessProbe": {"tcpSocket": {"port": SESSION_PORT}, "periodSeconds": 1, "failureThreshold": 3},
        "resources": {"requests": dict(resources), "limits": limits},
        "securityContext": {"runAsNonRoot": True, "runAsUser": plan.uid, "runAsGroup": plan.gid,
                            "allowPrivilegeEscalation": False, "privileged": False,
                            "capabilities": {"drop": ["ALL"]}, "readOnlyRootFilesystem": True,
                            "seccompProfile": {"type": "RuntimeDefault"}},
    }
    spec = {
        "containers": [container], "volumes": volumes, "restartPolicy": "Never",
        "automountServiceAccountToken": False, "enableServiceLinks": False, "hostname": object_name(plan.project),
        "terminationGracePeriodSeconds": 5,
        "securityContext": {"runAsNonRoot": True, "runAsUser": plan.uid, "runAsGroup": plan.gid,
                            "fsGroup": plan.gid, "fsGroupChangePolicy": "OnRootMismatch",
                            "seccompProfile": {"type": "RuntimeDefault"}},
    }
    if plan.gpus:
        spec["tolerations"] = [{"key": GPU_RESOURCE, "operator": "Exists", "effect": "NoSchedule"}]
        if settings.k8s_gpu_node_selector:
            spec["nodeSelector"] = dict(settings.k8s_gpu_node_selector)
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": object_name(plan.session_id), "namespace": namespace_name(plan),
                         "labels": labels(settings, plan)},
            "spec": spec}


def pod_command(python: str = "python") -> list[str]:
    return server_command(python)


class KubernetesSpawner(PlanSpawner, Spawner):
    """Runs each (user, project) session as a pod in its project's namespace."""

    start_noun = "pod"
    pod_name = ""

    image = Unicode(config=True, help="Session image (default: settings.notebook_image); must be on the allow-list.")

    @default("image")
    def _image_default(self):
        return self.settings.notebook_image

    def _launched(self) -> bool:
        return bool(self.pod_name)

    async def _launch(self, plan):
        raise KubernetesBackendError("the kubernetes backend cannot start sessions yet (issue 13)")
