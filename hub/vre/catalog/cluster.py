"""Indexing a dataset in the cluster, where the hub cannot read it (Kubernetes, datasets in claims
or on NFS: ``k8s_dataset_volume`` = ``pvc`` or ``nfs``).

The hub runs in a pod that mounts no dataset, so registration and re-indexing start a Job in the
instance's catalogue namespace (``<instance>-0catalog``: no project's, as slugs start with a
letter). Its pod mounts the dataset read-only, as the operator provides it to the projects
(the claim ``dataset-<slug>`` in that namespace, or the NFS export), and runs ``indexpod.py`` with
the hub's own indexer (``index.py``) on the session image's Python: both files come in the Job's
Secret, nothing from a place a researcher can write. It keeps every file's SHA-256 too, so that
the airlock can tell a copy of a dataset file without reading the dataset (``airlock.store``).

The hub starts the indexing with the index it has (a re-index reads only new and changed files,
as the hub's own does), asks the pod how far it got (the admin's progress bar), fetches the
finished index into the catalogue, and deletes the Job; the catalogue record is then built as for a dataset the hub
indexed itself. The pod runs as ``nobody``, without privileges, service-account token or egress;
only the hub's pods reach its port, with the token of its Secret. A hub that goes away meanwhile
leaves a pod that exits after ``IDLE_S`` without a question (or, never placed, at the Job's
``JOB_DEADLINE_S``), a Job the cluster removes after ``JOB_TTL_S``, and the next indexing of that
dataset removes it first.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import sqlite3
import tempfile
import time
from pathlib import Path

import aiohttp
from kubernetes_asyncio.client import ApiClient, BatchV1Api, CoreV1Api
from kubernetes_asyncio.client.exceptions import ApiException

from ..backends import kubernetes as k8s
from ..errors import VREError
from ..settings import Settings
from .index import FORMAT_VERSION, IndexReport

log = logging.getLogger("vre.catalog")
#: The port the index pod answers on.
INDEX_PORT = 8891
#: What one index pod may use (its indexer's processes: one per CPU), and what it asks to be
#: placed (little: it runs once, and a busy node should not keep a registration waiting).
INDEX_LIMITS = {"cpu": 2, "mem_mb": 4096}
INDEX_REQUESTS = {"cpu": 0.25, "mem_mb": 512}
#: Its scratch folder, where the index is made (an index of a million files is a few GB).
SCRATCH_SIZE = "20Gi"
#: Seconds the pod may take to answer after the Job was made (placed, image, volumes).
START_S = 300
#: Seconds after its indexing ended without a question, after which the pod exits.
IDLE_S = 600
#: Seconds a finished Job is kept (when the hub could not delete it), and the most an index Job
#: may run, waiting for a node included (one left by a hub that went away ends then).
JOB_TTL_S, JOB_DEADLINE_S = 3600, 24 * 3600
#: Seconds between two questions about progress; seconds without an answer that end the wait.
POLL_S, SILENT_S = 1.0, 60
#: The uid the indexer runs as (nobody): it reads what sessions can read.
INDEX_UID = 65534
SOURCE_DIR = "/etc/vre-index"
TOKEN_KEY = "token"


def in_cluster(settings: Settings) -> bool:
    """Whether this deployment's datasets are indexed by a Job rather than by the hub."""
    return settings.backend == "kubernetes" and settings.k8s_dataset_volume != "hostPath"


def namespace(settings: Settings) -> str:
    return f"{settings.instance}-0catalog"


def claim_path(slug: str) -> str:
    """The registered path of a dataset in a claim (``k8s_dataset_volume = "pvc"``): its claim's name."""
    return f"claim:{k8s.object_name(f'dataset-{slug}')}"


def _volume(settings: Settings, slug: str, path: str) -> dict:
    if settings.k8s_dataset_volume == "nfs":
        return {"nfs": {"server": settings.k8s_nfs_server, "path": path, "readOnly": True}}
    return {"persistentVolumeClaim": {"claimName": k8s.object_name(f"dataset-{slug}"), "readOnly": True}}


def index_objects(settings: Settings, slug: str, path: str, name: str, *, image: str, token: str,
                  pull_policy: str = "IfNotPresent") -> tuple[list[dict], dict, dict]:
    """(the namespace and its policies, the Job, its Secret) of indexing dataset ``slug``."""
    k8s.check_image(settings, image)
    ns = namespace(settings)
    # Pod Security: a claim passes "restricted"; an NFS volume needs "baseline"
    enforce = "restricted" if settings.k8s_dataset_volume == "pvc" else "baseline"
    objects = [
        {"apiVersion": "v1", "kind": "Namespace",
         "metadata": {"name": ns, "labels": {"vre.instance": settings.instance, "vre.role": "catalog",
                                             "pod-security.kubernetes.io/enforce": enforce,
                                             "pod-security.kubernetes.io/warn": "restricted"}}},
        k8s.policy(ns, "default-deny", {"podSelector": {}, "policyTypes": ["Ingress", "Egress"]}),
        k8s.policy(ns, "hub-to-indexers", {
            "podSelector": {"matchLabels": {"vre.role": "indexer"}}, "policyTypes": ["Ingress"],
            "ingress": [{"from": [k8s.hub_peer(settings, k8s.HUB_POD_LABELS)],
                         "ports": [{"protocol": "TCP", "port": INDEX_PORT}]}]}),
    ]
    labels = {"vre.instance": settings.instance, "vre.role": "indexer", "vre.dataset": slug}
    k8s.check_labels(labels)
    limits = {"cpu": k8s.cpu_quantity(INDEX_LIMITS["cpu"]), "memory": f"{INDEX_LIMITS['mem_mb']}Mi"}
    requests = {"cpu": k8s.cpu_quantity(INDEX_REQUESTS["cpu"]), "memory": f"{INDEX_REQUESTS['mem_mb']}Mi"}
    restricted = {"runAsNonRoot": True, "runAsUser": INDEX_UID, "runAsGroup": INDEX_UID,
                  "seccompProfile": {"type": "RuntimeDefault"}}
    container = {
        "name": "indexer", "image": image, "imagePullPolicy": pull_policy, "workingDir": "/",
        "command": ["python3", "-I", f"{SOURCE_DIR}/indexpod.py", "--root", f"/data/{slug}",
                    "--out", "/work/index.sqlite", "--workers", str(INDEX_LIMITS["cpu"]),
                    "--port", str(INDEX_PORT), "--idle", str(IDLE_S)],
        "env": [{"name": "VRE_INDEX_TOKEN", "valueFrom": {"secretKeyRef": {"name": name, "key": TOKEN_KEY}}}],
        "volumeMounts": [
            {"name": "dataset", "mountPath": f"/data/{slug}", "readOnly": True, "recursiveReadOnly": "IfPossible"},
            {"name": "source", "mountPath": SOURCE_DIR, "readOnly": True},
            {"name": "work", "mountPath": "/work"},
            {"name": "tmp", "mountPath": "/tmp"}],
        "ports": [{"name": "indexer", "containerPort": INDEX_PORT, "protocol": "TCP"}],
        "readinessProbe": {"tcpSocket": {"port": INDEX_PORT}, "periodSeconds": 1, "failureThreshold": 3},
        "resources": {"requests": requests, "limits": limits},
        "securityContext": k8s.locked_down(INDEX_UID, INDEX_UID),
    }
    pod_spec = {
        "containers": [container], "restartPolicy": "Never", "automountServiceAccountToken": False,
        "enableServiceLinks": False, "terminationGracePeriodSeconds": 1, "securityContext": restricted,
        "volumes": [
            {"name": "dataset", **_volume(settings, slug, path)},
            {"name": "source", "secret": {"secretName": name, "defaultMode": 0o444,
                                          "items": [{"key": f, "path": f} for f in ("index.py", "indexpod.py")]}},
            {"name": "work", "emptyDir": {"sizeLimit": SCRATCH_SIZE}},
            {"name": "tmp", "emptyDir": {"sizeLimit": "64Mi"}}]}
    job = {"apiVersion": "batch/v1", "kind": "Job",
           "metadata": {"name": name, "namespace": ns, "labels": labels},
           "spec": {"backoffLimit": 0, "ttlSecondsAfterFinished": JOB_TTL_S, "activeDeadlineSeconds": JOB_DEADLINE_S,
                    "template": {"metadata": {"labels": labels}, "spec": pod_spec}}}
    here = Path(__file__).parent
    secret = {"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
              "metadata": {"name": name, "namespace": ns, "labels": labels},
              "stringData": {TOKEN_KEY: token, "index.py": (here / "index.py").read_text(),
                             "indexpod.py": (here / "indexpod.py").read_text()}}
    return objects, job, secret


def index_in_cluster(settings: Settings, slug: str, path: str, out: Path, progress=None) -> IndexReport:
    """Index dataset ``slug`` (registered at ``path``) in the cluster into ``out``; the report as
    ``index_dataset``'s. A failure says what to fix (the claim missing, the pod not placed, no
    DICOM files) and leaves ``out`` as it was."""
    try:
        return asyncio.run(_index(settings, slug, path, out, progress))
    except (asyncio.TimeoutError, aiohttp.ClientError, ConnectionError) as e:
        raise VREError(f"indexing dataset {slug!r} in the cluster failed: the cluster did not answer "
                       f"({e or type(e).__name__}); nothing was changed, try again") from None
    except ApiException as e:
        raise VREError(f"indexing dataset {slug!r} in the cluster failed: the cluster answered "
                       f"{k8s.api_reason(e)}") from None
    except k8s.KubernetesBackendError as e:
        raise VREError(f"indexing dataset {slug!r} in the cluster failed: {e}") from None


async def _index(settings: Settings, slug: str, path: str, out: Path, progress) -> IndexReport:
    await k8s.load_client_config(settings)
    options = settings.jupyterhub.get("KubernetesSpawner") or {}
    name = f"{k8s.object_name(f'vre-index-{slug}')[:45].rstrip('-')}-{secrets.token_hex(3)}"  # a Job name, short
    token = secrets.token_urlsafe(32)
    objects, job, secret = index_objects(settings, slug, path, name, image=settings.notebook_image, token=token,
                                         pull_policy=options.get("image_pull_policy", "IfNotPresent"))
    ns = job["metadata"]["namespace"]
    async with ApiClient() as client:
        core, batch = CoreV1Api(client), BatchV1Api(client)
        for obj in objects:
            await k8s.put_object(client, obj)
        await _remove_jobs(batch, ns, f"vre.role=indexer,vre.dataset={slug}")   # a hub that died while indexing it
        # the Secret first (the pod mounts it), then the Job, which then owns it: none is left behind
        await core.create_namespaced_secret(ns, secret)
        try:
            made = await batch.create_namespaced_job(ns, job)
        except BaseException:
            await _quietly(core.delete_namespaced_secret(name, ns), f"Secret {ns}/{name}")
            raise
        log.info("indexing dataset %s in the cluster: Job %s/%s", slug, ns, name)
        try:
            secret["metadata"]["ownerReferences"] = [{"apiVersion": "batch/v1", "kind": "Job", "name": name,
                                                      "uid": made.metadata.uid}]
            try:
                await core.replace_namespaced_secret(name, ns, secret)
            except BaseException:   # not owned yet: the Job's removal would leave it
                await _quietly(core.delete_namespaced_secret(name, ns), f"Secret {ns}/{name}")
                raise
            address = await _wait_for_pod(core, settings, slug, ns, name)
            return await _follow(address, token, slug, out, progress, gone=lambda: _ended(core, ns, name))
        finally:
            await _quietly(batch.delete_namespaced_job(name, ns, propagation_policy="Background"), f"Job {ns}/{name}")


async def _quietly(call, what: str) -> None:
    """Await a deletion; gone already is fine, another failure is logged (it must not hide the
    error that brought the hub here; the Job's deadline and TTL clean up after it)."""
    try:
        await call
    except ApiException as e:
        if e.status != 404:
            log.warning("could not delete %s: %s", what, k8s.api_reason(e))
    except Exception as e:
        log.warning("could not delete %s: %s", what, e)


async def _remove_jobs(batch: BatchV1Api, ns: str, selector: str) -> None:
    for old in (await batch.list_namespaced_job(ns, label_selector=selector)).items:
        log.info("removing index Job %s/%s of an earlier indexing", ns, old.metadata.name)
        await _quietly(batch.delete_namespaced_job(old.metadata.name, ns, propagation_policy="Background"),
                       f"Job {ns}/{old.metadata.name}")


async def _ended(core: CoreV1Api, ns: str, name: str) -> str:
    """Why the index pod stopped answering, as its status and log say (OOMKilled, evicted, ...)."""
    try:
        pods = (await core.list_namespaced_pod(ns, label_selector=f"job-name={name}")).items
    except ApiException:
        return ""
    for pod in pods:
        why = [pod.status.reason or "", pod.status.message or ""]
        for c in pod.status.container_statuses or ():
            t = c.state.terminated if c.state else None
            if t:
                why.append(f"{t.reason or 'ended'} with exit code {t.exit_code}")
        try:
            tail = await core.read_namespaced_pod_log(pod.metadata.name, ns, tail_lines=5)
        except ApiException:
            tail = ""
        return "; ".join(w for w in [*why, tail.strip().replace("\n", " | ")[-500:]] if w)
    return "its pod is gone"


async def _wait_for_pod(core: CoreV1Api, settings: Settings, slug: str, ns: str, name: str) -> str:
    """The pod's address once it answers; a pod that cannot start is a clear error."""
    deadline, why = time.monotonic() + START_S, "not created yet"
    while time.monotonic() < deadline:
        for pod in (await core.list_namespaced_pod(ns, label_selector=f"job-name={name}")).items:
            waiting = k8s.waiting_reason(pod)
            if waiting in k8s.FATAL_WAITING:
                raise k8s.KubernetesBackendError(f"its pod cannot start ({waiting}: is {settings.notebook_image} "
                                                 "on the nodes?)")
            if pod.status.phase in ("Failed", "Succeeded"):
                raise k8s.KubernetesBackendError(f"its pod ended before it answered "
                                                 f"({await _ended(core, ns, name) or pod.status.phase})")
            ready = any(c.type == "Ready" and c.status == "True" for c in pod.status.conditions or ())
            if ready and pod.status.pod_ip:
                return pod.status.pod_ip
            why = k8s.unplaced_reason(pod) or _mount_problem(await _events(core, ns, pod.metadata.name)) or \
                waiting or pod.status.phase or why
        await asyncio.sleep(POLL_S)
    volume = any(w in why.lower() for w in ("claim", "volume", "mount"))
    claim = (f"; the claim {k8s.object_name(f'dataset-{slug}')} must exist in namespace {ns}, bound to the "
             "dataset's volume") if settings.k8s_dataset_volume == "pvc" and volume else ""
    raise k8s.KubernetesBackendError(f"its pod did not start in {START_S} s ({why}){claim}")


async def _events(core: CoreV1Api, ns: str, pod: str) -> list:
    try:
        return (await core.list_namespaced_event(ns, field_selector=f"involvedObject.name={pod}")).items
    except ApiException:
        return []


def _mount_problem(events) -> str:
    """The last complaint about the pod's volumes (a claim missing or unbound), if any."""
    for e in reversed(events):
        if e.reason in ("FailedMount", "FailedScheduling", "FailedAttachVolume") and e.message:
            return e.message[:300]
    return ""


async def _follow(address: str, token: str, slug: str, out: Path, progress, *, port: int = INDEX_PORT,
                  gone=None) -> IndexReport:
    """Follow the pod's indexing, then fetch the index into ``out`` (replaced whole, once
    complete and checked). ``gone()``: why the pod stopped answering, when it does."""
    base = f"http://{address}:{port}"
    where = f"indexing dataset {slug!r} in the cluster"
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=SILENT_S)
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {token}"}, timeout=timeout) as http:
        # the index the hub has (a re-index): only new and changed files are read again
        with open(out, "rb") if out.is_file() else contextlib.nullcontext(b"") as previous:
            async with http.post(f"{base}/start", data=previous) as r:
                if r.status != 202:
                    raise VREError(f"{where}: its pod refused to start ({r.status} {(await r.text())[:200]})")
        silent_since = None
        while True:
            try:
                async with http.get(f"{base}/progress") as r:
                    if r.status == 401:   # not the pod this indexing made
                        raise VREError(f"{where}: the pod at {address} refused this indexing's token; try again")
                    r.raise_for_status()
                    state = await r.json()
                silent_since = None
            except (OSError, asyncio.TimeoutError, aiohttp.ClientError) as e:
                silent_since = silent_since or time.monotonic()
                if time.monotonic() - silent_since > SILENT_S:
                    why = (await gone() if gone else "") or str(e) or type(e).__name__
                    raise VREError(f"{where}: its pod stopped answering ({why}); try again") from None
                await asyncio.sleep(POLL_S)
                continue
            if progress and state.get("total"):
                progress(state["done"], state["total"])
            if state["state"] == "failed":
                raise VREError(f"{where}: {state.get('error') or 'indexing failed'}")
            if state["state"] == "done":
                break
            await asyncio.sleep(POLL_S)
        out.parent.mkdir(parents=True, exist_ok=True)
        # a name of its own beside the index: two indexings of one dataset never share a download
        fd, name = tempfile.mkstemp(prefix=out.name + ".", suffix=".incoming", dir=out.parent)
        incoming = Path(name)
        try:
            with os.fdopen(fd, "wb") as f:
                async with http.get(f"{base}/index") as r:
                    r.raise_for_status()
                    async for chunk in r.content.iter_chunked(1 << 20):
                        f.write(chunk)
            _check_index(incoming)
            os.chmod(incoming, 0o644)   # sessions read it
            for suffix in ("-wal", "-shm", "-journal"):
                out.with_name(out.name + suffix).unlink(missing_ok=True)
            incoming.replace(out)
        except (aiohttp.ClientError, asyncio.TimeoutError, ConnectionError):
            raise   # the network's, said as such by index_in_cluster
        except OSError as e:
            raise VREError(f"{where}: the index could not be written to {out.parent} ({e}); nothing was changed") from None
        finally:
            incoming.unlink(missing_ok=True)
    report = dict(state["report"])
    report["error_examples"] = [tuple(e) for e in report.get("error_examples") or ()]
    return IndexReport(**report)


#: What an index holds: tables and their indexes, nothing that runs (views, triggers).
_INDEX_OBJECTS = ("table", "index")


def _check_index(path: Path) -> None:
    """The fetched file is a whole, sound index with its files' hashes (not a download cut short),
    holding tables and indexes only."""
    try:
        conn = sqlite3.connect(f"{path.absolute().as_uri()}?mode=ro", uri=True)
        try:
            if conn.execute("PRAGMA quick_check").fetchone()[0] != "ok":
                raise sqlite3.DatabaseError("quick_check failed")
            kinds = {row[0] for row in conn.execute("SELECT type FROM sqlite_master")}
            meta = dict(conn.execute("SELECT key, value FROM meta"))
            conn.execute("SELECT COUNT(*) FROM series").fetchone()
        finally:
            conn.close()
    except sqlite3.DatabaseError as e:
        raise VREError(f"the index fetched from the cluster is not readable ({e}); try again") from None
    if kinds - set(_INDEX_OBJECTS):
        raise VREError(f"the index fetched from the cluster holds {', '.join(sorted(kinds - set(_INDEX_OBJECTS)))}: "
                       "an index holds tables only; not taken")
    if meta.get("format_version") != FORMAT_VERSION or meta.get("digests") != "sha256":
        raise VREError("the index fetched from the cluster is not a complete index; try again")
